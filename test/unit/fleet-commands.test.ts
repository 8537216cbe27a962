/**
 * unlock and status: which host keys are trusted (manifest, known_hosts as OpenSSH writes it),
 * the commands sent (secrets on stdin only), and the status report read from a LUKS2 header.
 */
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { judgeHostKey, knownHostsName, parseKnownHosts, type HostKeyTrust } from '../../src/fleet/host-keys.js';
import {
  bindingDecryptsCommand,
  DROPBEAR_IN_INITRAMFS_COMMAND,
  compareVolumeKey,
  describeStatus,
  formatHostStatus,
  luksJsonCommand,
  readBindings,
  testPassphraseCommand,
  type HostStatus,
} from '../../src/fleet/status.js';
import { describeUnlock, unlockCommand, UNLOCK_COMMAND } from '../../src/fleet/unlock.js';
import { statusCommand } from '../../src/fleet/status.js';
import { LUKS_JSON_DUMP_ARGS } from '../../src/host/cryptsetup.js';
import { jwkThumbprint } from '../../src/host/tang.js';
import { sshFingerprint } from '../../src/recipe/authorized-keys.js';
import { captureLogger, tempDir } from './helpers.js';

const run = promisify(execFile);

async function hostKey(dir: string, name: string): Promise<{ line: string; fingerprint: string }> {
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, name)]);
  const line = (await readFile(join(dir, `${name}.pub`), 'utf8')).trim();
  return { line, fingerprint: sshFingerprint(Buffer.from(line.split(' ')[1]!, 'base64')) };
}

describe('known_hosts and manifest host keys', () => {
  it('matches plain, [host]:port, hashed (ssh-keygen -H), wildcard and negated entries', async () => {
    const dir = await tempDir();
    const [a, b, c, d] = await Promise.all(['a', 'b', 'c', 'd'].map((n) => hostKey(dir, n)));
    const type = (k: { line: string }) => k.line.split(' ').slice(0, 2).join(' ');
    const file = join(dir, 'known_hosts');
    await writeFile(file, `# comment\nnode1,10.0.0.1 ${type(a!)}\n[10.0.0.5]:2222 ${type(b!)}\n*.rack1,!bad.rack1 ${type(c!)}\n`);
    await run('ssh-keygen', ['-H', '-f', file]);
    const text = `${await readFile(file, 'utf8')}@revoked node1 ${type(d!)}\n`;
    expect(text).toContain('|1|');
    const entries = parseKnownHosts(text, file);
    const trust: HostKeyTrust = { knownHosts: { file, entries } };
    const key = (k: { fingerprint: string }) => ({ type: 'ssh-ed25519', fingerprint: k.fingerprint });
    expect(judgeHostKey(trust, ['node1'], 22, key(a!))).toEqual({ trusted: true, by: file });
    expect(judgeHostKey(trust, ['x', '10.0.0.1'], 22, key(a!))).toMatchObject({ trusted: true });
    expect(judgeHostKey(trust, ['10.0.0.5'], 2222, key(b!))).toMatchObject({ trusted: true });
    expect(judgeHostKey(trust, ['10.0.0.5'], 22, key(b!))).toMatchObject({ trusted: false, reason: expect.stringMatching(/no entry for 10\.0\.0\.5/) });
    expect(judgeHostKey(trust, ['node1'], 22, key(b!))).toMatchObject({ trusted: false, reason: expect.stringMatching(/not in .*known_hosts \(2 other key\(s\) for node1\)/) });
    expect(judgeHostKey(trust, ['n7.rack1'], 22, key(c!))).toMatchObject({ trusted: true });
    expect(judgeHostKey(trust, ['bad.rack1'], 22, key(c!))).toMatchObject({ trusted: false });
    expect(judgeHostKey(trust, ['node1'], 22, key(d!))).toMatchObject({ trusted: false, reason: expect.stringMatching(/@revoked/) });
  });

  it('trusts the manifest\'s dropbear keys on any host, and nothing without a source', () => {
    const manifest = { file: 'manifest.json', fingerprints: ['SHA256:abc'] };
    const key = { type: 'ssh-ed25519', fingerprint: 'SHA256:abc' };
    expect(judgeHostKey({ manifest }, ['anything'], 2222, key)).toEqual({ trusted: true, by: 'manifest.json' });
    expect(judgeHostKey({ manifest }, ['h'], 22, { ...key, fingerprint: 'SHA256:other' })).toEqual({ trusted: false, reason: 'host key ssh-ed25519 SHA256:other is not in the manifest manifest.json' });
    expect(judgeHostKey({}, ['h'], 22, key)).toMatchObject({ trusted: false, reason: expect.stringMatching(/no --manifest or --known-hosts/) });
  });

  it('names OpenSSH\'s host form and refuses malformed lines with file:line', () => {
    expect(knownHostsName('h', 22)).toBe('h');
    expect(knownHostsName('h', 2222)).toBe('[h]:2222');
    expect(() => parseKnownHosts('\nh ssh-ed25519\n', 'kh')).toThrow(/^kh:2: expected/);
    expect(() => parseKnownHosts('h ssh-ed25519 !!!notbase64\n', 'kh')).toThrow(/^kh:1: expected/);
    expect(() => parseKnownHosts('@bogus h ssh-ed25519 AAAA\n', 'kh')).toThrow(/^kh:1: unknown marker @bogus/);
  });
});

describe('unlock', () => {
  it('runs cryptroot-unlock (the passphrase goes on stdin, never in the command)', () => {
    expect(UNLOCK_COMMAND).toBe('cryptroot-unlock');
  });

  it('refuses to start without a way to check host keys', async () => {
    const { log } = captureLogger();
    const targets = [{ name: 'h', address: 'h', port: 22, user: 'root', vars: {} }];
    await expect(unlockCommand(targets, { keyFile: 'k', passphraseFile: 'p', waitSeconds: 0, json: false, log })).rejects.toThrow(/--manifest FILE .* or --known-hosts FILE/);
  });

  it('describes an unlocked host and skips one already up', () => {
    expect(describeUnlock({ outcome: 'already up' })).toEqual({ summary: 'already up (OpenSSH answers)', skipped: true });
    expect(describeUnlock({ outcome: 'unlocked', hostKey: { type: 'ssh-ed25519', fingerprint: 'SHA256:x' }, trustedBy: 'm.json', upAfterSeconds: 41 }).summary).toBe(
      'unlocked; dropbear key SHA256:x (m.json), OpenSSH up after 41 s',
    );
  });
});

const signing = { kty: 'EC', crv: 'P-256', x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0', key_ops: ['verify'] };
const newSigning = { ...signing, x: 'AAAOJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU' };
const protectedHeader = (key: object, url = 'http://tang.example') =>
  Buffer.from(JSON.stringify({ alg: 'ECDH-ES', clevis: { pin: 'tang', tang: { url, adv: { keys: [key, { kty: 'EC', key_ops: ['deriveKey'] }] } } } })).toString('base64url');
const header = JSON.stringify({
  keyslots: { '0': { type: 'luks2' }, '1': { type: 'luks2' }, '2': { type: 'luks2' } },
  tokens: {
    '0': { type: 'clevis', keyslots: ['1'], jwe: { protected: protectedHeader(signing) } },
    '1': { type: 'clevis', keyslots: ['2'], jwe: { protected: protectedHeader(newSigning) } },
    '2': { type: 'systemd-fido2', keyslots: ['0'] },
  },
  digests: { '0': { type: 'pbkdf2', keyslots: ['0', '1', '2'], salt: 'c2FsdA==', digest: 'ZGlnZXN0' } },
});

describe('status', () => {
  it('builds read-only commands; the passphrase test reads the passphrase from stdin', () => {
    expect(luksJsonCommand('/dev/vda4')).toBe('cryptsetup luksDump --dump-json-metadata /dev/vda4');
    expect(testPassphraseCommand('/dev/vda4')).toBe('cryptsetup open --test-passphrase --key-file - /dev/vda4');
    expect(bindingDecryptsCommand('/dev/vda4', 1)).toBe('timeout 30 clevis luks pass -d /dev/vda4 -s 1 >/dev/null');
  });

  it.each([
    ['.\ninit\nusr/sbin/dropbear\n', 'yes'],
    ['kernel/x86\nmain/init\nmain/usr/bin/busybox\n', 'no'],
    // lsinitramfs gave up on an image's initramfs as built (an archive appended after the compressed one).
    ['kernel/x86/microcode/GenuineIntel.bin\n', 'unknown'],
  ])('dropbear in the initramfs listing %j: %s', async (listing, answer) => {
    const awk = DROPBEAR_IN_INITRAMFS_COMMAND.slice(DROPBEAR_IN_INITRAMFS_COMMAND.indexOf('| awk') + 2);
    const child = execFile('sh', ['-c', awk]);
    child.stdin!.end(listing);
    const output = await new Promise<string>((resolve) => {
      let text = '';
      child.stdout!.on('data', (chunk: Buffer) => (text += chunk.toString()));
      child.on('close', () => resolve(text));
    });
    expect(output.trim()).toBe(answer);
  });

  it('reads keyslots, tokens, bindings and flags those on an old Tang key', () => {
    const found = readBindings(header, [jwkThumbprint(newSigning)]);
    expect(found.keyslots).toEqual([0, 1, 2]);
    expect(found.tokens).toEqual([
      { id: 0, type: 'clevis', keyslots: [1] },
      { id: 1, type: 'clevis', keyslots: [2] },
      { id: 2, type: 'systemd-fido2', keyslots: [0] },
    ]);
    expect(found.bindings).toEqual([
      { token: 0, keyslots: [1], pin: 'tang', servers: [{ url: 'http://tang.example', thumbprints: [jwkThumbprint(signing)], current: false }], dependsOnOldKey: true, tpm2Jwes: [] },
      { token: 1, keyslots: [2], pin: 'tang', servers: [{ url: 'http://tang.example', thumbprints: [jwkThumbprint(newSigning)], current: true }], dependsOnOldKey: false, tpm2Jwes: [] },
    ]);
    // Without the current keys nothing is flagged.
    expect(readBindings(header, []).bindings[0]).not.toHaveProperty('dependsOnOldKey');
  });

  it("tells the image's volume key from a rotated one by the header digest", () => {
    const { digests } = readBindings(header, []);
    expect(compareVolumeKey(digests, [{ salt: 'c2FsdA==', digest: 'ZGlnZXN0' }])).toBe('image');
    expect(compareVolumeKey(digests, [{ salt: 'c2FsdA==', digest: 'b3RoZXI=' }])).toBe('rotated');
    expect(compareVolumeKey(digests, undefined)).toBe('unknown');
  });

  it("keeps the image's digest through luksAddKey and loses it in cryptsetup reencrypt (a real LUKS2 header)", async () => {
    const dir = await tempDir();
    const [image, keyFile] = [join(dir, 'luks.img'), join(dir, 'key')];
    await writeFile(image, Buffer.alloc(0));
    await run('truncate', ['-s', '40M', image]);
    await writeFile(keyFile, 'bootstrap-passphrase', { mode: 0o600 });
    const cheap = ['--batch-mode', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', keyFile];
    const digests = async () => readBindings((await run('cryptsetup', [...LUKS_JSON_DUMP_ARGS, image])).stdout, []).digests;
    await run('cryptsetup', ['luksFormat', '--type', 'luks2', ...cheap, image]);
    const built = await digests();
    await run('cryptsetup', ['luksAddKey', ...cheap, image, keyFile]);
    expect(compareVolumeKey(await digests(), built)).toBe('image');
    await run('cryptsetup', ['reencrypt', '--force-offline-reencrypt', '--key-slot', '0', ...cheap, image]);
    expect(compareVolumeKey(await digests(), built)).toBe('rotated');
  }, 60_000);

  it('formats the report and the summary line', () => {
    const found = readBindings(header, [jwkThumbprint(newSigning)]);
    const status: HostStatus = {
      state: 'up',
      hostKey: { type: 'ssh-ed25519', fingerprint: 'SHA256:hk' },
      device: '/dev/vda4',
      keyslots: found.keyslots,
      tokens: found.tokens,
      bindings: found.bindings.map(({ tpm2Jwes: _, ...b }, i) => ({ ...b, decrypts: i === 1 })),
      bootstrapPassphrase: 'refused',
      volumeKey: 'rotated',
      dropbearInInitramfs: true,
    };
    expect(describeStatus(status).summary).toBe("keyslots 0,1,2; 2 binding(s), 1 decrypt, 1 on an OLD Tang key; bootstrap passphrase refused; volume key rotated; dropbear in initramfs");
    const text = formatHostStatus('web01', status);
    expect(text).toMatch(/^web01:\n  host key +ssh-ed25519 SHA256:hk$/m);
    expect(text).toMatch(new RegExp(`^  binding \\(token 0\\) +tang in keyslot 1: http://tang\\.example \\[${jwkThumbprint(signing)}\\] \\(old key\\), does NOT decrypt now$`, 'm'));
    expect(text).toMatch(/^  bootstrap passphrase +refused \(removed\)$/m);
    expect(text).toMatch(/^  volume key +differs from the image's$/m);
    expect(formatHostStatus('db1', { ...status, state: 'locked' })).toBe('db1: at dropbear, locked (unlock it first: keylessgo unlock)');
    // A TPM binding sealed to PCRs that moved, the temporary binding reseal --prepare made, and the TPM's lockout state.
    const sealed: HostStatus = {
      ...status,
      keyslots: [1, 30, 31],
      bindings: [
        { token: 0, keyslots: [1], pin: 'sss', servers: [{ url: 'http://tang.example', thumbprints: ['thp'] }], decrypts: false, tpm2Unseals: false },
        { token: 1, keyslots: [30], pin: 'tang', servers: [{ url: 'http://tang.example', thumbprints: ['thp'] }], decrypts: true, temporary: true },
      ],
      tpm: { counter: 1, maxTries: 3, recoverySeconds: 1000, lockoutRecoverySeconds: 1000 },
      espInStep: false,
      espOutOfStep: ['keylessgo-esp-sync: out of step: EFI/BOOT/BOOTX64.EFI on /dev/vda2 differs from /usr/lib/shim/shimx64.efi.signed (shim-signed 1.51)'],
    };
    expect(describeStatus(sealed).summary).toBe('keyslots 1,30,31; 2 binding(s), 1 decrypt, 1 TPM binding(s) NOT unsealing, a temporary binding; TPM lockout 1/3; ESP OUT OF STEP with its packages; bootstrap passphrase refused; volume key rotated; dropbear in initramfs');
    const sealedText = formatHostStatus('db1', sealed);
    expect(sealedText).toMatch(/^  binding \(token 0\) +sss in keyslot 1: http:\/\/tang\.example \[thp\], does NOT decrypt now, its TPM part does NOT unseal with today's PCRs \(reseal --finish\)$/m);
    expect(sealedText).toMatch(/^  binding \(token 1\) +tang in keyslot 30 \(temporary, from reseal --prepare\): http:\/\/tang\.example \[thp\], decrypts now$/m);
    expect(sealedText).toMatch(/^  TPM lockout +1 of 3 failures counted; one forgotten every 1000 s while powered$/m);
    expect(sealedText).toMatch(/^  ESP loaders +OUT OF STEP: keylessgo-esp-sync: out of step: EFI\/BOOT\/BOOTX64\.EFI on \/dev\/vda2 differs .* \(run \/usr\/lib\/keylessgo\/esp-sync\)$/m);
    expect(formatHostStatus('web01', status)).toMatch(/^  ESP loaders +unknown \(no esp-sync in this image\)$/m);
    expect(describeStatus({ ...status, state: 'locked' }).summary).toBe('at dropbear, locked');
  });

  it('refuses to send the bootstrap passphrase without --known-hosts', async () => {
    const { log } = captureLogger();
    await expect(statusCommand([], { keyFile: 'k', passphraseFile: 'p', tangThumbprints: [], tangUrls: [], json: false, log })).rejects.toThrow(/--known-hosts FILE/);
  });
});
