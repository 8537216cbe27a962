/**
 * Bookworm's initramfs-tools starts processes by the thousand: for each of the ~860 modules
 * MODULES=most selects, `manual_add_modules` runs copy_file (realpath, readlink, mkdir, cp) and
 * modinfo, about ten processes per module; `copy_exec` runs two sed pipelines and copy_file
 * for every library of every binary, most of them copied already. Where a process start costs
 * ~10 ms (this build host: 1000 fork+exec of /bin/true in 10 s), that was 70 + 13 of
 * update-initramfs's 90 s. Trixie's initramfs-tools batches the same work (dracut-install).
 *
 * For the build only, the initramfs stage appends faster versions of the two functions to
 * hook-functions in its own overlay of the tree (the image keeps Debian's file). They copy the
 * same files to the same places with the same modes; measured on bookworm's default image: the
 * same 1686 paths, modes and file contents, 92 s → 20 s for the modules. Each is used only
 * where it was checked: the function it replaces must be byte for byte the one it was written
 * for, and the tree usr-merged (/lib paths are /usr/lib).
 * Left out: the stock manual_add_modules's warning about missing firmware of modules loaded on
 * the build host (the build host's modules say nothing about the image's machines).
 */
import { createHash } from 'node:crypto';

export const HOOK_FUNCTIONS = 'usr/share/initramfs-tools/hook-functions';

/** One pass: one modprobe pair, one mkdir, one cp and one modinfo per call. */
export const BATCHED_MANUAL_ADD_MODULES = [
  '',
  '# Appended by keylessgo for this build only: modules copied in one pass (see src/initramfs/hook-functions.ts).',
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

/**
 * The stock function, with a library already in the initramfs skipped before any process is
 * started (the test copy_file makes, on the path it would canonicalise to), and the HWCAP
 * seds run only for paths that can match them.
 */
export const LEAN_COPY_EXEC = [
  '',
  '# Appended by keylessgo for this build only: copy_exec without processes for libraries already copied (see src/initramfs/hook-functions.ts).',
  'copy_exec() {',
  '\tlocal src target x nonoptlib ret',
  '',
  '\tsrc="${1}"',
  '\ttarget="${2:-$1}"',
  '',
  '\tcopy_file binary "${src}" "${target}" || return $(($? - 1))',
  '',
  '\tfor x in $(env --unset=LD_PRELOAD ldd "${src}" 2>/dev/null | sed -e \'',
  '\t\t/\\//!d;',
  '\t\t/linux-gate/d;',
  '\t\t/=>/ {s/.*=>[[:blank:]]*\\([^[:blank:]]*\\).*/\\1/};',
  '\t\ts/[[:blank:]]*\\([^[:blank:]]*\\) (.*)/\\1/\' 2>/dev/null); do',
  '',
  '\t\t# The stock seds change only paths naming one of these directories.',
  '\t\tcase "${x}" in',
  '\t\t*tls* | *i686* | *sse2* | *neon* | *vfp*)',
  '\t\t\tnonoptlib=$(echo "${x}" | sed -e \'s#/lib/\\([^/]*/\\)\\?\\(tls\\|i686\\|sse2\\|neon\\|vfp\\).*/\\(lib.*\\)#/lib/\\1\\3#\' \\',
  '\t\t\t\t-e \'s#-linux-gnu/\\(tls\\|i686\\|sse2\\|neon\\|vfp\\).*/\\(lib.*\\)#-linux-gnu/\\2#\')',
  '\t\t\t[ -e "${nonoptlib}" ] && x="${nonoptlib}"',
  '\t\t\t;;',
  '\t\tesac',
  '',
  '\t\tcase "${x}" in',
  '\t\t*/libpthread.so.*)',
  '\t\t\tcopy_libgcc "${x%/*}" || return',
  '\t\t\t;;',
  '\t\tesac',
  '',
  '\t\t# Already copied, as copy_file would find (it returns 1): an absolute path without . or ..',
  '\t\t# is its own canonical form, /bin, /lib* and /sbin being under /usr.',
  '\t\tcase "${x}" in',
  '\t\t*/./* | */../* | *//* | */. | */..) ;;',
  '\t\t/bin/* | /lib* | /sbin/*) [ -f "${x}" ] && [ -e "${DESTDIR}/usr${x}" ] && ! [ -d "${DESTDIR}/usr${x}" ] && continue ;;',
  '\t\t/*) [ -f "${x}" ] && [ -e "${DESTDIR}${x}" ] && ! [ -d "${DESTDIR}${x}" ] && continue ;;',
  '\t\tesac',
  '',
  '\t\tcopy_file binary "${x}" || {',
  '\t\t\tret=$?',
  '\t\t\t[ ${ret} = 1 ] || return $((ret - 1))',
  '\t\t}',
  '\tdone',
  '}',
  '',
].join('\n');

/** A function of hook-functions, the SHA-256 of the stock text it replaces, and its replacement. */
export interface HookFunctionOverride {
  name: string;
  stockSha256: string;
  replacement: string;
}

/** Checked against initramfs-tools 0.142 (bookworm). */
export const BOOKWORM_OVERRIDES: HookFunctionOverride[] = [
  { name: 'manual_add_modules', stockSha256: 'ddd59238c00c2aa60cfd712f12a8a7004641ac86508124ff7b81b22f6d43c825', replacement: BATCHED_MANUAL_ADD_MODULES },
  { name: 'copy_exec', stockSha256: '70ca8a9d8894f92800669c2993d2d03ff31a054a3409224e2d723c1f71fbe8cd', replacement: LEAN_COPY_EXEC },
];

/** The text of a shell function `name() … }` (up to the first line that is just `}`), or undefined. */
export function shellFunction(script: string, name: string): string | undefined {
  const start = script.search(new RegExp(`^${name}\\(\\)`, 'm'));
  if (start < 0) return undefined;
  const end = script.indexOf('\n}\n', start);
  return end < 0 ? undefined : script.slice(start, end + 2) + '\n';
}

/**
 * hook-functions with each override appended whose stock function is there unchanged, and a
 * line per override saying whether it is used and, if not, why (trixie batches already; a
 * tree that is not usr-merged keeps /lib paths apart from /usr/lib).
 */
export function withFasterHookFunctions(hookFunctions: string, usrMerged: boolean, overrides = BOOKWORM_OVERRIDES): { script: string; notes: string[] } {
  let script = hookFunctions;
  const notes = overrides.map(({ name, stockSha256, replacement }) => {
    const stock = shellFunction(hookFunctions, name);
    if (!stock) return `${name}: initramfs-tools's own (hook-functions has no ${name})`;
    if (createHash('sha256').update(stock).digest('hex') !== stockSha256) return `${name}: initramfs-tools's own (not the version keylessgo's was written for)`;
    if (!usrMerged) return `${name}: initramfs-tools's own (the tree is not usr-merged)`;
    script += replacement;
    return `${name}: keylessgo's`;
  });
  return { script, notes };
}
