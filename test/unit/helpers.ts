/** Small shared helpers for the unit tests: temp dirs, the default recipe, captured logs, error checks. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, expect } from 'vitest';
import { InputError } from '../../src/errors.js';
import { Logger, Redactor, type LogFormat, type LogLevel } from '../../src/log.js';
import { loadRecipe, parseRecipeText } from '../../src/recipe/load.js';
import type { Recipe } from '../../src/recipe/schema.js';
import type { BuildIds } from '../../src/pipeline/context.js';
import type { MirrorChoice } from '../../src/host/apt-sources.js';

export const REPO = resolve(import.meta.dirname, '../..');
export const DEFAULT_RECIPE = join(REPO, 'recipes/debian-bookworm.yaml');

/** Fixed identifiers so rendered files can be compared with literal text. */
export const IDS: BuildIds = {
  luksUuid: '11111111-2222-4333-8444-555555555555',
  rootFsUuid: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
  bootFsUuid: '0f0f0f0f-1e1e-4d2d-8c3c-4b4b4b4b4b4b',
  espVolumeId: 'A1B2C3D4',
  diskGuid: '01010101-0202-8303-8404-050505050505',
  partitionUuids: {
    bios: '10101010-2020-8030-8040-505050505050',
    esp: '11111111-2121-8131-8141-515151515151',
    boot: '12121212-2222-8232-8242-525252525252',
    root: '13131313-2323-8333-8343-535353535353',
  },
  rootHashSeed: 'cccccccc-dddd-8eee-8fff-000000000000',
  bootHashSeed: 'dddddddd-eeee-8fff-8000-111111111111',
};

/** A made-up mirror: no real archive host name belongs in this repository. */
export const MIRROR: MirrorChoice = {
  archive: 'http://mirror.example/debian',
  security: 'http://security.mirror.example/debian-security',
  origin: 'test',
};

export async function defaultRecipe(): Promise<Recipe> {
  return (await loadRecipe(DEFAULT_RECIPE)).recipe;
}

/** A recipe from a YAML snippet added to `name` and `suite`. */
export function recipeWith(yaml = '', suite: 'bookworm' | 'trixie' = 'bookworm'): Recipe {
  return parseRecipeText(`name: test\nsuite: ${suite}\n${yaml}`, 'test.yaml');
}

/**
 * A fresh temp directory per call, removed after the current test. Call it inside a test
 * (or a beforeEach) only.
 */
const tempDirs: string[] = [];
afterEach(async () => {
  await Promise.all(tempDirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});
export async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'keylessgo-unit-'));
  tempDirs.push(dir);
  return dir;
}

/** A logger whose lines land in `lines` instead of stderr. */
export function captureLogger(level: LogLevel = 'info', redactor = new Redactor(), format: LogFormat = 'human'): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: new Logger(level, { format, redactor, output: { line: (text) => lines.push(text) } }), lines };
}

/**
 * Asserts that `action` fails with an InputError (exit code 2) whose message contains every
 * fragment, and returns the error for further checks.
 */
export async function expectInputError(action: Promise<unknown> | (() => unknown), ...fragments: string[]): Promise<InputError> {
  let error: unknown;
  try {
    await (typeof action === 'function' ? action() : action);
  } catch (caught) {
    error = caught;
  }
  expect(error, 'expected an InputError to be thrown').toBeInstanceOf(InputError);
  const inputError = error as InputError;
  expect(inputError.exitCode).toBe(2);
  for (const fragment of fragments) expect(inputError.message).toContain(fragment);
  return inputError;
}

/**
 * An authorized_keys line in valid wire format (type string + 32 key bytes). It is not a
 * usable key, which is all the rendering tests need; the parser tests use ssh-keygen.
 */
export function ed25519Line(comment: string, fill = 7): string {
  const type = Buffer.from('ssh-ed25519');
  const blob = Buffer.alloc(4 + type.length + 4 + 32, fill);
  blob.writeUInt32BE(type.length, 0);
  type.copy(blob, 4);
  blob.writeUInt32BE(32, 4 + type.length);
  return `ssh-ed25519 ${blob.toString('base64')} ${comment}`;
}
