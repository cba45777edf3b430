/**
 * Configuration: flags, environment variables, defaults, and errors that name the flag, its variable and what is
 * expected.
 */
import { expect } from 'chai';
import { ConfigError, loadConfig, parseHostPort, usage } from '../../src/lib/config.js';

const spec = {
  dataDir: { kind: 'string', description: 'where the data lives' },
  listen: { kind: 'string', description: 'address to listen on', default: '127.0.0.1:7501' },
  walBufferKib: { kind: 'integer', description: 'WAL buffer size in KiB', default: 64, min: 8, max: 1024 },
  fsync: { kind: 'boolean', description: 'fsync WAL', default: true },
  safekeepers: { kind: 'list', description: 'safekeeper addresses', default: [] as string[] },
} as const;

/** The ConfigError `action` throws (fails when it throws nothing or something else). */
function configError(action: () => unknown): ConfigError {
  try {
    action();
  } catch (error) {
    expect(error).to.be.instanceOf(ConfigError);
    return error as ConfigError;
  }
  expect.fail('expected a ConfigError');
}

describe('config', () => {
  it('reads flags, converting each kind', () => {
    const config = loadConfig(
      spec,
      ['--data-dir', '/data', '--listen=0.0.0.0:1', '--wal-buffer-kib', '128', '--fsync', '--safekeepers', 'a:1, b:2,,c:3'],
      { SPG99_FSYNC: 'false' },
    );
    expect(config).to.deep.equal({
      dataDir: '/data',
      listen: '0.0.0.0:1',
      walBufferKib: 128,
      fsync: true,
      safekeepers: ['a:1', 'b:2', 'c:3'],
    });
  });

  it('uses defaults for options given nowhere', () => {
    const config = loadConfig(spec, ['--data-dir', '/data'], {});
    expect(config).to.deep.equal({ dataDir: '/data', listen: '127.0.0.1:7501', walBufferKib: 64, fsync: true, safekeepers: [] });
  });

  it('a boolean flag is a switch: present means true, and it takes no value (false comes from the environment)', () => {
    const switchSpec = { verbose: { kind: 'boolean', description: 'talk', default: false } } as const;
    expect(loadConfig(switchSpec, ['--verbose'], {}).verbose).to.equal(true);
    expect(loadConfig(switchSpec, [], {}).verbose).to.equal(false);
    expect(configError(() => loadConfig(switchSpec, ['--verbose=false'], {})).message).to.include('--verbose');
  });

  describe('a required option missing', () => {
    it('is a ConfigError naming the flag, its environment variable and what it is for', () => {
      const error = configError(() => loadConfig(spec, [], {}));
      expect(error.name).to.equal('ConfigError');
      expect(error.message).to.include('--data-dir');
      expect(error.message).to.include('SPG99_DATA_DIR');
      expect(error.message).to.include('required');
      expect(error.message).to.include('where the data lives');
    });

    it('counts an empty value as missing', () => {
      const error = configError(() => loadConfig(spec, [], { SPG99_DATA_DIR: '' }));
      expect(error.message).to.include('--data-dir');
    });
  });

  describe('environment variables', () => {
    it('are used when the flag is absent', () => {
      const config = loadConfig(spec, [], {
        SPG99_DATA_DIR: '/from-env',
        SPG99_WAL_BUFFER_KIB: '256',
        SPG99_FSYNC: 'off',
        SPG99_SAFEKEEPERS: 'x:1,y:2',
      });
      expect(config.dataDir).to.equal('/from-env');
      expect(config.walBufferKib).to.equal(256);
      expect(config.fsync).to.equal(false);
      expect(config.safekeepers).to.deep.equal(['x:1', 'y:2']);
    });

    it('lose to the flag', () => {
      const config = loadConfig(spec, ['--data-dir', '/from-flag', '--wal-buffer-kib', '16'], { SPG99_DATA_DIR: '/from-env', SPG99_WAL_BUFFER_KIB: '256' });
      expect(config.dataDir).to.equal('/from-flag');
      expect(config.walBufferKib).to.equal(16);
      expect(loadConfig(spec, ['--data-dir', 'd', '--fsync'], { SPG99_FSYNC: 'false' }).fsync).to.equal(true);
    });

    it('spell booleans in the usual ways', () => {
      const spellings = [['1', true], ['TRUE', true], ['yes', true], ['on', true], ['0', false], ['False', false], ['no', false], ['off', false]] as const;
      for (const [text, value] of spellings) {
        expect(loadConfig(spec, ['--data-dir', 'd'], { SPG99_FSYNC: text }).fsync, text).to.equal(value);
      }
      const error = configError(() => loadConfig(spec, ['--data-dir', 'd'], { SPG99_FSYNC: 'maybe' }));
      expect(error.message).to.include('--fsync (or SPG99_FSYNC)');
      expect(error.message).to.include('"maybe"');
    });
  });

  describe('integers', () => {
    it('accept the bounds themselves', () => {
      expect(loadConfig(spec, ['--data-dir', 'd', '--wal-buffer-kib', '8'], {}).walBufferKib).to.equal(8);
      expect(loadConfig(spec, ['--data-dir', 'd', '--wal-buffer-kib', '1024'], {}).walBufferKib).to.equal(1024);
    });

    it('refuse a value below the minimum, naming the flag, the variable and the bound', () => {
      const error = configError(() => loadConfig(spec, ['--data-dir', 'd', '--wal-buffer-kib', '7'], {}));
      expect(error.message).to.include('--wal-buffer-kib (or SPG99_WAL_BUFFER_KIB)');
      expect(error.message).to.include('at least 8');
      expect(error.message).to.include('7');
    });

    it('refuse a value above the maximum (also from the environment)', () => {
      const error = configError(() => loadConfig(spec, ['--data-dir', 'd'], { SPG99_WAL_BUFFER_KIB: '1025' }));
      expect(error.message).to.include('SPG99_WAL_BUFFER_KIB');
      expect(error.message).to.include('at most 1024');
    });

    for (const text of ['1.5', 'abc', '12kB', 'NaN', 'Infinity']) {
      it(`refuse ${JSON.stringify(text)}`, () => {
        const error = configError(() => loadConfig(spec, ['--data-dir', 'd', '--wal-buffer-kib', text], {}));
        expect(error.message).to.include('--wal-buffer-kib');
        expect(error.message).to.include('must be an integer');
        expect(error.message).to.include(`"${text}"`);
      });
    }
  });

  describe('the command line', () => {
    it('refuses an unknown flag and lists the known ones', () => {
      const error = configError(() => loadConfig(spec, ['--data-dir', 'd', '--colour', 'blue'], {}));
      expect(error.message).to.include('--colour');
      expect(error.message).to.include('known flags: --data-dir --listen --wal-buffer-kib --fsync --safekeepers');
    });

    it('refuses positional arguments', () => {
      configError(() => loadConfig(spec, ['--data-dir', 'd', 'stray'], {}));
    });

    it('refuses a string flag without its value', () => {
      const error = configError(() => loadConfig(spec, ['--data-dir'], {}));
      expect(error.message).to.include('--data-dir');
    });
  });

  describe('usage', () => {
    it('describes every option with its flag, variable, kind and default', () => {
      const text = usage('safekeeper', spec);
      expect(text.split('\n')[0]).to.equal('usage: safekeeper [options]');
      expect(text).to.include('--data-dir (SPG99_DATA_DIR)  where the data lives [string, required]');
      expect(text).to.include('--wal-buffer-kib (SPG99_WAL_BUFFER_KIB)  WAL buffer size in KiB [integer, default 64]');
      expect(text).to.include('--listen (SPG99_LISTEN)  address to listen on [string, default "127.0.0.1:7501"]');
    });
  });

  describe('parseHostPort', () => {
    it('splits host and port, port 0 included', () => {
      expect(parseHostPort('127.0.0.1:7501', '--listen')).to.deep.equal({ host: '127.0.0.1', port: 7501 });
      expect(parseHostPort('localhost:0', '--listen')).to.deep.equal({ host: 'localhost', port: 0 });
      expect(parseHostPort('[::1]:5432', '--listen')).to.deep.equal({ host: '[::1]', port: 5432 });
    });

    for (const text of ['7501', ':7501', '127.0.0.1:', '127.0.0.1:65536', '127.0.0.1:-1', '127.0.0.1:http', '127.0.0.1:1.5']) {
      it(`refuses ${JSON.stringify(text)} naming the option`, () => {
        const error = configError(() => parseHostPort(text, '--listen'));
        expect(error.message).to.include('--listen must be host:port');
        expect(error.message).to.include(`"${text}"`);
      });
    }
  });
});
