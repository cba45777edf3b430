/**
 * What the edges quote back and which names they take: an id of any length comes back as a short prefix, and names
 * with control, bidirectional-control or zero-width characters are refused with the rule named.
 */
import { expect } from 'chai';
import { ServerError, Status } from '../../src/lib/grpc/errors.js';
import { echo, ECHO_MAX_CHARS } from '../../src/lib/ids.js';
import { branchName, databaseName, displayName, idArgument, roleName } from '../../src/control-plane/model.js';
import { parseComputeId, parseComputeSpec } from '../../src/provisioner/model.js';

function invalidArgument(run: () => unknown): ServerError {
  try {
    run();
  } catch (error) {
    expect(error).to.be.instanceOf(ServerError);
    expect(Status[(error as ServerError).code]).to.equal('INVALID_ARGUMENT');
    return error as ServerError;
  }
  expect.fail('expected INVALID_ARGUMENT');
}

const HUGE = 'x'.repeat(40_000);

describe('edge: ids quoted back', () => {
  it('quotes at most 64 characters and the length, escaping control and deceptive characters', () => {
    expect(echo('tl-abc')).to.equal('"tl-abc"');
    const long = echo(HUGE);
    expect(long).to.equal(`"${'x'.repeat(ECHO_MAX_CHARS)}…" (40000 characters)`);
    expect(echo('a\nb\u202ec\u200bd')).to.equal('"a\\nb\\u202ec\\u200bd"');
  });

  it('answers a 40 kB id with a short error at the provisioner and the control plane', () => {
    for (const run of [
      () => parseComputeId(HUGE),
      () => parseComputeSpec({ endpointId: HUGE } as never),
      () => parseComputeSpec({ endpointId: `ep-${'a'.repeat(32)}`, timelineId: HUGE } as never),
      () => idArgument('project', HUGE, 'project_id'),
      () => idArgument('endpoint', HUGE, 'endpoint_id'),
    ]) {
      const error = invalidArgument(run);
      expect(error.details.length, error.details.slice(0, 300)).to.be.lessThan(300);
      expect(error.details).to.contain('(40000 characters)');
    }
  });
});

describe('edge: names', () => {
  const deceptive = {
    'a right-to-left override': 'shop\u202eexe.js',
    'a left-to-right isolate': 'shop\u2066x\u2069',
    'a zero-width space': 'sh\u200bop',
    'a zero-width joiner': 'sh\u200dop',
    'a byte-order mark': '\ufeffshop',
  };

  it('refuses project names with control, bidirectional-control or zero-width characters, naming the rule', () => {
    for (const [what, name] of Object.entries(deceptive)) {
      const error = invalidArgument(() => displayName(name, 'name'));
      expect(error.details, what).to.contain('bidirectional-text controls').and.to.contain('zero-width');
    }
    expect(invalidArgument(() => displayName('a\u0085b', 'name')).details).to.contain('control characters');
    expect(invalidArgument(() => displayName('a\nb', 'name')).details).to.contain('control characters');
    expect(displayName('Shop — production ✓', 'name')).to.equal('Shop — production ✓');
  });

  it('refuses such characters in branch, role and database names too', () => {
    for (const [what, name] of Object.entries(deceptive)) {
      expect(invalidArgument(() => branchName(name, 'name')).details, what).to.contain('is not a branch name');
      expect(invalidArgument(() => roleName(name, 'name')).details, what).to.contain('is not a role name');
      expect(invalidArgument(() => databaseName(name, 'database_name')).details, what).to.contain('zero-width');
    }
    // What an error quotes shows the hidden character, not its effect.
    expect(invalidArgument(() => branchName('main\u202e', 'name')).details).to.contain('main\\u202e');
  });
});
