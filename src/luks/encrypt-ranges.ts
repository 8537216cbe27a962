/**
 * Writes the LUKS2 data area ourselves: each used range of a plaintext filesystem image is
 * encrypted sector by sector (aes-xts-plain64, the IV being the 512-byte sector number from
 * the start of the data segment, as dm-crypt does for LUKS2) and written at the same place
 * behind the header. Ranges not listed are never written, so they stay holes in a sparse
 * image, like free space under dm-crypt on a discarded device. The filesystem never reads
 * its free blocks, so their content does not matter.
 *
 * The cipher runs in worker threads, one per core (up to eight): Node sets up a cipher per
 * sector (a new IV each time), which keeps one core at ~270 MB/s. The main thread reads and
 * writes; at most two chunks per worker are in flight, so memory stays bounded whatever the size.
 */
import { availableParallelism } from 'node:os';
import { open } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import type { ByteRange } from '../host/ext4.js';

const CHUNK_BYTES = 4 * 1024 * 1024;
const CHUNKS_IN_FLIGHT_PER_WORKER = 2;
// Eight cores encrypt faster than disks write; more workers would only hold more memory.
const MAX_WORKERS = 8;

/** Node's name for a LUKS2 cipher spec and key size in bits. */
export function nodeCipherName(cipher: string, keySizeBits: number): string {
  if (cipher !== 'aes-xts-plain64') throw new Error(`unsupported cipher ${cipher}`);
  if (keySizeBits !== 256 && keySizeBits !== 512) throw new Error(`unsupported key size ${keySizeBits} for aes-xts`);
  return `aes-${keySizeBits / 2}-xts`;
}

export interface EncryptRanges {
  plaintext: string;
  /** The file (or device) to write into; the LUKS2 data segment starts at dataOffsetBytes. */
  target: string;
  dataOffsetBytes: number;
  ranges: readonly ByteRange[];
  cipher: string;
  volumeKey: Buffer;
  sectorSize: number;
  /** Worker threads; one per core (up to eight) unless given. */
  workers?: number;
  signal?: AbortSignal;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

interface WorkerSetup {
  cipherName: string;
  /** The worker's own copy of the volume key (structured clone, in memory only); it zero-fills it when told to stop. */
  key: Uint8Array;
  sectorSize: number;
}

/** A chunk to encrypt in place: `length` bytes of `data`, starting `offset` bytes into the data segment. */
interface ChunkJob {
  id: number;
  data: ArrayBuffer;
  length: number;
  offset: number;
}

/**
 * The worker's code. It runs from its source text (eval), so the same code works from the
 * compiled dist/ and under the test runner, which has no compiled file to point a worker at.
 * It may use only what it requires itself.
 */
function cipherWorker(): void {
  const { parentPort, workerData } = require('node:worker_threads') as typeof import('node:worker_threads');
  const { createCipheriv } = require('node:crypto') as typeof import('node:crypto');
  const { cipherName, key, sectorSize } = workerData as WorkerSetup;
  const IV_SECTOR_BYTES = 512;
  const iv = Buffer.alloc(16);
  parentPort!.on('message', (job: ChunkJob | null) => {
    if (job === null) {
      key.fill(0);
      parentPort!.close();
      return;
    }
    const chunk = Buffer.from(job.data, 0, job.length);
    for (let at = 0; at < job.length; at += sectorSize) {
      iv.writeBigUInt64LE(BigInt((job.offset + at) / IV_SECTOR_BYTES));
      const cipher = createCipheriv(cipherName, key, iv);
      cipher.update(chunk.subarray(at, at + sectorSize)).copy(chunk, at);
      cipher.final();
    }
    parentPort!.postMessage({ id: job.id, data: job.data }, [job.data]);
  });
}

/** Worker threads encrypting chunks in place; each chunk's buffer travels to a worker and back without a copy. */
class CipherPool {
  private readonly workers: Worker[];
  private readonly exited: Array<Promise<void>>;
  private readonly pending = new Map<number, { resolve: (data: ArrayBuffer) => void; reject: (error: Error) => void }>();
  private nextId = 0;
  private failure?: Error;

  constructor(count: number, setup: Omit<WorkerSetup, 'key'>, volumeKey: Buffer) {
    this.workers = Array.from({ length: count }, () => new Worker(`(${cipherWorker.toString()})()`, { eval: true, workerData: { ...setup, key: new Uint8Array(volumeKey) } satisfies WorkerSetup }));
    this.exited = this.workers.map(
      (worker) =>
        new Promise<void>((resolve) => {
          worker.on('message', ({ id, data }: { id: number; data: ArrayBuffer }) => {
            this.pending.get(id)?.resolve(data);
            this.pending.delete(id);
          });
          worker.on('error', (error) => this.fail(error));
          worker.on('exit', (code) => {
            if (code !== 0 || this.pending.size > 0) this.fail(new Error(`encryption worker exited with code ${code}`));
            resolve();
          });
        }),
    );
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const { reject } of this.pending.values()) reject(this.failure);
    this.pending.clear();
  }

  encrypt(data: ArrayBuffer, length: number, offset: number): Promise<ArrayBuffer> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.workers[id % this.workers.length]!.postMessage({ id, data, length, offset } satisfies ChunkJob, [data]);
    });
  }

  /** Each worker zero-fills its copy of the key before it exits. */
  async close(): Promise<void> {
    for (const worker of this.workers) worker.postMessage(null);
    await Promise.all(this.exited);
  }
}

/** Returns the number of bytes written. */
export async function encryptRanges(options: EncryptRanges): Promise<number> {
  const { sectorSize } = options;
  const cipherName = nodeCipherName(options.cipher, options.volumeKey.length * 8);
  for (const range of options.ranges) {
    if (range.start % sectorSize !== 0 || range.length % sectorSize !== 0) throw new Error(`range ${range.start}+${range.length} is not aligned to ${sectorSize}-byte sectors`);
  }
  const total = options.ranges.reduce((sum, r) => sum + r.length, 0);
  const workerCount = Math.max(1, options.workers ?? Math.min(availableParallelism(), MAX_WORKERS));
  const source = await open(options.plaintext, 'r');
  const target = await open(options.target, 'r+');
  const pool = new CipherPool(workerCount, { cipherName, sectorSize }, options.volumeKey);
  const freeBuffers: ArrayBuffer[] = [];
  const inFlight = new Set<Promise<void>>();
  let done = 0;
  try {
    for (const range of options.ranges) {
      for (let offset = range.start; offset < range.start + range.length; ) {
        options.signal?.throwIfAborted();
        while (inFlight.size >= workerCount * CHUNKS_IN_FLIGHT_PER_WORKER) await Promise.race(inFlight);
        const length = Math.min(CHUNK_BYTES, range.start + range.length - offset);
        const buffer = freeBuffers.pop() ?? new ArrayBuffer(CHUNK_BYTES);
        const { bytesRead } = await source.read(new Uint8Array(buffer), 0, length, offset);
        if (bytesRead !== length) throw new Error(`short read from ${options.plaintext} at ${offset}`);
        const chunkOffset = offset;
        const job = pool.encrypt(buffer, length, chunkOffset).then(async (encrypted) => {
          await target.write(new Uint8Array(encrypted), 0, length, options.dataOffsetBytes + chunkOffset);
          freeBuffers.push(encrypted);
          done += length;
          options.onProgress?.(done, total);
        });
        inFlight.add(job);
        // Settled jobs leave the set; a failure surfaces through Promise.race/all, not as an unhandled rejection.
        job.then(() => inFlight.delete(job), () => undefined);
        offset += length;
      }
    }
    await Promise.all(inFlight);
  } finally {
    await Promise.allSettled(inFlight);
    await pool.close();
    await source.close();
    await target.close();
  }
  return done;
}
