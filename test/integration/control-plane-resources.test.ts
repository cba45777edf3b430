/**
 * The control plane's resources beyond projects, as a real process on a real redis-server (and a real pageserver
 * for branches): branches at now, at an LSN and at a time, with the parent's roles; endpoints created, updated and
 * deleted (one per branch); roles with generated passwords kept only as SCRAM verifiers; connection strings; the
 * internal calls the gateway and agents make (role verifiers, activity reports), each with its error answers.
 */
import { expect } from 'chai';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import { keysFromPassword, parseVerifier } from '../../src/lib/scram.js';
import { ApiKeyScope, EndpointState, PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { useHarness } from '../harness/process.js';
import { RedisNode } from '../harness/redis.js';
import { ControlPlaneNode, failure } from '../harness/control-plane.js';
import { PageserverNode } from '../harness/pageserver.js';

async function expectStatus(call: Promise<unknown>, code: Status, ...phrases: string[]): Promise<ClientError> {
  const error = await failure(call);
  expect(Status[error.code], error.details).to.equal(Status[code]);
  for (const phrase of phrases) expect(error.details).to.contain(phrase);
  return error;
}

/** Whether `password` is the one the verifier was made from (the check a SCRAM server makes). */
function verifies(verifierText: string, password: string): boolean {
  const verifier = parseVerifier(verifierText);
  return keysFromPassword(password, verifier.salt, verifier.iterations).storedKey.equals(verifier.storedKey);
}

describe('control plane resources: branches, endpoints, roles, connection strings (real processes)', function () {
  this.timeout(180_000);
  const harness = useHarness();

  async function tenant(controlPlane: ControlPlaneNode, name: string) {
    const created = await controlPlane.operator().createTenant({ name });
    return controlPlane.client(created.apiKeySecret);
  }

  it('branches at now, at an LSN and at a time, with the parent\'s roles, and deletes them child first', async () => {
    const [redis, pageserver] = await Promise.all([RedisNode.start(harness()), PageserverNode.start(harness())]);
    const controlPlane = await ControlPlaneNode.start(harness(), { redisUrl: redis.url, pageserver: pageserver.address });
    const api = await tenant(controlPlane, 'acme');
    const other = await tenant(controlPlane, 'globex');
    const project = await api.createProject({ name: 'shop' });
    const projectId = project.project!.projectId;
    const mainId = project.defaultBranch!.branchId;

    const now = (await api.createBranch({ projectId, name: 'feature/now', parentBranchId: '', createEndpoint: false })).branch!;
    expect(now.branchId).to.match(/^tl-[0-9a-f]{32}$/);
    expect(now).to.deep.include({ projectId, name: 'feature/now', parentBranchId: mainId, isDefault: false });
    expect(now.parentLsn > 0n, 'the branch point is resolved').to.equal(true);
    const described = (await pageserver.timelines.describeTimeline({ timelineId: now.branchId })).timeline!;
    expect(described.ancestorTimelineId).to.equal(mainId);
    expect(described.ancestorLsn).to.equal(now.parentLsn);

    const atLsn = await api.createBranch({ projectId, name: 'at-lsn', parentBranchId: mainId, parentLsn: now.parentLsn, createEndpoint: true });
    expect(atLsn.branch?.parentLsn).to.equal(now.parentLsn);
    expect(atLsn.endpoint).to.deep.include({ branchId: atLsn.branch!.branchId, state: EndpointState.ENDPOINT_STATE_STOPPED });
    const atTime = (await api.createBranch({ projectId, name: 'at-time', parentBranchId: now.branchId, createEndpoint: false })).branch!;
    expect(atTime.parentBranchId).to.equal(now.branchId);
    // A time before any commit the pageserver knows is refused in its words (branching at a time with data is
    // covered by the lifecycle test, where a compute commits).
    await expectStatus(
      api.createBranch({ projectId, name: 'too-early', parentBranchId: now.branchId, parentTime: new Date(), createEndpoint: false }),
      Status.FAILED_PRECONDITION,
      'branch at an LSN instead',
    );

    // The new branches carry the parent's roles (the same Postgres catalog), with the same verifiers.
    const internal = controlPlane.internal();
    const mainRoles = (await api.listRoles({ branchId: mainId })).roles;
    const branchRoles = (await api.listRoles({ branchId: atLsn.branch!.branchId })).roles;
    expect(branchRoles.map((role) => role.name)).to.deep.equal(mainRoles.map((role) => role.name));
    expect(branchRoles[0].roleId).to.not.equal(mainRoles[0].roleId);
    const verifier = (await internal.getRoleVerifier({ endpointId: atLsn.endpoint!.endpointId, roleName: 'owner' })).scramVerifier;
    expect(verifies(verifier, project.defaultRolePassword)).to.equal(true);

    const listed = (await api.listBranches({ projectId })).branches;
    expect(listed.map((branch) => branch.name)).to.deep.equal(['main', 'feature/now', 'at-lsn', 'at-time']);
    expect(listed[0].logicalSizeBytes > 0n, 'sizes come from the pageserver').to.equal(true);
    expect((await api.getBranch({ branchId: atTime.branchId })).branch?.name).to.equal('at-time');

    // Bad input, each with what to do.
    await expectStatus(api.createBranch({ projectId, name: 'at-lsn', parentBranchId: '', createEndpoint: false }), Status.ALREADY_EXISTS, 'at-lsn', 'another name');
    await expectStatus(api.createBranch({ projectId, name: 'x', parentBranchId: `tl-${'0'.repeat(32)}`, createEndpoint: false }), Status.NOT_FOUND, 'parent branch', 'ListBranches');
    await expectStatus(api.createBranch({ projectId, name: 'x', parentBranchId: 'main', createEndpoint: false }), Status.INVALID_ARGUMENT, 'parent_branch_id', 'tl-');
    await expectStatus(api.createBranch({ projectId, name: '-bad', parentBranchId: '', createEndpoint: false }), Status.INVALID_ARGUMENT, 'branch name');
    await expectStatus(api.createBranch({ projectId, name: 'x', parentBranchId: '', parentLsn: 0n, createEndpoint: false }), Status.INVALID_ARGUMENT, 'parent_lsn');
    await expectStatus(
      api.createBranch({ projectId, name: 'x', parentBranchId: '', parentTime: new Date(Date.now() + 3_600_000), createEndpoint: false }),
      Status.INVALID_ARGUMENT,
      'future',
    );
    await expectStatus(api.createBranch({ projectId, name: 'x', parentBranchId: '', parentLsn: 1n << 60n, createEndpoint: false }), Status.FAILED_PRECONDITION, 'beyond the end');
    // Another tenant sees none of it.
    await expectStatus(other.getBranch({ branchId: now.branchId }), Status.NOT_FOUND, now.branchId);
    await expectStatus(other.listBranches({ projectId }), Status.NOT_FOUND, projectId);
    await expectStatus(other.createBranch({ projectId, name: 'steal', parentBranchId: mainId, createEndpoint: false }), Status.NOT_FOUND);

    // Endpoints: one per branch; settings change by mask; a stopped one is deleted.
    await expectStatus(api.createEndpoint({ branchId: atLsn.branch!.branchId }), Status.FAILED_PRECONDITION, atLsn.endpoint!.endpointId, 'one writer endpoint');
    const created = (await api.createEndpoint({ branchId: now.branchId, settings: { poolerMode: PoolerMode.POOLER_MODE_TRANSACTION } })).endpoint!;
    expect(created).to.deep.include({ branchId: now.branchId, state: EndpointState.ENDPOINT_STATE_STOPPED, host: `${created.endpointId}.localhost` });
    expect(created.settings?.poolerMode).to.equal(PoolerMode.POOLER_MODE_TRANSACTION);
    const updated = (await api.updateEndpoint({ endpointId: created.endpointId, settings: { suspendTimeout: { seconds: 42n, nanos: 0 } }, updateMask: ['suspend_timeout'] })).endpoint!;
    expect(updated.settings?.suspendTimeout?.seconds).to.equal(42n);
    expect(updated.settings?.poolerMode, 'fields outside the mask are kept').to.equal(PoolerMode.POOLER_MODE_TRANSACTION);
    expect((await api.getEndpoint({ endpointId: created.endpointId })).endpoint?.settings?.suspendTimeout?.seconds).to.equal(42n);
    await expectStatus(api.updateEndpoint({ endpointId: created.endpointId, settings: {}, updateMask: ['colour'] }), Status.INVALID_ARGUMENT, 'colour', 'suspend_timeout');
    await expectStatus(
      api.updateEndpoint({ endpointId: created.endpointId, settings: { profile: { cpuMillis: 10, memoryMib: 1024 } }, updateMask: ['profile'] }),
      Status.INVALID_ARGUMENT,
      'cpu_millis',
    );
    await api.deleteEndpoint({ endpointId: created.endpointId });
    await expectStatus(api.getEndpoint({ endpointId: created.endpointId }), Status.NOT_FOUND);
    expect((await api.listEndpoints({ projectId, branchId: '' })).endpoints.map((endpoint) => endpoint.branchId)).to.have.members([mainId, atLsn.branch!.branchId]);

    // Deletion: never the default branch, never a parent before its child.
    await expectStatus(api.deleteBranch({ branchId: mainId }), Status.FAILED_PRECONDITION, 'default branch', 'DeleteProject');
    await expectStatus(api.deleteBranch({ branchId: now.branchId }), Status.FAILED_PRECONDITION, atTime.branchId, 'delete that branch first');
    await api.deleteBranch({ branchId: atTime.branchId });
    await api.deleteBranch({ branchId: now.branchId });
    await api.deleteBranch({ branchId: atLsn.branch!.branchId });
    await expectStatus(api.getBranch({ branchId: now.branchId }), Status.NOT_FOUND);
    await expectStatus(api.getEndpoint({ endpointId: atLsn.endpoint!.endpointId }), Status.NOT_FOUND, 'does not exist');
    await expectStatus(pageserver.timelines.describeTimeline({ timelineId: now.branchId }), Status.NOT_FOUND);
    expect((await api.listBranches({ projectId })).branches.map((branch) => branch.name)).to.deep.equal(['main']);
    // The names of deleted branches are free again.
    expect((await api.createBranch({ projectId, name: 'at-lsn', parentBranchId: '', createEndpoint: false })).branch?.name).to.equal('at-lsn');
  });

  it('creates roles shown once and kept as verifiers, resets and deletes them, and builds connection strings', async () => {
    const redis = await RedisNode.start(harness());
    const controlPlane = await ControlPlaneNode.start(harness(), { redisUrl: redis.url, args: ['--domain', 'db.example.net', '--public-port', '6432'] });
    const api = await tenant(controlPlane, 'acme');
    const other = await tenant(controlPlane, 'globex');
    const project = await api.createProject({ name: 'shop' });
    const branchId = project.defaultBranch!.branchId;
    const endpointId = project.defaultEndpoint!.endpointId;
    const internal = controlPlane.internal();

    const created = await api.createRole({ branchId, name: 'app_writer' });
    expect(created.role).to.deep.include({ branchId, name: 'app_writer' });
    expect(created.role?.roleId).to.match(/^rl-[a-z0-9]{16}$/);
    expect(created.password).to.match(/^[a-z2-7]{32}$/);
    const verifier = (await internal.getRoleVerifier({ endpointId, roleName: 'app_writer' })).scramVerifier;
    expect(verifier).to.match(/^SCRAM-SHA-256\$4096:/);
    expect(verifier).to.not.contain(created.password);
    expect(verifies(verifier, created.password)).to.equal(true);
    expect((await api.listRoles({ branchId })).roles.map((role) => role.name)).to.deep.equal(['owner', 'app_writer']);

    await expectStatus(api.createRole({ branchId, name: 'app_writer' }), Status.ALREADY_EXISTS, 'app_writer', 'ResetRolePassword');
    await expectStatus(api.createRole({ branchId, name: 'AppWriter' }), Status.INVALID_ARGUMENT, 'lowercase');
    await expectStatus(api.createRole({ branchId, name: 'pg_monitor2' }), Status.INVALID_ARGUMENT, 'reserved');
    await expectStatus(api.createRole({ branchId: 'tl-nope', name: 'x' }), Status.INVALID_ARGUMENT, 'branch_id');
    await expectStatus(other.createRole({ branchId, name: 'intruder' }), Status.NOT_FOUND, branchId);
    await expectStatus(other.resetRolePassword({ roleId: created.role!.roleId }), Status.NOT_FOUND, created.role!.roleId);
    const reader = await api.createApiKey({ name: 'reader', scope: ApiKeyScope.API_KEY_SCOPE_READ });
    await expectStatus(controlPlane.client(reader.secret).createRole({ branchId, name: 'x' }), Status.PERMISSION_DENIED);
    expect((await controlPlane.client(reader.secret).listRoles({ branchId })).roles).to.have.length(2);

    const reset = await api.resetRolePassword({ roleId: created.role!.roleId });
    expect(reset.password).to.not.equal(created.password);
    const newVerifier = (await internal.getRoleVerifier({ endpointId, roleName: 'app_writer' })).scramVerifier;
    expect(verifies(newVerifier, reset.password)).to.equal(true);
    expect(verifies(newVerifier, created.password)).to.equal(false);

    await api.deleteRole({ roleId: created.role!.roleId });
    await expectStatus(internal.getRoleVerifier({ endpointId, roleName: 'app_writer' }), Status.NOT_FOUND, 'app_writer');
    await expectStatus(api.deleteRole({ roleId: created.role!.roleId }), Status.NOT_FOUND, 'ListRoles');
    // The name is free again.
    await api.createRole({ branchId, name: 'app_writer' });

    // Connection strings: no password, the endpoint's host under the domain, the public port, verified TLS.
    expect((await api.getConnectionString({ endpointId, roleName: '', databaseName: '', pooled: false })).uri).to.equal(
      `postgresql://owner@${endpointId}.db.example.net:6432/postgres?sslmode=verify-full&sslrootcert=system`,
    );
    expect((await api.getConnectionString({ endpointId, roleName: 'app_writer', databaseName: 'orders', pooled: true })).uri).to.equal(
      `postgresql://app_writer@${endpointId}-pooler.db.example.net:6432/orders?sslmode=verify-full&sslrootcert=system`,
    );
    expect(project.connectionUri).to.contain(`${endpointId}.db.example.net:6432/postgres`);
    await expectStatus(api.getConnectionString({ endpointId, roleName: 'ghost', databaseName: '', pooled: false }), Status.NOT_FOUND, 'ghost', 'CreateRole');
    await expectStatus(api.getConnectionString({ endpointId, roleName: '', databaseName: 'a/b', pooled: false }), Status.INVALID_ARGUMENT, 'database_name');
    await expectStatus(other.getConnectionString({ endpointId, roleName: '', databaseName: '', pooled: false }), Status.NOT_FOUND, endpointId);

    // The internal calls: unknown roles and endpoints, activity from a compute that is not the writer.
    await expectStatus(internal.getRoleVerifier({ endpointId, roleName: '' }), Status.INVALID_ARGUMENT, 'role_name');
    await expectStatus(internal.getRoleVerifier({ endpointId: `ep-${'0'.repeat(32)}`, roleName: 'owner' }), Status.NOT_FOUND);
    await expectStatus(
      internal.reportComputeActivity({ endpointId, computeId: `cp-${'1'.repeat(32)}`, activeConnections: 1, idleSeconds: 0 }),
      Status.ABORTED,
      'not the writer',
    );
    await expectStatus(internal.reportComputeActivity({ endpointId, computeId: `cp-${'1'.repeat(32)}`, activeConnections: 0, idleSeconds: -1 }), Status.INVALID_ARGUMENT, 'idle_seconds');
  });
});
