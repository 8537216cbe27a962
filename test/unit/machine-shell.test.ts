/**
 * The shell that enroll sends to a machine, run for real by /bin/sh here (the fake machine of
 * enroll.test.ts only answers commands): state files laid out as `echo` writes them (trailing
 * newlines), a detached unit's script and the outcome read back from its output, new dropbear
 * host keys, and their archive appended to an initramfs as the kernel then unpacks it.
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HostRunner } from '../../src/host/run.js';
import { fileDecompressor, unpackInitramfs } from '../../src/inspect/cpio.js';
import { newcArchive } from '../../src/initramfs/newc.js';
import { appendDropbearKeysScript, newDropbearKeysScript } from '../../src/nbde/enroll.js';
import { detachedUnitCommand, parseUnitOutcome, readStateFiles, systemdLiteral, unitScript, type Remote } from '../../src/nbde/machine.js';
import { Logger } from '../../src/log.js';

/** This host's /bin/sh as the machine's root shell. */
const localShell: Remote = {
  async run(command, stdin) {
    const result = await execa('/bin/sh', ['-c', command], { input: stdin ?? '', all: true, reject: false });
    return { output: result.all ?? '', exitCode: result.exitCode };
  },
};

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'keylessgo-machine-shell-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('enroll state files', () => {
  it('reads each value on its own, whatever newlines the files end with, and leaves absent files out', async () => {
    // As enroll writes them on the machine: echo adds a newline.
    await localShell.run(`cd ${dir} && echo 0a1b2c3d4e5f > image-volume-key-digest-salt && echo regenerate-key > dropbear-done`);
    expect(await readStateFiles(localShell, dir, ['image-volume-key-digest-salt', 'dropbear-done'])).toEqual({ 'image-volume-key-digest-salt': '0a1b2c3d4e5f', 'dropbear-done': 'regenerate-key' });
    await writeFile(join(dir, 'image-volume-key-digest-salt'), '0a1b2c3d4e5f\n\n');
    await rm(join(dir, 'dropbear-done'));
    expect(await readStateFiles(localShell, dir, ['image-volume-key-digest-salt', 'dropbear-done'])).toEqual({ 'image-volume-key-digest-salt': '0a1b2c3d4e5f' });
    expect(await readStateFiles(localShell, join(dir, 'missing'), ['image-volume-key-digest-salt'])).toEqual({});
  });
});

describe('detached unit script', () => {
  it('runs the steps in order and ends with a done line', async () => {
    const { output, exitCode } = await localShell.run(unitScript([{ label: 'first', script: 'echo one' }, { label: "it's second", script: "echo 'two'" }]));
    expect(exitCode).toBe(0);
    expect(output.split('\n').filter(Boolean)).toEqual(['keylessgo-step: running: first', 'one', "keylessgo-step: running: it's second", 'two', 'keylessgo-step: done']);
    expect(parseUnitOutcome(output)).toEqual({ ended: 'done' });
  });

  it('stops at the first failing step; the outcome names it, its exit status and its last lines (stderr too)', async () => {
    const { output, exitCode } = await localShell.run(unitScript([
      { label: 'update-initramfs -u', script: 'echo building; echo "E: no space left" >&2; exit 3' },
      { label: 'never', script: 'echo never' },
    ]));
    expect(exitCode).toBe(3);
    expect(output).not.toContain('never\n');
    expect(parseUnitOutcome(output)).toEqual({ ended: 'failed', label: 'update-initramfs -u', status: 3, lastLines: ['keylessgo-step: running: update-initramfs -u', 'building', 'E: no space left'] });
  });

  it('reaches /bin/sh as written: systemd\'s ${NAME} expansion of Exec lines cannot touch it', () => {
    // What systemd does to a word of an Exec line: `$$` is `$`, `${NAME}` the (empty) variable.
    const systemdExpands = (word: string) => word.replace(/\$\$|\$\{[A-Za-z_][A-Za-z0-9_]*\}/g, (match) => (match === '$$' ? '$' : ''));
    const script = unitScript([{ label: 'new dropbear host keys', script: newDropbearKeysScript() }, { label: 'append', script: appendDropbearKeysScript() }]);
    // The hazard is real: unescaped, the key files would be named dropbear__host_key.
    expect(systemdExpands(script)).toContain('dropbear__host_key');
    expect(systemdExpands(systemdLiteral(script))).toBe(script);
    const command = detachedUnitCommand('keylessgo-enroll-initramfs', [{ label: 'x', script: 'echo "${HOME}"' }], 'rm -rf "${DIR}"');
    expect(command).toContain('echo "$${HOME}"');
    expect(command).toContain('rm -rf "$${DIR}"');
  });

  it('a run cut short (killed, rebooted) is neither done nor failed', () => {
    expect(parseUnitOutcome('keylessgo-step: running: cryptsetup reencrypt\nProgress:  12.0%\n')).toEqual({ ended: 'unknown', lastLines: ['keylessgo-step: running: cryptsetup reencrypt', 'Progress:  12.0%'] });
  });
});

describe('dropbear host keys on the machine', () => {
  it('renews every key type present, nothing else, with nothing left beside them', async () => {
    for (const type of ['ed25519', 'ecdsa']) await execa('dropbearkey', ['-t', type, '-f', join(dir, `dropbear_${type}_host_key`)]);
    await writeFile(join(dir, 'authorized_keys'), 'ssh-ed25519 AAAA test\n');
    const before = await Promise.all(['ed25519', 'ecdsa'].map((type) => readFile(join(dir, `dropbear_${type}_host_key`))));
    const { output, exitCode } = await localShell.run(newDropbearKeysScript(dir));
    expect(exitCode, output).toBe(0);
    // The public halves and fingerprints go to the unit's journal.
    expect(output).toMatch(/^ssh-ed25519 AAAA/m);
    expect(output).toMatch(/^Fingerprint: /m);
    expect((await readdir(dir)).sort()).toEqual(['authorized_keys', 'dropbear_ecdsa_host_key', 'dropbear_ed25519_host_key']);
    for (const [index, type] of ['ed25519', 'ecdsa'].entries()) {
      const after = await readFile(join(dir, `dropbear_${type}_host_key`));
      expect(after.equals(before[index]!)).toBe(false);
      expect((await execa('dropbearkey', ['-y', '-f', join(dir, `dropbear_${type}_host_key`)])).stdout).toMatch(type === 'ed25519' ? /^ssh-ed25519 /m : /^ecdsa-sha2-nistp256 /m);
    }
  });

  it('appends them to every initramfs (not to a symlink): after unpacking, the new keys replace the old and the rest is unchanged', async () => {
    const keys = join(dir, 'keys');
    const boot = join(dir, 'boot');
    await mkdir(keys);
    await mkdir(boot);
    const newKeys = { ed25519: randomBytes(83), ecdsa: randomBytes(140) };
    for (const [type, data] of Object.entries(newKeys)) await writeFile(join(keys, `dropbear_${type}_host_key`), data, { mode: 0o600 });
    // An initramfs as the build leaves it: a compressed main archive, then its appended per-build archive (old keys).
    const main = newcArchive([{ path: 'init', mode: 0o755, data: Buffer.from('#!/bin/sh\n') }, { path: 'etc/dropbear/dropbear.conf', mode: 0o644, data: Buffer.from('DROPBEAR_OPTIONS=-s\n') }]);
    await writeFile(join(dir, 'main.cpio'), main);
    await execa('zstd', ['-q', '-3', join(dir, 'main.cpio'), '-o', join(dir, 'main.cpio.zst')]);
    const compressed = await readFile(join(dir, 'main.cpio.zst'));
    const appended = newcArchive([
      { path: 'etc/dropbear/dropbear_ed25519_host_key', mode: 0o600, data: Buffer.from('old ed25519') },
      { path: 'etc/dropbear/dropbear_ecdsa_host_key', mode: 0o600, data: Buffer.from('old ecdsa') },
      { path: 'cryptroot/crypttab', mode: 0o644, data: Buffer.from('cryptroot UUID=1 none luks\n') },
    ]);
    // Of odd length, so that the next archive needs padding to its 4-byte boundary.
    const initrd = Buffer.concat([compressed, Buffer.alloc((4 - (compressed.length % 4)) % 4), appended, Buffer.from([0])]);
    await writeFile(join(boot, 'initrd.img-6.1.0-28-amd64'), initrd);
    await symlink('initrd.img-6.1.0-28-amd64', join(boot, 'initrd.img'));

    const { output, exitCode } = await localShell.run(appendDropbearKeysScript(keys, boot));
    expect(exitCode, output).toBe(0);
    expect(output).toContain(`${boot}/initrd.img-6.1.0-28-amd64: new dropbear host keys appended at byte ${initrd.length}`);
    expect((await readdir(boot)).sort()).toEqual(['initrd.img', 'initrd.img-6.1.0-28-amd64']);
    const result = await readFile(join(boot, 'initrd.img-6.1.0-28-amd64'));
    expect(result.subarray(0, initrd.length).equals(initrd)).toBe(true);
    expect(result.length % 4).toBe(0);

    const host = new HostRunner(new Logger('quiet'));
    const scratch = join(dir, 'scratch');
    await mkdir(scratch);
    const { files, segments } = await unpackInitramfs([result], fileDecompressor((file, args) => host.run(file, args), scratch));
    expect(segments).toEqual(['zstd at 0', 'compressed cpio at 0 (2 entries)', `cpio at ${compressed.length + ((4 - (compressed.length % 4)) % 4)} (3 entries)`, expect.stringMatching(/^cpio at \d+ \(2 entries\)$/)]);
    for (const [type, data] of Object.entries(newKeys)) {
      const entry = files.get(`etc/dropbear/dropbear_${type}_host_key`)!;
      expect(entry.data.equals(data)).toBe(true);
      expect(entry.mode & 0o7777).toBe(0o600);
    }
    expect(files.get('cryptroot/crypttab')!.data.toString()).toBe('cryptroot UUID=1 none luks\n');
    expect(files.get('etc/dropbear/dropbear.conf')!.data.toString()).toBe('DROPBEAR_OPTIONS=-s\n');
    expect((await readdir('/run')).filter((name) => name.startsWith('keylessgo-dropbear-keys.'))).toEqual([]);
  });

  it('fails, changing nothing, when there is no initramfs to put the keys into', async () => {
    await writeFile(join(dir, 'dropbear_ed25519_host_key'), randomBytes(83));
    await chmod(join(dir, 'dropbear_ed25519_host_key'), 0o600);
    const { output, exitCode } = await localShell.run(appendDropbearKeysScript(dir, join(dir, 'no-boot')));
    expect(exitCode).toBe(1);
    expect(output).toContain(`no ${dir}/no-boot/initrd.img-* to put the keys into`);
    expect((await stat(join(dir, 'dropbear_ed25519_host_key'))).size).toBe(83);
  });
});
