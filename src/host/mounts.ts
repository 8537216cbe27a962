/**
 * Mount bookkeeping for safe removal of build trees: a bind mount of /dev or /proc left
 * inside a tree (e.g. by an interrupted mmdebstrap or hook) must be unmounted before the
 * tree is deleted, or the deletion would reach into the host. And the views stages work on
 * side by side: an overlay for writing without changing a tree, a bind mount for reading it.
 */
import { chmod, chown, mkdir, readFile, rm, stat, utimes } from 'node:fs/promises';
import { release } from 'node:os';
import { join, sep } from 'node:path';
import type { CleanupHandle, CleanupStack } from '../base/cleanup.js';
import { unmount } from './chroot.js';
import type { HostRunner } from './run.js';

/** Decodes the octal escapes (\040 for space, ...) of /proc/self/mounts fields. */
function decodeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

export async function mountsUnder(dir: string, mountsText?: string): Promise<string[]> {
  const text = mountsText ?? (await readFile('/proc/self/mounts', 'utf8'));
  return text
    .split('\n')
    .map((line) => decodeMountField(line.split(' ')[1] ?? ''))
    .filter((target) => target === dir || target.startsWith(dir + sep))
    .sort((a, b) => b.length - a.length);
}

/** Unmounts everything below `dir` (deepest first), then deletes it; refuses if a mount stays. */
export async function removeTree(host: HostRunner, dir: string): Promise<void> {
  for (const target of await mountsUnder(dir)) await unmount(host, target).catch(() => undefined);
  const remaining = await mountsUnder(dir);
  if (remaining.length > 0) throw new Error(`not removing ${dir}: still mounted: ${remaining.join(', ')}`);
  await rm(dir, { recursive: true, force: true });
}

/** overlayfs has the volatile mount option from Linux 5.10. */
export function overlaySupportsVolatile(kernelRelease = release()): boolean {
  const [major = 0, minor = 0] = kernelRelease.split(/[.-]/).map(Number);
  return major > 5 || (major === 5 && minor >= 10);
}

/**
 * Mounts a copy-on-write view of `lower` at `target` (overlayfs): whatever is written there
 * lands in `scratch`/upper and `lower` stays as it was. `lower` must not change while the view
 * is mounted. The view's top directory keeps `lower`'s mode and owner (mkfs -d copies them).
 */
export async function mountOverlay(host: HostRunner, cleanup: CleanupStack, lower: string, scratch: string, target: string): Promise<CleanupHandle> {
  const [upper, work] = [join(scratch, 'upper'), join(scratch, 'work')];
  for (const dir of [upper, work, target]) await mkdir(dir, { recursive: true, mode: 0o700 });
  const top = await stat(lower);
  await chown(upper, top.uid, top.gid);
  await chmod(upper, top.mode & 0o7777);
  // volatile: the layer is thrown away, so its unmount need not sync the file system under it
  // (measured 1.2 s of writing back the image files just made).
  const options = `lowerdir=${lower},upperdir=${upper},workdir=${work}${overlaySupportsVolatile() ? ',volatile' : ''}`;
  await host.run('mount', ['-t', 'overlay', 'overlay', '-o', options, target], { acquires: true });
  return cleanup.add(`unmount ${target}`, () => unmount(host.forCleanup, target));
}

/** Runs `fn` on a copy-on-write view of `lower` (mountOverlay), so other work can read `lower` meanwhile. */
export async function withOverlay<T>(host: HostRunner, cleanup: CleanupStack, lower: string, scratch: string, fn: (merged: string, upper: string) => Promise<T>): Promise<T> {
  const merged = join(scratch, 'merged');
  const handle = await mountOverlay(host, cleanup, lower, scratch, merged);
  try {
    return await fn(merged, join(scratch, 'upper'));
  } finally {
    await handle.release();
  }
}

/** The lower directories of the overlays mounted now (the cached trees running builds read). */
export async function overlayLowerDirs(mountsText?: string): Promise<string[]> {
  const text = mountsText ?? (await readFile('/proc/self/mounts', 'utf8'));
  return text
    .split('\n')
    .map((line) => line.split(' '))
    .filter((fields) => fields[2] === 'overlay')
    .flatMap((fields) => (fields[3] ?? '').split(',').filter((option) => option.startsWith('lowerdir=')))
    .flatMap((option) => option.slice('lowerdir='.length).split(':').map(decodeMountField));
}

/**
 * Runs `fn` on a view of `tree` without anything mounted inside it (a non-recursive bind
 * mount) and with the directories `hidden` shown empty, with their modes, owners and times
 * (not after `mtimeAtMost`): what `mkfs -d` should copy while other work writes into those
 * directories.
 */
export async function withTreeView<T>(host: HostRunner, cleanup: CleanupStack, tree: string, scratch: string, hidden: readonly string[], fn: (view: string) => Promise<T>, mtimeAtMost = Infinity): Promise<T> {
  const view = join(scratch, 'view');
  await mkdir(view, { recursive: true, mode: 0o700 });
  const handles: CleanupHandle[] = [];
  const mount = async (args: string[], target: string) => {
    await host.run('mount', [...args, target], { acquires: true });
    handles.push(cleanup.add(`unmount ${target}`, () => unmount(host.forCleanup, target)));
  };
  try {
    await mount(['--bind', tree], view);
    // Private: the mounts over hidden directories must not propagate back into `tree`.
    await host.run('mount', ['--make-private', view]);
    for (const [index, dir] of hidden.entries()) {
      const empty = join(scratch, `empty-${index}`);
      const info = await stat(join(tree, dir));
      await mkdir(empty, { recursive: true });
      await chmod(empty, info.mode & 0o7777);
      await chown(empty, info.uid, info.gid);
      // Written meanwhile, the directory's time is "now": clamped as the tree's are.
      const mtime = Math.min(info.mtimeMs / 1000, mtimeAtMost);
      await utimes(empty, mtime, mtime);
      await mount(['--bind', empty], join(view, dir));
    }
    return await fn(view);
  } finally {
    while (handles.length > 0) await handles.pop()!.release();
  }
}
