/** Everything a build's stages share: inputs, identifiers decided up front, and results. */
import { uuidFromText } from '../base/uuid.js';
import type { LoadedRecipe } from '../recipe/load.js';
import type { Recipe } from '../recipe/schema.js';
import type { MirrorChoice } from '../host/apt-sources.js';
import type { HostRunner } from '../host/run.js';
import type { Logger } from '../log.js';
import type { CacheKind, StageCache } from './cache.js';
import type { CleanupStack } from '../base/cleanup.js';
import type { SecretStore } from '../base/secrets.js';
import type { AuthorizedKey } from '../recipe/authorized-keys.js';
import type { RenderedFile } from './overlay.js';
import type { ByteRange } from '../host/ext4.js';
import type { LoopDevice } from '../host/loop.js';
import type { PartitionLayout, PartitionRole } from '../formats/gpt.js';
import type { SigningKey } from '../host/ssh-signature.js';
import type { SourceDateEpoch } from '../recipe/source-date-epoch.js';

/**
 * Identifiers are chosen before any stage runs so that configuration files (crypttab,
 * fstab, grub.cfg) can be rendered before the filesystems that carry them exist. They are
 * derived from the recipe (derivedBuildIds), not drawn at random: two builds of one recipe
 * carry the same UUIDs, as they carry the same files (reproducible plaintext). Clones of one
 * image share them anyway.
 */
export interface BuildIds {
  luksUuid: string;
  rootFsUuid: string;
  bootFsUuid: string;
  /** FAT volume id, 8 hex digits; shown as XXXX-XXXX in fstab. */
  espVolumeId: string;
  /** The GPT's disk GUID and each partition's unique GUID. */
  diskGuid: string;
  partitionUuids: Record<PartitionRole, string>;
  /** ext4's directory hash seeds (mke2fs draws them at random otherwise). */
  rootHashSeed: string;
  bootHashSeed: string;
}

/** The identifiers of every build of a recipe, from `seed` (the recipe file's SHA-256). */
export function derivedBuildIds(seed: string): BuildIds {
  const uuid = (name: string) => uuidFromText(`keylessgo ${seed} ${name}`);
  return {
    luksUuid: uuid('luks'),
    rootFsUuid: uuid('root ext4'),
    bootFsUuid: uuid('boot ext4'),
    espVolumeId: uuid('esp').slice(0, 8).toUpperCase(),
    diskGuid: uuid('gpt disk'),
    partitionUuids: { bios: uuid('gpt bios'), esp: uuid('gpt esp'), boot: uuid('gpt boot'), root: uuid('gpt root') },
    rootHashSeed: uuid('root ext4 hash seed'),
    bootHashSeed: uuid('boot ext4 hash seed'),
  };
}

export interface OutputFile {
  /** Disk images, the SBOMs, or (with --export-boot) the kernel, initramfs and kernel command line. */
  format: 'raw' | 'qcow2' | 'kernel' | 'initrd' | 'cmdline' | 'cyclonedx' | 'spdx';
  path: string;
  bytes: number;
  sha256: string;
}

/** Everything one stage hands to later stages (and the manifest), each made by exactly one stage (see stage.ts). */
export interface Products {
  // bootstrap
  kernelVersion: string;
  packages: Array<{ name: string; version: string }>;
  /** The `Date:` of each suite's InRelease when the tree was bootstrapped (null: they could not be read). */
  archiveReleases: Record<string, string> | null;
  /** The one time the build writes wherever a tool would write "now" (reproducible plaintext). */
  sourceDateEpoch: SourceDateEpoch;
  /** SHA-256 of each installed package's .deb, by its file name in apt's cache (debFileName). */
  debSha256: Record<string, string>;
  // configure
  /** The root tree is final (overlays, hooks, initramfs host keys): the root filesystem can be made from it. */
  configuredTree: true;
  dropbearHostKeys: Array<{ type: string; fingerprint: string }>;
  // initramfs
  initramfsChecks: Record<string, boolean>;
  /** The per-build archive appended to the initramfs: the base's size, where the archive starts, its size, its files. */
  initramfsAppended: { baseBytes: number; offset: number; bytes: number; paths: string[] };
  // partition
  layout: PartitionLayout;
  loop: LoopDevice;
  rawPartial: string;
  rootfsBytes: number;
  // encrypt
  /** LUKS keyslots in use after encryption. */
  keyslots: number[];
  /** Ranges of the root's LUKS data segment that encryption wrote (offsets into the segment); the rest is holes. */
  encryptedRanges: ByteRange[];
  /** Bytes of the root filesystem written (encrypted); the rest of the partition is a hole. */
  rootUsedBytes: number;
  /** The root header's volume key digest(s): `keylessgo status` tells from them whether a machine still has the image's key. */
  luksHeaderDigests: Array<{ salt: string; digest: string }>;
  /** SHA-256 of the root tree and of its ext4 before encryption, the per-build files (tree paths) left out. */
  rootPlaintext: { tree: string; ext4: string; perBuild: string[] };
  // nbde
  tang: { slot: number; pin: string; servers: Array<{ url: string; thumbprints: string[] }> } | null;
  /** LUKS keyslots in use after binding (null: nothing bound). */
  boundKeyslots: number[] | null;
  // bootloader
  bootUsedBytes: { boot: number; esp: number };
  /** SHA-256 of the disk's start (MBR, GPT, BIOS boot), /boot and the ESP as written; what each leaves out. */
  bootPlaintext: { disk: string; boot: string; esp: string; perBuild: string[] };
  /** The files on the ESP: path there, the host file written, its path in the root tree if it came from a package, what it is. */
  espFiles: Array<{ path: string; source: string; treePath?: string; comment: string }>;
}

/** What several stages add to and the manifest reports (owned by the build, not by one stage). */
export interface BuildRecord {
  /** Cache keys of the stage results this build used or stored. */
  cacheKeys: Partial<Record<CacheKind, string>>;
  outputs: OutputFile[];
  /** Partial outputs and their final names, renamed by the runner after the last stage succeeded. */
  publish: Array<{ from: string; to: string }>;
  stageSeconds: Record<string, number>;
  /** When each stage started and ended, in seconds since the first stage started (stages run side by side). */
  stageTimes: Record<string, { start: number; end: number }>;
}

export interface BuildContext {
  readonly loaded: LoadedRecipe;
  readonly recipe: Recipe;
  readonly log: Logger;
  readonly host: HostRunner;
  readonly cleanup: CleanupStack;
  readonly secrets: SecretStore;
  readonly signal: AbortSignal;
  readonly ids: BuildIds;
  readonly mirror: MirrorChoice;
  /** 0700 scratch directory for this build, removed at the end. */
  readonly workDir: string;
  /** The image's root tree while it is being built (inside workDir). */
  readonly rootfs: string;
  readonly outDir: string;
  /** Path of the bootstrap passphrase inside the secret store. */
  readonly passphraseFile: string;
  readonly authorizedKeys: readonly AuthorizedKey[];
  /** Overlay files rendered before the build started (template errors surface early). */
  readonly overlayFiles: readonly RenderedFile[];
  /** Kernel command line written to grub.cfg (root=, ip= and the recipe's parameters). */
  readonly kernelCmdline: string;
  /** Also write the kernel, initramfs and command line beside the image (network boot). */
  readonly exportBoot: boolean;
  /** Sign SHA256SUMS with this key (SHA256SUMS.sig). */
  readonly signingKey?: SigningKey;
  readonly toolVersion: string;
  /** Stage cache; undefined with --no-cache. */
  readonly cache?: StageCache;
  /** What the stages made: products (each from one stage, declared in its `produces`) and the build's records. */
  readonly state: Partial<Products> & BuildRecord;

}
