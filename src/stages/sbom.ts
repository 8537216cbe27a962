/**
 * What the export stage's SBOMs describe, gathered from the image's own root tree: its dpkg
 * database (packages, source packages, the file lists that tell which package installed a boot
 * file), /etc/debian_version, the kernel and initramfs on /boot, the files on the ESP and
 * keylessgo's own initramfs scripts, each with its SHA-1 and SHA-256.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { basename, join, relative } from 'node:path';
import type { BuildContext } from '../pipeline/context.js';
import { SUITE_VERSIONS } from '../recipe/schema.js';
import { owningPackages, parseDpkgStatus } from '../formats/sbom/dpkg.js';
import type { SbomFile, SbomInput } from '../formats/sbom/model.js';
import { bootTreeDir } from './partition.js';

/** keylessgo's initramfs scripts in the tree (overlays/base): initramfs-tools copies them into the initramfs as they are. */
const INITRAMFS_SCRIPTS = 'etc/initramfs-tools/scripts';

async function hashed(file: string): Promise<Pick<SbomFile, 'sha1' | 'sha256'>> {
  const data = await readFile(file);
  return { sha1: createHash('sha1').update(data).digest('hex'), sha256: createHash('sha256').update(data).digest('hex') };
}

/** Every dpkg file list of the tree, by file name. */
async function dpkgFileLists(rootfs: string): Promise<Map<string, string>> {
  const dir = join(rootfs, 'var/lib/dpkg/info');
  const names = (await readdir(dir)).filter((name) => name.endsWith('.list'));
  return new Map(await Promise.all(names.map(async (name): Promise<[string, string]> => [name, await readFile(join(dir, name), 'utf8')])));
}

/** keylessgo's scripts in the initramfs: tree path → path in the initramfs. */
async function initramfsScripts(rootfs: string): Promise<Array<[tree: string, inInitramfs: string]>> {
  const entries = await readdir(join(rootfs, INITRAMFS_SCRIPTS), { recursive: true, withFileTypes: true }).catch(() => []);
  return entries
    .filter((entry) => entry.isFile() && entry.name.startsWith('keylessgo-'))
    .map((entry) => relative(rootfs, join(entry.parentPath, entry.name)))
    .sort()
    .map((tree): [string, string] => [tree, `initramfs/scripts/${relative(INITRAMFS_SCRIPTS, tree)}`]);
}

export async function sbomInput(ctx: BuildContext): Promise<SbomInput> {
  const { rootfs, recipe } = ctx;
  const version = ctx.state.kernelVersion!;
  const espFiles = ctx.state.espFiles!;
  const kernelTreePath = `boot/vmlinuz-${version}`;
  const owners = owningPackages(await dpkgFileLists(rootfs), [kernelTreePath, ...espFiles.flatMap((f) => (f.treePath ? [f.treePath] : []))]);
  const files: SbomFile[] = [
    { path: `/boot/vmlinuz-${version}`, ...(await hashed(join(bootTreeDir(ctx), basename(kernelTreePath)))), package: owners.get(kernelTreePath), comment: 'the Linux kernel GRUB boots' },
    { path: `/boot/initrd.img-${version}`, ...(await hashed(join(bootTreeDir(ctx), `initrd.img-${version}`))), comment: "the initramfs: update-initramfs's archive, then this build's dropbear host keys, authorized_keys and crypttab appended" },
  ];
  for (const file of espFiles) {
    files.push({ path: `ESP/${file.path}`, ...(await hashed(file.source)), package: file.treePath && owners.get(file.treePath), comment: file.comment });
  }
  for (const [tree, inInitramfs] of await initramfsScripts(rootfs)) {
    files.push({ path: inInitramfs, ...(await hashed(join(rootfs, tree))), comment: `keylessgo's initramfs script (/${tree} in the root)` });
  }
  return {
    name: recipe.name,
    debianVersion: (await readFile(join(rootfs, 'etc/debian_version'), 'utf8')).trim(),
    debianMajor: SUITE_VERSIONS[recipe.suite],
    toolVersion: ctx.toolVersion,
    recipe: { file: basename(ctx.loaded.file), sha256: ctx.loaded.sha256 },
    mirror: { archive: ctx.mirror.archive, security: ctx.mirror.security ?? null },
    sourceDateEpoch: ctx.state.sourceDateEpoch!.seconds,
    packages: parseDpkgStatus(await readFile(join(rootfs, 'var/lib/dpkg/status'), 'utf8')),
    debSha256: ctx.state.debSha256!,
    files,
  };
}
