/**
 * The local CA and server certificate made with the openssl command: what they cover, that a TLS client trusting
 * only the CA accepts the server and sends its SNI, and when a later call keeps or renews them.
 */
import fs from 'node:fs';
import tls from 'node:tls';
import { execFileSync } from 'node:child_process';
import { X509Certificate, type KeyObject } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import { checkLocalServerIdentity, ensureLocalCertificates, LOCAL_CA_NAME, LOCAL_DOMAIN, type LocalCertificates } from '../../src/lib/tls-certs.js';
import { TempDir } from '../harness/process.js';

const DAY_MS = 24 * 3600 * 1000;

function certificate(file: string): X509Certificate {
  return new X509Certificate(fs.readFileSync(file));
}

function daysLeft(cert: X509Certificate): number {
  return (Date.parse(cert.validTo) - Date.now()) / DAY_MS;
}

/** The files' contents and modification times: what "kept" means. */
function snapshot(files: LocalCertificates): string[] {
  return Object.values(files).map((file) => `${fs.readFileSync(file, 'utf8')}@${fs.statSync(file).mtimeMs}`);
}

/** What a TLS handshake with a server using `files` gave each side. */
interface Handshake {
  authorized: boolean;
  authorizationError?: string;
  serverSawServername?: string | false;
}

/** A TLS server with the certificate; a client trusting only the CA connects with SNI `servername`. */
async function handshake(files: LocalCertificates, servername: string, client: tls.ConnectionOptions = {}): Promise<Handshake> {
  let serverSawServername: string | false | undefined;
  const server = tls.createServer({ cert: fs.readFileSync(files.certFile), key: fs.readFileSync(files.keyFile) }, (socket) => {
    serverSawServername = (socket as tls.TLSSocket & { servername?: string | false }).servername;
    socket.end('hello');
  });
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = server.address() as AddressInfo;
    return await new Promise<Handshake>((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port, servername, ca: fs.readFileSync(files.caCertFile), ...client });
      socket.once('secureConnect', () => {
        socket.once('data', () => {
          resolve({ authorized: socket.authorized, serverSawServername });
          socket.destroy();
        });
      });
      socket.once('error', (error) => resolve({ authorized: false, authorizationError: error.message }));
    });
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

describe('local TLS certificates (openssl)', function () {
  this.timeout(60_000);
  const directories: TempDir[] = [];

  function newDirectory(): TempDir {
    const directory = TempDir.create('tls-certs');
    directories.push(directory);
    return directory;
  }

  after(() => {
    for (const directory of directories.splice(0)) directory.remove();
  });

  it('makes a 10-year CA and a 1-year server certificate it signed, for the domain, localhost, 127.0.0.1 and ::1', async () => {
    const directory = newDirectory();
    const files = await ensureLocalCertificates(directory.join('certs'), { domain: 'localhost' });
    const ca = certificate(files.caCertFile);
    const server = certificate(files.certFile);
    expect(ca.subject).to.equal(`CN=${LOCAL_CA_NAME}`);
    expect(ca.ca).to.equal(true);
    expect(daysLeft(ca)).to.be.within(3649, 3651);
    expect(server.ca).to.equal(false);
    expect(daysLeft(server)).to.be.within(364, 366);
    expect(server.checkIssued(ca)).to.equal(true);
    expect(server.verify(ca.publicKey as KeyObject)).to.equal(true);
    expect(server.subjectAltName).to.equal('DNS:localhost, DNS:*.localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
    expect(server.checkIP('127.0.0.1')).to.equal('127.0.0.1');
    expect(server.checkIP('::1')).to.equal('::1');
    expect(server.checkHost('localhost')).to.equal('localhost');
    expect(server.keyUsage).to.deep.equal(['1.3.6.1.5.5.7.3.1']);
    for (const key of [files.keyFile, directory.join('certs', 'ca.key')]) {
      expect(fs.statSync(key).mode & 0o777, key).to.equal(0o600);
    }
    // Nothing but the four files is left behind.
    expect(fs.readdirSync(directory.join('certs')).sort()).to.deep.equal(['ca.crt', 'ca.key', 'server.crt', 'server.key']);
  });

  it('covers ep-abc.localhost: OpenSSL and Node refuse *.localhost by policy, checkLocalServerIdentity accepts it', async () => {
    const files = await ensureLocalCertificates(newDirectory().path, { domain: 'localhost' });
    const server = certificate(files.certFile);
    // OpenSSL wants two labels after a wildcard: this is why checkLocalServerIdentity exists.
    expect(server.checkHost('ep-abc.localhost')).to.equal(undefined);
    const peer = { subject: { CN: 'localhost' }, subjectaltname: server.subjectAltName } as unknown as tls.PeerCertificate;
    expect(tls.checkServerIdentity('ep-abc.localhost', peer)).to.be.instanceOf(Error);
    expect(checkLocalServerIdentity('ep-abc.localhost', peer)).to.equal(undefined);
    expect(checkLocalServerIdentity('ep-abc-pooler.localhost', peer)).to.equal(undefined);
    expect(checkLocalServerIdentity('localhost', peer)).to.equal(undefined);
    // Still one label only, and only under the certificate's own domain.
    expect(checkLocalServerIdentity('a.ep-abc.localhost', peer)).to.be.instanceOf(Error);
    expect(checkLocalServerIdentity('ep-abc.example', peer)).to.be.instanceOf(Error);
    expect(checkLocalServerIdentity('.localhost', peer)).to.be.instanceOf(Error);
  });

  it('covers ep-abc.<domain> for OpenSSL when the domain has two labels', async () => {
    const files = await ensureLocalCertificates(newDirectory().path, { domain: 'db.example.test' });
    const server = certificate(files.certFile);
    // checkHost answers the name that matched.
    expect(server.checkHost('ep-abc.db.example.test')).to.equal('*.db.example.test');
    expect(server.checkHost('db.example.test')).to.equal('db.example.test');
    expect(server.checkHost('ep-abc.other.test')).to.equal(undefined);
  });

  it('serves TLS to a client that trusts only the CA and sends SNI ep-abc.localhost', async () => {
    const files = await ensureLocalCertificates(newDirectory().path, { domain: 'localhost' });
    const accepted = await handshake(files, 'ep-abc.localhost', { checkServerIdentity: checkLocalServerIdentity });
    expect(accepted).to.deep.equal({ authorized: true, serverSawServername: 'ep-abc.localhost' });
    // Node's own identity check refuses the wildcard under a one-label domain (see above).
    const byNode = await handshake(files, 'ep-abc.localhost');
    expect(byNode.authorized).to.equal(false);
    expect(byNode.authorizationError).to.match(/altnames/);
    // A client that does not trust the CA refuses the server.
    const untrusted = await handshake(files, 'localhost', { ca: [] as string[] });
    expect(untrusted.authorized).to.equal(false);
    expect(untrusted.authorizationError).to.match(/self[- ]signed|unable to (get|verify)/i);
  });

  it(`for ${LOCAL_DOMAIN}, satisfies Node's own hostname check by SNI (ep-abc, ep-abc-pooler) and by 127.0.0.1 without SNI`, async () => {
    const files = await ensureLocalCertificates(newDirectory().path, { domain: LOCAL_DOMAIN });
    const server = certificate(files.certFile);
    // OpenSSL (libpq, and pgx/pgjdbc by the same rules) takes the wildcard with two labels after it.
    expect(server.checkHost(`ep-abc.${LOCAL_DOMAIN}`)).to.equal(`*.${LOCAL_DOMAIN}`);
    for (const name of [`ep-abc.${LOCAL_DOMAIN}`, `ep-abc-pooler.${LOCAL_DOMAIN}`]) {
      // No checkServerIdentity of ours: tls.checkServerIdentity decides.
      expect(await handshake(files, name), name).to.deep.equal({ authorized: true, serverSawServername: name });
    }
    // The local platform's connection strings: host 127.0.0.1, no SNI (an IP address is never sent as a name),
    // checked against the certificate's IP address.
    const byAddress = await handshake(files, '', { servername: undefined });
    expect(byAddress).to.deep.equal({ authorized: true, serverSawServername: false });
    // Names outside the domain stay refused.
    expect((await handshake(files, 'ep-abc.localhost')).authorized).to.equal(false);
    expect((await handshake(files, `a.ep-abc.${LOCAL_DOMAIN}`)).authorized).to.equal(false);
  });

  it('keeps valid files on a second call, renews the server certificate for another domain and keeps the CA', async () => {
    const directory = newDirectory().path;
    const first = await ensureLocalCertificates(directory, { domain: 'localhost' });
    const before = snapshot(first);
    const second = await ensureLocalCertificates(directory, { domain: 'LOCALHOST.' });
    expect(second).to.deep.equal(first);
    expect(snapshot(second)).to.deep.equal(before);

    const caBefore = fs.readFileSync(first.caCertFile, 'utf8');
    const keyBefore = fs.readFileSync(first.keyFile, 'utf8');
    const other = await ensureLocalCertificates(directory, { domain: 'spg99.test' });
    expect(fs.readFileSync(other.caCertFile, 'utf8')).to.equal(caBefore);
    expect(fs.readFileSync(other.keyFile, 'utf8')).to.not.equal(keyBefore);
    const server = certificate(other.certFile);
    expect(server.subjectAltName).to.contain('DNS:spg99.test, DNS:*.spg99.test, DNS:localhost');
    expect(server.verify(certificate(other.caCertFile).publicKey as KeyObject)).to.equal(true);
    expect(fs.statSync(other.keyFile).mode & 0o777).to.equal(0o600);
  });

  it('renews a server certificate that expires within 30 days, or whose key does not match', async () => {
    const directory = newDirectory();
    const files = await ensureLocalCertificates(directory.path, { domain: 'localhost' });
    // Replace the certificate with one the same CA signed for the same names, valid 10 days.
    const extensions = directory.join('short.ext');
    fs.writeFileSync(extensions, 'subjectAltName = DNS:localhost, DNS:*.localhost, IP:127.0.0.1, IP:::1\n');
    const request = directory.join('short.csr');
    execFileSync('openssl', ['req', '-new', '-key', files.keyFile, '-subj', '/CN=localhost', '-out', request]);
    execFileSync('openssl', [
      'x509', '-req', '-in', request, '-CA', files.caCertFile, '-CAkey', directory.join('ca.key'), '-set_serial', '7',
      '-days', '10', '-extfile', extensions, '-out', files.certFile,
    ], { stdio: 'ignore' });
    expect(daysLeft(certificate(files.certFile))).to.be.below(11);
    await ensureLocalCertificates(directory.path, { domain: 'localhost' });
    expect(daysLeft(certificate(files.certFile))).to.be.above(364);

    // A key that is not the certificate's.
    const caKey = fs.readFileSync(directory.join('ca.key'));
    fs.writeFileSync(files.keyFile, caKey, { mode: 0o600 });
    await ensureLocalCertificates(directory.path, { domain: 'localhost' });
    expect(fs.readFileSync(files.keyFile).equals(caKey)).to.equal(false);
    const renewed = await handshake(files, 'localhost');
    expect(renewed.authorized).to.equal(true);
  });

  it('says what to install when openssl is missing, and refuses a domain that is not a DNS name', async () => {
    const savedPath = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      const failure = await ensureLocalCertificates(newDirectory().path, { domain: 'localhost' }).then(
        () => null,
        (error: Error) => error,
      );
      expect(failure?.message).to.match(/openssl command is not installed.*apt-get install openssl/);
    } finally {
      process.env.PATH = savedPath;
    }
    for (const domain of ['', 'bad domain', 'a..b', '-x.test', 'x/../y', 'DNS:evil, DNS:x']) {
      const failure = await ensureLocalCertificates(newDirectory().path, { domain }).then(
        () => null,
        (error: Error) => error,
      );
      expect(failure?.message, domain).to.match(/is not a DNS domain name/);
    }
  });
});
