/**
 * partition: checks that the root tree fits, creates the sparse disk file (as *.partial),
 * writes the GPT and attaches it as a loop device with partition nodes. (/boot is checked by
 * bootloader: its initramfs is built meanwhile.)
 *
 * Host commands: losetup, sfdisk, partx; du for configure (rootTreeBytes).
 *
 * Partition labels are stable; post-deploy tooling finds partitions by them:
 *   keylessgo-bios  BIOS boot (GRUB core.img), 1 MiB
 *   keylessgo-esp   EFI system partition (FAT32, EFI/BOOT/BOOTX64.EFI)
 *   keylessgo-boot  /boot (ext4, not encrypted: kernel, initramfs, grub.cfg)
 *   keylessgo-root  LUKS2 holding the root ext4 (type: Linux root x86-64)
 */
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { LUKS_DATA_OFFSET_BYTES } from '../host/cryptsetup.js';
import { attachLoop } from '../host/loop.js';
import type { BuildContext, BuildIds } from '../pipeline/context.js';
import { defineStage } from '../pipeline/stage.js';
import type { Recipe } from '../recipe/schema.js';
import { formatSize, MiB } from '../recipe/size.js';
import { PARTITION_TYPES, type PartitionLayout, type PartitionRole, type PartitionSpec } from '../formats/gpt.js';

/** The backup GPT: a header sector and 128 entries of 128 bytes, at the end of the disk. */
export function gptBackupBytes(sectorSize: number): number {
  return sectorSize + 128 * 128;
}

export function partitionLayout(disk: Recipe['disk']): PartitionLayout {
  const sizes: Array<[PartitionRole, number]> = [
    ['bios', MiB],
    ['esp', disk.esp],
    ['boot', disk.boot],
  ];
  const partitions: PartitionSpec[] = [];
  let start = MiB;
  for (const [role, size] of sizes) {
    partitions.push({ role, number: partitions.length + 1, label: `keylessgo-${role}`, startBytes: start, sizeBytes: size });
    start += size;
  }
  // The root partition ends at the last whole MiB before the backup GPT.
  const rootEnd = Math.floor((disk.size - gptBackupBytes(disk.sectorSize)) / MiB) * MiB;
  partitions.push({ role: 'root', number: 4, label: 'keylessgo-root', startBytes: start, sizeBytes: rootEnd - start });
  return { diskBytes: disk.size, sectorSize: disk.sectorSize, partitions };
}

/**
 * sfdisk's input, in sectors of the device it is run on (a loop device with the layout's sector
 * size). With `ids`, the disk and partition GUIDs are the build's (sfdisk draws them at random).
 */
export function sfdiskScript(layout: PartitionLayout, ids?: Pick<BuildIds, 'diskGuid' | 'partitionUuids'>): string {
  const sector = layout.sectorSize;
  const lines = ['label: gpt', ...(ids ? [`label-id: ${ids.diskGuid}`] : []), `first-lba: ${MiB / sector}`];
  for (const p of layout.partitions) {
    const uuid = ids ? `, uuid=${ids.partitionUuids[p.role]}` : '';
    lines.push(`start=${p.startBytes / sector}, size=${p.sizeBytes / sector}, type=${PARTITION_TYPES[p.role]}${uuid}, name="${p.label}"`);
  }
  return `${lines.join('\n')}\n`;
}

export function partitionByRole(layout: PartitionLayout, role: PartitionRole): PartitionSpec {
  return layout.partitions.find((p) => p.role === role)!;
}

/** ext4 needs room beyond the files (metadata, journal, reserved blocks): measured on this pipeline. */
export function ext4BytesNeeded(usedBytes: number): number {
  return Math.ceil(usedBytes * 1.25) + 200 * MiB;
}

/** /boot of the root tree, made its own filesystem by bootloader (the root filesystem gets an empty /boot). */
export function bootTreeDir(ctx: Pick<BuildContext, 'rootfs'>): string {
  return join(ctx.rootfs, 'boot');
}

async function treeBytes(ctx: BuildContext, dir: string): Promise<number> {
  const output = await ctx.host.run('du', ['--summarize', '--one-file-system', '--block-size=1', dir]);
  return Number(output.split(/\s/)[0]);
}

/**
 * Refuses a root tree that would not fit the root partition. Called once the tree is final
 * (by configure, so a too-small disk is reported before the slow initramfs build).
 */
export function checkRootFits(ctx: Pick<BuildContext, 'recipe' | 'loaded'>, rootUsed: number): void {
  const layout = partitionLayout(ctx.recipe.disk);
  const root = partitionByRole(layout, 'root');
  const rootNeeded = ext4BytesNeeded(rootUsed) + LUKS_DATA_OFFSET_BYTES;
  if (rootNeeded > root.sizeBytes) {
    throw new InputError(
      `disk.size ${formatSize(layout.diskBytes)} leaves ${formatSize(root.sizeBytes)} for the root partition, but the root tree (${formatSize(rootUsed)}) needs ${formatSize(rootNeeded)}; raise disk.size to at least ${formatSize(layout.diskBytes + rootNeeded - root.sizeBytes)}`,
      `${ctx.loaded.file}: disk.size`,
    );
  }
}

/** Refuses a /boot (kernel, initramfs, GRUB) that would not fit its partition. */
export async function checkBootFits(ctx: BuildContext): Promise<void> {
  const boot = partitionByRole(partitionLayout(ctx.recipe.disk), 'boot');
  const bootUsed = await treeBytes(ctx, bootTreeDir(ctx));
  if (ext4BytesNeeded(bootUsed) - 150 * MiB > boot.sizeBytes) {
    throw new InputError(`disk.boot ${formatSize(boot.sizeBytes)} is too small for /boot (${formatSize(bootUsed)} of kernel, initramfs and GRUB)`, `${ctx.loaded.file}: disk.boot`);
  }
  ctx.log.info(`      /boot ${formatSize(bootUsed)}`);
}

/** Bytes the root tree will occupy, without /boot (its own partition). */
export async function rootTreeBytes(ctx: BuildContext): Promise<number> {
  return (await treeBytes(ctx, ctx.rootfs)) - (await treeBytes(ctx, join(ctx.rootfs, 'boot')));
}

export const partitionStage = defineStage({
  name: 'partition',
  summary: 'size check, disk file and GPT on a loop device',
  needs: ['rootfsBytes'],
  produces: ['layout', 'loop', 'rawPartial'],
  hostTools: () => ['sfdisk', 'losetup', 'partx'],
  async run(ctx) {
    const layout = partitionLayout(ctx.recipe.disk);
    const rootUsed = ctx.state.rootfsBytes;
    const root = partitionByRole(layout, 'root');
    ctx.log.info(`      root tree ${formatSize(rootUsed)} in a ${formatSize(root.sizeBytes)} partition`);

    const partial = join(ctx.outDir, `${ctx.recipe.name}.raw.partial`);
    ctx.cleanup.add(`remove ${partial}`, () => rm(partial, { force: true }));
    const file = await open(partial, 'w', 0o644);
    await file.truncate(layout.diskBytes);
    await file.close();
    // sfdisk writes a GPT for the sector size of the device it runs on (on a plain file: always
    // 512 bytes), so the table is written through a loop device with the layout's sector size.
    const writeTable = async (device: string) => void (await ctx.host.run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', device], { input: sfdiskScript(layout, ctx.ids) }));
    ctx.state.layout = layout;
    ctx.state.rawPartial = partial;
    ctx.state.loop = await attachLoop(ctx.host, ctx.cleanup, partial, layout.sectorSize, layout.partitions.length, writeTable);
    ctx.log.verbose(`      attached ${ctx.state.loop.device} (${layout.sectorSize}-byte sectors)`);
  },
});
