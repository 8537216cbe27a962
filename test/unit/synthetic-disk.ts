/**
 * Small disks made here for inspect's tests: cpio archives, dropbear keys, a LUKS2 container
 * (cryptsetup, with a clevis-style token) and a whole little disk (GPT, ext4 /boot with
 * grub.cfg and an initramfs, LUKS2 root).
 */
import { execa } from 'execa';
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, open, readFile, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { S_IFREG } from '../../src/inspect/cpio.js';
import { MiB } from '../../src/recipe/size.js';
import { ed25519Line, tempDir } from './helpers.js';
import { peWithSignature, signedData } from './signed-pe.js';

/** A newc cpio archive of regular files and symlinks, with its trailer. */
export function newc(entries: Array<{ path: string; data: string | Buffer; mode?: number }>): Buffer {
  const pad = (buffer: Buffer) => Buffer.concat([buffer, Buffer.alloc((4 - (buffer.length % 4)) % 4)]);
  const member = (path: string, data: Buffer, mode: number) => {
    const name = Buffer.from(`${path}\0`);
    const fields = [1, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, name.length, 0];
    const header = Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`);
    return Buffer.concat([pad(Buffer.concat([header, name])), pad(data)]);
  };
  return Buffer.concat([...entries.map((e) => member(e.path, Buffer.from(e.data), e.mode ?? S_IFREG | 0o644)), member('TRAILER!!!', Buffer.alloc(0), 0)]);
}

export async function zstd(data: Buffer): Promise<Buffer> {
  return Buffer.from((await execa('zstd', ['-cq'], { input: data, encoding: 'buffer' })).stdout);
}

/** A dropbear-format ed25519 host key (string type, string seed||public) and its public line for ssh-keygen. */
export function dropbearEd25519(): { file: Buffer; publicLine: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const seed = Buffer.from(privateKey.export({ format: 'jwk' }).d!, 'base64url');
  const pub = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
  const str = (b: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, b.length]), b]);
  const type = Buffer.from('ssh-ed25519');
  return { file: Buffer.concat([str(type), str(Buffer.concat([seed, pub]))]), publicLine: `ssh-ed25519 ${Buffer.concat([str(type), str(pub)]).toString('base64')}` };
}

export const KEY_OPTIONS = 'no-port-forwarding,command="cryptroot-unlock --verbose"';
export const TANG_URL = 'http://tang.example:7500';
export const SIGNING_JWK = { kty: 'EC', crv: 'P-521', x: 'AXg', y: 'AYw', key_ops: ['verify'], alg: 'ES512' };

/** A clevis tang token as `clevis luks bind` stores it: the pin config travels in the JWE protected header. */
function clevisToken(keyslot: number): string {
  const header = { alg: 'ECDH-ES', enc: 'A256GCM', clevis: { pin: 'tang', tang: { url: TANG_URL, adv: { keys: [SIGNING_JWK, { kty: 'EC', crv: 'P-521', x: 'Ax', y: 'Ay', key_ops: ['deriveKey'] }] } } } };
  return JSON.stringify({ type: 'clevis', keyslots: [String(keyslot)], jwe: { ciphertext: '', encrypted_key: '', iv: '', protected: Buffer.from(JSON.stringify(header)).toString('base64url'), tag: '' } });
}

export async function luksContainer(dir: string): Promise<{ file: string; uuid: string }> {
  const file = join(dir, 'luks.img');
  const keyFile = join(dir, 'key');
  await writeFile(keyFile, 'unit-test-passphrase', { mode: 0o600 });
  await sparseFile(file, 20 * MiB);
  const pbkdf = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
  await execa('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks2', '--sector-size', '4096', ...pbkdf, '--key-file', keyFile, file]);
  await execa('cryptsetup', ['luksAddKey', '--batch-mode', ...pbkdf, '--key-file', keyFile, '--new-keyfile', keyFile, '--key-slot', '1', file]);
  await execa('cryptsetup', ['token', 'import', file], { input: clevisToken(1) });
  return { file, uuid: (await execa('cryptsetup', ['luksUUID', file])).stdout.trim() };
}

export async function sparseFile(path: string, bytes: number): Promise<void> {
  await writeFile(path, '');
  await truncate(path, bytes);
}

export async function writeAt(disk: string, offset: number, data: Buffer): Promise<void> {
  const handle = await open(disk, 'r+');
  await handle.write(data, 0, data.length, offset);
  await handle.close();
}

/**
 * GPT with keylessgo-boot (ext4: grub.cfg, initrd.img -> initrd.img-test) and keylessgo-root
 * (LUKS2, clevis token). `initrd` replaces the initramfs made here.
 */
export async function syntheticDisk(dir: string, options: { initrd?: Buffer } = {}) {
  const hostKey = dropbearEd25519();
  const key = ed25519Line('operator@example');
  const luks = await luksContainer(dir);
  const initrd = options.initrd ?? Buffer.concat([
    newc([{ path: 'kernel/x86/microcode/AuthenticAMD.bin', data: 'ucode' }]),
    await zstd(
      newc([
        { path: 'usr/sbin/cryptsetup', data: 'ELF' },
        { path: 'usr/sbin/dropbear', data: 'ELF' },
        { path: 'root-Xy12ab/.ssh/authorized_keys', data: `${KEY_OPTIONS} ${key}\n` },
        { path: 'etc/dropbear/dropbear_ed25519_host_key', data: hostKey.file },
        { path: 'etc/dropbear/dropbear.conf', data: 'DROPBEAR_OPTIONS="-s -p 2222"\n' },
        { path: 'cryptroot/crypttab', data: `cryptroot UUID=${luks.uuid} none luks,initramfs\n` },
        { path: 'conf/initramfs.conf', data: 'MODULES=most\nDEVICE=eth0\n' },
      ]),
    ),
  ]);
  const tree = join(dir, 'boot-tree');
  await mkdir(join(tree, 'grub'), { recursive: true });
  await writeFile(join(tree, 'grub/grub.cfg'), 'menuentry "t" {\n\tlinux /vmlinuz root=/dev/mapper/cryptroot ro ip=:::::eth0:dhcp\n\tinitrd /initrd.img\n}\n');
  await writeFile(join(tree, 'initrd.img-test'), initrd);
  await writeFile(join(tree, 'vmlinuz'), peWithSignature(await signedData(await tempDir(), 'Test Kernel Signer', 'Test CA')));
  const esp = join(dir, 'esp.fat');
  await execa('mkfs.vfat', ['-C', esp, '2048']);
  await writeFile(join(dir, 'BOOTX64.EFI'), peWithSignature(await signedData(await tempDir(), 'Test Shim Signer', 'Test UEFI CA')));
  await execa('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT', '::/EFI/debian']);
  await execa('mcopy', ['-i', esp, join(dir, 'BOOTX64.EFI'), '::/EFI/BOOT/BOOTX64.EFI']);
  await execa('mcopy', ['-i', esp, join(tree, 'grub/grub.cfg'), '::/EFI/debian/grub.cfg']);
  await symlink('initrd.img-test', join(tree, 'initrd.img'));
  const bootFs = join(dir, 'boot.ext4');
  await sparseFile(bootFs, 8 * MiB);
  await execa('mkfs.ext4', ['-q', '-F', '-d', tree, bootFs]);

  const disk = join(dir, 'disk.raw');
  await sparseFile(disk, 32 * MiB);
  const espPartition = 'start=59392, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="keylessgo-esp"';
  await execa('sfdisk', ['--quiet', disk], { input: `label: gpt\nstart=2048, size=16384, name="keylessgo-boot"\nstart=18432, size=40960, name="keylessgo-root"\n${espPartition}\n` });
  await writeAt(disk, MiB, await readFile(bootFs));
  await writeAt(disk, 29 * MiB, await readFile(esp));
  await writeAt(disk, 9 * MiB, await readFile(luks.file));
  return { disk, luksUuid: luks.uuid, hostKey, key };
}

