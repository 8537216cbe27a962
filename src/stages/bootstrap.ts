/**
 * bootstrap: a Debian root tree with the kernel, cryptsetup, dropbear and GRUB.
 *
 * Host commands: mmdebstrap (default) or debootstrap, chroot (package list), mount and umount
 * (the overlay over a cached tree), cp (a cache on another file system), sync (a new cache entry).
 * With a cache, the tree is an overlay over an entry keyed by everything it depends on
 * (including the archive's Release dates, so an updated archive is a miss, never stale),
 * and a miss downloads only the packages missing from the package cache beside it.
 * The initramfs is not built here: update-initramfs is diverted to a no-op during
 * installation and run once, after configuration, by the initramfs stage.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { shellQuote } from '../base/shell.js';
import { clampTimes } from '../base/tree.js';
import { chooseSourceDateEpoch } from '../recipe/source-date-epoch.js';
import { cacheKey, type StageCache } from '../pipeline/cache.js';
import type { BuildContext } from '../pipeline/context.js';
import { defineStage } from '../pipeline/stage.js';
import { KERNEL_PACKAGE, type Recipe } from '../recipe/schema.js';
import { formatSize } from '../recipe/size.js';
import { archiveReleaseDates, sourceLines } from '../host/apt-sources.js';
import { mountOverlay } from '../host/mounts.js';
import { debFileName, PackageCache, type InstalledPackage } from '../host/package-cache.js';

/** What every image needs to boot, unlock over SSH and be reached afterwards. */
export const BASE_PACKAGES = [
  KERNEL_PACKAGE,
  'systemd-sysv',
  'udev',
  'dbus',
  'kmod',
  'e2fsprogs',
  'iproute2',
  // Reads the config drive's JSON, in the initramfs and in the booted system.
  'jq',
  'systemd-resolved',
  'initramfs-tools',
  'zstd',
  'cryptsetup',
  'cryptsetup-initramfs',
  'dropbear-initramfs',
  'openssh-server',
  'grub-efi-amd64-bin',
  'grub-pc-bin',
  // Debian's signed chain (shim signed by Microsoft's UEFI CA, GRUB signed by Debian), installed
  // with boot.secureBoot false too: one package set keeps the cached tree and initramfs shared.
  'shim-signed',
  'grub-efi-amd64-signed',
] as const;

/** Unlock by Tang in the initramfs next to dropbear (clevis-initramfs fetches keys with curl). */
export const CLEVIS_PACKAGES = ['clevis', 'clevis-luks', 'clevis-initramfs', 'curl'] as const;

/**
 * clevis's tpm2 pin; with clevis-tpm2 installed, clevis-initramfs's hook also copies the tpm2
 * tools it calls, the TCTI library for /dev/tpmrm0 and the tpm_tis and tpm_crb modules.
 */
export const CLEVIS_TPM2_PACKAGES = ['clevis-tpm2', 'tpm2-tools'] as const;

/** Growing the root partition at first boot rewrites the GPT with sfdisk (in fdisk, not util-linux). */
export const GROW_PACKAGES = ['fdisk'] as const;

export function packageList(recipe: Recipe): string[] {
  return [...new Set([...BASE_PACKAGES, ...(recipe.nbde.clevis ? CLEVIS_PACKAGES : []), ...(recipe.nbde.tpm2 ? CLEVIS_TPM2_PACKAGES : []), ...(recipe.disk.growOnFirstBoot ? GROW_PACKAGES : []), ...recipe.packages])];
}

export const DIVERTED_UPDATE_INITRAMFS = '/usr/sbin/update-initramfs';

/**
 * mmdebstrap's own hooks (since 0.8) that run dpkg under eatmydata and take it out again,
 * wrapper and libraries, before the tree is used: the image's own apt keeps dpkg's fsyncs.
 */
export const EATMYDATA_HOOKS = '/usr/share/mmdebstrap/hooks/eatmydata';

/** Where the bootstrap lists the SHA-256 of every .deb it installed from (sha256sum's format), in the work tree. */
export const DEB_HASHES_FILE = 'deb-sha256';

/** `cacheOptions`: the package cache's hooks (PackageCache.mmdebstrapOptions). */
export function mmdebstrapArgs(ctx: Pick<BuildContext, 'recipe' | 'mirror' | 'rootfs' | 'workDir'>, cacheOptions: string[] = []): string[] {
  const { recipe } = ctx;
  const archives = '"$1"/var/cache/apt/archives';
  return [
    '--mode=root',
    `--variant=${recipe.bootstrap.variant}`,
    `--architectures=${recipe.architecture}`,
    `--components=${recipe.bootstrap.components.join(',')}`,
    `--include=${packageList(recipe).join(',')}`,
    // Divert update-initramfs so kernel and hook installs don't each build an initramfs.
    `--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename --add ${DIVERTED_UPDATE_INITRAMFS} && ln -s /bin/true "$1${DIVERTED_UPDATE_INITRAMFS}"`,
    // dpkg fsyncs every file it unpacks and each status change (42,600 calls, 11 s here); a tree
    // a crash leaves half-written is thrown away anyway, and the cache flushes a finished tree
    // at once (syncfs) before keeping it.
    `--hook-dir=${EATMYDATA_HOOKS}`,
    // The SBOM names the SHA-256 of each package's .deb (apt checked it against the archive's
    // index). Essential packages' files stay until the cleanup (essential/unlink skipped) for that.
    '--skip=essential/unlink',
    `--customize-hook=find ${archives} -maxdepth 1 -name '*.deb' -exec sha256sum {} + > ${shellQuote(join(ctx.workDir, DEB_HASHES_FILE))}`,
    ...cacheOptions,
    recipe.suite,
    ctx.rootfs,
    ...sourceLines(ctx.mirror, recipe.suite, recipe.bootstrap.components),
  ];
}

/** `packageCacheDir`: debootstrap keeps (and checks) the .deb files there itself. */
export function debootstrapArgs(ctx: Pick<BuildContext, 'recipe' | 'mirror' | 'rootfs'>, packageCacheDir?: string): string[] {
  const { recipe } = ctx;
  return [
    `--variant=${recipe.bootstrap.variant === 'apt' ? 'minbase' : recipe.bootstrap.variant}`,
    `--arch=${recipe.architecture}`,
    `--components=${recipe.bootstrap.components.join(',')}`,
    `--include=${packageList(recipe).join(',')}`,
    ...(packageCacheDir ? [`--cache-dir=${packageCacheDir}`] : []),
    recipe.suite,
    ctx.rootfs,
    ctx.mirror.archive,
  ];
}

/** The `Date:` of each suite's Release file, or undefined (said) when they cannot be read. */
async function readReleaseDates(ctx: BuildContext): Promise<Record<string, string> | undefined> {
  try {
    return await archiveReleaseDates(ctx.mirror, ctx.recipe.suite);
  } catch (error) {
    ctx.log.warn(`the archive's Release dates cannot be read (${error instanceof Error ? error.message : String(error)}): the bootstrap cache is not used, and SOURCE_DATE_EPOCH falls back to the build's start unless it is given`);
    return undefined;
  }
}

/**
 * Everything the bootstrapped tree depends on; the archive's Release dates make a changed
 * archive a new key, SOURCE_DATE_EPOCH (the tree's times) another.
 */
async function bootstrapCacheInputs(ctx: BuildContext, releases: Record<string, string>, sourceDateEpoch: number): Promise<Record<string, unknown> | undefined> {
  const { recipe } = ctx;
  try {
    const tool = recipe.bootstrap.tool;
    const toolVersion = await ctx.host.run(tool, ['--version']);
    return {
      format: 2,
      suite: recipe.suite,
      architecture: recipe.architecture,
      variant: recipe.bootstrap.variant,
      components: recipe.bootstrap.components,
      packages: packageList(recipe).sort(),
      tool,
      toolVersion: toolVersion.trim(),
      archive: ctx.mirror.archive,
      security: ctx.mirror.security ?? null,
      releases,
      sourceDateEpoch,
    };
  } catch (error) {
    ctx.log.warn(`not using the bootstrap cache: cannot tell whether it is current (${error instanceof Error ? error.message : String(error)})`);
    return undefined;
  }
}

/** Host keys that package scripts generate: each image makes its own, and the cache must hold no secrets. */
const GENERATED_HOST_KEYS: Array<[dir: string, pattern: RegExp]> = [
  ['etc/ssh', /^ssh_host_/],
  ['etc/dropbear', /_host_key$/],
  ['etc/dropbear/initramfs', /_host_key$/],
];

async function removeGeneratedHostKeys(rootfs: string): Promise<void> {
  for (const [dir, pattern] of GENERATED_HOST_KEYS) {
    const names = await readdir(join(rootfs, dir)).catch(() => [] as string[]);
    for (const name of names.filter((n) => pattern.test(n))) await rm(join(rootfs, dir, name));
  }
}

async function installedPackages(ctx: BuildContext): Promise<InstalledPackage[]> {
  const listing = await ctx.host.run('chroot', [ctx.rootfs, 'dpkg-query', '-W', '-f', '${Package}\t${Version}\t${Architecture}\n']);
  return listing
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [name, version, architecture] = line.split('\t');
      return { name: name!, version: version ?? '', architecture: architecture ?? '' };
    });
}

/**
 * The SHA-256 of each installed package's .deb, by file name (debFileName): from the list the
 * mmdebstrap hook wrote, or (debootstrap) hashed where its files are kept.
 */
async function installedDebHashes(ctx: BuildContext, installed: InstalledPackage[], packages?: PackageCache): Promise<Record<string, string>> {
  const listed = new Map<string, string>();
  const text = await readFile(join(ctx.workDir, DEB_HASHES_FILE), 'utf8').catch(() => '');
  for (const [, hash, path] of text.matchAll(/^([0-9a-f]{64}) [ *](.+)$/gm)) listed.set(basename(path!), hash!);
  const hashes: Record<string, string> = {};
  for (const name of installed.map(debFileName)) {
    const dirs = [packages?.dir, join(ctx.rootfs, 'var/cache/apt/archives')].filter((dir): dir is string => dir !== undefined);
    const hash = listed.get(name) ?? (await firstHash(dirs.map((dir) => join(dir, name))));
    if (hash) hashes[name] = hash;
  }
  return hashes;
}

async function firstHash(paths: string[]): Promise<string | undefined> {
  for (const path of paths) {
    const data = await readFile(path).catch(() => undefined);
    if (data) return createHash('sha256').update(data).digest('hex');
  }
  return undefined;
}

/**
 * Bootstraps the tree; with a package cache, takes the .deb files it has and adds those
 * downloaded. The tree's times are clamped to SOURCE_DATE_EPOCH (mmdebstrap makes the rest of
 * the tree reproducible with it). Returns the SHA-256 of the installed packages' .deb files.
 */
async function installTree(ctx: BuildContext, sourceDateEpoch: number, packages?: PackageCache): Promise<Record<string, string>> {
  // The tools' own temp dirs (mmdebstrap's gpghome) inside the work tree: a killed build's are reaped with it.
  const tmp = join(ctx.workDir, 'tmp');
  await mkdir(tmp, { recursive: true, mode: 0o700 });
  const options = { stream: true, env: { TMPDIR: tmp, SOURCE_DATE_EPOCH: String(sourceDateEpoch) } };
  if (packages) await mkdir(packages.dir, { recursive: true, mode: 0o755 });
  const cached = await packages?.files();
  const incoming = packages && ctx.recipe.bootstrap.tool === 'mmdebstrap' ? await packages.createIncoming() : undefined;
  const incomingCleanup = incoming ? ctx.cleanup.add('remove the incoming package files', () => rm(incoming, { recursive: true, force: true })) : undefined;
  if (ctx.recipe.bootstrap.tool === 'mmdebstrap') {
    await ctx.host.run('mmdebstrap', mmdebstrapArgs(ctx, incoming ? packages!.mmdebstrapOptions(incoming) : []), options);
  } else {
    await ctx.host.run('debootstrap', debootstrapArgs(ctx, packages?.dir), options);
  }
  await removeGeneratedHostKeys(ctx.rootfs);
  const installed = await installedPackages(ctx);
  const hashes = await installedDebHashes(ctx, installed, packages);
  if (packages && cached) {
    const use = await packages.update(installed, cached, incoming);
    await incomingCleanup?.release();
    ctx.log.info(`      package cache: ${use.reused} packages from it, ${use.downloaded} downloaded${use.removed ? `, ${use.removed} superseded versions removed` : ''}`);
  }
  const clamped = await clampTimes(ctx.rootfs, sourceDateEpoch);
  ctx.log.verbose(`      ${clamped} entries' times clamped to SOURCE_DATE_EPOCH`);
  return hashes;
}

/** Copies a root tree with owners, modes, links, device nodes and extended attributes. */
async function copyTree(ctx: BuildContext, from: string, to: string): Promise<void> {
  await ctx.host.run('cp', ['-a', '--reflink=auto', from, to]);
}

/** Moves a freshly installed tree into a cache entry; across file systems, copies it. */
async function moveTree(ctx: BuildContext, from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
    await copyTree(ctx, from, to);
    await rm(from, { recursive: true, force: true });
  }
}

/**
 * The build's tree is a copy-on-write view of the cached one (overlayfs): a cache hit copies
 * nothing, later stages write into this build's layer only, and the cache entry stays as it
 * was. `cache prune` keeps an entry while a build has it mounted.
 */
async function viewCachedTree(ctx: BuildContext, cachedTree: string): Promise<void> {
  await mountOverlay(ctx.host, ctx.cleanup, cachedTree, join(ctx.workDir, 'rootfs-layer'), ctx.rootfs);
}

/**
 * Installs the tree, or takes it from the cache when the same inputs were bootstrapped before.
 * Returns the SHA-256 of the installed packages' .deb files (kept in the entry).
 */
async function cachedTree(ctx: BuildContext, cache: StageCache, releases: Record<string, string>, sourceDateEpoch: number): Promise<Record<string, string>> {
  const inputs = await bootstrapCacheInputs(ctx, releases, sourceDateEpoch);
  if (!inputs) return installTree(ctx, sourceDateEpoch);
  const key = cacheKey(inputs);
  const lock = ctx.cleanup.add('release the bootstrap cache lock', await cache.lock('bootstrap', key, ctx.signal));
  try {
    const hit = await cache.lookup('bootstrap', key);
    let hashes: Record<string, string>;
    if (hit) {
      ctx.log.info(`      cache hit: bootstrap ${key} from ${hit.createdAt}`);
      await viewCachedTree(ctx, join(hit.dir, 'rootfs'));
      hashes = (hit.data.debSha256 as Record<string, string> | undefined) ?? {};
    } else {
      ctx.log.info(`      cache miss: bootstrap ${key}`);
      hashes = await installTree(ctx, sourceDateEpoch, PackageCache.beside(cache.root, ctx.recipe.suite));
      const entry = await cache.store('bootstrap', key, inputs, async (dir) => {
        await moveTree(ctx, ctx.rootfs, join(dir, 'rootfs'));
        // dpkg ran without fsync (mmdebstrapArgs): one syncfs makes the entry survive a power cut.
        await ctx.host.run('sync', ['--file-system', dir]);
        return { debSha256: hashes };
      });
      await viewCachedTree(ctx, join(entry.dir, 'rootfs'));
      ctx.log.info(`      cached as bootstrap ${key} (${formatSize(entry.bytes)})`);
    }
    ctx.state.cacheKeys.bootstrap = key;
    return hashes;
  } finally {
    await lock.release();
  }
}

export const bootstrapStage = defineStage({
  name: 'bootstrap',
  summary: 'install the Debian root tree (or take it from the cache)',
  needs: [],
  produces: ['kernelVersion', 'packages', 'archiveReleases', 'sourceDateEpoch', 'debSha256'],
  hostTools: (recipe) => [recipe.bootstrap.tool, 'chroot', 'cp', 'mount', 'umount', 'sync', 'find', 'sha256sum'],
  async run(ctx) {
    const { recipe } = ctx;
    ctx.log.info(`      ${recipe.suite}/${recipe.architecture} from ${ctx.mirror.archive} (${ctx.mirror.origin}), ${packageList(recipe).length} packages requested`);
    const releases = await readReleaseDates(ctx);
    const epoch = chooseSourceDateEpoch(recipe, releases);
    ctx.state.sourceDateEpoch = epoch;
    ctx.state.archiveReleases = releases ?? null;
    ctx.log.info(`      SOURCE_DATE_EPOCH ${epoch.seconds} (${new Date(epoch.seconds * 1000).toISOString()}) from ${epoch.from}`);
    ctx.state.debSha256 = ctx.cache && releases ? await cachedTree(ctx, ctx.cache, releases, epoch.seconds) : await installTree(ctx, epoch.seconds);
    ctx.state.packages = (await installedPackages(ctx)).map(({ name, version }) => ({ name, version }));
    const kernels = (await readdir(join(ctx.rootfs, 'boot'))).filter((f) => f.startsWith('vmlinuz-'));
    if (kernels.length !== 1) throw new Error(`expected one kernel in /boot, found ${kernels.length}`);
    ctx.state.kernelVersion = kernels[0]!.slice('vmlinuz-'.length);
    ctx.log.info(`      ${ctx.state.packages.length} packages installed, kernel ${ctx.state.kernelVersion}`);
  },
});
