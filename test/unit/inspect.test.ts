/**
 * inspect's readers on small synthetic inputs: cpio archives made here, a GPT written by
 * sfdisk, a LUKS2 header made by cryptsetup with a clevis-style token, and a whole little
 * disk (GPT, ext4 /boot with grub.cfg and an initramfs, LUKS2 root) as raw and qcow2.
 */
import { execa } from 'execa';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { blockSizeFor, qemuImgDdArgs } from '../../src/host/qemu-img.js';
import { HostRunner } from '../../src/host/run.js';
import { jwkThumbprint } from '../../src/host/tang.js';
import { bootPath, parseGrubCfg } from '../../src/inspect/boot.js';
import { fileDecompressor, S_IFLNK, unpackInitramfs } from '../../src/inspect/cpio.js';
import { dropbearHostKey } from '../../src/inspect/dropbear.js';
import { formatInspectReport } from '../../src/inspect/format.js';
import { inspectImage } from '../../src/inspect/inspect.js';
import { compareWithManifest } from '../../src/inspect/manifest.js';
import { parsePartitionTable, TABLE_BYTES } from '../../src/inspect/partitions.js';
import { parseAuthorizedKeys, parseInstalledAuthorizedKeys } from '../../src/recipe/authorized-keys.js';
import { MiB } from '../../src/recipe/size.js';
import { captureLogger, ed25519Line, expectInputError, tempDir } from './helpers.js';
import { dropbearEd25519, KEY_OPTIONS, luksContainer, newc, SIGNING_JWK, sparseFile, syntheticDisk, TANG_URL, zstd } from './synthetic-disk.js';

const host = new HostRunner(captureLogger('quiet').log);

async function unpack(images: Buffer[]) {
  return unpackInitramfs(images, fileDecompressor((file, args) => host.run(file, args), await tempDir()));
}

describe('initramfs unpacking', () => {
  it('reads an early uncompressed archive then a compressed one; later entries override earlier ones', async () => {
    const early = newc([{ path: 'kernel/x86/microcode/GenuineIntel.bin', data: 'ucode' }, { path: 'etc/motd', data: 'early' }]);
    const main = newc([{ path: './etc/motd', data: 'main' }, { path: 'usr/sbin/cryptsetup', data: 'ELF' }, { path: 'sbin', data: 'usr/sbin', mode: S_IFLNK | 0o777 }]);
    const image = Buffer.concat([early, Buffer.alloc(512), await zstd(main)]);
    const initramfs = await unpack([image]);
    expect(initramfs.files.get('etc/motd')?.data.toString()).toBe('main');
    expect([...initramfs.files.keys()].sort()).toEqual(['etc/motd', 'kernel/x86/microcode/GenuineIntel.bin', 'sbin', 'usr/sbin/cryptsetup']);
    expect(initramfs.segments).toEqual([`cpio at 0 (2 entries)`, `zstd at ${early.length + 512}`, 'compressed cpio at 0 (3 entries)']);
  });

  it('reads an uncompressed archive appended after a zstd one (keylessgo\'s per-build files), which overrides it', async () => {
    const base = newc([{ path: 'cryptroot/crypttab', data: 'old' }, { path: 'usr/sbin/dropbear', data: 'ELF' }]);
    // Two frames, as zstd -T0 may write, with a checksum each.
    const compressed = Buffer.concat([await zstd(base.subarray(0, 256)), await zstd(base.subarray(256))]);
    const padding = Buffer.alloc((4 - (compressed.length % 4)) % 4);
    const appended = newc([{ path: 'cryptroot/crypttab', data: 'new' }]);
    const initramfs = await unpack([Buffer.concat([compressed, padding, appended])]);
    expect(initramfs.files.get('cryptroot/crypttab')?.data.toString()).toBe('new');
    expect(initramfs.files.get('usr/sbin/dropbear')?.data.toString()).toBe('ELF');
    expect(initramfs.segments).toEqual(['zstd at 0', 'compressed cpio at 0 (2 entries)', `cpio at ${compressed.length + padding.length} (1 entries)`]);
  });

  it('handles gzip, several archives inside one compressed stream, and several initrd files in load order', async () => {
    const inner = Buffer.concat([newc([{ path: 'a', data: '1' }]), newc([{ path: 'a', data: '2' }, { path: 'b', data: 'x' }])]);
    const second = newc([{ path: 'b', data: 'y' }]);
    const initramfs = await unpack([gzipSync(inner), second]);
    expect(initramfs.files.get('a')?.data.toString()).toBe('2');
    expect(initramfs.files.get('b')?.data.toString()).toBe('y');
  });

  it.each([
    ['xz', ['-cq']],
    ['lzma', ['--format=lzma', '-cq']],
    ['bzip2', ['-cq']],
    ['lz4', ['-lcq']],
  ])('decompresses a %s segment with its tool', async (compression, args) => {
    const archive = newc([{ path: 'usr/bin/curl', data: 'ELF' }]);
    const compressed = Buffer.from((await execa(compression === 'lzma' ? 'xz' : compression, args, { input: archive, encoding: 'buffer' })).stdout);
    const initramfs = await unpack([compressed]);
    expect(initramfs.segments[0]).toBe(`${compression} at 0`);
    expect(initramfs.files.get('usr/bin/curl')?.data.toString()).toBe('ELF');
  });

  it('refuses data that is neither cpio nor a known compression', async () => {
    await expect(unpack([Buffer.from('not an initramfs')])).rejects.toThrow(/unrecognised initramfs data at byte 0/);
    await expect(unpack([newc([{ path: 'a', data: 'x' }]).subarray(0, 100)])).rejects.toThrow(/truncated/);
  });
});

describe('keys in an initramfs', () => {
  it('fingerprints a dropbear ed25519 host key as ssh-keygen does for its public half', async () => {
    const { file, publicLine } = dropbearEd25519();
    const expected = (await execa('ssh-keygen', ['-l', '-f', '-'], { input: publicLine })).stdout.split(' ')[1];
    expect(dropbearHostKey(file)).toEqual({ type: 'ssh-ed25519', fingerprint: expected });
    expect(dropbearHostKey(Buffer.from('garbage'))).toBeUndefined();
  });

  it('reads authorized_keys options (quoted spaces included) and fingerprints the key', () => {
    const line = ed25519Line('someone@example');
    const [plain] = parseAuthorizedKeys(line, 'test');
    expect(parseInstalledAuthorizedKeys(`# comment\n${KEY_OPTIONS} ${line}\nnot a key\n`)).toEqual([{ ...plain, options: KEY_OPTIONS }]);
  });
});

describe('partition table and grub.cfg', () => {
  it('parses a GPT written by sfdisk: names, starts and sizes', async () => {
    const disk = join(await tempDir(), 'disk.raw');
    await sparseFile(disk, 8 * MiB);
    await execa('sfdisk', ['--quiet', disk], { input: 'label: gpt\nstart=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="keylessgo-esp"\nsize=2048, name="data"\n' });
    const handle = await open(disk, 'r');
    const buffer = Buffer.alloc(TABLE_BYTES);
    await handle.read(buffer, 0, TABLE_BYTES, 0);
    await handle.close();
    expect(parsePartitionTable(buffer)).toEqual({
      scheme: 'gpt',
      sectorSize: 512,
      partitions: [
        { number: 1, label: 'keylessgo-esp', type: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B', startBytes: MiB, sizeBytes: 2 * MiB },
        { number: 2, label: 'data', type: '0FC63DAF-8483-4772-8E79-3D69D8477DE4', startBytes: 3 * MiB, sizeBytes: MiB },
      ],
    });
    expect(parsePartitionTable(Buffer.alloc(TABLE_BYTES)).scheme).toBe('none');
  });

  it('takes the kernel, command line and initrds of the first linux entry', () => {
    const cfg = 'set default=0\nmenuentry "x" {\n\tlinux /vmlinuz root=/dev/mapper/cryptroot ro ip=:::::eth0:dhcp\n\tinitrd /intel-ucode.img /initrd.img\n}\nmenuentry "y" {\n\tlinux /old\n}\n';
    expect(parseGrubCfg(cfg)).toEqual({ kernel: '/vmlinuz', cmdline: 'root=/dev/mapper/cryptroot ro ip=:::::eth0:dhcp', initrds: ['/intel-ucode.img', '/initrd.img'] });
    expect(parseGrubCfg('set timeout=1\n')).toBeUndefined();
    expect(bootPath('/boot', '/vmlinuz')).toBe('/boot/vmlinuz');
    expect(bootPath('/boot', '/boot/vmlinuz')).toBe('/boot/vmlinuz');
    expect(bootPath('', '($root)/initrd.img')).toBe('/initrd.img');
  });

  it('asks qemu-img dd for a count that includes the skipped blocks', () => {
    expect(blockSizeFor(66 * MiB, 384 * MiB)).toBe(MiB);
    expect(blockSizeFor(MiB + 512, 4096)).toBe(512);
    expect(qemuImgDdArgs('qcow2', 'in.qcow2', 66 * MiB, 384 * MiB, 'out')).toEqual(['dd', '-f', 'qcow2', '-O', 'raw', 'bs=1048576', 'skip=66', 'count=450', 'if=in.qcow2', 'of=out']);
  });
});

describe('manifest comparison', () => {
  it('flags a LUKS UUID and a command line that differ, and skips what the image could not tell', () => {
    const manifest = { luks: { uuid: 'aaaa', keyslots: [0, 1] }, kernel: { cmdline: 'root=/dev/mapper/cryptroot ro' }, dropbear: { hostKeys: [{ type: 'ssh-ed25519', fingerprint: 'SHA256:x' }] } };
    const luks = { version: 2, uuid: 'bbbb', label: '', cipher: 'aes-xts-plain64', keySizeBits: 512, keyslots: [{ slot: 1, type: 'luks2', kdf: 'pbkdf2' }, { slot: 0, type: 'luks2', kdf: 'argon2id' }], tokens: [], damage: [] };
    const result = compareWithManifest(manifest, { imageName: 'x.raw', imageBytes: 1, partitions: [], luks, cmdline: 'root=/dev/sda2 ro' });
    expect(result.compared).toEqual(['luks.uuid', 'luks.keyslots', 'kernel.cmdline']);
    expect(result.mismatches).toEqual([
      { field: 'luks.uuid', manifest: 'aaaa', image: 'bbbb' },
      { field: 'kernel.cmdline', manifest: 'root=/dev/mapper/cryptroot ro', image: 'root=/dev/sda2 ro' },
    ]);
  });
});

// cryptsetup, mkfs and qemu-img for each disk: seconds on a loaded 2-core host.
describe('inspectImage on a small synthetic disk', { timeout: 60_000 }, () => {
  it('reports partitions, LUKS2 with the Tang token, grub cmdline and the initramfs, the same for raw and qcow2', async () => {
    const dir = await tempDir();
    const { disk, luksUuid, hostKey } = await syntheticDisk(dir);
    const report = await inspectImage(host, disk);
    expect(report.partitionTable.partitions.map((p) => [p.label, p.contents, p.startBytes, p.sizeBytes])).toEqual([
      ['keylessgo-boot', 'ext', MiB, 8 * MiB],
      ['keylessgo-root', 'luks', 9 * MiB, 20 * MiB],
      ['keylessgo-esp', 'other', 29 * MiB, 2 * MiB],
    ]);
    expect(report.efi).toEqual({
      partition: 3,
      files: [
        { path: 'EFI/BOOT/BOOTX64.EFI', bytes: expect.any(Number), pe: true, signatures: [{ subject: 'O=Example\nCN=Test Shim Signer', issuer: 'CN=Test UEFI CA' }] },
        { path: 'EFI/debian/grub.cfg', bytes: expect.any(Number), pe: false, signatures: [] },
      ],
    });
    expect(report.boot?.kernelSignatures).toEqual([{ subject: 'O=Example\nCN=Test Kernel Signer', issuer: 'CN=Test CA' }]);
    expect(report.luks).toHaveLength(1);
    expect(report.luks[0]).toMatchObject({ partition: 2, version: 2, uuid: luksUuid, cipher: 'aes-xts-plain64', keySizeBits: 512, sectorSize: 4096 });
    expect(report.luks[0]!.keyslots.map((k) => [k.slot, k.kdf, k.iterations])).toEqual([[0, 'pbkdf2', 1000], [1, 'pbkdf2', 1000]]);
    expect(report.luks[0]!.tokens).toEqual([{ id: 0, type: 'clevis', keyslots: [1], clevisPin: 'tang', tang: [{ url: TANG_URL, thumbprints: [jwkThumbprint(SIGNING_JWK)] }] }]);
    expect(report.boot).toMatchObject({ partition: 1, grubCfg: '/grub/grub.cfg', kernel: '/vmlinuz', cmdline: 'root=/dev/mapper/cryptroot ro ip=:::::eth0:dhcp' });
    const initramfs = report.initramfs!;
    expect(initramfs.files).toEqual(['/initrd.img-test']);
    expect(initramfs.contains).toMatchObject({ cryptsetup: true, dropbear: true, authorized_keys: true, crypttab: true, clevis: false, curl: false });
    expect(initramfs.authorizedKeys).toEqual([expect.objectContaining({ file: 'root-Xy12ab/.ssh/authorized_keys', comment: 'operator@example', options: KEY_OPTIONS })]);
    expect(initramfs.dropbearHostKeys).toEqual([dropbearHostKey(hostKey.file)]);
    expect(initramfs.dropbearOptions).toBe('-s -p 2222');
    expect(initramfs.network).toEqual(['conf/initramfs.conf: DEVICE=eth0']);
    expect(report.manifest).toBeNull();
    expect(report.notes).toEqual([]);

    const human = formatInspectReport(report);
    expect(human).toMatch(/^ {2}2 +keylessgo-root +.* +luks$/m);
    expect(human).toContain(`token 0    clevis tang -> keyslot 1: ${TANG_URL} (signing key ${jwkThumbprint(SIGNING_JWK)})`);
    expect(human).toMatch(/^ {2}curl +NO$/m);
    expect(human).toMatch(/^ {2}EFI\/BOOT\/BOOTX64\.EFI +\d+ B, signed by Test Shim Signer \(issuer Test UEFI CA\)$/m);
    expect(human).toMatch(/^ {2}EFI\/debian\/grub\.cfg +\d+ B, not a PE image$/m);
    expect(human).toMatch(/^ {2}kernel +\/vmlinuz, signed by Test Kernel Signer \(issuer Test CA\)$/m);

    const qcow2 = join(dir, 'disk.qcow2');
    await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', disk, qcow2]);
    const fromQcow2 = await inspectImage(host, qcow2);
    expect({ ...fromQcow2, image: disk, format: 'raw' }).toEqual(report);
  });

  it('flags a manifest beside the image whose LUKS UUID differs from the header', async () => {
    const dir = await tempDir();
    const { disk } = await syntheticDisk(dir);
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ luks: { uuid: '00000000-0000-4000-8000-000000000000' }, kernel: { cmdline: 'root=/dev/mapper/cryptroot ro ip=:::::eth0:dhcp' } }));
    const report = await inspectImage(host, disk);
    expect(report.manifest?.mismatches.map((m) => m.field)).toEqual(['luks.uuid']);
    expect(formatInspectReport(report)).toMatch(/MISMATCH luks\.uuid +manifest 00000000-0000-4000-8000-000000000000, image /);
  });

  it('reports a LUKS container without a partition table, and notes what is missing', async () => {
    const { file } = await luksContainer(await tempDir());
    const report = await inspectImage(host, file);
    expect(report.partitionTable).toMatchObject({ scheme: 'none', partitions: [{ number: 0, contents: 'luks' }] });
    expect(report.boot).toBeNull();
    expect(report.notes).toEqual(['no /boot found (no ext file system with grub/ or an initrd)']);
  });

  it('refuses a missing file and a file with no disk structure (exit 2)', async () => {
    const dir = await tempDir();
    await expectInputError(inspectImage(host, join(dir, 'absent.raw')), 'no such file');
    await writeFile(join(dir, 'garbage.raw'), Buffer.alloc(1024 * 1024, 0x5a));
    await expectInputError(inspectImage(host, join(dir, 'garbage.raw')), 'not a disk image');
  });
});
