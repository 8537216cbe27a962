/**
 * Reproducible plaintext: the fixture's recipe built a second time, cold, with a stage cache of
 * its own (empty), the same keys, passphrase and flags (global setup), must give the same
 * plaintext: equal digests of the root tree, the root ext4, the initramfs's base, /boot, the
 * ESP and the disk's start, and `keylessgo diff` must find only declared per-build values.
 */
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { describe, expect, inject, it } from 'vitest';
import type { ManifestDiff } from '../../src/inspect/manifest-diff.js';
import { CLI } from './fixture.js';

const image = inject('image');
const reproduction = inject('reproduction');

interface Manifest {
  mirror: { releases: Record<string, string> | null };
  cache: Record<string, string>;
  reproducibility: { sourceDateEpoch: { seconds: number; from: string }; plaintext: Record<string, string | null>; perBuild: string[] };
}

const manifestOf = async (file: string) => JSON.parse(await readFile(file, 'utf8')) as Manifest;

describe('two cold builds of the same recipe', () => {
  it('each filled a cache of its own (both cold)', async () => {
    expect(await readFile(reproduction.buildLog, 'utf8')).toMatch(/cache miss: bootstrap[\s\S]*cache miss: initramfs/);
    expect(await readFile(image.buildLog, 'utf8')).toMatch(/cache miss: bootstrap[\s\S]*cache miss: initramfs/);
    process.stderr.write(`second cold build: ${reproduction.buildSeconds.toFixed(1)} s (the fixture: ${image.buildSeconds.toFixed(1)} s)\n`);
  });

  it('give equal plaintext digests, and keylessgo diff finds only declared per-build values', async () => {
    const [a, b] = [await manifestOf(image.manifestFile), await manifestOf(reproduction.manifestFile)];
    const run = await execa('node', [CLI, 'diff', image.outDir, reproduction.outDir, '--json'], { reject: false });
    const diff = JSON.parse(run.stdout) as ManifestDiff;
    if (JSON.stringify(a.mirror.releases) !== JSON.stringify(b.mirror.releases)) {
      // The archive published between the two builds: different input, so different packages may
      // be right; diff must then say so (not as a per-build value).
      expect(diff.differences.filter((d) => !d.perBuild).map((d) => d.field)).toEqual(expect.arrayContaining([expect.stringMatching(/^mirror\.releases\./)]));
      process.stderr.write('reproducibility not checked: the archive changed between the two cold builds\n');
      return;
    }
    expect(a.reproducibility.sourceDateEpoch.from).toBe("the newest Date: of the archive's Release files");
    for (const [name, digest] of Object.entries(a.reproducibility.plaintext)) expect(digest, name).toMatch(/^[0-9a-f]{64}$/);
    expect(b.reproducibility).toEqual(a.reproducibility);
    expect(diff.differences.filter((d) => !d.perBuild)).toEqual([]);
    // What differs is what is declared: the builds' own secrets and times (never nothing).
    expect(diff.differences.map((d) => d.field)).toEqual(expect.arrayContaining(['builtAt', 'luks.headerDigests[0].salt', 'outputs[raw].sha256', 'outputs[initrd].sha256']));
    expect(run.exitCode).toBe(0);
    expect(b.cache).toEqual(a.cache);
  });
});
