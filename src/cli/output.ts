/**
 * What the CLI prints on stdout: aligned tables and `field: value` blocks for people, or with --json the response
 * message as the generated `toJSON` renders it (enums by name, 64-bit numbers as strings, times as ISO 8601) and
 * nothing else. Also the small formatters the tables use, so every table shows states, times and sizes alike.
 */
import { formatLsn } from '../lib/lsn.js';
import type { Duration } from '../../gen/google/protobuf/duration.js';
import type { ComputeProfile } from '../../gen/spg99/controlplane/v1/controlplane.js';

/** Where output goes (process.stdout in the tool; a buffer in tests). */
export interface Writer {
  write(text: string): unknown;
}

/** A table column: its heading and how a row shows in it. */
export interface Column<Row> {
  heading: string;
  value(row: Row): string;
}

/** Shown for an empty or unset value. */
export const NONE = '-';

/** stdout in the mode the user chose. */
export class Output {
  constructor(
    private readonly stdout: Writer,
    /** --json: only {@link json} prints; tables, details and notes are for people and print nothing. */
    readonly jsonMode: boolean,
  ) {}

  /** Prints a message as JSON (in --json mode only). */
  json(value: unknown): void {
    if (this.jsonMode) this.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  /** An aligned table with a heading row; `empty` is printed instead when there are no rows. */
  table<Row>(columns: Column<Row>[], rows: readonly Row[], empty: string): void {
    if (this.jsonMode) return;
    if (rows.length === 0) {
      this.stdout.write(`${empty}\n`);
      return;
    }
    this.stdout.write(`${formatTable(columns.map((column) => column.heading), rows.map((row) => columns.map((column) => column.value(row))))}\n`);
  }

  /** `field: value` lines, aligned, under an optional title. */
  details(title: string | null, fields: Array<[string, string]>): void {
    if (this.jsonMode) return;
    const width = Math.max(...fields.map(([name]) => name.length + 1));
    const lines = fields.map(([name, value]) => `${`${name}:`.padEnd(width)}  ${value}`);
    this.stdout.write(`${title ? `${title}\n` : ''}${lines.join('\n')}\n`);
  }

  /** A line of text for people (nothing in --json mode). */
  line(text = ''): void {
    if (!this.jsonMode) this.stdout.write(`${text}\n`);
  }
}

/** Rows under headings, columns padded to their widest cell and separated by two spaces. */
export function formatTable(headings: string[], rows: string[][]): string {
  const cells = [headings, ...rows].map((row) => row.map((cell) => (cell === '' ? NONE : cell.replace(/\s*\n\s*/g, ' '))));
  const widths = headings.map((_, index) => Math.max(...cells.map((row) => row[index].length)));
  return cells.map((row) => row.map((cell, index) => (index === row.length - 1 ? cell : cell.padEnd(widths[index]))).join('  ').trimEnd()).join('\n');
}

/** An enum value's name without its prefix: `ENDPOINT_STATE_RUNNING` → `RUNNING`. */
export function enumWord(name: string, prefix: string): string {
  if (name.endsWith('_UNSPECIFIED') || name === 'UNRECOGNIZED') return NONE;
  return name.startsWith(prefix) ? name.slice(prefix.length) : name;
}

/** A time as ISO 8601 in UTC, or {@link NONE}. */
export function time(value: Date | undefined): string {
  return value ? value.toISOString() : NONE;
}

/** A duration in the units people type: `300s`, `5m`, `1h30m`; `never` for zero. */
export function duration(value: Duration | undefined, zero = 'never'): string {
  if (!value) return NONE;
  let seconds = Number(value.seconds) + value.nanos / 1e9;
  if (seconds === 0) return zero;
  if (seconds < 60 || !Number.isInteger(seconds)) return `${seconds}s`;
  const parts: string[] = [];
  for (const [unit, size] of [['d', 86_400], ['h', 3600], ['m', 60], ['s', 1]] as const) {
    const count = Math.floor(seconds / size);
    if (count > 0) parts.push(`${count}${unit}`);
    seconds -= count * size;
  }
  return parts.join('');
}

/** A compute profile: `1000m/1024MiB` (CPU in thousandths of a core, memory in MiB). */
export function profile(value: ComputeProfile | undefined): string {
  return value && (value.cpuMillis || value.memoryMib) ? `${value.cpuMillis}m/${value.memoryMib}MiB` : NONE;
}

/** A size in bytes, in binary units: `12.5 MiB`. */
export function bytes(value: bigint): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let size = Number(value);
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${size} B` : `${size.toFixed(size < 10 ? 1 : 0)} ${units[unit]}`;
}

/** An LSN as `X/Y`, or {@link NONE} for zero. */
export function lsn(value: bigint): string {
  return value === 0n ? NONE : formatLsn(value);
}
