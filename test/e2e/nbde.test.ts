/**
 * Network Bound Disk Encryption, proven by booting (nothing mocked): the fixture image is
 * bound at build time to a test Tang server that only the VM can reach (QEMU guestfwd).
 *
 *   1. Power cut: Tang comes up only 60 s after the machine (it closes every connection
 *      until then); the machine keeps asking and boots to a running system with no SSH input
 *      at all, and the Tang log shows the key recovery request.
 *   2. Tang unreachable: no unlock by itself; SSH unlock via dropbear still works. That is
 *      every boot in boot.test.ts, which serves no Tang to the same bound image.
 *   3. Enrollment: the machine is unlocked over SSH (its build-time Tang is gone: a new one
 *      answers at the same address), `keylessgo enroll` binds it to the new Tang, rotates the
 *      volume key, adds a recovery passphrase and removes the bootstrap one; after a power
 *      cycle it unlocks by itself.
 */
import { execa } from 'execa';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { TANG_GUEST_ADDRESS } from '../../src/qemu/vm.js';
import { pollUntil } from '../../src/qemu/wait.js';
import { CLI } from './fixture.js';
import { dumpVolumeKey, extractPartition } from './image-reader.js';
import { createTang } from './tang.js';
import { expectEncryptedRoot, TestVm } from './vm-session.js';

const image = inject('image');
const BOOT_TIMEOUT_MS = 10 * 60 * 1000;
const POWER_CUT_TANG_DELAY_S = 60;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(image.dir, 'nbde-'));
});

afterAll(async () => {
  if (!process.env.KEYLESSGO_KEEP_FIXTURE) await rm(dir, { recursive: true, force: true });
});


/** Epoch seconds of the lines `<epoch> <what>` the test Tang writes per connection. */
function connectionTimes(log: string, what: 'served' | 'refused'): number[] {
  return [...log.matchAll(new RegExp(`^(\\d+\\.\\d+) ${what}$`, 'gm'))].map((m) => Number(m[1]));
}

describe('Tang up only after the machine (power cut)', () => {
  it('keeps asking and boots without any SSH input once Tang answers, over the second of two NICs', async () => {
    const vm = await TestVm.create(image, join(dir, 'keyless'));
    const tangLog = join(vm.dir, 'tang.log');
    const upFlag = join(vm.dir, 'tang-up');
    try {
      // eth0 is connected to nothing: clevis must reach Tang over eth1, the NIC with a DHCP server.
      await vm.boot({ keyDir: image.tang.keyDir, logFile: tangLog, behaviour: 'late', upFlag }, { nics: 2 });
      // Tang comes up 60 s after power-on, and not before the machine has asked for it (a slow boot must not make this a plain keyless boot).
      await pollUntil(async () => (vm.uptime >= POWER_CUT_TANG_DELAY_S && connectionTimes(await readFile(tangLog, 'utf8').catch(() => ''), 'refused').length > 0 ? true : undefined), 1000, AbortSignal.timeout(BOOT_TIMEOUT_MS));
      await writeFile(upFlag, '');
      const tangUp = vm.uptime;
      const tangUpEpoch = Date.now() / 1000;
      const seconds = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
      const log = await readFile(tangLog, 'utf8');
      const served = connectionTimes(log, 'served');
      expect(served.length).toBeGreaterThan(0);
      process.stderr.write(`nbde: power cut: Tang up ${tangUp} s after power-on (${connectionTimes(log, 'refused').length} connections closed before); key recovered ${(served[0]! - tangUpEpoch).toFixed(1)} s after Tang up, OpenSSH ${(seconds - tangUp).toFixed(1)} s after Tang up (${seconds} s after power-on)\n`);
      await expectEncryptedRoot(vm);
      expect(log).toMatch(/POST \/rec\/\S+ => 200/);
      // The booted system too: the lease is on eth1, eth0 has no address, and nothing waits for it.
      const { output } = await vm.ssh('ip -o -4 address show scope global; systemctl is-enabled systemd-networkd-wait-online.service');
      expect(output).toMatch(/^\d+: eth1\s+inet 10\.0\.2\.15\//m);
      expect(output).not.toMatch(/: eth0\s+inet /);
      expect(output).toMatch(/^masked$/m);
    } finally {
      await vm.stop();
    }
  });
});

describe('keylessgo enroll', () => {
  it('binds to a new Tang, rotates the volume key, swaps bootstrap for recovery, and the machine then unlocks by itself', async () => {
    const vm = await TestVm.create(image, join(dir, 'enroll'));
    const newTang = await createTang(vm.dir);
    const tangLog = join(vm.dir, 'tang.log');
    const recoveryFile = join(vm.dir, 'recovery-key');
    try {
      // The build-time Tang's keys are gone (a new server answers): only SSH unlocks now.
      await vm.boot({ keyDir: newTang.keyDir, logFile: tangLog });
      await vm.waitFor(/dropbear/, BOOT_TIMEOUT_MS);
      const unlock = await vm.ssh('cryptroot-unlock', image.passphrase);
      expect(unlock.output).toMatch(/set up successfully/);
      await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);

      const started = performance.now();
      const enrolled = await execa('node', [CLI, 'enroll', '--host', '127.0.0.1', '--port', String(vm.port), '--key', image.privateKey, '--passphrase-file', image.passphraseFile, '--tang', `http://${TANG_GUEST_ADDRESS}`, '--recovery-key-out', recoveryFile, '--json',
        // Rebuilding the initramfs for a new dropbear key takes minutes under TCG; unit tests cover that step.
        '--dropbear', 'keep'], { all: true, reject: false });
      process.stderr.write(`nbde: enroll took ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
      expect(enrolled.exitCode, enrolled.all).toBe(0);
      const report = JSON.parse(enrolled.stdout) as {
        keyslotsBefore: number[];
        keyslotsAfter: number[];
        volumeKeyChanged: boolean;
        tang: { slot: number; servers: Array<{ url: string; thumbprints: string[] }> };
      };
      // The binding trusts the new Tang's signing key (tangd-keygen names key files by thumbprint).
      expect(report.tang.servers.map((s) => s.url)).toEqual([`http://${TANG_GUEST_ADDRESS}`]);
      expect(await readdir(newTang.keyDir)).toContain(`${report.tang.servers[0]!.thumbprints[0]}.jwk`);
      expect(report.keyslotsBefore).toEqual([0, 1]);
      expect(report.volumeKeyChanged).toBe(true);
      // The Tang slot and the recovery slot (cryptsetup numbers them); the bootstrap one is gone (checked below).
      expect(report.keyslotsAfter).toHaveLength(2);
      expect(report.keyslotsAfter).toContain(report.tang.slot);
      expect((await stat(recoveryFile)).mode & 0o777).toBe(0o600);
      const recovery = (await readFile(recoveryFile, 'utf8')).trim();
      expect(enrolled.all).not.toContain(image.passphrase);
      expect(enrolled.all).not.toContain(recovery);

      // On the machine: bootstrap refused, recovery accepted, volume key differs from the image's.
      const device = (await vm.ssh("cryptsetup status cryptroot | awk '/device:/ {print $2}'")).output.trim();
      expect((await vm.ssh(`cryptsetup open --test-passphrase --key-file - ${device}`, image.passphrase)).exitCode).not.toBe(0);
      expect((await vm.ssh(`cryptsetup open --test-passphrase --key-file - ${device}`, recovery)).exitCode).toBe(0);
      const template = await dumpVolumeKey(await extractPartition(image.raw, await rootPartition(), join(vm.dir, 'header'), 16 * 1024 * 1024), image.passphraseFile);
      const machineKey = (await vm.ssh(`cryptsetup luksDump --dump-volume-key --batch-mode --key-file - ${device} | sed -n '/MK dump:/,$p' | sed 's/MK dump://' | tr -d ' \\t\\n'`, recovery)).output.trim();
      expect(machineKey).toMatch(/^[0-9a-f]{128}$/);
      expect(machineKey).not.toBe(template.key.toString('hex'));

      await vm.ssh('systemctl poweroff');
      await vm.stop();
      const requestsBefore = (await readFile(tangLog, 'utf8')).length;
      await vm.boot({ keyDir: newTang.keyDir, logFile: tangLog });
      const seconds = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
      process.stderr.write(`nbde: after enrollment, keyless boot reached OpenSSH after ${seconds} s\n`);
      await expectEncryptedRoot(vm);
      // This boot's own key recovery, answered by the new Tang.
      expect((await readFile(tangLog, 'utf8')).slice(requestsBefore)).toMatch(/POST \/rec\/\S+ => 200/);
    } finally {
      await vm.stop();
    }
  });
});

async function rootPartition() {
  const manifest = JSON.parse(await readFile(image.manifestFile, 'utf8')) as { partitions: Array<{ label: string; startBytes: number; sizeBytes: number }> };
  return manifest.partitions.find((p) => p.label === 'keylessgo-root')!;
}
