/**
 * Logins through the gateway with SCRAM verified by the control plane (the gateway relays the messages and never
 * holds a verifier): session and pooler mode, a wrong password and a missing role refused alike, and a password
 * reset that counts at once (no verifier cache in the gateway: the old password fails right after the reset).
 */
import { expect } from 'chai';
import pg from 'pg';
import { PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { useHarness } from '../harness/process.js';
import { startGatewayPlatform } from '../harness/platform.js';

async function connectFailure(config: pg.ClientConfig): Promise<Error & { code?: string }> {
  const client = new pg.Client(config);
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (error) {
    return error as Error & { code?: string };
  }
  await client.end();
  throw new Error(`expected the login of ${config.user} to be refused`);
}

describe('gateway logins verified by the control plane (real processes)', function () {
  this.timeout(300_000);
  const harness = useHarness();

  it('logs in in session and pooler mode, refuses a wrong password and a missing role alike, and a reset password counts at once', async () => {
    const { gateway, api, endpointId, owner, project } = await startGatewayPlatform(harness(), { poolerMode: PoolerMode.POOLER_MODE_TRANSACTION });
    const clients: pg.Client[] = [];
    try {
      for (const pooled of [false, true]) {
        const client = await gateway.connect(endpointId, { ...owner, pooled });
        clients.push(client);
        expect((await client.query('SELECT current_user AS me')).rows[0].me, `pooled: ${pooled}`).to.equal(owner.user);
        const wrong = await connectFailure(gateway.clientConfig(endpointId, { ...owner, password: 'not-the-password', pooled }));
        const missing = await connectFailure(gateway.clientConfig(endpointId, { user: 'nobody', password: 'not-the-password', pooled }));
        expect([wrong.code, missing.code]).to.deep.equal(['28P01', '28P01']);
        expect(wrong.message).to.equal(`password authentication failed for user "${owner.user}"`);
        expect(missing.message, 'a missing role reads like a wrong password').to.equal('password authentication failed for user "nobody"');
      }

      // The old password works a moment before the reset (in both modes); right after it, it fails, and the new one works.
      for (const pooled of [false, true]) clients.push(await gateway.connect(endpointId, { ...owner, pooled }));
      const reset = await api.resetRolePassword({ roleId: project.defaultRole!.roleId });
      for (const pooled of [false, true]) {
        const old = await connectFailure(gateway.clientConfig(endpointId, { ...owner, pooled }));
        expect(old.code, `the old password right after the reset (pooled: ${pooled}): ${old.message}`).to.equal('28P01');
        expect(old.message).to.equal(`password authentication failed for user "${owner.user}"`);
        const fresh = await gateway.connect(endpointId, { user: owner.user, password: reset.password, pooled });
        clients.push(fresh);
        expect((await fresh.query('SELECT 1 AS one')).rows[0].one).to.equal(1);
      }
      // Clients logged in before the reset keep their sessions (as with Postgres).
      expect((await clients[0]!.query('SELECT 2 AS two')).rows[0].two).to.equal(2);
      const logged = gateway.process.lines.map((line) => JSON.stringify(line)).join('\n');
      expect(logged, 'no password in the gateway log').to.not.contain(reset.password);
    } finally {
      for (const client of clients) await client.end().catch(() => undefined);
    }
  });
});
