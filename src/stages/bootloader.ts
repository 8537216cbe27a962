/**
 * bootloader: the /boot filesystem, the ESP and GRUB for UEFI and BIOS on the same disk.
 * UEFI, with boot.secureBoot (the default): Debian's signed chain from the image's own
 * packages, shim as the removable-path loader EFI/BOOT/BOOTX64.EFI, the signed GRUB and
 * MokManager beside it; it boots with Secure Boot on or off. Without: a GRUB made with the
 * image's grub-mkimage as BOOTX64.EFI. BIOS: core.img from grub-mkimage goes into the BIOS
 * boot partition and boot.img into the MBR, patched as grub-bios-setup would (not on disks
 * with 4096-byte sectors, which BIOS cannot boot). The ESP is written with mtools (no vfat
 * mount needed).
 *
 * Reproducible plaintext: /boot's times are clamped to SOURCE_DATE_EPOCH, mkfs.ext4 and mtools
 * run with it as their clock, and the build's UUIDs and hash seed; the digests of the disk's
 * start (MBR, GPT, BIOS boot), /boot (its initramfs's per-build archive left out) and the ESP go
 * to the manifest.
 *
 * Host commands: du, mkfs.ext4, dumpe2fs, debugfs, mkfs.vfat, mlabel, mmd, mcopy, mdir, chroot (grub-mkimage), cp.
 */
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import type { BuildContext } from '../pipeline/context.js';
import { ext4FileRanges, ext4SetTimes, ext4TimeEnv, mkfsExt4Args, usedBytesFromSuperblock, usedInodesFromDumpe2fs, usedRangesFromDumpe2fs } from '../host/ext4.js';
import { clampTimes } from '../base/tree.js';
import { sha256File } from '../pipeline/sparse-sha256.js';
import { defineStage } from '../pipeline/stage.js';
import { bootTreeDir, checkBootFits, partitionByRole } from './partition.js';

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

/**
 * Debian's signed chain, as installed in the image: [path in the tree, name on the ESP].
 * fbx64.efi (shim's fallback) is left out on purpose: beside BOOTX64.EFI shim would run it on
 * every boot from the removable path, to create firmware boot entries from BOOTX64.CSV files.
 * An image is written to many machines; its boot entry belongs to whoever deploys it (Ironic's
 * manage_uefi registers EFI/BOOT/BOOTX64.EFI itself), and there is no CSV to act on.
 */
export const SIGNED_EFI_CHAIN: ReadonlyArray<[tree: string, esp: string]> = [
  ['usr/lib/shim/shimx64.efi.signed', 'EFI/BOOT/BOOTX64.EFI'],
  ['usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed', 'EFI/BOOT/grubx64.efi'],
  ['usr/lib/shim/mmx64.efi.signed', 'EFI/BOOT/mmx64.efi'],
];
/** In the image (base overlay): keeps the booted machine's ESP in step with the boot loader packages. */
export const ESP_SYNC = '/usr/lib/keylessgo/esp-sync';

/**
 * The signed chain in the order a booted machine replaces it on the ESP (esp-sync in the
 * base overlay): shim last. The old shim accepts a newer GRUB, while a newer shim (a new SBAT
 * level) may refuse the old GRUB, so every point in between boots.
 */
export const SIGNED_EFI_REPLACE_ORDER: ReadonlyArray<[tree: string, esp: string]> = [
  ...SIGNED_EFI_CHAIN.filter(([, esp]) => esp !== 'EFI/BOOT/BOOTX64.EFI'),
  ...SIGNED_EFI_CHAIN.filter(([, esp]) => esp === 'EFI/BOOT/BOOTX64.EFI'),
];

/**
 * Debian's signed GRUB is one image with its modules and an early config built in; its prefix
 * is /EFI/debian on the ESP. That config sources $prefix/grub.cfg when the directory exists;
 * otherwise it searches every disk for /.disk/info (an installer medium attached would win)
 * before falling back to grub.cfg beside the loader. So the config goes to EFI/debian only.
 */
export const SIGNED_GRUB_CONFIG = 'EFI/debian/grub.cfg';

/** What each file on the ESP is, for the SBOM. */
function espFileComment(path: string, secureBoot: boolean): string {
  const comments: Record<string, string> = {
    'EFI/BOOT/BOOTX64.EFI': secureBoot ? 'shim, the UEFI loader on the removable path (signed by Microsoft)' : "GRUB for UEFI, made with the image's grub-mkimage (unsigned)",
    'EFI/BOOT/grubx64.efi': 'GRUB for UEFI (signed by Debian)',
    'EFI/BOOT/mmx64.efi': 'MokManager (signed by Debian)',
    [SIGNED_GRUB_CONFIG]: "the signed GRUB's config: finds /boot by UUID and runs its grub.cfg",
  };
  return comments[path] ?? 'a file on the ESP';
}

/** The files to put on the ESP (host path → ESP path) for UEFI boot. */
async function efiFiles(ctx: BuildContext, configInImage: string, scratch: string): Promise<Array<[from: string, to: string]>> {
  if (!ctx.recipe.boot.secureBoot) {
    const grub = join(scratch, 'BOOTX64.EFI');
    await writeFile(grub, await makeGrubImage(ctx, 'efi', configInImage));
    return [[grub, 'EFI/BOOT/BOOTX64.EFI']];
  }
  const config = join(scratch, 'grub.cfg');
  await writeFile(config, earlyGrubConfig(ctx.ids.bootFsUuid));
  return [...SIGNED_EFI_CHAIN.map(([tree, esp]): [string, string] => [join(ctx.rootfs, tree), esp]), [config, SIGNED_GRUB_CONFIG]];
}

const ESP_LABEL = 'ESP';

/** mkfs.vfat arguments: FAT32 with one sector per cluster, sectors as the disk's. */
export function mkfsVfatArgs(device: string, sectorSize: number, volumeId: string): string[] {
  return ['-F', '32', '-S', String(sectorSize), '-s', '1', '-n', ESP_LABEL, '-i', volumeId, device];
}

/** The directories `mmd` must create, parents first, for files at `paths` on the ESP. */
export function espDirectories(paths: readonly string[]): string[] {
  const dirs = new Set<string>();
  for (const path of paths) {
    const parts = path.split('/').slice(0, -1);
    for (let depth = 1; depth <= parts.length; depth++) dirs.add(parts.slice(0, depth).join('/'));
  }
  return [...dirs];
}

export const bootloaderStage = defineStage({
  name: 'bootloader',
  summary: '/boot, ESP and GRUB for UEFI and BIOS',
  // The initramfs must be on /boot; the root partition (encrypt, nbde) is not touched here.
  needs: ['layout', 'loop', 'initramfsAppended', 'kernelVersion', 'sourceDateEpoch'],
  produces: ['bootUsedBytes', 'bootPlaintext', 'espFiles'],
  hostTools: () => ['du', 'mkfs.ext4', 'dumpe2fs', 'debugfs', 'mkfs.vfat', 'mlabel', 'mmd', 'mcopy', 'mdir', 'chroot', 'cp'],
  async run(ctx) {
    const epoch = ctx.state.sourceDateEpoch.seconds;
    const loop = ctx.state.loop;
    const layout = ctx.state.layout;
    const bootTree = bootTreeDir(ctx);
    await checkBootFits(ctx);
    // The mount point of the ESP.
    await mkdir(join(bootTree, 'efi'), { recursive: true, mode: 0o755 });

    const bios = ctx.recipe.disk.sectorSize === 512;
    const scratch = await mkdtemp(join(ctx.workDir, 'esp-'));
    const configInImage = '/tmp/keylessgo-grub-early.cfg';
    await writeFile(join(ctx.rootfs, configInImage), earlyGrubConfig(ctx.ids.bootFsUuid));
    const efi = await efiFiles(ctx, configInImage, scratch);
    ctx.state.espFiles = efi.map(([from, to]) => ({
      path: to,
      source: from,
      treePath: from.startsWith(`${ctx.rootfs}/`) ? relative(ctx.rootfs, from) : undefined,
      comment: espFileComment(to, ctx.recipe.boot.secureBoot),
    }));
    const coreImage = bios ? await makeGrubImage(ctx, 'bios', configInImage) : undefined;
    await rm(join(ctx.rootfs, configInImage));

    // Modules beyond the built-in ones load from /boot/grub/<platform>.
    for (const { format } of Object.values(GRUB_TARGETS)) {
      await ctx.host.run('cp', ['-a', join(ctx.rootfs, 'usr/lib/grub', format), join(bootTree, 'grub', format)]);
    }
    await clampTimes(bootTree, epoch);
    const boot = partitionByRole(layout, 'boot');
    const bootDevice = loop.partition(boot.number);
    await ctx.host.run('mkfs.ext4', mkfsExt4Args({ image: bootDevice, tree: bootTree, label: 'boot', uuid: ctx.ids.bootFsUuid, hashSeed: ctx.ids.bootHashSeed }), { env: ext4TimeEnv(epoch) });
    const bootDump = await ctx.host.run('dumpe2fs', [bootDevice]);
    await ext4SetTimes(ctx.host, bootDevice, epoch, usedInodesFromDumpe2fs(bootDump), join(scratch, 'boot-times.debugfs'));

    const espPartition = partitionByRole(layout, 'esp');
    const esp = loop.partition(espPartition.number);
    // mtools dates what it writes SOURCE_DATE_EPOCH; mkfs.vfat dates the volume label "now", so mlabel writes it again.
    const mtools = { env: { SOURCE_DATE_EPOCH: String(epoch) } };
    await ctx.host.run('mkfs.vfat', mkfsVfatArgs(esp, layout.sectorSize, ctx.ids.espVolumeId));
    await ctx.host.run('mlabel', ['-i', esp, `::${ESP_LABEL}`], mtools);
    await ctx.host.run('mmd', ['-i', esp, ...espDirectories(efi.map(([, to]) => to)).map((dir) => `::/${dir}`)], mtools);
    for (const [from, to] of efi) await ctx.host.run('mcopy', ['-i', esp, from, `::/${to}`], mtools);

    const espFree = Number(/([\d ]+) bytes free/.exec(await ctx.host.run('mdir', ['-i', esp, '::/']))?.[1]?.replaceAll(' ', ''));
    ctx.state.bootUsedBytes = { boot: usedBytesFromSuperblock(bootDump), esp: espPartition.sizeBytes - espFree };

    const uefi = `UEFI: ${efi.map(([, to]) => to).join(', ')}`;
    if (coreImage) {
      const biosPartition = partitionByRole(layout, 'bios');
      const bootImg = await readFile(join(ctx.rootfs, 'usr/lib/grub/i386-pc/boot.img'));
      await installBiosGrub(loop.device, bootImg, coreImage, biosPartition.startBytes / 512, biosPartition.sizeBytes);
      ctx.log.info(`      ${uefi}; BIOS core.img ${coreImage.length} bytes`);
    } else {
      ctx.log.info(`      ${uefi}; no BIOS boot: BIOS cannot boot from disks with ${layout.sectorSize}-byte sectors (the BIOS boot partition stays empty)`);
    }

    // The initramfs's per-build archive (from its first block on) is left out of /boot's digest.
    const initrd = { path: `/initrd.img-${ctx.state.kernelVersion}`, fromByte: ctx.state.initramfsAppended.offset };
    const bootMasks = await ext4FileRanges(ctx.host, bootDevice, [initrd]);
    const [disk, bootFs, espFs] = await Promise.all([
      // The protective MBR with GRUB's boot.img, the GPT and the BIOS boot partition with core.img.
      sha256File(loop.device, undefined, { window: { start: 0, length: espPartition.startBytes } }),
      sha256File(bootDevice, usedRangesFromDumpe2fs(bootDump), { window: { start: 0, length: boot.sizeBytes }, masks: bootMasks, holes: 'skip' }),
      sha256File(esp, undefined, { window: { start: 0, length: espPartition.sizeBytes } }),
    ]);
    ctx.state.bootPlaintext = { disk, boot: bootFs, esp: espFs, perBuild: [`${initrd.path.slice(1)} from byte ${initrd.fromByte} (the initramfs's per-build archive)`] };
  },
});
