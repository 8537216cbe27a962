/**
 * The bad-input corpus (test/bad-input) through the built CLI (dist/, `npm run build`): each
 * case exits 2 with its message, prints no stack trace and writes nothing: the workspace is
 * unchanged (so no --out dir), the CLI's TMPDIR stays empty, and no loop device or mount
 * refers to the workspace.
 *
 * Safety net: KEYLESSGO_FAIL_AT=bootstrap:start, so an input the CLI wrongly accepts fails
 * at the first stage instead of building an image.
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { access, chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { RECIPE_CASES, RECIPES_DIR, WORKSPACE_CASES, type Workspace, type WorkspaceCase } from '../bad-input/cases.js';
import { ed25519Line, REPO } from './helpers.js';

const CLI = join(REPO, 'dist/cli.js');
const GOOD_RECIPE = 'name: badinput\nsuite: bookworm\n';
const isRoot = process.getuid?.() === 0;

let root: string;
beforeAll(async () => {
  await access(CLI).catch(() => {
    throw new Error(`${CLI} is missing: run \`npm run build\` (make test-unit does) before this test`);
  });
  root = await mkdtemp(join(tmpdir(), 'keylessgo-unit-bad-input-'));
});
afterAll(async () => {
  // Here rather than after each case: a case cut off by its timeout must not leave an immutable dir.
  if (isRoot) await execa('chattr', ['-R', '-f', '-i', root], { reject: false });
  await rm(root, { recursive: true, force: true });
});

async function newWorkspace(): Promise<Workspace> {
  const dir = await mkdtemp(join(root, 'case-'));
  const ws: Workspace = {
    dir,
    recipeExtra: '',
    recipe: 'recipe.yaml',
    passphraseFile: 'pass',
    authorizedKeys: 'keys.pub',
    out: 'out',
    extraArgs: [],
    keyLine: ed25519Line('badinput@test'),
    async write(path, content, mode = 0o644) {
      await mkdir(dirname(join(dir, path)), { recursive: true });
      await writeFile(join(dir, path), content);
      await chmod(join(dir, path), mode);
      return path;
    },
  };
  await ws.write('pass', `${randomBytes(18).toString('base64url')}\n`, 0o600);
  await ws.write('keys.pub', `${ws.keyLine}\n`);
  return ws;
}

/** Every path below `dir` (symlinks not followed) with its type and size: what "nothing written" is checked against. */
async function listing(dir: string, prefix = ''): Promise<string[]> {
  const lines: string[] = [];
  for (const entry of await readdir(join(dir, prefix), { withFileTypes: true })) {
    const path = join(prefix, entry.name);
    if (entry.isDirectory()) lines.push(`${path}/`, ...(await listing(dir, path)));
    else lines.push(`${path} ${entry.isSymbolicLink() ? 'link' : (await lstat(join(dir, path))).size}`);
  }
  return lines.sort();
}

/** Loop devices backed by, and mounts below, the workspace. */
async function hostTraces(dir: string): Promise<string[]> {
  const loops = (await execa('losetup', ['--list', '--noheadings', '--output', 'BACK-FILE'])).stdout.split('\n');
  const mounts = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n');
  return [...loops, ...mounts].filter((line) => line.includes(dir));
}

async function runCase(ws: Workspace): Promise<string> {
  if (ws.recipe === 'recipe.yaml') await ws.write('recipe.yaml', GOOD_RECIPE + ws.recipeExtra);
  const args = ws.args ?? [
    'build', ws.recipe, '--out', ws.out,
    ...(ws.passphraseFile ? ['--passphrase-file', ws.passphraseFile] : []),
    ...(ws.authorizedKeys ? ['--authorized-keys', ws.authorizedKeys] : []),
    // The host's apt sources must not matter.
    '--mirror', 'http://mirror.example/debian',
    ...ws.extraArgs,
  ];
  const cliTmp = await mkdtemp(join(root, 'tmp-'));
  const before = await listing(ws.dir);
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: cliTmp, KEYLESSGO_FAIL_AT: 'bootstrap:start' };
  delete env.KEYLESSGO_PASSPHRASE_FILE;
  const result = await execa('node', [CLI, ...args], { cwd: ws.dir, env, extendEnv: false, reject: false });
  expect(result.stderr).not.toMatch(/^\s+at /m);
  expect({ exitCode: result.exitCode, stderr: result.stderr }).toMatchObject({ exitCode: 2 });
  expect(await listing(ws.dir)).toEqual(before);
  expect(await readdir(cliTmp)).toEqual([]);
  expect(await hostTraces(ws.dir)).toEqual([]);
  return result.stderr;
}

// Each case starts a node process: allow for a busy 2-core machine.
describe('bad recipes (test/bad-input/recipes)', { timeout: 60_000 }, () => {
  test('one table row per recipe file', async () => {
    const files = (await readdir(RECIPES_DIR)).filter((f) => f.endsWith('.yaml')).sort();
    expect(files).toEqual(Object.keys(RECIPE_CASES).sort());
  });

  test.concurrent.for(Object.entries(RECIPE_CASES))('%s', async ([file, fragment]) => {
    const ws = await newWorkspace();
    ws.recipe = join(RECIPES_DIR, file);
    const stderr = await runCase(ws);
    expect(stderr.startsWith(`error: ${ws.recipe}: `)).toBe(true);
    expect(stderr).toContain(`${ws.recipe}${fragment}`);
  });
});

describe('bad inputs around the recipe (test/bad-input/cases.ts)', { timeout: 60_000 }, () => {
  test.concurrent.for(WORKSPACE_CASES.map((c): [string, WorkspaceCase] => [c.name, c]))('%s', async ([, badCase], { skip }) => {
    if (badCase.root && !isRoot) skip();
    const ws = await newWorkspace();
    await badCase.setup(ws);
    const stderr = await runCase(ws);
    for (const fragment of badCase.expect) expect(stderr).toContain(fragment);
  });
});
