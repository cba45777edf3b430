/**
 * The safekeeper's durable state on a crash-consistent simulated disk (what a crash keeps is only what was fsynced):
 * WAL is acknowledged only once it survives a crash, WAL left unsynced by a crashed process is fsynced before it
 * counts, a truncation interrupted at any step keeps the WAL below the cut, and the acceptor's rules (one proposer
 * per term, bounded terms, an older term's in-flight WAL at a new term).
 */
import { expect } from 'chai';
import { WalStore } from '../../src/safekeeper/wal-store.js';
import { MAX_TERM, Timeline } from '../../src/safekeeper/timeline.js';
import { incarnationProposerId } from '../../src/agent/walproposer.js';
import { ServerError, Status } from '../../src/lib/grpc/errors.js';
import { formatLsn } from '../../src/lib/lsn.js';
import type { FileSystem } from '../../src/safekeeper/file-system.js';
import { SimulatedDisk } from './simulated-disk.js';

const START = 0x1000000n;
const WAL_DIR = '/safekeeper/wal';
const TIMELINE_DIR = '/safekeeper/timelines/tl-00000000000000000000000000000001';

function bytes(length: number, seed: number): Buffer {
  return Buffer.from(Array.from({ length }, (_, index) => (seed + index * 13) & 0xff));
}

async function statusOf(promise: Promise<unknown>): Promise<ServerError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof ServerError) return error;
    throw error;
  }
  throw new Error('expected a ServerError');
}

/** A disk that "crashes" (throws) at its `failAt`-th mutating call: the steps before it happened, none after. */
class CrashingDisk {
  calls = 0;
  armed = false;
  constructor(
    readonly disk: SimulatedDisk,
    readonly failAt: number,
  ) {}

  get fileSystem(): FileSystem {
    const mutating = new Set(['writevSync', 'ftruncateSync', 'fsyncSync', 'renameSync', 'rmSync', 'openSync']);
    return new Proxy(this.disk, {
      get: (target, property, receiver) => {
        const value = Reflect.get(target, property, receiver) as unknown;
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          if (this.armed && mutating.has(String(property)) && ++this.calls === this.failAt) throw new Error('simulated crash');
          return (value as (...inner: unknown[]) => unknown).apply(target, args);
        };
      },
    }) as FileSystem;
  }
}

describe('crash consistency (simulated disk)', () => {
  describe('WalStore', () => {
    it('announces a flush only once the WAL survives a crash; unsynced WAL is gone after one', async () => {
      const disk = new SimulatedDisk();
      const store = await WalStore.open(WAL_DIR, [], disk);
      store.resetTo(START);
      store.append(START, bytes(100, 1));
      await store.waitFlushed();
      store.append(START + 100n, bytes(50, 2));
      disk.crash();
      const reopened = await WalStore.open(WAL_DIR, [], disk);
      expect(reopened.flushedLsn).to.equal(START + 100n);
      expect(reopened.read(START, START + 100n, 1000).equals(bytes(100, 1))).to.equal(true);
    });

    it('the simulated disk catches a missing fsync: without the WAL fsync, "flushed" WAL is lost by a crash', async () => {
      const disk = new SimulatedDisk();
      disk.skipFsync = (file) => file.endsWith('.wal');
      const store = await WalStore.open(WAL_DIR, [], disk);
      store.resetTo(START);
      store.append(START, bytes(100, 1));
      await store.waitFlushed();
      expect(store.flushedLsn).to.equal(START + 100n);
      disk.crash();
      const reopened = await WalStore.open(WAL_DIR, [], disk);
      expect(reopened.flushedLsn, 'what an fsync-less store announced is gone').to.not.equal(START + 100n);
    });

    it('fsyncs the WAL it finds at open before counting it as flushed (a crashed process left it unsynced)', async () => {
      const disk = new SimulatedDisk();
      const store = await WalStore.open(WAL_DIR, [], disk);
      store.resetTo(START);
      store.append(START, bytes(100, 1));
      await store.waitFlushed();
      // The process dies with 60 more bytes written but not fsynced: they are still in the page cache.
      store.append(START + 100n, bytes(60, 2));
      const restarted = await WalStore.open(WAL_DIR, [], disk);
      expect(restarted.flushedLsn).to.equal(START + 160n);
      // Now the machine crashes: what the restarted store announced as flushed must still be there.
      disk.crash();
      const afterCrash = await WalStore.open(WAL_DIR, [], disk);
      expect(formatLsn(afterCrash.flushedLsn)).to.equal(formatLsn(START + 160n));
    });

    it('a truncation interrupted by a crash at any step keeps every byte below the cut, and ends at the cut or the old end', async () => {
      const before = bytes(300, 7);
      const cut = START + 250n;
      // Each crash twice: once losing every unsynced write, once with the WAL files' unsynced writes (the cut
      // itself) written back early.
      let completed = false;
      for (let attempt = 2; !completed; attempt += 1) {
        const failAt = attempt >> 1;
        const writtenBack = attempt % 2 === 1;
        const disk = new SimulatedDisk();
        const setup = await WalStore.open(WAL_DIR, [], disk);
        setup.resetTo(START);
        // Two chunks: the cut falls inside the second one.
        setup.append(START, before.subarray(0, 200));
        setup.append(START + 200n, before.subarray(200));
        await setup.waitFlushed();
        const crashing = new CrashingDisk(disk, failAt);
        const store = await WalStore.open(WAL_DIR, [], crashing.fileSystem);
        crashing.armed = true;
        try {
          await store.truncate(cut);
          completed = true;
        } catch (error) {
          if ((error as Error).message !== 'simulated crash') throw error;
        }
        disk.crash((file) => writtenBack && file.endsWith('.wal'));
        const reopened = await WalStore.open(WAL_DIR, [], disk);
        const end = reopened.flushedLsn;
        const what = `crash at mutating call ${failAt} of the truncation${writtenBack ? ', the WAL file written back' : ''}`;
        expect([formatLsn(cut), formatLsn(START + 300n)], what).to.include(formatLsn(end));
        expect(reopened.read(START, cut, 1000).equals(before.subarray(0, 250)), what).to.equal(true);
        if (completed) expect(end).to.equal(cut);
        if (completed && !writtenBack) completed = false;
      }
    });
  });

  describe('Timeline', () => {
    async function timeline(disk = new SimulatedDisk()): Promise<Timeline> {
      return Timeline.create(TIMELINE_DIR, 'tl-00000000000000000000000000000001', disk);
    }

    it('refuses a term above 2^53 - 1 with INVALID_ARGUMENT naming the bound, and promises nothing', async () => {
      const acceptor = await timeline();
      const error = await statusOf(acceptor.vote(MAX_TERM + 1n, 'cp-1/a'));
      expect(error.code).to.equal(Status.INVALID_ARGUMENT);
      expect(error.details).to.contain('9007199254740991');
      expect(acceptor.snapshot().promisedTerm).to.equal(0n);
      await acceptor.vote(MAX_TERM, 'cp-1/a');
    });

    it('never promises a term to a second process of the same compute (a restarted agent)', async () => {
      const acceptor = await timeline();
      const first = incarnationProposerId('cp-1');
      const restarted = incarnationProposerId('cp-1');
      expect(restarted).to.not.equal(first);
      await acceptor.vote(3n, first);
      const error = await statusOf(acceptor.vote(3n, restarted));
      expect(error.code).to.equal(Status.ABORTED);
      expect(error.details).to.contain(`term 3 already promised to proposer ${first}`);
      // The first process may reconnect (it votes again for its term).
      expect((await acceptor.vote(3n, first)).promisedProposerId).to.equal(first);
    });

    it('an older term\'s WAL still being fsynced at a new term is in the vote, and never stays under the new history', async () => {
      const acceptor = await timeline();
      await acceptor.vote(1n, 'cp-1/a');
      await acceptor.startAppend({ term: 1n, proposerId: 'cp-1/a', termHistory: [{ term: 1n, startLsn: START }], startStreamingAt: START, systemId: 42n });
      acceptor.appendWal(1n, 'cp-1/a', START, bytes(100, 1));
      await acceptor.waitFlushed();
      // Term 1's last append is written; its fsync has not completed when term 2 is voted for.
      acceptor.appendWal(1n, 'cp-1/a', START + 100n, bytes(20, 2));
      const vote = await acceptor.vote(2n, 'cp-2/b');
      expect(formatLsn(vote.flushLsn), 'the vote reports every byte written before the promise').to.equal(formatLsn(START + 120n));
      // A proposer that streams from 100 (its donor ends there) truncates term 1's tail here and writes its own.
      const history = [{ term: 1n, startLsn: START }, { term: 2n, startLsn: START + 100n }];
      const started = await acceptor.startAppend({ term: 2n, proposerId: 'cp-2/b', termHistory: history, startStreamingAt: START + 100n, systemId: 42n });
      expect(started.flushLsn).to.equal(START + 100n);
      acceptor.appendWal(2n, 'cp-2/b', START + 100n, bytes(30, 3));
      await acceptor.waitFlushed();
      expect(acceptor.readWal(START + 100n, 0n, true, 1000).equals(bytes(30, 3))).to.equal(true);
    });
  });
});
