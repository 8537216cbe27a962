/**
 * Read-only access to a disk image whose format probeImageFormat accepted: raw files are read
 * directly, others (qcow2, ...) through `qemu-img dd -f FORMAT` of just the byte ranges needed.
 */
import { open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { qemuImgDdArgs } from '../host/qemu-img.js';
import { probeImageFormat, type FormatPolicy } from './disk-format.js';
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

/** inspect reads headers and tables, never whole partitions, into memory: more is a damaged length field. */
const MAX_READ_BYTES = 64 * 1024 * 1024;

function checkReadLength(length: number): void {
  if (!Number.isSafeInteger(length) || length < 0 || length > MAX_READ_BYTES) throw new Error(`refusing to read ${length} bytes into memory (a damaged length field?)`);
}

export async function openDiskImage(host: ToolRunner, path: string, scratchDir: string, policy: FormatPolicy = {}): Promise<DiskImage> {
  const { format, virtualBytes } = await probeImageFormat(host, path, policy);

  if (format === 'raw') {
    return {
      path,
      format,
      virtualBytes,
      extract: (offset, length, to) => copyRange(path, offset, length, to),
      async read(offset, length) {
        checkReadLength(length);
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
      checkReadLength(length);
      const file = join(scratchDir, `read-${reads++}`);
      try {
        return await readFile(await extract(offset, length, file));
      } finally {
        await rm(file, { force: true });
      }
    },
  };
}
