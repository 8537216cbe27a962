/**
 * keylessgo's own qcow2 writer against qemu-img: `qemu-img check` finds no error, `qemu-img
 * compare` finds the raw's content, the size is what `qemu-img convert` writes (zero clusters
 * left out alike), the hash returned is the file's, and only the named ranges are read.
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { open, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ByteRange } from '../../src/host/ext4.js';
import { clusterSpans, planQcow2, QCOW2_CLUSTER_BYTES, writeQcow2 } from '../../src/formats/qcow2.js';
import { tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const CLUSTER = QCOW2_CLUSTER_BYTES;

async function writeAt(path: string, at: number, data: Buffer): Promise<void> {
  const file = await open(path, 'r+');
  await file.write(data, 0, data.length, at);
  await file.close();
}

/** A sparse disk file: random data at `data`, explicit zeros at `zeros`. */
async function disk(path: string, size: number, data: readonly ByteRange[], zeros: readonly ByteRange[] = []): Promise<void> {
  await writeFile(path, '');
  await truncate(path, size);
  for (const range of data) await writeAt(path, range.start, randomBytes(range.length));
  for (const range of zeros) await writeAt(path, range.start, Buffer.alloc(range.length));
}

const sha256sum = async (path: string) => (await execa('sha256sum', [path])).stdout.split(' ')[0];

describe('writeQcow2', () => {
  it('writes what qemu-img convert writes, over two L2 tables, a partial last cluster and written zeros', async () => {
    const work = await tempDir();
    const raw = join(work, 'disk.raw');
    // 600 MiB + 1536 bytes: two L2 tables (512 MiB each) and a last cluster of three sectors.
    const size = 600 * MiB + 1536;
    await disk(
      raw,
      size,
      [
        { start: 0, length: 17 * 1024 },
        { start: 3 * CLUSTER - 10, length: 20 },
        { start: 5 * MiB, length: 5 * MiB + 3 },
        { start: 511 * MiB, length: 2 * MiB },
        { start: size - 300, length: 300 },
      ],
      [{ start: 20 * MiB, length: 4 * MiB }],
    );
    const ours = join(work, 'ours.qcow2');
    const sha256 = await writeQcow2({ raw, qcow2: ours, dataRanges: [{ start: 0, length: size }] });
    expect(sha256).toBe(await sha256sum(ours));
    const check = JSON.parse((await execa('qemu-img', ['check', '--output=json', ours])).stdout) as Record<string, unknown>;
    expect(check).toMatchObject({ format: 'qcow2', 'check-errors': 0 });
    expect(check.corruptions ?? 0).toBe(0);
    expect(check.leaks ?? 0).toBe(0);
    await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, ours]);
    const theirs = join(work, 'theirs.qcow2');
    await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=1.1', raw, theirs]);
    expect((await stat(ours)).size).toBe((await stat(theirs)).size);
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', ours])).stdout) as Record<string, unknown>;
    expect(info).toMatchObject({ format: 'qcow2', 'virtual-size': size, 'cluster-size': CLUSTER });
  });

  it('reads only the data ranges: data outside them is not in the qcow2', async () => {
    const work = await tempDir();
    const raw = join(work, 'disk.raw');
    const inside = { start: 2 * MiB, length: MiB };
    await disk(raw, 8 * MiB, [inside, { start: 6 * MiB, length: CLUSTER }]);
    const qcow2 = join(work, 'out.qcow2');
    await writeQcow2({ raw, qcow2, dataRanges: [inside] });
    const back = join(work, 'back.raw');
    await execa('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', qcow2, back]);
    const [original, converted] = [await readFile(raw), await readFile(back)];
    expect(converted.subarray(inside.start, inside.start + inside.length).equals(original.subarray(inside.start, inside.start + inside.length))).toBe(true);
    expect(converted.subarray(6 * MiB, 6 * MiB + CLUSTER).equals(Buffer.alloc(CLUSTER))).toBe(true);
  });

  it('stores the clusters of known data ranges as they are, without reading them for zeros', async () => {
    const work = await tempDir();
    const raw = join(work, 'disk.raw');
    await disk(raw, 8 * MiB, [{ start: 0, length: CLUSTER }], [{ start: MiB, length: MiB }]);
    const allocated = async (knownDataRanges?: ByteRange[]) => {
      const qcow2 = join(work, `out-${knownDataRanges?.length ?? 0}.qcow2`);
      await writeQcow2({ raw, qcow2, dataRanges: [{ start: 0, length: 8 * MiB }], knownDataRanges });
      await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, qcow2]);
      return (JSON.parse((await execa('qemu-img', ['check', '--output=json', qcow2])).stdout) as { 'allocated-clusters': number })['allocated-clusters'];
    };
    expect(await allocated()).toBe(1);
    expect(await allocated([{ start: MiB, length: MiB }])).toBe(1 + MiB / CLUSTER);
  });

  it('refuses a disk whose size is not a whole number of 512-byte sectors (qemu would cut its end off)', async () => {
    const work = await tempDir();
    const raw = join(work, 'disk.raw');
    await disk(raw, MiB + 100, [{ start: 0, length: 100 }]);
    await expect(writeQcow2({ raw, qcow2: join(work, 'out.qcow2'), dataRanges: [{ start: 0, length: MiB }] })).rejects.toThrow('1048676 bytes is not a whole number of 512-byte sectors');
  });

  it('stops when aborted and leaves the caller the partial file to remove', async () => {
    const work = await tempDir();
    const raw = join(work, 'disk.raw');
    await disk(raw, 16 * MiB, [{ start: 0, length: 16 * MiB }]);
    await expect(writeQcow2({ raw, qcow2: join(work, 'out.qcow2'), dataRanges: [{ start: 0, length: 16 * MiB }], signal: AbortSignal.abort() })).rejects.toThrow(/abort/i);
  });
});

describe('planQcow2', () => {
  /** Refcount of every host cluster, read back through the refcount table. */
  function refcounts(metadata: Buffer, fileClusters: number): number[] {
    const tableOffset = Number(metadata.readBigUInt64BE(48));
    return Array.from({ length: fileClusters + CLUSTER / 2 }, (_, cluster) => {
      const block = Number(metadata.readBigUInt64BE(tableOffset + Math.floor(cluster / (CLUSTER / 2)) * 8));
      if (block === 0) return 0;
      // Refcount blocks lie inside the metadata, before every data cluster.
      return metadata.readUInt16BE(block + (cluster % (CLUSTER / 2)) * 2);
    });
  }

  it('counts every cluster of the file once when it needs more than one refcount block', () => {
    // 40,000 data clusters up to cluster 53,999 of a 4 GiB disk: 2.4 GiB of file, two refcount blocks, 7 L2 tables.
    const data = Array.from({ length: 40_000 }, (_, index) => index + Math.floor(index / 5000) * 2000);
    const { metadata, fileBytes } = planQcow2(4096 * MiB, data);
    const fileClusters = fileBytes / CLUSTER;
    expect(Number(metadata.readUInt32BE(56))).toBe(1);
    const counts = refcounts(metadata, fileClusters);
    expect(counts.slice(0, fileClusters).every((count) => count === 1)).toBe(true);
    expect(counts.slice(fileClusters).every((count) => count === 0)).toBe(true);
    expect(fileClusters).toBe(1 + 1 + 1 + 2 + 7 + data.length);
  });

  it('maps each data cluster to its place in the file, in order', () => {
    const { metadata, fileBytes } = planQcow2(1024 * MiB, [3, 9000, 9001]);
    const dataOffset = fileBytes - 3 * CLUSTER;
    const l1 = Number(metadata.readBigUInt64BE(40));
    const l2 = (table: number) => Number(metadata.readBigUInt64BE(l1 + table * 8) & ~(1n << 63n));
    const entry = (cluster: number) => metadata.readBigUInt64BE(l2(Math.floor(cluster / 8192)) + (cluster % 8192) * 8);
    expect([3, 9000, 9001].map(entry)).toEqual([0, 1, 2].map((index) => BigInt(dataOffset + index * CLUSTER) | (1n << 63n)));
    expect(entry(4)).toBe(0n);
  });
});

describe('clusterSpans', () => {
  it('rounds ranges out to whole clusters, merges what touches, and clips to the disk', () => {
    expect(
      clusterSpans(10 * CLUSTER + 5, [
        { start: 9 * CLUSTER, length: 10 * CLUSTER },
        { start: 1, length: 1 },
        { start: CLUSTER - 1, length: 2 },
        { start: 4 * CLUSTER, length: 0 },
      ]),
    ).toEqual([
      { first: 0, end: 2 },
      { first: 9, end: 11 },
    ]);
  });
});
