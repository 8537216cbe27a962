/**
 * A minimal writer of "newc" cpio archives, the format the kernel unpacks into the initramfs.
 * The kernel accepts several archives one after another (each optionally compressed, aligned
 * to 4 bytes) and a later file replaces an earlier one of the same path: that is how a
 * cached initramfs gets this build's host keys, authorized_keys and crypttab appended.
 */

export interface NewcFile {
  /** Path inside the initramfs, without a leading slash. */
  path: string;
  mode: number;
  data: Buffer;
}

const S_IFREG = 0o100000;
const TRAILER = 'TRAILER!!!';

const hex8 = (value: number) => value.toString(16).padStart(8, '0');
const pad4 = (length: number) => Buffer.alloc((4 - (length % 4)) % 4);

function member(ino: number, mode: number, name: string, data: Buffer, mtime: number): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`);
  // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
  const fields = [ino, mode, 0, 0, 1, mtime, data.length, 0, 0, 0, 0, nameBytes.length, 0];
  const header = Buffer.from(`070701${fields.map(hex8).join('')}`, 'ascii');
  return [header, nameBytes, pad4(header.length + nameBytes.length), data, pad4(data.length)];
}

/** One archive of regular files (their directories must exist in an earlier archive). */
export function newcArchive(files: readonly NewcFile[], mtime = 0): Buffer {
  const parts: Buffer[] = [];
  for (const [index, file] of files.entries()) {
    if (file.path.startsWith('/') || file.path.split('/').includes('..')) throw new Error(`bad initramfs path ${file.path}`);
    parts.push(...member(index + 1, S_IFREG | (file.mode & 0o7777), file.path, file.data, mtime));
  }
  parts.push(...member(0, 0, TRAILER, Buffer.alloc(0), 0));
  return Buffer.concat(parts);
}

/**
 * The archive padded with zeros (the kernel skips zeros between and after archives) to a length
 * that depends on each file's size only to the next `quantum` bytes: an ECDSA host key of 104
 * or 105 bytes (its private scalar's encoding varies) makes an archive of the same length.
 * With the appended archive's length stable, /boot's file system is laid out alike in two
 * builds, and differs only in the archive's own blocks (reproducible plaintext).
 */
export function stableLengthArchive(files: readonly NewcFile[], quantum = 256, alignment = 512): Buffer {
  const archive = newcArchive(files);
  const nominal = newcArchive(files.map((f) => ({ ...f, data: Buffer.alloc(Math.ceil(Math.max(1, f.data.length) / quantum) * quantum) }))).length;
  const length = Math.ceil(nominal / alignment) * alignment;
  return Buffer.concat([archive, Buffer.alloc(length - archive.length)]);
}

/** Zero bytes that bring an initramfs of `length` bytes to the 4-byte boundary the next archive must start on. */
export function alignmentPadding(length: number): Buffer {
  return pad4(length);
}
