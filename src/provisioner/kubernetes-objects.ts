/**
 * The Kubernetes objects of a compute, and how the `kubernetes` driver reads them back.
 *
 * A compute is two kinds of object, both labelled with its ids:
 * - a **Secret** `spg99-<compute id>`, the compute's record: its spec (`spec.json`), the roles file the agent
 *   reads (`roles.json`), and in annotations its incarnation, a requested stop and, once it ended, its final state.
 *   It outlives the pods, so a STOPPED or FAILED compute stays describable, also by a restarted provisioner.
 * - a **Pod** per incarnation: `spg99-<compute id>` first, `spg99-<compute id>-<n>` after the n-th restart. The pod
 *   runs the agent with `restartPolicy: Never`: the driver, not the kubelet, decides whether a compute restarts.
 *
 * Everything here is pure (no API calls), so the manifests and the mapping of pod status to compute state can be
 * read and tested on their own.
 */
import type { V1ContainerStatus, V1Pod, V1Secret } from '@kubernetes/client-node';
import { agentArgs, ComputeState, type ComputeSpec } from './driver.js';

/** `app.kubernetes.io/name` of every compute object; the driver lists and watches by it. */
export const COMPUTE_APP_NAME = 'spg99-compute';
/** The label selector of everything the driver manages. */
export const COMPUTE_SELECTOR = `app.kubernetes.io/name=${COMPUTE_APP_NAME}`;

/** Labels of compute objects. */
export const LABEL = {
  name: 'app.kubernetes.io/name',
  managedBy: 'app.kubernetes.io/managed-by',
  computeId: 'spg99.dev/compute-id',
  endpointId: 'spg99.dev/endpoint-id',
  timelineId: 'spg99.dev/timeline-id',
  /** On pods: which incarnation (0 first, n after the n-th restart). */
  incarnation: 'spg99.dev/incarnation',
} as const;

/** Annotations of the record Secret. */
export const ANNOTATION = {
  /** The current incarnation: its pod is the compute's pod. */
  incarnation: 'spg99.dev/incarnation',
  /** Why the previous incarnation ended (set with each restart). */
  lastFailure: 'spg99.dev/last-failure',
  /** `graceful` or `kill`: a stop was asked for; the pod going away is then expected. */
  stopRequested: 'spg99.dev/stop-requested',
  stopRequestedAt: 'spg99.dev/stop-requested-at',
  /** `STOPPED` or `FAILED` once the compute ended for good. */
  state: 'spg99.dev/state',
  reason: 'spg99.dev/reason',
  stateChangedAt: 'spg99.dev/state-changed-at',
} as const;

/** The agent's container in a compute pod. */
export const AGENT_CONTAINER = 'agent';
/**
 * The gRPC health service name the readiness probe checks. The agent's server answers SERVING for its overall
 * health as soon as it listens, long before Postgres runs; readiness therefore asks for the ComputeService by name,
 * which the agent is to mark SERVING once it logs "agent ready" (docs/kubernetes.md).
 */
export const READINESS_SERVICE = 'spg99.compute.v1.ComputeService';
/** Where the pod's emptyDir (the Postgres data directory, a cache like the process driver's) is mounted. */
export const DATA_MOUNT = '/var/lib/spg99';
/** Where the record Secret's `roles.json` is mounted (a read-only file, never an environment variable). */
export const ROLES_MOUNT = '/etc/spg99/roles';
/** The file name of the roles inside {@link ROLES_MOUNT}, and its key in the Secret. */
export const ROLES_FILE = 'roles.json';
/** The compute's token (renewed by the driver for each incarnation) and the trust file, in the same Secret and mount. */
export const CREDENTIAL_FILE = 'credential.token';
export const TRUST_FILE = 'trust.json';
const SPEC_KEY = 'spec.json';

/** The ports of a compute pod. */
export interface ComputePorts {
  postgres: number;
  agent: number;
  metrics: number;
}

/** The ports compute pods use unless told otherwise (each pod has its own network namespace). */
export const DEFAULT_PORTS: ComputePorts = { postgres: 5432, agent: 7900, metrics: 9187 };

/** What a compute pod is built from, besides the compute itself. */
export interface PodSettings {
  namespace: string;
  image: string;
  /** The agent's entry point inside the image. */
  agentScript: string;
  ports: ComputePorts;
  /** The uid and gid the agent (and its Postgres) run as; the image's non-root user. */
  runAsUser: number;
  /** Kubernetes' grace period of a pod deleted without one (a drain, `kubectl delete`). */
  terminationGraceSeconds: number;
  /** Extra environment of the agent (e.g. SPG99_LOG_LEVEL). */
  env: Record<string, string>;
  /** An image pull secret, when the registry needs one. */
  imagePullSecret?: string;
  /** A service account for compute pods; none by default (the agent needs no API access). */
  serviceAccountName?: string;
  /** Whether the record Secret carries the compute's credential and trust file (mounted beside roles.json). */
  credentials?: boolean;
}

/** The name of a compute's record Secret. */
export function recordName(computeId: string): string {
  return `spg99-${computeId}`;
}

/** The pod name of an incarnation of a compute. */
export function podName(computeId: string, incarnation: number): string {
  return incarnation === 0 ? `spg99-${computeId}` : `spg99-${computeId}-${incarnation}`;
}

/** The labels every object of a compute carries. */
export function computeLabels(computeId: string, spec: ComputeSpec): Record<string, string> {
  return {
    [LABEL.name]: COMPUTE_APP_NAME,
    [LABEL.managedBy]: 'spg99-provisioner',
    [LABEL.computeId]: computeId,
    [LABEL.endpointId]: spec.endpointId,
    [LABEL.timelineId]: spec.timelineId,
  };
}

/** The spec as it is stored (JSON has no bigint: the term is a decimal string). */
function specToJson(spec: ComputeSpec): string {
  return JSON.stringify({ ...spec, term: String(spec.term) });
}

function specFromJson(text: string): ComputeSpec {
  const raw = JSON.parse(text) as Omit<ComputeSpec, 'term'> & { term: string };
  return {
    endpointId: String(raw.endpointId),
    timelineId: String(raw.timelineId),
    term: BigInt(raw.term),
    profile: { cpuMillis: Number(raw.profile.cpuMillis), memoryMib: Number(raw.profile.memoryMib) },
    safekeeperAddresses: raw.safekeeperAddresses.map(String),
    pageserverAddress: String(raw.pageserverAddress),
    controlPlaneAddress: String(raw.controlPlaneAddress ?? ''),
    pgSettings: { ...(raw.pgSettings ?? {}) },
    roles: (raw.roles ?? []).map((role) => ({ roleName: String(role.roleName), scramVerifier: String(role.scramVerifier) })),
  };
}

function base64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}

/** The record Secret of a new compute (incarnation 0, nothing ended). */
export function recordSecret(computeId: string, spec: ComputeSpec, namespace: string, credentials?: { token: string; trust: string }): V1Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: recordName(computeId),
      namespace,
      labels: computeLabels(computeId, spec),
      annotations: { [ANNOTATION.incarnation]: '0' },
    },
    type: 'Opaque',
    data: {
      [SPEC_KEY]: base64(specToJson(spec)),
      // The agent's format: [{"roleName", "scramVerifier"}].
      [ROLES_FILE]: base64(JSON.stringify(spec.roles.map(({ roleName, scramVerifier }) => ({ roleName, scramVerifier })))),
      ...(credentials ? { [CREDENTIAL_FILE]: base64(credentials.token), [TRUST_FILE]: base64(credentials.trust) } : {}),
    },
  };
}

/** A compute's record as read from its Secret. */
export interface ComputeRecord {
  computeId: string;
  spec: ComputeSpec;
  namespace: string;
  uid: string;
  createdAt: Date;
  incarnation: number;
  lastFailure: string;
  stopRequested: 'graceful' | 'kill' | null;
  stopRequestedAt?: Date;
  /** Set once the compute ended for good. */
  ended: { state: ComputeState.COMPUTE_STATE_STOPPED | ComputeState.COMPUTE_STATE_FAILED; reason: string; at: Date } | null;
}

/** Dates arrive as Date from typed API calls and as strings from watch events. */
export function toDate(value: unknown): Date | undefined {
  if (value instanceof Date) return value;
  if (typeof value === 'string' && value) {
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? undefined : date;
  }
  return undefined;
}

/** Reads a record Secret; throws an Error saying what is wrong with it (it was edited, or is not ours). */
export function readRecord(secret: V1Secret): ComputeRecord {
  const metadata = secret.metadata ?? {};
  const computeId = metadata.labels?.[LABEL.computeId];
  if (!computeId) throw new Error(`Secret ${metadata.name} has no ${LABEL.computeId} label`);
  const specData = secret.data?.[SPEC_KEY];
  if (!specData) throw new Error(`Secret ${metadata.name} has no ${SPEC_KEY}`);
  let spec: ComputeSpec;
  try {
    spec = specFromJson(Buffer.from(specData, 'base64').toString('utf8'));
  } catch (error) {
    throw new Error(`Secret ${metadata.name}: ${SPEC_KEY} is not a compute spec (${(error as Error).message})`);
  }
  const annotations = metadata.annotations ?? {};
  const incarnation = Number(annotations[ANNOTATION.incarnation] ?? '0');
  const stopRequested = annotations[ANNOTATION.stopRequested];
  const endedState = annotations[ANNOTATION.state];
  return {
    computeId,
    spec,
    namespace: metadata.namespace ?? '',
    uid: metadata.uid ?? '',
    createdAt: toDate(metadata.creationTimestamp) ?? new Date(0),
    incarnation: Number.isInteger(incarnation) && incarnation >= 0 ? incarnation : 0,
    lastFailure: annotations[ANNOTATION.lastFailure] ?? '',
    stopRequested: stopRequested === 'graceful' || stopRequested === 'kill' ? stopRequested : null,
    stopRequestedAt: toDate(annotations[ANNOTATION.stopRequestedAt]),
    ended:
      endedState === 'STOPPED' || endedState === 'FAILED'
        ? {
            state: endedState === 'STOPPED' ? ComputeState.COMPUTE_STATE_STOPPED : ComputeState.COMPUTE_STATE_FAILED,
            reason: annotations[ANNOTATION.reason] ?? '',
            at: toDate(annotations[ANNOTATION.stateChangedAt]) ?? new Date(0),
          }
        : null,
  };
}

/** The annotations that record a compute's end. */
export function endedAnnotations(state: 'STOPPED' | 'FAILED', reason: string, at = new Date()): Record<string, string> {
  return { [ANNOTATION.state]: state, [ANNOTATION.reason]: reason, [ANNOTATION.stateChangedAt]: at.toISOString() };
}

/** The agent's command line in a pod: the flags the process driver gives it, with the pod's paths and ports. */
export function podAgentArgs(computeId: string, spec: ComputeSpec, settings: PodSettings): string[] {
  const credentials = settings.credentials ? { trustFile: `${ROLES_MOUNT}/${TRUST_FILE}`, credentialFile: `${ROLES_MOUNT}/${CREDENTIAL_FILE}` } : {};
  return agentArgs(computeId, spec, {
    agentScript: settings.agentScript,
    pgDataDir: `${DATA_MOUNT}/pgdata`,
    pgPort: settings.ports.postgres,
    // On all addresses: the provisioner (graceful stops), the kubelet (readiness) and Prometheus reach the pod IP.
    listen: `0.0.0.0:${settings.ports.agent}`,
    metricsListen: `0.0.0.0:${settings.ports.metrics}`,
    rolesFile: `${ROLES_MOUNT}/${ROLES_FILE}`,
    ...credentials,
  });
}

/** The pod of one incarnation of a compute. `recordUid` makes the record Secret its owner. */
export function computePod(computeId: string, spec: ComputeSpec, incarnation: number, recordUid: string, settings: PodSettings): V1Pod {
  // Requests equal to limits: the Guaranteed QoS class, so a writer is the last to be evicted under node pressure.
  const resources = { cpu: `${spec.profile.cpuMillis}m`, memory: `${spec.profile.memoryMib}Mi` };
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: podName(computeId, incarnation),
      namespace: settings.namespace,
      labels: { ...computeLabels(computeId, spec), [LABEL.incarnation]: String(incarnation) },
      // Deleting the record (kubectl delete secret, or the driver forgetting the compute) also removes its pods.
      ownerReferences: recordUid
        ? [{ apiVersion: 'v1', kind: 'Secret', name: recordName(computeId), uid: recordUid, blockOwnerDeletion: false }]
        : undefined,
    },
    spec: {
      restartPolicy: 'Never',
      terminationGracePeriodSeconds: settings.terminationGraceSeconds,
      // The agent talks to SPG99 services only; no API token in the pod.
      automountServiceAccountToken: false,
      serviceAccountName: settings.serviceAccountName,
      // Service links inject variables such as SPG99_PG_PORT for a Service named spg99-pg, which the agent would
      // read as its own flags.
      enableServiceLinks: false,
      imagePullSecrets: settings.imagePullSecret ? [{ name: settings.imagePullSecret }] : undefined,
      securityContext: {
        runAsNonRoot: true,
        runAsUser: settings.runAsUser,
        runAsGroup: settings.runAsUser,
        fsGroup: settings.runAsUser,
        seccompProfile: { type: 'RuntimeDefault' },
      },
      containers: [
        {
          name: AGENT_CONTAINER,
          image: settings.image,
          command: ['node'],
          args: podAgentArgs(computeId, spec, settings),
          env: Object.entries(settings.env).map(([name, value]) => ({ name, value })),
          ports: [
            { name: 'postgres', containerPort: settings.ports.postgres, protocol: 'TCP' },
            { name: 'agent', containerPort: settings.ports.agent, protocol: 'TCP' },
            { name: 'metrics', containerPort: settings.ports.metrics, protocol: 'TCP' },
          ],
          resources: { requests: resources, limits: resources },
          readinessProbe: {
            grpc: { port: settings.ports.agent, service: READINESS_SERVICE },
            periodSeconds: 2,
            timeoutSeconds: 1,
            failureThreshold: 2,
          },
          // The agent writes no termination message; the tail of its JSON log is the reason of a failure.
          terminationMessagePolicy: 'FallbackToLogsOnError',
          volumeMounts: [
            { name: 'data', mountPath: DATA_MOUNT },
            { name: 'roles', mountPath: ROLES_MOUNT, readOnly: true },
          ],
          securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
        },
      ],
      volumes: [
        // A cache like the process driver's data directory: every start begins from the pageserver's basebackup.
        { name: 'data', emptyDir: {} },
        // Only roles.json: the spec stays in the record, out of the pod. 0440 with fsGroup: readable by the agent only.
        {
          name: 'roles',
          secret: {
            secretName: recordName(computeId),
            defaultMode: 0o440,
            items: [
              { key: ROLES_FILE, path: ROLES_FILE },
              ...(settings.credentials ? [{ key: CREDENTIAL_FILE, path: CREDENTIAL_FILE }, { key: TRUST_FILE, path: TRUST_FILE }] : []),
            ],
          },
        },
      ],
    },
  };
}

/** The incarnation of a compute pod (from its label), or null when it has none. */
export function podIncarnation(pod: V1Pod): number | null {
  const value = Number(pod.metadata?.labels?.[LABEL.incarnation]);
  return Number.isInteger(value) && value >= 0 ? value : null;
}

/** What a pod says about its compute. */
export interface PodObservation {
  /** PENDING, STARTING, RUNNING or STOPPING; FAILED once the agent ended (see `ended`). */
  state: ComputeState;
  reason: string;
  /** Since when the pod is in `state`, when the pod says. */
  since?: Date;
  /** When the agent's container started. */
  startedAt?: Date;
  podIp: string;
  /** Set when the agent ended (its container terminated, or the pod failed): why, and whether it was fenced. */
  ended?: { cause: string; fenced: boolean; at?: Date };
}

const MAX_REASON_LENGTH = 500;

function shorten(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > MAX_REASON_LENGTH ? `${flat.slice(0, MAX_REASON_LENGTH - 1)}…` : flat;
}

/**
 * The cause in a termination message. With `FallbackToLogsOnError` the message is the tail of the agent's JSON
 * log: the last error line (or the line saying why the compute did not start) is the cause; plain text is kept as
 * it is.
 */
export function summarizeTerminationMessage(message: string): { text: string; fenced: boolean } {
  const lines = message.split('\n').map((line) => line.trim()).filter((line) => line.length > 0);
  let fenced = false;
  let cause = '';
  for (let index = lines.length - 1; index >= 0 && !cause; index -= 1) {
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(lines[index]) as Record<string, unknown>;
    } catch {
      continue;
    }
    const msg = typeof entry.msg === 'string' ? entry.msg : '';
    const level = entry.level;
    const isError = level === 'error' || level === 'fatal' || (typeof level === 'number' && level >= 50);
    if (msg.startsWith('the compute did not start') || isError) {
      if (msg === 'the compute did not start: fenced') fenced = true;
      const error = entry.err as { message?: unknown } | undefined;
      const detail = entry.reason ?? error?.message ?? entry.error;
      cause = typeof detail === 'string' && detail ? `${msg}: ${detail}` : msg;
    }
  }
  if (!cause) {
    const last = lines.at(-1) ?? '';
    // The last JSON line, or the plain message.
    try {
      const entry = JSON.parse(last) as Record<string, unknown>;
      cause = typeof entry.msg === 'string' ? entry.msg : last;
    } catch {
      cause = lines.join(' ');
    }
  }
  if (lines.some((line) => line.includes('"the compute did not start: fenced"'))) fenced = true;
  return { text: shorten(cause), fenced };
}

/** Why the agent's container ended, in words a user can act on. */
export function terminationCause(status: V1ContainerStatus, memoryMib?: string): { cause: string; fenced: boolean; at?: Date } {
  const terminated = status.state?.terminated;
  if (!terminated) return { cause: 'the agent ended', fenced: false };
  const at = toDate(terminated.finishedAt);
  const message = terminated.message ? summarizeTerminationMessage(terminated.message) : { text: '', fenced: false };
  const exit = terminated.signal ? `signal ${terminated.signal}` : `code ${terminated.exitCode}`;
  if (terminated.reason === 'OOMKilled') {
    return {
      cause: `the agent was killed for exceeding its memory limit (OOMKilled${memoryMib ? `, ${memoryMib}` : ''}): give the compute a profile with more memory`,
      fenced: false,
      at,
    };
  }
  if (terminated.reason === 'ContainerCannotRun' || terminated.reason === 'StartError') {
    return { cause: shorten(`the agent's container could not run (${terminated.reason}): ${terminated.message ?? 'no message'}`), fenced: false, at };
  }
  if (terminated.exitCode === 0) {
    return { cause: `the agent exited with code 0 without being asked to stop${message.text ? `: ${message.text}` : ''}`, fenced: message.fenced, at };
  }
  return { cause: `the agent exited with ${exit}${message.text ? `: ${message.text}` : ''}`, fenced: message.fenced, at };
}

function agentStatus(pod: V1Pod): V1ContainerStatus | undefined {
  return pod.status?.containerStatuses?.find((status) => status.name === AGENT_CONTAINER);
}

/** Maps a pod's phase, conditions and container status to the compute's state and a reason. */
export function observePod(pod: V1Pod): PodObservation {
  const status = pod.status ?? {};
  const podIp = status.podIP ?? '';
  const container = agentStatus(pod);
  const startedAt = toDate(container?.state?.running?.startedAt ?? container?.state?.terminated?.startedAt);
  const created = toDate(pod.metadata?.creationTimestamp);
  const memory = pod.spec?.containers?.find((candidate) => candidate.name === AGENT_CONTAINER)?.resources?.limits?.memory;

  if (pod.metadata?.deletionTimestamp) {
    return { state: ComputeState.COMPUTE_STATE_STOPPING, reason: 'the pod is being deleted', podIp, startedAt };
  }
  // The agent's container ended: whatever the phase says (it lags the container status), this incarnation is over.
  if (container?.state?.terminated) {
    const ended = terminationCause(container, memory);
    return { state: ComputeState.COMPUTE_STATE_FAILED, reason: ended.cause, since: ended.at, podIp, startedAt, ended };
  }
  if (status.phase === 'Failed' || status.phase === 'Succeeded') {
    // The pod ended without a terminated container status: evicted, a node shutdown, an active deadline.
    const why = status.reason ? `${status.reason}${status.message ? `: ${status.message}` : ''}` : (status.message ?? `phase ${status.phase}`);
    const cause = shorten(status.reason === 'Evicted' ? `the pod was evicted (${why})` : `the pod ended (${why})`);
    return { state: ComputeState.COMPUTE_STATE_FAILED, reason: cause, podIp, startedAt, ended: { cause, fenced: false } };
  }
  if (status.phase === 'Unknown') {
    return { state: ComputeState.COMPUTE_STATE_STARTING, reason: shorten(`the pod's node does not report (phase Unknown${status.message ? `: ${status.message}` : ''})`), podIp, startedAt };
  }
  if (container?.state?.running) {
    if (container.ready) {
      const readyCondition = status.conditions?.find((condition) => condition.type === 'Ready' && condition.status === 'True');
      return {
        state: ComputeState.COMPUTE_STATE_RUNNING,
        reason: 'Postgres accepts connections',
        since: toDate(readyCondition?.lastTransitionTime) ?? startedAt,
        podIp,
        startedAt,
      };
    }
    return { state: ComputeState.COMPUTE_STATE_STARTING, reason: 'the agent is starting', since: startedAt, podIp, startedAt };
  }
  const waiting = container?.state?.waiting;
  if (waiting?.reason && waiting.reason !== 'ContainerCreating' && waiting.reason !== 'PodInitializing') {
    const image = pod.spec?.containers?.find((candidate) => candidate.name === AGENT_CONTAINER)?.image ?? '';
    const imageProblem = /Image|ErrImage/.test(waiting.reason);
    const text = imageProblem
      ? `cannot pull the image ${image} (${waiting.reason}${waiting.message ? `: ${waiting.message}` : ''})`
      : `the agent's container waits (${waiting.reason}${waiting.message ? `: ${waiting.message}` : ''})`;
    return { state: ComputeState.COMPUTE_STATE_PENDING, reason: shorten(text), since: created, podIp };
  }
  const scheduled = status.conditions?.find((condition) => condition.type === 'PodScheduled');
  if (!pod.spec?.nodeName && scheduled?.status === 'False') {
    const text = `waiting to be scheduled${scheduled.message ? `: ${scheduled.message}` : scheduled.reason ? ` (${scheduled.reason})` : ''}`;
    return { state: ComputeState.COMPUTE_STATE_PENDING, reason: shorten(text), since: created, podIp };
  }
  if (pod.spec?.nodeName) {
    return { state: ComputeState.COMPUTE_STATE_PENDING, reason: `scheduled on ${pod.spec.nodeName}; creating the agent's container`, since: created, podIp };
  }
  return { state: ComputeState.COMPUTE_STATE_PENDING, reason: 'waiting to be scheduled', since: created, podIp };
}
