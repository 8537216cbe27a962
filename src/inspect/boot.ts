/**
 * The boot file system: where it is, what grub.cfg boots (kernel command line, initrd),
 * and the initramfs files themselves. Works for a separate /boot and for /boot inside an
 * unencrypted root file system.
 */
import { posix } from 'node:path';
import type { Ext4Reader } from './ext4.js';

export interface GrubEntry {
  kernel: string;
  cmdline: string;
  initrds: string[];
}

/** The first `linux` entry of a grub.cfg (GRUB's default unless `set default` says otherwise). */
export function parseGrubCfg(text: string): GrubEntry | undefined {
  const linux = /^\s*linux(?:efi|16)?\s+(\S+)[ \t]*(.*)$/m.exec(text);
  if (!linux) return undefined;
  const initrd = /^\s*initrd(?:efi|16)?\s+(.+)$/m.exec(text.slice(linux.index));
  return { kernel: linux[1]!, cmdline: linux[2]!.trim(), initrds: initrd ? initrd[1]!.trim().split(/\s+/) : [] };
}

export interface BootFiles {
  /** '' when the file system is /boot itself, '/boot' when it is a root file system. */
  prefix: string;
  names: string[];
}

/** Whether a file system holds /boot (at its top or under /boot), judged by GRUB's directory or an initrd. */
export async function findBootFiles(fs: Ext4Reader): Promise<BootFiles | undefined> {
  for (const prefix of ['', '/boot']) {
    const names = (await fs.list(prefix || '/')).map((entry) => entry.name);
    if (names.includes('grub') || names.some((name) => name.startsWith('initrd.img') || name.startsWith('initramfs'))) return { prefix, names };
  }
  return undefined;
}

/** A path grub.cfg names, as a path in the file system that holds it. */
export function bootPath(prefix: string, grubPath: string): string {
  const path = grubPath.replace(/^\([^)]*\)/, '');
  return prefix && !path.startsWith(`${prefix}/`) ? `${prefix}${path}` : path;
}

/** Follows symlinks (e.g. /initrd.img -> initrd.img-6.1.0-...) to the file they name. */
export async function resolveLinks(fs: Ext4Reader, path: string): Promise<string> {
  for (let hops = 0; hops < 8; hops++) {
    const target = await fs.linkTarget(path);
    if (target === undefined) return path;
    path = posix.resolve(posix.dirname(path), target);
  }
  throw new Error(`too many symlinks at ${path}`);
}

/** Newest-looking initrd when there is no grub.cfg to say which one boots. */
export function guessInitrd(boot: BootFiles): string | undefined {
  const candidates = boot.names.filter((name) => /^(initrd\.img|initramfs)/.test(name)).sort();
  const chosen = candidates.includes('initrd.img') ? 'initrd.img' : candidates.at(-1);
  return chosen && `${boot.prefix}/${chosen}`;
}
