/**
 * One image per test run, shared by every end-to-end test: the default recipe with a
 * smaller disk, a key pair and passphrase generated now (never committed), built through
 * the real CLI. vitest's globalSetup builds it once and hands the paths to the tests.
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse, stringify } from 'yaml';
import { createTang, type TangFixture } from './tang.js';

export const REPO = resolve(import.meta.dirname, '../..');
export const CLI = join(REPO, 'dist/cli.js');

export interface ImageFixture {
  dir: string;
  recipeFile: string;
  outDir: string;
  raw: string;
  qcow2: string;
  manifestFile: string;
  privateKey: string;
  publicKey: string;
  passphraseFile: string;
  passphrase: string;
  buildLog: string;
  buildSeconds: number;
  /** A plaintext marker written into the root tree by a recipe hook; must never appear in the image. */
  canary: string;
  /** The test Tang server the image is bound to at build time (not running unless a test serves it). */
  tang: TangFixture;
}

export async function makeSecrets(dir: string): Promise<Pick<ImageFixture, 'privateKey' | 'publicKey' | 'passphraseFile' | 'passphrase'>> {
  const privateKey = join(dir, 'id_ed25519');
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'keylessgo-test', '-f', privateKey]);
  const passphrase = randomBytes(18).toString('base64url');
  const passphraseFile = join(dir, 'passphrase');
  await writeFile(passphraseFile, passphrase, { mode: 0o600 });
  return { privateKey, publicKey: `${privateKey}.pub`, passphraseFile, passphrase };
}

export async function buildFixture(): Promise<ImageFixture> {
  const dir = await mkdtemp(join(tmpdir(), 'keylessgo-e2e-'));
  await chmod(dir, 0o700);
  const secrets = await makeSecrets(dir);
  const canary = `keylessgo-canary-${randomBytes(12).toString('hex')}`;
  const hook = join(dir, 'canary-hook.sh');
  await writeFile(hook, `#!/bin/sh\nprintf '%s\\n' '${canary}' > /etc/keylessgo-canary\n`);

  const tang = await createTang(dir);
  const recipe = parse(await readFile(join(REPO, 'recipes/debian-bookworm.yaml'), 'utf8')) as Record<string, any>;
  recipe.name = 'e2e-bookworm';
  recipe.disk = { ...recipe.disk, size: '2GiB' };
  recipe.hooks = [hook];
  recipe.nbde = { ...recipe.nbde, tang: [{ url: tang.guestUrl, adv: tang.advFile }] };
  const recipeFile = join(dir, 'e2e-bookworm.yaml');
  await writeFile(recipeFile, stringify(recipe));

  const outDir = join(dir, 'out');
  await mkdir(outDir);
  const started = performance.now();
  const result = await execa('node', [CLI, 'build', recipeFile, '--out', outDir, '--passphrase-file', secrets.passphraseFile, '--authorized-keys', secrets.publicKey], { all: true, reject: false });
  const buildSeconds = (performance.now() - started) / 1000;
  const buildLog = join(dir, 'build.log');
  await writeFile(buildLog, result.all ?? '');
  if (result.exitCode !== 0) throw new Error(`fixture build failed (exit ${result.exitCode}); log: ${buildLog}\n${String(result.all).slice(-3000)}`);
  const fixture: ImageFixture = {
    dir,
    recipeFile,
    outDir,
    raw: join(outDir, 'e2e-bookworm.raw'),
    qcow2: join(outDir, 'e2e-bookworm.qcow2'),
    manifestFile: join(outDir, 'manifest.json'),
    buildLog,
    buildSeconds,
    canary,
    tang,
    ...secrets,
  };
  await writeFile(join(dir, FIXTURE_JSON), JSON.stringify(fixture, null, 2));
  return fixture;
}

const FIXTURE_JSON = 'fixture.json';

/** Development aid: reuse a fixture kept with KEYLESSGO_KEEP_FIXTURE=1 (its dir is printed). */
export async function loadFixture(dir: string): Promise<ImageFixture> {
  return JSON.parse(await readFile(join(dir, FIXTURE_JSON), 'utf8')) as ImageFixture;
}
