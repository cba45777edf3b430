/**
 * SCRAM-SHA-256: the RFC 7677 test vector, exchanges between the client and server sessions (with a password and
 * with a recovered ClientKey), failures, malformed messages and verifiers, and SASLprep.
 */
import { expect } from 'chai';
import {
  ScramAuthError,
  ScramClientSession,
  ScramProtocolError,
  ScramServerSession,
  createVerifier,
  keysFromPassword,
  parseVerifier,
  saslPrep,
} from '../../src/lib/scram.js';

// RFC 7677, section 3.
const RFC_CLIENT_NONCE = 'rOprNGfwEbeRWgbNEkqO';
const RFC_SERVER_NONCE = '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0';
const RFC_SALT = Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64');
const RFC_CLIENT_FIRST = 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO';
const RFC_SERVER_FIRST = 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096';
const RFC_CLIENT_FINAL = 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=';
const RFC_SERVER_FINAL = 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=';

/** Runs a whole exchange; returns what the server recovered. */
function exchange(client: ScramClientSession, server: ScramServerSession): Buffer {
  const serverFirst = server.handleClientFirst(client.clientFirst());
  const { serverFinal, clientKey } = server.handleClientFinal(client.handleServerFirst(serverFirst));
  client.handleServerFinal(serverFinal);
  return clientKey;
}

/** A server session that has answered `clientFirst`, for feeding it a hand-made client-final-message. */
function serverAfterFirst(verifier: string, clientFirst = 'n,,n=,r=abc'): { server: ScramServerSession; nonce: string } {
  const server = new ScramServerSession(verifier, { serverNonce: 'xyz' });
  const serverFirst = server.handleClientFirst(clientFirst);
  return { server, nonce: /^r=([^,]+)/.exec(serverFirst)![1] };
}

describe('scram', () => {
  const verifier = createVerifier('pencil', { iterations: 4096, salt: RFC_SALT });

  describe('RFC 7677 test vector', () => {
    it('the client computes the proof and checks the server signature of the RFC', () => {
      const client = new ScramClientSession({ password: 'pencil' }, { username: 'user', clientNonce: RFC_CLIENT_NONCE });
      expect(client.clientFirst()).to.equal(RFC_CLIENT_FIRST);
      expect(client.handleServerFirst(RFC_SERVER_FIRST)).to.equal(RFC_CLIENT_FINAL);
      client.handleServerFinal(RFC_SERVER_FINAL);
    });

    it('the server sends the RFC server-first-message, accepts the RFC proof and signs as the RFC', () => {
      const server = new ScramServerSession(parseVerifier(verifier), { serverNonce: RFC_SERVER_NONCE });
      expect(server.handleClientFirst(RFC_CLIENT_FIRST)).to.equal(RFC_SERVER_FIRST);
      expect(server.username).to.equal('user');
      const { serverFinal, clientKey } = server.handleClientFinal(RFC_CLIENT_FINAL);
      expect(serverFinal).to.equal(RFC_SERVER_FINAL);
      expect(clientKey.equals(keysFromPassword('pencil', RFC_SALT, 4096).clientKey)).to.equal(true);
    });

    it('the key form with the recovered ClientKey produces the same messages', () => {
      const { clientKey, storedKey, serverKey } = keysFromPassword('pencil', RFC_SALT, 4096);
      const client = new ScramClientSession({ clientKey, storedKey, serverKey }, { username: 'user', clientNonce: RFC_CLIENT_NONCE });
      expect(client.clientFirst()).to.equal(RFC_CLIENT_FIRST);
      expect(client.handleServerFirst(RFC_SERVER_FIRST)).to.equal(RFC_CLIENT_FINAL);
      client.handleServerFinal(RFC_SERVER_FINAL);
    });
  });

  describe('createVerifier / parseVerifier', () => {
    it('formats as Postgres stores it and parses back', () => {
      expect(verifier).to.match(/^SCRAM-SHA-256\$4096:W22ZaJ0SNY7soEsUEjb6gQ==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$/);
      const parsed = parseVerifier(verifier);
      expect(parsed.iterations).to.equal(4096);
      expect(parsed.salt.equals(RFC_SALT)).to.equal(true);
      const keys = keysFromPassword('pencil', RFC_SALT, 4096);
      expect(parsed.storedKey.equals(keys.storedKey)).to.equal(true);
      expect(parsed.serverKey.equals(keys.serverKey)).to.equal(true);
    });

    it('defaults to 4096 iterations and a fresh 16-byte salt', () => {
      const first = parseVerifier(createVerifier('secret'));
      const second = parseVerifier(createVerifier('secret'));
      expect(first.iterations).to.equal(4096);
      expect(first.salt).to.have.length(16);
      expect(first.salt.equals(second.salt)).to.equal(false);
      expect(parseVerifier(createVerifier('secret', { iterations: 10 })).iterations).to.equal(10);
    });

    it('refuses bad options', () => {
      expect(() => createVerifier('x', { iterations: 0 })).to.throw(RangeError, /iterations/);
      expect(() => createVerifier('x', { iterations: 1.5 })).to.throw(RangeError, /iterations/);
      expect(() => createVerifier('x', { salt: Buffer.alloc(0) })).to.throw(RangeError, /salt/);
    });

    const [, parameters, keys] = verifier.split('$');
    const [storedKey, serverKey] = keys.split(':');
    const short = Buffer.alloc(31).toString('base64');
    const malformed: Array<[string, string, RegExp]> = [
      ['an empty text', '', /3 parts/],
      ['an MD5 hash', 'md5abcdef', /3 parts/],
      ['another mechanism', `SCRAM-SHA-1$${parameters}$${keys}`, /mechanism is "SCRAM-SHA-1"/],
      ['no keys', `SCRAM-SHA-256$${parameters}`, /3 parts/],
      ['no salt', `SCRAM-SHA-256$4096$${keys}`, /parameters/],
      ['zero iterations', `SCRAM-SHA-256$0:${RFC_SALT.toString('base64')}$${keys}`, /iteration count "0"/],
      ['negative iterations', `SCRAM-SHA-256$-1:${RFC_SALT.toString('base64')}$${keys}`, /iteration count "-1"/],
      ['non-numeric iterations', `SCRAM-SHA-256$abc:${RFC_SALT.toString('base64')}$${keys}`, /iteration count "abc"/],
      ['iterations beyond 32 bits', `SCRAM-SHA-256$99999999999:${RFC_SALT.toString('base64')}$${keys}`, /iteration count/],
      ['an empty salt', `SCRAM-SHA-256$4096:$${keys}`, /salt/],
      ['a salt that is not base64', `SCRAM-SHA-256$4096:not*base64$${keys}`, /salt/],
      ['no ServerKey', `SCRAM-SHA-256$${parameters}$${storedKey}`, /keys/],
      ['a third key', `SCRAM-SHA-256$${parameters}$${storedKey}:${serverKey}:x`, /keys/],
      ['a 31-byte StoredKey', `SCRAM-SHA-256$${parameters}$${short}:${serverKey}`, /StoredKey is not 32 bytes/],
      ['a truncated ServerKey', `SCRAM-SHA-256$${parameters}$${storedKey}:${serverKey.slice(1)}`, /ServerKey is not 32 bytes/],
      ['a StoredKey that is not base64', `SCRAM-SHA-256$${parameters}$!${storedKey.slice(1)}:${serverKey}`, /StoredKey/],
    ];
    for (const [title, text, message] of malformed) {
      it(`refuses a verifier with ${title}, naming the problem`, () => {
        expect(() => parseVerifier(text)).to.throw(Error, message);
      });
    }
  });

  describe('exchanges', () => {
    const appVerifier = createVerifier('correct horse', { iterations: 1000 });

    it('a password client authenticates; its recovered ClientKey authenticates again in the key form', () => {
      const clientKey = exchange(new ScramClientSession({ password: 'correct horse' }), new ScramServerSession(appVerifier));
      const { serverKey, storedKey } = parseVerifier(appVerifier);
      const again = exchange(new ScramClientSession({ clientKey, serverKey }), new ScramServerSession(appVerifier));
      expect(again.equals(clientKey)).to.equal(true);
      exchange(new ScramClientSession({ clientKey, storedKey }), new ScramServerSession(appVerifier));
      exchange(new ScramClientSession({ clientKey }), new ScramServerSession(appVerifier));
    });

    it('uses fresh nonces for every session', () => {
      const first = new ScramClientSession({ password: 'a' }).clientFirst();
      const second = new ScramClientSession({ password: 'a' }).clientFirst();
      expect(first).to.match(/^n,,n=,r=[A-Za-z0-9+/]{24}$/);
      expect(first).to.not.equal(second);
      const serverFirst = new ScramServerSession(appVerifier).handleClientFirst('n,,n=,r=abc');
      expect(serverFirst).to.match(/^r=abc[A-Za-z0-9+/]{24},s=[^,]+,i=1000$/);
    });

    it('a wrong password fails with ScramAuthError and no ClientKey', () => {
      const client = new ScramClientSession({ password: 'wrong horse' });
      const server = new ScramServerSession(appVerifier);
      const final = client.handleServerFirst(server.handleClientFirst(client.clientFirst()));
      expect(() => server.handleClientFinal(final)).to.throw(ScramAuthError, 'password authentication failed');
    });

    it('a wrong ClientKey fails, and is caught early when the StoredKey is given', () => {
      const { serverKey, storedKey } = parseVerifier(appVerifier);
      const clientKey = Buffer.alloc(32, 7);
      expect(() => exchange(new ScramClientSession({ clientKey, serverKey }), new ScramServerSession(appVerifier))).to.throw(ScramAuthError);
      expect(() => new ScramClientSession({ clientKey, storedKey })).to.throw(ScramAuthError, /StoredKey/);
      expect(() => new ScramClientSession({ clientKey: Buffer.alloc(16) })).to.throw(RangeError, /32 bytes/);
    });

    it('the client refuses a server that does not know the verifier (wrong signature) or reports an error', () => {
      const impostor = createVerifier('correct horse', { iterations: 1000 }); // another salt: another ServerKey
      const client = new ScramClientSession({ clientKey: keysFromPassword('x', Buffer.from('s'), 1).clientKey, serverKey: parseVerifier(impostor).serverKey }, { clientNonce: 'abc' });
      client.clientFirst();
      client.handleServerFirst('r=abcX,s=c2FsdA==,i=1');
      expect(() => client.handleServerFinal(`v=${Buffer.alloc(32).toString('base64')}`)).to.throw(ScramAuthError, /signature does not match/);

      const refused = new ScramClientSession({ password: 'p' }, { clientNonce: 'abc' });
      refused.clientFirst();
      refused.handleServerFirst('r=abcdef,s=c2FsdA==,i=1');
      expect(() => refused.handleServerFinal('e=invalid-proof')).to.throw(ScramAuthError, /invalid-proof/);
    });

    it('accepts the "y,," gs2 header and checks that c= repeats it', () => {
      const client = new ScramClientSession({ password: 'correct horse' }, { clientNonce: 'abc' });
      const server = new ScramServerSession(appVerifier, { serverNonce: 'xyz' });
      const serverFirst = server.handleClientFirst('y,,n=,r=abc');
      // The client session only sends "n,,": its c=biws must not pass for a "y,," exchange.
      client.clientFirst();
      expect(() => server.handleClientFinal(client.handleServerFirst(serverFirst))).to.throw(ScramProtocolError, /gs2 header/);

      const { server: yServer, nonce } = serverAfterFirst(appVerifier, 'y,,n=,r=abc');
      expect(() => yServer.handleClientFinal(`c=eSws,r=${nonce},p=${Buffer.alloc(32).toString('base64')}`)).to.throw(ScramAuthError);
    });

    it('refuses messages out of order', () => {
      const server = new ScramServerSession(appVerifier);
      expect(() => server.handleClientFinal('c=biws,r=x,p=x')).to.throw(ScramProtocolError, /before/);
      server.handleClientFirst('n,,n=,r=abc');
      expect(() => server.handleClientFirst('n,,n=,r=abc')).to.throw(ScramProtocolError, /already/);
      const client = new ScramClientSession({ password: 'p' });
      expect(() => client.handleServerFirst('r=x,s=c2FsdA==,i=1')).to.throw(ScramProtocolError, /out of order/);
      expect(() => client.handleServerFinal('v=x')).to.throw(ScramProtocolError, /out of order/);
    });
  });

  describe('malformed messages', () => {
    const appVerifier = createVerifier('pw', { iterations: 1 });
    const proof = Buffer.alloc(32).toString('base64');

    const clientFirsts: Array<[string, RegExp]> = [
      ['p=tls-server-end-point,,n=,r=abc', /channel binding \("p="\).*not supported/],
      ['', /gs2 header/],
      ['x,,n=,r=abc', /gs2 header/],
      ['n,a=admin,n=,r=abc', /authorization identity/],
      ['n,x,n=,r=abc', /gs2 header/],
      ['n,,r=abc', /lacks the "n=" attribute at position 1 \(found "r="\)/],
      ['n,,n=', /lacks the "r=" attribute at position 2/],
      ['n,,n=,r=', /client nonce/],
      ['n,,n=,r=ab\u00e9', /client nonce/],
      ['n,,m=ext,n=,r=abc', /extension/],
      ['n,,n=,r=abc,garbage', /malformed attribute "garbage"/],
    ];
    for (const [message, error] of clientFirsts) {
      it(`the server refuses the client-first-message ${JSON.stringify(message)}`, () => {
        expect(() => new ScramServerSession(appVerifier).handleClientFirst(message)).to.throw(ScramProtocolError, error);
      });
    }

    const clientFinals: Array<[(nonce: string) => string, RegExp]> = [
      [(nonce) => `r=${nonce},p=${proof}`, /lacks the "c=" attribute/],
      [(nonce) => `c=biws,p=${proof}`, /lacks the "r=" attribute/],
      [(nonce) => `c=biws,r=${nonce}`, /does not end with the proof/],
      [(nonce) => `c=b!ws,r=${nonce},p=${proof}`, /channel binding \("c="\).*not base64/],
      [(nonce) => `c=eSws,r=${nonce},p=${proof}`, /gs2 header/],
      [(nonce) => `c=biws,r=${nonce}X,p=${proof}`, /nonce .* not the one the server sent/],
      [(nonce) => `c=biws,r=${nonce},p=not*base64`, /proof \("p="\) is not 32 bytes of base64/],
      [(nonce) => `c=biws,r=${nonce},p=${proof.slice(4)}`, /proof/],
      [() => '', /empty/],
    ];
    for (const [make, error] of clientFinals) {
      it(`the server refuses the client-final-message ${JSON.stringify(make('<nonce>'))}`, () => {
        const { server, nonce } = serverAfterFirst(appVerifier);
        expect(() => server.handleClientFinal(make(nonce))).to.throw(ScramProtocolError, error);
      });
    }

    const serverFirsts: Array<[string, RegExp]> = [
      ['r=abcdef,s=c2FsdA==', /lacks the "i=" attribute/],
      ['s=c2FsdA==,i=1', /lacks the "r=" attribute/],
      ['r=abcdef,i=1', /lacks the "s=" attribute/],
      ['r=abc,s=c2FsdA==,i=1', /does not extend the client nonce/],
      ['r=xyzdef,s=c2FsdA==,i=1', /does not extend the client nonce/],
      ['r=abcdef,s=c2F*dA==,i=1', /salt .* not non-empty base64/],
      ['r=abcdef,s=,i=1', /salt/],
      ['r=abcdef,s=c2FsdA==,i=0', /iteration count/],
      ['r=abcdef,s=c2FsdA==,i=1e3', /iteration count/],
      ['m=x,r=abcdef,s=c2FsdA==,i=1', /extension/],
    ];
    for (const [message, error] of serverFirsts) {
      it(`the client refuses the server-first-message ${JSON.stringify(message)}`, () => {
        const client = new ScramClientSession({ password: 'pw' }, { clientNonce: 'abc' });
        client.clientFirst();
        expect(() => client.handleServerFirst(message)).to.throw(ScramProtocolError, error);
      });
    }

    it('the client refuses a server-final-message without a well-formed signature', () => {
      for (const [message, error] of [['x=1', /lacks the "v="/], ['v=abc', /signature/], ['', /empty/]] as const) {
        const client = new ScramClientSession({ password: 'pw' }, { clientNonce: 'abc' });
        client.clientFirst();
        client.handleServerFirst('r=abcdef,s=c2FsdA==,i=1');
        expect(() => client.handleServerFinal(message)).to.throw(ScramProtocolError, error);
      }
    });

    it('refuses nonces with a comma or outside printable ASCII', () => {
      expect(() => new ScramClientSession({ password: 'p' }, { clientNonce: 'a,b' })).to.throw(ScramProtocolError, /client nonce/);
      expect(() => new ScramServerSession(appVerifier, { serverNonce: '' })).to.throw(ScramProtocolError, /server nonce/);
    });

    it('escapes "=" and "," in the user name', () => {
      expect(new ScramClientSession({ password: 'p' }, { username: 'a=b,c', clientNonce: 'n' }).clientFirst()).to.equal('n,,n=a=3Db=2Cc,r=n');
    });
  });

  describe('saslPrep', () => {
    const cases: Array<[string, string, string]> = [
      ['ASCII as is, controls included', 'pa ss\u0007', 'pa ss\u0007'],
      ['NFKC composes a decomposed accent', 'pa\u0308ss', 'p\u00e4ss'],
      ['NFKC folds compatibility characters', '\ufb01ve\u2168', 'fiveIX'],
      ['non-ASCII spaces become U+0020', 'a\u00a0b\u3000c', 'a b c'],
      ['"mapped to nothing" characters go', 'x\u00ady\u200dz\ufe0f\u00e9', 'xyz\u00e9'],
      ['a prohibited character keeps the password raw', '\ufb01\u0085', '\ufb01\u0085'],
      ['private use keeps the password raw', '\ufb01\ue000', '\ufb01\ue000'],
      ['an emoji (unassigned in Unicode 3.2) keeps the password raw', '\ufb01\u{1f600}', '\ufb01\u{1f600}'],
      ['only mapped-to-nothing characters keep the password raw', '\u00ad', '\u00ad'],
      ['right-to-left only is normalized', '\u05d0\ufb21', '\u05d0\u05d0'],
      ['right-to-left mixed with left-to-right keeps the password raw', '\u05d0a\ufb21', '\u05d0a\ufb21'],
      ['right-to-left not at both ends keeps the password raw', '\u05d01\ufb211', '\u05d01\ufb211'],
    ];
    for (const [title, input, output] of cases) {
      it(title, () => {
        expect(saslPrep(input)).to.equal(output);
      });
    }

    it('a verifier made from one form of a password accepts the other form', () => {
      const made = createVerifier('p\u00e4ss\u00a0word', { iterations: 1 });
      exchange(new ScramClientSession({ password: 'pa\u0308ss word' }), new ScramServerSession(made));
    });
  });
});
