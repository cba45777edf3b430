/**
 * The control plane as a real process on a real redis-server: the operator's bootstrap, API keys (created, listed
 * without secrets, revoked, scoped), tenant isolation, input validation, projects (with and without a pageserver),
 * and a catalog that survives restarts of the control plane and a kill -9 of Redis.
 */
import fs from 'node:fs';
import { expect } from 'chai';
import { ChannelCredentials } from '@grpc/grpc-js';
import { createChannel } from 'nice-grpc';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import { ApiKeyScope, EndpointState, type CreateProjectResponse, type Project } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { useHarness, waitFor, grpcHealthStatus, HealthCheckResponse_ServingStatus } from '../harness/process.js';
import { reflectedServices } from '../harness/reflection.js';
import { RedisNode } from '../harness/redis.js';
import { ControlPlaneNode, failure, type ControlPlaneClient } from '../harness/control-plane.js';
import { PageserverNode } from '../harness/pageserver.js';


async function expectStatus(call: Promise<unknown>, code: Status, ...phrases: string[]): Promise<ClientError> {
  const error = await failure(call);
  expect(Status[error.code], error.details).to.equal(Status[code]);
  for (const phrase of phrases) expect(error.details).to.contain(phrase);
  return error;
}

describe('control plane (real process, real Redis)', function () {
  this.timeout(120_000);
  const harness = useHarness();
  let redis: RedisNode;
  let controlPlane: ControlPlaneNode;

  /** A new tenant through the operator: its admin client and secret. */
  async function newTenant(name: string): Promise<{ tenantId: string; keyId: string; secret: string; api: ControlPlaneClient }> {
    const created = await controlPlane.operator().createTenant({ name });
    return { tenantId: created.tenant!.tenantId, keyId: created.apiKey!.keyId, secret: created.apiKeySecret, api: controlPlane.client(created.apiKeySecret) };
  }

  describe('without a pageserver', () => {
    beforeEach(async () => {
      // appendfsync always: every acknowledged write survives a kill -9 of redis-server.
      redis = await RedisNode.start(harness(), { appendfsync: 'always' });
      controlPlane = await ControlPlaneNode.start(harness(), { redisUrl: redis.url });
    });

    it('answers health and lists its services through reflection', async () => {
      const channel = createChannel(controlPlane.address, ChannelCredentials.createSsl(fs.readFileSync(controlPlane.caFile)));
      try {
        expect(await grpcHealthStatus(channel)).to.equal(HealthCheckResponse_ServingStatus.SERVING);
      } finally {
        channel.close();
      }
      expect(await reflectedServices(controlPlane.address, controlPlane.caFile)).to.include.members(['spg99.controlplane.v1.ControlPlaneService', 'grpc.health.v1.Health']);
      // The internal service listens apart, for service credentials only.
      expect(await reflectedServices(controlPlane.address, controlPlane.caFile)).not.to.include('spg99.controlplane.v1.ControlPlaneInternalService');
      expect(await reflectedServices(controlPlane.internalAddress)).to.include.members(['spg99.controlplane.v1.ControlPlaneInternalService', 'grpc.health.v1.Health']);
      expect(controlPlane.readyLine.grpcPort).to.equal(controlPlane.port);
    });

    it('creates a tenant with the operator token only, and its admin key works at once', async () => {
      await expectStatus(controlPlane.client().createTenant({ name: 'acme' }), Status.UNAUTHENTICATED, 'authorization: Bearer');
      await expectStatus(controlPlane.client('not-the-token').createTenant({ name: 'acme' }), Status.UNAUTHENTICATED, 'operator token');
      const created = await controlPlane.operator().createTenant({ name: 'acme' });
      expect(created.tenant?.tenantId).to.match(/^tn-[a-z0-9]{16}$/);
      expect(created.apiKey?.scope).to.equal(ApiKeyScope.API_KEY_SCOPE_ADMIN);
      expect(created.apiKeySecret).to.match(/^spg99_[a-z2-7]{52}$/);
      expect(created.apiKeySecret.startsWith(created.apiKey!.secretPrefix)).to.equal(true);
      const api = controlPlane.client(created.apiKeySecret);
      expect((await api.getTenant({})).tenant).to.deep.include({ tenantId: created.tenant?.tenantId, name: 'acme' });
      // A tenant's key is not the operator token, and a retried create is refused by name.
      await expectStatus(api.createTenant({ name: 'other' }), Status.UNAUTHENTICATED, 'operator token');
      await expectStatus(controlPlane.operator().createTenant({ name: 'acme' }), Status.ALREADY_EXISTS, 'acme', created.tenant!.tenantId);
      // The operator token is not an API key.
      await expectStatus(controlPlane.operator().getTenant({}), Status.UNAUTHENTICATED, 'malformed API key');
    });

    it('refuses calls without a valid key, saying what to send', async () => {
      const { secret } = await newTenant('acme');
      await expectStatus(controlPlane.client().listProjects({}), Status.UNAUTHENTICATED, 'missing API key', 'authorization: Bearer <secret>');
      await expectStatus(controlPlane.clientWithHeader(`Basic ${secret}`).listProjects({}), Status.UNAUTHENTICATED, 'malformed authorization', 'Bearer <secret>');
      await expectStatus(controlPlane.client('spg99_short').listProjects({}), Status.UNAUTHENTICATED, 'malformed API key');
      const unknown = `spg99_${'a'.repeat(52)}`;
      const error = await expectStatus(controlPlane.client(unknown).listProjects({}), Status.UNAUTHENTICATED, 'unknown API key');
      expect(error.details).to.not.contain(unknown);
      // The scheme is case-insensitive, as in HTTP.
      expect((await controlPlane.clientWithHeader(`bearer ${secret}`).listProjects({})).projects).to.deep.equal([]);
    });

    it('creates, lists (never with secrets) and revokes keys; a read key cannot change anything', async () => {
      const admin = await newTenant('acme');
      const reader = await admin.api.createApiKey({ name: 'dashboard', scope: ApiKeyScope.API_KEY_SCOPE_READ });
      expect(reader.apiKey).to.deep.include({ tenantId: admin.tenantId, name: 'dashboard', scope: ApiKeyScope.API_KEY_SCOPE_READ });
      expect(reader.apiKey?.revokedAt).to.equal(undefined);
      expect(reader.apiKey?.lastUsedAt).to.equal(undefined);
      const read = controlPlane.client(reader.secret);

      const project = await admin.api.createProject({ name: 'shop' });
      expect((await read.listProjects({})).projects.map((p) => p.projectId)).to.deep.equal([project.project!.projectId]);
      expect((await read.getProject({ projectId: project.project!.projectId })).project?.name).to.equal('shop');
      expect((await read.getTenant({})).tenant?.tenantId).to.equal(admin.tenantId);
      expect((await read.listApiKeys({})).apiKeys).to.have.length(2);
      await expectStatus(read.createProject({ name: 'nope' }), Status.PERMISSION_DENIED, 'scope read', 'CreateProject', 'admin key');
      await expectStatus(read.createApiKey({ name: 'escalate', scope: ApiKeyScope.API_KEY_SCOPE_ADMIN }), Status.PERMISSION_DENIED);
      await expectStatus(read.revokeApiKey({ keyId: admin.keyId }), Status.PERMISSION_DENIED);
      await expectStatus(read.deleteProject({ projectId: project.project!.projectId }), Status.PERMISSION_DENIED);

      const listed = await admin.api.listApiKeys({});
      expect(listed.apiKeys.map((key) => key.keyId)).to.deep.equal([admin.keyId, reader.apiKey!.keyId]);
      const text = JSON.stringify(listed, (_name, value: unknown) => (typeof value === 'bigint' ? value.toString() : value));
      expect(text).to.not.contain(admin.secret).and.to.not.contain(reader.secret);
      expect(text).to.not.contain(admin.secret.slice(0, 30));
      await waitFor(async () => (await admin.api.listApiKeys({})).apiKeys.every((key) => key.lastUsedAt !== undefined), { what: 'lastUsedAt of both keys' });

      const revoked = await admin.api.revokeApiKey({ keyId: reader.apiKey!.keyId });
      expect(revoked.apiKey?.revokedAt).to.be.instanceOf(Date);
      await expectStatus(read.listProjects({}), Status.UNAUTHENTICATED, 'revoked', reader.apiKey!.keyId);
      const again = await admin.api.revokeApiKey({ keyId: reader.apiKey!.keyId });
      expect(again.apiKey?.revokedAt?.getTime()).to.equal(revoked.apiKey?.revokedAt?.getTime());
      const afterRevoke = await admin.api.listApiKeys({});
      expect(afterRevoke.apiKeys.find((key) => key.keyId === reader.apiKey!.keyId)?.revokedAt).to.be.instanceOf(Date);
      await expectStatus(admin.api.revokeApiKey({ keyId: 'ky-aaaaaaaaaaaaaaaa' }), Status.NOT_FOUND, 'ky-aaaaaaaaaaaaaaaa');

      // Revoking the key the call is made with is allowed; it stops working at once.
      await admin.api.revokeApiKey({ keyId: admin.keyId });
      await expectStatus(admin.api.getTenant({}), Status.UNAUTHENTICATED, 'revoked');
    });

    it("answers NOT_FOUND for another tenant's resources, exactly as for ids that do not exist", async () => {
      const a = await newTenant('tenant-a');
      const b = await newTenant('tenant-b');
      const project = (await a.api.createProject({ name: 'private' })).project!;
      const theirs = await expectStatus(b.api.getProject({ projectId: project.projectId }), Status.NOT_FOUND);
      const unknownId = 'pj-aaaaaaaaaaaaaaaa';
      const nobodys = await expectStatus(b.api.getProject({ projectId: unknownId }), Status.NOT_FOUND);
      expect(theirs.details.replace(project.projectId, unknownId)).to.equal(nobodys.details);
      await expectStatus(b.api.deleteProject({ projectId: project.projectId }), Status.NOT_FOUND);
      await expectStatus(b.api.revokeApiKey({ keyId: a.keyId }), Status.NOT_FOUND);
      expect((await b.api.listProjects({})).projects).to.deep.equal([]);
      expect((await b.api.listApiKeys({})).apiKeys.map((key) => key.keyId)).to.deep.equal([b.keyId]);
      // Same project names in two tenants do not collide.
      await b.api.createProject({ name: 'private' });
      expect((await a.api.getProject({ projectId: project.projectId })).project?.name).to.equal('private');
      expect((await a.api.getTenant({})).tenant?.tenantId).to.equal(a.tenantId);
      expect(a.tenantId).to.not.equal(b.tenantId);
    });

    it('refuses bad input with INVALID_ARGUMENT naming the field', async () => {
      const operator = controlPlane.operator();
      await expectStatus(operator.createTenant({ name: '' }), Status.INVALID_ARGUMENT, 'name is required');
      await expectStatus(operator.createTenant({ name: 'x'.repeat(65) }), Status.INVALID_ARGUMENT, 'name is 65 characters long', 'at most 64');
      await expectStatus(operator.createTenant({ name: 'two\nlines' }), Status.INVALID_ARGUMENT, 'name', 'control characters');
      await expectStatus(operator.createTenant({ name: ' padded' }), Status.INVALID_ARGUMENT, 'name', 'spaces');
      const { api } = await newTenant('x'.repeat(64));
      await expectStatus(api.createApiKey({ name: 'ci', scope: ApiKeyScope.API_KEY_SCOPE_UNSPECIFIED }), Status.INVALID_ARGUMENT, 'scope is required');
      await expectStatus(api.createApiKey({ name: '', scope: ApiKeyScope.API_KEY_SCOPE_READ }), Status.INVALID_ARGUMENT, 'name is required');
      await expectStatus(api.revokeApiKey({ keyId: '' }), Status.INVALID_ARGUMENT, 'key_id is required');
      await expectStatus(api.revokeApiKey({ keyId: 'pj-aaaaaaaaaaaaaaaa' }), Status.INVALID_ARGUMENT, 'key_id', 'malformed', 'ky-');
      await expectStatus(api.getProject({ projectId: 'pj-NOT_AN_ID' }), Status.INVALID_ARGUMENT, 'project_id "pj-NOT_AN_ID" is malformed');
      await expectStatus(api.deleteProject({ projectId: '' }), Status.INVALID_ARGUMENT, 'project_id is required');
      await expectStatus(api.createProject({ name: '' }), Status.INVALID_ARGUMENT, 'name is required');
      await expectStatus(api.createProject({ name: 'p'.repeat(100) }), Status.INVALID_ARGUMENT, 'name is 100 characters long');
      await expectStatus(api.createProject({ name: 'p', region: 'mars-1' }), Status.INVALID_ARGUMENT, 'region "mars-1" is unknown', 'local');
      await expectStatus(api.createProject({ name: 'p', pgMajorVersion: 9 }), Status.INVALID_ARGUMENT, 'pg_major_version 9 is not supported', '18');
      await expectStatus(api.createProject({ name: 'p', defaultRoleName: 'pg_owner' }), Status.INVALID_ARGUMENT, 'default_role_name', 'reserved');
      await expectStatus(api.createProject({ name: 'p', defaultRoleName: 'Owner' }), Status.INVALID_ARGUMENT, 'default_role_name', 'lowercase');
      await expectStatus(api.createProject({ name: 'p', defaultBranchName: '-dev' }), Status.INVALID_ARGUMENT, 'default_branch_name');
      await expectStatus(
        api.createProject({ name: 'p', defaultEndpointSettings: { profile: { cpuMillis: 10, memoryMib: 0 }, poolerMode: 0 } }),
        Status.INVALID_ARGUMENT,
        'default_endpoint_settings.profile.cpu_millis 10 is out of range',
      );
      await expectStatus(
        api.createProject({
          name: 'p',
          defaultEndpointSettings: { poolerMode: 0, autoscale: { minProfile: { cpuMillis: 4000, memoryMib: 4096 }, maxProfile: { cpuMillis: 1000, memoryMib: 1024 } } },
        }),
        Status.INVALID_ARGUMENT,
        'default_endpoint_settings.autoscale.min_profile must not exceed max_profile',
      );
      expect((await api.listProjects({})).projects, 'nothing was created by refused calls').to.deep.equal([]);
      await expectStatus(api.createBranch({ projectId: 'pj-aaaaaaaaaaaaaaaa', name: 'dev' }), Status.NOT_FOUND, 'pj-aaaaaaaaaaaaaaaa', 'ListProjects');
      // Without --provisioner, routing answers which flags the control plane lacks.
      await expectStatus(controlPlane.internal().resolveEndpoint({ endpointId: 'ep-x' }), Status.UNIMPLEMENTED, '--provisioner');
    });

    it('creates a project with its default branch, stopped endpoint and role (password shown once, only a verifier kept), and deletes it', async () => {
      const { tenantId, api } = await newTenant('acme');
      const created: CreateProjectResponse = await api.createProject({
        name: 'shop',
        defaultEndpointSettings: { profile: { cpuMillis: 2000, memoryMib: 0 }, suspendTimeout: { seconds: 60n, nanos: 0 }, poolerMode: 2 },
      });
      const { project, defaultBranch, defaultEndpoint, defaultRole } = created;
      expect(project).to.deep.include({ tenantId, name: 'shop', region: 'local', pgMajorVersion: 18 });
      expect(project?.projectId).to.match(/^pj-[a-z0-9]{16}$/);
      expect(project?.defaultEndpointSettings?.profile).to.deep.equal({ cpuMillis: 2000, memoryMib: 1024 });
      expect(project?.defaultEndpointSettings?.suspendTimeout?.seconds).to.equal(60n);
      expect(defaultBranch).to.deep.include({ branchId: project?.defaultBranchId, name: 'main', isDefault: true, parentBranchId: '' });
      expect(defaultBranch?.branchId).to.match(/^tl-[0-9a-f]{32}$/);
      expect(defaultEndpoint).to.deep.include({ branchId: defaultBranch?.branchId, state: EndpointState.ENDPOINT_STATE_STOPPED, writerTerm: 0n, currentComputeId: '' });
      expect(defaultEndpoint?.host).to.equal(`${defaultEndpoint?.endpointId}.localhost`);
      expect(defaultRole).to.deep.include({ name: 'owner', branchId: defaultBranch?.branchId });
      expect(created.defaultRolePassword).to.have.length.greaterThanOrEqual(32);
      // Under the one-label default domain, endpoints share 127.0.0.1 and are named in options (connection-strings.ts).
      expect(created.connectionUri).to.equal(
        `postgresql://owner:${created.defaultRolePassword}@127.0.0.1/postgres?options=endpoint%3D${defaultEndpoint?.endpointId}&sslmode=verify-full&sslrootcert=system`,
      );

      // The catalog keeps a SCRAM verifier, never the password.
      const client = await redis.client();
      const catalogKeys = await client.keys('spg99:*');
      const values: string[] = [];
      for (const key of catalogKeys) {
        const type = await client.type(key);
        if (type === 'hash') values.push(...Object.values(await client.hgetall(key)));
        else if (type === 'string') values.push((await client.get(key)) ?? '');
      }
      expect(values.join('\n')).to.not.contain(created.defaultRolePassword);
      expect(await client.hget(`spg99:role:${defaultRole?.roleId}`, 'scramVerifier')).to.match(/^SCRAM-SHA-256\$4096:/);

      await expectStatus(api.createProject({ name: 'shop' }), Status.ALREADY_EXISTS, 'shop', project!.projectId);
      await api.deleteProject({ projectId: project!.projectId });
      await expectStatus(api.getProject({ projectId: project!.projectId }), Status.NOT_FOUND);
      await expectStatus(api.deleteProject({ projectId: project!.projectId }), Status.NOT_FOUND);
      expect((await api.listProjects({})).projects).to.deep.equal([]);
      const left = (await client.keys('spg99:*')).filter((key) => /project|branch|endpoint|role/.test(key));
      expect(left, 'catalog keys left after the delete').to.deep.equal([]);
      // The name is free again.
      await api.createProject({ name: 'shop' });
    });

    it('grants one writer lease per endpoint, with terms that only grow, and fences a superseded writer', async () => {
      const { api } = await newTenant('leases');
      const { defaultEndpoint } = await api.createProject({ name: 'db' });
      const endpointId = defaultEndpoint!.endpointId;
      const internal = controlPlane.internal();
      const ttl = { seconds: 30n, nanos: 0 };
      const first = await internal.acquireWriterLease({ endpointId, computeId: 'cp-first', ttl });
      expect(first.lease).to.deep.include({ endpointId, timelineId: defaultEndpoint!.branchId, computeId: 'cp-first', term: 1n });
      const refused = await internal.acquireWriterLease({ endpointId, computeId: 'cp-second', ttl }).catch((caught: unknown) => caught);
      expect((refused as ClientError).code).to.equal(Status.FAILED_PRECONDITION);
      expect((refused as ClientError).details).to.contain('cp-first');
      const renewed = await internal.renewWriterLease({ endpointId, computeId: 'cp-first', term: 1n, ttl });
      expect(renewed.lease?.term).to.equal(1n);
      await internal.releaseWriterLease({ endpointId, computeId: 'cp-first', term: 1n, finalLsn: 0x1000000n });
      const second = await internal.acquireWriterLease({ endpointId, computeId: 'cp-second', ttl });
      expect(second.lease?.term).to.equal(2n);
      const fenced = await internal.renewWriterLease({ endpointId, computeId: 'cp-first', term: 1n, ttl }).catch((caught: unknown) => caught);
      expect((fenced as ClientError).code).to.equal(Status.ABORTED);
      expect((fenced as ClientError).details).to.contain('term 2');
      // The term survives a restart of the control plane.
      await controlPlane.restart({ crash: true });
      const again = await controlPlane.internal().renewWriterLease({ endpointId, computeId: 'cp-second', term: 2n, ttl });
      expect(again.lease?.term).to.equal(2n);
      const unknown = await controlPlane.internal().acquireWriterLease({ endpointId: 'ep-doesnotexist0000', computeId: 'cp-x', ttl }).catch((caught: unknown) => caught);
      expect((unknown as ClientError).code).to.equal(Status.NOT_FOUND);
    });

    it('keeps the catalog across a control-plane kill -9 and a redis-server kill -9', async () => {
      const a = await newTenant('acme');
      const reader = await a.api.createApiKey({ name: 'reader', scope: ApiKeyScope.API_KEY_SCOPE_READ });
      const revoked = await a.api.createApiKey({ name: 'old', scope: ApiKeyScope.API_KEY_SCOPE_ADMIN });
      await a.api.revokeApiKey({ keyId: revoked.apiKey!.keyId });
      const projects: Project[] = [];
      for (const name of ['one', 'two', 'three']) projects.push((await a.api.createProject({ name })).project!);
      await a.api.deleteProject({ projectId: projects[1].projectId });
      const expectedProjects = [projects[0], projects[2]].map((project) => project.projectId);

      const check = async (api: ControlPlaneClient) => {
        expect((await api.listProjects({})).projects.map((project) => project.projectId)).to.deep.equal(expectedProjects);
        expect((await api.getProject({ projectId: projects[2].projectId })).project).to.deep.equal(projects[2]);
        await expectStatus(controlPlane.client(revoked.secret).getTenant({}), Status.UNAUTHENTICATED, 'revoked');
        await expectStatus(controlPlane.client(reader.secret).createProject({ name: 'x' }), Status.PERMISSION_DENIED);
        expect((await api.listApiKeys({})).apiKeys).to.have.length(3);
      };

      await controlPlane.restart({ crash: true });
      await check(a.api);
      await check(controlPlane.client(reader.secret));

      await redis.restart({ crash: true });
      // The control plane reconnects by itself; until then calls answer UNAVAILABLE, which is retryable.
      await waitFor(
        async () => {
          try {
            await a.api.getTenant({});
            return true;
          } catch (error) {
            if (error instanceof ClientError && error.code === Status.UNAVAILABLE) return false;
            throw error;
          }
        },
        { what: 'the control plane to reach the restarted Redis' },
      );
      await check(a.api);
      // Writes work again, and names stay unique.
      await expectStatus(a.api.createProject({ name: 'one' }), Status.ALREADY_EXISTS);
      await a.api.createProject({ name: 'four' });
    });
  });

  describe('with a pageserver', () => {
    let pageserver: PageserverNode;

    beforeEach(async () => {
      redis = await RedisNode.start(harness());
      pageserver = await PageserverNode.start(harness());
      controlPlane = await ControlPlaneNode.start(harness(), { redisUrl: redis.url, pageserver: pageserver.address });
    });

    it("creates the default branch's timeline on the pageserver under the tenant's id, and deletes it with the project", async () => {
      const { tenantId, api } = await newTenant('acme');
      const created = await api.createProject({ name: 'shop' });
      const timelineId = created.defaultBranch!.branchId;
      const { timeline } = await pageserver.timelines.describeTimeline({ timelineId });
      expect(timeline).to.deep.include({ tenantId, pgMajorVersion: 18 });
      await api.deleteProject({ projectId: created.project!.projectId });
      await expectStatus(pageserver.timelines.describeTimeline({ timelineId }), Status.NOT_FOUND);
      expect((await pageserver.timelines.listTimelines({ tenantId })).timelines).to.deep.equal([]);
    });
  });
});
