/**
 * The console's sessions: the API key sealed in the cookie opens only with the same key file, unaltered and unexpired;
 * CSRF tokens are bound to the cookie.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { loadSessionKey, SessionSealer, type Session } from '../../src/console/session.js';
import { html } from '../../src/console/html.js';

describe('console sessions', () => {
  const session: Session = { apiKey: 'spg99_secret_key', readOnly: false, tenantId: 'tn-a', tenantName: 'acme', issuedAt: Date.now() };
  let directory: string;

  beforeEach(() => {
    directory = fs.mkdtempSync(path.join(os.tmpdir(), 'console-session-'));
  });
  afterEach(() => fs.rmSync(directory, { recursive: true, force: true }));

  it('opens a cookie after a restart with the same key file, and never shows the API key in it', () => {
    const file = path.join(directory, 'session.key');
    const cookie = new SessionSealer(loadSessionKey(file)).seal(session);
    expect(cookie).to.not.include('spg99_secret_key');
    expect(Buffer.from(cookie, 'base64url').toString('latin1')).to.not.include('spg99_secret_key');
    expect(fs.statSync(file).mode & 0o777).to.equal(0o600);
    expect(new SessionSealer(loadSessionKey(file)).open(cookie)).to.deep.equal(session);
  });

  it('refuses a cookie sealed with another key, altered, or expired', () => {
    const sealer = new SessionSealer(loadSessionKey(path.join(directory, 'a.key')), 3600_000);
    const cookie = sealer.seal(session);
    expect(new SessionSealer(loadSessionKey(path.join(directory, 'b.key'))).open(cookie)).to.equal(null);
    const raw = Buffer.from(cookie, 'base64url');
    raw[raw.length - 1] ^= 1;
    expect(sealer.open(raw.toString('base64url'))).to.equal(null);
    expect(sealer.open(cookie, session.issuedAt + 3600_001)).to.equal(null);
    expect(sealer.open('garbage')).to.equal(null);
    expect(sealer.open(undefined)).to.equal(null);
  });

  it('accepts only the CSRF token of the same cookie', () => {
    const sealer = new SessionSealer(loadSessionKey(path.join(directory, 'a.key')));
    const cookie = sealer.seal(session);
    const other = sealer.seal({ ...session, issuedAt: session.issuedAt + 1 });
    expect(sealer.checkCsrf(cookie, sealer.csrfToken(cookie))).to.equal(true);
    expect(sealer.checkCsrf(cookie, sealer.csrfToken(other))).to.equal(false);
    expect(sealer.checkCsrf(cookie, undefined)).to.equal(false);
    expect(sealer.checkCsrf(cookie, '')).to.equal(false);
  });

  it('escapes what pages show', () => {
    expect(html`<p title="${'"x'}">${'<script>alert(1)</script>'}</p>`.text).to.equal('<p title="&#34;x">&#60;script&#62;alert(1)&#60;/script&#62;</p>');
  });
});
