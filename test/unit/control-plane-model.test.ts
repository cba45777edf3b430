/**
 * The control plane's edge validation, ids and secrets, without a server.
 */
import { expect } from 'chai';
import { ServerError, Status } from '../../src/lib/grpc/errors.js';
import { ApiKeyScope, PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { isId, newApiKeySecret, newId, newTimelineId, API_KEY_SECRET_PATTERN } from '../../src/control-plane/ids.js';
import {
  branchName,
  displayName,
  endpointSettingsArgument,
  endpointSettingsMessage,
  idArgument,
  PLATFORM_ENDPOINT_DEFAULTS,
  roleName,
  scopeArgument,
} from '../../src/control-plane/model.js';
import { sameSecret, secretHash } from '../../src/control-plane/secrets.js';

function invalid(run: () => unknown, ...phrases: string[]): void {
  let caught: unknown;
  try {
    run();
  } catch (error) {
    caught = error;
  }
  expect(caught).to.be.instanceOf(ServerError);
  expect((caught as ServerError).code).to.equal(Status.INVALID_ARGUMENT);
  for (const phrase of phrases) expect((caught as ServerError).details).to.contain(phrase);
}

describe('control plane: ids, secrets and validation', () => {
  it('makes ids with readable prefixes that are DNS labels, and recognises only its own', () => {
    const ids = new Set(Array.from({ length: 1000 }, () => newId('endpoint')));
    expect(ids.size).to.equal(1000);
    for (const id of ids) {
      expect(id).to.match(/^ep-[0-9a-f]{32}$/);
      expect(isId('endpoint', id)).to.equal(true);
      expect(isId('project', id)).to.equal(false);
    }
    expect(newTimelineId()).to.match(/^tl-[0-9a-f]{32}$/);
    expect(isId('project', 'pj-ABCDEFGHIJKLMNOP')).to.equal(false);
  });

  it('makes API key secrets of 260 random bits and compares and hashes them', () => {
    const secret = newApiKeySecret();
    expect(secret).to.match(API_KEY_SECRET_PATTERN);
    expect(newApiKeySecret()).to.not.equal(secret);
    expect(secretHash(secret)).to.match(/^[0-9a-f]{64}$/).and.to.equal(secretHash(secret));
    expect(sameSecret(secret, secret)).to.equal(true);
    expect(sameSecret(secret, `${secret}x`)).to.equal(false);
    expect(sameSecret('', secret)).to.equal(false);
  });

  it('validates names and ids, naming the field', () => {
    expect(displayName('Acme Corp ✓', 'name')).to.equal('Acme Corp ✓');
    expect(displayName('é'.repeat(64), 'name')).to.have.length(64);
    invalid(() => displayName('', 'name'), 'name is required');
    invalid(() => displayName('x'.repeat(65), 'name'), 'name is 65 characters long');
    invalid(() => displayName('tab\there', 'name'), 'control characters');
    expect(branchName('feature/login-1.2', 'name')).to.equal('feature/login-1.2');
    invalid(() => branchName('has space', 'default_branch_name'), 'default_branch_name "has space"');
    expect(roleName('app_user2', 'name')).to.equal('app_user2');
    invalid(() => roleName('spg99_admin', 'name'), 'reserved');
    invalid(() => roleName('2fast', 'name'), 'not a role name');
    invalid(() => roleName('r'.repeat(64), 'name'), 'at most 63');
    expect(idArgument('apiKey', 'ky-abcdefgh23456789', 'key_id')).to.equal('ky-abcdefgh23456789');
    invalid(() => idArgument('apiKey', 'ky-short', 'key_id'), 'key_id "ky-short" is malformed');
    expect(scopeArgument(ApiKeyScope.API_KEY_SCOPE_READ, 'scope')).to.equal('read');
    invalid(() => scopeArgument(ApiKeyScope.UNRECOGNIZED, 'scope'), 'scope -1 is unknown');
  });

  it('fills endpoint settings from defaults and checks their bounds', () => {
    const filled = endpointSettingsArgument({ profile: { cpuMillis: 2000, memoryMib: 0 }, poolerMode: PoolerMode.POOLER_MODE_UNSPECIFIED }, PLATFORM_ENDPOINT_DEFAULTS, 's');
    expect(filled).to.deep.equal({ ...PLATFORM_ENDPOINT_DEFAULTS, profile: { cpuMillis: 2000, memoryMib: 1024 } });
    expect(endpointSettingsArgument(undefined, filled, 's')).to.deep.equal(filled);
    const never = endpointSettingsArgument({ suspendTimeout: { seconds: 0n, nanos: 0 }, poolerMode: PoolerMode.POOLER_MODE_TRANSACTION }, filled, 's');
    expect(never).to.deep.include({ suspendTimeoutMs: 0, poolerMode: 'transaction' });
    expect(endpointSettingsMessage(never).suspendTimeout).to.deep.equal({ seconds: 0n, nanos: 0 });
    invalid(() => endpointSettingsArgument({ suspendTimeout: { seconds: -1n, nanos: 0 }, poolerMode: 0 }, filled, 's'), 's.suspend_timeout must not be negative');
    invalid(() => endpointSettingsArgument({ profile: { cpuMillis: 1000, memoryMib: 100 }, poolerMode: 0 }, filled, 's'), 's.profile.memory_mib 100');
    invalid(
      () => endpointSettingsArgument({ autoscale: { minProfile: { cpuMillis: 250, memoryMib: 256 } }, poolerMode: 0 }, filled, 's'),
      's.autoscale needs both',
    );
    invalid(
      () =>
        endpointSettingsArgument(
          { profile: { cpuMillis: 8000, memoryMib: 8192 }, autoscale: { minProfile: { cpuMillis: 250, memoryMib: 256 }, maxProfile: { cpuMillis: 4000, memoryMib: 4096 } }, poolerMode: 0 },
          filled,
          's',
        ),
      's.profile must lie within autoscale',
    );
    invalid(() => endpointSettingsArgument({ poolerMode: 7 as PoolerMode }, filled, 's'), 's.pooler_mode 7 is unknown');
  });
});
