/**
 * SHA-256 of an output file in Node (OpenSSL with the CPU's SHA extensions: ~5x coreutils'
 * sha256sum here). A disk image is mostly holes: the caller names the ranges that may hold
 * data, and the rest is hashed from a zero buffer without reading it from the file.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { ByteRange } from '../host/ext4.js';

const CHUNK_BYTES = 4 * 1024 * 1024;

/** A piece of the file no larger than a chunk: read from the file, or known to be zeros. */
interface Piece {
  start: number;
  length: number;
  read: boolean;
}

/** The file cut into chunk-sized pieces, in order: the data ranges (sorted, overlaps once, clipped to the file) read, the gaps between them zeros. */
export function hashPieces(size: number, dataRanges: readonly ByteRange[]): Piece[] {
  const pieces: Piece[] = [];
  const add = (start: number, end: number, read: boolean) => {
    for (let at = start; at < end; at += CHUNK_BYTES) pieces.push({ start: at, length: Math.min(CHUNK_BYTES, end - at), read });
  };
  let at = 0;
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

/**
 * Hex SHA-256 of `path`. Without `dataRanges` the whole file is read; with them, bytes outside
 * every range must be zeros (holes, or never written), or the hash is wrong.
 */
export async function sha256File(path: string, dataRanges?: readonly ByteRange[]): Promise<string> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const pieces = hashPieces(size, dataRanges ?? [{ start: 0, length: size }]);
    const zeros = Buffer.alloc(CHUNK_BYTES);
    // Two buffers: the next piece is read while the current one is hashed.
    const buffers = [Buffer.allocUnsafe(CHUNK_BYTES), Buffer.allocUnsafe(CHUNK_BYTES)];
    const load = async (index: number): Promise<Buffer> => {
      const piece = pieces[index]!;
      if (!piece.read) return zeros.subarray(0, piece.length);
      const buffer = buffers[index % 2]!;
      const { bytesRead } = await file.read(buffer, 0, piece.length, piece.start);
      if (bytesRead !== piece.length) throw new Error(`short read from ${path} at ${piece.start}`);
      return buffer.subarray(0, piece.length);
    };
    const hash = createHash('sha256');
    let next = pieces.length > 0 ? load(0) : undefined;
    for (let index = 0; next; index++) {
      const current = await next;
      next = index + 1 < pieces.length ? load(index + 1) : undefined;
      hash.update(current);
    }
    return hash.digest('hex');
  } finally {
    await file.close();
  }
}
