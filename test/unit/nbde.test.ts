import { execa } from 'execa';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { clevisBindArgs, clevisPinConfig, parseClevisList, tangServersInToken } from '../../src/host/clevis.js';
import { jwkThumbprint, parseAdvertisement } from '../../src/host/tang.js';
import { expectInputError, recipeWith, tempDir } from './helpers.js';

/** A real advertisement from tangd (keys generated now), and the key files it was made from. */
async function tangAdvertisement(): Promise<{ text: string; keyFiles: string[] }> {
  const keyDir = join(await tempDir(), 'keys');
  await mkdir(keyDir);
  await execa('/usr/libexec/tangd-keygen', [keyDir]);
  const { stdout } = await execa('/usr/libexec/tangd', [keyDir], { input: 'GET /adv HTTP/1.1\r\nHost: t\r\n\r\n', stderr: 'ignore' });
  return { text: stdout.slice(stdout.indexOf('\r\n\r\n') + 4), keyFiles: await readdir(keyDir) };
}

describe('Tang advertisements', () => {
  it('yields the signing key thumbprint that tangd-keygen names the key file by', async () => {
    const { text, keyFiles } = await tangAdvertisement();
    const adv = parseAdvertisement(text);
    expect(adv.signingThumbprints).toHaveLength(1);
    expect(keyFiles).toContain(`${adv.signingThumbprints[0]}.jwk`);
  });

  it('computes RFC 7638 thumbprints (the RFC example RSA key)', () => {
    const n =
      '0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw';
    expect(jwkThumbprint({ kty: 'RSA', n, e: 'AQAB', alg: 'RS256', kid: '2011-04-29' })).toBe('NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs');
  });

  it.each([
    ['not JSON', 'hello'],
    ['no payload', '{"signatures": []}'],
    ['no signing key', JSON.stringify({ payload: Buffer.from(JSON.stringify({ keys: [{ kty: 'EC', key_ops: ['deriveKey'] }] })).toString('base64url') })],
  ])('refuses an advertisement with %s', (_what, text) => {
    expect(() => parseAdvertisement(text)).toThrow();
  });
});

describe('clevis command construction', () => {
  const adv = { payload: 'e30', signatures: [] };

  it('binds one server with the tang pin and the advertisement inline, the passphrase by file', () => {
    expect(clevisBindArgs('/dev/loop0p4', '/run/secret/pass', [{ url: 'http://tang.example', adv }], 1)).toEqual([
      'luks', 'bind', '-y', '-d', '/dev/loop0p4', '-k', '/run/secret/pass', 'tang', JSON.stringify({ url: 'http://tang.example', adv }),
    ]);
  });

  it('binds several servers with sss and the threshold', () => {
    const [pin, config] = clevisPinConfig([{ url: 'http://a.example', adv }, { url: 'http://b.example', adv }], 2);
    expect(pin).toBe('sss');
    expect(JSON.parse(config)).toEqual({ t: 2, pins: { tang: [{ url: 'http://a.example', adv }, { url: 'http://b.example', adv }] } });
  });

  it('parses clevis luks list', () => {
    expect(parseClevisList(`1: tang '{"url":"http://10.0.2.2:8080"}'\n3: sss '{"t":1}'\n`)).toEqual([
      { slot: 1, pin: 'tang', config: '{"url":"http://10.0.2.2:8080"}' },
      { slot: 3, pin: 'sss', config: '{"t":1}' },
    ]);
  });
});

describe('clevis LUKS tokens', () => {
  /** A token as `clevis luks bind` stores it, around a JWE that real clevis made (offline, from a saved advertisement). */
  async function tokenFor(pin: string, config: (adv: string) => object): Promise<{ token: string; keyFiles: string[] }> {
    const { text, keyFiles } = await tangAdvertisement();
    const adv = join(await tempDir(), 'adv.jws');
    await writeFile(adv, text);
    const { stdout } = await execa('clevis', ['encrypt', pin, JSON.stringify(config(adv))], { input: 'secret' });
    const [protectedHeader, encryptedKey, iv, ciphertext, tag] = stdout.split('.');
    return { token: JSON.stringify({ type: 'clevis', keyslots: ['1'], jwe: { protected: protectedHeader, encrypted_key: encryptedKey, iv, ciphertext, tag } }), keyFiles };
  }

  it('reads the Tang URL and signing-key thumbprint back from a tang binding', async () => {
    const { token, keyFiles } = await tokenFor('tang', (adv) => ({ url: 'http://tang.example', adv }));
    const servers = tangServersInToken(token);
    expect(servers.map((s) => s.url)).toEqual(['http://tang.example']);
    expect(keyFiles).toContain(`${servers[0]!.thumbprints[0]}.jwk`);
  });

  it('reads every Tang server of an sss binding', async () => {
    const { token } = await tokenFor('sss', (adv) => ({ t: 1, pins: { tang: [{ url: 'http://a.example', adv }, { url: 'http://b.example', adv }] } }));
    expect(tangServersInToken(token).map((s) => s.url).sort()).toEqual(['http://a.example', 'http://b.example']);
  });

  it('ignores tokens that are not clevis tokens', () => {
    expect(tangServersInToken(JSON.stringify({ type: 'systemd-tpm2', keyslots: ['2'] }))).toEqual([]);
  });
});

describe('recipe nbde section', () => {
  it('refuses a threshold above the number of servers', async () => {
    await expectInputError(() => recipeWith('nbde:\n  tang: [{url: "http://tang.example"}]\n  threshold: 2\n'), 'nbde.threshold: threshold 2 exceeds the 1 Tang server(s) listed');
  });

  it('refuses Tang servers without clevis in the image', async () => {
    await expectInputError(() => recipeWith('nbde:\n  clevis: false\n  tang: [{url: "http://tang.example"}]\n'), 'nbde.clevis: binding to Tang at build time needs clevis');
  });

  it('refuses a malformed thumbprint', async () => {
    await expectInputError(() => recipeWith('nbde:\n  tang: [{url: "http://tang.example", thp: "a b"}]\n'), 'nbde.tang[0].thp: expected a JWK thumbprint');
  });
});
