/**
 * cryptsetup operations that work without device-mapper: formatting a LUKS2 header,
 * header dumps. Passphrases are passed as --key-file paths, never as arguments.
 */
import type { Recipe } from '../recipe/schema.js';
import type { HostRunner } from './run.js';

/**
 * Where the encrypted data starts in the root partition: LUKS2's default 16 MiB of header
 * and keyslot area, fixed so the filesystem can be sized before the header exists.
 */
export const LUKS_DATA_OFFSET_BYTES = 16 * 1024 * 1024;

export interface LuksFormat {
  device: string;
  uuid: string;
  keyFile: string;
  volumeKeyFile: string;
  luks: Recipe['luks'];
}

/**
 * Arguments for `cryptsetup luksFormat` with a volume key we chose, so that the data area can
 * be filled without opening the volume (there may be no device-mapper on the build host).
 */
export function luksFormatArgs({ device, uuid, keyFile, volumeKeyFile, luks }: LuksFormat): string[] {
  const pbkdf = luks.pbkdf;
  const cost =
    pbkdf.type === 'pbkdf2'
      ? ['--pbkdf-force-iterations', String(Math.max(pbkdf.iterations, 1000))]
      : ['--pbkdf-memory', String(pbkdf.memoryKiB), '--pbkdf-force-iterations', String(pbkdf.iterations), '--pbkdf-parallel', String(pbkdf.parallel)];
  return [
    'luksFormat',
    '--type',
    'luks2',
    '--offset',
    String(LUKS_DATA_OFFSET_BYTES / 512),
    '--uuid',
    uuid,
    '--cipher',
    luks.cipher,
    '--key-size',
    String(luks.keySize),
    '--sector-size',
    String(luks.sectorSize),
    '--volume-key-file',
    volumeKeyFile,
    '--pbkdf',
    pbkdf.type,
    ...cost,
    '--key-slot',
    '0',
    '--key-file',
    keyFile,
    '--batch-mode',
    device,
  ];
}

export interface LuksSummary {
  version: number;
  uuid: string;
  cipher: string;
  keyslots: number[];
  dataOffsetBytes: number;
}

/** Extracts the fields the manifest and tests need from `cryptsetup luksDump` text. */
export function parseLuksDump(text: string): LuksSummary {
  const field = (name: string) => new RegExp(`^${name}:\\s*(.+)$`, 'm').exec(text)?.[1]?.trim();
  const keyslotSection = /^Keyslots:\n([\s\S]*?)^\S/m.exec(text)?.[1] ?? '';
  const keyslots = [...keyslotSection.matchAll(/^ {2}(\d+): luks2/gm)].map((m) => Number(m[1]));
  return {
    version: Number(field('Version')),
    uuid: field('UUID') ?? '',
    cipher: /^\s+cipher:\s*(\S+)/m.exec(text)?.[1] ?? '',
    keyslots,
    dataOffsetBytes: Number(/^\s+offset:\s*(\d+) \[bytes\]/m.exec(text)?.[1] ?? NaN),
  };
}

export async function luksDump(host: HostRunner, device: string): Promise<LuksSummary> {
  return parseLuksDump(await host.run('cryptsetup', ['luksDump', device]));
}

/** The LUKS2 JSON header's digest of the volume key: public, and replaced when `cryptsetup reencrypt` changes the key. */
export interface LuksHeaderDigest {
  salt: string;
  digest: string;
}

/** The parts of `cryptsetup luksDump --dump-json-metadata` keylessgo reads. */
export interface LuksJsonHeader {
  keyslots: Record<string, { type: string }>;
  tokens: Record<string, { type: string; keyslots: string[] } & Record<string, unknown>>;
  digests: Record<string, { salt: string; digest: string }>;
}

export const LUKS_JSON_DUMP_ARGS = ['luksDump', '--dump-json-metadata'] as const;

export function parseLuksJsonHeader(text: string): LuksJsonHeader {
  const json = JSON.parse(text) as Partial<LuksJsonHeader>;
  if (typeof json !== 'object' || json === null || !json.keyslots || !json.digests) throw new Error('not a LUKS2 JSON header (no keyslots or digests)');
  return { keyslots: json.keyslots, tokens: json.tokens ?? {}, digests: json.digests };
}

export function luksHeaderDigests(header: LuksJsonHeader): LuksHeaderDigest[] {
  return Object.values(header.digests).map(({ salt, digest }) => ({ salt, digest }));
}
