/**
 * The test harness itself, with a small fake component: readiness on a log line, failure reports that quote the
 * output, stop and kill, and a teardown that fails on unexpected ERROR lines and always cleans up.
 */
import fs from 'node:fs';
import { expect } from 'chai';
import { Harness, TempDir, waitFor, type ComponentProcess } from '../harness/process.js';

/** A fake component: JSON logs on stdout, a raw line on stderr; behaviour chosen by its first argument. */
const FAKE_COMPONENT = `
const mode = process.argv[2] ?? 'normal';
const log = (level, msg, fields = {}) => console.log(JSON.stringify({ level, msg, ...fields }));
log('info', 'starting', { mode });
process.stderr.write('a raw line on stderr\\n');
console.log('plain text on stdout');
if (mode === 'exit') {
  log('fatal', 'cannot start: no disk');
  process.exit(3);
}
if (mode === 'error') log('error', 'disk on fire', { disk: 'sda' });
if (mode === 'stubborn') process.on('SIGTERM', () => log('info', 'ignoring SIGTERM'));
else process.on('SIGTERM', () => { log('info', 'stopping'); process.exit(0); });
if (mode !== 'silent') log('info', 'ready', { port: 1234 });
setInterval(() => {}, 60_000);
`;

describe('test harness', () => {
  let scripts: TempDir;
  let script: string;

  before(() => {
    scripts = TempDir.create('harness-test');
    script = scripts.join('fake-component.mjs');
    fs.writeFileSync(script, FAKE_COMPONENT);
  });

  after(() => scripts.remove());

  let harness: Harness;
  beforeEach(() => {
    harness = new Harness();
  });
  afterEach(async () => {
    // Tests that expect a failing teardown have torn down already; this is a no-op for them.
    await harness.teardown();
  });

  function fake(mode: string): ComponentProcess {
    return harness.spawn('fake', [mode], { script, label: `fake-${mode}` });
  }

  it('waits for a log line, keeps every line, and captures non-JSON output', async () => {
    const child = fake('normal');
    const ready = await child.waitForLine((line) => line.msg === 'ready', { what: 'ready' });
    expect(ready).to.deep.include({ level: 'info', port: 1234 });
    expect(child.lines[0]).to.deep.include({ msg: 'starting', mode: 'normal' });
    await waitFor(() => child.rawOutput.length >= 2, { what: 'the raw output', timeoutMs: 5000 });
    expect(child.rawOutput).to.have.members(['a raw line on stderr', 'plain text on stdout']);
    expect(child.tail()).to.include('[stderr] a raw line on stderr');
    const exit = await child.stop();
    expect(exit).to.deep.equal({ code: 0, signal: null });
    expect(child.findLine((line) => line.msg === 'stopping')).to.not.equal(undefined);
  });

  it('fails the wait with the output tail when the process exits first', async () => {
    const child = fake('exit');
    child.expectedErrors.push(/cannot start/);
    let failure: unknown;
    await child.waitForLine((line) => line.msg === 'ready', { what: '"ready"' }).catch((error: unknown) => {
      failure = error;
    });
    expect(String(failure)).to.include('fake-exit exited {"code":3,"signal":null} before "ready"');
    expect(String(failure)).to.include('cannot start: no disk');
    expect(child.exit).to.deep.equal({ code: 3, signal: null });
  });

  it('fails the wait after its timeout', async () => {
    const child = fake('silent');
    await child.waitForLine((line) => line.msg === 'starting', { what: 'starting' });
    let failure: unknown;
    await child.waitForLine((line) => line.msg === 'ready', { what: '"ready"', timeoutMs: 200 }).catch((error: unknown) => {
      failure = error;
    });
    expect(String(failure)).to.include('fake-silent: no "ready" within 200 ms');
    expect(String(failure)).to.include('"msg":"starting"');
    expect(child.exited).to.equal(false);
  });

  it('kills a process that ignores SIGTERM after the grace period, and kill9 kills at once', async () => {
    const stubborn = fake('stubborn');
    await stubborn.waitForLine((line) => line.msg === 'ready');
    expect(await stubborn.stop(300)).to.deep.equal({ code: null, signal: 'SIGKILL' });
    expect(stubborn.findLine((line) => line.msg === 'ignoring SIGTERM')).to.not.equal(undefined);

    const crashed = fake('normal');
    await crashed.waitForLine((line) => line.msg === 'ready');
    expect(await crashed.kill9()).to.deep.equal({ code: null, signal: 'SIGKILL' });
    expect(crashed.findLine((line) => line.msg === 'stopping')).to.equal(undefined);
  });

  it('teardown stops everything, runs cleanups, removes directories, and fails on an unexpected ERROR', async () => {
    const child = fake('error');
    await child.waitForLine((line) => line.msg === 'ready');
    const directory = harness.tempDir('teardown');
    const cleaned: string[] = [];
    harness.defer(() => cleaned.push('first'));
    harness.defer(() => cleaned.push('second'));
    let failure: unknown;
    await harness.teardown().catch((error: unknown) => {
      failure = error;
    });
    expect(String(failure)).to.include('fake-error logged an unexpected error');
    expect(String(failure)).to.include('disk on fire');
    expect(child.exit).to.deep.equal({ code: 0, signal: null });
    expect(cleaned).to.deep.equal(['second', 'first']);
    expect(fs.existsSync(directory.path)).to.equal(false);
    expect(() => harness.spawn('fake', [], { script })).to.throw('torn down');
  });

  it('teardown accepts ERROR lines a test declared as expected', async () => {
    const child = fake('error');
    await child.waitForLine((line) => line.msg === 'ready');
    harness.expectedErrors.push(/disk on fire/);
    await harness.teardown();
    expect(child.errorLines()).to.have.length(1);
    expect(child.unexpectedErrors()).to.have.length(1);
    expect(child.unexpectedErrors([/"disk":"sda"/])).to.deep.equal([]);
  });

  it('waitFor returns the first value that is not false or undefined, or fails naming what it waited for', async () => {
    let calls = 0;
    expect(await waitFor(() => (++calls >= 3 ? `after ${calls}` : false), { what: 'three calls', intervalMs: 1 })).to.equal('after 3');
    expect(await waitFor(async () => 0, { what: 'zero' })).to.equal(0);
    let failure: unknown;
    await waitFor(
      () => {
        throw new Error('not yet');
      },
      { what: 'the impossible', timeoutMs: 50, intervalMs: 5 },
    ).catch((error: unknown) => {
      failure = error;
    });
    expect(String(failure)).to.include('timed out after 50 ms waiting for the impossible; last error: not yet');
  });
});
