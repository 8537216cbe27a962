import { access, link, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CleanupStack } from '../../src/base/cleanup.js';
import { MIN_PASSPHRASE_LENGTH, readPassphraseFile, SecretStore } from '../../src/base/secrets.js';
import { Redactor } from '../../src/log.js';
import { captureLogger, expectInputError, tempDir } from './helpers.js';

const PASSPHRASE = 'correct horse battery staple';

/** Writes `content` to a fresh file with `mode` (0600 unless stated) and returns its path. */
async function passphraseFile(content: string, mode = 0o600): Promise<string> {
  const path = join(await tempDir(), 'passphrase');
  await writeFile(path, content, { mode });
  return path;
}

const modeOf = async (path: string) => (await stat(path)).mode & 0o777;

describe('readPassphraseFile', () => {
  it.each([
    ['no newline', PASSPHRASE],
    ['a trailing newline', `${PASSPHRASE}\n`],
    ['a trailing CRLF', `${PASSPHRASE}\r\n`],
  ])('reads a file with %s', async (_what, content) => {
    expect(await readPassphraseFile(await passphraseFile(content))).toBe(PASSPHRASE);
  });

  it('keeps spaces that belong to the passphrase', async () => {
    expect(await readPassphraseFile(await passphraseFile(`  ${PASSPHRASE} \n`))).toBe(`  ${PASSPHRASE} `);
  });

  it(`accepts exactly ${MIN_PASSPHRASE_LENGTH} characters`, async () => {
    expect(await readPassphraseFile(await passphraseFile('x'.repeat(MIN_PASSPHRASE_LENGTH)))).toHaveLength(MIN_PASSPHRASE_LENGTH);
  });

  it.each([
    ['an empty file', '', 0o600, 'passphrase file is empty'],
    ['a file of one newline', '\n', 0o600, 'passphrase file is empty'],
    ['two lines', `${PASSPHRASE}\nsecond line\n`, 0o600, 'more than one line'],
    ['two trailing newlines', `${PASSPHRASE}\n\n`, 0o600, 'more than one line'],
    ['a short passphrase', 'x'.repeat(MIN_PASSPHRASE_LENGTH - 1), 0o600, `shorter than ${MIN_PASSPHRASE_LENGTH} characters`],
    ['a world-readable file', PASSPHRASE, 0o644, 'readable by group or others (mode 644); chmod 600 it'],
    ['a group-readable file', PASSPHRASE, 0o640, 'readable by group or others (mode 640)'],
  ])('refuses %s, naming the file', async (_what, content, mode, message) => {
    const path = await passphraseFile(content, mode);
    const error = await expectInputError(readPassphraseFile(path), `${path}: `, message);
    expect(error.message).not.toContain(PASSPHRASE);
  });

  it('refuses a missing file', async () => {
    const path = join(await tempDir(), 'missing');
    await expectInputError(readPassphraseFile(path), `${path}: cannot read passphrase file: no such file`);
  });

  it('refuses a directory', async () => {
    const path = await tempDir();
    await expectInputError(readPassphraseFile(path), `${path}: passphrase file is not a regular file`);
  });
});

describe('SecretStore', () => {
  const stacks: CleanupStack[] = [];
  afterEach(async () => {
    for (const stack of stacks.splice(0)) await stack.unwind();
  });

  async function storeWithSecret() {
    const { log } = captureLogger();
    const cleanup = new CleanupStack(log);
    stacks.push(cleanup);
    const store = await SecretStore.create(cleanup);
    const path = await store.put('bootstrap-passphrase', PASSPHRASE, log.redactor);
    return { log, cleanup, store, path };
  }

  it('keeps secrets in 0600 files inside a 0700 directory', async () => {
    const { store, path } = await storeWithSecret();
    expect(await modeOf(store.dir)).toBe(0o700);
    expect(await modeOf(path)).toBe(0o600);
    expect(path).toBe(join(store.dir, 'bootstrap-passphrase'));
    expect(await readFile(path, 'utf8')).toBe(PASSPHRASE);
  });

  it('registers its removal with the cleanup stack: after unwind the directory is gone', async () => {
    const { cleanup, store } = await storeWithSecret();
    expect(cleanup.pending).toEqual([`wipe secrets in ${store.dir}`]);
    expect(await cleanup.unwind()).toEqual([]);
    await expect(access(store.dir)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('overwrites a secret with zeros before removing it', async () => {
    const { cleanup, path } = await storeWithSecret();
    // A second hard link keeps the inode readable after the store removes its name.
    const witness = join(await tempDir(), 'witness');
    await link(path, witness);
    await cleanup.unwind();
    expect(await readFile(witness)).toEqual(Buffer.alloc(PASSPHRASE.length));
  });

  it('refuses to overwrite a secret of the same name', async () => {
    const { store } = await storeWithSecret();
    await expect(store.put('bootstrap-passphrase', 'another secret', new Redactor())).rejects.toMatchObject({ code: 'EEXIST' });
  });

  it('makes the logger redact a stored secret', async () => {
    const { log, path } = await storeWithSecret();
    expect(log.redactor.redact(`cryptsetup said: bad key "${PASSPHRASE}" in ${path}`)).toBe(`cryptsetup said: bad key "[redacted]" in ${path}`);
  });
});
