/**
 * The connection URIs the control plane hands out (CreateProject, GetConnectionString): strings that connect as
 * printed, with the server's certificate verified, from libpq (psql, psycopg), node-postgres, pgx and pgjdbc
 * (docs/connecting.md).
 *
 * Two forms, chosen by configuration:
 * - **names of their own**: `ep-<id>[-pooler].<domain>`, resolved by DNS (a wildcard record) and sent as SNI, which
 *   the gateway routes on; for a platform with a real domain and a wildcard certificate for it.
 * - **one shared host** (`--public-host`, e.g. 127.0.0.1 for a platform on this machine): every endpoint is reached
 *   at that host and named in the startup packet's `options` (`endpoint=ep-<id>[-pooler]`), which the gateway also
 *   routes on. Nothing has to resolve the endpoint's name, and the certificate is checked against the shared host
 *   (an IP address or a name it carries), so no client meets a wildcard over a one-label domain (`*.localhost`),
 *   which Node and OpenSSL refuse.
 *
 * `sslmode=verify-full` always, with `sslrootcert=` naming what clients verify with: the private CA's file (a local
 * platform), or `system` (a public CA; libpq 16+).
 */

/** Where and how users reach the gateway. */
export interface PublicAccess {
  /** The DNS domain endpoints are named under (`ep-<id>.<domain>`). */
  domain: string;
  /** The gateway's port; left out of URIs when it is 5432. */
  port: number;
  /** One host for every endpoint (the endpoint then named in `options`), or '' for names of their own. */
  sharedHost: string;
  /** The `sslrootcert` clients verify the gateway with: a CA file's path on their machine, or `system`. */
  rootCert: string;
}

/** What one URI connects to. */
export interface ConnectionTarget {
  endpointId: string;
  /** Through the endpoint's pooler (`ep-<id>-pooler`), not a dedicated session. */
  pooled: boolean;
  role: string;
  database: string;
  /** Put in the URI when known (a one-time reveal); otherwise the client supplies it (prompt, PGPASSWORD). */
  password?: string;
}

/**
 * The shared host a configuration implies: the one given, or, under a one-label domain such as the default
 * `localhost`, 127.0.0.1 (names under a one-label domain resolve nowhere through DNS, and Node refuses a
 * certificate's wildcard over one; the gateway's certificate for a local platform carries 127.0.0.1).
 */
export function sharedHostFor(domain: string, publicHost: string): string {
  if (publicHost) return publicHost;
  return domain.includes('.') ? '' : '127.0.0.1';
}

/** A query or userinfo value, percent-encoded except for what reads well and every parser takes as is (`/` in a path). */
function encodeValue(value: string): string {
  return encodeURIComponent(value).replaceAll('%2F', '/');
}

/** The host as a URI writes it (an IPv6 address in brackets). */
function uriHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** The `postgresql://` URI of a target. */
export function connectionUri(access: PublicAccess, target: ConnectionTarget): string {
  const label = `${target.endpointId}${target.pooled ? '-pooler' : ''}`;
  const host = access.sharedHost ? uriHost(access.sharedHost) : `${label}.${access.domain}`;
  const port = access.port === 5432 ? '' : `:${access.port}`;
  const userinfo = `${encodeURIComponent(target.role)}${target.password === undefined ? '' : `:${encodeURIComponent(target.password)}`}`;
  const parameters: string[] = [];
  // libpq refuses a second '=' in a URI parameter: the one inside the options value is percent-encoded.
  if (access.sharedHost) parameters.push(`options=${encodeValue(`endpoint=${label}`)}`);
  parameters.push('sslmode=verify-full', `sslrootcert=${encodeValue(access.rootCert)}`);
  return `postgresql://${userinfo}@${host}${port}/${encodeURIComponent(target.database)}?${parameters.join('&')}`;
}
