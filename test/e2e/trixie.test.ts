/**
 * `keylessgo boot-test` on the trixie image (recipes/debian-trixie.yaml): Debian 13's
 * dropbear-initramfs, cryptsetup-initramfs, clevis, systemd and GRUB, unlocked over SSH with
 * this build's keys from the appended initramfs archive. UEFI only: the BIOS path is the
 * same GRUB core.img as bookworm's and is covered by boot.test.ts.
 */
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import type { BootTestResult } from '../../src/qemu/report.js';
import { CLI } from './fixture.js';

const trixie = inject('trixie');

describe('the trixie image', () => {
  it('boots with UEFI, unlocks over SSH and runs Debian 13', async () => {
    const outDir = join(trixie.dir, 'boot-uefi');
    const run = await execa('node', [CLI, 'boot-test', trixie.qcow2, '--key', trixie.privateKey, '--passphrase-file', trixie.passphraseFile, '--out', outDir, '--firmware', 'uefi'], { all: true, reject: false });
    const result = JSON.parse(await readFile(join(outDir, 'result.json'), 'utf8')) as BootTestResult;
    expect(run.exitCode, run.all).toBe(0);
    expect(result.checks.filter((c) => !c.ok)).toEqual([]);
    expect(Object.keys(result.milestones).sort()).toEqual(['booted', 'dropbear', 'running', 'unlocked']);
    expect(result.checks).toContainEqual(expect.objectContaining({ name: 'unlock with the passphrase', ok: true }));
    expect(result.checks).toContainEqual(expect.objectContaining({ name: "dropbear host key is the manifest's", ok: true }));
    expect(result.checks).toContainEqual({ name: 'Debian release from the recipe', ok: true, detail: 'VERSION_ID=13 VERSION_CODENAME=trixie' });
  });
});
