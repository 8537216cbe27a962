/** The per-build initramfs archive, read back by GNU cpio (an independent reader of the format). */
import { execa } from 'execa';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { alignmentPadding, newcArchive } from '../../src/initramfs/newc.js';
import { tempDir } from './helpers.js';

describe('newcArchive', () => {
  const files = [
    { path: 'etc/dropbear/dropbear_ed25519_host_key', mode: 0o600, data: Buffer.from([0, 1, 2, 255, 10]) },
    { path: 'root-AbCdEf1234/.ssh/authorized_keys', mode: 0o600, data: Buffer.from('ssh-ed25519 AAAA test\n') },
    { path: 'cryptroot/crypttab', mode: 0o644, data: Buffer.from('cryptroot UUID=1 none luks\n') },
  ];

  it('is read back by cpio with the same names, modes and contents, 4-byte aligned', async () => {
    const dir = await tempDir();
    const archive = newcArchive(files);
    expect(archive.length % 4).toBe(0);
    const file = join(dir, 'extra.cpio');
    await writeFile(file, archive);
    expect((await execa('cpio', ['-t', '--quiet', '-F', file])).stdout.split('\n')).toEqual(files.map((f) => f.path));
    await execa('cpio', ['-id', '--quiet', '-F', file], { cwd: dir });
    for (const f of files) {
      expect(await readFile(join(dir, f.path))).toEqual(f.data);
      expect((await stat(join(dir, f.path))).mode & 0o7777).toBe(f.mode);
    }
  });

  it('refuses absolute paths and parent references', () => {
    expect(() => newcArchive([{ path: '/etc/x', mode: 0o644, data: Buffer.alloc(0) }])).toThrow(/bad initramfs path/);
    expect(() => newcArchive([{ path: 'a/../../x', mode: 0o644, data: Buffer.alloc(0) }])).toThrow(/bad initramfs path/);
  });

  it('pads an initramfs to the 4-byte boundary the next archive starts on', () => {
    expect([0, 1, 2, 3, 4].map((n) => alignmentPadding(n).length)).toEqual([0, 3, 2, 1, 0]);
  });
});
