/**
 * The deterministic simulation of the WAL consensus (consensus-world.ts) over many seeds. `make test` runs 500;
 * `make sim` runs SPG99_SIM_SEEDS of them (default 20000); SPG99_SIM_SEED=N replays one seed and prints its trace.
 * A failing seed is shrunk to a shorter schedule that breaks the same invariant, and printed with its replay command.
 */
import { expect } from 'chai';
import { runSchedule, scheduleOf, shrink } from './consensus-world.js';

const SEEDS = Number(process.env.SPG99_SIM_SEEDS ?? 500);
const FIRST_SEED = Number(process.env.SPG99_SIM_FIRST_SEED ?? 1);
const STEPS = Number(process.env.SPG99_SIM_STEPS ?? 300);
const ONE_SEED = process.env.SPG99_SIM_SEED;

describe('consensus simulation', function () {
  this.timeout(0);

  /** Runs `seed`; on a broken invariant, shrinks it and fails with the replay command. */
  let committedBytes = 0;
  let runs = 0;

  async function check(seed: number, verbose: boolean): Promise<void> {
    const schedule = scheduleOf(seed, STEPS);
    const outcome = await runSchedule(schedule);
    committedBytes += outcome.world.committedBytes;
    runs += 1;
    if (verbose) console.log(`${outcome.world.trace.join('\n')}\n${outcome.world.describe()}`);
    if (!outcome.violation) return;
    const invariant = outcome.violation.invariant;
    const shrunk = await shrink(schedule.slice(0, (outcome.failedAt ?? 0) + 1), invariant);
    const replayed = await runSchedule(shrunk);
    const message =
      `seed ${seed} broke ${outcome.violation.message} at step ${outcome.failedAt} ` +
      `(shrunk to ${shrunk.length} steps: ${replayed.violation?.message ?? 'no longer fails'}); ` +
      `replay: SPG99_SIM_SEED=${seed} make sim\n${replayed.world.trace.slice(-12).join('\n')}\n${replayed.world.describe()}`;
    console.log(message);
    expect.fail(message);
  }

  if (ONE_SEED !== undefined) {
    it(`seed ${ONE_SEED} keeps every invariant`, () => check(Number(ONE_SEED), true));
    return;
  }

  it(`keeps election safety, log monotonicity, log safety and every acknowledged commit over ${SEEDS} seeds of ${STEPS} steps`, async () => {
    const started = performance.now();
    for (let seed = FIRST_SEED; seed < FIRST_SEED + SEEDS; seed += 1) await check(seed, false);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    console.log(`      ${SEEDS} seeds of ${STEPS} steps in ${seconds} s; ${Math.round(committedBytes / runs)} bytes of WAL committed per seed on average`);
  });
});
