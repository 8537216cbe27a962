/**
 * Mount bookkeeping for safe removal of build trees: a bind mount of /dev or /proc left
 * inside a tree (e.g. by an interrupted mmdebstrap or hook) must be unmounted before the
 * tree is deleted, or the deletion would reach into the host.
 */
import { readFile, rm } from 'node:fs/promises';
import { sep } from 'node:path';
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
