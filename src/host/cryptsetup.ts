/**
 * cryptsetup operations that work without device-mapper: offline encryption in place,
 * header dumps. Passphrases are passed as --key-file paths, never as arguments.
 */
import type { Recipe } from '../recipe/schema.js';
import type { HostRunner } from './run.js';

/** Space reserved at the end of the filesystem for the LUKS2 header that encryption moves in. */
export const LUKS_RESERVED_BYTES = 32 * 1024 * 1024;

export interface EncryptInPlace {
  device: string;
  uuid: string;
  keyFile: string;
  luks: Recipe['luks'];
}

/** Arguments for `cryptsetup reencrypt --encrypt` of a filesystem that leaves LUKS_RESERVED_BYTES free. */
export function encryptInPlaceArgs({ device, uuid, keyFile, luks }: EncryptInPlace): string[] {
  const pbkdf = luks.pbkdf;
  const cost =
    pbkdf.type === 'pbkdf2'
      ? ['--pbkdf-force-iterations', String(Math.max(pbkdf.iterations, 1000))]
      : ['--pbkdf-memory', String(pbkdf.memoryKiB), '--pbkdf-force-iterations', String(pbkdf.iterations), '--pbkdf-parallel', String(pbkdf.parallel)];
  return [
    'reencrypt',
    '--encrypt',
    '--type',
    'luks2',
    '--reduce-device-size',
    `${LUKS_RESERVED_BYTES / 1024 / 1024}M`,
    '--uuid',
    uuid,
    '--cipher',
    luks.cipher,
    '--key-size',
    String(luks.keySize),
    '--sector-size',
    String(luks.sectorSize),
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
