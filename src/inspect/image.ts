/**
 * Read-only access to a disk image of any format qemu-img knows: raw files are read
 * directly, others (qcow2, ...) through `qemu-img dd` of just the byte ranges needed.
 */
import { open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { qemuImgDdArgs } from '../host/qemu-img.js';
import type { ToolRunner } from './tools.js';

export interface DiskImage {
  path: string;
  format: string;
  virtualBytes: number;
  /** Copies `length` bytes at `offset` into a new 0600 file `to` (short at the end of the disk). */
  extract(offset: number, length: number, to: string): Promise<string>;
  /** Reads `length` bytes at `offset` (short at the end of the disk). */
  read(offset: number, length: number): Promise<Buffer>;
}

/** Copies `length` bytes at `offset` of `path` into a new 0600 file (short at the end of the file). */
export async function copyRange(path: string, offset: number, length: number, to: string): Promise<string> {
  const source = await open(path, 'r');
  const target = await open(to, 'wx', 0o600);
  const chunk = Buffer.alloc(8 * 1024 * 1024);
  try {
    for (let done = 0; done < length; ) {
      const { bytesRead } = await source.read(chunk, 0, Math.min(chunk.length, length - done), offset + done);
      if (bytesRead === 0) break;
      await target.write(chunk, 0, bytesRead);
      done += bytesRead;
    }
  } finally {
    await source.close();
    await target.close();
  }
  return to;
}

export async function openDiskImage(host: ToolRunner, path: string, scratchDir: string): Promise<DiskImage> {
  const info = await stat(path).catch((error: NodeJS.ErrnoException) => {
    throw new InputError(error.code === 'ENOENT' ? 'no such file' : `cannot read: ${error.message}`, path);
  });
  if (!info.isFile() && !info.isBlockDevice()) throw new InputError('not a disk image file', path);
  const probed = await host.run('qemu-img', ['info', '--output=json', path]).catch(() => {
    throw new InputError('qemu-img cannot open it as a disk image', path);
  });
  const { format, 'virtual-size': virtualBytes } = JSON.parse(probed) as { format: string; 'virtual-size': number };

  if (format === 'raw') {
    return {
      path,
      format,
      virtualBytes,
      extract: (offset, length, to) => copyRange(path, offset, length, to),
      async read(offset, length) {
        const handle = await open(path, 'r');
        try {
          const buffer = Buffer.alloc(length);
          const { bytesRead } = await handle.read(buffer, 0, length, offset);
          return buffer.subarray(0, bytesRead);
        } finally {
          await handle.close();
        }
      },
    };
  }
  let reads = 0;
  const extract = async (offset: number, length: number, to: string) => {
    await host.run('qemu-img', qemuImgDdArgs(format, path, offset, Math.min(length, Math.max(0, virtualBytes - offset)), to));
    return to;
  };
  return {
    path,
    format,
    virtualBytes,
    extract,
    async read(offset, length) {
      const file = join(scratchDir, `read-${reads++}`);
      try {
        return await readFile(await extract(offset, length, file));
      } finally {
        await rm(file, { force: true });
      }
    },
  };
}
