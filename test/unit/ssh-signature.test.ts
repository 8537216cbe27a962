/**
 * SHA256SUMS signatures with ssh-keygen -Y: a key is checked before the build (readable, known
 * to ssh-keygen, private keys 0600), a signature verifies with the signer's public key only, in
 * keylessgo's namespace only, and not for changed data; the private key never reaches argv.
 */
import { execa } from 'execa';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { HostRunner } from '../../src/host/run.js';
import { checkSigningKey, parseKeyListing, signData, verifySignature, writeAllowedSigners } from '../../src/host/ssh-signature.js';
import { readAuthorizedKeys } from '../../src/recipe/authorized-keys.js';
import { captureLogger, tempDir } from './helpers.js';

async function keyPair(dir: string, name: string): Promise<string> {
  const file = join(dir, name);
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', file]);
  return file;
}

describe('SHA256SUMS signatures (ssh-keygen -Y)', () => {
  it('parses ssh-keygen -l', () => {
    expect(parseKeyListing('256 SHA256:qD8VawaOAFn1/vwHCs89vRXchS7OffgUuY7hTTStfso ci@builder (ED25519)\n')).toEqual({ fingerprint: 'SHA256:qD8VawaOAFn1/vwHCs89vRXchS7OffgUuY7hTTStfso', type: 'ED25519' });
    expect(parseKeyListing('not a key')).toBeUndefined();
  });

  it('signs with the private key, verifies with its public key only, and not for changed data or another namespace', async () => {
    const dir = await tempDir();
    const { log, lines } = captureLogger('verbose');
    const host = new HostRunner(log);
    const signer = await keyPair(dir, 'signer');
    const other = await keyPair(dir, 'other');
    const key = await checkSigningKey(host, signer);
    expect(key.fingerprint).toBe((await execa('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${signer}.pub`])).stdout.split(' ')[1]);
    const sums = `${'a'.repeat(64)}  image.raw\n`;
    const signature = join(dir, 'SHA256SUMS.sig');
    await writeFile(signature, await signData(host, key, sums));
    expect(await readFile(signature, 'utf8')).toMatch(/^-----BEGIN SSH SIGNATURE-----\n[\s\S]+-----END SSH SIGNATURE-----\n$/);

    const trusting = async (pub: string) => {
      const allowed = join(dir, `allowed-${pub.split('/').at(-1)}`);
      await writeAllowedSigners(allowed, await readAuthorizedKeys(pub));
      return allowed;
    };
    expect(await verifySignature(host, sums, signature, await trusting(`${signer}.pub`))).toBeUndefined();
    expect(await verifySignature(host, sums.replace('a', 'b'), signature, await trusting(`${signer}.pub`))).toMatch(/incorrect signature|verif/i);
    expect(await verifySignature(host, sums, signature, await trusting(`${other}.pub`))).toMatch(/not authorized|verif/i);
    // The same key signing for another purpose (git's namespace) is no keylessgo signature.
    const gitSignature = join(dir, 'git.sig');
    await writeFile(gitSignature, (await execa('ssh-keygen', ['-Y', 'sign', '-f', signer, '-n', 'git'], { input: sums })).stdout);
    expect(await verifySignature(host, sums, gitSignature, await trusting(`${signer}.pub`))).toBeDefined();

    const privateKey = (await readFile(signer, 'utf8')).split('\n').slice(1, -2).join('');
    expect(lines.join('\n')).not.toContain(privateKey.slice(0, 40));
    expect(lines.join('\n')).toContain(`ssh-keygen -Y sign -f ${signer} -n keylessgo`);
  });

  it('refuses a key that is missing, not a key, or a private key readable by others', async () => {
    const dir = await tempDir();
    const host = new HostRunner(captureLogger().log);
    await expect(checkSigningKey(host, join(dir, 'absent'))).rejects.toThrow(InputError);
    await writeFile(join(dir, 'garbage'), 'not a key\n', { mode: 0o600 });
    await expect(checkSigningKey(host, join(dir, 'garbage'))).rejects.toThrow(/not an OpenSSH key/);
    const signer = await keyPair(dir, 'loose');
    await chmod(signer, 0o644);
    await expect(checkSigningKey(host, signer)).rejects.toThrow(/readable by group or others \(mode 644\); chmod 600 it/);
    // A public key names a private key held by ssh-agent: its mode does not matter.
    await expect(checkSigningKey(host, `${signer}.pub`)).resolves.toMatchObject({ type: 'ED25519' });
  });
});
