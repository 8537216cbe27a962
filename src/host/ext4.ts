/**
 * ext4 images made from a directory tree, and which of their blocks are in use: only
 * those are encrypted into the image, so free space stays a hole in the raw file.
 *
 * Host commands: mkfs.ext4, dumpe2fs.
 */
import type { HostRunner } from './run.js';

export const EXT4_BLOCK_BYTES = 4096;

export interface Ext4FromTree {
  image: string;
  tree: string;
  label: string;
  uuid: string;
  /** Filesystem size in blocks; the whole device when absent. */
  blocks?: number;
  /** Where the filesystem starts in `image` (a file); at its start when absent. */
  offsetBytes?: number;
}

export function mkfsExt4Args({ image, tree, label, uuid, blocks, offsetBytes }: Ext4FromTree): string[] {
  // lazy_itable_init=0: otherwise the machine zeroes the inode tables through dm-crypt in the
  // background at first boot.
  const extended = ['lazy_itable_init=0', ...(offsetBytes ? [`offset=${offsetBytes}`] : [])].join(',');
  return ['-q', '-F', '-t', 'ext4', '-b', String(EXT4_BLOCK_BYTES), '-E', extended, '-L', label, '-U', uuid, '-d', tree, image, ...(blocks === undefined ? [] : [String(blocks)])];
}

/** A byte range of the filesystem image. */
export interface ByteRange {
  start: number;
  length: number;
}

/** Blocks in use (the complement of dumpe2fs's per-group "Free blocks:" lists), as merged byte ranges. */
export function usedRangesFromDumpe2fs(text: string): ByteRange[] {
  const blockCount = Number(/^Block count:\s+(\d+)$/m.exec(text)?.[1]);
  const blockSize = Number(/^Block size:\s+(\d+)$/m.exec(text)?.[1]);
  if (!Number.isInteger(blockCount) || !Number.isInteger(blockSize)) throw new Error('dumpe2fs printed no block count or block size');
  const free: Array<[number, number]> = [];
  for (const match of text.matchAll(/^ {2}Free blocks: (.*)$/gm)) {
    for (const item of match[1]!.split(',').map((s) => s.trim()).filter(Boolean)) {
      const [first, last = first] = item.split('-').map(Number) as [number, number?];
      free.push([first, last!]);
    }
  }
  free.sort((a, b) => a[0] - b[0]);
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

/** The used ranges of the filesystem starting `offsetBytes` into `image` (e2fsprogs' `?offset=` I/O option), relative to that start. */
export async function ext4UsedRanges(host: HostRunner, image: string, offsetBytes = 0): Promise<ByteRange[]> {
  return usedRangesFromDumpe2fs(await host.run('dumpe2fs', [offsetBytes ? `${image}?offset=${offsetBytes}` : image]));
}

/** Bytes in use (all blocks minus free blocks), from `dumpe2fs -h`. */
export function usedBytesFromSuperblock(text: string): number {
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)$`, 'm').exec(text)?.[1]);
  const [count, free, size] = [field('Block count'), field('Free blocks'), field('Block size')];
  if (![count, free, size].every(Number.isInteger)) throw new Error('dumpe2fs -h printed no block counts');
  return (count - free) * size;
}

export async function ext4UsedBytes(host: HostRunner, image: string): Promise<number> {
  return usedBytesFromSuperblock(await host.run('dumpe2fs', ['-h', image]));
}
