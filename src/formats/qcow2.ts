/**
 * A qcow2 written from a raw disk file without qemu-img: version 3, 64 KiB clusters, 16-bit
 * refcounts, no backing file, no compression (what `qemu-img convert -O qcow2 -o compat=1.1`
 * writes). All-zero clusters stay unallocated, as qemu-img leaves them.
 *
 * The metadata comes first and the data clusters follow in the disk's order, so every byte is
 * written once and in order, and the file is hashed while it is written. Against qemu-img
 * convert plus a hash of its output, that saves reading the qcow2 back, and qemu-img's scan of
 * the whole raw file: only the ranges the caller names are read.
 *
 * File layout: header | L1 table | refcount table | refcount blocks | L2 tables | data clusters.
 */
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import type { ByteRange } from '../host/ext4.js';

const CLUSTER_BITS = 16;
export const QCOW2_CLUSTER_BYTES = 1 << CLUSTER_BITS;
const QCOW2_MAGIC = 0x514649fb;
/** 16-bit refcounts (refcount_order 4), qemu-img's default. */
const REFCOUNT_ORDER = 4;
const REFCOUNTS_PER_BLOCK = QCOW2_CLUSTER_BYTES / 2;
const L2_ENTRIES_PER_TABLE = QCOW2_CLUSTER_BYTES / 8;
/** The version 3 header with its compression type byte, padded to 8 bytes, as qemu 7 writes it. */
const HEADER_BYTES = 112;
/** In L1 and L2 entries: the cluster is referenced exactly once (no snapshot shares it). */
const COPIED = 1n << 63n;
const SECTOR_BYTES = 512;
/** Data is read and written in runs of up to this many bytes (a whole number of clusters). */
const RUN_BYTES = 4 * 1024 * 1024;

/**
 * Cluster indexes of the disk to store, ascending: those of `knownDataRanges` as they are, and
 * of the other clusters that meet a data range, those that hold anything but zeros (read to tell).
 */
export async function storedClusters(file: FileHandle, diskBytes: number, dataRanges: readonly ByteRange[], knownDataRanges: readonly ByteRange[] = []): Promise<number[]> {
  const clustersPerRun = RUN_BYTES / QCOW2_CLUSTER_BYTES;
  const stored = new Uint8Array(Math.ceil(diskBytes / QCOW2_CLUSTER_BYTES));
  for (const span of clusterSpans(diskBytes, knownDataRanges)) stored.fill(1, span.first, span.end);
  const buffer = Buffer.allocUnsafe(RUN_BYTES);
  const zeros = Buffer.alloc(QCOW2_CLUSTER_BYTES);
  for (const span of clusterSpans(diskBytes, dataRanges)) {
    for (let first = span.first; first < span.end; ) {
      if (stored[first]) {
        first++;
        continue;
      }
      let count = 1;
      while (count < clustersPerRun && first + count < span.end && !stored[first + count]) count++;
      const length = Math.min(count * QCOW2_CLUSTER_BYTES, diskBytes - first * QCOW2_CLUSTER_BYTES);
      await readFully(file, buffer, length, first * QCOW2_CLUSTER_BYTES);
      for (let index = 0; index < count; index++) {
        const start = index * QCOW2_CLUSTER_BYTES;
        const end = Math.min(start + QCOW2_CLUSTER_BYTES, length);
        if (!buffer.subarray(start, end).equals(zeros.subarray(0, end - start))) stored[first + index] = 1;
      }
      first += count;
    }
  }
  const clusters: number[] = [];
  stored.forEach((flag, cluster) => flag && clusters.push(cluster));
  return clusters;
}

/** The clusters the data ranges touch, as sorted, merged spans [first, end). */
export function clusterSpans(diskBytes: number, dataRanges: readonly ByteRange[]): Array<{ first: number; end: number }> {
  const diskClusters = Math.ceil(diskBytes / QCOW2_CLUSTER_BYTES);
  const spans = dataRanges
    .filter((range) => range.length > 0)
    .map((range) => ({ first: Math.floor(range.start / QCOW2_CLUSTER_BYTES), end: Math.min(diskClusters, Math.ceil((range.start + range.length) / QCOW2_CLUSTER_BYTES)) }))
    .filter((span) => span.end > span.first)
    .sort((a, b) => a.first - b.first);
  const merged: Array<{ first: number; end: number }> = [];
  for (const span of spans) {
    const last = merged.at(-1);
    if (last && span.first <= last.end) last.end = Math.max(last.end, span.end);
    else merged.push({ ...span });
  }
  return merged;
}

export interface Qcow2Plan {
  /** Header, L1 table, refcount table and blocks, L2 tables: the file up to its first data cluster. */
  metadata: Buffer;
  /** File size: the metadata, then one cluster for each data cluster, in the disk's order. */
  fileBytes: number;
}

/** The qcow2's metadata for a disk of `diskBytes` whose clusters `dataClusters` (ascending, distinct) are stored. */
export function planQcow2(diskBytes: number, dataClusters: readonly number[]): Qcow2Plan {
  const l1Entries = Math.ceil(Math.ceil(diskBytes / QCOW2_CLUSTER_BYTES) / L2_ENTRIES_PER_TABLE);
  const l1Clusters = Math.max(1, Math.ceil((l1Entries * 8) / QCOW2_CLUSTER_BYTES));
  const l2Tables = [...new Set(dataClusters.map((cluster) => Math.floor(cluster / L2_ENTRIES_PER_TABLE)))];
  // The refcount blocks count every cluster of the file, themselves included: grow them until they cover it.
  let refcountBlocks = 0;
  let refcountTableClusters = 0;
  let fileClusters = 0;
  for (;;) {
    fileClusters = 1 + l1Clusters + refcountTableClusters + refcountBlocks + l2Tables.length + dataClusters.length;
    const blocks = Math.ceil(fileClusters / REFCOUNTS_PER_BLOCK);
    const tableClusters = Math.ceil((blocks * 8) / QCOW2_CLUSTER_BYTES);
    if (blocks === refcountBlocks && tableClusters === refcountTableClusters) break;
    refcountBlocks = blocks;
    refcountTableClusters = tableClusters;
  }
  const l1Offset = QCOW2_CLUSTER_BYTES;
  const refcountTableOffset = l1Offset + l1Clusters * QCOW2_CLUSTER_BYTES;
  const refcountBlocksOffset = refcountTableOffset + refcountTableClusters * QCOW2_CLUSTER_BYTES;
  const l2Offset = refcountBlocksOffset + refcountBlocks * QCOW2_CLUSTER_BYTES;
  const dataOffset = l2Offset + l2Tables.length * QCOW2_CLUSTER_BYTES;

  const metadata = Buffer.alloc(dataOffset);
  metadata.writeUInt32BE(QCOW2_MAGIC, 0);
  metadata.writeUInt32BE(3, 4);
  metadata.writeUInt32BE(CLUSTER_BITS, 20);
  metadata.writeBigUInt64BE(BigInt(diskBytes), 24);
  metadata.writeUInt32BE(l1Entries, 36);
  metadata.writeBigUInt64BE(BigInt(l1Offset), 40);
  metadata.writeBigUInt64BE(BigInt(refcountTableOffset), 48);
  metadata.writeUInt32BE(refcountTableClusters, 56);
  metadata.writeUInt32BE(REFCOUNT_ORDER, 96);
  metadata.writeUInt32BE(HEADER_BYTES, 100);
  // Feature bits, snapshots, backing file and compression type stay zero; so does the end-of-extensions marker after the header.

  const l2Position = new Map(l2Tables.map((table, index) => [table, l2Offset + index * QCOW2_CLUSTER_BYTES]));
  for (const [table, offset] of l2Position) metadata.writeBigUInt64BE(BigInt(offset) | COPIED, l1Offset + table * 8);
  dataClusters.forEach((cluster, index) => {
    const entry = l2Position.get(Math.floor(cluster / L2_ENTRIES_PER_TABLE))! + (cluster % L2_ENTRIES_PER_TABLE) * 8;
    metadata.writeBigUInt64BE(BigInt(dataOffset + index * QCOW2_CLUSTER_BYTES) | COPIED, entry);
  });
  for (let block = 0; block < refcountBlocks; block++) metadata.writeBigUInt64BE(BigInt(refcountBlocksOffset + block * QCOW2_CLUSTER_BYTES), refcountTableOffset + block * 8);
  for (let cluster = 0; cluster < fileClusters; cluster++) {
    metadata.writeUInt16BE(1, refcountBlocksOffset + Math.floor(cluster / REFCOUNTS_PER_BLOCK) * QCOW2_CLUSTER_BYTES + (cluster % REFCOUNTS_PER_BLOCK) * 2);
  }
  return { metadata, fileBytes: dataOffset + dataClusters.length * QCOW2_CLUSTER_BYTES };
}

/** Consecutive clusters as runs of at most RUN_BYTES, so each run is one read and one write. */
function clusterRuns(clusters: readonly number[]): Array<{ first: number; count: number }> {
  const runs: Array<{ first: number; count: number }> = [];
  for (const cluster of clusters) {
    const last = runs.at(-1);
    if (last && last.first + last.count === cluster && (last.count + 1) * QCOW2_CLUSTER_BYTES <= RUN_BYTES) last.count++;
    else runs.push({ first: cluster, count: 1 });
  }
  return runs;
}

async function readFully(file: FileHandle, buffer: Buffer, length: number, position: number): Promise<void> {
  const { bytesRead } = await file.read(buffer, 0, length, position);
  if (bytesRead !== length) throw new Error(`short read at byte ${position}: ${bytesRead} of ${length} bytes`);
}

export interface WriteQcow2 {
  raw: string;
  qcow2: string;
  /** Ranges of the raw file that may hold data; every byte outside them must be zero. */
  dataRanges: readonly ByteRange[];
  /** Ranges with data in every cluster they touch (ciphertext): stored without being read for zeros first. */
  knownDataRanges?: readonly ByteRange[];
  signal?: AbortSignal;
}

/** Writes the qcow2 and returns its hex SHA-256. */
export async function writeQcow2({ raw, qcow2, dataRanges, knownDataRanges, signal }: WriteQcow2): Promise<string> {
  const source = await open(raw, 'r');
  try {
    const { size: diskBytes } = await source.stat();
    // qemu reads a qcow2's virtual size in whole sectors and would drop a partial one.
    if (diskBytes % SECTOR_BYTES !== 0) throw new Error(`${raw}: ${diskBytes} bytes is not a whole number of ${SECTOR_BYTES}-byte sectors`);
    const clusters = await storedClusters(source, diskBytes, dataRanges, knownDataRanges);
    const { metadata } = planQcow2(diskBytes, clusters);
    const target = await open(qcow2, 'w');
    // Two buffers: the next run is read while the last one is written.
    let writing: Promise<unknown> = Promise.resolve();
    try {
      const hash = createHash('sha256').update(metadata);
      await target.write(metadata, 0, metadata.length, 0);
      let position = metadata.length;
      const buffers = [Buffer.allocUnsafe(RUN_BYTES), Buffer.allocUnsafe(RUN_BYTES)];
      for (const [index, run] of clusterRuns(clusters).entries()) {
        signal?.throwIfAborted();
        const buffer = buffers[index % 2]!;
        const bytes = run.count * QCOW2_CLUSTER_BYTES;
        const start = run.first * QCOW2_CLUSTER_BYTES;
        // The disk's last cluster may be partial; its stored cluster is padded with zeros.
        const length = Math.min(bytes, diskBytes - start);
        await readFully(source, buffer, length, start);
        buffer.fill(0, length, bytes);
        hash.update(buffer.subarray(0, bytes));
        await writing;
        writing = target.write(buffer, 0, bytes, position);
        // Its failure is thrown where it is awaited, not reported as unhandled meanwhile.
        writing.catch(() => undefined);
        position += bytes;
      }
      await writing;
      return hash.digest('hex');
    } finally {
      await writing.catch(() => undefined);
      await target.close();
    }
  } finally {
    await source.close();
  }
}
