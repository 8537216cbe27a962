/**
 * ext4 images made from a directory tree, and which of their blocks are in use: only
 * those are encrypted into the image, so free space stays a hole in the raw file. Made
 * reproducibly: a fixed clock, UUID and hash seed, the times mke2fs copies from the tree set
 * afterwards, and the bytes of per-build files located so that a digest can leave them out.
 *
 * Host commands: mkfs.ext4, dumpe2fs, debugfs.
 */
import { rm, writeFile } from 'node:fs/promises';
import type { HostRunner } from './run.js';

export const EXT4_BLOCK_BYTES = 4096;

export interface Ext4FromTree {
  image: string;
  tree: string;
  label: string;
  uuid: string;
  /** The directory hash seed (a UUID); mke2fs draws one at random without it. */
  hashSeed?: string;
  /** Filesystem size in blocks; the whole device when absent. */
  blocks?: number;
  /** Where the filesystem starts in `image` (a file); at its start when absent. */
  offsetBytes?: number;
}

export function mkfsExt4Args({ image, tree, label, uuid, hashSeed, blocks, offsetBytes }: Ext4FromTree): string[] {
  // lazy_itable_init=0: otherwise the machine zeroes the inode tables through dm-crypt in the
  // background at first boot.
  const extended = ['lazy_itable_init=0', ...(hashSeed ? [`hash_seed=${hashSeed}`] : []), ...(offsetBytes ? [`offset=${offsetBytes}`] : [])].join(',');
  return ['-q', '-F', '-t', 'ext4', '-b', String(EXT4_BLOCK_BYTES), '-E', extended, '-L', label, '-U', uuid, '-d', tree, image, ...(blocks === undefined ? [] : [String(blocks)])];
}

/** A byte range of the filesystem image. */
export interface ByteRange {
  start: number;
  length: number;
}

/** dumpe2fs's per-group "Free blocks:" or "Free inodes:" lists, as sorted [first, last] pairs. */
function freeLists(text: string, what: 'blocks' | 'inodes'): Array<[number, number]> {
  const free: Array<[number, number]> = [];
  for (const match of text.matchAll(new RegExp(`^ {2}Free ${what}: (.*)$`, 'gm'))) {
    for (const item of match[1]!.split(',').map((s) => s.trim()).filter(Boolean)) {
      const [first, last = first] = item.split('-').map(Number) as [number, number?];
      free.push([first, last!]);
    }
  }
  return free.sort((a, b) => a[0] - b[0]);
}

/** Blocks in use (the complement of dumpe2fs's per-group "Free blocks:" lists), as merged byte ranges. */
export function usedRangesFromDumpe2fs(text: string): ByteRange[] {
  const blockCount = Number(/^Block count:\s+(\d+)$/m.exec(text)?.[1]);
  const blockSize = Number(/^Block size:\s+(\d+)$/m.exec(text)?.[1]);
  if (!Number.isInteger(blockCount) || !Number.isInteger(blockSize)) throw new Error('dumpe2fs printed no block count or block size');
  const free = freeLists(text, 'blocks');
  const used: ByteRange[] = [];
  let next = 0;
  const addUsed = (from: number, to: number) => {
    if (to <= from) return;
    const previous = used.at(-1);
    if (previous && previous.start + previous.length === from * blockSize) previous.length += (to - from) * blockSize;
    else used.push({ start: from * blockSize, length: (to - from) * blockSize });
  };
  for (const [first, last] of free) {
    addUsed(next, first);
    next = Math.max(next, last + 1);
  }
  addUsed(next, blockCount);
  return used;
}

/** Bytes in use (all blocks minus free blocks), from dumpe2fs's superblock lines (with or without -h). */
export function usedBytesFromSuperblock(text: string): number {
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)$`, 'm').exec(text)?.[1]);
  const [count, free, size] = [field('Block count'), field('Free blocks'), field('Block size')];
  if (![count, free, size].every(Number.isInteger)) throw new Error('dumpe2fs -h printed no block counts');
  return (count - free) * size;
}

/**
 * mke2fs's environment for a reproducible file system: "now" (the superblock's times, the
 * reserved inodes', each inode's creation time) is the epoch. e2fsprogs 1.47.0 reads no
 * SOURCE_DATE_EPOCH; this variable is its own.
 */
export function ext4TimeEnv(epoch: number): Record<string, string> {
  return { E2FSPROGS_FAKE_TIME: String(epoch) };
}

/** The inodes in use (the complement of dumpe2fs's per-group "Free inodes:" lists), ascending. */
export function usedInodesFromDumpe2fs(text: string): number[] {
  const count = Number(/^Inode count:\s+(\d+)$/m.exec(text)?.[1]);
  if (!Number.isInteger(count)) throw new Error('dumpe2fs printed no inode count');
  const used: number[] = [];
  let next = 1;
  for (const [first, last] of [...freeLists(text, 'inodes'), [count + 1, count + 1] as [number, number]]) {
    for (let inode = next; inode < first; inode++) used.push(inode);
    next = Math.max(next, last + 1);
  }
  return used;
}

/** What debugfs opens for a file system `offsetBytes` into `image` (its `?offset=` io option). */
export function ext4Spec(image: string, offsetBytes = 0): string {
  return offsetBytes ? `${image}?offset=${offsetBytes}` : image;
}

/**
 * Sets the access and change times of every inode in use to `epoch`. mke2fs -d copies them
 * from the tree it reads, where they are "now" (reading sets one, and setting a file's
 * modification time sets the other); the modification times are the tree's, clamped
 * (clampTimes). One debugfs run, through a command file: about 60,000 commands for a root.
 */
export async function ext4SetTimes(host: HostRunner, spec: string, epoch: number, usedInodes: readonly number[], commandFile: string): Promise<void> {
  // Inodes 1 and 3-10 are reserved (mke2fs gave them its own time); 2 is the root directory.
  const inodes = usedInodes.filter((inode) => inode === 2 || inode > 10);
  await writeFile(commandFile, inodes.map((inode) => `sif <${inode}> atime @${epoch}\nsif <${inode}> ctime @${epoch}\n`).join(''));
  try {
    await host.run('debugfs', ['-w', '-f', commandFile, spec], { env: ext4TimeEnv(epoch) });
  } finally {
    await rm(commandFile, { force: true });
  }
}

/**
 * The bytes of a file system that hold per-build files: each file's inode record and its data
 * blocks (with `fromByte`, only the blocks from that byte of the file on). Hashed as zeros, they
 * leave a digest that two builds share when nothing else differs.
 */
export async function ext4FileRanges(host: HostRunner, spec: string, files: ReadonlyArray<{ path: string; fromByte?: number }>): Promise<ByteRange[]> {
  const header = await host.run('dumpe2fs', ['-h', spec]);
  const blockSize = Number(/^Block size:\s+(\d+)$/m.exec(header)?.[1]);
  const inodeSize = Number(/^Inode size:\s+(\d+)$/m.exec(header)?.[1]);
  if (!blockSize || !inodeSize) throw new Error('dumpe2fs -h printed no block or inode size');
  const ranges: ByteRange[] = [];
  for (const { path, fromByte = 0 } of files) {
    const located = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(await host.run('debugfs', ['-R', `imap "${path}"`, spec]));
    if (!located) throw new Error(`debugfs found no inode for ${path}`);
    ranges.push({ start: Number(located[1]) * blockSize + parseInt(located[2]!, 16), length: inodeSize });
    const blocks = (await host.run('debugfs', ['-R', `blocks "${path}"`, spec])).trim().split(/\s+/).filter(Boolean).map(Number);
    for (const block of blocks.slice(Math.floor(fromByte / blockSize))) ranges.push({ start: block * blockSize, length: blockSize });
  }
  return ranges;
}
