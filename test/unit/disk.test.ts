/** Disk layout and the BIOS GRUB install, on plain temp files. */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { losetupArgs } from '../../src/host/loop.js';
import { earlyGrubConfig, espDirectories, installBiosGrub, mkfsVfatArgs, SIGNED_EFI_CHAIN, SIGNED_GRUB_CONFIG } from '../../src/stages/bootloader.js';
import { bootModes } from '../../src/stages/export.js';
import { PARTITION_TYPES } from '../../src/formats/gpt.js';
import { gptBackupBytes, partitionByRole, partitionLayout, sfdiskScript } from '../../src/stages/partition.js';
import { IDS, recipeWith, tempDir } from './helpers.js';

const MiB = 1024 ** 2;
const SECTOR = 512;
/** Offset of the first byte where `a` and `b` differ, or -1 (fast on MiB-sized buffers, unlike toEqual). */
function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return Math.min(a.length, b.length);
}

const disk = (yaml = '') => recipeWith(yaml ? `disk: {${yaml}}\n` : '').disk;

describe('partitionLayout', () => {
  it('lays out the default disk: BIOS boot, ESP, /boot, then root to the last whole MiB', () => {
    expect(partitionLayout(disk())).toEqual({
      diskBytes: 3072 * MiB,
      sectorSize: 512,
      partitions: [
        { role: 'bios', number: 1, label: 'keylessgo-bios', startBytes: 1 * MiB, sizeBytes: 1 * MiB },
        { role: 'esp', number: 2, label: 'keylessgo-esp', startBytes: 2 * MiB, sizeBytes: 64 * MiB },
        { role: 'boot', number: 3, label: 'keylessgo-boot', startBytes: 66 * MiB, sizeBytes: 384 * MiB },
        { role: 'root', number: 4, label: 'keylessgo-root', startBytes: 450 * MiB, sizeBytes: 2621 * MiB },
      ],
    });
  });

  it.each(['', 'size: 1GiB, esp: 32MiB, boot: 128MiB', 'size: 2049MiB, esp: 100MiB, boot: 1GiB', 'size: 16GiB'])(
    'keeps partitions MiB-aligned, adjacent and clear of the backup GPT (%s)',
    (yaml) => {
      const layout = partitionLayout(disk(yaml));
      let end = MiB; // the primary GPT and alignment gap
      for (const p of layout.partitions) {
        expect(p.startBytes % MiB, `${p.label} start`).toBe(0);
        expect(p.sizeBytes % MiB, `${p.label} size`).toBe(0);
        expect(p.startBytes, `${p.label} follows the previous partition`).toBe(end);
        end = p.startBytes + p.sizeBytes;
      }
      expect(end).toBeLessThanOrEqual(layout.diskBytes - 33 * SECTOR);
      expect(layout.diskBytes - end).toBeLessThan(MiB + 33 * SECTOR);
    },
  );

  it('partitionByRole finds each partition', () => {
    const layout = partitionLayout(disk());
    expect(Object.keys(PARTITION_TYPES).map((role) => partitionByRole(layout, role as keyof typeof PARTITION_TYPES).number)).toEqual([1, 2, 3, 4]);
  });
});

describe('sfdiskScript', () => {
  it('writes a GPT in sectors with the type GUIDs and labels', () => {
    expect(sfdiskScript(partitionLayout(disk())).split('\n')).toEqual([
      'label: gpt',
      'first-lba: 2048',
      'start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name="keylessgo-bios"',
      'start=4096, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="keylessgo-esp"',
      'start=135168, size=786432, type=BC13C2FF-59E6-4262-A352-B275FD6F7172, name="keylessgo-boot"',
      'start=921600, size=5367808, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="keylessgo-root"',
      '',
    ]);
  });

  it("gives the disk and every partition the build's GUIDs (sfdisk would draw them at random)", () => {
    const lines = sfdiskScript(partitionLayout(disk()), IDS).split('\n');
    expect(lines.slice(0, 3)).toEqual(['label: gpt', `label-id: ${IDS.diskGuid}`, 'first-lba: 2048']);
    expect(lines[3]).toBe(`start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, uuid=${IDS.partitionUuids.bios}, name="keylessgo-bios"`);
    expect(lines.filter((line) => line.includes(`uuid=${IDS.partitionUuids.root}`))).toHaveLength(1);
  });
});

describe('4Kn disks (disk.sectorSize 4096)', () => {
  it('lay out the same partitions, clear of the 4Kn backup GPT (5 sectors of 4096 bytes)', () => {
    const layout = partitionLayout(disk('sectorSize: 4096, esp: 260MiB'));
    expect(layout.sectorSize).toBe(4096);
    expect(layout.partitions.map((p) => [p.label, p.startBytes / MiB, p.sizeBytes / MiB])).toEqual([
      ['keylessgo-bios', 1, 1],
      ['keylessgo-esp', 2, 260],
      ['keylessgo-boot', 262, 384],
      ['keylessgo-root', 646, 3071 - 646],
    ]);
    expect(gptBackupBytes(4096)).toBe(5 * 4096);
    expect(gptBackupBytes(512)).toBe(33 * 512);
  });

  it('get a GPT in 4096-byte sectors, written through a loop device of that sector size', () => {
    expect(sfdiskScript(partitionLayout(disk('sectorSize: 4096, esp: 260MiB'))).split('\n').slice(0, 4)).toEqual([
      'label: gpt',
      'first-lba: 256',
      'start=256, size=256, type=21686148-6449-6E6F-744E-656564454649, name="keylessgo-bios"',
      'start=512, size=66560, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="keylessgo-esp"',
    ]);
    expect(losetupArgs('disk.raw', 4096)).toEqual(['--find', '--show', '--partscan', '--sector-size', '4096', 'disk.raw']);
  });

  it('get a FAT32 ESP with 4096-byte sectors', () => {
    expect(mkfsVfatArgs('/dev/loop0p2', 4096, 'A1B2C3D4')).toEqual(['-F', '32', '-S', '4096', '-s', '1', '-n', 'ESP', '-i', 'A1B2C3D4', '/dev/loop0p2']);
    expect(mkfsVfatArgs('/dev/loop0p2', 512, 'A1B2C3D4')).toContain('512');
  });

  it('boot with UEFI only (BIOS cannot boot from 4Kn disks)', () => {
    expect(bootModes(disk('sectorSize: 4096, esp: 260MiB'))).toEqual(['uefi']);
    expect(bootModes(disk())).toEqual(['uefi', 'bios']);
  });
});

describe('the ESP with Debian\'s signed chain', () => {
  it('puts shim at the removable path with the signed GRUB and MokManager beside it, and no fallback', () => {
    expect(SIGNED_EFI_CHAIN.map(([, esp]) => esp)).toEqual(['EFI/BOOT/BOOTX64.EFI', 'EFI/BOOT/grubx64.efi', 'EFI/BOOT/mmx64.efi']);
    expect(SIGNED_EFI_CHAIN.map(([tree]) => tree).join(' ')).not.toMatch(/fbx64/);
    expect(SIGNED_GRUB_CONFIG).toBe('EFI/debian/grub.cfg');
  });

  it('creates each directory once, parents first', () => {
    expect(espDirectories([...SIGNED_EFI_CHAIN.map(([, esp]) => esp), SIGNED_GRUB_CONFIG])).toEqual(['EFI', 'EFI/BOOT', 'EFI/debian']);
  });
});

describe('installBiosGrub', () => {
  const CORE_SECTOR = 2048;
  const REGION = MiB;

  /** A 2 MiB "disk" of random bytes (standing in for a partition table), boot.img and core.img. */
  async function fixture(coreBytes = 5 * SECTOR) {
    const device = join(await tempDir(), 'disk.raw');
    const before = randomBytes(2 * MiB);
    await writeFile(device, before);
    return { device, before, bootImg: randomBytes(SECTOR), coreImg: randomBytes(coreBytes) };
  }

  it('writes core.img at its sector, pointing its blocklist at the next sector', async () => {
    const { device, bootImg, coreImg } = await fixture();
    await installBiosGrub(device, bootImg, coreImg, CORE_SECTOR, REGION);
    const after = await readFile(device);
    const written = after.subarray(CORE_SECTOR * SECTOR, CORE_SECTOR * SECTOR + coreImg.length);
    expect(written.readBigUInt64LE(500)).toBe(BigInt(CORE_SECTOR + 1));
    // Everything but the 8-byte blocklist start is core.img unchanged.
    expect(Buffer.concat([written.subarray(0, 500), written.subarray(508)])).toEqual(Buffer.concat([coreImg.subarray(0, 500), coreImg.subarray(508)]));
  });

  it('writes the first 440 bytes of boot.img with the core sector at 0x5c, keeping the partition table', async () => {
    const { device, before, bootImg, coreImg } = await fixture();
    await installBiosGrub(device, bootImg, coreImg, CORE_SECTOR, REGION);
    const mbr = (await readFile(device)).subarray(0, SECTOR);
    expect(mbr.readBigUInt64LE(0x5c)).toBe(BigInt(CORE_SECTOR));
    expect(mbr.subarray(0, 0x5c)).toEqual(bootImg.subarray(0, 0x5c));
    expect(mbr.subarray(0x64, 440)).toEqual(bootImg.subarray(0x64, 440));
    expect(mbr.subarray(440)).toEqual(before.subarray(440, SECTOR));
  });

  it('leaves every other byte of the disk alone', async () => {
    const { device, before, bootImg, coreImg } = await fixture();
    await installBiosGrub(device, bootImg, coreImg, CORE_SECTOR, REGION);
    const after = await readFile(device);
    expect(after.length).toBe(before.length);
    const coreEnd = CORE_SECTOR * SECTOR + coreImg.length;
    expect(firstDifference(after.subarray(SECTOR, CORE_SECTOR * SECTOR), before.subarray(SECTOR, CORE_SECTOR * SECTOR))).toBe(-1);
    expect(firstDifference(after.subarray(coreEnd), before.subarray(coreEnd))).toBe(-1);
  });

  it('does not modify the caller\'s buffers', async () => {
    const { device, bootImg, coreImg } = await fixture();
    const [bootCopy, coreCopy] = [Buffer.from(bootImg), Buffer.from(coreImg)];
    await installBiosGrub(device, bootImg, coreImg, CORE_SECTOR, REGION);
    expect([bootImg, coreImg]).toEqual([bootCopy, coreCopy]);
  });

  it('refuses a core.img larger than the BIOS boot partition and writes nothing', async () => {
    const { device, before, bootImg } = await fixture();
    await expect(installBiosGrub(device, bootImg, randomBytes(REGION + 1), CORE_SECTOR, REGION)).rejects.toThrow(
      `GRUB core.img (${REGION + 1} bytes) does not fit the BIOS boot partition (${REGION} bytes)`,
    );
    expect(firstDifference(await readFile(device), before)).toBe(-1);
  });
});

describe('earlyGrubConfig', () => {
  it('finds /boot by filesystem UUID and runs its grub.cfg', () => {
    expect(earlyGrubConfig(IDS.bootFsUuid)).toBe(
      `search --no-floppy --fs-uuid --set=root ${IDS.bootFsUuid}\nset prefix=($root)'/grub'\nconfigfile $prefix/grub.cfg\n`,
    );
  });
});
