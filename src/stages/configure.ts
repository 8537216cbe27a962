/**
 * configure: overlays (hostname, fstab, crypttab, network, dropbear, grub.cfg), root
 * account, first-boot SSH host keys, empty machine-id, recipe hooks (with SOURCE_DATE_EPOCH set),
 * the initramfs's dropbear host keys (they stay in the root tree for later update-initramfs
 * runs); then every time in the tree newer than SOURCE_DATE_EPOCH is clamped to it.
 *
 * update-grub diverted to keylessgo's (the kernel packages would have grub-mkconfig replace
 * grub.cfg).
 *
 * Host commands: chroot (passwd, systemctl, hook scripts, dpkg-divert, dropbearkey), du.
 */
import { chmod, copyFile, rm, symlink, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { clampTimes } from '../base/tree.js';
import { withChroot } from '../host/chroot.js';
import { writeOverlayFiles } from '../pipeline/overlay.js';
import { defineStage } from '../pipeline/stage.js';
import { prepareInitramfsTree } from './initramfs.js';
import { checkRootFits, rootTreeBytes } from './partition.js';

const UPDATE_GRUB = '/usr/sbin/update-grub';
/** From the base overlay. */
const KEYLESSGO_UPDATE_GRUB = '/usr/lib/keylessgo/update-grub';

export const configureStage = defineStage({
  name: 'configure',
  summary: 'apply overlays, accounts, network and hooks',
  needs: ['kernelVersion', 'sourceDateEpoch'],
  produces: ['configuredTree', 'rootfsBytes', 'dropbearHostKeys'],
  hostTools: () => ['chroot', 'mount', 'umount', 'du'],
  async run(ctx) {
    const { rootfs, recipe } = ctx;
    const epoch = ctx.state.sourceDateEpoch.seconds;
    await writeOverlayFiles(rootfs, ctx.overlayFiles);
    // sshd refuses keys in a group/world-accessible ~/.ssh.
    await chmod(join(rootfs, 'root/.ssh'), 0o700).catch(() => undefined);
    await chmod(join(rootfs, 'root/.ssh/authorized_keys'), 0o600).catch(() => undefined);
    if (recipe.root.login === 'locked') await rm(join(rootfs, 'root/.ssh/authorized_keys'), { force: true });
    // grub.cfg boots /vmlinuz and /initrd.img on /boot; kernel-img.conf keeps them current on upgrades.
    const version = ctx.state.kernelVersion!;
    for (const [link, target] of [['vmlinuz', `vmlinuz-${version}`], ['initrd.img', `initrd.img-${version}`]] as const) {
      await rm(join(rootfs, 'boot', link), { force: true });
      await symlink(target, join(rootfs, 'boot', link));
    }

    // Every clone must get its own machine id at first boot (SSH host keys: removed by bootstrap).
    await truncate(join(rootfs, 'etc/machine-id'), 0).catch(() => undefined);
    await rm(join(rootfs, 'var/lib/dbus/machine-id'), { force: true });

    await withChroot(ctx.host, ctx.cleanup, rootfs, async (chroot) => {
      await chroot.run('passwd', ['--lock', 'root']);
      const units = ['systemd-networkd.service', 'systemd-resolved.service', 'keylessgo-ssh-host-keys.service', 'keylessgo-config-drive.service'];
      if (recipe.disk.growOnFirstBoot) units.push('keylessgo-grow-root.service');
      await chroot.run('systemctl', ['enable', ...units]);
      // Nothing in a default image needs the network before boot completes: don't wait for it.
      // e2scrub_reap cleans up LVM snapshots of ext4 scrubs; images have no LVM.
      await chroot.run('systemctl', ['mask', 'systemd-networkd-wait-online.service', 'e2scrub_reap.service']);
      // Kernel packages run update-grub after each kernel install or removal: grub-mkconfig would
      // replace keylessgo's grub.cfg, so update-grub is diverted to keylessgo's, which leaves it
      // (before the recipe's hooks, which may install a kernel).
      await chroot.run('dpkg-divert', ['--quiet', '--local', '--rename', '--divert', `${UPDATE_GRUB}.distrib`, '--add', UPDATE_GRUB]);
      await symlink(KEYLESSGO_UPDATE_GRUB, join(rootfs, UPDATE_GRUB));
      for (const [index, hook] of ctx.loaded.hookFiles.entries()) {
        const inImage = `/tmp/keylessgo-hook-${index}`;
        ctx.log.info(`      hook ${hook}`);
        await copyFile(hook, join(rootfs, inImage));
        try {
          await chroot.run('/bin/sh', ['-e', inImage], { stream: true, env: { KEYLESSGO_RECIPE: recipe.name, KEYLESSGO_SUITE: recipe.suite, SOURCE_DATE_EPOCH: String(epoch) } });
        } finally {
          await rm(join(rootfs, inImage), { force: true });
        }
      }
      // The initramfs is built beside the root filesystem, from a view of this tree: what it
      // changes in the tree itself (host keys, update-initramfs back) is done here.
      ctx.state.dropbearHostKeys = await prepareInitramfsTree(ctx, chroot);
    });
    // What this stage and the hooks wrote carries "now": the tree is final, its times are the epoch's.
    await clampTimes(rootfs, epoch);
    ctx.state.rootfsBytes = await rootTreeBytes(ctx);
    checkRootFits(ctx, ctx.state.rootfsBytes);
    ctx.state.configuredTree = true;
  },
});
