/**
 * Writes the LUKS2 data area ourselves: each used range of a plaintext filesystem image is
 * encrypted sector by sector (aes-xts-plain64, the IV being the 512-byte sector number from
 * the start of the data segment, as dm-crypt does for LUKS2) and written at the same place
 * behind the header. Ranges not listed are never written, so they stay holes in a sparse
 * image, like free space under dm-crypt on a discarded device. The filesystem never reads
 * its free blocks, so their content does not matter.
 */
import { createCipheriv } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { ByteRange } from '../host/ext4.js';

const CHUNK_BYTES = 4 * 1024 * 1024;
const IV_SECTOR_BYTES = 512;

/** Node's name for a LUKS2 cipher spec and key size in bits. */
export function nodeCipherName(cipher: string, keySizeBits: number): string {
  if (cipher !== 'aes-xts-plain64') throw new Error(`unsupported cipher ${cipher}`);
  if (keySizeBits !== 256 && keySizeBits !== 512) throw new Error(`unsupported key size ${keySizeBits} for aes-xts`);
  return `aes-${keySizeBits / 2}-xts`;
}

export interface EncryptRanges {
  plaintext: string;
  /** The LUKS2 device (or file) to write into; data starts at dataOffsetBytes. */
  target: string;
  dataOffsetBytes: number;
  ranges: readonly ByteRange[];
  cipher: string;
  volumeKey: Buffer;
  sectorSize: number;
  signal?: AbortSignal;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

/** Encrypts one chunk whose first byte is `offset` bytes into the data segment. */
function encryptChunk(name: string, key: Buffer, plain: Buffer, offset: number, sectorSize: number): Buffer {
  const out = Buffer.allocUnsafe(plain.length);
  const iv = Buffer.alloc(16);
  for (let at = 0; at < plain.length; at += sectorSize) {
    iv.writeBigUInt64LE(BigInt((offset + at) / IV_SECTOR_BYTES));
    const cipher = createCipheriv(name, key, iv);
    cipher.update(plain.subarray(at, at + sectorSize)).copy(out, at);
    cipher.final();
  }
  return out;
}

/** Returns the number of bytes written. */
export async function encryptRanges(options: EncryptRanges): Promise<number> {
  const { sectorSize } = options;
  const name = nodeCipherName(options.cipher, options.volumeKey.length * 8);
  const total = options.ranges.reduce((sum, r) => sum + r.length, 0);
  const source = await open(options.plaintext, 'r');
  const target = await open(options.target, 'r+');
  const chunk = Buffer.alloc(CHUNK_BYTES);
  let done = 0;
  try {
    for (const range of options.ranges) {
      if (range.start % sectorSize !== 0 || range.length % sectorSize !== 0) throw new Error(`range ${range.start}+${range.length} is not aligned to ${sectorSize}-byte sectors`);
      for (let offset = range.start; offset < range.start + range.length; ) {
        options.signal?.throwIfAborted();
        const length = Math.min(CHUNK_BYTES, range.start + range.length - offset);
        const { bytesRead } = await source.read(chunk, 0, length, offset);
        if (bytesRead !== length) throw new Error(`short read from ${options.plaintext} at ${offset}`);
        const encrypted = encryptChunk(name, options.volumeKey, chunk.subarray(0, length), offset, sectorSize);
        await target.write(encrypted, 0, length, options.dataOffsetBytes + offset);
        offset += length;
        done += length;
        options.onProgress?.(done, total);
      }
    }
    await target.datasync();
  } finally {
    chunk.fill(0);
    await source.close();
    await target.close();
  }
  return done;
}
