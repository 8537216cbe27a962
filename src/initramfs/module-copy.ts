/**
 * Bookworm's initramfs-tools copies kernel modules one at a time: for each of the ~860 modules
 * MODULES=most selects, `manual_add_modules` runs copy_file (realpath, readlink, mkdir, cp) and
 * modinfo, about ten processes per module. Where a process start costs ~10 ms (this build
 * host: 1000 fork+exec of /bin/true in 10 s), that is 70 of update-initramfs's 90 s. Trixie's
 * initramfs-tools batches the same work (dracut-install).
 *
 * For the build only, the initramfs stage appends a batched `manual_add_modules` to
 * hook-functions in its own overlay of the tree (the image keeps Debian's file): one modprobe
 * pair, one mkdir, one cp and one modinfo per call. It copies the same files to the same
 * places, with directories made under mkinitramfs's umask as copy_file makes them; measured on
 * bookworm's default image: the same 1686 paths, modes and file contents, 92 s → 20 s. It is
 * used only where it was checked: the function it replaces must be byte for byte the one it was
 * written for, and the tree usr-merged (module paths under /lib are /usr/lib).
 * Left out: the stock function's warning about missing firmware of modules loaded on the build
 * host (the build host's modules say nothing about the image's machines).
 */
import { createHash } from 'node:crypto';

export const HOOK_FUNCTIONS = 'usr/share/initramfs-tools/hook-functions';

/** SHA-256 of `manual_add_modules() … }` in initramfs-tools 0.142 (bookworm). */
export const BOOKWORM_MANUAL_ADD_MODULES_SHA256 = 'ddd59238c00c2aa60cfd712f12a8a7004641ac86508124ff7b81b22f6d43c825';

export const BATCHED_MANUAL_ADD_MODULES = [
  '',
  '# Appended by keylessgo for this build only: modules copied in one pass (see src/initramfs/module-copy.ts).',
  'manual_add_modules()',
  '{',
  '\tlocal modules firmware',
  '',
  '\t[ $# -eq 0 ] && return',
  '\t# Both runs, as the stock function: --ignore-install shows insmod lines, the other softdeps.',
  '\tmodules="$(',
  '\t\t{ modprobe --all --set-version="${version?}" --ignore-install --quiet --show-depends "$@";',
  '\t\t  modprobe --all --set-version="${version}" --quiet --show-depends "$@"; } |',
  '\t\twhile read -r prefix kmod options; do',
  '\t\t\t[ "${prefix}" = insmod ] || continue',
  '\t\t\tcase "${kmod}" in /lib/*) kmod="/usr${kmod}" ;; esac',
  '\t\t\t[ -f "${kmod}" ] && ! [ -e "${DESTDIR}${kmod}" ] && echo "${kmod}"',
  '\t\tdone | sort -u',
  '\t)"',
  '\t[ -n "${modules}" ] || return 0',
  '\t# Directories as copy_file makes them (mkdir -p under the umask), then the files; a symlinked module as copy_file copies it.',
  '\techo "${modules}" | sed "s|/[^/]*\\$||; s|^|${DESTDIR}|" | sort -u | xargs -r mkdir -p',
  '\techo "${modules}" | while read -r kmod; do',
  '\t\tif [ -L "${kmod}" ]; then copy_file module "${kmod}" >&2; else echo "${kmod}"; fi',
  '\tdone | xargs -r cp -pP --parents -t "${DESTDIR}"',
  '\tfor firmware in $(echo "${modules}" | xargs modinfo -k "${version}" -F firmware | sort -u); do',
  '\t\tadd_firmware "${firmware}" || true',
  '\tdone',
  '}',
  '',
].join('\n');

/** The text of a shell function `name() … }` (up to the first line that is just `}`), or undefined. */
export function shellFunction(script: string, name: string): string | undefined {
  const start = script.search(new RegExp(`^${name}\\(\\)`, 'm'));
  if (start < 0) return undefined;
  const end = script.indexOf('\n}\n', start);
  return end < 0 ? undefined : script.slice(start, end + 2) + '\n';
}

/**
 * hook-functions with the batched manual_add_modules appended, or why not: the function is not
 * bookworm's (trixie batches already), or module paths under /lib are not /usr/lib.
 */
export function withBatchedModuleCopy(hookFunctions: string, usrMerged: boolean, checkedSha256 = BOOKWORM_MANUAL_ADD_MODULES_SHA256): { script: string } | { reason: string } {
  const stock = shellFunction(hookFunctions, 'manual_add_modules');
  if (!stock) return { reason: 'hook-functions has no manual_add_modules' };
  if (createHash('sha256').update(stock).digest('hex') !== checkedSha256) return { reason: 'initramfs-tools is not the version it was written for' };
  if (!usrMerged) return { reason: 'the tree is not usr-merged' };
  return { script: hookFunctions + BATCHED_MANUAL_ADD_MODULES };
}
