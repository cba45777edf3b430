/**
 * The connection URIs the control plane builds and the forms the CLI makes of them: what each parser of them
 * (libpq's URI rules, pg-connection-string, pgjdbc's URL decoding) reads back.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { parse } from 'pg-connection-string';
import { connectionUri, sharedHostFor, type PublicAccess } from '../../src/control-plane/connection-strings.js';
import { formatConnection, parseConnectionUri, uriWithPassword } from '../../src/cli/connection-formats.js';

const ENDPOINT = 'ep-0123456789abcdef0123456789abcdef';
/** A CA file that exists: pg-connection-string reads the file sslrootcert names. */
const CA_FILE = path.join(os.tmpdir(), `spg99-connection-strings-${process.pid}-ca.crt`);
const LOCAL: PublicAccess = { domain: 'spg99.localhost', port: 6432, sharedHost: '127.0.0.1', rootCert: CA_FILE };
const PRODUCTION: PublicAccess = { domain: 'db.example.com', port: 5432, sharedHost: '', rootCert: 'system' };

describe('connection strings', () => {
  before(() => fs.writeFileSync(CA_FILE, 'a CA certificate\n'));
  after(() => fs.rmSync(CA_FILE, { force: true }));

  it('share 127.0.0.1 under a one-label domain unless a public host is given; names of their own otherwise', () => {
    expect(sharedHostFor('localhost', '')).to.equal('127.0.0.1');
    expect(sharedHostFor('spg99.localhost', '')).to.equal('');
    expect(sharedHostFor('spg99.localhost', '127.0.0.1')).to.equal('127.0.0.1');
    expect(sharedHostFor('db.example.com', 'gw.example.com')).to.equal('gw.example.com');
  });

  it('name the shared host, the endpoint in options (its = encoded for libpq), verify-full and the CA file', () => {
    const uri = connectionUri(LOCAL, { endpointId: ENDPOINT, pooled: true, role: 'app', database: 'shop' });
    expect(uri).to.equal(`postgresql://app@127.0.0.1:6432/shop?options=endpoint%3D${ENDPOINT}-pooler&sslmode=verify-full&sslrootcert=${CA_FILE}`);
    const read = parse(uri);
    expect(read.ssl).to.deep.equal({ ca: 'a CA certificate\n' });
    expect(read).to.include({ host: '127.0.0.1', port: '6432', user: 'app', database: 'shop', options: `endpoint=${ENDPOINT}-pooler`, sslmode: 'verify-full' });
  });

  it('name ep-<id>.<domain> under a real domain (SNI routes it), with the system CA store and no port when 5432', () => {
    expect(connectionUri(PRODUCTION, { endpointId: ENDPOINT, pooled: false, role: 'owner', database: 'postgres', password: 'p@ss/w:rd' })).to.equal(
      `postgresql://owner:p%40ss%2Fw%3Ard@${ENDPOINT}.db.example.com/postgres?sslmode=verify-full&sslrootcert=system`,
    );
  });

  it('put an IPv6 shared host in brackets and encode what a CA path or a name needs', () => {
    const uri = connectionUri({ ...LOCAL, sharedHost: '::1', rootCert: '/tmp/my CA&co.crt' }, { endpointId: ENDPOINT, pooled: false, role: 'owner', database: 'my db' });
    expect(uri).to.equal(`postgresql://owner@[::1]:6432/my%20db?options=endpoint%3D${ENDPOINT}&sslmode=verify-full&sslrootcert=/tmp/my%20CA%26co.crt`);
    expect(parseConnectionUri(uri)).to.deep.include({ host: '::1', port: 6432, database: 'my db' });
    expect(parseConnectionUri(uri).parameters).to.deep.include(['sslrootcert', '/tmp/my CA&co.crt']);
  });

  it('take a password into the URI, replacing none or an old one', () => {
    const uri = connectionUri(LOCAL, { endpointId: ENDPOINT, pooled: false, role: 'owner', database: 'postgres' });
    const withPassword = uriWithPassword(uri, 'a+b/c');
    expect(withPassword.startsWith('postgresql://owner:a%2Bb%2Fc@127.0.0.1:6432/postgres?')).to.equal(true);
    expect(parse(withPassword).password).to.equal('a+b/c');
    expect(uriWithPassword(withPassword, 'new')).to.equal(uriWithPassword(uri, 'new'));
  });

  it('print libpq keywords, quoting what needs it', () => {
    const uri = connectionUri({ ...LOCAL, rootCert: "/tmp/o'neil ca.crt" }, { endpointId: ENDPOINT, pooled: false, role: 'owner', database: 'postgres' });
    expect(formatConnection(uri, 'keyword', 'se cret')).to.equal(
      `host=127.0.0.1 port=6432 user=owner password='se cret' dbname=postgres options=endpoint=${ENDPOINT} sslmode=verify-full sslrootcert='/tmp/o\\'neil ca.crt'`,
    );
  });

  it('print PG* exports, with NODE_EXTRA_CA_CERTS for a CA file, and the password when known', () => {
    const uri = connectionUri(LOCAL, { endpointId: ENDPOINT, pooled: false, role: 'owner', database: 'postgres' });
    expect(formatConnection(uri, 'env', "it's")).to.equal(
      [
        'export PGHOST=127.0.0.1',
        'export PGPORT=6432',
        'export PGUSER=owner',
        `export PGPASSWORD='it'\\''s'`,
        'export PGDATABASE=postgres',
        `export PGOPTIONS=endpoint=${ENDPOINT}`,
        'export PGSSLMODE=verify-full',
        `export PGSSLROOTCERT=${CA_FILE}`,
        `export NODE_EXTRA_CA_CERTS=${CA_FILE}`,
      ].join('\n'),
    );
  });

  it('print a pgjdbc URL: user and password as parameters, Java\'s trust store for a public CA', () => {
    const local = connectionUri(LOCAL, { endpointId: ENDPOINT, pooled: true, role: 'owner', database: 'postgres' });
    expect(formatConnection(local, 'jdbc', 'a+b')).to.equal(
      `jdbc:postgresql://127.0.0.1:6432/postgres?user=owner&password=a%2Bb&options=endpoint%3D${ENDPOINT}-pooler&sslmode=verify-full&sslrootcert=${CA_FILE}`,
    );
    const production = connectionUri(PRODUCTION, { endpointId: ENDPOINT, pooled: false, role: 'owner', database: 'postgres' });
    expect(formatConnection(production, 'jdbc')).to.equal(
      `jdbc:postgresql://${ENDPOINT}.db.example.com:5432/postgres?user=owner&sslmode=verify-full&sslfactory=org.postgresql.ssl.DefaultJavaSSLFactory`,
    );
    expect(formatConnection(production, 'uri')).to.equal(production);
  });
});
