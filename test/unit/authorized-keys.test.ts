/**
 * Keys are generated with ssh-keygen at test time (no key material is committed), and the
 * parser's fingerprints are checked against what ssh-keygen itself prints.
 */
import { execa } from 'execa';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAuthorizedKeys, readAuthorizedKeys } from '../../src/recipe/authorized-keys.js';
import { expectInputError } from './helpers.js';

interface GeneratedKey {
  /** The .pub line as ssh-keygen wrote it: type, base64, comment. */
  line: string;
  type: string;
  base64: string;
  comment: string;
  /** SHA256:... as printed by `ssh-keygen -lf`. */
  fingerprint: string;
}

let dir: string;
const keys: Record<'ed25519' | 'rsa', GeneratedKey> = {} as never;

async function generate(type: 'ed25519' | 'rsa', comment: string): Promise<GeneratedKey> {
  const file = join(dir, `id_${type}`);
  await execa('ssh-keygen', ['-q', '-t', type, ...(type === 'rsa' ? ['-b', '2048'] : []), '-N', '', '-C', comment, '-f', file]);
  const line = (await readFile(`${file}.pub`, 'utf8')).trim();
  const [keyType, base64] = line.split(' ');
  const { stdout } = await execa('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${file}.pub`]);
  return { line, type: keyType!, base64: base64!, comment, fingerprint: stdout.split(' ')[1]! };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'keylessgo-keys-'));
  keys.ed25519 = await generate('ed25519', 'alice@laptop');
  keys.rsa = await generate('rsa', 'bob on the build host');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const SOURCE = '/etc/keylessgo/keys.pub';

describe('parseAuthorizedKeys', () => {
  it.each(['ed25519', 'rsa'] as const)('reads a %s line with its comment and ssh-keygen\'s fingerprint', (type) => {
    const key = keys[type];
    expect(key.fingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    expect(parseAuthorizedKeys(`${key.line}\n`, SOURCE)).toEqual([
      { type: key.type, base64: key.base64, comment: key.comment, fingerprint: key.fingerprint },
    ]);
  });

  it('reads a key without a comment', () => {
    const { type, base64 } = keys.ed25519;
    expect(parseAuthorizedKeys(`${type} ${base64}`, SOURCE)).toEqual([expect.objectContaining({ type, base64, comment: '' })]);
  });

  it('skips blank and comment lines, tolerates CRLF and keeps the order of keys', () => {
    const text = ['# team keys', '', keys.rsa.line, '   ', '  # old laptop retired', `${keys.ed25519.line}\r`, ''].join('\n');
    expect(parseAuthorizedKeys(text, SOURCE).map((k) => k.fingerprint)).toEqual([keys.rsa.fingerprint, keys.ed25519.fingerprint]);
  });

  /** Refusals: each names the file and the line and says what is wrong. */
  const refusals: Array<{ what: string; text: (k: typeof keys) => string; line: string; message: string }> = [
    { what: 'a line with key options', text: (k) => `command="x" ${k.ed25519.line}`, line: ':1', message: 'key options are not accepted' },
    { what: 'a line with several options', text: (k) => `# ok\nno-pty,from="192.0.2.1" ${k.ed25519.line}`, line: ':2', message: 'key options are not accepted' },
    {
      what: 'a line with a single flag option',
      text: (k) => `restrict ${k.ed25519.line}`,
      line: ':1',
      message: 'key options are not accepted',
    },
    { what: 'a garbage line', text: (k) => `${k.ed25519.line}\nhello world`, line: ':2', message: 'not a public key line' },
    { what: 'base64 with characters outside the alphabet', text: (k) => `ssh-ed25519 ${k.ed25519.base64.slice(0, 20)}!!${k.ed25519.base64.slice(22)}`, line: ':1', message: 'damaged' },
    { what: 'a damaged key header', text: (k) => `ssh-ed25519 ${'B'.repeat(8)}${k.ed25519.base64.slice(8)}`, line: ':1', message: 'damaged' },
    {
      what: 'a key cut short (a copy-paste lost its tail)',
      text: (k) => `ssh-ed25519 ${k.ed25519.base64.slice(0, -12)} alice@laptop`,
      line: ':1',
      message: 'truncated',
    },
    { what: 'a type missing its base64', text: () => 'ssh-ed25519', line: ':1', message: 'damaged' },
    { what: 'base64 of a different key type', text: (k) => `ssh-rsa ${k.ed25519.base64} mixed`, line: ':1', message: 'does not match the type ssh-rsa' },
  ];

  for (const { what, text, line, message } of refusals) {
    it(`refuses ${what}`, async () => {
      await expectInputError(() => parseAuthorizedKeys(text(keys), SOURCE), `${SOURCE}${line}: `, message);
    });
  }

  it.each([
    ['an empty file', ''],
    ['a file of comments only', '# nobody yet\n\n'],
  ])('refuses %s: no public key found', async (_what, text) => {
    await expectInputError(() => parseAuthorizedKeys(text, SOURCE), `${SOURCE}: no public key found`);
  });
});

describe('readAuthorizedKeys', () => {
  it('reads a .pub file written by ssh-keygen', async () => {
    const [key] = await readAuthorizedKeys(join(dir, 'id_ed25519.pub'));
    expect(key?.fingerprint).toBe(keys.ed25519.fingerprint);
  });

  it('refuses a missing file, naming it', async () => {
    const path = join(dir, 'missing.pub');
    await expectInputError(readAuthorizedKeys(path), `${path}: cannot read authorized keys: no such file`);
  });

  it('refuses a private key given by mistake', async () => {
    const path = join(dir, 'id_ed25519');
    await expectInputError(readAuthorizedKeys(path), `${path}:1: this is a private key; give the public one (.pub)`);
  });

  it('reports the line number of the bad line in a file', async () => {
    const path = join(dir, 'mixed.pub');
    await writeFile(path, `${keys.ed25519.line}\n\n${keys.rsa.line} \nssh-ed25519 AAAA\n`);
    await expectInputError(readAuthorizedKeys(path), `${path}:4: `);
  });
});
