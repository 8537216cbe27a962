/**
 * Directory trees made reproducible and compared: timestamps clamped to SOURCE_DATE_EPOCH (the
 * reproducible-builds convention: nothing newer than the epoch, older times kept), and a digest
 * over everything a file system made from the tree keeps, so two builds' trees compare by one
 * hash.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, lutimes, readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';

/** Every entry below `dir` (not crossing into `skip`), `dir` first, parents before children, sorted by name. */
async function* walk(dir: string, rel = '', skip: ReadonlySet<string> = new Set()): AsyncGenerator<string> {
  yield rel;
  const entries = await readdir(join(dir, rel), { withFileTypes: true });
  for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const path = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory() && !skip.has(path)) yield* walk(dir, path, skip);
    else yield path;
  }
}

/**
 * Sets the modification (and access) time of every entry under `dir` (the directory itself
 * included, symlinks themselves) modified after `epoch` to `epoch`; older ones keep theirs (a
 * package's files keep the times dpkg unpacked). Access times alone are left: reading sets them,
 * file systems get theirs from the build (ext4SetTimes), and in an overlay view touching an
 * unchanged file would copy it up. Returns how many entries it changed.
 */
export async function clampTimes(dir: string, epoch: number): Promise<number> {
  let changed = 0;
  for await (const rel of walk(dir)) {
    const path = join(dir, rel);
    if ((await lstat(path)).mtimeMs <= epoch * 1000) continue;
    await lutimes(path, epoch, epoch);
    changed++;
  }
  return changed;
}

/** Files hashed at once: small files dominate a root tree, and each costs an open, a read and a close. */
const CONCURRENT_FILES = 32;
/** Files up to this size are read whole; larger ones streamed. */
const WHOLE_READ_BYTES = 8 * 1024 * 1024;

async function fileSha256(path: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  if (size <= WHOLE_READ_BYTES) return hash.update(await readFile(path)).digest('hex');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export interface TreeDigestOptions {
  /** Paths (relative, no leading slash) whose content is left out: per-build files; their metadata counts. */
  perBuild?: ReadonlySet<string>;
  /** Directories whose content is not part of the tree (mount points of other file systems); the directory itself counts. */
  skip?: ReadonlySet<string>;
}

/** One entry's line in the digest. */
async function entryLine(dir: string, rel: string, options: TreeDigestOptions): Promise<string> {
  const path = join(dir, rel);
  const info = await lstat(path);
  const content = info.isSymbolicLink()
    ? `-> ${await readlink(path)}`
    : info.isFile()
      ? options.perBuild?.has(rel)
        ? 'per-build'
        : await fileSha256(path, info.size)
      : '';
  return `${JSON.stringify(rel)} ${info.mode.toString(8)} ${info.uid}:${info.gid} ${Math.floor(info.mtimeMs / 1000)} ${info.isFile() ? info.size : 0} ${info.rdev} ${content}\n`;
}

/**
 * SHA-256 over every entry under `dir` in name order: path, type, mode, owner, modification
 * time in whole seconds (what a file system made with SOURCE_DATE_EPOCH keeps), size, device
 * number, symlink target and content. Access and change times are left out: the build sets
 * them in the file system itself. Extended attributes are not read (the file system's digest
 * covers them).
 */
export async function treeDigest(dir: string, options: TreeDigestOptions = {}): Promise<string> {
  const entries: string[] = [];
  for await (const rel of walk(dir, '', options.skip)) entries.push(rel);
  const lines = new Array<string>(entries.length);
  let next = 0;
  const worker = async () => {
    while (next < entries.length) {
      const index = next++;
      lines[index] = await entryLine(dir, entries[index]!, options);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENT_FILES }, worker));
  const hash = createHash('sha256');
  for (const line of lines) hash.update(line);
  return hash.digest('hex');
}
