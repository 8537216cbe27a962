/**
 * Directory trees made reproducible and compared: timestamps clamped to SOURCE_DATE_EPOCH (the
 * reproducible-builds convention: nothing newer than the epoch, older times kept), and a digest
 * over everything a file system made from the tree keeps, so two builds' trees compare by one
 * hash. Both walk tens of thousands of files, the digest reads and hashes every byte: they run
 * in a worker thread, so the stages running beside them (and their host commands) are not held
 * up by a busy main thread.
 */
import { sourceWorker } from './source-worker.js';

export interface TreeDigestOptions {
  /** Paths (relative, no leading slash) whose content is left out: per-build files; their metadata counts. */
  perBuild?: readonly string[];
  /** Directories whose content is not part of the tree (mount points of other file systems); the directory itself counts. */
  skip?: readonly string[];
}

type TreeJob = { dir: string } & ({ op: 'clamp'; epoch: number } | ({ op: 'digest' } & TreeDigestOptions));

/**
 * The worker's code, run by sourceWorker: it may use only what it requires itself. Entries are
 * visited parents first, each directory's in name order (byte order, as `LC_ALL=C sort`).
 */
function treeWorker(): void {
  const { parentPort, workerData } = require('node:worker_threads') as typeof import('node:worker_threads');
  const { lstatSync, lutimesSync, readdirSync, readFileSync, readlinkSync, openSync, readSync, closeSync } = require('node:fs') as typeof import('node:fs');
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  const { join } = require('node:path') as typeof import('node:path');
  const job = workerData as TreeJob;
  const skip = new Set(job.op === 'digest' ? job.skip : []);
  const entries: string[] = [];
  const walk = (rel: string) => {
    entries.push(rel);
    const names = readdirSync(join(job.dir, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of names) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory() && !skip.has(path)) walk(path);
      else entries.push(path);
    }
  };
  walk('');
  if (job.op === 'clamp') {
    let changed = 0;
    for (const rel of entries) {
      const path = join(job.dir, rel);
      if (lstatSync(path).mtimeMs <= job.epoch * 1000) continue;
      lutimesSync(path, job.epoch, job.epoch);
      changed++;
    }
    parentPort!.postMessage(changed);
    return;
  }
  const perBuild = new Set(job.perBuild);
  const chunk = Buffer.allocUnsafe(8 * 1024 * 1024);
  const fileSha256 = (path: string, size: number) => {
    if (size <= chunk.length) return createHash('sha256').update(readFileSync(path)).digest('hex');
    const hash = createHash('sha256');
    const fd = openSync(path, 'r');
    try {
      for (let read; (read = readSync(fd, chunk, 0, chunk.length, null)) > 0; ) hash.update(chunk.subarray(0, read));
    } finally {
      closeSync(fd);
    }
    return hash.digest('hex');
  };
  const digest = createHash('sha256');
  for (const rel of entries) {
    const path = join(job.dir, rel);
    const info = lstatSync(path);
    // A per-build file's size varies too (an ECDSA key's encoding takes 104 or 105 bytes).
    const sizeAndContent = info.isSymbolicLink() ? `0 -> ${readlinkSync(path)}` : !info.isFile() ? '0' : perBuild.has(rel) ? 'per-build' : `${info.size} ${fileSha256(path, info.size)}`;
    digest.update(`${JSON.stringify(rel)} ${info.mode.toString(8)} ${info.uid}:${info.gid} ${Math.floor(info.mtimeMs / 1000)} ${info.rdev} ${sizeAndContent}\n`);
  }
  parentPort!.postMessage(digest.digest('hex'));
}

function runTreeWorker<T>(job: TreeJob): Promise<T> {
  return new Promise((resolve, reject) => {
    const worker = sourceWorker(treeWorker, job);
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`${job.op} of ${job.dir}: worker exited with code ${code} before it finished`)));
  });
}

/**
 * Sets the modification (and access) time of every entry under `dir` (the directory itself
 * included, symlinks themselves) modified after `epoch` to `epoch`; older ones keep theirs (a
 * package's files keep the times dpkg unpacked). Access times alone are left: reading sets them,
 * file systems get theirs from the build (ext4SetTimes), and in an overlay view touching an
 * unchanged file would copy it up. Returns how many entries it changed.
 */
export function clampTimes(dir: string, epoch: number): Promise<number> {
  return runTreeWorker({ op: 'clamp', dir, epoch });
}

/**
 * SHA-256 over every entry under `dir`: path, type, mode, owner, modification time in whole
 * seconds (what a file system made with SOURCE_DATE_EPOCH keeps), device number, symlink
 * target, size and content (of per-build files, neither). Access and change times are left
 * out: the build sets them in the file system itself. Extended attributes are not read (the
 * file system's digest covers them).
 */
export function treeDigest(dir: string, options: TreeDigestOptions = {}): Promise<string> {
  return runTreeWorker({ op: 'digest', dir, perBuild: options.perBuild ?? [], skip: options.skip ?? [] });
}
