#!/usr/bin/env bash
# Peer baseline for `make bench`: builds bench/peers/debos/debian-bookworm.yaml with debos and
# prints one JSON line per variant (plain, encrypted) on stdout.
#
#   bench/peers/run-debos.sh OUTDIR MIRROR_URL
#
# debos has no cache: every run is cold. The script never fails its caller: a peer that
# cannot build reports ok:false and why. debos's log is left in OUTDIR/plain.log.
PEER=debos
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

version=$(dpkg-query -W -f '${Version}' debos 2>/dev/null)
if [ -z "$version" ] || ! command -v debos >/dev/null; then
  for v in plain encrypted; do json "$v" false 0 0 "debos not installed (apt-get install debos)"; done
  exit 0
fi

# debos's chroot is systemd-nspawn --register=no, which on a host without systemd as PID 1
# (this container) still asks the absent system bus for a scope (--keep-unit avoids that),
# and binds /dev/disk, which does not exist without udev.
mkdir -p "$tmp/bin"
cat >"$tmp/bin/systemd-nspawn" <<'SH'
#!/bin/sh
held=
for a; do
  shift
  if [ -n "$held" ]; then
    case $a in /dev/disk*) ;; *) set -- "$@" "$held" "$a" ;; esac
    held=; continue
  fi
  case $a in
    --bind|--bind-ro) held=$a ;;
    --bind=/dev/disk*|--bind-ro=/dev/disk*) ;;
    *) set -- "$@" "$a" ;;
  esac
done
exec /usr/bin/systemd-nspawn --keep-unit "$@"
SH
chmod +x "$tmp/bin/systemd-nspawn"

img="$out/debian-bookworm.img" log="$out/plain.log"
rm -f "$img"
t0=$(date +%s.%N)
# No KVM here, and fakemachine's qemu (TCG) backend is the 166-minute path: build as root on
# the host instead. From $tmp, where debos keeps its scratch root (.debos-*).
(cd "$tmp" && PATH="$tmp/bin:$PATH" debos --disable-fakemachine --artifactdir "$out" \
  -t mirror:"$mirror" -t image:"$(basename "$img")" "$here/debos/debian-bookworm.yaml") >"$log" 2>&1
rc=$?
t1=$(date +%s.%N)
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
bytes=0
[ -f "$img" ] && bytes=$(du -B1 "$img" | cut -f1)
if [ $rc -eq 0 ] && [ -f "$img" ]; then
  json plain true "$secs" "$bytes" ""
else
  json plain false "$secs" "$bytes" "$(grep -iE 'error|fail' "$log" | tail -2)"
fi
# Not attempted: debos has no encryption option, and opening a LUKS volume to fill it in a
# run action needs `cryptsetup open`, i.e. device-mapper, which this kernel lacks.
json encrypted false 0 0 "debos has no LUKS support; filling one needs cryptsetup open (device-mapper)"
exit 0
