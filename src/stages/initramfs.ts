/**
 * initramfs: per-build dropbear host keys, one update-initramfs run, and a check that
 * the result holds everything a remote unlock needs.
 *
 * Host commands: chroot (dropbearkey, dpkg-divert, update-initramfs, lsinitramfs).
 */
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { withChroot, type ChrootSession } from '../host/chroot.js';
import { sshFingerprint } from '../recipe/authorized-keys.js';
import type { Stage } from '../pipeline/stage.js';
import { DIVERTED_UPDATE_INITRAMFS } from './bootstrap.js';

const DROPBEAR_DIR = '/etc/dropbear/initramfs';
const HOST_KEY_TYPES = ['ed25519', 'ecdsa', 'rsa'] as const;

/** What must be inside the initramfs, as patterns over `lsinitramfs` paths. */
export const REQUIRED_INITRAMFS_ENTRIES: Record<string, RegExp> = {
  cryptsetup: /^(usr\/)?s?bin\/cryptsetup$/m,
  dropbear: /^(usr\/)?s?bin\/dropbear$/m,
  'dropbear config': /^etc\/dropbear\/dropbear\.conf$/m,
  'dropbear host key': /^etc\/dropbear\/dropbear_ed25519_host_key$/m,
  authorized_keys: /^root-[^/]+\/\.ssh\/authorized_keys$/m,
  crypttab: /^cryptroot\/crypttab$/m,
  'cryptroot-unlock': /^(usr\/)?s?bin\/cryptroot-unlock$/m,
};

/** Needed too when the image unlocks by Tang (clevis-initramfs fetches the key with curl). */
export const CLEVIS_INITRAMFS_ENTRIES: Record<string, RegExp> = {
  clevis: /^(usr\/)?bin\/clevis$/m,
  'clevis tang pin': /^(usr\/)?bin\/clevis-decrypt-tang$/m,
  curl: /^(usr\/)?bin\/curl$/m,
};

export function checkInitramfsListing(listing: string, withClevis = false): Record<string, boolean> {
  const required = { ...REQUIRED_INITRAMFS_ENTRIES, ...(withClevis ? CLEVIS_INITRAMFS_ENTRIES : {}) };
  return Object.fromEntries(Object.entries(required).map(([name, pattern]) => [name, pattern.test(listing)]));
}

async function regenerateHostKeys(chroot: ChrootSession, rootfs: string): Promise<Array<{ type: string; fingerprint: string }>> {
  for (const name of await readdir(join(rootfs, DROPBEAR_DIR))) {
    if (name.endsWith('_host_key')) await rm(join(rootfs, DROPBEAR_DIR, name));
  }
  const keys: Array<{ type: string; fingerprint: string }> = [];
  for (const type of HOST_KEY_TYPES) {
    const file = `${DROPBEAR_DIR}/dropbear_${type}_host_key`;
    await chroot.run('dropbearkey', ['-t', type, ...(type === 'rsa' ? ['-s', '3072'] : []), '-f', file]);
    const publicPart = await chroot.run('dropbearkey', ['-y', '-f', file]);
    const line = publicPart.split('\n').find((l) => /^(ssh-|ecdsa-)/.test(l));
    if (!line) throw new Error(`dropbearkey printed no public key for ${file}`);
    const [keyType, base64] = line.split(/\s+/);
    keys.push({ type: keyType!, fingerprint: sshFingerprint(Buffer.from(base64!, 'base64')) });
  }
  return keys;
}

export const initramfsStage: Stage = {
  name: 'initramfs',
  summary: 'dropbear host keys and the unlock initramfs',
  hostTools: () => ['chroot', 'mount', 'umount'],
  async run(ctx) {
    const version = ctx.state.kernelVersion!;
    await withChroot(ctx.host, ctx.cleanup, ctx.rootfs, async (chroot) => {
      ctx.state.dropbearHostKeys = await regenerateHostKeys(chroot, ctx.rootfs);
      const diverted = await chroot.run('dpkg-divert', ['--list', DIVERTED_UPDATE_INITRAMFS]);
      if (diverted.trim()) {
        await rm(join(ctx.rootfs, DIVERTED_UPDATE_INITRAMFS), { force: true });
        await chroot.run('dpkg-divert', ['--quiet', '--local', '--rename', '--remove', DIVERTED_UPDATE_INITRAMFS]);
      }
      await rm(join(ctx.rootfs, `boot/initrd.img-${version}`), { force: true });
      await chroot.run('update-initramfs', ['-c', '-k', version], { stream: true });
      const listing = await chroot.run('lsinitramfs', [`/boot/initrd.img-${version}`]);
      ctx.state.initramfsChecks = checkInitramfsListing(listing, ctx.recipe.nbde.clevis);
    });
    const missing = Object.entries(ctx.state.initramfsChecks!).filter(([, ok]) => !ok).map(([name]) => name);
    if (missing.length > 0) throw new Error(`the initramfs lacks: ${missing.join(', ')}`);
    ctx.log.info(`      dropbear host key ${ctx.state.dropbearHostKeys!.find((k) => k.type === 'ssh-ed25519')?.fingerprint}`);
  },
};
