/** qemu-img invocations shared by the boot test and inspect. */

/** The largest block size up to 1 MiB dividing both numbers: qemu-img dd counts in blocks. */
export function blockSizeFor(offset: number, length: number): number {
  let size = 1024 * 1024;
  while (size > 1 && (offset % size !== 0 || length % size !== 0)) size /= 2;
  return size;
}

/**
 * `qemu-img dd` arguments copying `length` bytes at `offset`. Its count includes the skipped
 * blocks (it counts from the start of the input), unlike dd(1).
 */
export function qemuImgDdArgs(format: string, path: string, offset: number, length: number, to: string): string[] {
  const block = blockSizeFor(offset, length);
  // Always -f: qemu-img's own guess would follow a crafted qcow2's backing file (see inspect/disk-format.ts).
  return ['dd', '-f', format, '-O', 'raw', `bs=${block}`, `skip=${offset / block}`, `count=${(offset + length) / block}`, `if=${path}`, `of=${to}`];
}
