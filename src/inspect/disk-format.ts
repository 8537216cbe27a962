/**
 * The format of an image someone else made, decided from its own bytes rather than by
 * `qemu-img info`: qemu's guess follows a qcow2's backing file or external data file to any
 * path on the host (the CVE-2022-47951 / CVE-2024-44082 class) and reads a LUKS1 file as an
 * encrypted format asking for a key. Only raw and qcow2 are read, always with `-f FORMAT`;
 * a qcow2 is refused when it would make qemu read other files, uses features this parser does
 * not know, or claims an absurd size. The checks follow those of OpenStack's format inspector.
 */
import { open, readFile, realpath, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { InputError } from '../errors.js';
import { formatSize } from '../recipe/size.js';
import type { ToolRunner } from './tools.js';

export type DiskFormat = 'raw' | 'qcow2';

export interface ImageFormat {
  /** What `-f` qemu-img gets: raw, qcow2, or a format the user allowed explicitly. */
  format: string;
  virtualBytes: number;
  /** qcow2 only: the host file it reads through (only with allowExternalFiles). */
  backingFile?: string;
  dataFile?: string;
}

export interface FormatPolicy {
  /** Let a qcow2 read its backing file or external data file from the host. */
  allowExternalFiles?: boolean;
  /** Formats qemu-img may read although keylessgo does not check them itself (vmdk, vhdx, ...). */
  allowFormats?: readonly string[];
  /** Larger virtual disks are refused (default MAX_VIRTUAL_BYTES). */
  maxVirtualBytes?: number;
}

export const MAX_VIRTUAL_BYTES = 64 * 1024 ** 4;

const QCOW2_MAGIC = Buffer.from('QFI\xfb', 'latin1');
/** qcow2 incompatible feature bits: dirty, corrupt, external data file, compression type, extended L2. */
const INCOMPATIBLE_DATA_FILE = 1n << 2n;
const KNOWN_INCOMPATIBLE = 0b11111n;
const EXTENSION_END = 0;
const EXTENSION_DATA_FILE = 0x44415441;
const CRYPT_METHODS: Record<number, string> = { 1: 'AES', 2: 'LUKS' };
/** cluster_bits qemu accepts: 512 bytes to 2 MiB; the header and its extensions lie in the first cluster. */
const MIN_CLUSTER_BITS = 9;
const MAX_CLUSTER_BITS = 21;

/** Signatures of formats qemu guesses but keylessgo does not read (name, offset, magic). */
const OTHER_FORMATS: ReadonlyArray<[name: string, offset: number, magic: Buffer]> = [
  ['vmdk', 0, Buffer.from('KDMV', 'latin1')],
  ['vmdk', 0, Buffer.from('# Disk DescriptorFile', 'latin1')],
  ['vhdx', 0, Buffer.from('vhdxfile', 'latin1')],
  ['vpc', 0, Buffer.from('conectix', 'latin1')],
  ['vdi', 0x40, Buffer.from([0x7f, 0x10, 0xda, 0xbe])],
  ['qcow', 0, Buffer.from('QFI\xfb\0\0\0\x01', 'latin1')],
  ['qed', 0, Buffer.from('QED\0', 'latin1')],
  ['parallels', 0, Buffer.from('WithoutFreeSpace', 'latin1')],
  ['parallels', 0, Buffer.from('WithouFreSpacExt', 'latin1')],
  ['bochs', 0, Buffer.from('Bochs Virtual HD Image', 'latin1')],
  ['cloop', 0, Buffer.from('#!/bin/sh\n#V2.0 Format', 'latin1')],
];

export interface Qcow2Header {
  version: number;
  clusterBits: number;
  virtualBytes: number;
  cryptMethod: number;
  incompatibleFeatures: bigint;
  backingFile?: string;
  dataFile?: string;
}

const has = (buffer: Buffer, offset: number, magic: Buffer) => buffer.length >= offset + magic.length && buffer.subarray(offset, offset + magic.length).equals(magic);

/** The format a file's first bytes announce; anything unrecognised is raw (as qemu would take it). */
export function detectFormat(start: Buffer): string {
  // qcow (version 1) is in OTHER_FORMATS; any other version is a qcow2 whose header parse refuses it.
  if (has(start, 0, QCOW2_MAGIC) && !(start.length >= 8 && start.readUInt32BE(4) === 1)) return 'qcow2';
  return OTHER_FORMATS.find(([, offset, magic]) => has(start, offset, magic))?.[0] ?? 'raw';
}

/**
 * Parses a qcow2 header and its extensions from the file's first cluster (or more). Throws a
 * plain Error describing the damage; the caller names the file.
 */
export function parseQcow2Header(buffer: Buffer, fileBytes: number): Qcow2Header {
  if (buffer.length < 72) throw new Error(`truncated qcow2 header (${buffer.length} bytes)`);
  const version = buffer.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new Error(`qcow2 version ${version} is unknown`);
  const clusterBits = buffer.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) throw new Error(`qcow2 cluster_bits ${clusterBits} is out of range`);
  const header: Qcow2Header = {
    version,
    clusterBits,
    virtualBytes: Number(buffer.readBigUInt64BE(24)),
    cryptMethod: buffer.readUInt32BE(32),
    incompatibleFeatures: version === 3 && buffer.length >= 80 ? buffer.readBigUInt64BE(72) : 0n,
  };
  const backingOffset = Number(buffer.readBigUInt64BE(8));
  const backingLength = buffer.readUInt32BE(16);
  if (backingOffset !== 0) {
    // The name is reported even when it cannot be read: a backing file is refused either way.
    const end = backingOffset + backingLength;
    header.backingFile = end <= buffer.length ? buffer.toString('utf8', backingOffset, end) : `(name at byte ${backingOffset}, beyond the header)`;
  }
  const headerLength = version === 3 ? buffer.readUInt32BE(100) : 72;
  if (headerLength < (version === 3 ? 104 : 72) || headerLength % 8 !== 0) throw new Error(`qcow2 header length ${headerLength} is invalid`);
  const extensionsEnd = Math.min(buffer.length, 1 << clusterBits, backingOffset || Infinity);
  for (let offset = headerLength; offset + 8 <= extensionsEnd; ) {
    const type = buffer.readUInt32BE(offset);
    const length = buffer.readUInt32BE(offset + 4);
    if (type === EXTENSION_END) break;
    if (offset + 8 + length > extensionsEnd) throw new Error(`qcow2 header extension 0x${type.toString(16)} at byte ${offset} runs past the header cluster`);
    if (type === EXTENSION_DATA_FILE) header.dataFile = buffer.toString('utf8', offset + 8, offset + 8 + length);
    offset += 8 + Math.ceil(length / 8) * 8;
  }
  if ((header.incompatibleFeatures & INCOMPATIBLE_DATA_FILE) !== 0n && header.dataFile === undefined) header.dataFile = '(named by qemu-img create -o data_file)';
  if (fileBytes < 1 << clusterBits) throw new Error(`truncated qcow2 (${fileBytes} bytes, less than one ${1 << clusterBits}-byte cluster)`);
  return header;
}

/** Why a parsed qcow2 must not be read under `policy`, or undefined if it may. */
export function qcow2Refusal(header: Qcow2Header, policy: FormatPolicy): string | undefined {
  const unknown = header.incompatibleFeatures & ~KNOWN_INCOMPATIBLE;
  if (unknown !== 0n) return `qcow2 with unknown incompatible feature bits 0x${unknown.toString(16)}`;
  if (header.cryptMethod !== 0) return `encrypted qcow2 (${CRYPT_METHODS[header.cryptMethod] ?? `method ${header.cryptMethod}`}): keylessgo reads no encrypted qcow2`;
  const maxBytes = policy.maxVirtualBytes ?? MAX_VIRTUAL_BYTES;
  if (header.virtualBytes > maxBytes) return `qcow2 virtual size ${formatSize(header.virtualBytes)} is beyond the limit of ${formatSize(maxBytes)}`;
  if (!policy.allowExternalFiles) {
    if (header.backingFile !== undefined) return `qcow2 with a backing file (${JSON.stringify(header.backingFile)}) would be read from the host; pass --allow-external-files if you trust it`;
    if (header.dataFile !== undefined) return `qcow2 with an external data file (${JSON.stringify(header.dataFile)}) would be read from the host; pass --allow-external-files if you trust it`;
  }
  return undefined;
}

/** Reads `length` bytes at the start of `path` (short for a short file). */
async function readStart(path: string, length: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

async function fileBytes(path: string): Promise<number> {
  const info = await stat(path).catch((error: NodeJS.ErrnoException) => {
    throw new InputError(error.code === 'ENOENT' ? 'no such file' : `cannot read: ${error.message}`, path);
  });
  if (info.isFile()) return info.size;
  if (!info.isBlockDevice()) throw new InputError('not a disk image file', path);
  // stat gives a block device no size; sysfs counts 512-byte sectors.
  const sectors = await readFile(`/sys/class/block/${basename(await realpath(path))}/size`, 'utf8').catch(() => '0');
  return Number(sectors) * 512;
}

/**
 * Decides how qemu-img may read `path` (format and virtual size), refusing with an InputError
 * what the policy does not allow. `host` runs qemu-img only for formats allowed explicitly.
 */
export async function probeImageFormat(host: ToolRunner, path: string, policy: FormatPolicy = {}): Promise<ImageFormat> {
  const bytes = await fileBytes(path);
  const start = await readStart(path, 1 << MAX_CLUSTER_BITS).catch((error: Error) => {
    throw new InputError(`cannot read: ${error.message}`, path);
  });
  const format = detectFormat(start);
  if (format === 'raw') return { format, virtualBytes: bytes };
  if (format === 'qcow2') {
    let header: Qcow2Header;
    try {
      header = parseQcow2Header(start, bytes);
    } catch (error) {
      throw new InputError((error as Error).message, path);
    }
    const refusal = qcow2Refusal(header, policy);
    if (refusal) throw new InputError(refusal, path);
    return { format, virtualBytes: header.virtualBytes, backingFile: header.backingFile, dataFile: header.dataFile };
  }
  if (!policy.allowFormats?.includes(format)) {
    throw new InputError(`${format} image: keylessgo reads only raw and qcow2 (convert it on a trusted machine, or pass --allow-format ${format} if you trust it)`, path);
  }
  return allowedFormat(host, path, format, policy);
}

/** A format the user allowed: qemu-img reads it with -f, and must still find no backing file. */
async function allowedFormat(host: ToolRunner, path: string, format: string, policy: FormatPolicy): Promise<ImageFormat> {
  const info = JSON.parse(
    await host.run('qemu-img', ['info', '-f', format, '--output=json', path]).catch(() => {
      throw new InputError(`qemu-img cannot open it as ${format}`, path);
    }),
  ) as { 'virtual-size': number; 'backing-filename'?: string };
  const backingFile = info['backing-filename'];
  if (backingFile !== undefined && !policy.allowExternalFiles) throw new InputError(`${format} image with a backing file (${JSON.stringify(backingFile)}); pass --allow-external-files if you trust it`, path);
  const maxBytes = policy.maxVirtualBytes ?? MAX_VIRTUAL_BYTES;
  if (info['virtual-size'] > maxBytes) throw new InputError(`virtual size ${formatSize(info['virtual-size'])} is beyond the limit of ${formatSize(maxBytes)}`, path);
  return { format, virtualBytes: info['virtual-size'], backingFile };
}
