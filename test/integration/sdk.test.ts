/**
 * `@spg99/sdk` against a real control plane (and Redis): each failure its own error class with the server's words,
 * paged lists, retries of idempotent calls across a control plane restart while a create is sent once, and TLS
 * verified by default.
 */
import { expect } from 'chai';
import { ClientError } from 'nice-grpc-common';
import {
  ApiKeyScope,
  createClient,
  NotFoundError,
  PermissionDeniedError,
  UnauthenticatedError,
  UnavailableError,
  WaitTimeoutError,
  type Spg99,
  type ClientOptions,
} from '../../sdk/src/index.js';
import { Harness } from '../harness/process.js';
import { RedisNode } from '../harness/redis.js';
import { ControlPlaneNode } from '../harness/control-plane.js';

/** What a call threw (the test fails when it succeeds). */
async function thrown(call: Promise<unknown>): Promise<unknown> {
  return call.then(
    () => expect.fail('the call succeeded'),
    (error: unknown) => error,
  );
}

describe('@spg99/sdk (real control plane, real Redis)', function () {
  this.timeout(300_000);
  let harness: Harness;
  let controlPlane: ControlPlaneNode;
  const clients: Spg99[] = [];
  /** Retries seen, by RPC name. */
  const retries = new Map<string, number>();

  function client(apiKey: string | undefined, options: Partial<ClientOptions> = {}): Spg99 {
    const spg = createClient({
      address: controlPlane.address,
      apiKey,
      tls: { caFile: controlPlane.caFile },
      timeoutMs: 60_000,
      // Enough retries to span a restart on a busy machine.
      retry: { maxRetries: 100, baseDelayMs: 100, maxDelayMs: 500, onRetry: (error) => retries.set(error.method.split('/').pop()!, (retries.get(error.method.split('/').pop()!) ?? 0) + 1) },
      ...options,
    });
    clients.push(spg);
    return spg;
  }

  before(async () => {
    harness = new Harness();
    const redis = await RedisNode.start(harness);
    controlPlane = await ControlPlaneNode.start(harness, { redisUrl: redis.url });
  });
  after(async () => {
    for (const spg of clients) spg.close();
    await harness.teardown();
  });

  it('answers a revoked key, an unknown id and a read-scoped key each with its own error class and the server\'s words', async () => {
    const admin = client((await controlPlane.operator().createTenant({ name: 'errors' })).apiKeySecret);
    const reader = client((await admin.api.createApiKey({ name: 'reader', scope: ApiKeyScope.API_KEY_SCOPE_READ })).secret);
    const old = await admin.api.createApiKey({ name: 'old', scope: ApiKeyScope.API_KEY_SCOPE_ADMIN });
    await admin.api.revokeApiKey({ keyId: old.apiKey!.keyId });

    const revoked = await thrown(client(old.secret).api.getTenant({}));
    expect(revoked).to.be.instanceOf(UnauthenticatedError);
    expect((revoked as UnauthenticatedError).message).to.match(/^GetTenant: /).and.contain('revoked');
    expect((revoked as UnauthenticatedError).cause).to.be.instanceOf(ClientError);

    const unknown = await thrown(admin.api.getProject({ projectId: 'pj-doesnotexist0000' }));
    expect(unknown).to.be.instanceOf(NotFoundError).and.not.instanceOf(UnauthenticatedError);
    expect((unknown as NotFoundError).details).to.contain('pj-doesnotexist0000');

    const denied = await thrown(reader.api.createProject({ name: 'not-allowed' }));
    expect(denied).to.be.instanceOf(PermissionDeniedError);
    expect((denied as PermissionDeniedError).details).to.match(/read/i);
    // None of them was retried: they are answers, not outages.
    expect(retries.size).to.equal(0);
  });

  it('walks a paged list; a control plane restarted between two pages costs a retry, not the walk', async () => {
    const spg = client((await controlPlane.operator().createTenant({ name: 'paging' })).apiKeySecret);
    const created = [];
    for (let index = 0; index < 5; index += 1) created.push((await spg.api.createProject({ name: `p${index}` })).project!.projectId);
    const firstPage = await spg.api.listProjects({ pageSize: 2, pageToken: '' });
    expect(firstPage.projects).to.have.length(2);
    expect(firstPage.nextPageToken).to.not.equal('');

    const walk = spg.listProjects({ pageSize: 2 });
    const seen = [(await walk.next()).value!.projectId, (await walk.next()).value!.projectId];
    await controlPlane.process.stop();
    const third = walk.next(); // the second page, asked of a control plane that is down
    await controlPlane.restart();
    seen.push((await third).value!.projectId);
    for await (const project of walk) seen.push(project.projectId);
    expect(seen).to.have.members(created).and.to.have.length(5);
    expect(retries.get('ListProjects') ?? 0).to.be.greaterThan(0);
  });

  it('keeps a wait going across a control plane restart, and never sends a create twice', async () => {
    const spg = client((await controlPlane.operator().createTenant({ name: 'restart' })).apiKeySecret);
    const { defaultEndpoint } = await spg.api.createProject({ name: 'waited' });
    const endpointId = defaultEndpoint!.endpointId;
    retries.clear();

    await controlPlane.process.stop();
    // A create meets the outage once and fails: it is not retried, as it might have happened.
    const create = await thrown(spg.api.createProject({ name: 'once' }));
    expect(create).to.be.instanceOf(UnavailableError);
    expect(retries.get('CreateProject')).to.equal(undefined);

    // The endpoint cannot start here (no provisioner): the wait ends by its time, having polled through the restart.
    const wait = thrown(spg.waitForEndpointState(endpointId, 'running', { timeoutMs: 30_000, pollIntervalMs: 500 }));
    await controlPlane.restart();
    const outcome = await wait;
    expect(outcome, String(outcome)).to.be.instanceOf(WaitTimeoutError);
    expect((outcome as WaitTimeoutError).lastState).to.equal('STOPPED');
    expect(retries.get('GetEndpoint') ?? 0).to.be.greaterThan(0);

    const names: string[] = [];
    for await (const project of spg.listProjects()) names.push(project.name);
    expect(names).to.deep.equal(['waited']);
  });

  it('verifies the control plane\'s certificate by default and refuses to talk plaintext to it', async () => {
    const apiKey = (await controlPlane.operator().createTenant({ name: 'tls' })).apiKeySecret;
    expect((await client(apiKey).api.getTenant({})).tenant?.name).to.equal('tls');
    const noRetries = { retry: { maxRetries: 0 } };
    // The system's CAs do not vouch for the platform's certificate.
    const untrusted = await thrown(client(apiKey, { tls: undefined, ...noRetries }).api.getTenant({}));
    expect(untrusted).to.be.instanceOf(UnavailableError);
    expect((untrusted as UnavailableError).details).to.match(/certificate/i);
    const plaintext = await thrown(client(apiKey, { tls: false, ...noRetries }).api.getTenant({}));
    expect(plaintext).to.be.instanceOf(UnavailableError);
  });
});
