/** What matters in an initramfs for unlocking: tools present, who may log in, host keys, network. */
import { parseInstalledAuthorizedKeys, type AuthorizedKeyWithOptions } from '../recipe/authorized-keys.js';
import { checkInitramfsListing } from '../stages/initramfs.js';
import { fileType, S_IFREG, type Initramfs } from './cpio.js';
import { dropbearHostKey, type HostKey } from './dropbear.js';

export interface InitramfsReport {
  /** The initrd file(s) on the boot file system, in load order. */
  files: string[];
  segments: string[];
  entryCount: number;
  /** Presence of each entry a remote or Tang unlock needs (keylessgo's own build check). */
  contains: Record<string, boolean>;
  authorizedKeys: Array<Pick<AuthorizedKeyWithOptions, 'type' | 'fingerprint' | 'comment' | 'options'> & { file: string }>;
  dropbearHostKeys: HostKey[];
  dropbearOptions?: string;
  /** crypttab lines as the initramfs will use them. */
  crypttab: string[];
  /** IP=/DEVICE= settings from conf/initramfs.conf and conf/conf.d/* (the kernel's ip= comes first). */
  network: string[];
}

const text = (initramfs: Initramfs, path: string) => initramfs.files.get(path)?.data.toString('utf8');
const regularFiles = (initramfs: Initramfs, pattern: RegExp) =>
  [...initramfs.files.values()].filter((entry) => fileType(entry.mode) === S_IFREG && pattern.test(entry.path));
const settings = (content: string, names: string) => content.split('\n').map((line) => line.trim()).filter((line) => new RegExp(`^(export\\s+)?(${names})=`).test(line));

export function summariseInitramfs(initramfs: Initramfs, files: string[]): InitramfsReport {
  const confFiles = regularFiles(initramfs, /^conf\/(initramfs\.conf|conf\.d\/[^/]+)$/);
  const dropbearConf = text(initramfs, 'etc/dropbear/dropbear.conf') ?? '';
  return {
    files,
    segments: initramfs.segments,
    entryCount: initramfs.files.size,
    contains: checkInitramfsListing([...initramfs.files.keys()].join('\n'), true),
    authorizedKeys: regularFiles(initramfs, /(^|\/)\.ssh\/authorized_keys$|^etc\/dropbear\/authorized_keys$/).flatMap((entry) =>
      parseInstalledAuthorizedKeys(entry.data.toString('utf8')).map(({ type, fingerprint, comment, options }) => ({ file: entry.path, type, fingerprint, comment, options })),
    ),
    dropbearHostKeys: regularFiles(initramfs, /^etc\/dropbear\/dropbear_\w+_host_key$/).flatMap((entry) => dropbearHostKey(entry.data) ?? []),
    dropbearOptions: /^DROPBEAR_OPTIONS="?([^"\n]*)"?$/m.exec(dropbearConf)?.[1],
    crypttab: (text(initramfs, 'cryptroot/crypttab') ?? '').split('\n').filter((line) => line.trim() && !line.trim().startsWith('#')),
    network: confFiles.flatMap((entry) => settings(entry.data.toString('utf8'), 'IP|DEVICE').map((line) => `${entry.path}: ${line}`)),
  };
}
