/**
 * Unpacks a tar stream (as basebackups send it) into a directory, refusing paths that would leave it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';

/** Writes the entries of the tar arriving as `chunks` under `directory`; answers the bytes consumed. */
export async function extractTar(chunks: AsyncIterable<Uint8Array>, directory: string): Promise<number> {
  const root = path.resolve(directory);
  fs.mkdirSync(root, { recursive: true, mode: 0o700 });
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    const target = path.resolve(root, header.name);
    if (target !== root && !target.startsWith(`${root}${path.sep}`)) {
      stream.resume();
      next(new Error(`the archive holds a path outside ${root}: ${header.name}`));
      return;
    }
    if (header.type === 'directory') {
      fs.mkdirSync(target, { recursive: true, mode: 0o700 });
      stream.resume();
      stream.on('end', () => next());
      return;
    }
    fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
    pipeline(stream, fs.createWriteStream(target, { mode: 0o600 })).then(() => next(), next);
  });
  const finished = once(extract, 'finish');
  let bytes = 0;
  for await (const chunk of chunks) {
    bytes += chunk.length;
    if (!extract.write(chunk)) await once(extract, 'drain');
  }
  extract.end(undefined);
  await finished;
  return bytes;
}
