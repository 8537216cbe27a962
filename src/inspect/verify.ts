/**
 * `inspect --check`: does the image match what its build wrote beside it? The manifest's
 * fields (compared by inspect) and the SHA-256 in SHA256SUMS and in the manifest's outputs.
 * For CI gates and before an upload to Glance: any difference fails.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InputError } from '../errors.js';
import type { InspectReport } from './inspect.js';

export interface Verification {
  /** What was compared, in words. */
  checked: string[];
  /** Every difference, one line each; empty when the image matches. */
  failures: string[];
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

export async function verifyImage(report: InspectReport): Promise<Verification> {
  const name = basename(report.image);
  const sumsFile = join(dirname(report.image), 'SHA256SUMS');
  const sums = await readFile(sumsFile, 'utf8').catch(() => undefined);
  const manifestOutput = report.manifest?.summary.outputs?.find((o) => o.path === name);
  const manifestBroken = report.notes.find((note) => note.startsWith(join(dirname(report.image), 'manifest.json')));
  if (!report.manifest && sums === undefined && !manifestBroken) throw new InputError('nothing to check against: no manifest.json or SHA256SUMS beside the image', report.image);

  const checked: string[] = [];
  const failures: string[] = [];
  if (manifestBroken) failures.push(manifestBroken);
  if (report.manifest) {
    checked.push(`${report.manifest.compared.length} manifest fields`);
    failures.push(...report.manifest.mismatches.map((m) => `manifest ${m.field}: manifest ${m.manifest}, image ${m.image}`));
  }
  const expected = [
    ...(sums === undefined ? [] : [{ source: sumsFile, hash: sha256SumFor(sums, name) }]),
    ...(manifestOutput?.sha256 ? [{ source: `${report.manifest!.file} outputs`, hash: manifestOutput.sha256 }] : []),
  ];
  if (expected.length > 0) {
    const actual = await sha256(report.image);
    for (const { source, hash } of expected) {
      checked.push(`SHA-256 against ${source}`);
      if (hash === undefined) failures.push(`${source} has no line for ${name}`);
      else if (hash !== actual) failures.push(`SHA-256 differs from ${source}: expected ${hash}, file has ${actual}`);
    }
  }
  return { checked, failures };
}
