/**
 * export: detaches the disk, converts it, writes SHA256SUMS and manifest.json. Every
 * output is written under a *.partial name and renamed only when the whole set is done.
 *
 * Host commands: qemu-img, sfdisk (-J for the manifest's partition table).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { BuildContext, OutputFile } from '../pipeline/context.js';
import type { Stage } from '../pipeline/stage.js';
import { packageList } from './bootstrap.js';
import { formatSize } from '../recipe/size.js';

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

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
    mirror: { archive: ctx.mirror.archive, security: ctx.mirror.security ?? null, origin: ctx.mirror.origin },
    kernel: { version: ctx.state.kernelVersion, cmdline: ctx.kernelCmdline },
    disk: { sizeBytes: recipe.disk.size, growOnFirstBoot: recipe.disk.growOnFirstBoot },
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
    filesystems: { rootUuid: ctx.ids.rootFsUuid, bootUuid: ctx.ids.bootFsUuid, espVolumeId: ctx.ids.espVolumeId, rootTreeBytes: ctx.state.rootfsBytes, rootEncryptedBytes: ctx.state.rootEncryptedBytes },
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
  };
}

export const exportStage: Stage = {
  name: 'export',
  summary: 'raw/qcow2 images, SHA256SUMS and manifest.json',
  hostTools: (recipe) => (recipe.output.formats.includes('qcow2') ? ['qemu-img', 'sfdisk'] : ['sfdisk']),
  async run(ctx) {
    const { recipe, outDir } = ctx;
    await ctx.state.loop!.handle.release();
    const rawPartial = ctx.state.rawPartial!;
    const partitionTable = JSON.parse(await ctx.host.run('sfdisk', ['--json', rawPartial])) as unknown;

    const pending: Array<{ partial: string; final: string; format: OutputFile['format'] }> = [];
    if (recipe.output.formats.includes('qcow2')) {
      const partial = join(outDir, `${recipe.name}.qcow2.partial`);
      ctx.cleanup.add(`remove ${partial}`, () => rm(partial, { force: true }));
      await ctx.host.run('qemu-img', qemuImgConvertArgs(rawPartial, partial, recipe.output.compress));
      pending.push({ partial, final: join(outDir, `${recipe.name}.qcow2`), format: 'qcow2' });
    }
    if (recipe.output.formats.includes('raw')) pending.push({ partial: rawPartial, final: join(outDir, `${recipe.name}.raw`), format: 'raw' });

    for (const file of pending) {
      const { size } = await stat(file.partial);
      ctx.state.outputs.push({ format: file.format, path: file.final, bytes: size, sha256: await sha256File(file.partial) });
    }
    const sums = ctx.state.outputs.map((o) => `${o.sha256}  ${basename(o.path)}\n`).join('');
    const sumsPartial = join(outDir, 'SHA256SUMS.partial');
    const manifestPartial = join(outDir, 'manifest.json.partial');
    ctx.cleanup.add(`remove ${sumsPartial}`, () => rm(sumsPartial, { force: true }));
    ctx.cleanup.add(`remove ${manifestPartial}`, () => rm(manifestPartial, { force: true }));
    await writeFile(sumsPartial, sums);
    // The export stage's own time is not known yet; the manifest records the stages before it.
    await writeFile(manifestPartial, `${JSON.stringify(buildManifest(ctx, partitionTable, new Date()), null, 2)}\n`);

    for (const file of pending) await rename(file.partial, file.final);
    await rename(sumsPartial, join(outDir, 'SHA256SUMS'));
    await rename(manifestPartial, join(outDir, 'manifest.json'));
    for (const o of ctx.state.outputs) ctx.log.info(`      ${o.path} (${formatSize(o.bytes)} apparent)`);
  },
};
