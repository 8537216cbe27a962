/**
 * The EFI loader chain: every file under EFI/ on the EFI system partition and who signed
 * it, read with mtools from the partition's bytes (no vfat mount).
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { peSignatures, type Signature } from './authenticode.js';
import type { DiskImage } from './image.js';
import type { Partition } from './partitions.js';
import type { ToolRunner } from './tools.js';

export interface EfiFile {
  /** Path on the ESP, e.g. EFI/BOOT/BOOTX64.EFI. */
  path: string;
  bytes: number;
  /** Whether the file is a PE image (a loader); signatures only apply to those. */
  pe: boolean;
  signatures: Signature[];
}

/** `mdir -/ -b` lines: files only (directories end in a slash), without the drive prefix. */
export function parseMdirListing(text: string): string[] {
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.startsWith('::/') && !line.endsWith('/'))
    .map((line) => line.slice('::/'.length));
}

/** The files under EFI/ on the ESP `esp`, each with the signers of its Authenticode signatures. */
export async function readEfiChain(host: ToolRunner, image: DiskImage, esp: Partition, scratchDir: string): Promise<EfiFile[]> {
  // mtools reads a FAT at a byte offset of a raw file (FILE@@OFFSET); other formats are copied out.
  const fat = image.format === 'raw' ? `${image.path}@@${esp.startBytes}` : await image.extract(esp.startBytes, esp.sizeBytes, join(scratchDir, 'esp.fat'));
  const paths = parseMdirListing(await host.run('mdir', ['-/', '-b', '-i', fat, '::/EFI']));
  const files: EfiFile[] = [];
  for (const [index, path] of paths.entries()) {
    const copy = join(scratchDir, `efi-${index}`);
    await host.run('mcopy', ['-n', '-i', fat, `::/${path}`, copy]);
    try {
      const data = await readFile(copy);
      const signed = peSignatures(data);
      files.push({ path, bytes: data.length, pe: signed.pe, signatures: signed.pe ? signed.signatures : [] });
    } finally {
      await rm(copy, { force: true });
    }
  }
  if (fat !== `${image.path}@@${esp.startBytes}`) await rm(fat, { force: true });
  return files;
}
