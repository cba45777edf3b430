/**
 * fsyncTree: the provisioner makes a compute's data directory durable with it before keeping it as a cache (computes
 * run Postgres with fsync=off). It must reach every file, and never open what is not a regular file or directory:
 * opening a FIFO for reading would hang the stop, and following a symlink could leave the tree or loop.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { fsyncTree } from '../../src/lib/fsync-tree.js';

describe('fsyncTree', () => {
  let root: string;

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'spg99-fsync-tree-'));
  });

  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  it('fsyncs a nested tree, skipping FIFOs and symlinks (a loop back to the root included)', async () => {
    fs.mkdirSync(path.join(root, 'base', '1'), { recursive: true });
    for (let file = 0; file < 40; file += 1) fs.writeFileSync(path.join(root, 'base', '1', String(file)), Buffer.alloc(8192, file));
    fs.writeFileSync(path.join(root, 'PG_VERSION'), '18\n');
    execFileSync('mkfifo', [path.join(root, 'base', 'a-fifo')]);
    fs.symlinkSync(root, path.join(root, 'base', 'loop'));
    fs.symlinkSync('/dev/zero', path.join(root, 'zero'));
    // Resolves (a FIFO opened for reading, or the loop followed, would never let it), and leaves the tree as it was.
    await fsyncTree(root);
    expect(fs.readdirSync(path.join(root, 'base', '1'))).to.have.length(40);
    expect(fs.readFileSync(path.join(root, 'base', '1', '7'))).to.deep.equal(Buffer.alloc(8192, 7));
  });

  it('rejects with the missing path when the directory does not exist', async () => {
    const missing = path.join(root, 'gone');
    const error = await fsyncTree(missing).then(
      () => expect.fail('expected fsyncTree of a missing directory to reject'),
      (failure: NodeJS.ErrnoException) => failure,
    );
    expect(error.code).to.equal('ENOENT');
    expect(error.message).to.contain(missing);
  });
});
