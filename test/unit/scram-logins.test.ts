/**
 * The control plane's side of relayed SCRAM logins: keys only for a right proof, the same answer for a wrong password
 * and a missing role, a stable mock salt, sessions used once, expiring, and bounded in number.
 */
import { expect } from 'chai';
import { ScramLogins, ScramMessageError, ScramSessionUnknownError } from '../../src/control-plane/scram-logins.js';
import { ScramClientSession, createVerifier, keysFromPassword, parseVerifier } from '../../src/lib/scram.js';

const endpointId = `ep-${'a'.repeat(32)}`;

/** One whole exchange through `logins` with `password` against `verifier` (null: no such role). */
function login(logins: ScramLogins, verifier: string | null, password: string, role = 'owner') {
  const client = new ScramClientSession({ password });
  const { sessionId, serverFirst } = logins.begin(endpointId, role, verifier, client.clientFirst());
  return { serverFirst, outcome: logins.finish(sessionId, client.handleServerFirst(serverFirst)), client };
}

describe('control plane: SCRAM logins relayed by the gateway', () => {
  it('gives the ClientKey and ServerKey only for a right proof, and a server signature the client accepts', () => {
    const logins = new ScramLogins({ mockSaltSecret: Buffer.alloc(32, 1) });
    const verifierText = createVerifier('right password');
    const verifier = parseVerifier(verifierText);
    const { outcome, client } = login(logins, verifierText, 'right password');
    expect(outcome.verified).to.equal(true);
    if (!outcome.verified) return;
    expect(outcome.clientKey.equals(keysFromPassword('right password', verifier.salt, verifier.iterations).clientKey)).to.equal(true);
    expect(outcome.serverKey.equals(verifier.serverKey)).to.equal(true);
    client.handleServerFinal(outcome.serverFinal);
    expect(login(logins, verifierText, 'wrong password').outcome).to.deep.equal({ verified: false });
  });

  it('answers a missing role like a wrong password, with a salt that is the same at every attempt and shaped like a real one', () => {
    const secret = Buffer.alloc(32, 7);
    const logins = new ScramLogins({ mockSaltSecret: secret });
    const first = login(logins, null, 'anything', 'nobody');
    const again = login(logins, null, 'anything else', 'nobody');
    expect(first.outcome).to.deep.equal({ verified: false });
    const salt = (serverFirst: string) => /,s=([^,]+),i=(\d+)$/.exec(serverFirst)!;
    expect(salt(again.serverFirst)[1]).to.equal(salt(first.serverFirst)[1]);
    const real = parseVerifier(createVerifier('a password'));
    expect(Buffer.from(salt(first.serverFirst)[1], 'base64').length).to.equal(real.salt.length);
    expect(Number(salt(first.serverFirst)[2])).to.equal(real.iterations);
    expect(salt(login(logins, null, 'x', 'somebody').serverFirst)[1]).to.not.equal(salt(first.serverFirst)[1]);
    // A restarted control plane (same signing key, so same secret) answers the same.
    const restarted = new ScramLogins({ mockSaltSecret: Buffer.from(secret) });
    expect(salt(login(restarted, null, 'x', 'nobody').serverFirst)[1]).to.equal(salt(first.serverFirst)[1]);
  });

  it('uses a session once, forgets it after its time, keeps a bounded number, and calls a malformed message what it is', () => {
    let now = 0;
    const logins = new ScramLogins({ mockSaltSecret: Buffer.alloc(32), ttlMs: 1000, maxExchanges: 3, now: () => now });
    const verifierText = createVerifier('pw');
    const client = new ScramClientSession({ password: 'pw' });
    const { sessionId, serverFirst } = logins.begin(endpointId, 'owner', verifierText, client.clientFirst());
    const final = client.handleServerFirst(serverFirst);
    expect(logins.finish(sessionId, final).verified).to.equal(true);
    expect(() => logins.finish(sessionId, final)).to.throw(ScramSessionUnknownError, 'unknown, used or expired');

    const late = new ScramClientSession({ password: 'pw' });
    const started = logins.begin(endpointId, 'owner', verifierText, late.clientFirst());
    now += 1001;
    expect(() => logins.finish(started.sessionId, late.handleServerFirst(started.serverFirst))).to.throw(ScramSessionUnknownError);

    for (let index = 0; index < 10; index++) logins.begin(endpointId, 'owner', verifierText, new ScramClientSession({ password: 'pw' }).clientFirst());
    expect(logins.size).to.be.at.most(3);
    expect(() => logins.begin(endpointId, 'owner', verifierText, 'p=tls-server-end-point,,n=,r=abc')).to.throw(ScramMessageError, 'channel binding');
  });
});
