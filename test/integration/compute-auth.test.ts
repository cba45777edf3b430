/**
 * Who may log in to a compute's Postgres. The superuser `postgres` must not be reachable over TCP without a password
 * (with it a local user runs shell commands through COPY ... FROM PROGRAM); the agent itself logs in over a Unix
 * socket in a directory only Postgres' OS user (and root) can enter, by peer authentication.
 */
import fs from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { useHarness } from '../harness/process.js';
import { createTimeline, newTimelineId, startSafekeepers } from '../harness/safekeepers.js';
import { ComputeNode, postgresSocketDir } from '../harness/computes.js';
import { postgresOsUser } from '../../src/lib/pg/os-user.js';

const run = promisify(execFile);

/** psql's outcome: exit code and what it printed. */
async function psql(args: string[], env: NodeJS.ProcessEnv = {}, asUser?: string): Promise<{ code: number; output: string }> {
  const command = asUser ? ['runuser', '-u', asUser, '--', 'psql'] : ['psql'];
  try {
    const { stdout, stderr } = await run(command[0] as string, [...command.slice(1), '-X', '-w', '-At', ...args], {
      env: { PATH: process.env.PATH, PGCONNECT_TIMEOUT: '10', ...env },
    });
    return { code: 0, output: stdout + stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    return { code: failed.code ?? -1, output: `${failed.stdout ?? ''}${failed.stderr ?? ''}` };
  }
}

describe('compute Postgres authentication (real agent and Postgres)', function () {
  this.timeout(120_000);
  const harness = useHarness();

  async function startCompute(): Promise<ComputeNode> {
    const safekeepers = await startSafekeepers(harness(), 3);
    const timelineId = newTimelineId();
    await createTimeline(safekeepers, timelineId);
    return ComputeNode.start(harness(), { timelineId, term: 1, safekeepers });
  }

  it('refuses the superuser over TCP without a password, and with a wrong one', async () => {
    const compute = await startCompute();
    const address = ['-h', '127.0.0.1', '-p', String(compute.pgPort), '-U', 'postgres', '-d', 'postgres', '-c', 'SELECT 1'];
    const bare = await psql(address);
    expect(bare.code, `psql as postgres over TCP without a password: ${bare.output}`).to.not.equal(0);
    expect(bare.output).to.match(/password/);
    const guessed = await psql(address, { PGPASSWORD: 'postgres' });
    expect(guessed.code, guessed.output).to.not.equal(0);
    expect(guessed.output).to.match(/password authentication failed for user "postgres"/);
    // Replication over TCP is nobody's.
    const replication = await psql(['-d', `host=127.0.0.1 port=${compute.pgPort} user=postgres replication=true`, '-c', 'IDENTIFY_SYSTEM'], { PGPASSWORD: 'x' });
    expect(replication.code, replication.output).to.not.equal(0);
  });

  it('lets the agent\'s OS user in over a private Unix socket, and no other local user', async () => {
    const compute = await startCompute();
    const socketDir = postgresSocketDir(compute.pgPort);
    expect(socketDir, 'the compute listens on a Unix socket').to.be.a('string');
    const stat = fs.statSync(socketDir as string);
    expect(stat.mode & 0o777, 'socket directory mode').to.equal(0o700);
    const owner = postgresOsUser();
    if (owner.uid !== undefined) expect(stat.uid, 'socket directory owner').to.equal(owner.uid);
    const client = await compute.connect();
    try {
      expect((await client.query<{ is_superuser: string }>('SHOW is_superuser')).rows[0]?.is_superuser).to.equal('on');
    } finally {
      await client.end();
    }
    if (process.getuid?.() === 0) {
      // Another local account cannot even reach the socket; root's tests share the agent's identity.
      const other = await psql(['-h', socketDir as string, '-p', String(compute.pgPort), '-U', 'postgres', '-d', 'postgres', '-c', 'SELECT 1'], {}, 'nobody');
      expect(other.code, other.output).to.not.equal(0);
    }
  });
});
