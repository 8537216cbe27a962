/**
 * Reads a built image without device-mapper and without mounting: partitions are byte
 * ranges of the raw file, the LUKS2 root is decrypted with its volume key (an oracle
 * independent of our build code), and ext4 files are read with debugfs.
 */
import { execa } from 'execa';
import { createDecipheriv } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { copyRange } from '../../src/inspect/image.js';

export interface PartitionRange {
  label: string;
  startBytes: number;
  sizeBytes: number;
}

/** Copies one partition of a raw disk image into its own file. */
export async function extractPartition(raw: string, partition: PartitionRange, to: string, maxBytes = partition.sizeBytes): Promise<string> {
  return copyRange(raw, partition.startBytes, maxBytes, to);
}

export interface VolumeKey {
  key: Buffer;
  payloadOffsetBytes: number;
}

/** The volume key and data offset, from `cryptsetup luksDump --dump-volume-key` on a header copy. */
export async function dumpVolumeKey(header: string, keyFile: string): Promise<VolumeKey> {
  const { stdout } = await execa('cryptsetup', ['luksDump', '--dump-volume-key', '--key-file', keyFile, '--batch-mode', header]);
  const hex = /MK dump:([\s0-9a-f]+)/.exec(stdout)?.[1]?.replace(/\s+/g, '');
  const offsetSectors = Number(/Payload offset:\s*(\d+)/.exec(stdout)?.[1]);
  if (!hex || !Number.isFinite(offsetSectors)) throw new Error(`unexpected luksDump output:\n${stdout}`);
  return { key: Buffer.from(hex, 'hex'), payloadOffsetBytes: offsetSectors * 512 };
}

/**
 * Decrypts an aes-xts-plain64 LUKS2 data area into a plaintext file. The IV is the
 * 512-byte sector number, also for 4096-byte encryption sectors.
 */
export async function decryptDataArea(encrypted: string, volume: VolumeKey, sectorSize: number, to: string): Promise<string> {
  const source = await open(encrypted, 'r');
  const target = await open(to, 'w', 0o600);
  const { size } = await source.stat();
  const chunk = Buffer.alloc(sectorSize * 1024);
  const iv = Buffer.alloc(16);
  try {
    for (let offset = volume.payloadOffsetBytes; offset < size; ) {
      const { bytesRead } = await source.read(chunk, 0, chunk.length, offset);
      if (bytesRead === 0) break;
      const plain = Buffer.alloc(bytesRead);
      for (let s = 0; s + sectorSize <= bytesRead; s += sectorSize) {
        iv.fill(0);
        iv.writeBigUInt64LE(BigInt((offset - volume.payloadOffsetBytes + s) / 512));
        const decipher = createDecipheriv('aes-256-xts', volume.key, iv).setAutoPadding(false);
        decipher.update(chunk.subarray(s, s + sectorSize)).copy(plain, s);
      }
      await target.write(plain);
      offset += bytesRead;
    }
  } finally {
    await source.close();
    await target.close();
  }
  return to;
}

/** Reads a file from an ext4 image with debugfs (no mount, works on plain files). */
export async function readExt4File(image: string, path: string): Promise<string> {
  const { stdout } = await execa('debugfs', ['-R', `cat ${path}`, image], { stderr: 'ignore' });
  return stdout;
}

/** Names in an ext4 directory, from `debugfs ls -p` lines (/inode/mode/uid/gid/name/size/). */
export async function listExt4Dir(image: string, path: string): Promise<string[]> {
  const { stdout } = await execa('debugfs', ['-R', `ls -p ${path}`, image], { stderr: 'ignore' });
  const names = stdout.split('\n').map((line) => line.split('/')[5]).filter((name): name is string => !!name);
  if (!names.includes('.')) throw new Error(`debugfs could not list ${path}`);
  return names.filter((name) => name !== '.' && name !== '..');
}

/** Copies a file out of an ext4 image. */
export async function dumpExt4File(image: string, path: string, to: string): Promise<string> {
  await execa('debugfs', ['-R', `dump ${path} ${to}`, image], { stderr: 'ignore' });
  return to;
}

/** Where the build appended its per-build archive to the initramfs (from the manifest). */
export interface InitramfsLayout {
  baseBytes: number;
  offset: number;
}

/**
 * Paths in the two archives of an initramfs: the zstd-compressed base (no early microcode
 * archive in our images) and the uncompressed per-build archive appended after it.
 */
export async function listInitramfs(initrd: string, layout: InitramfsLayout): Promise<{ base: string; appended: string }> {
  const base = await execa('sh', ['-c', 'head -c "$2" "$1" | zstd -dc | cpio -t --quiet', 'sh', initrd, String(layout.baseBytes)]);
  const appended = await execa('sh', ['-c', 'tail -c +"$2" "$1" | cpio -t --quiet', 'sh', initrd, String(layout.offset + 1)]);
  return { base: base.stdout, appended: appended.stdout };
}

/** Extracts one member of the base or the appended archive into `dir` and returns its contents. */
export async function readInitramfsMember(initrd: string, member: string, dir: string, layout: InitramfsLayout, from: 'base' | 'appended'): Promise<string> {
  const script = from === 'base' ? 'head -c "$3" "$1" | zstd -dc | cpio -id --quiet "$2"' : 'tail -c +"$4" "$1" | cpio -id --quiet "$2"';
  await execa('sh', ['-c', script, 'sh', initrd, member, String(layout.baseBytes), String(layout.offset + 1)], { cwd: dir });
  return readFile(join(dir, member), 'utf8');
}

/** Whether `needle` occurs anywhere in a (large) file, reading it in overlapping chunks. */
export async function fileContains(path: string, needle: Buffer): Promise<boolean> {
  return (await fileContainsAny(path, { needle })).length > 0;
}

/** Which of `needles` occur anywhere in a (large) file: one pass, overlapping chunks. */
export async function fileContainsAny(path: string, needles: Record<string, Buffer>): Promise<string[]> {
  const handle = await open(path, 'r');
  const chunk = Buffer.alloc(16 * 1024 * 1024);
  const overlap = Math.max(...Object.values(needles).map((n) => n.length));
  const found = new Set<string>();
  try {
    for (let position = 0; ; ) {
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, position);
      const data = chunk.subarray(0, bytesRead);
      for (const [name, needle] of Object.entries(needles)) if (data.includes(needle)) found.add(name);
      if (bytesRead < chunk.length) return [...found];
      position += bytesRead - overlap;
    }
  } finally {
    await handle.close();
  }
}
