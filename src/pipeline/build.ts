/**
 * `keylessgo build`: checks everything that can be checked before touching the disk
 * (recipe, inputs, host, templates), then runs the stages.
 */
import { access, constants, mkdir, readFile, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { HostError, InputError } from '../errors.js';
import { mirrorFromSources, readHostAptSources, type MirrorChoice } from '../host/apt-sources.js';
import { HostRunner } from '../host/run.js';
import { checkSigningKey, type SigningKey } from '../host/ssh-signature.js';
import { missingTools } from '../host/tools.js';
import type { Logger } from '../log.js';
import { readAuthorizedKeys, type AuthorizedKey } from '../recipe/authorized-keys.js';
import { loadRecipe, type LoadedRecipe } from '../recipe/load.js';
import { sourceDateEpochFromEnv } from '../recipe/source-date-epoch.js';
import type { InitramfsNetwork, Recipe } from '../recipe/schema.js';
import { earlyGrubConfig, GRUB_TARGETS, SIGNED_EFI_REPLACE_ORDER } from '../stages/bootloader.js';
import { STAGES } from '../stages/index.js';
import { defaultCacheDir, StageCache } from './cache.js';
import { CleanupStack } from '../base/cleanup.js';
import { derivedBuildIds, type BuildContext, type BuildIds } from './context.js';
import { reapDeadBuilds, recordOutDir, removeWorkTree } from './leftovers.js';
import { BASE_OVERLAY, renderOverlays, type RenderedFile } from './overlay.js';
import { markChildProcesses, ownedTempDir } from '../base/owner.js';
import { runStages, SignalGuard, unwindAll } from './runner.js';
import { readPassphraseFile, SecretStore } from '../base/secrets.js';

export interface BuildOptions {
  recipePath: string;
  outDir: string;
  passphraseFile?: string;
  authorizedKeysFile?: string;
  mirror?: string;
  /** Stage cache directory; null disables the cache. */
  cacheDir?: string | null;
  /** Write vmlinuz, initrd.img and cmdline beside the image. */
  exportBoot?: boolean;
  /** Sign SHA256SUMS with this OpenSSH key (private, or public with the private key in ssh-agent). */
  signKeyFile?: string;
  log: Logger;
}

export const MAPPER_NAME = 'cryptroot';

/**
 * The `ip=` kernel parameter, and BOOTIF= when the recipe pins the interface by MAC
 * (initramfs-tools' configure_networking picks the interface with that address). Without a
 * device the sixth field stays empty, never a bare `ip=dhcp`: clevis-initramfs reads the
 * device from that field and waits for an interface named "dhcp"; with it empty, ipconfig
 * asks on every interface and the first lease wins.
 */
export function kernelIpParameters(network: InitramfsNetwork, hostname: string): string[] {
  const bootif = network.mac ? [`BOOTIF=01-${network.mac.replaceAll(':', '-')}`] : [];
  if (network.mode === 'dhcp') return [`ip=:::::${network.device ?? ''}:dhcp`, ...bootif];
  const device = network.mac ? '' : (network.device ?? 'eth0');
  return [`ip=${network.address}::${network.gateway ?? ''}:${network.netmask}:${hostname}:${device}:none`, ...bootif];
}

export function kernelCmdline(recipe: Recipe): string {
  return [`root=/dev/mapper/${MAPPER_NAME}`, 'ro', ...kernelIpParameters(recipe.initramfs.network, recipe.hostname), ...recipe.kernel.cmdline].join(' ');
}

/** dropbear's command line in the initramfs: no passwords, no forwarding, idle timeout. */
export function dropbearOptions(recipe: Recipe): string {
  const d = recipe.initramfs.dropbear;
  return ['-s', '-j', '-k', '-p', String(d.port), ...(d.idleTimeoutSeconds > 0 ? ['-I', String(d.idleTimeoutSeconds)] : []), ...d.extraOptions].join(' ');
}

/** Options in front of every key in the initramfs authorized_keys. */
export function dropbearKeyOptions(recipe: Recipe): string {
  const options = ['no-port-forwarding', 'no-agent-forwarding', 'no-X11-forwarding'];
  if (recipe.initramfs.dropbear.forceUnlockCommand) options.push('command="cryptroot-unlock"');
  return options.join(',');
}

/** Quotes a string for grub.cfg (GRUB's script quoting follows sh: no escapes inside '...'). */
export function grubQuote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

export function templateData(recipe: Recipe, ids: BuildIds, keys: readonly AuthorizedKey[], mirror: MirrorChoice) {
  return {
    recipe,
    vars: recipe.variables,
    ids,
    mapperName: MAPPER_NAME,
    kernelCmdline: kernelCmdline(recipe),
    dropbearOptions: dropbearOptions(recipe),
    dropbearKeyOptions: dropbearKeyOptions(recipe),
    authorizedKeys: keys.map((k) => `${k.type} ${k.base64}${k.comment ? ` ${k.comment}` : ''}`),
    mirror,
    espUuid: `${ids.espVolumeId.slice(0, 4)}-${ids.espVolumeId.slice(4)}`,
    grubQuote,
    // What the booted machine's esp-sync needs to write the ESP as the bootloader stage does.
    espSync: {
      signedFiles: SIGNED_EFI_REPLACE_ORDER,
      grubEfiModules: GRUB_TARGETS.efi.modules,
      earlyGrubConfig: earlyGrubConfig(ids.bootFsUuid),
    },
  };
}

export async function resolveMirror(recipe: Recipe, flag: string | undefined): Promise<MirrorChoice> {
  const host = mirrorFromSources(await readHostAptSources());
  if (flag) return { archive: flag, security: recipe.bootstrap.securityMirror ?? host?.security, origin: '--mirror' };
  if (recipe.bootstrap.mirror) return { archive: recipe.bootstrap.mirror, security: recipe.bootstrap.securityMirror ?? host?.security, origin: 'recipe' };
  if (!host) throw new InputError('no Debian mirror: the host has no usable apt sources; pass --mirror URL or set bootstrap.mirror in the recipe');
  return { ...host, origin: 'host apt sources' };
}

/**
 * The output directory must be a writable directory, or be creatable: its nearest existing
 * ancestor a writable directory. Nothing is created here (bad input leaves no trace).
 */
async function checkOutDir(outDir: string): Promise<void> {
  let dir = resolve(outDir);
  let info = await stat(dir).catch(() => undefined);
  if (info && !info.isDirectory()) throw new InputError('output path is not a directory', outDir);
  while (!info) {
    dir = dirname(dir);
    info = await stat(dir).catch(() => undefined);
  }
  const problem = !info.isDirectory() ? 'is not a directory' : await access(dir, constants.W_OK).then(() => undefined, () => 'is not writable');
  if (problem) throw new InputError(dir === resolve(outDir) ? `output directory ${problem}` : `cannot create output directory: ${dir} ${problem}`, outDir);
}

/** keylessgo's version (package.json). */
export async function toolVersion(): Promise<string> {
  const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export interface Preflight {
  loaded: LoadedRecipe;
  passphrase: string;
  authorizedKeys: AuthorizedKey[];
  mirror: MirrorChoice;
  ids: BuildIds;
  overlayFiles: RenderedFile[];
  signingKey?: SigningKey;
}

/**
 * Everything that can fail on bad input or a bad host, checked before anything is written:
 * input first (so it is reported even without root), then the host.
 */
export async function preflight(options: BuildOptions): Promise<Preflight> {
  const loaded = await loadRecipe(options.recipePath);
  // A SOURCE_DATE_EPOCH that is no time is bad input, refused before anything is written.
  sourceDateEpochFromEnv();
  const passphraseFile = options.passphraseFile ?? process.env.KEYLESSGO_PASSPHRASE_FILE;
  if (!passphraseFile) throw new InputError('no bootstrap passphrase: pass --passphrase-file FILE or set KEYLESSGO_PASSPHRASE_FILE');
  const passphrase = await readPassphraseFile(passphraseFile);
  const keysFile = options.authorizedKeysFile ?? loaded.authorizedKeysFile;
  if (!keysFile) throw new InputError('no SSH key for the unlock: pass --authorized-keys FILE or set authorizedKeys in the recipe');
  const authorizedKeys = await readAuthorizedKeys(keysFile);
  const mirror = await resolveMirror(loaded.recipe, options.mirror);
  const ids = derivedBuildIds(loaded.sha256);
  const overlayFiles = await renderOverlays([BASE_OVERLAY, ...loaded.overlayDirs], templateData(loaded.recipe, ids, authorizedKeys, mirror));
  await checkOutDir(options.outDir);
  const signingKey = options.signKeyFile ? await checkSigningKey(new HostRunner(options.log), options.signKeyFile) : undefined;
  if (process.getuid?.() !== 0) throw new HostError('keylessgo build must run as root (it attaches loop devices and runs chroot)');
  const missing = await missingTools(STAGES.flatMap((s) => s.hostTools(loaded.recipe)));
  if (missing.length > 0) {
    throw new HostError(`missing host tools: ${missing.map((m) => `${m.name} (package ${m.package})`).join(', ')}; run scripts/install-deps.sh`);
  }
  return { loaded, passphrase, authorizedKeys, mirror, ids, overlayFiles, signingKey };
}

export async function build(options: BuildOptions): Promise<BuildContext> {
  const { log } = options;
  const checked = await preflight(options);
  const { recipe } = checked.loaded;
  await mkdir(options.outDir, { recursive: true });
  // Every process the build starts carries its owner, so a later build can find them if this one is killed.
  await markChildProcesses();
  const cache = options.cacheDir === null ? undefined : new StageCache(options.cacheDir ?? defaultCacheDir(), log);
  await reapDeadBuilds(new HostRunner(log), log);
  await cache?.reapDeadBuilds();

  const guard = new SignalGuard(log);
  const cleanup = new CleanupStack(log);
  try {
    const secrets = await SecretStore.create(cleanup);
    const passphraseFile = await secrets.put('bootstrap-passphrase', checked.passphrase, log.redactor);
    const workDir = await ownedTempDir(`keylessgo-${recipe.name}-`);
    const host = new HostRunner(log, guard.controller.signal);
    cleanup.add(`remove ${workDir}`, () => removeWorkTree(host.forCleanup, workDir));
    await recordOutDir(workDir, resolve(options.outDir));
    const ctx: BuildContext = {
      loaded: checked.loaded,
      recipe,
      log,
      host,
      cleanup,
      secrets,
      signal: guard.controller.signal,
      ids: checked.ids,
      mirror: checked.mirror,
      workDir,
      rootfs: join(workDir, 'rootfs'),
      outDir: resolve(options.outDir),
      passphraseFile,
      authorizedKeys: checked.authorizedKeys,
      overlayFiles: checked.overlayFiles,
      kernelCmdline: kernelCmdline(recipe),
      exportBoot: options.exportBoot ?? false,
      signingKey: checked.signingKey,
      toolVersion: await toolVersion(),
      cache,
      state: { cacheKeys: {}, outputs: [], publish: [], stageSeconds: {}, stageTimes: {} },
    };
    await runStages(ctx, STAGES, guard);
    return ctx;
  } finally {
    await unwindAll(cleanup, log);
    guard.dispose();
  }
}
