/**
 * `make bench`: runs every benchmark (dist/bench/<name>.js, one after the other so that none measures on a machine
 * busy with another), shows their output as it comes, and ends with one table of their last lines: the figures
 * each benchmark reports, with its exit status and duration. Exits non-zero when any benchmark failed.
 *
 * SPG99_BENCH_ONLY=wal-quorum,gateway runs a subset; the other SPG99_BENCH_* variables reach the benchmarks.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The benchmarks in the order they run, with the make target that runs one alone. */
const BENCHMARKS = [
  { name: 'wal-quorum', target: 'bench-wal' },
  { name: 'pageserver', target: 'bench-pageserver' },
  { name: 'gateway', target: 'bench-gateway' },
];

interface Outcome {
  target: string;
  exit: string;
  seconds: number;
  lastLine: string;
}

const here = path.dirname(fileURLToPath(import.meta.url));

/** Runs one benchmark, echoing its output, and keeps its last non-empty stdout line. */
function run(name: string, target: string): Promise<Outcome> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...process.execArgv, path.join(here, `${name}.js`)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let lastLine = '';
    let pending = '';
    child.stdout.on('data', (chunk: Buffer) => {
      process.stdout.write(chunk);
      const lines = (pending + chunk.toString('utf8')).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) if (line.trim()) lastLine = line.trim();
    });
    const finish = (exit: string) => {
      if (pending.trim()) lastLine = pending.trim();
      resolve({ target, exit, seconds: (Date.now() - started) / 1000, lastLine });
    };
    child.on('error', (error) => finish(`could not start: ${error.message}`));
    child.on('exit', (code, signal) => finish(signal ? `killed by ${signal}` : String(code)));
  });
}

const only = process.env.SPG99_BENCH_ONLY?.split(',').map((name) => name.trim()).filter(Boolean);
const unknown = only?.filter((name) => !BENCHMARKS.some((bench) => bench.name === name)) ?? [];
if (unknown.length > 0) {
  console.error(`SPG99_BENCH_ONLY names no benchmark ${unknown.join(', ')}: choose from ${BENCHMARKS.map((bench) => bench.name).join(', ')}`);
  process.exit(2);
}

const outcomes: Outcome[] = [];
for (const { name, target } of BENCHMARKS) {
  if (only && !only.includes(name)) continue;
  console.log(`\n===== make ${target} =====`);
  outcomes.push(await run(name, target));
}

const rows = [['benchmark', 'exit', 'minutes', 'last line'], ...outcomes.map((outcome) => [
  `make ${outcome.target}`,
  outcome.exit,
  (outcome.seconds / 60).toFixed(1),
  outcome.exit === '0' ? outcome.lastLine : `FAILED (last line: ${outcome.lastLine || 'none'})`,
])];
const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
const format = (row: string[]) => `| ${row.map((cell, column) => cell.padEnd(widths[column])).join(' | ')} |`;
console.log(`\nmake bench summary (${new Date().toISOString()}, ${outcomes.length} benchmarks)`);
console.log(format(rows[0]));
console.log(`|${widths.map((width) => '-'.repeat(width + 2)).join('|')}|`);
for (const row of rows.slice(1)) console.log(format(row));
process.exitCode = outcomes.every((outcome) => outcome.exit === '0') ? 0 : 1;
