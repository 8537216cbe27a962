/**
 * `keylessgo boot-test` on the trixie image (recipes/debian-trixie.yaml, built for 4Kn disks):
 * Debian 13's dropbear-initramfs, cryptsetup-initramfs, clevis, systemd and signed shim and
 * GRUB, under plain UEFI (Secure Boot off) from a disk with 4096-byte logical sectors that
 * is larger than the image, unlocked over SSH with this build's keys from the appended
 * initramfs archive. UEFI only: BIOS cannot boot 4Kn disks, and the BIOS path is covered
 * by boot.test.ts.
 */
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import { parseNumbers } from '../../src/qemu/checks.js';
import type { BootTestResult } from '../../src/qemu/report.js';
import { CLI } from './fixture.js';

const trixie = inject('trixie');

describe('the trixie image', () => {
  it('boots with UEFI from a 4Kn disk, grows the root, unlocks over SSH and runs Debian 13', async () => {
    const outDir = join(trixie.dir, 'boot-uefi');
    const args = [CLI, 'boot-test', trixie.qcow2, '--key', trixie.privateKey, '--passphrase-file', trixie.passphraseFile, '--out', outDir, '--firmware', 'uefi', '--sector-size', '4096', '--disk-size', '3GiB'];
    const run = await execa('node', args, { all: true, reject: false });
    const result = JSON.parse(await readFile(join(outDir, 'result.json'), 'utf8')) as BootTestResult;
    expect(run.exitCode, run.all).toBe(0);
    expect(result.checks.filter((c) => !c.ok)).toEqual([]);
    expect(Object.keys(result.milestones).sort()).toEqual(['booted', 'dropbear', 'running', 'unlocked']);
    expect(result.checks).toContainEqual(expect.objectContaining({ name: 'unlock with the passphrase', ok: true }));
    expect(result.checks).toContainEqual(expect.objectContaining({ name: "dropbear host key is the manifest's", ok: true }));
    expect(result.checks).toContainEqual({ name: 'Debian release from the recipe', ok: true, detail: 'VERSION_ID=13 VERSION_CODENAME=trixie' });
    expect(result.checks).toContainEqual({ name: 'disk has 4096-byte logical sectors', ok: true, detail: '/dev/vda 4096' });
    const growth = result.checks.find((c) => c.name === 'root grown to the end of the disk');
    expect(growth, 'no root growth check').toMatchObject({ ok: true });
    expect(growth!.detail).toMatch(/initramfs: grew \/dev\/vda4 from \d+ to \d+ sectors of 4096 bytes/);
    expect(parseNumbers(growth!.detail).disk).toBe(3 * 1024 ** 3);
  });
});
