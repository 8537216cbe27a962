/**
 * SHA-256 of an output file in Node (OpenSSL with the CPU's SHA extensions: ~5x coreutils'
 * sha256sum here). A disk image is mostly holes: the caller names the ranges that may hold
 * data, and the rest is hashed from a zero buffer without reading it from the file.
 */
import { stat } from 'node:fs/promises';
import { sourceWorker } from '../base/source-worker.js';
import type { ByteRange } from '../host/ext4.js';

const CHUNK_BYTES = 4 * 1024 * 1024;

/** A piece of the file no larger than a chunk: read from the file, or known to be zeros. */
interface Piece {
  start: number;
  length: number;
  read: boolean;
}

/**
 * The bytes [from, size) of the file cut into chunk-sized pieces, in order: the data ranges
 * (sorted, overlaps once, clipped) read, the gaps between them zeros.
 */
export function hashPieces(size: number, dataRanges: readonly ByteRange[], from = 0): Piece[] {
  const pieces: Piece[] = [];
  const add = (start: number, end: number, read: boolean) => {
    for (let at = start; at < end; at += CHUNK_BYTES) pieces.push({ start: at, length: Math.min(CHUNK_BYTES, end - at), read });
  };
  let at = from;
  for (const range of [...dataRanges].sort((a, b) => a.start - b.start)) {
    const start = Math.max(at, range.start);
    const end = Math.min(size, range.start + range.length);
    if (end <= start) continue;
    add(at, start, false);
    add(start, end, true);
    at = end;
  }
  add(at, size, false);
  return pieces;
}

interface HashJob {
  path: string;
  /** Hashed before the pieces (the layout of a digest that skips holes). */
  prefix?: string;
  pieces: Piece[];
  chunkBytes: number;
}

/**
 * The worker's code, run by sourceWorker: it may use only what it requires itself.
 */
function hashWorker(): void {
  const { parentPort, workerData } = require('node:worker_threads') as typeof import('node:worker_threads');
  const { closeSync, openSync, readSync } = require('node:fs') as typeof import('node:fs');
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  const { path, prefix, pieces, chunkBytes } = workerData as HashJob;
  const zeros = Buffer.alloc(chunkBytes);
  const buffer = Buffer.allocUnsafe(chunkBytes);
  const fd = openSync(path, 'r');
  try {
    const hash = createHash('sha256');
    if (prefix !== undefined) hash.update(prefix);
    for (const piece of pieces) {
      if (!piece.read) {
        hash.update(zeros.subarray(0, piece.length));
        continue;
      }
      const bytesRead = readSync(fd, buffer, 0, piece.length, piece.start);
      if (bytesRead !== piece.length) throw new Error(`short read from ${path} at ${piece.start}`);
      hash.update(buffer.subarray(0, piece.length));
    }
    parentPort!.postMessage(hash.digest('hex'));
  } finally {
    closeSync(fd);
  }
}

/** `ranges` without the bytes in `masks` (both sorted or not; the result is sorted). */
export function subtractRanges(ranges: readonly ByteRange[], masks: readonly ByteRange[]): ByteRange[] {
  const sortedMasks = [...masks].sort((a, b) => a.start - b.start);
  const result: ByteRange[] = [];
  for (const range of [...ranges].sort((a, b) => a.start - b.start)) {
    let at = range.start;
    const end = range.start + range.length;
    for (const mask of sortedMasks) {
      if (mask.start + mask.length <= at || mask.start >= end) continue;
      if (mask.start > at) result.push({ start: at, length: mask.start - at });
      at = Math.max(at, mask.start + mask.length);
    }
    if (at < end) result.push({ start: at, length: end - at });
  }
  return result;
}

export interface HashWindow {
  /** Hash only these bytes of the file (e.g. one file system inside a disk file), not all of it. */
  window?: ByteRange;
  /** Bytes hashed as zeros whatever they hold (per-build data left out of a reproducible digest). */
  masks?: readonly ByteRange[];
  /**
   * `skip`: hash the layout (the data ranges, relative to the window, as JSON) and then only
   * the data ranges' bytes, not the zeros between them: for file systems mostly free, where
   * hashing zeros would cost a second per GiB and tell nothing the layout does not.
   */
  holes?: 'zeros' | 'skip';
}

/**
 * Hex SHA-256 of `path`. Without `dataRanges` the whole file is read; with them, bytes outside
 * every range must be zeros (holes, or never written), or the hash is wrong. The hashing runs in
 * a worker thread: hashes of several files, and the main thread's own work, run side by side.
 */
export async function sha256File(path: string, dataRanges?: readonly ByteRange[], { window, masks = [], holes = 'zeros' }: HashWindow = {}): Promise<string> {
  const { start, length } = window ?? { start: 0, length: (await stat(path)).size };
  const data = subtractRanges(dataRanges ?? [{ start, length }], masks);
  const pieces = hashPieces(start + length, data, start);
  const layout = pieces.filter((p) => p.read).map((p) => [p.start - start, p.length]);
  const job: HashJob =
    holes === 'skip' ? { path, prefix: `${JSON.stringify(layout)}\n`, pieces: pieces.filter((p) => p.read), chunkBytes: CHUNK_BYTES } : { path, pieces, chunkBytes: CHUNK_BYTES };
  return new Promise((resolve, reject) => {
    const worker = sourceWorker(hashWorker, job);
    worker.once('message', resolve);
    worker.once('error', reject);
    // After the digest arrived this rejection changes nothing.
    worker.once('exit', (code) => reject(new Error(`hashing ${path}: worker exited with code ${code} before it finished`)));
  });
}
