/**
 * The pageserver and the provisioner answer an id of any length with INVALID_ARGUMENT quoting a short prefix of it
 * (a 40 kB id once came back whole in the error's details).
 */
import { expect } from 'chai';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import { useHarness } from '../harness/process.js';
import { PageserverNode } from '../harness/pageserver.js';
import { ProvisionerNode } from '../harness/provisioner.js';

const HUGE = `tl-${'f'.repeat(40_000)}`;

async function invalidArgument(call: Promise<unknown>): Promise<ClientError> {
  try {
    await call;
  } catch (error) {
    expect(error).to.be.instanceOf(ClientError);
    expect(Status[(error as ClientError).code]).to.equal('INVALID_ARGUMENT');
    return error as ClientError;
  }
  expect.fail('expected INVALID_ARGUMENT');
}

describe('bounded ids at the edges (real pageserver and provisioner)', function () {
  this.timeout(60_000);
  const harness = useHarness();

  it('quotes at most a prefix of a 40 kB id', async () => {
    const [pageserver, provisioner] = await Promise.all([PageserverNode.start(harness()), ProvisionerNode.start(harness())]);
    for (const call of [
      () => pageserver.timelines.describeTimeline({ timelineId: HUGE }),
      () => pageserver.timelines.deleteTimeline({ timelineId: HUGE }),
      () => provisioner.client.describeCompute({ computeId: `cp-${'0'.repeat(40_000)}` }),
      () => provisioner.client.listComputes({ endpointId: `ep-${'0'.repeat(40_000)}` }),
    ]) {
      const error = await invalidArgument(call());
      expect(error.details.length, error.details.slice(0, 300)).to.be.lessThan(300);
      expect(error.details).to.match(/…" \(\d+ characters\)/);
    }
  });
});
