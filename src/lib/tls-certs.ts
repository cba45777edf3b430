/**
 * A local certificate authority and a server certificate signed by it, made with the `openssl` command line, for
 * TLS on a developer's machine, in tests and in benchmarks (the gateway's `--tls-cert`/`--tls-key`, PgBouncer's
 * client TLS). Clients trust the CA's certificate alone (`sslrootcert=` for libpq, pgx and pgjdbc, `ca` for Node).
 *
 * The CA (`ca.crt`, `ca.key`; CN "SPG99 local CA", 10 years) is made once and kept, so clients that trust it keep
 * working when the server certificate is renewed. The server certificate (`server.crt`, `server.key`; 1 year)
 * covers `<domain>`, `*.<domain>`, `localhost`, 127.0.0.1 and ::1; it is kept while it is signed by that CA,
 * matches its key, covers the domain asked for and has more than 30 days left, and made anew otherwise.
 *
 * What each client verifies (docs/connecting.md): a connection to 127.0.0.1 (the local platform's connection
 * strings) is checked against the IP address, which libpq, Node, pgx and pgjdbc all match. A connection that names
 * the endpoint by SNI is checked against `*.<domain>`: with a domain of two labels or more, such as
 * {@link LOCAL_DOMAIN}, every one of them accepts the wildcard. Directly under a one-label domain (`*.localhost`)
 * only libpq, pgx and pgjdbc do; OpenSSL's host check and Node's `tls.checkServerIdentity` refuse it (they want
 * two labels after the `*`), which is why the local platform names its endpoints under {@link LOCAL_DOMAIN}. Node
 * clients that must verify a `*.localhost` certificate (the test harness' gateway) pass
 * {@link checkLocalServerIdentity}.
 */
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { execFile } from 'node:child_process';
import { createPrivateKey, randomBytes, X509Certificate } from 'node:crypto';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The files {@link ensureLocalCertificates} answers. */
export interface LocalCertificates {
  /** The CA's certificate (PEM): what clients trust. */
  caCertFile: string;
  /** The server certificate (PEM), signed by the CA. */
  certFile: string;
  /** The server certificate's private key (PEM, mode 0600). */
  keyFile: string;
}

/** Options of {@link ensureLocalCertificates}. */
export interface LocalCertificateOptions {
  /** The domain endpoints live under ({@link LOCAL_DOMAIN}: endpoints are `ep-<id>.spg99.localhost`). */
  domain: string;
}

/**
 * The domain a platform on one machine names its endpoints under (`ep-<id>.spg99.localhost`): names under
 * `.localhost` never leave the machine (RFC 6761; systemd-resolved and browsers answer them with loopback), and two
 * labels after the wildcard let Node and OpenSSL verify `*.spg99.localhost`, which they refuse for `*.localhost`.
 */
export const LOCAL_DOMAIN = 'spg99.localhost';

/** The CA's common name. */
export const LOCAL_CA_NAME = 'SPG99 local CA';
const CA_DAYS = 3650;
const SERVER_DAYS = 365;
/** A certificate with less left than this is renewed, so a long-running server never meets its expiry. */
const RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000;
const DOMAIN_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

/**
 * Makes sure `directory` holds a local CA and a server certificate for `domain` signed by it (see the module
 * comment for what is kept and what is renewed), and answers their files. Fails with what to install when the
 * `openssl` command is missing. One caller at a time per directory: two concurrent renewals may pair a
 * certificate with the other's key.
 */
export async function ensureLocalCertificates(directory: string, options: LocalCertificateOptions): Promise<LocalCertificates> {
  const domain = options.domain.trim().toLowerCase().replace(/\.$/, '');
  if (!DOMAIN_PATTERN.test(domain) || domain.length > 253) {
    throw new Error(`"${options.domain}" is not a DNS domain name (e.g. localhost or db.example.com): certificates are made for a domain`);
  }
  fs.mkdirSync(directory, { recursive: true, mode: 0o700 });
  const files: LocalCertificates & { caKeyFile: string } = {
    caCertFile: path.join(directory, 'ca.crt'),
    caKeyFile: path.join(directory, 'ca.key'),
    certFile: path.join(directory, 'server.crt'),
    keyFile: path.join(directory, 'server.key'),
  };
  const now = Date.now();
  let ca = usableCertificate(files.caCertFile, files.caKeyFile, now);
  let renewServer = false;
  if (!ca) {
    await makeCertificateAuthority(directory, files.caCertFile, files.caKeyFile);
    ca = new X509Certificate(fs.readFileSync(files.caCertFile));
    // A new CA invalidates whatever server certificate the old one signed.
    renewServer = true;
  }
  const server = renewServer ? null : usableCertificate(files.certFile, files.keyFile, now);
  if (!server || !server.verify(ca.publicKey) || !coversDomain(server, domain)) {
    await makeServerCertificate(directory, domain, files);
  }
  return { caCertFile: files.caCertFile, certFile: files.certFile, keyFile: files.keyFile };
}

/**
 * `tls.checkServerIdentity`, except that it also accepts a single-label wildcard directly under a one-label domain
 * (`ep-abc.localhost` against `DNS:*.localhost`), as libpq's `sslmode=verify-full` does. Node refuses those
 * (RFC 6125 leaves them to policy); pass this as `checkServerIdentity` to a Node client that verifies a local
 * certificate, with the CA as its only `ca`.
 */
export function checkLocalServerIdentity(hostname: string, certificate: tls.PeerCertificate): Error | undefined {
  const refusal = tls.checkServerIdentity(hostname, certificate);
  if (!refusal) return undefined;
  const host = hostname.toLowerCase().replace(/\.$/, '');
  const firstDot = host.indexOf('.');
  const parent = host.slice(firstDot + 1);
  // Only the case Node refuses by policy: `<label>.<one label>` against `*.<that label>`; everything else stands.
  if (firstDot <= 0 || parent.includes('.') || !DOMAIN_PATTERN.test(host)) return refusal;
  const names = dnsNames(certificate.subjectaltname ?? '');
  return names.includes(`*.${parent}`) ? undefined : refusal;
}

/** The DNS names of a subjectAltName text (`DNS:a, DNS:*.a, IP Address:127.0.0.1`), lower case. */
function dnsNames(subjectAltName: string): string[] {
  return subjectAltName
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry.startsWith('DNS:'))
    .map((entry) => entry.slice('DNS:'.length).toLowerCase());
}

function coversDomain(certificate: X509Certificate, domain: string): boolean {
  const names = dnsNames(certificate.subjectAltName ?? '');
  return names.includes(domain) && names.includes(`*.${domain}`) && names.includes('localhost');
}

/** The certificate at `certFile` when it parses, its key at `keyFile` matches, and it has over 30 days left. */
function usableCertificate(certFile: string, keyFile: string, now: number): X509Certificate | null {
  try {
    const certificate = new X509Certificate(fs.readFileSync(certFile));
    if (!certificate.checkPrivateKey(createPrivateKey(fs.readFileSync(keyFile)))) return null;
    if (Date.parse(certificate.validTo) - now < RENEW_BEFORE_MS) return null;
    if (Date.parse(certificate.validFrom) > now) return null;
    return certificate;
  } catch {
    // Missing, unreadable or not PEM: made anew.
    return null;
  }
}

async function makeCertificateAuthority(directory: string, certFile: string, keyFile: string): Promise<void> {
  await withScratch(directory, async (scratch) => {
    const config = scratch('openssl.cnf');
    fs.writeFileSync(
      config,
      [
        '[req]',
        'distinguished_name = subject',
        'prompt = no',
        '[subject]',
        `CN = ${LOCAL_CA_NAME}`,
        '[authority]',
        'basicConstraints = critical, CA:TRUE, pathlen:0',
        'keyUsage = critical, keyCertSign, cRLSign',
        'subjectKeyIdentifier = hash',
        '',
      ].join('\n'),
    );
    const key = scratch('ca.key');
    const certificate = scratch('ca.crt');
    await newPrivateKey(key);
    await openssl(['req', '-new', '-x509', '-config', config, '-extensions', 'authority', '-key', key, '-days', String(CA_DAYS), '-sha256', '-out', certificate]);
    // Key first: a reader that sees the new certificate also sees its key.
    fs.renameSync(key, keyFile);
    fs.renameSync(certificate, certFile);
  });
}

async function makeServerCertificate(directory: string, domain: string, files: LocalCertificates & { caKeyFile: string }): Promise<void> {
  await withScratch(directory, async (scratch) => {
    const config = scratch('openssl.cnf');
    fs.writeFileSync(
      config,
      [
        '[req]',
        'distinguished_name = subject',
        'prompt = no',
        '[subject]',
        `CN = ${domain}`,
        '[server]',
        'basicConstraints = critical, CA:FALSE',
        // EC keys sign the handshake; they never encipher a key.
        'keyUsage = critical, digitalSignature',
        'extendedKeyUsage = serverAuth',
        `subjectAltName = ${[...new Set([`DNS:${domain}`, `DNS:*.${domain}`, 'DNS:localhost'])].join(', ')}, IP:127.0.0.1, IP:::1`,
        'subjectKeyIdentifier = hash',
        'authorityKeyIdentifier = keyid:always',
        '',
      ].join('\n'),
    );
    const key = scratch('server.key');
    const request = scratch('server.csr');
    const certificate = scratch('server.crt');
    await newPrivateKey(key);
    await openssl(['req', '-new', '-config', config, '-key', key, '-out', request]);
    await openssl([
      'x509', '-req', '-in', request, '-CA', files.caCertFile, '-CAkey', files.caKeyFile,
      // A random serial: no serial file to keep, and a renewed certificate never repeats one.
      '-set_serial', `0x${randomBytes(16).toString('hex')}`,
      '-days', String(SERVER_DAYS), '-sha256', '-extfile', config, '-extensions', 'server', '-out', certificate,
    ]);
    fs.renameSync(key, files.keyFile);
    fs.renameSync(certificate, files.certFile);
  });
}

/** An EC P-256 key in `file`, which is created 0600 before openssl writes to it, so the key is never readable by others. */
async function newPrivateKey(file: string): Promise<void> {
  fs.writeFileSync(file, '', { mode: 0o600 });
  await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', file]);
  fs.chmodSync(file, 0o600);
}

/** Runs `fn` with a private scratch directory inside `directory` (so renames stay on one file system), then removes it. */
async function withScratch(directory: string, fn: (name: (file: string) => string) => Promise<void>): Promise<void> {
  const scratch = fs.mkdtempSync(path.join(directory, '.new-'));
  try {
    await fn((file) => path.join(scratch, file));
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

async function openssl(args: string[]): Promise<void> {
  try {
    await run('openssl', args);
  } catch (error) {
    const failure = error as NodeJS.ErrnoException & { stderr?: string };
    if (failure.code === 'ENOENT') {
      throw new Error('the openssl command is not installed: install it (Debian/Ubuntu: apt-get install openssl) to make local TLS certificates');
    }
    throw new Error(`openssl ${args[0]} failed: ${(failure.stderr ?? failure.message).trim()}`);
  }
}

/**
 * Silences Node's DEP0123 warning in this process. grpc-js names the TLS server by its address, and the local
 * platform's control plane is 127.0.0.1 (its certificate covers that IP, which is what is verified), so every TLS
 * call to it would print "Setting the TLS ServerName to an IP address is not permitted" to a user who can do nothing
 * about it. For command-line programs (spg99, make up); other warnings pass.
 */
export function quietIpServerNameWarning(): void {
  const original = process.emitWarning;
  process.emitWarning = function (this: unknown, warning: string | Error, ...rest: unknown[]) {
    const options = rest[0];
    const code = typeof options === 'object' && options !== null ? (options as { code?: string }).code : rest[1];
    if (code === 'DEP0123') return;
    return (original as (...args: unknown[]) => void).call(process, warning, ...rest);
  } as typeof process.emitWarning;
}
