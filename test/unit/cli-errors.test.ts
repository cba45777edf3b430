/**
 * How the CLI words a failed call: an unreachable control plane is told apart from an UNAVAILABLE the control plane
 * answered itself.
 */
import { expect } from 'chai';
import { ClientError, Status } from 'nice-grpc-common';
import { CliError, describeCallError } from '../../src/cli/errors.js';

const CALL = { command: 'branches create', address: '127.0.0.1:7700', credential: 'api-key' as const, timeoutMs: 120_000 };

function described(details: string): string {
  const error = describeCallError(new ClientError('/spg99.controlplane.v1.ControlPlaneService/CreateBranch', Status.UNAVAILABLE, details), CALL);
  expect(error).to.be.instanceOf(CliError);
  return (error as CliError).message;
}

describe('CLI call errors', () => {
  it('says the control plane is not reachable when grpc-js could not reach it', () => {
    expect(described('No connection established. Last error: connect ECONNREFUSED 127.0.0.1:7700')).to.equal(
      'the control plane at 127.0.0.1:7700 is not reachable (connect ECONNREFUSED 127.0.0.1:7700): is it running (`make up`)? Otherwise point --api or SPG99_API at its host:port',
    );
    expect(described('Connection dropped')).to.match(/^the control plane at 127\.0\.0\.1:7700 is not reachable \(Connection dropped\)/);
  });

  it('says the TLS handshake failed, and which CA the CLI trusted, when the certificate is not the platform CA\'s', () => {
    const error = describeCallError(
      new ClientError('/spg99.controlplane.v1.ControlPlaneService/ListProjects', Status.UNAVAILABLE, 'No connection established. Last error: Error: self-signed certificate in certificate chain'),
      { ...CALL, tlsSource: 'the system\'s CAs' },
    );
    expect((error as CliError).message).to.match(/^the control plane at 127\.0\.0\.1:7700 failed the TLS handshake \(.*self-signed certificate.*\): .*now the system's CAs; point SPG99_API_CA at/);
  });

  it('keeps the control plane\'s own UNAVAILABLE answer, even when it quotes a dropped connection further on', () => {
    const details = 'the pageserver did not answer while creating the branch\'s timeline tl-1: /spg99.pageserver.v1.TimelineService/BranchTimeline UNAVAILABLE: Connection dropped; retry';
    expect(described(details)).to.equal(`branches create: ${details}: the control plane is temporarily unavailable; retry in a moment`);
  });
});
