/**
 * Network Bound Disk Encryption, proven by booting (nothing mocked): the fixture image is
 * bound at build time to a test Tang server that only the VM can reach (QEMU guestfwd).
 *
 *   1. Power cut: Tang comes up only 60 s after the machine (it closes every connection
 *      until then); the machine keeps asking and boots to a running system with no SSH input
 *      at all, and the Tang log shows the key recovery request.
 *   2. Tang unreachable: no unlock by itself; SSH unlock via dropbear still works. That is
 *      every boot in boot.test.ts, which serves no Tang to the same bound image.
 *   3. Enrollment (`enroll --tang --tpm2`, then keyless reboots): unlock-policy.test.ts.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { pollUntil } from '../../src/qemu/wait.js';
import { connectionTimes } from './tang.js';
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
