/**
 * `inspect --check`: does the image match what its build wrote beside it? The manifest's
 * fields (compared by inspect), the SHA-256 in SHA256SUMS and in the manifest's outputs, of the
 * image and of the SBOMs, and the manifest's own line in SHA256SUMS. With a key
 * (`--verify-key`), SHA256SUMS.sig must be a keylessgo signature of SHA256SUMS by it, checked
 * before SHA256SUMS is trusted for anything. For CI gates and before an upload to Glance: any
 * difference fails.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InputError } from '../errors.js';
import { ownedTempDir } from '../base/owner.js';
import { readAuthorizedKeys } from '../recipe/authorized-keys.js';
import { SUMS_SIGNATURE_FILE, verifySignature, writeAllowedSigners } from '../host/ssh-signature.js';
import type { InspectReport } from './inspect.js';
import type { ToolRunner } from './tools.js';

export interface Verification {
  /** What was compared, in words. */
  checked: string[];
  /** Every difference, one line each; empty when the image matches. */
  failures: string[];
}

export interface VerifyOptions {
  /** OpenSSH public key(s) SHA256SUMS.sig must be a signature by (inspect --verify-key). */
  verifyKeyFile?: string;
}

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** The hash SHA256SUMS gives for `name` (sha256sum's text and binary line forms), undefined if none. */
export function sha256SumFor(sums: string, name: string): string | undefined {
  for (const line of sums.split('\n')) {
    const match = /^([0-9a-fA-F]{64}) [ *](.+)$/.exec(line.trimEnd());
    if (match && match[2] === name) return match[1]!.toLowerCase();
  }
  return undefined;
}

/** Outputs besides the image that --check verifies when the manifest lists them (the SBOMs). */
const CHECKED_OUTPUT_FORMATS = new Set(['cyclonedx', 'spdx']);

/** Checks SHA256SUMS.sig with the given key(s): undefined when the signature is good, else why not. */
async function signatureFailure(host: ToolRunner, dir: string, sums: string | undefined, keyFile: string): Promise<string | undefined> {
  const signature = join(dir, SUMS_SIGNATURE_FILE);
  if (sums === undefined) return `no SHA256SUMS beside the image to check a signature of`;
  if (!(await stat(signature).then((s) => s.isFile(), () => false))) return `no ${SUMS_SIGNATURE_FILE} beside the image (was it built with --sign-key?)`;
  const keys = await readAuthorizedKeys(keyFile);
  const scratch = await ownedTempDir('keylessgo-inspect-');
  try {
    const allowed = join(scratch, 'allowed_signers');
    await writeAllowedSigners(allowed, keys);
    const why = await verifySignature(host, sums, signature, allowed);
    return why && `${signature} is not a keylessgo signature of SHA256SUMS by ${keyFile} (${keys.map((k) => k.fingerprint).join(', ')}): ${why}`;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

export async function verifyImage(report: InspectReport, host: ToolRunner, options: VerifyOptions = {}): Promise<Verification> {
  const dir = dirname(report.image);
  const name = basename(report.image);
  const sumsFile = join(dir, 'SHA256SUMS');
  let sums = await readFile(sumsFile, 'utf8').catch(() => undefined);
  const manifestFile = join(dir, 'manifest.json');
  const manifestBroken = report.notes.find((note) => note.startsWith(manifestFile));
  if (!report.manifest && sums === undefined && !manifestBroken) throw new InputError('nothing to check against: no manifest.json or SHA256SUMS beside the image', report.image);

  const checked: string[] = [];
  const failures: string[] = [];
  if (options.verifyKeyFile) {
    const failure = await signatureFailure(host, dir, sums, options.verifyKeyFile);
    if (failure) {
      failures.push(failure);
      // An unsigned or forged SHA256SUMS vouches for nothing.
      sums = undefined;
    } else checked.push(`signature of SHA256SUMS by ${options.verifyKeyFile}`);
  }
  if (manifestBroken) failures.push(manifestBroken);
  if (report.manifest) {
    checked.push(`${report.manifest.compared.length} manifest fields`);
    failures.push(...report.manifest.mismatches.map((m) => `manifest ${m.field}: manifest ${m.manifest}, image ${m.image}`));
  }

  /** Compares a file's SHA-256 with SHA256SUMS and, when given, the manifest's outputs. */
  const checkFile = async (file: string, fromManifest: string | undefined, required: boolean) => {
    const fileName = basename(file);
    const listed = sums === undefined ? undefined : sha256SumFor(sums, fileName);
    const expected = [
      ...(sums === undefined || (!required && listed === undefined) ? [] : [{ source: sumsFile, hash: listed }]),
      ...(fromManifest ? [{ source: `${manifestFile} outputs`, hash: fromManifest }] : []),
    ];
    if (expected.length === 0) return;
    const actual = await sha256(file).catch(() => undefined);
    for (const { source, hash } of expected) {
      checked.push(`SHA-256 of ${fileName} against ${source}`);
      if (hash === undefined) failures.push(`${source} has no line for ${fileName}`);
      else if (actual === undefined) failures.push(`${file} is missing (${source} lists it)`);
      else if (hash !== actual) failures.push(`SHA-256 of ${fileName} differs from ${source}: expected ${hash}, file has ${actual}`);
    }
  };
  const outputs = report.manifest?.summary.outputs ?? [];
  await checkFile(report.image, outputs.find((o) => o.path === name)?.sha256, true);
  for (const output of outputs.filter((o) => CHECKED_OUTPUT_FORMATS.has(o.format))) await checkFile(join(dir, output.path), output.sha256, true);
  // Builds since SHA256SUMS.sig list the manifest itself; older ones do not (then it is skipped).
  if (report.manifest) await checkFile(manifestFile, undefined, options.verifyKeyFile !== undefined);
  return { checked, failures };
}
