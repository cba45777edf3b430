/**
 * The forms `spg99 connection-string --format` prints, all made from the one URI the control plane hands out
 * (GetConnectionString), so that every form names the same host, endpoint and certificate check:
 * - `uri`: the URI as the API answers it (libpq, psql, psycopg, node-postgres, pgx);
 * - `keyword`: libpq's `host=… port=…` form (psql, psycopg);
 * - `env`: `export PG…=…` lines for libpq and node-postgres (plus NODE_EXTRA_CA_CERTS for a private CA: Node reads
 *   no PGSSLROOTCERT);
 * - `jdbc`: a pgjdbc URL.
 * The password goes in when it is known (a one-time reveal); otherwise the client supplies it (psql asks; drivers
 * read PGPASSWORD or ~/.pgpass).
 */

/** The forms `--format` takes. */
export const CONNECTION_FORMATS = ['uri', 'keyword', 'env', 'jdbc'] as const;
export type ConnectionFormat = (typeof CONNECTION_FORMATS)[number];

/** A connection URI taken apart. */
export interface ConnectionParts {
  host: string;
  port: number;
  user: string;
  database: string;
  /** The query parameters in order (options, sslmode, sslrootcert), decoded. */
  parameters: Array<[string, string]>;
}

/** Takes a `postgresql://` URI apart; throws naming what is wrong with it. */
export function parseConnectionUri(uri: string): ConnectionParts {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new Error(`the control plane answered a connection string that is not a URI: ${uri}`);
  }
  if (url.protocol !== 'postgresql:' && url.protocol !== 'postgres:') throw new Error(`not a postgresql:// URI: ${uri}`);
  return {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port ? Number(url.port) : 5432,
    user: decodeURIComponent(url.username),
    database: decodeURIComponent(url.pathname.slice(1)) || 'postgres',
    parameters: [...url.searchParams.entries()],
  };
}

/** The URI with `password` in its user information (percent-encoded, as libpq and every URI parser decode it). */
export function uriWithPassword(uri: string, password: string): string {
  const match = /^(postgres(?:ql)?:\/\/)([^@/?#:]*)(?::[^@/?#]*)?@/.exec(uri);
  if (!match) throw new Error(`the connection string has no user to put a password with: ${uri}`);
  return `${match[1]}${match[2]}:${encodeURIComponent(password)}@${uri.slice(match[0].length)}`;
}

/** A libpq keyword value: bare when it can be, else in single quotes with `\` and `'` escaped. */
function keywordValue(value: string): string {
  return value !== '' && /^[^\s'\\]+$/.test(value) ? value : `'${value.replace(/[\\']/g, (char) => `\\${char}`)}'`;
}

/** A shell word: bare when it is plainly safe, else single-quoted. */
function shellWord(value: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(value) ? value : `'${value.replaceAll("'", `'\\''`)}'`;
}

/** A query value as pgjdbc decodes it (java.net.URLDecoder: `+` is a space, so it is encoded too). */
function jdbcValue(value: string): string {
  return encodeURIComponent(value).replaceAll('%2F', '/');
}

/** The libpq environment variable of a URI parameter. */
const ENVIRONMENT: Record<string, string> = { options: 'PGOPTIONS', sslmode: 'PGSSLMODE', sslrootcert: 'PGSSLROOTCERT' };

/**
 * `uri` (the control plane's URI) in `format`, with `password` when given. Parameters a form has no place for are
 * refused rather than dropped, so a form never connects differently from the URI.
 */
export function formatConnection(uri: string, format: ConnectionFormat, password?: string): string {
  if (format === 'uri') return password === undefined ? uri : uriWithPassword(uri, password);
  const parts = parseConnectionUri(uri);
  const rootCert = parts.parameters.find(([key]) => key === 'sslrootcert')?.[1];
  if (format === 'keyword') {
    const pairs: Array<[string, string]> = [['host', parts.host], ['port', String(parts.port)], ['user', parts.user]];
    if (password !== undefined) pairs.push(['password', password]);
    pairs.push(['dbname', parts.database], ...parts.parameters);
    return pairs.map(([key, value]) => `${key}=${keywordValue(value)}`).join(' ');
  }
  if (format === 'env') {
    const pairs: Array<[string, string]> = [['PGHOST', parts.host], ['PGPORT', String(parts.port)], ['PGUSER', parts.user]];
    if (password !== undefined) pairs.push(['PGPASSWORD', password]);
    pairs.push(['PGDATABASE', parts.database]);
    for (const [key, value] of parts.parameters) {
      const name = ENVIRONMENT[key];
      if (!name) throw new Error(`the connection string's parameter ${key} has no environment variable`);
      pairs.push([name, value]);
    }
    // node-postgres reads PGSSLMODE but no PGSSLROOTCERT; Node itself trusts the CA named here, read at its start.
    if (rootCert && rootCert !== 'system') pairs.push(['NODE_EXTRA_CA_CERTS', rootCert]);
    const lines = pairs.map(([name, value]) => `export ${name}=${shellWord(value)}`);
    if (password === undefined) lines.push("# and PGPASSWORD: the role's password (see docs/connecting.md)");
    return lines.join('\n');
  }
  // pgjdbc: user and password as parameters; it knows no sslrootcert=system, and Java's own trust store is its
  // DefaultJavaSSLFactory.
  const query: string[] = [`user=${jdbcValue(parts.user)}`];
  if (password !== undefined) query.push(`password=${jdbcValue(password)}`);
  for (const [key, value] of parts.parameters) {
    if (key === 'sslrootcert' && value === 'system') query.push('sslfactory=org.postgresql.ssl.DefaultJavaSSLFactory');
    else query.push(`${key}=${jdbcValue(value)}`);
  }
  const host = parts.host.includes(':') ? `[${parts.host}]` : parts.host;
  return `jdbc:postgresql://${host}:${parts.port}/${encodeURIComponent(parts.database)}?${query.join('&')}`;
}
