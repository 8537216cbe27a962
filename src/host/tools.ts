/** Host commands keylessgo runs, and the Debian package that provides each. */
import { access, constants } from 'node:fs/promises';
import { delimiter, join } from 'node:path';

export const TOOL_PACKAGES: Record<string, string> = {
  mmdebstrap: 'mmdebstrap',
  debootstrap: 'debootstrap',
  chroot: 'coreutils',
  cp: 'coreutils',
  sync: 'coreutils',
  sha256sum: 'coreutils',
  find: 'findutils',
  mount: 'mount',
  umount: 'mount',
  losetup: 'mount',
  partx: 'util-linux',
  blockdev: 'util-linux',
  prlimit: 'util-linux',
  sfdisk: 'fdisk',
  'mkfs.ext4': 'e2fsprogs',
  dumpe2fs: 'e2fsprogs',
  debugfs: 'e2fsprogs',
  'mkfs.vfat': 'dosfstools',
  mmd: 'mtools',
  mcopy: 'mtools',
  mdir: 'mtools',
  mlabel: 'mtools',
  cryptsetup: 'cryptsetup-bin',
  zstd: 'zstd',
  'qemu-img': 'qemu-utils',
  'qemu-system-x86_64': 'qemu-system-x86',
  'ssh-keygen': 'openssh-client',
  ssh: 'openssh-client',
  clevis: 'clevis',
  socat: 'socat',
  // boot-test --tpm: a TPM 2.0 emulator for QEMU (swtpm_setup, in swtpm-tools, makes TPMs with certificates).
  swtpm: 'swtpm',
  swtpm_setup: 'swtpm-tools',
  // The Ironic tests: IPA's partitioning, a config drive, network_data.json as the image converts it.
  sgdisk: 'gdisk',
  genisoimage: 'genisoimage',
  jq: 'jq',
  // The Ansible example's tests (examples/ansible).
  'ansible-playbook': 'ansible-core',
};

/** Files (not commands) the boot test needs. */
export const FILE_PACKAGES: Record<string, string> = {
  '/usr/share/OVMF/OVMF_CODE_4M.fd': 'ovmf',
  '/usr/share/OVMF/OVMF_VARS_4M.fd': 'ovmf',
  '/usr/share/OVMF/OVMF_CODE_4M.ms.fd': 'ovmf',
  '/usr/share/OVMF/OVMF_VARS_4M.ms.fd': 'ovmf',
};

// Root's PATH is not always the caller's: sbin tools must be found for `doctor` run as a user.
const SEARCH_PATH = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];

export async function findTool(name: string): Promise<string | undefined> {
  for (const dir of SEARCH_PATH) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (await access(candidate, constants.X_OK).then(() => true, () => false)) return candidate;
  }
  return undefined;
}

export interface MissingTool {
  name: string;
  package: string;
}

export async function missingTools(names: Iterable<string>): Promise<MissingTool[]> {
  const missing: MissingTool[] = [];
  for (const name of new Set(names)) {
    const found = name.startsWith('/') ? await access(name).then(() => name, () => undefined) : await findTool(name);
    if (!found) missing.push({ name, package: TOOL_PACKAGES[name] ?? FILE_PACKAGES[name] ?? 'unknown' });
  }
  return missing;
}
