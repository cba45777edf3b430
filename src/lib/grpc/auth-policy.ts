/**
 * Who may call what on SPG99's internal gRPC servers (docs/security.md has the same table for people). The
 * server's interceptor checks the caller's role against {@link allowedRoles} before the request is parsed; for a
 * compute, {@link checkScope} then checks that every id the request names is its own.
 */
import { ServerError, Status } from './errors.js';
import type { Claims, Role } from './credentials.js';

const SAFEKEEPER = 'spg99.safekeeper.v1.SafekeeperService';
const PAGE = 'spg99.pageserver.v1.PageService';
const TIMELINE = 'spg99.pageserver.v1.TimelineService';
const PROVISIONER = 'spg99.provisioner.v1.ProvisionerService';
const GATEWAY_ADMIN = 'spg99.gateway.v1.GatewayAdminService';
const COMPUTE = 'spg99.compute.v1.ComputeService';
const INTERNAL = 'spg99.controlplane.v1.ControlPlaneInternalService';

/** Methods anyone may call without a credential: health says only SERVING or not, and kubelet's probe sends no metadata. */
const OPEN = new Set(['/grpc.health.v1.Health/Check', '/grpc.health.v1.Health/Watch']);

/** Per service (or `service/Method`), the roles besides the operator that may call it. */
const POLICY: Record<string, readonly Role[]> = {
  [`${SAFEKEEPER}/CreateTimeline`]: ['control-plane', 'compute'],
  [`${SAFEKEEPER}/DeleteTimeline`]: ['control-plane'],
  // A safekeeper pulling a timeline (PullTimeline) reads its peers' status and committed WAL.
  [`${SAFEKEEPER}/GetTimelineStatus`]: ['control-plane', 'pageserver', 'compute', 'safekeeper'],
  [`${SAFEKEEPER}/ListTimelines`]: ['control-plane', 'pageserver'],
  [`${SAFEKEEPER}/Vote`]: ['compute'],
  [`${SAFEKEEPER}/Append`]: ['compute'],
  [`${SAFEKEEPER}/StreamWal`]: ['pageserver', 'compute', 'safekeeper'],
  [`${SAFEKEEPER}/PullTimeline`]: ['control-plane'],
  [`${SAFEKEEPER}/ReportConsumerProgress`]: ['pageserver'],
  [PAGE]: ['compute'],
  [`${TIMELINE}/DescribeTimeline`]: ['control-plane', 'compute'],
  [`${TIMELINE}/WaitForLsn`]: ['control-plane', 'compute'],
  [`${TIMELINE}/CreateSnapshot`]: ['control-plane', 'compute'],
  [TIMELINE]: ['control-plane'],
  [PROVISIONER]: ['control-plane'],
  [GATEWAY_ADMIN]: ['control-plane'],
  [COMPUTE]: ['control-plane', 'provisioner'],
  [`${INTERNAL}/AcquireWriterLease`]: ['compute'],
  [`${INTERNAL}/RenewWriterLease`]: ['compute'],
  [`${INTERNAL}/ReleaseWriterLease`]: ['compute'],
  [`${INTERNAL}/ReportComputeActivity`]: ['compute'],
  [`${INTERNAL}/ReportComputeState`]: ['compute', 'provisioner'],
  // The gateway relays SCRAM logins (the control plane verifies them: no verifier leaves it), routes and wakes.
  // GetRoleVerifier is the operator's only.
  [`${INTERNAL}/ResolveEndpoint`]: ['gateway'],
  [`${INTERNAL}/WakeEndpoint`]: ['gateway'],
  [`${INTERNAL}/BeginScram`]: ['gateway'],
  [`${INTERNAL}/FinishScram`]: ['gateway'],
  [INTERNAL]: [],
};

/** Reflection tells the API's shape (public in the repository anyway): any authenticated component may ask. */
const REFLECTION = /^\/grpc\.reflection\.v1(alpha)?\.ServerReflection\//;

/** Whether `path` needs no credential at all. */
export function isOpenMethod(path: string): boolean {
  return OPEN.has(path);
}

/** The roles that may call `path` (`/package.Service/Method`); the operator may call everything. */
export function allowedRoles(path: string): readonly Role[] {
  if (REFLECTION.test(path)) return ['control-plane', 'gateway', 'provisioner', 'pageserver', 'safekeeper', 'compute', 'operator'];
  const name = path.slice(1);
  const service = name.slice(0, name.lastIndexOf('/'));
  const roles = POLICY[name] ?? POLICY[service] ?? [];
  return ['operator', ...roles];
}

/** PERMISSION_DENIED when `claims` may not call `path`, naming who may. */
export function checkRole(claims: Claims, path: string): ServerError | null {
  const roles = allowedRoles(path);
  if (roles.includes(claims.role)) return null;
  return new ServerError(Status.PERMISSION_DENIED, `a ${claims.role} credential may not call ${path}: it needs a credential of ${roles.join(' or ')}`);
}

type Scoped = { timelineId?: unknown; endpointId?: unknown; computeId?: unknown; start?: { timelineId?: unknown }; page?: { timelineId?: unknown } };

/**
 * For a compute, whether the ids `request` names (timeline, endpoint, compute) are all its own; `first` says the
 * message must name at least one (a unary request, the first message of a stream). Null when it may go on.
 */
export function checkScope(claims: Claims, request: unknown, path: string, first: boolean): ServerError | null {
  if (claims.role !== 'compute') return null;
  const message = (request ?? {}) as Scoped;
  const named: Array<[string, unknown, string | undefined]> = [
    ['timeline', message.timelineId ?? message.start?.timelineId ?? message.page?.timelineId, claims.timelineId],
    ['endpoint', message.endpointId, claims.endpointId],
    ['compute', message.computeId, claims.computeId],
  ];
  let any = false;
  for (const [what, value, own] of named) {
    if (value === undefined || value === '') continue;
    any = true;
    if (value !== own) {
      return new ServerError(
        Status.PERMISSION_DENIED,
        `compute ${claims.sub}'s credential is for ${what} ${own ?? '(none)'} only; ${path} asked for ${what} ${String(value).slice(0, 80)}`,
      );
    }
  }
  if (first && !any) return new ServerError(Status.PERMISSION_DENIED, `a compute credential may call ${path} only for its own timeline, and the request names none`);
  return null;
}
