/**
 * encrypt: the root ext4 is made from the root tree directly on the root partition, then
 * encrypted in place offline. Nothing is ever opened through device-mapper, so this works
 * on hosts and CI containers without dm-crypt, and the plaintext root is never mounted.
 *
 * Host commands: mkfs.ext4, cryptsetup (reencrypt --encrypt, luksDump).
 */
import { encryptInPlaceArgs, LUKS_RESERVED_BYTES, luksDump } from '../host/cryptsetup.js';
import type { Stage } from '../pipeline/stage.js';
import { partitionByRole } from './partition.js';

const EXT4_BLOCK = 4096;

export const encryptStage: Stage = {
  name: 'encrypt',
  summary: 'root ext4 and offline LUKS2 encryption',
  hostTools: () => ['mkfs.ext4', 'cryptsetup'],
  async run(ctx) {
    const loop = ctx.state.loop!;
    const root = partitionByRole(ctx.state.layout!, 'root');
    const device = loop.partition(root.number);
    const blocks = Math.floor((root.sizeBytes - LUKS_RESERVED_BYTES) / EXT4_BLOCK);
    // lazy_itable_init=0: on a loop device mkfs leaves inode tables unzeroed, and the machine
    // would zero them through dm-crypt in the background at first boot.
    await ctx.host.run('mkfs.ext4', ['-q', '-F', '-t', 'ext4', '-b', String(EXT4_BLOCK), '-E', 'lazy_itable_init=0', '-L', 'root', '-U', ctx.ids.rootFsUuid, '-d', ctx.rootfs, device, String(blocks)]);
    await ctx.host.run('cryptsetup', encryptInPlaceArgs({ device, uuid: ctx.ids.luksUuid, keyFile: ctx.passphraseFile, luks: ctx.recipe.luks }));
    const summary = await luksDump(ctx.host, device);
    if (summary.version !== 2 || summary.uuid !== ctx.ids.luksUuid || summary.keyslots.join(',') !== '0') {
      throw new Error(`unexpected LUKS header after encryption: version ${summary.version}, uuid ${summary.uuid}, keyslots [${summary.keyslots.join(',')}]`);
    }
    ctx.state.keyslots = summary.keyslots;
    ctx.log.info(`      LUKS2 ${summary.cipher}, uuid ${summary.uuid}, keyslot 0 (bootstrap passphrase); slots 1+ free for enrollment`);
  },
};
