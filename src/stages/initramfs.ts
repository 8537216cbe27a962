/**
 * initramfs: one update-initramfs run for what the package set and configuration decide
 * (cached), then this build's own files appended as a small second archive: dropbear host
 * keys made now, the authorized_keys, and the crypttab entry with this build's LUKS UUID.
 * The kernel unpacks the archives in order and the later files win, so a rebuild that only
 * changes keys, passphrase or UUIDs reuses the base initramfs, and the cached base never
 * holds a secret (it is built with no host keys and no authorized_keys in the tree).
 *
 * Built in an overlay of the configured tree, beside the root filesystem (partition, encrypt).
 * In that overlay, bookworm's copying of modules and libraries starts fewer processes
 * (initramfs/hook-functions.ts).
 *
 * Host commands: mount (overlay), chroot (update-initramfs, unmkinitramfs); for configure:
 * chroot (dpkg-divert, dropbearkey).
 */
import { createHash } from 'node:crypto';
import { appendFile, copyFile, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { withChroot, type ChrootSession } from '../host/chroot.js';
import { withOverlay } from '../host/mounts.js';
import { HOOK_FUNCTIONS, withFasterHookFunctions } from '../initramfs/hook-functions.js';
import { DROPBEAR_HOOK, withFixedRootHome } from '../initramfs/dropbear-hook.js';
import { alignmentPadding, stableLengthArchive, type NewcFile } from '../initramfs/newc.js';
import { cacheKey } from '../pipeline/cache.js';
import type { BuildContext } from '../pipeline/context.js';
import { defineStage } from '../pipeline/stage.js';
import { sshFingerprint } from '../recipe/authorized-keys.js';
import { DIVERTED_UPDATE_INITRAMFS } from './bootstrap.js';

const DROPBEAR_DIR = 'etc/dropbear/initramfs';
const AUTHORIZED_KEYS = `${DROPBEAR_DIR}/authorized_keys`;
// No RSA: a 3072-bit key costs seconds per build, and every client since OpenSSH 6.5 speaks ed25519.
const HOST_KEY_TYPES = ['ed25519', 'ecdsa'] as const;
const LUKS_UUID_PLACEHOLDER = '@KEYLESSGO_LUKS_UUID@';

/** What must be inside the initramfs, as patterns over its paths (base and appended archive). */
export const REQUIRED_INITRAMFS_ENTRIES: Record<string, RegExp> = {
  cryptsetup: /^(usr\/)?s?bin\/cryptsetup$/m,
  dropbear: /^(usr\/)?s?bin\/dropbear$/m,
  'dropbear config': /^etc\/dropbear\/dropbear\.conf$/m,
  'dropbear host key': /^etc\/dropbear\/dropbear_ed25519_host_key$/m,
  authorized_keys: /^root-[^/]+\/\.ssh\/authorized_keys$/m,
  crypttab: /^cryptroot\/crypttab$/m,
  'cryptroot-unlock': /^(usr\/)?s?bin\/cryptroot-unlock$/m,
  'link-up script': /^scripts\/init-top\/keylessgo-link-up$/m,
  ip: /^(usr\/)?s?bin\/ip$/m,
};

/** Needed too when the image unlocks by Tang (clevis-initramfs fetches the key with curl). */
export const CLEVIS_INITRAMFS_ENTRIES: Record<string, RegExp> = {
  clevis: /^(usr\/)?bin\/clevis$/m,
  'clevis tang pin': /^(usr\/)?bin\/clevis-decrypt-tang$/m,
  curl: /^(usr\/)?bin\/curl$/m,
};

/**
 * Needed too for clevis's tpm2 pin (nbde.tpm2): what clevis-initramfs's hook copies then. The
 * TPM drivers are not listed: Debian's kernels have tpm_tis and tpm_crb built in (CONFIG_TCG_TIS=y).
 */
export const CLEVIS_TPM2_INITRAMFS_ENTRIES: Record<string, RegExp> = {
  'clevis tpm2 pin': /^(usr\/)?bin\/clevis-decrypt-tpm2$/m,
  tpm2_unseal: /^(usr\/)?bin\/tpm2_unseal$/m,
  'TPM device TCTI': /^(usr\/)?lib\/x86_64-linux-gnu\/libtss2-tcti-device\.so/m,
};

/** Needed too when the root partition grows at first boot (before the unlock). */
export const GROW_INITRAMFS_ENTRIES: Record<string, RegExp> = {
  sfdisk: /^(usr\/)?s?bin\/sfdisk$/m,
  partx: /^(usr\/)?s?bin\/partx$/m,
  'grow-root script': /^scripts\/init-premount\/keylessgo-grow-root$/m,
};

export function checkInitramfsListing(listing: string, withClevis = false, withGrow = false, withTpm2 = false): Record<string, boolean> {
  const required = { ...REQUIRED_INITRAMFS_ENTRIES, ...(withClevis ? CLEVIS_INITRAMFS_ENTRIES : {}), ...(withTpm2 ? CLEVIS_TPM2_INITRAMFS_ENTRIES : {}), ...(withGrow ? GROW_INITRAMFS_ENTRIES : {}) };
  return Object.fromEntries(Object.entries(required).map(([name, pattern]) => [name, pattern.test(listing)]));
}

/** The base initramfs and what the appended archive needs to know about it. */
export interface BaseInitramfs {
  /** Paths in the base archive, one per line. */
  listing: string;
  /** root's home in the initramfs (dropbear-initramfs picks a random root-XXXXXXXXXX). */
  rootHome: string;
  /** cryptroot/crypttab as the cryptroot hook wrote it, the LUKS UUID replaced by a placeholder. */
  crypttabTemplate: string;
}

/**
 * Tree paths the initramfs is built from, besides the packages (the bootstrap key) and hooks:
 * initramfs-tools configuration and scripts, dropbear and cryptsetup configuration, module
 * and udev rules, fstab and crypttab (whose UUIDs change every build and are normalised).
 */
export const INITRAMFS_INPUT_PATHS = [
  'etc/initramfs-tools',
  DROPBEAR_DIR,
  'etc/crypttab',
  'etc/fstab',
  'etc/cryptsetup-initramfs',
  'etc/modprobe.d',
  'etc/modules',
  'etc/udev',
  'usr/share/initramfs-tools',
];
const NORMALISED_FILES = new Set(['etc/crypttab', 'etc/fstab']);
const PER_BUILD_FILES = /(^|\/)(authorized_keys|dropbear_[a-z0-9]+_host_key)$/;

/** SHA-256 over paths, modes, link targets and contents of the initramfs inputs in a tree. */
export async function initramfsInputDigest(rootfs: string): Promise<string> {
  const hash = createHash('sha256');
  const visit = async (path: string): Promise<void> => {
    const rel = relative(rootfs, path);
    if (PER_BUILD_FILES.test(rel)) return;
    const info = await stat(path).catch(() => undefined);
    const linkTarget = await readlink(path).catch(() => undefined);
    if (!info && linkTarget === undefined) return;
    hash.update(`${rel}\0${info?.mode ?? 0}\0`);
    if (linkTarget !== undefined) hash.update(`->${linkTarget}\0`);
    else if (info!.isDirectory()) for (const name of (await readdir(path)).sort()) await visit(join(path, name));
    else if (info!.isFile()) hash.update(NORMALISED_FILES.has(rel) ? (await readFile(path, 'utf8')).replace(/UUID=[0-9A-Fa-f-]+/g, 'UUID=*') : await readFile(path));
  };
  for (const path of INITRAMFS_INPUT_PATHS) await visit(join(rootfs, path));
  return hash.digest('hex');
}

async function listTree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.map((e) => relative(dir, join(e.parentPath, e.name))).sort();
}

/**
 * Runs update-initramfs with no per-build files in the tree and reads back what the appended
 * archive needs. `ctx.rootfs` is the stage's overlay of the tree: the per-build files are
 * removed from the overlay only, the tree keeps them.
 */
async function buildBase(ctx: BuildContext, chroot: ChrootSession, initrd: string): Promise<BaseInitramfs> {
  for (const file of [AUTHORIZED_KEYS, ...HOST_KEY_TYPES.map(hostKeyPath)]) await rm(join(ctx.rootfs, file), { force: true });
  await rm(join(ctx.rootfs, initrd), { force: true });
  // With SOURCE_DATE_EPOCH, mkinitramfs clamps the archive's times and compresses reproducibly.
  await chroot.run('update-initramfs', ['-c', '-k', ctx.state.kernelVersion!], { stream: true, env: { SOURCE_DATE_EPOCH: String(ctx.state.sourceDateEpoch!.seconds) } });
  const unpacked = await mkdtemp(join(ctx.rootfs, 'tmp/keylessgo-initramfs-'));
  try {
    await chroot.run('unmkinitramfs', [`/${initrd}`, `/${relative(ctx.rootfs, unpacked)}`]);
    // unmkinitramfs puts the main archive in main/ only when early archives precede it.
    const main = (await stat(join(unpacked, 'main')).catch(() => undefined))?.isDirectory() ? join(unpacked, 'main') : unpacked;
    const paths = await listTree(main);
    const rootHome = paths.find((p) => /^root-[^/]+$/.test(p));
    if (!rootHome) throw new Error('the initramfs has no root-* home: is dropbear-initramfs installed?');
    const crypttab = await readFile(join(main, 'cryptroot/crypttab'), 'utf8').catch(() => '');
    if (!crypttab.includes(`UUID=${ctx.ids.luksUuid}`)) throw new Error(`the initramfs crypttab does not name the root volume (UUID=${ctx.ids.luksUuid}):\n${crypttab}`);
    return { listing: paths.join('\n'), rootHome, crypttabTemplate: crypttab.replaceAll(ctx.ids.luksUuid, LUKS_UUID_PLACEHOLDER) };
  } finally {
    await rm(unpacked, { recursive: true, force: true });
  }
}

/** The base initramfs from the cache, or built and stored; without a cache key it is just built. */
async function baseInitramfs(ctx: BuildContext, chroot: ChrootSession, initrd: string): Promise<BaseInitramfs> {
  const bootstrapKey = ctx.state.cacheKeys.bootstrap;
  if (!ctx.cache || !bootstrapKey) return buildBase(ctx, chroot, initrd);
  const hooks = await Promise.all(ctx.loaded.hookFiles.map(async (f) => createHash('sha256').update(await readFile(f)).digest('hex')));
  const inputs = { format: 1, bootstrap: bootstrapKey, kernel: ctx.state.kernelVersion, tree: await initramfsInputDigest(ctx.rootfs), hooks };
  const key = cacheKey(inputs);
  const lock = ctx.cleanup.add('release the initramfs cache lock', await ctx.cache.lock('initramfs', key, ctx.signal));
  try {
    const hit = await ctx.cache.lookup('initramfs', key);
    ctx.state.cacheKeys.initramfs = key;
    if (hit) {
      ctx.log.info(`      cache hit: initramfs ${key} from ${hit.createdAt}`);
      await copyFile(join(hit.dir, 'initrd.img'), join(ctx.rootfs, initrd));
      return hit.data as unknown as BaseInitramfs;
    }
    ctx.log.info(`      cache miss: initramfs ${key}`);
    const base = await buildBase(ctx, chroot, initrd);
    await ctx.cache.store('initramfs', key, inputs, async (dir) => {
      await copyFile(join(ctx.rootfs, initrd), join(dir, 'initrd.img'));
      return { ...base };
    });
    return base;
  } finally {
    await lock.release();
  }
}

/**
 * In the stage's overlay only: bookworm's module and library copying replaced by versions
 * that start fewer processes (src/initramfs/hook-functions.ts). Before the cache key is
 * taken, so the key covers them.
 */
async function speedUpHookFunctions(ctx: BuildContext): Promise<void> {
  const file = join(ctx.rootfs, HOOK_FUNCTIONS);
  const usrMerged = (await readlink(join(ctx.rootfs, 'lib')).catch(() => undefined))?.replace(/^\//, '') === 'usr/lib';
  const { script, notes } = withFasterHookFunctions(await readFile(file, 'utf8'), usrMerged);
  for (const note of notes) ctx.log.info(`      ${note}`);
  await writeFile(file, script);
}

/** In the stage's overlay only: dropbear's hook names root's home in the initramfs alike every time (initramfs/dropbear-hook.ts). */
async function fixRootHome(ctx: BuildContext): Promise<void> {
  const file = join(ctx.rootfs, DROPBEAR_HOOK);
  const { script, changed } = withFixedRootHome(await readFile(file, 'utf8'));
  if (changed) await writeFile(file, script);
  else ctx.log.warn(`${DROPBEAR_HOOK} has no random root home to fix: two builds' initramfs archives will differ in its name`);
}

const hostKeyPath = (type: (typeof HOST_KEY_TYPES)[number]) => `${DROPBEAR_DIR}/dropbear_${type}_host_key`;
/** This build's dropbear host keys in the root tree (per-build files of a reproducible root). */
export const TREE_HOST_KEY_FILES = HOST_KEY_TYPES.map(hostKeyPath);

async function generateHostKeys(chroot: ChrootSession): Promise<Array<{ type: string; fingerprint: string }>> {
  const keys: Array<{ type: string; fingerprint: string }> = [];
  for (const type of HOST_KEY_TYPES) {
    const file = `/${hostKeyPath(type)}`;
    await chroot.run('dropbearkey', ['-t', type, '-f', file]);
    const publicPart = await chroot.run('dropbearkey', ['-y', '-f', file]);
    const line = publicPart.split('\n').find((l) => /^(ssh-|ecdsa-)/.test(l));
    if (!line) throw new Error(`dropbearkey printed no public key for ${file}`);
    const [keyType, base64] = line.split(/\s+/);
    keys.push({ type: keyType!, fingerprint: sshFingerprint(Buffer.from(base64!, 'base64')) });
  }
  return keys;
}

/** This build's files for the initramfs, read from the tree. */
async function perBuildFiles(ctx: BuildContext, base: BaseInitramfs): Promise<NewcFile[]> {
  const files: NewcFile[] = HOST_KEY_TYPES.map((type) => ({ path: `etc/dropbear/dropbear_${type}_host_key`, mode: 0o600, data: Buffer.alloc(0) }));
  for (const [index, type] of HOST_KEY_TYPES.entries()) files[index]!.data = await readFile(join(ctx.rootfs, hostKeyPath(type)));
  files.push({ path: `${base.rootHome}/.ssh/authorized_keys`, mode: 0o600, data: await readFile(join(ctx.rootfs, AUTHORIZED_KEYS)) });
  files.push({ path: 'cryptroot/crypttab', mode: 0o644, data: Buffer.from(base.crypttabTemplate.replaceAll(LUKS_UUID_PLACEHOLDER, ctx.ids.luksUuid)) });
  return files;
}

/**
 * What the initramfs changes in the root tree itself, run by configure in its chroot session
 * (the root filesystem is made from the tree while this stage runs): update-initramfs back in
 * place of its diversion, and this build's dropbear host keys.
 */
export async function prepareInitramfsTree(ctx: Pick<BuildContext, 'rootfs'>, chroot: ChrootSession): Promise<Array<{ type: string; fingerprint: string }>> {
  const diverted = await chroot.run('dpkg-divert', ['--list', DIVERTED_UPDATE_INITRAMFS]);
  if (diverted.trim()) {
    await rm(join(ctx.rootfs, DIVERTED_UPDATE_INITRAMFS), { force: true });
    await chroot.run('dpkg-divert', ['--quiet', '--local', '--rename', '--remove', DIVERTED_UPDATE_INITRAMFS]);
  }
  return generateHostKeys(chroot);
}

export const initramfsStage = defineStage({
  name: 'initramfs',
  summary: 'the unlock initramfs (or its cached base) plus this build\'s keys',
  needs: ['kernelVersion', 'configuredTree', 'dropbearHostKeys', 'sourceDateEpoch'],
  produces: ['initramfsChecks', 'initramfsAppended'],
  hostTools: () => ['chroot', 'mount', 'umount'],
  async run(ctx) {
    const initrd = `boot/initrd.img-${ctx.state.kernelVersion}`;
    // Built in an overlay of the tree, which the root filesystem is made from meanwhile: this
    // stage's mounts and scratch files stay out of it. Only the initramfs is taken back.
    const overlay = join(ctx.workDir, 'initramfs-overlay');
    const base = await withOverlay(ctx.host, ctx.cleanup, ctx.rootfs, overlay, (merged) =>
      withChroot(ctx.host, ctx.cleanup, merged, async (chroot) => {
        await speedUpHookFunctions({ ...ctx, rootfs: merged });
        await fixRootHome({ ...ctx, rootfs: merged });
        return baseInitramfs({ ...ctx, rootfs: merged }, chroot, initrd);
      }),
    );
    await copyFile(join(overlay, 'upper', initrd), join(ctx.rootfs, initrd));

    const files = await perBuildFiles(ctx, base);
    const { size } = await stat(join(ctx.rootfs, initrd));
    const padding = alignmentPadding(size);
    const archive = stableLengthArchive(files);
    await appendFile(join(ctx.rootfs, initrd), Buffer.concat([padding, archive]));
    ctx.state.initramfsAppended = { baseBytes: size, offset: size + padding.length, bytes: archive.length, paths: files.map((f) => f.path) };

    ctx.state.initramfsChecks = checkInitramfsListing([base.listing, ...files.map((f) => f.path)].join('\n'), ctx.recipe.nbde.clevis, ctx.recipe.disk.growOnFirstBoot, ctx.recipe.nbde.tpm2);
    const missing = Object.entries(ctx.state.initramfsChecks).filter(([, ok]) => !ok).map(([name]) => name);
    if (missing.length > 0) throw new Error(`the initramfs lacks: ${missing.join(', ')}`);
    ctx.log.info(`      dropbear host key ${ctx.state.dropbearHostKeys.find((k) => k.type === 'ssh-ed25519')?.fingerprint}; ${files.length} per-build files appended`);
  },
});
