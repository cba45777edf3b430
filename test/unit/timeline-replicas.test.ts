/**
 * When the control plane repairs a safekeeper's copy of a timeline (src/control-plane/timeline-replicas.ts): a pull
 * for a copy that is empty while its peers hold committed WAL, or that ends below everything its peers still hold;
 * never for one its writer can feed. And what counts as in sync.
 */
import { expect } from 'chai';
import { inSync, needsPull } from '../../src/control-plane/timeline-replicas.js';
import { WAL_SEGMENT_SIZE } from '../../src/lib/lsn.js';
import type { TimelineStatus } from '../../gen/spg99/safekeeper/v1/safekeeper.js';

const START = WAL_SEGMENT_SIZE + 40n;

function copy(fields: Partial<TimelineStatus>): TimelineStatus {
  return {
    timelineId: 'tl-00000000000000000000000000000001',
    promisedTerm: 1n,
    promisedProposerId: 'p1',
    termHistory: [{ term: 1n, startLsn: START }],
    timelineStartLsn: START,
    flushLsn: START,
    commitLsn: START,
    consumerDurableLsn: 0n,
    oldestLsn: START,
    systemId: 42n,
    ...fields,
  };
}

describe('timeline replicas: which safekeeper copies need a pull', () => {
  const empty = copy({ termHistory: [], flushLsn: 0n, commitLsn: 0n, oldestLsn: 0n, timelineStartLsn: 0n });

  it('pulls an empty copy once a peer holds committed WAL, not while nothing is committed', () => {
    expect(needsPull(empty, [copy({ flushLsn: START + 100n, commitLsn: START + 100n })])).to.equal(true);
    expect(needsPull(empty, [copy({ flushLsn: START + 100n, commitLsn: 0n })])).to.equal(false);
    expect(needsPull(empty, [empty, empty])).to.equal(false);
  });

  it('pulls a copy that ends below the oldest WAL of every peer, and leaves one a peer can still feed', () => {
    const behind = copy({ flushLsn: START + 10n });
    const trimmed = copy({ flushLsn: 5n * WAL_SEGMENT_SIZE, commitLsn: 5n * WAL_SEGMENT_SIZE, oldestLsn: 3n * WAL_SEGMENT_SIZE });
    const untrimmed = copy({ flushLsn: 5n * WAL_SEGMENT_SIZE, commitLsn: 5n * WAL_SEGMENT_SIZE, oldestLsn: START });
    expect(needsPull(behind, [trimmed, trimmed])).to.equal(true);
    expect(needsPull(behind, [trimmed, untrimmed])).to.equal(false);
    expect(needsPull(copy({ flushLsn: 4n * WAL_SEGMENT_SIZE }), [trimmed, trimmed])).to.equal(false);
  });

  it('counts a copy in sync within one segment of the highest commit LSN', () => {
    const commit = 5n * WAL_SEGMENT_SIZE;
    expect(inSync(copy({ flushLsn: commit }), commit)).to.equal(true);
    expect(inSync(copy({ flushLsn: commit - WAL_SEGMENT_SIZE }), commit)).to.equal(true);
    expect(inSync(copy({ flushLsn: commit - WAL_SEGMENT_SIZE - 1n }), commit)).to.equal(false);
  });
});
