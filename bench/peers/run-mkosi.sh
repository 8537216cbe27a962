#!/usr/bin/env bash
# Peer baseline for `make bench`: builds bench/peers/mkosi/mkosi.conf with mkosi (Debian's
# mkosi 14) and prints one JSON line per variant (plain, encrypted) on stdout.
#
#   bench/peers/run-mkosi.sh OUTDIR MIRROR_URL
#
# OUTDIR keeps mkosi's package cache and incremental image cache between runs, so a first
# run against an empty OUTDIR is the cold build and a rerun is mkosi's warm build.
# The script never fails its caller: a peer that cannot build reports ok:false and why.
# mkosi's own log for each variant is left in OUTDIR/<variant>.log.
PEER=mkosi
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

version=$(mkosi --version 2>/dev/null | awk '{print $2}')
if [ -z "$version" ]; then
  for v in plain encrypted; do json "$v" false 0 0 "mkosi not installed (apt-get install mkosi)"; done
  exit 0
fi

run_variant() { # variant [extra mkosi args]
  local variant=$1; shift
  local dir="$out/$variant" log="$out/$variant.log" cache=warm
  # mkosi reads mkosi.conf and mkosi.passphrase from its working directory; the passphrase is
  # a throwaway written per run so nothing secret is committed.
  cp "$here/mkosi/mkosi.conf" "$here/mkosi/mkosi.postinst" "$tmp/"
  printf %s bench-only >"$tmp/mkosi.passphrase" && chmod 600 "$tmp/mkosi.passphrase"
  mkdir -p "$dir" "$out/packages"
  [ -n "$(ls -A "$out/packages")" ] || cache=cold
  local t0 t1 rc img bytes=0
  t0=$(date +%s.%N)
  # -f replaces a previous image but keeps the incremental cache next to it (-ff would not).
  (cd "$tmp" && mkosi -f --mirror "$mirror" --output-dir "$dir" --cache "$out/packages" \
     --workspace-dir "$tmp" --incremental "$@" build) >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  img=$(find "$dir" -maxdepth 2 -name '*.raw' -type f 2>/dev/null | head -1)
  # Allocated bytes: the raw image is sparse, its apparent size (3.25 GiB) says nothing.
  [ -n "$img" ] && bytes=$(du -B1 "$img" | cut -f1)
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
  if [ $rc -eq 0 ] && [ -n "$img" ]; then
    json "$variant" true "$secs" "$bytes" "" "$cache"
  else
    json "$variant" false "$secs" "$bytes" \
      "$(grep -E 'Cannot|Error|error:|unknown filesystem|returned non-zero' "$log" | grep -v '^ ' | head -1)" "$cache"
  fi
}

run_variant plain
# mkosi formats LUKS offline but then needs `cryptsetup open` (device-mapper) to mount it.
run_variant encrypted --encrypt=all
exit 0
