/**
 * Errors that need the real host or a real build: not root (exit 3), and a stage failing
 * late. Inputs refused in preflight are the bad-input corpus (test/bad-input, run by
 * test/unit/bad-input.test.ts). Either way: one readable message, a non-zero exit and
 * nothing left behind (no loop device, mount, temp dir, or file in the output directory).
 */
import { execa } from 'execa';
import { chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { cacheDirOf, CLI, REPO } from './fixture.js';

const image = inject('image');
let dir: string;
let goodRecipe: Record<string, unknown>;

/** Temp dirs a build of these recipes makes (secrets, work tree), and keylessgo mounts. */
async function hostTraces(): Promise<string[]> {
  const temps = (await readdir(tmpdir())).filter((name) => /^keylessgo-(secrets|debian-bookworm|tiny)-/.test(name));
  const mounts = (await readFile('/proc/mounts', 'utf8')).split('\n').filter((line) => line.includes('keylessgo-'));
  return [...temps, ...mounts];
}

async function writeRecipe(name: string, patch: Record<string, unknown>): Promise<string> {
  const path = join(dir, `${name}.yaml`);
  await writeFile(path, stringify({ ...goodRecipe, ...patch }));
  return path;
}

interface Run {
  exitCode: number;
  stderr: string;
}

async function build(recipe: string, extra: { args?: string[]; passphraseFile?: string; keys?: string; uid?: number } = {}): Promise<Run & { outDir: string }> {
  const outDir = await mkdtemp(join(dir, 'out-'));
  const args = [CLI, 'build', recipe, '--out', outDir, '--passphrase-file', extra.passphraseFile ?? image.passphraseFile, '--authorized-keys', extra.keys ?? image.publicKey, '--cache-dir', cacheDirOf(image.dir), ...(extra.args ?? [])];
  const command = extra.uid === undefined ? ['node', args] as const : ['setpriv', ['--reuid', String(extra.uid), '--regid', String(extra.uid), '--clear-groups', 'node', ...args]] as const;
  const before = await hostTraces();
  const result = await execa(command[0], command[1], { reject: false, cwd: dir });
  // Nothing left behind, whatever the error (compared with before: other builds may be running).
  expect(await readdir(outDir)).toEqual([]);
  expect((await hostTraces()).filter((trace) => !before.includes(trace))).toEqual([]);
  expect((await execa('losetup', ['--list', '--noheadings', '--output', 'BACK-FILE'])).stdout).not.toContain(outDir);
  expect(result.stderr).not.toMatch(/\n\s+at .+\(.+:\d+:\d+\)/); // no stack trace
  return { exitCode: result.exitCode ?? -1, stderr: result.stderr, outDir };
}

beforeAll(async () => {
  dir = await mkdtemp(join(image.dir, 'cli-errors-'));
  await chmod(dir, 0o755);
  goodRecipe = parse(await readFile(join(REPO, 'recipes/debian-bookworm.yaml'), 'utf8')) as Record<string, unknown>;
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('host problems', () => {
  it('refuses to build as a non-root user (exit 3)', async () => {
    // The fixture's directory is root-only; give the unprivileged user inputs it can read.
    const nobodyDir = await mkdtemp(join(tmpdir(), 'kg-nobody-'));
    try {
      await chmod(nobodyDir, 0o755);
      const passphraseFile = join(nobodyDir, 'pass');
      await writeFile(passphraseFile, image.passphrase, { mode: 0o600 });
      await writeFile(join(nobodyDir, 'keys.pub'), await readFile(image.publicKey));
      await mkdir(join(nobodyDir, 'out'));
      for (const path of [passphraseFile, join(nobodyDir, 'out')]) await chown(path, 65534, 65534);
      const result = await build(join(REPO, 'recipes/debian-bookworm.yaml'), { passphraseFile, keys: join(nobodyDir, 'keys.pub'), uid: 65534, args: ['--out', join(nobodyDir, 'out')] });
      expect(result.stderr).toMatch(/must run as root/);
      expect(result.exitCode).toBe(3);
    } finally {
      await rm(nobodyDir, { recursive: true, force: true });
    }
  });
});

describe('a stage failing late leaves nothing behind', () => {
  it('a disk too small for the root tree fails after configure with a clear message (exit 2)', async () => {
    const result = await build(await writeRecipe('tiny', { name: 'tiny', disk: { size: '1GiB', esp: '64MiB', boot: '384MiB' } }));
    expect(result.stderr).toMatch(/disk\.size: disk\.size 1\.00 GiB leaves .* for the root partition, but the root tree .* needs .*; raise disk\.size to at least/);
    expect(result.exitCode).toBe(2);
  });
});
