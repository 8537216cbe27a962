/**
 * Ironic's config drive on the fixture image, with IPA's own disk commands re-enacted on
 * copies of it (test/e2e/ipa.ts), then one boot:
 *
 *   - disk level: on a disk of the image's size + 64 MiB IPA's commands succeed (the root
 *     leaves ~1 MiB of alignment free at the end); on the image's own size sgdisk exits 4.
 *   - boot, two NICs (the first connected to nothing), from a disk 1 GiB larger than the
 *     image with IPA's config drive after the root,
 *     whose network_data.json gives the NIC's MAC 10.0.2.50/24 (QEMU's DHCP would give .15):
 *     the initramfs answers SSH on 10.0.2.50 (the forward goes there only), the booted system
 *     has that address, no DHCP lease, the drive's host name and its root key; the root grew
 *     up to the config drive, which is still byte for byte the ISO.
 */
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { USER_NIC_MAC } from '../../src/qemu/vm.js';
import { CONFIG_DRIVE_MIB, deployConfigDrive, makeConfigDrive } from './ipa.js';
import { TestVm } from './vm-session.js';

const image = inject('image');
const BOOT_TIMEOUT_MS = 10 * 60 * 1000;
const MiB = 1024 * 1024;
const STATIC_ADDRESS = '10.0.2.50';
const HOSTNAME = 'node-from-config-drive';
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(image.dir, 'ironic-'));
});

afterAll(async () => {
  if (!process.env.KEYLESSGO_KEEP_FIXTURE) await rm(dir, { recursive: true, force: true });
});

/** A copy of the raw image on a disk of `extraBytes` more (sparse: only the image's data is written). */
async function diskCopy(name: string, extraBytes: number): Promise<string> {
  const disk = join(dir, name);
  await execa('cp', ['--sparse=always', image.raw, disk]);
  await truncate(disk, (await stat(image.raw)).size + extraBytes);
  return disk;
}

const NETWORK_DATA = {
  links: [{ id: 'port0', type: 'phy', ethernet_mac_address: USER_NIC_MAC.toUpperCase(), mtu: 1500 }],
  networks: [
    {
      id: 'provisioning',
      type: 'ipv4',
      link: 'port0',
      ip_address: STATIC_ADDRESS,
      netmask: '255.255.255.0',
      routes: [{ network: '0.0.0.0', netmask: '0.0.0.0', gateway: '10.0.2.2' }],
    },
  ],
  services: [{ type: 'dns', address: '10.0.2.3' }],
};

describe("Ironic's config drive, IPA's commands re-enacted", () => {
  it('deploys on a disk of the image plus 64 MiB, and fails as IPA does on the image size alone', async () => {
    const iso = await makeConfigDrive(dir, { uuid: 'disk-level', hostname: 'x' }, { links: [], networks: [] });
    const fits = await deployConfigDrive(await diskCopy('plus-64mib.raw', CONFIG_DRIVE_MIB * MiB), iso);
    expect(fits).toMatchObject({ partition: 5, reused: false });
    const tooSmall = deployConfigDrive(await diskCopy('exact.raw', 0), iso);
    await expect(tooSmall).rejects.toMatchObject({ exitCode: 4 });
  });

  it('boots with the config drive: static address in the initramfs and after, host name, key; root grown up to the drive, drive intact', async () => {
    const key = join(dir, 'config-drive-key');
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'from-config-drive', '-f', key]);
    const publicKey = (await readFile(`${key}.pub`, 'utf8')).trim();
    const iso = await makeConfigDrive(dir, { uuid: 'boot', hostname: HOSTNAME, public_keys: { ironic: publicKey } }, NETWORK_DATA);
    const disk = await diskCopy('plus-1gib.raw', 1024 * MiB);
    const deployed = await deployConfigDrive(disk, iso);
    expect(deployed.commands.map((c) => c.slice(0, 2))).toEqual([['sgdisk', '-e'], ['sgdisk', '-n']]);
    const isoBytes = await readFile(iso);

    const vm = await TestVm.create(image, join(dir, 'boot'), disk);
    try {
      // Behind a NIC connected to nothing: the drive's network finds its NIC by MAC (eth1), not by name.
      await vm.boot(undefined, { nics: 2, guestAddress: STATIC_ADDRESS });
      // The forward reaches 10.0.2.50 only: dropbear answering proves the initramfs took the drive's address.
      const dropbear = await vm.waitFor(/dropbear/, BOOT_TIMEOUT_MS);
      const unlock = await vm.ssh('cryptroot-unlock', image.passphrase);
      expect(unlock.output).toMatch(/set up successfully/);
      const unlocked = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
      process.stderr.write(`ironic: dropbear on ${STATIC_ADDRESS} after ${dropbear} s, OpenSSH after ${unlocked} s\n`);

      // Logged in with the drive's key (the image's own key is in root's authorized_keys too).
      const facts = (await vm.ssh(
        'hostname; ip -o -4 address show; ls /run/systemd/netif/leases/ | wc -l; ' +
          'ls /run/systemd/network/; resolvectl dns eth1; ' +
          'for p in 4 5; do echo "vda$p $(cat /sys/class/block/vda$p/start) $(cat /sys/class/block/vda$p/size)"; done; ' +
          `head -c ${isoBytes.length} /dev/vda${deployed.partition} | sha256sum`,
        undefined,
        await readFile(key, 'utf8'),
      )).output;
      expect(facts).toMatch(new RegExp(`^${HOSTNAME}$`, 'm'));
      expect(facts).toMatch(new RegExp(`eth1\\s+inet ${STATIC_ADDRESS.replaceAll('.', '\\.')}/24 `));
      expect(facts).not.toMatch(/inet 10\.0\.2\.15\//);
      expect(facts).toMatch(/^0$/m);
      expect(facts).toContain(`10-keylessgo-config-drive-${USER_NIC_MAC.replaceAll(':', '')}.network`);
      expect(facts).toMatch(/eth1\): 10\.0\.2\.3/);

      // The root (vda4) grew by the disk's extra GiB less the drive, up to where the config drive (vda5) starts (MiB-aligned).
      const [root, drive] = [4, 5].map((n) => facts.match(new RegExp(`^vda${n} (\\d+) (\\d+)$`, 'm'))!.slice(1).map(Number)) as [number[], number[]];
      const gap = drive[0]! - (root[0]! + root[1]!);
      expect(gap).toBeGreaterThanOrEqual(0);
      expect(gap).toBeLessThan(2048);
      const imageRoot = (JSON.parse((await execa('sfdisk', ['--json', image.raw])).stdout) as { partitiontable: { partitions: Array<{ size: number }> } }).partitiontable.partitions[3]!.size;
      expect(root[1]).toBeGreaterThanOrEqual(imageRoot + (1024 - CONFIG_DRIVE_MIB - 2) * 2048);
      // ext4 followed (keylessgo-grow-root.service): larger than the whole root partition of the image.
      expect(Number((await vm.ssh('df -B1 --output=size / | tail -1')).output.trim())).toBeGreaterThan(imageRoot * 512);
      expect(facts).toContain(createHash('sha256').update(isoBytes).digest('hex'));
    } finally {
      await vm.stop();
    }
  });
});
