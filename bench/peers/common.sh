# Shared by the peer scripts: arguments, a temp dir, cleanup of the peer's loop devices, and
# the one JSON line per variant that `make bench` reads. Sourced with PEER set.
set -u
out=${1:?usage: $0 OUTDIR MIRROR_URL}
mirror=${2:?usage: $0 OUTDIR MIRROR_URL}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)

tmp=$(mktemp -d)
cleanup() {
  # A killed peer leaves the loop device of its image (under OUTDIR) attached.
  losetup -nO NAME,BACK-FILE 2>/dev/null | awk -v o="$out/" 'index($2, o) == 1 {print $1}' |
    while read -r dev; do losetup -d "$dev" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

json() { # variant ok seconds bytes error [cache]
  printf '{"peer":"%s","version":"%s","variant":"%s","ok":%s,"seconds":%s,"bytes":%s,"error":"%s","cache":"%s"}\n' \
    "$PEER" "$version" "$1" "$2" "$3" "$4" "$(printf %s "$5" | tr -d '"\\' | tr '\n\t' '  ' | cut -c1-200)" "${6:-cold}"
}
