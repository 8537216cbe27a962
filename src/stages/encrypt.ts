/**
 * encrypt: mkfs.ext4 writes the root filesystem from the root tree straight into the root's
 * LUKS2 data segment of the disk file (-E offset), a LUKS2 header with a fresh volume key is
 * written in front of it, and the blocks the filesystem uses are encrypted in place. Nothing
 * is opened through device-mapper (so this works on hosts and CI containers without
 * dm-crypt), and free space is never written: raw and qcow2 images are as small as the data.
 * The disk file is written once: no plaintext image beside it (840 MB less to write and
 * delete, in a warm build whose limit is the disk). mkfs writes only blocks it then counts as
 * used, so every plaintext block is ciphertext before the image is published; a failed build
 * removes the disk file.
 *
 * Reproducible plaintext: mkfs.ext4 runs with SOURCE_DATE_EPOCH as its clock and the build's
 * UUID and hash seed, and the access and change times it copied from the tree are set to the
 * epoch (debugfs); the tree's and the file system's digests go to the manifest, taken before
 * the blocks are encrypted.
 *
 * Host commands: mount (a view of the tree without /boot), mkfs.ext4, dumpe2fs, debugfs, cryptsetup
 * (luksFormat, luksDump, luksDump --dump-json-metadata for the volume key digest the manifest records).
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { LUKS_DATA_OFFSET_BYTES, LUKS_JSON_DUMP_ARGS, luksDump, luksFormatArgs, luksHeaderDigests, parseLuksJsonHeader } from '../host/cryptsetup.js';
import { EXT4_BLOCK_BYTES, ext4FileRanges, ext4SetTimes, ext4Spec, ext4TimeEnv, mkfsExt4Args, usedInodesFromDumpe2fs, usedRangesFromDumpe2fs, type ByteRange } from '../host/ext4.js';
import { encryptRanges } from '../luks/encrypt-ranges.js';
import { withTreeView } from '../host/mounts.js';
import { allSettledOrThrow } from '../base/settle.js';
import { defineStage } from '../pipeline/stage.js';
import { sha256File } from '../pipeline/sparse-sha256.js';
import type { BuildContext } from '../pipeline/context.js';
import { treeDigest } from '../base/tree.js';
import { TREE_HOST_KEY_FILES } from './initramfs.js';
import { formatSize } from '../recipe/size.js';
import { partitionByRole } from './partition.js';

/**
 * Files of the root tree that differ in every build: the dropbear host keys (kept for the
 * booted system's update-initramfs). The root's digests leave their content out.
 */
export const ROOT_PER_BUILD_FILES: readonly string[] = TREE_HOST_KEY_FILES;

/**
 * SHA-256 of the root file system as plaintext (what decrypting the image gives): the layout of
 * its blocks in use, then their bytes, the per-build files' inodes and blocks left out. Two
 * builds of a recipe share it.
 */
async function maskedExt4Sha256(ctx: BuildContext, spec: string, segmentBytes: number, blocks: number, usedRanges: readonly ByteRange[]): Promise<string> {
  const onDisk = (r: ByteRange) => ({ start: segmentBytes + r.start, length: r.length });
  const masks = await ext4FileRanges(ctx.host, spec, ROOT_PER_BUILD_FILES.map((path) => ({ path: `/${path}` })));
  return sha256File(ctx.state.rawPartial!, usedRanges.map(onDisk), { window: { start: segmentBytes, length: blocks * EXT4_BLOCK_BYTES }, masks: masks.map(onDisk), holes: 'skip' });
}

export const encryptStage = defineStage({
  name: 'encrypt',
  summary: 'root ext4, LUKS2 header, encryption of the used blocks',
  needs: ['configuredTree', 'layout', 'loop', 'rawPartial', 'sourceDateEpoch'],
  produces: ['keyslots', 'encryptedRanges', 'rootUsedBytes', 'luksHeaderDigests', 'rootPlaintext'],
  hostTools: () => ['mkfs.ext4', 'dumpe2fs', 'debugfs', 'cryptsetup', 'mount', 'umount'],
  async run(ctx) {
    const { luks } = ctx.recipe;
    const epoch = ctx.state.sourceDateEpoch!.seconds;
    const root = partitionByRole(ctx.state.layout!, 'root');
    const device = ctx.state.loop!.partition(root.number);
    const disk = ctx.state.rawPartial!;
    // Into the disk file itself, not through the loop device: one page cache instead of two, and
    // no flush through the loop driver (measured 7.0 s for 837 MiB that way). Only cryptsetup
    // writes through the device, to the header area in front of the segment, and it syncs its writes.
    const segmentBytes = root.startBytes + LUKS_DATA_OFFSET_BYTES;
    const blocks = Math.floor((root.sizeBytes - LUKS_DATA_OFFSET_BYTES) / EXT4_BLOCK_BYTES);
    const volumeKey = randomBytes(luks.keySize / 8);
    try {
      const volumeKeyFile = await ctx.secrets.put('volume-key', volumeKey, ctx.log.redactor);
      // The header (its KDF, ~0.7 s) is written while mkfs.ext4 fills the segment behind it: luksFormat leaves the data segment alone.
      const [treeSha256] = await allSettledOrThrow([
        // /boot is its own filesystem and the initramfs and bootloader stages write to /boot and /tmp meanwhile.
        withTreeView(
          ctx.host,
          ctx.cleanup,
          ctx.rootfs,
          join(ctx.workDir, 'root-view'),
          ['boot', 'tmp'],
          async (tree) => {
            const mkfs = mkfsExt4Args({ image: disk, offsetBytes: segmentBytes, tree, label: 'root', uuid: ctx.ids.rootFsUuid, hashSeed: ctx.ids.rootHashSeed, blocks });
            // The tree's digest is taken as mkfs reads the same files (one read from disk for both).
            const [, digest] = await Promise.all([ctx.host.run('mkfs.ext4', mkfs, { env: ext4TimeEnv(epoch) }), treeDigest(tree, { perBuild: ROOT_PER_BUILD_FILES })]);
            return digest;
          },
          epoch,
        ),
        ctx.host.run('cryptsetup', luksFormatArgs({ device, uuid: ctx.ids.luksUuid, keyFile: ctx.passphraseFile, volumeKeyFile, luks })),
      ]);
      const summary = await luksDump(ctx.host, device);
      if (summary.version !== 2 || summary.uuid !== ctx.ids.luksUuid || summary.keyslots.join(',') !== '0' || summary.dataOffsetBytes !== LUKS_DATA_OFFSET_BYTES) {
        throw new Error(`unexpected LUKS header: version ${summary.version}, uuid ${summary.uuid}, keyslots [${summary.keyslots.join(',')}], data offset ${summary.dataOffsetBytes}`);
      }
      ctx.state.keyslots = summary.keyslots;
      ctx.state.luksHeaderDigests = luksHeaderDigests(parseLuksJsonHeader(await ctx.host.run('cryptsetup', [...LUKS_JSON_DUMP_ARGS, device])));
      const spec = ext4Spec(disk, segmentBytes);
      const dump = await ctx.host.run('dumpe2fs', [spec]);
      const ranges = usedRangesFromDumpe2fs(dump);
      await ext4SetTimes(ctx.host, spec, epoch, usedInodesFromDumpe2fs(dump), join(ctx.workDir, 'root-times.debugfs'));
      ctx.state.rootPlaintext = { tree: treeSha256, ext4: await maskedExt4Sha256(ctx, spec, segmentBytes, blocks, ranges), perBuild: [...ROOT_PER_BUILD_FILES] };
      const written = await encryptRanges({ plaintext: disk, plaintextOffsetBytes: segmentBytes, target: disk, dataOffsetBytes: segmentBytes, ranges, cipher: luks.cipher, volumeKey, sectorSize: luks.sectorSize, signal: ctx.signal });
      ctx.state.rootUsedBytes = written;
      ctx.state.encryptedRanges = ranges;
      ctx.log.info(`      LUKS2 ${summary.cipher}, uuid ${summary.uuid}, keyslot 0 (bootstrap passphrase); ${formatSize(written)} of ${formatSize(blocks * EXT4_BLOCK_BYTES)} in use, encrypted`);
    } finally {
      volumeKey.fill(0);
    }
  },
});
