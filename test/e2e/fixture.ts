/**
 * The images of a test run, built once by vitest's globalSetup through the real CLI: the
 * default recipe (shared by most end-to-end tests) and the trixie recipe, each with a
 * smaller disk and a key pair and passphrase generated now (never committed).
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
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
  /** Every distinct process command line seen while the build ran, one per line. */
  argvLog: string;
}

export interface ImageFixture extends BuiltImage {
  /** A plaintext marker written into the root tree by a recipe hook; must never appear in the image. */
  canary: string;
  /** The test Tang server the image is bound to at build time (not running unless a test serves it). */
  tang: TangFixture;
  /** The key pair SHA256SUMS is signed with (--sign-key; generated now, never committed): the public key's path. */
  signingPublicKey: string;
}

/** Records the command line of every process while `work` runs: secrets must never be in argv. */
async function sampleCommandLines<T>(work: Promise<T>, into: Set<string>): Promise<T> {
  let running = true;
  const sampler = (async () => {
    while (running) {
      for (const pid of (await readdir('/proc')).filter((name) => /^\d+$/.test(name))) {
        const cmdline = await readFile(`/proc/${pid}/cmdline`).catch(() => undefined);
        if (cmdline?.length) into.add(cmdline.toString('latin1').replaceAll('\0', ' ').trim());
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();
  try {
    return await work;
  } finally {
    running = false;
    await sampler;
  }
}

export async function makeSecrets(dir: string): Promise<Pick<ImageFixture, 'privateKey' | 'publicKey' | 'passphraseFile' | 'passphrase'>> {
  const privateKey = join(dir, 'id_ed25519');
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'keylessgo-test', '-f', privateKey]);
  const passphrase = randomBytes(18).toString('base64url');
  const passphraseFile = join(dir, 'passphrase');
  await writeFile(passphraseFile, passphrase, { mode: 0o600 });
  return { privateKey, publicKey: `${privateKey}.pub`, passphraseFile, passphrase };
}

/** A recipe file of the repository, renamed and with a 2 GiB disk (tests boot it often). */
async function testRecipe(base: string, name: string): Promise<Record<string, any>> {
  const recipe = parse(await readFile(join(REPO, `recipes/${base}.yaml`), 'utf8')) as Record<string, any>;
  return { ...recipe, name, disk: { ...recipe.disk, size: '2GiB' } };
}

type Secrets = Awaited<ReturnType<typeof makeSecrets>>;

/**
 * Builds `recipe` through the CLI into `dir` (0700), using the stage cache `cacheDir`, with
 * fresh secrets unless `secrets` are given.
 */
async function buildImage(dir: string, recipe: Record<string, any>, cacheDir: string, extraArgs: string[] = [], given?: Secrets): Promise<BuiltImage> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const secrets = given ?? (await makeSecrets(dir));
  const recipeFile = join(dir, `${recipe.name}.yaml`);
  await writeFile(recipeFile, stringify(recipe));
  const outDir = join(dir, 'out');
  await mkdir(outDir);
  const started = performance.now();
  const args = [CLI, 'build', recipeFile, '--out', outDir, '--passphrase-file', secrets.passphraseFile, '--authorized-keys', secrets.publicKey, '--cache-dir', cacheDir, ...extraArgs];
  const commandLines = new Set<string>();
  const result = await sampleCommandLines(execa('node', args, { all: true, reject: false }), commandLines);
  const argvLog = join(dir, 'argv.txt');
  await writeFile(argvLog, [...commandLines].join('\n'));
  const buildSeconds = (performance.now() - started) / 1000;
  const buildLog = join(dir, 'build.log');
  await writeFile(buildLog, result.all ?? '');
  if (result.exitCode !== 0) throw new Error(`build of ${recipe.name} failed (exit ${result.exitCode}); log: ${buildLog}\n${String(result.all).slice(-3000)}`);
  const built: BuiltImage = {
    dir,
    recipeFile,
    outDir,
    raw: join(outDir, `${recipe.name}.raw`),
    qcow2: join(outDir, `${recipe.name}.qcow2`),
    manifestFile: join(outDir, 'manifest.json'),
    buildLog,
    buildSeconds,
    argvLog,
    ...secrets,
  };
  return built;
}

/** The shared bookworm image: bound to a test Tang, with clevis's tpm2 pin, with a canary hook, and the PXE boot files (--export-boot). */
export async function buildFixture(): Promise<ImageFixture> {
  const dir = await mkdtemp(join(tmpdir(), 'keylessgo-e2e-'));
  await chmod(dir, 0o700);
  const canary = `keylessgo-canary-${randomBytes(12).toString('hex')}`;
  const hook = join(dir, 'canary-hook.sh');
  // The canary is a file's content and, in /etc and /root, a file's name: neither may appear in the image.
  await writeFile(hook, `#!/bin/sh\nprintf '%s\\n' '${canary}' > /etc/keylessgo-canary\ntouch '/etc/${canary}-etc' '/root/${canary}-root'\n`);
  const tang = await createTang(dir);
  const recipe = await testRecipe('debian-bookworm', 'e2e-bookworm');
  recipe.hooks = [hook];
  // tpm2: the unlock-policy tests enroll a TPM2 binding; one package set for every test keeps one cold bootstrap.
  recipe.nbde = { ...recipe.nbde, tpm2: true, tang: [{ url: tang.guestUrl, adv: tang.advFile }] };
  const signingKey = join(dir, 'signing-key');
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'keylessgo-test-signer', '-f', signingKey]);
  const fixture: ImageFixture = { ...(await buildImage(dir, recipe, cacheDirOf(dir), [...FIXTURE_FLAGS, '--sign-key', signingKey])), canary, tang, signingPublicKey: `${signingKey}.pub` };
  await writeFile(join(dir, FIXTURE_JSON), JSON.stringify(fixture, null, 2));
  return fixture;
}

/** The fixture's build flags besides the signing key. */
const FIXTURE_FLAGS = ['--export-boot'];

/**
 * A second cold build of the fixture's recipe (the same file, keys, passphrase and flags) with a
 * stage cache of its own, empty: its plaintext must equal the fixture's (reproducible.test.ts).
 */
export async function buildReproduction(fixture: ImageFixture): Promise<ImageFixture> {
  const dir = join(fixture.dir, REPRODUCTION_DIR);
  const recipe = parse(await readFile(fixture.recipeFile, 'utf8')) as Record<string, any>;
  const secrets = { privateKey: fixture.privateKey, publicKey: fixture.publicKey, passphraseFile: fixture.passphraseFile, passphrase: fixture.passphrase };
  const signingKey = fixture.signingPublicKey.replace(/\.pub$/, '');
  const built = await buildImage(dir, recipe, join(dir, 'cache'), [...FIXTURE_FLAGS, '--sign-key', signingKey], secrets);
  const reproduction: ImageFixture = { ...built, canary: fixture.canary, tang: fixture.tang, signingPublicKey: fixture.signingPublicKey };
  await writeFile(join(dir, FIXTURE_JSON), JSON.stringify(reproduction, null, 2));
  return reproduction;
}

export const REPRODUCTION_DIR = 'reproduction';

/** The stage cache of one test run (so CI's first build is cold and nothing leaks between runs). */
export function cacheDirOf(fixtureDir: string): string {
  return join(fixtureDir, 'cache');
}

/**
 * A rebuild of the fixture's recipe after changes that leave the package set alone: new
 * key and passphrase (new secrets), an extra kernel parameter, an overlay file and
 * boot.secureBoot false (an unsigned GRUB on the ESP). It must take the bootstrap tree and
 * the base initramfs from the cache.
 */
export async function buildRebuild(fixture: ImageFixture): Promise<ImageFixture> {
  const dir = join(fixture.dir, 'rebuild');
  await mkdir(join(dir, 'overlay/etc'), { recursive: true });
  await writeFile(join(dir, 'overlay/etc/keylessgo-rebuild'), 'rebuilt from the cache\n');
  const recipe = parse(await readFile(fixture.recipeFile, 'utf8')) as Record<string, any>;
  recipe.kernel = { ...recipe.kernel, cmdline: [...(recipe.kernel?.cmdline ?? []), 'keylessgo.rebuild=1'] };
  recipe.overlays = [...(recipe.overlays ?? []), join(dir, 'overlay')];
  recipe.boot = { ...recipe.boot, secureBoot: false };
  // --verbose: every host command and its output is in the log, which the secret scan reads.
  const rebuild: ImageFixture = { ...(await buildImage(dir, recipe, cacheDirOf(fixture.dir), ['--verbose'])), canary: fixture.canary, tang: fixture.tang, signingPublicKey: fixture.signingPublicKey };
  await writeFile(join(dir, FIXTURE_JSON), JSON.stringify(rebuild, null, 2));
  return rebuild;
}

/**
 * The trixie image, as recipes/debian-trixie.yaml builds it but for disks with 4096-byte
 * sectors (4Kn), in `trixie/` under the shared fixture's directory.
 */
export async function buildTrixieFixture(parent: string): Promise<BuiltImage> {
  const dir = join(parent, TRIXIE_DIR);
  const recipe = await testRecipe('debian-trixie', 'e2e-trixie');
  // FAT32 with 4096-byte sectors needs a larger ESP than the recipe's 64 MiB.
  recipe.disk = { ...recipe.disk, sectorSize: 4096, esp: '260MiB' };
  const built = await buildImage(dir, recipe, cacheDirOf(parent));
  await writeFile(join(dir, FIXTURE_JSON), JSON.stringify(built, null, 2));
  return built;
}

export const TRIXIE_DIR = 'trixie';
const FIXTURE_JSON = 'fixture.json';

/** Development aid: reuse a fixture kept with KEYLESSGO_KEEP_FIXTURE=1 (its dir is printed). */
export async function loadFixture<T extends BuiltImage = ImageFixture>(dir: string): Promise<T> {
  return JSON.parse(await readFile(join(dir, FIXTURE_JSON), 'utf8')) as T;
}
