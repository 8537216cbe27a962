/**
 * ext4 file systems read with debugfs, without mounting: a raw image is opened in place
 * (debugfs' `?offset=` io option), other formats through an extracted copy.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { formatSize } from '../recipe/size.js';
import type { DiskImage } from './image.js';
import type { ToolRunner } from './tools.js';

const EXT_MAGIC_OFFSET = 1024 + 56;
/** The largest file inspect copies out of a file system (an initramfs, a kernel, grub.cfg). */
export const MAX_FILE_BYTES = 512 * 1024 * 1024;

export function isExtSuperblock(start: Buffer): boolean {
  return start.length >= EXT_MAGIC_OFFSET + 2 && start.readUInt16LE(EXT_MAGIC_OFFSET) === 0xef53;
}

export interface DirEntry {
  name: string;
  mode: number;
}

/** Parses `debugfs ls -p` lines: /inode/mode(octal)/uid/gid/name/size/. */
export function parseDebugfsListing(text: string): DirEntry[] {
  return text
    .split('\n')
    .map((line) => line.split('/'))
    .filter((fields) => fields.length >= 7 && fields[5] && fields[5] !== '.' && fields[5] !== '..')
    .map((fields) => ({ name: fields[5]!, mode: parseInt(fields[2]!, 8) }));
}

/** A path as a debugfs argument; paths come from the image (grub.cfg), so quotes are refused. */
function quoted(path: string): string {
  if (/["\\\x00-\x1f]/.test(path)) throw new Error(`refusing to look up a path with quotes or control characters: ${JSON.stringify(path)}`);
  return `"${path}"`;
}

export class Ext4Reader {
  private copies = 0;

  constructor(
    private readonly host: ToolRunner,
    /** What debugfs opens: a file, or `file?offset=N`. */
    private readonly spec: string,
    private readonly scratchDir: string,
  ) {}

  static async open(host: ToolRunner, image: DiskImage, offset: number, sizeBytes: number, scratchDir: string): Promise<Ext4Reader> {
    if (image.format === 'raw') return new Ext4Reader(host, `${image.path}?offset=${offset}`, scratchDir);
    return new Ext4Reader(host, await image.extract(offset, sizeBytes, join(scratchDir, `fs-${offset}`)), scratchDir);
  }

  private debugfs(request: string): Promise<string> {
    return this.host.run('debugfs', ['-R', request, this.spec]);
  }

  /** Entries of a directory; empty when it does not exist. */
  async list(path: string): Promise<DirEntry[]> {
    return parseDebugfsListing(await this.debugfs(`ls -p ${quoted(path)}`));
  }

  /** The target of a symlink stored in its inode (targets under 60 bytes, which is every kernel link). */
  async linkTarget(path: string): Promise<string | undefined> {
    return /^Fast link dest: "(.*)"$/m.exec(await this.debugfs(`stat ${quoted(path)}`))?.[1];
  }

  /**
   * A file's contents (through a scratch file: debugfs writes large files faster than a pipe is
   * read). A file larger than `maxBytes` is refused before it is copied: a crafted file system
   * can hold a sparse file of terabytes that debugfs would write out in full.
   */
  async read(path: string, maxBytes = MAX_FILE_BYTES): Promise<Buffer> {
    const size = Number(/\bSize: (\d+)/.exec(await this.debugfs(`stat ${quoted(path)}`))?.[1]);
    if (size > maxBytes) throw new Error(`${path} is ${formatSize(size)}, more than the ${formatSize(maxBytes)} inspect reads`);
    const copy = join(this.scratchDir, `file-${this.copies++}`);
    await this.debugfs(`dump ${quoted(path)} ${quoted(copy)}`);
    try {
      return await readFile(copy);
    } catch {
      throw new Error(`cannot read ${path} from the file system`);
    } finally {
      await rm(copy, { force: true });
    }
  }
}
