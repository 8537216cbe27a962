/**
 * export: detaches the disk, converts it, writes the SBOMs (CycloneDX and SPDX, from the
 * image's own dpkg database), manifest.json (with the image properties Glance and Ironic want
 * and the plaintext digests), SHA256SUMS (signed with --sign-key), and with --export-boot the
 * kernel, initramfs and kernel command line. Every output is written under a *.partial name; the runner
 * renames the set once the build succeeded.
 *
 * Host commands: sfdisk (-J for the manifest's partition table), qemu-img (a compressed qcow2
 * only; formats/qcow2.ts writes the uncompressed one). Hashes are computed in Node (OpenSSL's
 * SHA-256), the raw image's holes from zeros in memory, not read from disk.
 */
import { createHash } from 'node:crypto';
import { copyFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { LUKS_DATA_OFFSET_BYTES } from '../host/cryptsetup.js';
import { SIGNATURE_NAMESPACE, signData, SUMS_SIGNATURE_FILE } from '../host/ssh-signature.js';
import type { ByteRange } from '../host/ext4.js';
import type { BuildContext, OutputFile } from '../pipeline/context.js';
import { sha256File } from '../pipeline/sparse-sha256.js';
import { writeQcow2 } from '../formats/qcow2.js';
import { allSettledOrThrow } from '../base/settle.js';
import { defineStage } from '../pipeline/stage.js';
import { SUITE_VERSIONS, type Recipe } from '../recipe/schema.js';
import { packageList } from './bootstrap.js';
import type { PartitionLayout } from '../formats/gpt.js';
import { bootTreeDir, partitionByRole } from './partition.js';
import { formatSize } from '../recipe/size.js';
import { cycloneDxJson } from '../formats/sbom/cyclonedx.js';
import { SBOM_OUTPUTS } from '../formats/sbom/model.js';
import { spdxJson } from '../formats/sbom/spdx.js';
import { sbomInput } from './sbom.js';

/**
 * How the image boots: UEFI always (EFI/BOOT/BOOTX64.EFI on the ESP), BIOS through GRUB's
 * core.img in the BIOS boot partition except on 4Kn disks, which BIOS cannot boot from.
 */
export function bootModes(disk: Recipe['disk']): Array<'uefi' | 'bios'> {
  return disk.sectorSize === 512 ? ['uefi', 'bios'] : ['uefi'];
}

const GLANCE_ARCHITECTURES: Record<Recipe['architecture'], string> = { amd64: 'x86_64' };

/** A disk image's properties as Glance stores them (`openstack image create --property`) and Ironic reads them. */
export function glanceProperties(recipe: Recipe, image: Pick<OutputFile, 'format' | 'sha256'>) {
  return {
    disk_format: image.format,
    container_format: 'bare',
    os_hash_algo: 'sha256',
    os_hash_value: image.sha256,
    min_disk: Math.ceil(recipe.disk.size / 1024 ** 3),
    os_distro: 'debian',
    os_version: SUITE_VERSIONS[recipe.suite],
    architecture: GLANCE_ARCHITECTURES[recipe.architecture],
  };
}

const isDiskImage = (output: OutputFile) => output.format === 'raw' || output.format === 'qcow2';

interface PendingOutput {
  partial: string;
  final: string;
  format: OutputFile['format'];
}

/** vmlinuz, initrd.img (the one on /boot, with this build's keys) and cmdline, for a network-booted kernel that unlocks the local disk. */
async function writeBootFiles(ctx: BuildContext): Promise<PendingOutput[]> {
  const version = ctx.state.kernelVersion!;
  const bootTree = bootTreeDir(ctx);
  const files: Array<[name: string, format: OutputFile['format'], write: (to: string) => Promise<void>]> = [
    ['vmlinuz', 'kernel', (to) => copyFile(join(bootTree, `vmlinuz-${version}`), to)],
    ['initrd.img', 'initrd', (to) => copyFile(join(bootTree, `initrd.img-${version}`), to)],
    ['cmdline', 'cmdline', (to) => writeFile(to, `${ctx.kernelCmdline}\n`)],
  ];
  const pending: PendingOutput[] = [];
  for (const [name, format, write] of files) {
    const partial = join(ctx.outDir, `${name}.partial`);
    ctx.cleanup.add(`remove ${partial}`, () => rm(partial, { force: true }));
    await write(partial);
    pending.push({ partial, final: join(ctx.outDir, name), format });
  }
  return pending;
}

/**
 * The ranges of the raw disk that may hold data: everything but the root's LUKS data segment,
 * and of that segment only what encryption wrote (nothing else writes there; the rest is holes).
 */
export function rawDataRanges(layout: PartitionLayout, encryptedRanges: readonly ByteRange[]): ByteRange[] {
  const root = partitionByRole(layout, 'root');
  const rootEnd = root.startBytes + root.sizeBytes;
  return [{ start: 0, length: root.startBytes + LUKS_DATA_OFFSET_BYTES }, ...encryptedDiskRanges(layout, encryptedRanges), { start: rootEnd, length: layout.diskBytes - rootEnd }];
}

/** The encrypted ranges (relative to the root's data segment) as ranges of the disk. */
function encryptedDiskRanges(layout: PartitionLayout, encryptedRanges: readonly ByteRange[]): ByteRange[] {
  const segmentStart = partitionByRole(layout, 'root').startBytes + LUKS_DATA_OFFSET_BYTES;
  return encryptedRanges.map((r) => ({ start: segmentStart + r.start, length: r.length }));
}

/** qemu-img writes the compressed qcow2 (zlib clusters); an uncompressed one is written by writeQcow2. */
export function qemuImgConvertArgs(raw: string, qcow2: string): string[] {
  return ['convert', '-f', 'raw', '-O', 'qcow2', '-c', '-o', 'compat=1.1', raw, qcow2];
}

/**
 * The digests of the image's plaintext, to compare two builds without decrypting anything:
 * each of these is the same for two builds of a recipe from the same mirror state, the
 * `perBuild` parts left out (keylessgo diff names every difference).
 */
function reproducibility(ctx: BuildContext, initramfsBaseSha256: string | undefined) {
  const { rootPlaintext: root, bootPlaintext: boot } = ctx.state;
  return {
    sourceDateEpoch: ctx.state.sourceDateEpoch ?? null,
    plaintext: {
      rootTree: root?.tree ?? null,
      rootExt4: root?.ext4 ?? null,
      initramfsBase: initramfsBaseSha256 ?? null,
      boot: boot?.boot ?? null,
      esp: boot?.esp ?? null,
      diskStart: boot?.disk ?? null,
    },
    perBuild: [...(root?.perBuild ?? []).map((path) => `/${path} (root tree and ext4)`), ...(boot?.perBuild ?? [])],
  };
}

/** The manifest: what is in the image, how it was built, and what the boot test compares against. */
export function buildManifest(ctx: BuildContext, partitionTable: unknown, builtAt: Date, initramfsBaseSha256?: string) {
  const { recipe } = ctx;
  return {
    tool: { name: 'keylessgo', version: ctx.toolVersion },
    builtAt: builtAt.toISOString(),
    recipe: { name: recipe.name, file: basename(ctx.loaded.file), sha256: ctx.loaded.sha256, suite: recipe.suite, architecture: recipe.architecture },
    mirror: { archive: ctx.mirror.archive, security: ctx.mirror.security ?? null, origin: ctx.mirror.origin, releases: ctx.state.archiveReleases ?? null },
    kernel: { version: ctx.state.kernelVersion, cmdline: ctx.kernelCmdline },
    disk: { sizeBytes: recipe.disk.size, growOnFirstBoot: recipe.disk.growOnFirstBoot, sectorSize: recipe.disk.sectorSize },
    secureBoot: recipe.boot.secureBoot,
    luks: {
      uuid: ctx.ids.luksUuid,
      cipher: recipe.luks.cipher,
      keySize: recipe.luks.keySize,
      sectorSize: recipe.luks.sectorSize,
      pbkdf: recipe.luks.pbkdf,
      keyslots: ctx.state.boundKeyslots ?? ctx.state.keyslots,
      headerDigests: ctx.state.luksHeaderDigests ?? null,
      mapperName: 'cryptroot',
    },
    nbde: { clevis: recipe.nbde.clevis, threshold: recipe.nbde.threshold, binding: ctx.state.tang ?? null },
    filesystems: { rootUuid: ctx.ids.rootFsUuid, bootUuid: ctx.ids.bootFsUuid, espVolumeId: ctx.ids.espVolumeId, rootTreeBytes: ctx.state.rootfsBytes, usedBytes: { root: ctx.state.rootUsedBytes, ...ctx.state.bootUsedBytes } },
    partitions: ctx.state.layout!.partitions,
    partitionTable,
    dropbear: {
      hostKeys: ctx.state.dropbearHostKeys,
      authorizedKeys: ctx.authorizedKeys.map((k) => ({ type: k.type, fingerprint: k.fingerprint, comment: k.comment })),
      port: recipe.initramfs.dropbear.port,
    },
    initramfs: { checks: ctx.state.initramfsChecks, network: recipe.initramfs.network, appended: ctx.state.initramfsAppended },
    cache: ctx.state.cacheKeys,
    reproducibility: reproducibility(ctx, initramfsBaseSha256),
    packages: { requested: packageList(recipe), installed: ctx.state.packages },
    bootModes: bootModes(recipe.disk),
    outputs: ctx.state.outputs.map((o) => ({ ...o, path: basename(o.path), ...(isDiskImage(o) ? { glance: glanceProperties(recipe, o) } : {}) })),
    stageSeconds: ctx.state.stageSeconds,
    stageTimes: ctx.state.stageTimes,
    signature: ctx.signingKey ? { file: SUMS_SIGNATURE_FILE, format: 'sshsig', namespace: SIGNATURE_NAMESPACE, signs: 'SHA256SUMS', key: { type: ctx.signingKey.type, fingerprint: ctx.signingKey.fingerprint } } : null,
    hostToolSeconds: Object.fromEntries(Object.entries(ctx.host.clock.seconds).map(([tool, s]) => [tool, Math.round(s * 10) / 10])),
    hostToolBusySeconds: Math.round(ctx.host.clock.busySeconds * 10) / 10,
  };
}

/**
 * `<name>.cdx.json` and `<name>.spdx.json` from the image's own tree, as outputs (listed in the
 * manifest and SHA256SUMS). `partial(name)` gives the file to write, published with the rest.
 */
async function writeSboms(ctx: BuildContext, partial: (name: string) => string): Promise<void> {
  ctx.host.step('write the SBOMs');
  const input = await sbomInput(ctx);
  const texts: Record<(typeof SBOM_OUTPUTS)[number]['format'], string> = { cyclonedx: await cycloneDxJson(input), spdx: spdxJson(input) };
  for (const { format, suffix } of SBOM_OUTPUTS) {
    const name = `${ctx.recipe.name}${suffix}`;
    await writeFile(partial(name), texts[format]);
    ctx.state.outputs.push({ format, path: join(ctx.outDir, name), bytes: Buffer.byteLength(texts[format]), sha256: createHash('sha256').update(texts[format]).digest('hex') });
  }
  ctx.log.info(`      SBOMs: ${input.packages.length} packages, ${input.files.length} boot files (${SBOM_OUTPUTS.map((o) => o.spec).join(', ')})`);
}

export const exportStage = defineStage({
  name: 'export',
  summary: 'raw/qcow2 images, SBOMs, SHA256SUMS and manifest.json',
  // Everything the manifest reports, so every other stage.
  needs: ['kernelVersion', 'packages', 'archiveReleases', 'sourceDateEpoch', 'debSha256', 'dropbearHostKeys', 'initramfsChecks', 'initramfsAppended', 'rootfsBytes', 'layout', 'loop', 'rawPartial', 'keyslots', 'encryptedRanges', 'rootUsedBytes', 'luksHeaderDigests', 'rootPlaintext', 'tang', 'boundKeyslots', 'bootUsedBytes', 'bootPlaintext', 'espFiles'],
  produces: [],
  hostTools: (recipe) => [...(recipe.output.formats.includes('qcow2') && recipe.output.compress ? ['qemu-img'] : []), 'sfdisk'],
  async run(ctx) {
    const { recipe, outDir } = ctx;
    // Read through the loop device: sfdisk reads a plain file as 512-byte sectors, whatever the GPT's.
    const partitionTable = JSON.parse(await ctx.host.run('sfdisk', ['--json', ctx.state.loop!.device])) as unknown;
    await ctx.state.loop!.handle.release();
    const rawPartial = ctx.state.rawPartial!;
    ctx.host.step('hash the raw image and write the qcow2');

    // The raw image is hashed in a worker thread while this thread writes the qcow2, hashing it
    // as it goes; a compressed qcow2 comes from qemu-img and is hashed once complete.
    // Without raw in the formats the disk file is only the qcow2's source: not hashed, not published.
    const hashed: Array<Promise<{ file: PendingOutput; sha256: string }>> = [];
    const hash = (file: PendingOutput, dataRanges?: readonly ByteRange[]) => sha256File(file.partial, dataRanges).then((sha256) => ({ file, sha256 }));
    const { encryptedRanges } = ctx.state;
    const dataRanges = encryptedRanges && rawDataRanges(ctx.state.layout!, encryptedRanges);
    if (recipe.output.formats.includes('raw')) {
      hashed.push(hash({ partial: rawPartial, final: join(outDir, `${recipe.name}.raw`), format: 'raw' }, dataRanges));
    }
    if (recipe.output.formats.includes('qcow2')) {
      const qcow2: PendingOutput = { partial: join(outDir, `${recipe.name}.qcow2.partial`), final: join(outDir, `${recipe.name}.qcow2`), format: 'qcow2' };
      ctx.cleanup.add(`remove ${qcow2.partial}`, () => rm(qcow2.partial, { force: true }));
      hashed.push(
        recipe.output.compress
          ? ctx.host.run('qemu-img', qemuImgConvertArgs(rawPartial, qcow2.partial)).then(() => hash(qcow2))
          : writeQcow2({
              raw: rawPartial,
              qcow2: qcow2.partial,
              dataRanges: dataRanges ?? [{ start: 0, length: ctx.state.layout!.diskBytes }],
              // Ciphertext has no all-zero cluster: only the rest is read to find them.
              knownDataRanges: encryptedRanges && encryptedDiskRanges(ctx.state.layout!, encryptedRanges),
              signal: ctx.signal,
            }).then((sha256) => ({ file: qcow2, sha256 })),
      );
    }
    if (ctx.exportBoot) hashed.push(...(await writeBootFiles(ctx)).map((file) => hash(file)));
    // Settled, not raced: a failed hash must not let cleanup remove files still being written.
    const results = await allSettledOrThrow(hashed);
    const pending = results.map((r) => r.file);
    for (const { file, sha256 } of results) {
      const { size } = await stat(file.partial);
      ctx.state.outputs.push({ format: file.format, path: file.final, bytes: size, sha256 });
    }
    // Renamed to their final names by the runner once every stage has succeeded, SHA256SUMS last.
    ctx.state.publish.push(...pending.map((f) => ({ from: f.partial, to: f.final })));
    const partial = (name: string) => {
      const file = join(outDir, `${name}.partial`);
      ctx.cleanup.add(`remove ${file}`, () => rm(file, { force: true }));
      ctx.state.publish.push({ from: file, to: join(outDir, name) });
      return file;
    };
    await writeSboms(ctx, partial);
    const initrd = join(bootTreeDir(ctx), `initrd.img-${ctx.state.kernelVersion}`);
    const initramfsBase = await sha256File(initrd, undefined, { window: { start: 0, length: ctx.state.initramfsAppended!.baseBytes } });
    // The export stage's own time is not known yet; the manifest records the stages before it.
    const manifest = `${JSON.stringify(buildManifest(ctx, partitionTable, new Date(), initramfsBase), null, 2)}\n`;
    await writeFile(partial('manifest.json'), manifest);
    // SHA256SUMS covers the manifest too: a signature of SHA256SUMS then vouches for everything.
    const sums = [...ctx.state.outputs.map((o) => `${o.sha256}  ${basename(o.path)}\n`), `${createHash('sha256').update(manifest).digest('hex')}  manifest.json\n`].join('');
    await writeFile(partial('SHA256SUMS'), sums);
    if (ctx.signingKey) {
      await writeFile(partial(SUMS_SIGNATURE_FILE), await signData(ctx.host, ctx.signingKey, sums));
      ctx.log.info(`      SHA256SUMS signed by ${ctx.signingKey.type} key ${ctx.signingKey.fingerprint} (${SUMS_SIGNATURE_FILE})`);
    }
    for (const o of ctx.state.outputs) ctx.log.info(`      ${o.path} (${formatSize(o.bytes)} apparent)`);
  },
});
