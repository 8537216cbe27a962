/**
 * dropbear-initramfs's hook gives root a home with a random name (`mktemp -d root-XXXXXXXXXX`)
 * in every initramfs it builds, so two builds of the same tree make different archives. For
 * the build only (the initramfs stage's overlay; the image keeps Debian's hook), the name is
 * fixed: nothing depends on it but the initramfs's own /etc/passwd, which the hook writes.
 */
export const DROPBEAR_HOOK = 'usr/share/initramfs-tools/hooks/dropbear';

/** root's home in an initramfs keylessgo builds. */
export const INITRAMFS_ROOT_HOME = 'root-keylessgo';

const RANDOM_HOME = /home="\$\(mktemp --directory -- "\$DESTDIR\/root-XXXXXXXXXX"\)"/;

/** The hook with the fixed home, and whether the line was found (bookworm's and trixie's have it). */
export function withFixedRootHome(script: string): { script: string; changed: boolean } {
  if (!RANDOM_HOME.test(script)) return { script, changed: false };
  return { script: script.replace(RANDOM_HOME, `home="$DESTDIR/${INITRAMFS_ROOT_HOME}"; mkdir -- "$home"`), changed: true };
}
