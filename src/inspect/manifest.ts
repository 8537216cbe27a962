/**
 * A keylessgo manifest.json found beside the image: summarised, and compared field by field
 * with what the image itself holds. Read leniently (older or newer manifests still help).
 */
import { readFile } from 'node:fs/promises';
import type { InitramfsReport } from './initramfs.js';
import type { LuksSummary } from './luks.js';
import type { Partition } from './partitions.js';

export interface Manifest {
  tool?: { name?: string; version?: string };
  builtAt?: string;
  recipe?: { name?: string; suite?: string; architecture?: string };
  kernel?: { version?: string; cmdline?: string };
  luks?: { uuid?: string; cipher?: string; keySize?: number; sectorSize?: number; keyslots?: number[] };
  nbde?: { binding?: { slot: number; pin: string; servers: Array<{ url: string; thumbprints: string[] }> } | null };
  partitions?: Array<{ label: string; startBytes: number; sizeBytes: number }>;
  dropbear?: { hostKeys?: Array<{ type: string; fingerprint: string }>; authorizedKeys?: Array<{ type: string; fingerprint: string }> };
  outputs?: Array<{ format: string; path: string; bytes: number; sha256?: string }>;
}

/** The manifest at `path`, undefined if there is none; a file that is not JSON is reported as such. */
export async function readManifest(path: string): Promise<{ manifest?: Manifest; error?: string }> {
  const text = await readFile(path, 'utf8').catch(() => undefined);
  if (text === undefined) return {};
  try {
    return { manifest: JSON.parse(text) as Manifest };
  } catch (error) {
    return { error: `not JSON: ${(error as Error).message}` };
  }
}

/** The manifest without its bulk (package lists, partition table dump, stage times). */
export function summariseManifest(manifest: Manifest): Manifest {
  const { tool, builtAt, recipe, kernel, luks, nbde, partitions, dropbear, outputs } = manifest;
  return { tool, builtAt, recipe, kernel, luks, nbde, partitions, dropbear, outputs };
}

export interface Mismatch {
  field: string;
  manifest: string;
  image: string;
}

export interface ImageFacts {
  imageName: string;
  imageBytes: number;
  partitions: Partition[];
  /** The LUKS header of the root (the partition the manifest's UUID should be in). */
  luks?: LuksSummary;
  cmdline?: string;
  initramfs?: InitramfsReport;
}

const list = (values: readonly unknown[]) => values.map(String).sort().join(', ');

export interface Comparison {
  /** Fields both the manifest and the image tell. */
  compared: string[];
  mismatches: Mismatch[];
}

/** Compares the fields both sides tell; what the image could not tell (no LUKS, no initramfs) is skipped. */
export function compareWithManifest(manifest: Manifest, facts: ImageFacts): Comparison {
  const compared: string[] = [];
  const mismatches: Mismatch[] = [];
  const check = (field: string, expected: string | undefined, actual: string | undefined) => {
    if (expected === undefined || actual === undefined) return;
    compared.push(field);
    if (expected !== actual) mismatches.push({ field, manifest: expected, image: actual });
  };
  for (const p of manifest.partitions ?? []) {
    const found = facts.partitions.find((q) => q.label === p.label);
    check(`partition ${p.label}`, `${p.startBytes}+${p.sizeBytes}`, found ? `${found.startBytes}+${found.sizeBytes}` : 'absent');
  }
  const { luks } = facts;
  if (luks) {
    check('luks.uuid', manifest.luks?.uuid, luks.uuid);
    check('luks.cipher', manifest.luks?.cipher, luks.cipher);
    check('luks.keySize', manifest.luks?.keySize?.toString(), luks.keySizeBits.toString());
    check('luks.sectorSize', manifest.luks?.sectorSize?.toString(), luks.sectorSize?.toString());
    check('luks.keyslots', manifest.luks?.keyslots && list(manifest.luks.keyslots), list(luks.keyslots.map((k) => k.slot)));
    const binding = manifest.nbde?.binding;
    const bound = luks.tokens.filter((t) => t.tang?.length);
    if (binding !== undefined) {
      const describe = (slot: number, servers: Array<{ url: string; thumbprints: string[] }>) => `slot ${slot}: ${servers.map((s) => `${s.url} ${s.thumbprints.join(' ')}`).join('; ')}`;
      check('nbde.binding', binding ? describe(binding.slot, binding.servers) : 'none', bound.length ? bound.map((t) => describe(t.keyslots[0]!, t.tang!)).join(' | ') : 'none');
    }
  }
  check('kernel.cmdline', manifest.kernel?.cmdline, facts.cmdline);
  if (facts.initramfs) {
    check('dropbear.hostKeys', manifest.dropbear?.hostKeys && list(manifest.dropbear.hostKeys.map((k) => k.fingerprint)), list(facts.initramfs.dropbearHostKeys.map((k) => k.fingerprint)));
    check('dropbear.authorizedKeys', manifest.dropbear?.authorizedKeys && list(manifest.dropbear.authorizedKeys.map((k) => k.fingerprint)), list(facts.initramfs.authorizedKeys.map((k) => k.fingerprint)));
  }
  const output = manifest.outputs?.find((o) => o.path === facts.imageName);
  check(`outputs ${facts.imageName} bytes`, output?.bytes.toString(), output && facts.imageBytes.toString());
  return { compared, mismatches };
}
