#!/bin/sh
# One stand-in machine of the fleet load test (load-fleet.ts): while its state file says
# "locked", dropbear answers on its port, as the initramfs's would; once "up", OpenSSH, as
# the booted system's would, on the same port with another host key. The stand-in
# cryptroot-unlock turns one into the other. "late" machines start each daemon 2 s late.
#
# Runs in a mount namespace of its own: /root is the fleet's directory (dropbear reads root's
# authorized_keys from it), /run a tmpfs holding sshd's privilege separation directory.
set -u
dir=$1
bin=$(dirname "$0")/bin
port=$(cat "$dir/port")
while :; do
  [ "$(cat "$dir/fault")" = late ] && sleep 2
  case $(cat "$dir/state") in
    locked) dropbear -F -E -s -j -k -p "127.0.0.1:$port" -r "$dir/dropbear_host_key" -P "$dir/daemon.pid" \
      -c "KEYLESSGO_STANDIN_DIR=$dir exec $bin/cryptroot-unlock" 2>>"$dir/log" ;;
    up) /usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>>"$dir/log" ;;
  esac
  # A daemon that could not start (its port taken) is not restarted in a tight loop.
  sleep 0.1
done
