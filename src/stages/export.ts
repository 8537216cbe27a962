/**
 * export: detaches the disk, converts it, writes SHA256SUMS and manifest.json. Every
 * output is written under a *.partial name; the runner renames the set once the build succeeded.
 *
 * Host commands: qemu-img, sfdisk (-J for the manifest's partition table), sha256sum.
 */
import { rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { BuildContext, OutputFile } from '../pipeline/context.js';
import type { Stage } from '../pipeline/stage.js';
import { packageList } from './bootstrap.js';
import { formatSize } from '../recipe/size.js';

export function qemuImgConvertArgs(raw: string, qcow2: string, compress: boolean): string[] {
  return ['convert', '-f', 'raw', '-O', 'qcow2', ...(compress ? ['-c'] : []), '-o', 'compat=1.1', raw, qcow2];
}

/** The manifest: what is in the image, how it was built, and what the boot test compares against. */
export function buildManifest(ctx: BuildContext, partitionTable: unknown, builtAt: Date) {
  const { recipe } = ctx;
  return {
    tool: { name: 'keylessgo', version: ctx.toolVersion },
    builtAt: builtAt.toISOString(),
    recipe: { name: recipe.name, file: basename(ctx.loaded.file), sha256: ctx.loaded.sha256, suite: recipe.suite, architecture: recipe.architecture },
    mirror: { archive: ctx.mirror.archive, security: ctx.mirror.security ?? null, origin: ctx.mirror.origin, releases: ctx.state.archiveReleases ?? null },
    kernel: { version: ctx.state.kernelVersion, cmdline: ctx.kernelCmdline },
    luks: {
      uuid: ctx.ids.luksUuid,
      cipher: recipe.luks.cipher,
      keySize: recipe.luks.keySize,
      sectorSize: recipe.luks.sectorSize,
      pbkdf: recipe.luks.pbkdf,
      keyslots: ctx.state.keyslots,
      mapperName: 'cryptroot',
    },
    nbde: { clevis: recipe.nbde.clevis, threshold: recipe.nbde.threshold, binding: ctx.state.tang ?? null },
    filesystems: { rootUuid: ctx.ids.rootFsUuid, bootUuid: ctx.ids.bootFsUuid, espVolumeId: ctx.ids.espVolumeId, rootTreeBytes: ctx.state.rootfsBytes, usedBytes: ctx.state.usedBytes },
    partitions: ctx.state.layout!.partitions,
    partitionTable,
    dropbear: {
      hostKeys: ctx.state.dropbearHostKeys,
      authorizedKeys: ctx.authorizedKeys.map((k) => ({ type: k.type, fingerprint: k.fingerprint, comment: k.comment })),
      port: recipe.initramfs.dropbear.port,
    },
    initramfs: { checks: ctx.state.initramfsChecks, network: recipe.initramfs.network, appended: ctx.state.initramfsAppended },
    cache: ctx.state.cacheKeys,
    packages: { requested: packageList(recipe), installed: ctx.state.packages },
    outputs: ctx.state.outputs.map((o) => ({ ...o, path: basename(o.path) })),
    stageSeconds: ctx.state.stageSeconds,
    hostToolSeconds: Object.fromEntries(Object.entries(ctx.host.toolSeconds).map(([tool, s]) => [tool, Math.round(s * 10) / 10])),
  };
}

export const exportStage: Stage = {
  name: 'export',
  summary: 'raw/qcow2 images, SHA256SUMS and manifest.json',
  hostTools: (recipe) => [...(recipe.output.formats.includes('qcow2') ? ['qemu-img'] : []), 'sfdisk', 'sha256sum'],
  async run(ctx) {
    const { recipe, outDir } = ctx;
    await ctx.state.loop!.handle.release();
    const rawPartial = ctx.state.rawPartial!;
    const partitionTable = JSON.parse(await ctx.host.run('sfdisk', ['--json', rawPartial])) as unknown;

    // The raw image is hashed while qemu-img reads it for the qcow2: two cores, one pass through the page cache.
    const pending: Array<{ partial: string; final: string; format: OutputFile['format'] }> = [];
    const jobs: Array<Promise<void>> = [];
    if (recipe.output.formats.includes('raw')) pending.push({ partial: rawPartial, final: join(outDir, `${recipe.name}.raw`), format: 'raw' });
    if (recipe.output.formats.includes('qcow2')) {
      const partial = join(outDir, `${recipe.name}.qcow2.partial`);
      ctx.cleanup.add(`remove ${partial}`, () => rm(partial, { force: true }));
      jobs.push(ctx.host.run('qemu-img', qemuImgConvertArgs(rawPartial, partial, recipe.output.compress)).then(() => undefined));
      pending.push({ partial, final: join(outDir, `${recipe.name}.qcow2`), format: 'qcow2' });
    }
    const sha256 = async (path: string) => (await ctx.host.run('sha256sum', [path])).split(' ')[0]!;
    const hashes = new Map<string, string>();
    if (recipe.output.formats.includes('raw')) jobs.push(sha256(rawPartial).then((hash) => void hashes.set(rawPartial, hash)));
    await Promise.all(jobs);
    for (const file of pending) {
      const { size } = await stat(file.partial);
      ctx.state.outputs.push({ format: file.format, path: file.final, bytes: size, sha256: hashes.get(file.partial) ?? (await sha256(file.partial)) });
    }
    const sums = ctx.state.outputs.map((o) => `${o.sha256}  ${basename(o.path)}\n`).join('');
    const sumsPartial = join(outDir, 'SHA256SUMS.partial');
    const manifestPartial = join(outDir, 'manifest.json.partial');
    ctx.cleanup.add(`remove ${sumsPartial}`, () => rm(sumsPartial, { force: true }));
    ctx.cleanup.add(`remove ${manifestPartial}`, () => rm(manifestPartial, { force: true }));
    await writeFile(sumsPartial, sums);
    // The export stage's own time is not known yet; the manifest records the stages before it.
    await writeFile(manifestPartial, `${JSON.stringify(buildManifest(ctx, partitionTable, new Date()), null, 2)}\n`);

    // Renamed to their final names by the runner once every stage has succeeded.
    ctx.state.publish.push(...pending.map((f) => ({ from: f.partial, to: f.final })));
    ctx.state.publish.push({ from: sumsPartial, to: join(outDir, 'SHA256SUMS') }, { from: manifestPartial, to: join(outDir, 'manifest.json') });
    for (const o of ctx.state.outputs) ctx.log.info(`      ${o.path} (${formatSize(o.bytes)} apparent)`);
  },
};
