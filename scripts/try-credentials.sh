#!/usr/bin/env bash
# Makes a throwaway SSH key pair and bootstrap passphrase for trying keylessgo out
# (`make image`). Keeps existing ones so repeated builds unlock with the same key.
set -euo pipefail
dir=${1:?usage: try-credentials.sh DIR}
mkdir -p "$dir"
chmod 700 "$dir"
if [ ! -f "$dir/id_ed25519" ]; then
  ssh-keygen -q -t ed25519 -N '' -C keylessgo-try -f "$dir/id_ed25519"
fi
if [ ! -f "$dir/passphrase" ]; then
  (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '\n=' > "$dir/passphrase")
fi
cat <<MSG
Throwaway credentials for trying keylessgo out (mode 0600, in $dir):
  SSH key:    $dir/id_ed25519   (unlock: ssh -i $dir/id_ed25519 root@HOST)
  passphrase: $dir/passphrase
Do not use them for real machines: anyone with these files can unlock the image.
MSG
