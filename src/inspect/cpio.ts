/**
 * An initramfs as the kernel unpacks it: newc cpio archives, concatenated, some compressed
 * (an uncompressed early microcode archive is usual before the compressed main one). Later
 * entries of the same path replace earlier ones, as they do in the kernel's rootfs.
 */
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { formatSize } from '../recipe/size.js';

export interface CpioEntry {
  path: string;
  mode: number;
  /** File contents, or a symlink's target. */
  data: Buffer;
}

const NEWC_MAGICS = ['070701', '070702'];
const HEADER_BYTES = 110;
const TRAILER = 'TRAILER!!!';
const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;

export function fileType(mode: number): number {
  return mode & S_IFMT;
}

const align4 = (offset: number) => (offset + 3) & ~3;

/** Parses one newc archive starting at `offset`; returns its entries and the offset after its trailer. */
export function parseNewcArchive(buffer: Buffer, offset: number): { entries: CpioEntry[]; end: number } {
  const entries: CpioEntry[] = [];
  for (;;) {
    if (offset + HEADER_BYTES > buffer.length) throw new Error(`cpio archive truncated at byte ${offset}`);
    const magic = buffer.toString('latin1', offset, offset + 6);
    if (!NEWC_MAGICS.includes(magic)) throw new Error(`bad cpio header at byte ${offset}`);
    const field = (index: number) => parseInt(buffer.toString('latin1', offset + 6 + index * 8, offset + 14 + index * 8), 16);
    const mode = field(1);
    const fileSize = field(6);
    const nameSize = field(11);
    const nameStart = offset + HEADER_BYTES;
    const name = buffer.toString('utf8', nameStart, nameStart + nameSize - 1);
    const dataStart = align4(nameStart + nameSize);
    const dataEnd = dataStart + fileSize;
    if (dataEnd > buffer.length) throw new Error(`cpio member ${name} truncated`);
    offset = align4(dataEnd);
    if (name === TRAILER) return { entries, end: offset };
    entries.push({ path: name.replace(/^(\.?\/)+/, ''), mode, data: buffer.subarray(dataStart, dataEnd) });
  }
}

export type Compression = 'gzip' | 'zstd' | 'xz' | 'lzma' | 'bzip2' | 'lz4';

const COMPRESSION_MAGICS: Array<[Compression, Buffer]> = [
  ['gzip', Buffer.from([0x1f, 0x8b])],
  ['zstd', Buffer.from([0x28, 0xb5, 0x2f, 0xfd])],
  ['xz', Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])],
  ['lzma', Buffer.from([0x5d, 0x00, 0x00])],
  ['bzip2', Buffer.from('BZh')],
  ['lz4', Buffer.from([0x02, 0x21, 0x4c, 0x18])],
];

export function detectCompression(buffer: Buffer, offset = 0): Compression | undefined {
  return COMPRESSION_MAGICS.find(([, magic]) => buffer.subarray(offset, offset + magic.length).equals(magic))?.[0];
}

const ZSTD_MAGIC = 0xfd2fb528;

/**
 * Bytes taken by the zstd frames (and skippable frames) starting at `offset`, from their
 * headers: the kernel goes on to the next archive after them (keylessgo appends this build's
 * files as an uncompressed cpio after a zstd one), so the reader must know where they end.
 */
export function zstdFramesLength(buffer: Buffer, offset: number): number {
  let at = offset;
  while (at + 4 <= buffer.length) {
    const magic = buffer.readUInt32LE(at);
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      at += 8 + buffer.readUInt32LE(at + 4);
      continue;
    }
    if (magic !== ZSTD_MAGIC) break;
    const descriptor = buffer[at + 4]!;
    const singleSegment = (descriptor >> 5) & 1;
    const contentSizeBytes = [singleSegment, 2, 4, 8][descriptor >> 6]!;
    const dictionaryBytes = [0, 1, 2, 4][descriptor & 3]!;
    at += 5 + (singleSegment ? 0 : 1) + dictionaryBytes + contentSizeBytes;
    for (let last = 0; !last; ) {
      if (at + 3 > buffer.length) throw new Error('zstd frame truncated');
      const header = buffer.readUIntLE(at, 3);
      last = header & 1;
      const type = (header >> 1) & 3;
      if (type === 3) throw new Error(`reserved zstd block type at byte ${at}`);
      at += 3 + (type === 1 ? 1 : header >> 3);
    }
    if ((descriptor >> 2) & 1) at += 4;
  }
  if (at > buffer.length) throw new Error('zstd frame truncated');
  return at - offset;
}

/**
 * Decompresses a whole stream (to its end: the command-line tools do not report what they
 * consumed), throwing rather than produce more than `maxBytes`.
 */
export type Decompressor = (compression: Compression, data: Buffer, maxBytes: number) => Promise<Buffer>;

/**
 * What an initramfs may unpack to, all archives together. Debian's with MODULES=most is about
 * 160 MB; a crafted /boot could otherwise make a few KiB of zstd fill memory and disk.
 */
export const MAX_INITRAMFS_BYTES = 512 * 1024 * 1024;

export class TooLargeError extends Error {
  constructor(what: string, maxBytes: number) {
    super(`${what} unpacks to more than ${formatSize(maxBytes)} (keylessgo's limit for an initramfs)`);
    this.name = 'TooLargeError';
  }
}

export interface Initramfs {
  /** Final contents by path: later archives override earlier ones. */
  files: Map<string, CpioEntry>;
  /** One line per segment found, e.g. "cpio at 0 (12 entries)", "zstd at 28672". */
  segments: string[];
}

/** Unpacks initrd images in load order (a bootloader may load several, e.g. microcode first), at most `maxBytes` decompressed in all. */
export async function unpackInitramfs(images: readonly Buffer[], decompress: Decompressor, maxBytes = MAX_INITRAMFS_BYTES): Promise<Initramfs> {
  const files = new Map<string, CpioEntry>();
  const segments: string[] = [];
  let budget = maxBytes;
  const unpack = async (compression: Compression, data: Buffer): Promise<Buffer> => {
    const output = await decompress(compression, data, budget);
    budget -= output.length;
    return output;
  };
  const walk = async (data: Buffer, depth: number): Promise<void> => {
    let offset = 0;
    while (offset < data.length) {
      if (data[offset] === 0) {
        offset += 1;
        continue;
      }
      if (NEWC_MAGICS.includes(data.toString('latin1', offset, offset + 6))) {
        const archive = parseNewcArchive(data, offset);
        segments.push(`${depth ? 'compressed ' : ''}cpio at ${offset} (${archive.entries.length} entries)`);
        for (const entry of archive.entries) files.set(entry.path, entry);
        offset = archive.end;
        continue;
      }
      const compression = detectCompression(data, offset);
      if (!compression || depth > 0) throw new Error(`unrecognised initramfs data at byte ${offset}`);
      segments.push(`${compression} at ${offset}`);
      if (compression !== 'zstd') {
        await walk(await unpack(compression, data.subarray(offset)), depth + 1);
        return;
      }
      const length = zstdFramesLength(data, offset);
      await walk(await unpack(compression, data.subarray(offset, offset + length)), depth + 1);
      offset += length;
    }
  };
  for (const image of images) await walk(image, 0);
  return { files, segments };
}

const TOOLS: Record<Exclude<Compression, 'gzip'>, { suffix: string; command: (input: string, output: string) => [string, string[]] }> = {
  zstd: { suffix: 'zst', command: (input, output) => ['zstd', ['-dq', '-o', output, input]] },
  lz4: { suffix: 'lz4', command: (input, output) => ['lz4', ['-dq', input, output]] },
  // xz and bzip2 write beside the input, without its suffix.
  xz: { suffix: 'xz', command: (input) => ['xz', ['-dkq', input]] },
  lzma: { suffix: 'lzma', command: (input) => ['xz', ['--format=lzma', '-dkq', input]] },
  bzip2: { suffix: 'bz2', command: (input) => ['bzip2', ['-dkq', input]] },
};

/**
 * gzip in-process, the others with their command-line tools, file to file in `scratchDir`:
 * reading 100+ MiB from a child's stdout takes Node several times longer than from a file.
 * The tools run under prlimit: a file size limit one byte over `maxBytes` stops them there
 * (SIGXFSZ), so a decompression bomb fills neither the disk nor, read back, the memory.
 */
export function fileDecompressor(run: (file: string, args: string[]) => Promise<unknown>, scratchDir: string): Decompressor {
  let segments = 0;
  return async (compression, data, maxBytes) => {
    const tooLarge = new TooLargeError(`a ${compression} segment`, maxBytes);
    if (compression === 'gzip') {
      try {
        return gunzipSync(data, { maxOutputLength: Math.max(1, maxBytes) });
      } catch (error) {
        throw (error as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' ? tooLarge : error;
      }
    }
    const { suffix, command } = TOOLS[compression];
    const output = join(scratchDir, `segment-${segments++}`);
    const input = `${output}.${suffix}`;
    await writeFile(input, data, { mode: 0o600 });
    try {
      const [tool, args] = command(input, output);
      const failure = await run('prlimit', [`--fsize=${maxBytes + 1}`, '--', tool, ...args]).then(() => undefined, (error: Error) => error);
      // A write past the limit kills the tool with SIGXFSZ (or, cut short, leaves the output just over it).
      const written = (await stat(output).catch(() => undefined))?.size ?? 0;
      if (written > maxBytes || /SIGXFSZ/.test(failure?.message ?? '')) throw tooLarge;
      if (failure) throw failure;
      return await readFile(output);
    } finally {
      await rm(input, { force: true });
      await rm(output, { force: true });
    }
  };
}
