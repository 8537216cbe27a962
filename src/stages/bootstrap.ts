/**
 * bootstrap: a Debian root tree with the kernel, cryptsetup, dropbear and GRUB.
 *
 * Host commands: mmdebstrap (default) or debootstrap, chroot (package list).
 * The initramfs is not built here: update-initramfs is diverted to a no-op during
 * installation and run once, after configuration, by the initramfs stage.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { BuildContext } from '../pipeline/context.js';
import type { Stage } from '../pipeline/stage.js';
import { KERNEL_PACKAGE, type Recipe } from '../recipe/schema.js';
import { sourceLines } from '../host/apt-sources.js';

/** What every image needs to boot, unlock over SSH and be reached afterwards. */
export const BASE_PACKAGES = [
  KERNEL_PACKAGE,
  'systemd-sysv',
  'udev',
  'dbus',
  'kmod',
  'e2fsprogs',
  'iproute2',
  'systemd-resolved',
  'initramfs-tools',
  'zstd',
  'cryptsetup',
  'cryptsetup-initramfs',
  'dropbear-initramfs',
  'openssh-server',
  'grub-efi-amd64-bin',
  'grub-pc-bin',
] as const;

/** Unlock by Tang in the initramfs next to dropbear (clevis-initramfs fetches keys with curl). */
export const CLEVIS_PACKAGES = ['clevis', 'clevis-luks', 'clevis-initramfs', 'curl'] as const;

export function packageList(recipe: Recipe): string[] {
  return [...new Set([...BASE_PACKAGES, ...(recipe.nbde.clevis ? CLEVIS_PACKAGES : []), ...recipe.packages])];
}

export const DIVERTED_UPDATE_INITRAMFS = '/usr/sbin/update-initramfs';

export function mmdebstrapArgs(ctx: Pick<BuildContext, 'recipe' | 'mirror' | 'rootfs'>): string[] {
  const { recipe } = ctx;
  return [
    '--mode=root',
    `--variant=${recipe.bootstrap.variant}`,
    `--architectures=${recipe.architecture}`,
    `--components=${recipe.bootstrap.components.join(',')}`,
    `--include=${packageList(recipe).join(',')}`,
    // Divert update-initramfs so kernel and hook installs don't each build an initramfs.
    `--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename --add ${DIVERTED_UPDATE_INITRAMFS} && ln -s /bin/true "$1${DIVERTED_UPDATE_INITRAMFS}"`,
    recipe.suite,
    ctx.rootfs,
    ...sourceLines(ctx.mirror, recipe.suite, recipe.bootstrap.components),
  ];
}

export function debootstrapArgs(ctx: Pick<BuildContext, 'recipe' | 'mirror' | 'rootfs'>): string[] {
  const { recipe } = ctx;
  return [
    `--variant=${recipe.bootstrap.variant === 'apt' ? 'minbase' : recipe.bootstrap.variant}`,
    `--arch=${recipe.architecture}`,
    `--components=${recipe.bootstrap.components.join(',')}`,
    `--include=${packageList(recipe).join(',')}`,
    recipe.suite,
    ctx.rootfs,
    ctx.mirror.archive,
  ];
}

export const bootstrapStage: Stage = {
  name: 'bootstrap',
  summary: 'install the Debian root tree',
  hostTools: (recipe) => [recipe.bootstrap.tool, 'chroot'],
  async run(ctx) {
    const { recipe } = ctx;
    ctx.log.info(`      ${recipe.suite}/${recipe.architecture} from ${ctx.mirror.archive} (${ctx.mirror.origin}), ${packageList(recipe).length} packages requested`);
    if (recipe.bootstrap.tool === 'mmdebstrap') {
      await ctx.host.run('mmdebstrap', mmdebstrapArgs(ctx), { stream: true });
    } else {
      await ctx.host.run('debootstrap', debootstrapArgs(ctx), { stream: true });
    }
    const listing = await ctx.host.run('chroot', [ctx.rootfs, 'dpkg-query', '-W', '-f', '${Package}\t${Version}\n']);
    ctx.state.packages = listing
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        const [name, version] = line.split('\t');
        return { name: name!, version: version ?? '' };
      });
    const kernels = (await readdir(join(ctx.rootfs, 'boot'))).filter((f) => f.startsWith('vmlinuz-'));
    if (kernels.length !== 1) throw new Error(`expected one kernel in /boot, found ${kernels.length}`);
    ctx.state.kernelVersion = kernels[0]!.slice('vmlinuz-'.length);
    ctx.log.info(`      ${ctx.state.packages.length} packages installed, kernel ${ctx.state.kernelVersion}`);
  },
};
