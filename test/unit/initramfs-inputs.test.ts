/** The initramfs cache key's view of the tree: what changes the initramfs, and what is per build. */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { initramfsInputDigest } from '../../src/stages/initramfs.js';
import { tempDir } from './helpers.js';

const TREE: Record<string, string> = {
  'etc/initramfs-tools/initramfs.conf': 'MODULES=most\nCOMPRESS=zstd\n',
  'etc/dropbear/initramfs/dropbear.conf': 'DROPBEAR_OPTIONS="-s -j -k -p 22"\n',
  'etc/dropbear/initramfs/authorized_keys': 'ssh-ed25519 AAAAone\n',
  'etc/dropbear/initramfs/dropbear_ed25519_host_key': 'private one',
  'etc/crypttab': 'cryptroot\tUUID=11111111-2222-4333-8444-555555555555\tnone\tluks,discard,initramfs\n',
  'etc/fstab': 'UUID=aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee /boot ext4 defaults 0 2\n',
  'usr/share/initramfs-tools/hooks/dropbear': '#!/bin/sh\n',
  'etc/hostname': 'one\n',
};

async function treeWith(changes: Record<string, string> = {}): Promise<string> {
  const root = await tempDir();
  for (const [path, content] of Object.entries({ ...TREE, ...changes })) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), content);
  }
  return root;
}

describe('initramfsInputDigest', () => {
  it('ignores what every build changes: keys, authorized_keys, UUIDs, files outside the inputs', async () => {
    const base = await initramfsInputDigest(await treeWith());
    const perBuild = await treeWith({
      'etc/dropbear/initramfs/authorized_keys': 'ssh-ed25519 AAAAtwo\n',
      'etc/dropbear/initramfs/dropbear_ed25519_host_key': 'private two',
      'etc/crypttab': 'cryptroot\tUUID=99999999-2222-4333-8444-555555555555\tnone\tluks,discard,initramfs\n',
      'etc/fstab': 'UUID=ffffffff-bbbb-4ccc-8ddd-eeeeeeeeeeee /boot ext4 defaults 0 2\n',
      'etc/hostname': 'two\n',
    });
    expect(await initramfsInputDigest(perBuild)).toBe(base);
  });

  it.each([
    ['etc/dropbear/initramfs/dropbear.conf', 'DROPBEAR_OPTIONS="-s -j -k -p 2222"\n'],
    ['etc/initramfs-tools/initramfs.conf', 'MODULES=dep\nCOMPRESS=zstd\n'],
    ['etc/crypttab', 'cryptroot\tUUID=11111111-2222-4333-8444-555555555555\tnone\tluks,initramfs\n'],
    ['etc/modprobe.d/blacklist.conf', 'blacklist floppy\n'],
    ['usr/share/initramfs-tools/scripts/local-top/extra', '#!/bin/sh\n'],
  ])('changes when %s changes', async (path, content) => {
    expect(await initramfsInputDigest(await treeWith({ [path]: content }))).not.toBe(await initramfsInputDigest(await treeWith()));
  });
});
