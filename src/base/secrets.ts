/**
 * Secrets live only in a 0700 directory of 0600 files, are passed to tools by path, and
 * are overwritten before removal. Nothing here ever puts a secret into argv.
 */
import { open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import type { CleanupStack } from './cleanup.js';
import type { Redactor } from '../log.js';
import { ownedTempDir } from './owner.js';

export const MIN_PASSPHRASE_LENGTH = 8;

/**
 * Reads a passphrase file: one trailing newline is dropped (editors and `echo` add it, and
 * a typed passphrase never contains it). Refuses empty, short, untypable and world/group-readable
 * files.
 */
export async function readPassphraseFile(path: string): Promise<string> {
  const info = await stat(path).catch((error: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read passphrase file: ${error.code === 'ENOENT' ? 'no such file' : error.message}`, path);
  });
  if (!info.isFile()) throw new InputError('passphrase file is not a regular file', path);
  if ((info.mode & 0o077) !== 0) {
    throw new InputError(`passphrase file is readable by group or others (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`, path);
  }
  const text = (await readFile(path, 'utf8').catch((error: Error) => {
    throw new InputError(`cannot read passphrase file: ${error.message}`, path);
  })).replace(/\r?\n$/, '');
  if (text.length === 0) throw new InputError('passphrase file is empty', path);
  if (text.includes('\n')) throw new InputError('passphrase file has more than one line', path);
  // Whoever unlocks at the dropbear prompt must be able to type it.
  if (/[\x00-\x08\x0b-\x1f\x7f]/.test(text)) throw new InputError('passphrase contains a control character (it could not be typed at the unlock prompt)', path);
  if (text.length < MIN_PASSPHRASE_LENGTH) throw new InputError(`passphrase is shorter than ${MIN_PASSPHRASE_LENGTH} characters`, path);
  return text;
}

export class SecretStore {
  private constructor(readonly dir: string) {}

  static async create(cleanup: CleanupStack): Promise<SecretStore> {
    // If this process dies without cleaning up, the next build finds the store by its owner and wipes it.
    const dir = await ownedTempDir('keylessgo-secrets-');
    const store = new SecretStore(dir);
    cleanup.add(`wipe secrets in ${dir}`, () => store.wipe());
    return store;
  }

  /**
   * Writes a secret to a 0600 file and registers it for redaction (binary secrets in the hex
   * form tools print them in); returns the path.
   */
  async put(name: string, value: string | Buffer, redactor: Redactor): Promise<string> {
    redactor.add(typeof value === 'string' ? value : value.toString('hex'));
    const path = join(this.dir, name);
    await writeFile(path, value, { mode: 0o600, flag: 'wx' });
    return path;
  }

  private wipe(): Promise<void> {
    return wipeSecretDir(this.dir);
  }
}

/** Overwrites every file of a secret store with zeros, then removes the store. */
export async function wipeSecretDir(dir: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const handle = await open(join(dir, name), 'r+').catch(() => undefined);
    if (!handle) continue;
    const { size } = await handle.stat();
    await handle.write(Buffer.alloc(size), 0, size, 0);
    await handle.sync();
    await handle.close();
  }
  await rm(dir, { recursive: true, force: true });
}
