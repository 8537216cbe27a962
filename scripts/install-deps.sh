#!/usr/bin/env bash
# Idempotent installer for every host tool keylessgo uses (build, boot-test, NBDE tests).
# Installs only what is missing; the apt mirror is whatever the host's apt sources say.
# --bench adds the peer builders `make bench` compares against (bench/peers/).
set -euo pipefail

packages=(
  mmdebstrap debootstrap         # bootstrap
  cryptsetup-bin                 # luksFormat, luksDump (reencrypt in the oracle test)
  fdisk e2fsprogs dosfstools mtools  # sfdisk, mkfs.ext4, mkfs.vfat, mcopy/mmd
  grub-efi-amd64-bin grub-pc-bin grub-common  # grub-mkimage for UEFI and BIOS
  qemu-utils qemu-system-x86 ovmf  # qemu-img, boot tests
  swtpm swtpm-tools              # boot-test --tpm: a TPM 2.0 for the VM
  tpm2-tools                     # the unit tests read swtpm as status and reseal read a machine's TPM
  time                           # max RSS of inspect in the hostile-image corpus test
  openssh-client                 # ssh-keygen, boot-test login
  dropbear-bin                   # dropbearkey: the unit tests run the shell enroll sends to a machine
  clevis clevis-luks tang socat curl  # NBDE
  zstd cpio xz-utils bzip2 lz4   # initramfs inspection (every compressor initramfs-tools may use)
  gdisk genisoimage jq           # Ironic tests: IPA's sgdisk steps, a config drive, network_data.json conversion
  ansible-core                   # examples/ansible: the playbook is syntax-checked and run in the unit tests; ansible-inventory
  dropbear-bin openssh-server    # the fleet load test's stand-in machines: their own daemons on 127.0.0.1 (test/fleet-load/)
)
if [ "${1:-}" = --bench ]; then
  # debos is left out: without KVM its build was stopped after 13 min short of an image (bench/peers/README.md).
  packages+=(mkosi)
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (it calls apt-get)" >&2
  exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} host packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
# openssh-server is here for its sshd binary only: the load test runs its own daemons on
# loopback ports. Debian's ssh.service and ssh.socket do not start while this file exists,
# so installing the package leaves no system sshd listening (on 0.0.0.0:22 or anywhere).
if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
  mkdir -p /etc/ssh
  touch /etc/ssh/sshd_not_to_be_run
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
