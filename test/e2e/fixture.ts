/**
 * The images of a test run, built once by vitest's globalSetup through the real CLI: the
 * default recipe (shared by most end-to-end tests) and the trixie recipe, each with a
 * smaller disk and a key pair and passphrase generated now (never committed).
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

/** An image built through the real CLI, with its credentials and outputs. */
export interface BuiltImage {
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
}

export interface ImageFixture extends BuiltImage {
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

/**
 * Builds `recipes/<base>.yaml` with a 2 GiB disk as `name` in `dir` (0700), after `adjust`
 * has changed the recipe; the build log and fixture.json stay in `dir`.
 */
async function buildImage(dir: string, base: string, name: string, adjust: (recipe: Record<string, any>) => void, buildArgs: string[] = []): Promise<BuiltImage> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const secrets = await makeSecrets(dir);
  const recipe = parse(await readFile(join(REPO, `recipes/${base}.yaml`), 'utf8')) as Record<string, any>;
  recipe.name = name;
  recipe.disk = { ...recipe.disk, size: '2GiB' };
  adjust(recipe);
  const recipeFile = join(dir, `${name}.yaml`);
  await writeFile(recipeFile, stringify(recipe));

  const outDir = join(dir, 'out');
  await mkdir(outDir);
  const started = performance.now();
  const result = await execa('node', [CLI, 'build', recipeFile, '--out', outDir, '--passphrase-file', secrets.passphraseFile, '--authorized-keys', secrets.publicKey, ...buildArgs], { all: true, reject: false });
  const buildSeconds = (performance.now() - started) / 1000;
  const buildLog = join(dir, 'build.log');
  await writeFile(buildLog, result.all ?? '');
  if (result.exitCode !== 0) throw new Error(`${name} build failed (exit ${result.exitCode}); log: ${buildLog}\n${String(result.all).slice(-3000)}`);
  return {
    dir,
    recipeFile,
    outDir,
    raw: join(outDir, `${name}.raw`),
    qcow2: join(outDir, `${name}.qcow2`),
    manifestFile: join(outDir, 'manifest.json'),
    buildLog,
    buildSeconds,
    ...secrets,
  };
}

/** The shared bookworm image: bound to a test Tang, with a canary hook, and the PXE boot files (--export-boot). */
export async function buildFixture(): Promise<ImageFixture> {
  const dir = await mkdtemp(join(tmpdir(), 'keylessgo-e2e-'));
  await chmod(dir, 0o700);
  const canary = `keylessgo-canary-${randomBytes(12).toString('hex')}`;
  const hook = join(dir, 'canary-hook.sh');
  await writeFile(hook, `#!/bin/sh\nprintf '%s\\n' '${canary}' > /etc/keylessgo-canary\n`);
  const tang = await createTang(dir);
  const built = await buildImage(dir, 'debian-bookworm', 'e2e-bookworm', (recipe) => {
    recipe.hooks = [hook];
    recipe.nbde = { ...recipe.nbde, tang: [{ url: tang.guestUrl, adv: tang.advFile }] };
  }, ['--export-boot']);
  const fixture: ImageFixture = { ...built, canary, tang };
  await writeFile(join(dir, FIXTURE_JSON), JSON.stringify(fixture, null, 2));
  return fixture;
}

/** The trixie image, as recipes/debian-trixie.yaml builds it, in `trixie/` under the shared fixture's directory. */
export async function buildTrixieFixture(parent: string): Promise<BuiltImage> {
  const dir = join(parent, TRIXIE_DIR);
  const built = await buildImage(dir, 'debian-trixie', 'e2e-trixie', () => undefined);
  await writeFile(join(dir, FIXTURE_JSON), JSON.stringify(built, null, 2));
  return built;
}

export const TRIXIE_DIR = 'trixie';
const FIXTURE_JSON = 'fixture.json';

/** Development aid: reuse a fixture kept with KEYLESSGO_KEEP_FIXTURE=1 (its dir is printed). */
export async function loadFixture<T extends BuiltImage = ImageFixture>(dir: string): Promise<T> {
  return JSON.parse(await readFile(join(dir, FIXTURE_JSON), 'utf8')) as T;
}
