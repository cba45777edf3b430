/**
 * A minimal POSIX ustar writer: headers for files and directories with short names, so that the size of an
 * archive is known before it is written (a basebackup announces its exact length first).
 */

const BLOCK = 512;

/** Bytes an entry of `size` content bytes takes in the archive. */
export function tarEntryBytes(size: number): number {
  return BLOCK + Math.ceil(size / BLOCK) * BLOCK;
}

/** The two zero blocks that end an archive. */
export const TAR_END = Buffer.alloc(2 * BLOCK);

/** Zero bytes that pad content of `size` bytes to a block. */
export function tarPadding(size: number): Buffer {
  const rest = size % BLOCK;
  return Buffer.alloc(rest === 0 ? 0 : BLOCK - rest);
}

function writeOctal(header: Buffer, value: number, offset: number, length: number): void {
  header.write(value.toString(8).padStart(length - 1, '0'), offset, length - 1, 'ascii');
  header[offset + length - 1] = 0;
}

/** The header block of an entry. Names up to 100 bytes, or up to 255 with a `/` to split at. */
export function tarHeader(name: string, options: { size: number; directory?: boolean; mode?: number; mtime?: Date }): Buffer {
  const header = Buffer.alloc(BLOCK);
  let entryName = options.directory && !name.endsWith('/') ? `${name}/` : name;
  let prefix = '';
  if (Buffer.byteLength(entryName) > 100) {
    const split = entryName.lastIndexOf('/', entryName.length - 2);
    prefix = entryName.slice(0, split);
    entryName = entryName.slice(split + 1);
    if (split < 0 || Buffer.byteLength(prefix) > 155 || Buffer.byteLength(entryName) > 100) throw new Error(`the path ${name} is too long for a ustar header`);
  }
  header.write(entryName, 0, 100, 'utf8');
  writeOctal(header, options.mode ?? (options.directory ? 0o700 : 0o600), 100, 8);
  writeOctal(header, 0, 108, 8);
  writeOctal(header, 0, 116, 8);
  writeOctal(header, options.directory ? 0 : options.size, 124, 12);
  writeOctal(header, Math.floor((options.mtime ?? new Date()).getTime() / 1000), 136, 12);
  header.fill(0x20, 148, 156);
  header.write(options.directory ? '5' : '0', 156, 1, 'ascii');
  header.write('ustar\u0000', 257, 6, 'ascii');
  header.write('00', 263, 2, 'ascii');
  header.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(sum.toString(8).padStart(6, '0'), 148, 6, 'ascii');
  header[154] = 0;
  header[155] = 0x20;
  return header;
}
