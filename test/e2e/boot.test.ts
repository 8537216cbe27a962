/**
 * `keylessgo boot-test` on the shared fixture image: a full UEFI Secure Boot boot with the
 * negative checks against dropbear, a full BIOS boot, the firmware refusing an image built
 * without Secure Boot, a wrong passphrase, and the cleanup on the overall timeout and on
 * Ctrl-C. Plain UEFI is booted by trixie.test.ts and nbde.test.ts. VMs run one at a time: each guest has 2 vCPUs and a CI
 * machine may have 2 cores. No timing is asserted here (see `make bench`); the timeouts
 * only bound a hung run.
 */
import { execa, type ResultPromise } from 'execa';
import { access, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import { parseNumbers } from '../../src/qemu/checks.js';
import type { BootTestResult } from '../../src/qemu/report.js';
import { CLI, type ImageFixture } from './fixture.js';

const image = inject('image');
const rebuild = inject('rebuild');

const NEGATIVE_CHECKS = [
  'dropbear refuses password login',
  'dropbear refuses a key not in authorized_keys',
  'dropbear refuses port forwarding',
  'a wrong passphrase does not unlock',
];

interface Run {
  exitCode: number | undefined;
  output: string;
  result: BootTestResult;
  /** The qcow2 overlay the run created (from its verbose log). */
  overlay: string;
}

function startBootTest(outName: string, extra: string[], of: ImageFixture = image): { child: ResultPromise<{ all: true; reject: false }>; outDir: string } {
  const outDir = join(of.dir, outName);
  const args = [CLI, 'boot-test', of.qcow2, '--key', of.privateKey, '--passphrase-file', of.passphraseFile, '--out', outDir, '--verbose', ...extra];
  return { child: execa('node', args, { all: true, reject: false }), outDir };
}

async function finish(started: ReturnType<typeof startBootTest>): Promise<Run> {
  const done = await started.child;
  const output = String(done.all);
  const result = JSON.parse(await readFile(join(started.outDir, 'result.json'), 'utf8')) as BootTestResult;
  const overlay = /qemu-img create .* (\S+overlay\.qcow2)/.exec(output)?.[1] ?? '';
  return { exitCode: done.exitCode, output, result, overlay };
}

const bootTest = (outName: string, extra: string[], of: ImageFixture = image) => finish(startBootTest(outName, extra, of));

async function expectCleanedUp(run: Run): Promise<void> {
  expect(run.overlay, run.output).not.toBe('');
  await expect(access(run.overlay)).rejects.toThrow();
  const qemu = await execa('pgrep', ['-f', run.overlay], { reject: false });
  expect(qemu.stdout, 'QEMU still running').toBe('');
}

function expectFullPass(run: Run): void {
  expect(run.exitCode, run.output).toBe(0);
  expect(run.result.passed).toBe(true);
  expect(run.result.error).toBeUndefined();
  expect(run.result.checks.filter((c) => !c.ok)).toEqual([]);
  for (const name of ['dropbear host key is the manifest\'s', '/ on dm-crypt', '/boot mounted (ext4)', '/boot/efi mounted (vfat)', 'systemctl is-system-running']) {
    expect(run.result.checks.map((c) => c.name)).toContain(name);
  }
  expect(Object.keys(run.result.milestones).sort()).toEqual(['booted', 'dropbear', 'running', 'unlocked']);
  expect(run.result.bootAnalysis).toMatch(/Startup finished/);
}

describe('keylessgo boot-test', () => {
  // Secure Boot, and two NICs with the first connected to nothing: dropbear must come up on the second.
  it('boots with UEFI Secure Boot (Microsoft keys) through Debian\'s signed chain, with two NICs (the first dead), refuses what dropbear must refuse, unlocks and passes every check', async () => {
    const before = await stat(image.qcow2);
    const run = await bootTest('boot-uefi-secureboot', ['--firmware', 'uefi-secureboot', '--negative-checks', '--nics', '2']);
    expectFullPass(run);
    for (const name of ['Secure Boot enabled (SecureBoot EFI variable)', 'kernel lockdown active']) {
      expect(run.result.checks).toContainEqual(expect.objectContaining({ name, ok: true }));
    }
    const negatives = run.result.checks.filter((c) => NEGATIVE_CHECKS.includes(c.name));
    expect(negatives.map((c) => c.name).sort()).toEqual([...NEGATIVE_CHECKS].sort());
    expect(run.output).toMatch(/PASS +dropbear refuses password login/);
    // Booted through an overlay: the image itself is untouched.
    const after = await stat(image.qcow2);
    expect([after.size, after.mtimeMs]).toEqual([before.size, before.mtimeMs]);
    await expectCleanedUp(run);
  });

  // The rebuild from the cache: its base initramfs was made for the first build (other LUKS
  // UUID, no keys); only the appended archive carries this build's crypttab, keys and host keys.
  it('boots the rebuild from the cache with BIOS from a 6 GiB disk, grows the root to it and passes every check', async () => {
    const run = await bootTest('boot-bios', ['--firmware', 'bios', '--disk-size', '6GiB'], rebuild);
    expectFullPass(run);
    expect(run.result.firmware).toBe('bios');
    // The grow check has verified the alignment and LUKS2 = partition - header; here: the root grew.
    const growth = run.result.checks.find((c) => c.name === 'root grown to the end of the disk')!;
    const sizes = parseNumbers(growth.detail);
    const manifest = JSON.parse(await readFile(image.manifestFile, 'utf8')) as { partitions: Array<{ role: string; sizeBytes: number }> };
    const imageRoot = manifest.partitions.find((p) => p.role === 'root')!.sizeBytes;
    expect(sizes.disk).toBe(6 * 1024 ** 3);
    expect(sizes.df, growth.detail).toBeGreaterThan(2 * imageRoot);
    expect(growth.detail).toMatch(/initramfs: grew \/dev\/vda4 from \d+ to \d+ sectors/);
    expect(growth.detail).toMatch(/unit: grew ext4 on \/dev\/mapper\/cryptroot/);
    // The link was up before ipconfig ran (keylessgo-link-up): its first DHCP round was answered,
    // no 10 s wait after a failed first send.
    const serial = await readFile(run.result.serialLog, 'utf8');
    expect(serial).toMatch(/keylessgo-link-up: up: eth0/);
    expect(serial).toMatch(/IP-Config: eth0 complete/);
    expect(serial).not.toMatch(/IP-Config: no response/);
    // crypttab's "nofail" is for systemd only: hooks/keylessgo-crypttab keeps it from the initramfs.
    expect(serial).toMatch(/cryptsetup: cryptroot: set up successfully/);
    expect(serial).not.toMatch(/ignoring unknown option/);
    await expectCleanedUp(run);
  });

  // The rebuild has boot.secureBoot false: its GRUB from grub-mkimage carries no signature.
  it('the Secure Boot firmware refuses the rebuild built with boot.secureBoot false', async () => {
    const run = await bootTest('boot-uefi-secureboot-unsigned', ['--firmware', 'uefi-secureboot', '--timeout', '60'], rebuild);
    expect(run.exitCode, run.output).toBe(1);
    expect(run.result.error).toMatch(/timed out after 60 s while waiting for dropbear/);
    expect(run.result.milestones.dropbear).toBeUndefined();
    // OVMF's boot manager, on the serial console.
    expect(await readFile(run.result.serialLog, 'utf8')).toMatch(/Access Denied/);
    await expectCleanedUp(run);
  });

  it('reports a wrong passphrase clearly, exits 1 and stops the VM', async () => {
    const wrong = join(image.dir, 'wrong-passphrase');
    await writeFile(wrong, 'not-the-passphrase', { mode: 0o600 });
    const run = await bootTest('boot-wrong-passphrase', ['--firmware', 'bios', '--passphrase-file', wrong]);
    expect(run.exitCode, run.output).toBe(1);
    expect(run.result.error).toMatch(/the passphrase did not unlock the root volume/);
    expect(run.result.checks).toContainEqual(expect.objectContaining({ name: 'unlock with the passphrase', ok: false }));
    expect(run.result.milestones.booted).toBeUndefined();
    expect(run.output).toMatch(/FAIL +unlock with the passphrase/);
    await expectCleanedUp(run);
  });

  it('stops QEMU and removes the overlay on the overall timeout', async () => {
    const run = await bootTest('boot-timeout', ['--firmware', 'bios', '--timeout', '15']);
    expect(run.exitCode, run.output).toBe(1);
    expect(run.result.error).toMatch(/timed out after 15 s while waiting for dropbear/);
    await expectCleanedUp(run);
  });

  it('stops QEMU and removes the overlay on Ctrl-C (SIGINT), exit 130', async () => {
    const started = startBootTest('boot-interrupted', ['--firmware', 'bios']);
    // Interrupt once QEMU runs, i.e. once the VM has something to clean up.
    await new Promise<void>((resolve) => {
      let seen = '';
      started.child.all.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes('$ qemu-system-x86_64 ')) resolve();
      });
    });
    started.child.kill('SIGINT');
    const run = await finish(started);
    expect(run.exitCode, run.output).toBe(130);
    expect(run.output).toMatch(/interrupted by SIGINT/);
    await expectCleanedUp(run);
  });
});
