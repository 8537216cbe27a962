import { execa } from 'execa';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { clevisBindArgs, clevisPinConfig, clevisPolicyInToken, describeClevisPolicy, parseClevisList, parsePcrList, tangServersInToken, tpm2BindingsInToken } from '../../src/host/clevis.js';
import { packageList } from '../../src/stages/bootstrap.js';
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

  it('binds the TPM alone with the tpm2 pin, sealed to the PCRs given', () => {
    const [pin, config] = clevisPinConfig([], 1, { pcrBank: 'sha256', pcrIds: [7] });
    expect(pin).toBe('tpm2');
    expect(JSON.parse(config)).toEqual({ pcr_bank: 'sha256', pcr_ids: '7' });
  });

  it('counts the TPM with the Tang servers in one sss threshold: Tang and TPM is t=2', () => {
    const [pin, config] = clevisPinConfig([{ url: 'http://a.example', adv }], 2, { pcrBank: 'sha256', pcrIds: [0, 7] });
    expect(pin).toBe('sss');
    expect(JSON.parse(config)).toEqual({ t: 2, pins: { tang: [{ url: 'http://a.example', adv }], tpm2: { pcr_bank: 'sha256', pcr_ids: '0,7' } } });
  });

  it('parses PCR lists and refuses bad ones', () => {
    expect(parsePcrList('7')).toEqual([7]);
    expect(parsePcrList('7, 0,4')).toEqual([0, 4, 7]);
    for (const bad of ['', '24', '7,7', 'a', '1,,2', '-1']) expect(() => parsePcrList(bad), bad).toThrow();
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
    expect(tpm2BindingsInToken(JSON.stringify({ type: 'systemd-tpm2', keyslots: ['2'] }))).toEqual([]);
    expect(clevisPolicyInToken(JSON.stringify({ type: 'systemd-tpm2', keyslots: ['2'] }))).toBeUndefined();
  });

  /** A compact JWE with this protected header, as clevis-encrypt-tpm2 writes it (fields from its source; the sealed blobs are placeholders: no TPM here). */
  const tpm2Jwe = (tpm2: object) => `${Buffer.from(JSON.stringify({ alg: 'dir', enc: 'A256GCM', clevis: { pin: 'tpm2', tpm2: { hash: 'sha256', key: 'ecc', jwk_pub: 'AA', jwk_priv: 'AA', ...tpm2 } } })).toString('base64url')}..iv.ct.tag`;
  const tokenOf = (compact: string) => {
    const [protectedHeader, encryptedKey, iv, ciphertext, tag] = compact.split('.');
    return JSON.stringify({ type: 'clevis', keyslots: ['2'], jwe: { protected: protectedHeader, encrypted_key: encryptedKey, iv, ciphertext, tag } });
  };

  it('reads a tpm2 binding: PCR bank and PCRs, or none', () => {
    expect(tpm2BindingsInToken(tokenOf(tpm2Jwe({ pcr_bank: 'sha256', pcr_ids: '0,7' })))).toEqual([{ pcrBank: 'sha256', pcrIds: [0, 7] }]);
    const unsealed = tokenOf(tpm2Jwe({}));
    expect(tpm2BindingsInToken(unsealed)).toEqual([{ pcrIds: [] }]);
    expect(describeClevisPolicy(clevisPolicyInToken(unsealed)!)).toBe('tpm2 (no PCR policy)');
    expect(tangServersInToken(unsealed)).toEqual([]);
  });

  it('reads Tang servers and the TPM next to each other from an sss binding, with its threshold', async () => {
    // Real clevis makes the sss and tang layers; one of its shares is then swapped for a tpm2 JWE (sss does not look inside them).
    const { token } = await tokenFor('sss', (adv) => ({ t: 2, pins: { tang: [{ url: 'http://a.example', adv }, { url: 'http://b.example', adv }] } }));
    const header = JSON.parse(Buffer.from((JSON.parse(token) as { jwe: { protected: string } }).jwe.protected, 'base64url').toString()) as { clevis: { sss: { jwe: string[] } } };
    header.clevis.sss.jwe[1] = tpm2Jwe({ pcr_bank: 'sha256', pcr_ids: '7' });
    const mixed = JSON.stringify({ ...(JSON.parse(token) as object), jwe: { protected: Buffer.from(JSON.stringify(header)).toString('base64url') } });
    expect(tangServersInToken(mixed).map((s) => s.url)).toHaveLength(1);
    expect(tpm2BindingsInToken(mixed)).toEqual([{ pcrBank: 'sha256', pcrIds: [7] }]);
    expect(describeClevisPolicy(clevisPolicyInToken(mixed)!)).toMatch(/^sss 2 of \(tang http:\/\/[ab]\.example, tpm2 sha256:7\)$/);
  });
});

describe('recipe nbde section', () => {
  it('refuses a threshold above the number of servers', async () => {
    await expectInputError(() => recipeWith('nbde:\n  tang: [{url: "http://tang.example"}]\n  threshold: 2\n'), 'nbde.threshold: threshold 2 exceeds the 1 Tang server(s) listed');
  });

  it('refuses Tang servers without clevis in the image', async () => {
    await expectInputError(() => recipeWith('nbde:\n  clevis: false\n  tang: [{url: "http://tang.example"}]\n'), 'nbde.clevis: binding to Tang at build time needs clevis');
  });

  it('tpm2: clevis-tpm2 and tpm2-tools in the image, only when asked for and only with clevis', async () => {
    expect(packageList(recipeWith('nbde:\n  tpm2: true\n'))).toEqual(expect.arrayContaining(['clevis-tpm2', 'tpm2-tools', 'clevis-initramfs']));
    expect(packageList(recipeWith(''))).not.toContain('clevis-tpm2');
    await expectInputError(() => recipeWith('nbde:\n  clevis: false\n  tpm2: true\n'), "nbde.tpm2: clevis's tpm2 pin needs clevis in the image");
  });

  it('refuses a malformed thumbprint', async () => {
    await expectInputError(() => recipeWith('nbde:\n  tang: [{url: "http://tang.example", thp: "a b"}]\n'), 'nbde.tang[0].thp: expected a JWK thumbprint');
  });
});
