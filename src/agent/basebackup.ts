/**
 * Fetches a basebackup from the pageserver into an empty data directory: the tar stream is unpacked as it
 * arrives, and its length is checked against what the pageserver announced.
 */
import fs from 'node:fs';
import { extractTar } from '../lib/tar-extract.js';
import type { BasebackupMetadata, PageServiceDefinition } from '../../gen/spg99/pageserver/v1/pageserver.js';
import { BasebackupMode } from '../../gen/spg99/pageserver/v1/pageserver.js';
import type { SpgClient } from '../lib/grpc/client.js';
import { postgresOsUser, prepareDirectoryFor } from '../lib/pg/os-user.js';

/** Unpacks the basebackup of `timelineId` at `lsn` (0: the timeline's end) into `dataDir`; answers its metadata. */
export async function fetchBasebackup(
  client: SpgClient<typeof PageServiceDefinition>,
  timelineId: string,
  lsn: bigint,
  dataDir: string,
  signal: AbortSignal,
): Promise<BasebackupMetadata> {
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  if (fs.readdirSync(dataDir).length > 0) throw new Error(`${dataDir} is not empty: a basebackup goes into an empty data directory`);
  let metadata: BasebackupMetadata | undefined;
  const responses = client.basebackup({ timelineId, lsn, mode: BasebackupMode.BASEBACKUP_MODE_FULL, replica: false }, { signal });
  const received = await extractTar(
    (async function* () {
      for await (const response of responses) {
        if (response.metadata) {
          metadata = response.metadata;
        } else if (response.tarChunk) {
          if (!metadata) throw new Error('the basebackup stream did not start with its metadata');
          yield response.tarChunk;
        }
      }
    })(),
    dataDir,
  );
  if (!metadata) throw new Error('the basebackup stream was empty');
  if (BigInt(received) !== metadata.tarBytes) {
    throw new Error(`the basebackup stream ended after ${received} of ${metadata.tarBytes} bytes: it was cut; start again`);
  }
  prepareDirectoryFor(postgresOsUser(), dataDir);
  return metadata;
}
