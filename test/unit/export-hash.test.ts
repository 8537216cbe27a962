/**
 * Hashing in Node against coreutils' sha256sum, on sparse files whose holes are hashed from
 * zeros in memory, and the export stage on a small real disk file (sfdisk, qemu-img; no loop
 * device): SHA256SUMS verifies with `sha256sum -c`, the qcow2 holds the raw's content, and
 * without raw in the formats nothing of the raw is hashed or published.
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LUKS_DATA_OFFSET_BYTES } from '../../src/host/cryptsetup.js';
import type { ByteRange } from '../../src/host/ext4.js';
import { HostRunner } from '../../src/host/run.js';
import { CleanupStack } from '../../src/base/cleanup.js';
import type { BuildContext } from '../../src/pipeline/context.js';
import { hashPieces, sha256File } from '../../src/pipeline/sparse-sha256.js';
import { exportStage, rawDataRanges } from '../../src/stages/export.js';
import { partitionByRole, partitionLayout, sfdiskScript } from '../../src/stages/partition.js';
import { captureLogger, IDS, MIRROR, recipeWith, tempDir } from './helpers.js';

const MiB = 1024 * 1024;

const sha256sum = async (path: string) => (await execa('sha256sum', [path])).stdout.split(' ')[0];

async function writeAt(path: string, at: number, data: Buffer): Promise<void> {
  const file = await open(path, 'r+');
  await file.write(data, 0, data.length, at);
  await file.close();
}

/** A sparse file of `size` bytes with random data written at each range. */
async function sparseFile(path: string, size: number, ranges: readonly ByteRange[]): Promise<void> {
  await writeFile(path, '');
  await truncate(path, size);
  for (const range of ranges) await writeAt(path, range.start, randomBytes(range.length));
}

describe('hashPieces', () => {
  it('cuts the file into chunk-sized pieces, reading the data ranges (sorted, overlaps once, clipped) and nothing else', () => {
    const pieces = hashPieces(10 * MiB, [
      { start: 9 * MiB, length: 5 * MiB },
      { start: MiB, length: MiB },
      { start: 1.5 * MiB, length: MiB },
    ]);
    expect(pieces).toEqual([
      { start: 0, length: MiB, read: false },
      { start: MiB, length: MiB, read: true },
      { start: 2 * MiB, length: 0.5 * MiB, read: true },
      { start: 2.5 * MiB, length: 4 * MiB, read: false },
      { start: 6.5 * MiB, length: 2.5 * MiB, read: false },
      { start: 9 * MiB, length: MiB, read: true },
    ]);
    expect(hashPieces(0, [])).toEqual([]);
  });
});

describe('sha256File', () => {
  it("equals sha256sum's hash of a sparse file, read whole or with its holes hashed as zeros", async () => {
    const work = await tempDir();
    const path = join(work, 'disk');
    const written = [
      { start: 0, length: 4096 },
      { start: 5 * MiB + 512, length: 9 * MiB + 7 },
      { start: 30 * MiB, length: 100 },
    ];
    await sparseFile(path, 31 * MiB + 3, written);
    const expected = await sha256sum(path);
    expect(await sha256File(path)).toBe(expected);
    expect(await sha256File(path, written)).toBe(expected);
    // The ranges are trusted: one left out is hashed as zeros, not read, so the hash differs.
    expect(await sha256File(path, written.slice(0, 2))).not.toBe(expected);
    await writeFile(path, '');
    expect(await sha256File(path)).toBe(await sha256sum(path));
  });
});

describe('rawDataRanges', () => {
  it("is everything but the root's data segment, of which only the encrypted ranges", () => {
    const layout = partitionLayout(recipeWith().disk);
    const root = partitionByRole(layout, 'root');
    const segment = root.startBytes + LUKS_DATA_OFFSET_BYTES;
    expect(rawDataRanges(layout, [{ start: 0, length: MiB }, { start: 8 * MiB, length: 4096 }])).toEqual([
      { start: 0, length: segment },
      { start: segment, length: MiB },
      { start: segment + 8 * MiB, length: 4096 },
      { start: root.startBytes + root.sizeBytes, length: layout.diskBytes - root.startBytes - root.sizeBytes },
    ]);
  });
});

describe('export stage', () => {
  const KERNEL = '6.1.0-1-amd64';

  /** The parts of a root tree the SBOMs are made from: a dpkg database, Debian's version, /boot, the ESP's sources. */
  async function rootTree(work: string) {
    const rootfs = join(work, 'rootfs');
    for (const dir of ['var/lib/dpkg/info', 'etc', 'boot', 'usr/lib/shim']) await mkdir(join(rootfs, dir), { recursive: true });
    await writeFile(join(rootfs, 'var/lib/dpkg/status'), `Package: linux-image-${KERNEL}\nStatus: install ok installed\nArchitecture: amd64\nSource: linux-signed-amd64 (6.1.1+1)\nVersion: 6.1.1-1\n`);
    await writeFile(join(rootfs, `var/lib/dpkg/info/linux-image-${KERNEL}.list`), `/boot/vmlinuz-${KERNEL}\n`);
    await writeFile(join(rootfs, 'etc/debian_version'), '12.11\n');
    await writeFile(join(rootfs, `boot/vmlinuz-${KERNEL}`), 'kernel');
    await writeFile(join(rootfs, `boot/initrd.img-${KERNEL}`), 'initramfs base, then the appended archive');
    await writeFile(join(rootfs, 'usr/lib/shim/shimx64.efi.signed'), 'shim');
    return {
      rootfs,
      kernelVersion: KERNEL,
      sourceDateEpoch: { seconds: 1_700_000_000, from: 'test' },
      debSha256: { [`linux-image-${KERNEL}_6.1.1-1_amd64.deb`]: 'ef'.repeat(32) },
      espFiles: [{ path: 'EFI/BOOT/BOOTX64.EFI', source: join(rootfs, 'usr/lib/shim/shimx64.efi.signed'), treePath: 'usr/lib/shim/shimx64.efi.signed', comment: 'shim' }],
      initramfsAppended: { baseBytes: 15, offset: 16, bytes: 10, paths: [] },
    };
  }

  /** A small partitioned disk file with data in the ESP, the LUKS header area and a few root ranges, exported to `formats`. */
  async function exportDisk(formats: string, compress = false) {
    const work = await tempDir();
    const { rootfs, ...products } = await rootTree(work);
    const recipe = recipeWith(`disk: {size: 1GiB, esp: 32MiB, boot: 128MiB}\noutput: {formats: ${formats}, compress: ${compress}}\n`);
    const layout = partitionLayout(recipe.disk);
    const rawPartial = join(work, 'test.raw.partial');
    const encryptedRanges = [{ start: 0, length: 3 * MiB }, { start: 200 * MiB, length: 4096 }];
    const root = partitionByRole(layout, 'root');
    const segment = root.startBytes + LUKS_DATA_OFFSET_BYTES;
    await sparseFile(rawPartial, layout.diskBytes, [
      { start: partitionByRole(layout, 'esp').startBytes, length: MiB },
      { start: root.startBytes, length: 64 * 1024 },
      ...encryptedRanges.map((r) => ({ start: segment + r.start, length: r.length })),
    ]);
    await execa('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', rawPartial], { input: sfdiskScript(layout) });
    const { log } = captureLogger();
    const cleanup = new CleanupStack(log);
    const ctx = {
      recipe,
      loaded: { file: '/recipes/test.yaml', sha256: 'ab'.repeat(32) },
      mirror: MIRROR,
      ids: IDS,
      authorizedKeys: [],
      kernelCmdline: 'root=/dev/mapper/cryptroot ro',
      toolVersion: '0.0.0',
      exportBoot: false,
      outDir: work,
      rootfs,
      log,
      host: new HostRunner(log),
      cleanup,
      state: { ...products, loop: { device: rawPartial, handle: { release: async () => undefined } }, rawPartial, layout, encryptedRanges, outputs: [], publish: [], cacheKeys: {}, stageSeconds: {} },
    } as unknown as BuildContext;
    await exportStage.run(ctx);
    for (const { from, to } of ctx.state.publish) await rename(from, to);
    return { work, ctx, rawPartial };
  }

  it('writes raw and qcow2 whose SHA256SUMS verify with sha256sum -c and whose content is the same', async () => {
    const { work, ctx } = await exportDisk('[raw, qcow2]');
    expect(ctx.state.outputs.map((o) => o.format)).toEqual(['raw', 'qcow2', 'cyclonedx', 'spdx']);
    const sums = await readFile(join(work, 'SHA256SUMS'), 'utf8');
    const manifestLine = `${await sha256sum(join(work, 'manifest.json'))}  manifest.json\n`;
    expect(sums).toBe(ctx.state.outputs.map((o) => `${o.sha256}  ${o.path.split('/').pop()}\n`).join('') + manifestLine);
    expect((await execa('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: work })).stdout).toBe('test.raw: OK\ntest.qcow2: OK\ntest.cdx.json: OK\ntest.spdx.json: OK\nmanifest.json: OK');
    const sbom = JSON.parse(await readFile(join(work, 'test.cdx.json'), 'utf8')) as { components: Array<{ name: string; hashes?: unknown }> };
    expect(sbom.components.find((c) => c.name === `linux-image-${KERNEL}`)?.hashes).toEqual([{ alg: 'SHA-256', content: 'ef'.repeat(32) }]);
    await execa('qemu-img', ['check', join(work, 'test.qcow2')]);
    await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', join(work, 'test.raw'), join(work, 'test.qcow2')]);
    const manifest = JSON.parse(await readFile(join(work, 'manifest.json'), 'utf8')) as { outputs: Array<{ sha256: string }>; hostToolSeconds: Record<string, number> };
    expect(manifest.outputs.map((o) => o.sha256)).toEqual(ctx.state.outputs.map((o) => o.sha256));
    // The uncompressed qcow2 is keylessgo's own (formats/qcow2.ts), not qemu-img's.
    expect(Object.keys(manifest.hostToolSeconds).sort()).toEqual(['sfdisk']);
  });

  it('has qemu-img write a compressed qcow2, and hashes it', async () => {
    const { work, ctx } = await exportDisk('[qcow2]', true);
    expect((await execa('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: work })).stdout).toMatch(/^test\.qcow2: OK$/m);
    const info = JSON.parse((await execa('qemu-img', ['check', '--output=json', join(work, 'test.qcow2')])).stdout) as { 'compressed-clusters': number };
    expect(info['compressed-clusters']).toBeGreaterThan(0);
    expect(Object.keys(ctx.host.clock.seconds).sort()).toEqual(['qemu-img', 'sfdisk']);
  });

  it('without raw in the formats makes the qcow2 from the disk file and neither hashes nor publishes the raw', async () => {
    const { work, ctx, rawPartial } = await exportDisk('[qcow2]');
    expect(ctx.state.outputs.map((o) => o.format)).toEqual(['qcow2', 'cyclonedx', 'spdx']);
    expect(ctx.state.publish.map((p) => p.from)).not.toContain(rawPartial);
    // The disk file stays a partial, which the partition stage's cleanup removes after the build.
    expect((await readdir(work)).sort()).toEqual(['SHA256SUMS', 'manifest.json', 'rootfs', 'test.cdx.json', 'test.qcow2', 'test.raw.partial', 'test.spdx.json']);
    expect((await execa('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: work })).stdout).toMatch(/^test\.qcow2: OK$/m);
    await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', rawPartial, join(work, 'test.qcow2')]);
  });
});
