/**
 * `keylessgo diff A/manifest.json B/manifest.json`: are two builds of a recipe the same image?
 * Every field of the two manifests is compared, the plaintext digests among them (root tree,
 * root ext4, initramfs, /boot, ESP, disk start), so nothing is decrypted. Each difference is
 * named, and said to be on the declared list of per-build values (the build's time and
 * durations, the LUKS2 header, the dropbear host keys, and the hashes of the outputs that hold
 * them) or not: one that is not means the builds made different plaintext.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors.js';

/** Manifest fields that differ between any two builds, each with why (README: "Reproducible plaintext"). */
export const PER_BUILD_FIELDS: ReadonlyArray<{ field: RegExp; reason: string }> = [
  { field: /^builtAt$/, reason: "the build's time" },
  { field: /^(stageSeconds|stageTimes|hostToolSeconds)(\.|$)|^hostToolBusySeconds$/, reason: 'how long the build took' },
  { field: /^filesystems\.rootTreeBytes$/, reason: "the tree's size on the build host's file system (du), which depends on how that file system allocated it, not on the image" },
  { field: /^luks\.headerDigests(\[|$)/, reason: 'the LUKS2 header: its volume key and salts are drawn at random for every build' },
  { field: /^dropbear\.hostKeys(\[|$)/, reason: "the initramfs's dropbear host keys, made for every build" },
  { field: /^outputs\[(raw|qcow2)\]\.(sha256|glance\.os_hash_value)$/, reason: 'the disk image holds the LUKS2 header and the root encrypted with a volume key of its own' },
  { field: /^outputs\[initrd\]\.sha256$/, reason: "the initramfs holds the build's dropbear host keys" },
  { field: /^outputs\[(cyclonedx|spdx)\]\.sha256$/, reason: "the SBOMs name the initramfs's SHA-256" },
];

export interface ManifestDifference {
  field: string;
  /** The value in each manifest as JSON; undefined where the field is absent. */
  a?: string;
  b?: string;
  /** Why the field differs in every build, when it is on the declared list. */
  perBuild?: string;
}

export interface ManifestDiff {
  compared: number;
  differences: ManifestDifference[];
}

/** Keys that identify an array's objects (outputs by format, partitions by label, packages by name). */
const ELEMENT_KEYS = ['format', 'label', 'name', 'type', 'url'];

/** Leaf fields as `a.b[key].c` → JSON value; arrays of objects keyed by their identifying field. */
export function flattenManifest(value: unknown, prefix = '', into = new Map<string, string>()): Map<string, string> {
  if (Array.isArray(value) && value.length > 0 && value.every((v) => v && typeof v === 'object' && !Array.isArray(v))) {
    const key = ELEMENT_KEYS.find((k) => new Set(value.map((v) => (v as Record<string, unknown>)[k])).size === value.length && value.every((v) => typeof (v as Record<string, unknown>)[k] === 'string'));
    value.forEach((element, index) => flattenManifest(element, `${prefix}[${key ? (element as Record<string, string>)[key] : index}]`, into));
  } else if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flattenManifest(v, prefix ? `${prefix}.${k}` : k, into);
  } else into.set(prefix, JSON.stringify(value));
  return into;
}

export function perBuildReason(field: string): string | undefined {
  return PER_BUILD_FIELDS.find((f) => f.field.test(field))?.reason;
}

export function diffManifests(a: unknown, b: unknown): ManifestDiff {
  const [left, right] = [flattenManifest(a), flattenManifest(b)];
  const fields = [...new Set([...left.keys(), ...right.keys()])].sort();
  const differences = fields
    .filter((field) => left.get(field) !== right.get(field))
    .map((field): ManifestDifference => ({ field, a: left.get(field), b: right.get(field), perBuild: perBuildReason(field) }));
  return { compared: fields.length, differences };
}

/** A manifest file, or the manifest.json in a directory; bad input when it is neither. */
export async function readManifestArgument(path: string): Promise<unknown> {
  const file = (await stat(path).catch(() => undefined))?.isDirectory() ? join(path, 'manifest.json') : path;
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read the manifest: ${error.code === 'ENOENT' ? 'no such file' : error.message}`, file);
  });
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new InputError(`not JSON: ${(error as Error).message}`, file);
  }
}

const shorten = (text: string | undefined) => (text === undefined ? '(absent)' : text.length > 80 ? `${text.slice(0, 77)}...` : text);

/** The diff for people: one line per difference, then a summary line. */
export function formatManifestDiff(diff: ManifestDiff): string {
  const lines = diff.differences.map((d) => `${d.perBuild ? 'per-build' : 'DIFFERS  '}  ${d.field}: ${shorten(d.a)} -> ${shorten(d.b)}${d.perBuild ? `  (${d.perBuild})` : ''}`);
  const undeclared = diff.differences.filter((d) => !d.perBuild).length;
  lines.push(`${diff.compared} fields compared: ${diff.differences.length} differ, ${diff.differences.length - undeclared} of them per-build values, ${undeclared} not declared`);
  return `${lines.join('\n')}\n`;
}
