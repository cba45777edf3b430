/**
 * The few fields of a PostgreSQL control file (`global/pg_control`) the pageserver reads directly: the system
 * identifier and the latest checkpoint. Their offsets have been stable since PostgreSQL 9.x (ControlFileData
 * starts with system_identifier, pg_control_version, catalog_version_no, state, time, checkPoint, then the
 * checkpoint copy whose first field is the redo pointer).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Lsn } from '../lib/lsn.js';

/** What a control file says. */
export interface ControlFileFields {
  systemId: bigint;
  controlVersion: number;
  /** DBState: 1 = shut down, 2 = shut down in recovery, 4 = in crash recovery, 5 = in archive recovery, 6 = in production. */
  state: number;
  checkpointLsn: Lsn;
  redoLsn: Lsn;
  timelineId: number;
}

/** DBState values. */
export const DB_SHUTDOWNED = 1;

/** Reads the control file of the data directory `dataDir`. */
export function readControlFile(dataDir: string): ControlFileFields {
  return parseControlFile(fs.readFileSync(path.join(dataDir, 'global', 'pg_control')));
}

/** Parses control file bytes; throws naming what is wrong when they are not one. */
export function parseControlFile(bytes: Buffer): ControlFileFields {
  if (bytes.length < 64) throw new Error(`a control file has 8192 bytes, this one ${bytes.length}`);
  const controlVersion = bytes.readUInt32LE(8);
  if (controlVersion < 1000 || controlVersion > 9999) {
    throw new Error(`pg_control_version ${controlVersion} is not one SPG99 knows: is this a PostgreSQL 10+ control file?`);
  }
  return {
    systemId: bytes.readBigUInt64LE(0),
    controlVersion,
    state: bytes.readInt32LE(16),
    checkpointLsn: bytes.readBigUInt64LE(32),
    redoLsn: bytes.readBigUInt64LE(40),
    timelineId: bytes.readUInt32LE(48),
  };
}
