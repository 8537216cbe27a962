/**
 * LUKS headers read without the passphrase: the binary header is parsed here, and for
 * LUKS2 a copy of the metadata area (never the data) is dumped with cryptsetup, which also
 * checks its checksums.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { clevisPinInToken, clevisPolicyInToken, describeClevisPolicy, tangServersInToken, tpm2BindingsInToken, type BoundTangServer, type BoundTpm2 } from '../host/clevis.js';
import type { DiskImage } from './image.js';
import type { ToolRunner } from './tools.js';

export const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
/** The LUKS2 binary header; LUKS1's fields of interest also lie within it. */
export const BINARY_HEADER_BYTES = 4096;

export interface LuksBinaryHeader {
  version: number;
  uuid: string;
  label: string;
  /** LUKS2: binary header plus JSON area, one copy. */
  headerBytes?: number;
  /** LUKS1 keeps cipher and key size in the binary header. */
  cipher?: string;
  keySizeBits?: number;
}

const cString = (buffer: Buffer, start: number, length: number) => buffer.toString('latin1', start, start + length).replace(/\0.*$/s, '');

export function parseLuksBinaryHeader(buffer: Buffer): LuksBinaryHeader | undefined {
  if (buffer.length < 512 || !buffer.subarray(0, 6).equals(LUKS_MAGIC)) return undefined;
  const version = buffer.readUInt16BE(6);
  const uuid = cString(buffer, 168, 40);
  if (version === 1) return { version, uuid, label: '', cipher: `${cString(buffer, 8, 32)}-${cString(buffer, 40, 32)}`, keySizeBits: buffer.readUInt32BE(108) * 8 };
  return { version, uuid, label: cString(buffer, 24, 48), headerBytes: Number(buffer.readBigUInt64BE(8)) };
}

/** LUKS2 header sizes (binary header plus JSON area) cryptsetup writes and accepts: 16 KiB to 4 MiB, powers of two. */
export function isValidLuks2HeaderSize(bytes: number): boolean {
  return bytes >= 16 * 1024 && bytes <= 4 * 1024 * 1024 && (bytes & (bytes - 1)) === 0;
}

const CHECKSUM_AT = 448;
const CHECKSUM_BYTES = 64;

/**
 * Whether a LUKS2 header copy (binary header and JSON area) matches its checksum: the hash of
 * the copy with the checksum field zeroed. Undefined for hash algorithms other than sha256.
 */
export function luks2ChecksumMatches(header: Buffer): boolean | undefined {
  if (cString(header, 72, 32) !== 'sha256') return undefined;
  const zeroed = Buffer.from(header);
  zeroed.fill(0, CHECKSUM_AT, CHECKSUM_AT + CHECKSUM_BYTES);
  return createHash('sha256').update(zeroed).digest().equals(header.subarray(CHECKSUM_AT, CHECKSUM_AT + 32));
}

/** cryptsetup's limit on the keyslot area; a larger value is damage, not a reason to copy gigabytes. */
const MAX_KEYSLOTS_BYTES = 128 * 1024 * 1024;

/**
 * Bytes from the start of a LUKS2 device that cryptsetup needs to dump it: both metadata copies
 * and the keyslot area. Undefined when the primary JSON area is not JSON or names no sane size.
 */
export function luks2MetadataBytes(primaryHeader: Buffer, headerBytes: number): number | undefined {
  try {
    const json = JSON.parse(cString(primaryHeader, BINARY_HEADER_BYTES, headerBytes - BINARY_HEADER_BYTES)) as { config?: { keyslots_size?: string } };
    const keyslotsBytes = Number(json.config?.keyslots_size);
    return Number.isSafeInteger(keyslotsBytes) && keyslotsBytes >= 0 && keyslotsBytes <= MAX_KEYSLOTS_BYTES ? 2 * headerBytes + keyslotsBytes : undefined;
  } catch {
    return undefined;
  }
}

export interface Keyslot {
  slot: number;
  type: string;
  kdf: string;
  /** argon2: time cost, memory (KiB) and threads; pbkdf2: hash and iterations. */
  timeCost?: number;
  memoryKiB?: number;
  parallel?: number;
  hash?: string;
  iterations?: number;
}

export interface Token {
  id: number;
  type: string;
  keyslots: number[];
  /** For clevis tokens: the pin, the Tang servers with their signing-key thumbprints, the TPM2 bindings and the whole policy in one line. */
  clevisPin?: string;
  tang?: BoundTangServer[];
  tpm2?: BoundTpm2[];
  policy?: string;
}

export interface LuksSummary {
  version: number;
  uuid: string;
  label: string;
  cipher: string;
  keySizeBits: number;
  sectorSize?: number;
  dataOffsetBytes?: number;
  keyslots: Keyslot[];
  tokens: Token[];
  /** LUKS2: bytes of both metadata copies and the keyslot area, when the primary JSON tells. */
  metadataBytes?: number;
  /** What was found damaged while reading (the report still shows what could be read). */
  damage: string[];
}

interface Luks2Json {
  keyslots: Record<string, { type: string; key_size: number; kdf: { type: string; time?: number; memory?: number; cpus?: number; hash?: string; iterations?: number } }>;
  tokens: Record<string, { type: string; keyslots: string[] }>;
  segments: Record<string, { encryption?: string; sector_size?: number; offset?: string }>;
}

/** Summarises `cryptsetup luksDump --dump-json-metadata` output (LUKS2) with the binary header's fields. */
export function summariseLuks2(header: LuksBinaryHeader, metadataJson: string): LuksSummary {
  const metadata = JSON.parse(metadataJson) as Luks2Json;
  const segment = Object.values(metadata.segments)[0];
  const keyslots = Object.entries(metadata.keyslots).map(([slot, keyslot]): Keyslot => {
    const { kdf } = keyslot;
    const cost = kdf.type === 'pbkdf2' ? { hash: kdf.hash, iterations: kdf.iterations } : { timeCost: kdf.time, memoryKiB: kdf.memory, parallel: kdf.cpus };
    return { slot: Number(slot), type: keyslot.type, kdf: kdf.type, ...cost };
  });
  const tokens = Object.entries(metadata.tokens).map(([id, token]): Token => {
    const json = JSON.stringify(token);
    const clevisPin = clevisPinInToken(json);
    const policy = clevisPolicyInToken(json);
    const tpm2 = tpm2BindingsInToken(json);
    const clevis = clevisPin ? { clevisPin, tang: tangServersInToken(json), ...(tpm2.length ? { tpm2 } : {}), ...(policy && clevisPin !== 'tang' ? { policy: describeClevisPolicy(policy) } : {}) } : {};
    return { id: Number(id), type: token.type, keyslots: token.keyslots.map(Number), ...clevis };
  });
  return {
    version: header.version,
    uuid: header.uuid,
    label: header.label,
    cipher: segment?.encryption ?? '',
    keySizeBits: (Object.values(metadata.keyslots)[0]?.key_size ?? 0) * 8,
    sectorSize: segment?.sector_size,
    dataOffsetBytes: segment?.offset === undefined ? undefined : Number(segment.offset),
    keyslots,
    tokens,
    damage: [],
  };
}

// LUKS2's default metadata plus keyslot area, used when the primary JSON cannot be read.
const DEFAULT_METADATA_BYTES = 16 * 1024 * 1024;

/** Reads the LUKS header of the partition at `offset` (already known to start with LUKS_MAGIC). */
export async function readLuks(host: ToolRunner, image: DiskImage, offset: number, partitionBytes: number, scratchDir: string): Promise<LuksSummary> {
  const header = parseLuksBinaryHeader(await image.read(offset, BINARY_HEADER_BYTES))!;
  if (header.version !== 2) {
    const damage = header.version === 1 ? [] : [`LUKS version ${header.version} is unknown`];
    return { version: header.version, uuid: header.uuid, label: '', cipher: header.cipher ?? '', keySizeBits: header.keySizeBits ?? 0, keyslots: [], tokens: [], damage };
  }
  const damage: string[] = [];
  let metadataBytes: number | undefined;
  if (!isValidLuks2HeaderSize(header.headerBytes!)) damage.push(`the primary LUKS2 binary header is damaged (header size ${header.headerBytes}); read from the secondary copy`);
  else {
    const primary = await image.read(offset, header.headerBytes!);
    if (luks2ChecksumMatches(primary) === false) damage.push('the primary LUKS2 header fails its checksum (damaged or altered); cryptsetup reads the secondary copy');
    metadataBytes = luks2MetadataBytes(primary, header.headerBytes!);
    if (metadataBytes === undefined) damage.push('the primary LUKS2 JSON area is damaged (not JSON, or no sane keyslots_size); read from the secondary copy');
  }
  const needed = Math.min(partitionBytes, metadataBytes ?? DEFAULT_METADATA_BYTES);
  const copy = await image.extract(offset, needed, join(scratchDir, `luks-header-${offset}`));
  const summary = summariseLuks2(header, await host.run('cryptsetup', ['luksDump', '--dump-json-metadata', copy]));
  return { ...summary, metadataBytes, damage };
}
