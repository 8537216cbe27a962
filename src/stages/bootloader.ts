/**
 * bootloader: the /boot filesystem, the ESP and GRUB for UEFI and BIOS on the same disk.
 * GRUB images are made with the image's own grub-mkimage (versions match its modules);
 * the BIOS core.img goes into the BIOS boot partition and boot.img into the MBR, patched
 * as grub-bios-setup would. The ESP is written with mtools (no vfat mount needed).
 *
 * Host commands: mkfs.ext4, dumpe2fs, mkfs.vfat, mmd, mcopy, mdir, chroot (grub-mkimage), cp.
 */
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BuildContext } from '../pipeline/context.js';
import { ext4UsedBytes, mkfsExt4Args } from '../host/ext4.js';
import type { Stage } from '../pipeline/stage.js';
import { bootTreeDir, partitionByRole } from './partition.js';

// Built into the GRUB images so that /boot is found and grub.cfg runs without loading modules first.
const COMMON_MODULES = ['part_gpt', 'ext2', 'search', 'search_fs_uuid', 'configfile', 'normal', 'linux', 'echo', 'test', 'serial', 'terminal', 'gzio', 'sleep'];
export const GRUB_TARGETS = {
  efi: { format: 'x86_64-efi', modules: [...COMMON_MODULES, 'fat', 'efi_gop', 'all_video'] },
  bios: { format: 'i386-pc', modules: [...COMMON_MODULES, 'biosdisk'] },
} as const;

/** The config built into both GRUB images: find /boot by filesystem UUID, then run its grub.cfg. */
export function earlyGrubConfig(bootFsUuid: string): string {
  return [`search --no-floppy --fs-uuid --set=root ${bootFsUuid}`, "set prefix=($root)'/grub'", 'configfile $prefix/grub.cfg', ''].join('\n');
}

// Offsets from GRUB's boot.S / diskboot.S: where boot.img keeps core.img's first sector, and
// where diskboot.img (core.img's first sector) keeps the start of the rest of core.img.
const BOOT_IMG_CODE_BYTES = 440;
const BOOT_IMG_KERNEL_SECTOR = 0x5c;
const DISKBOOT_BLOCKLIST_START = 0x200 - 12;

/** Writes boot.img into the MBR (keeping the partition table) and core.img at `coreSector`. */
export async function installBiosGrub(device: string, bootImg: Buffer, coreImg: Buffer, coreSector: number, regionBytes: number): Promise<void> {
  if (coreImg.length > regionBytes) throw new Error(`GRUB core.img (${coreImg.length} bytes) does not fit the BIOS boot partition (${regionBytes} bytes)`);
  const core = Buffer.from(coreImg);
  core.writeBigUInt64LE(BigInt(coreSector + 1), DISKBOOT_BLOCKLIST_START);
  const mbr = Buffer.from(bootImg.subarray(0, BOOT_IMG_CODE_BYTES));
  mbr.writeBigUInt64LE(BigInt(coreSector), BOOT_IMG_KERNEL_SECTOR);
  const handle = await open(device, 'r+');
  try {
    await handle.write(core, 0, core.length, coreSector * 512);
    await handle.write(mbr, 0, mbr.length, 0);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function makeGrubImage(ctx: BuildContext, target: keyof typeof GRUB_TARGETS, configInImage: string): Promise<Buffer> {
  const { format, modules } = GRUB_TARGETS[target];
  const output = `/tmp/keylessgo-grub-${format}.img`;
  // The prefix is replaced by the early config once /boot is found.
  await ctx.host.run('chroot', [ctx.rootfs, 'grub-mkimage', '-O', format, '-o', output, '-p', '/grub', '-c', configInImage, ...modules]);
  const image = await readFile(join(ctx.rootfs, output));
  await rm(join(ctx.rootfs, output));
  return image;
}

export const bootloaderStage: Stage = {
  name: 'bootloader',
  summary: '/boot, ESP and GRUB for UEFI and BIOS',
  hostTools: () => ['mkfs.ext4', 'dumpe2fs', 'mkfs.vfat', 'mmd', 'mcopy', 'mdir', 'chroot', 'cp'],
  async run(ctx) {
    const loop = ctx.state.loop!;
    const layout = ctx.state.layout!;
    const bootTree = bootTreeDir(ctx);

    const configInImage = '/tmp/keylessgo-grub-early.cfg';
    await writeFile(join(ctx.rootfs, configInImage), earlyGrubConfig(ctx.ids.bootFsUuid));
    const efiImage = await makeGrubImage(ctx, 'efi', configInImage);
    const coreImage = await makeGrubImage(ctx, 'bios', configInImage);
    await rm(join(ctx.rootfs, configInImage));

    // Modules beyond the built-in ones load from /boot/grub/<platform>.
    for (const { format } of Object.values(GRUB_TARGETS)) {
      await ctx.host.run('cp', ['-a', join(ctx.rootfs, 'usr/lib/grub', format), join(bootTree, 'grub', format)]);
    }
    const boot = partitionByRole(layout, 'boot');
    await ctx.host.run('mkfs.ext4', mkfsExt4Args({ image: loop.partition(boot.number), tree: bootTree, label: 'boot', uuid: ctx.ids.bootFsUuid }));

    const esp = loop.partition(partitionByRole(layout, 'esp').number);
    await ctx.host.run('mkfs.vfat', ['-F', '32', '-s', '1', '-n', 'ESP', '-i', ctx.ids.espVolumeId, esp]);
    const scratch = await mkdtemp(join(ctx.workDir, 'esp-'));
    const efiFile = join(scratch, 'BOOTX64.EFI');
    await writeFile(efiFile, efiImage);
    await ctx.host.run('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT']);
    await ctx.host.run('mcopy', ['-i', esp, efiFile, '::/EFI/BOOT/BOOTX64.EFI']);

    const espFree = Number(/([\d ]+) bytes free/.exec(await ctx.host.run('mdir', ['-i', esp, '::/']))?.[1]?.replaceAll(' ', ''));
    ctx.state.usedBytes = {
      ...ctx.state.usedBytes,
      boot: await ext4UsedBytes(ctx.host, loop.partition(boot.number)),
      esp: partitionByRole(layout, 'esp').sizeBytes - espFree,
    };

    const bios = partitionByRole(layout, 'bios');
    const bootImg = await readFile(join(ctx.rootfs, 'usr/lib/grub/i386-pc/boot.img'));
    await installBiosGrub(loop.device, bootImg, coreImage, bios.startBytes / 512, bios.sizeBytes);
    ctx.log.info(`      BOOTX64.EFI ${efiImage.length} bytes, BIOS core.img ${coreImage.length} bytes`);
  },
};
