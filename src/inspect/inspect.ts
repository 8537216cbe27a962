/**
 * `keylessgo inspect`: what an image holds, read without the passphrase and without
 * writing to it. Sections the image does not have (no LUKS, no /boot, no initramfs) are
 * reported as absent with a note, so images from other tools can be inspected too.
 */
import { rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InputError, isReported } from '../errors.js';
import { markChildProcesses, ownedTempDir } from '../base/owner.js';
import type { HostRunner } from '../host/run.js';
import { PARTITION_TYPES } from '../formats/gpt.js';
import { peSignatures, type Signature } from './authenticode.js';
import { bootPath, findBootFiles, guessInitrd, parseGrubCfg, resolveLinks, type GrubEntry } from './boot.js';
import { fileDecompressor, unpackInitramfs } from './cpio.js';
import { Ext4Reader, isExtSuperblock } from './ext4.js';
import { readEfiChain, type EfiFile } from './efi.js';
import { openDiskImage, type DiskImage } from './image.js';
import { summariseInitramfs, type InitramfsReport } from './initramfs.js';
import { BINARY_HEADER_BYTES, parseLuksBinaryHeader, readLuks, type LuksSummary } from './luks.js';
import { compareWithManifest, readManifest, summariseManifest, type Comparison, type Manifest } from './manifest.js';
import { parsePartitionTable, partitionTypeName, TABLE_BYTES, type Partition } from './partitions.js';
import type { FormatPolicy } from './disk-format.js';
import { readSboms, type SbomSummary } from './sbom.js';
import { inspectTools, type ToolRunner } from './tools.js';

export type PartitionContents = 'luks' | 'ext' | 'other';

export interface InspectedPartition extends Partition {
  typeName: string;
  contents: PartitionContents;
}

export interface InspectReport {
  image: string;
  format: string;
  virtualBytes: number;
  partitionTable: { scheme: string; sectorSize: number; partitions: InspectedPartition[] };
  luks: Array<LuksSummary & { partition: number }>;
  /** The files under EFI/ on the EFI system partition, with their signers. */
  efi: { partition: number; files: EfiFile[] } | null;
  /** kernelSignatures: who signed the kernel grub.cfg boots (null: not a PE image). */
  boot: (GrubEntry & { partition: number; grubCfg: string; kernelSignatures: Signature[] | null }) | null;
  initramfs: InitramfsReport | null;
  manifest: ({ file: string; summary: Manifest } & Comparison) | null;
  /** The SBOMs beside the image. */
  sboms: SbomSummary[];
  /** What could not be read or looked wrong, in words. */
  notes: string[];
}

// debugfs needs a file for images that are not raw; larger file systems are not copied out.
const MAX_EXTRACTED_FS_BYTES = 4 * 1024 ** 3;

/** Partitions the image cannot hold or that share bytes: noted, and not looked into past the image's end. */
function partitionNotes(partitions: readonly Partition[], virtualBytes: number): string[] {
  const notes: string[] = [];
  for (const p of partitions) {
    if (p.sizeBytes <= 0) notes.push(`partition ${p.number}: its table entry ends before it starts`);
    else if (p.startBytes + p.sizeBytes > virtualBytes) notes.push(`partition ${p.number} ends at byte ${p.startBytes + p.sizeBytes}, beyond the image's ${virtualBytes} bytes (truncated image or bogus entry)`);
  }
  const sorted = [...partitions].filter((p) => p.sizeBytes > 0).sort((a, b) => a.startBytes - b.startBytes);
  for (let i = 1; i < sorted.length; i++) {
    const [before, after] = [sorted[i - 1]!, sorted[i]!];
    if (after.startBytes < before.startBytes + before.sizeBytes) notes.push(`partitions ${before.number} and ${after.number} overlap`);
  }
  return notes;
}

async function probePartitions(image: DiskImage, notes: string[]): Promise<InspectReport['partitionTable']> {
  const table = parsePartitionTable(await image.read(0, TABLE_BYTES));
  // No partition table: the whole image may be one LUKS container or file system.
  const partitions = table.partitions.length > 0 ? table.partitions : [{ number: 0, label: '', type: '', startBytes: 0, sizeBytes: image.virtualBytes }];
  if (table.scheme === 'gpt' && table.partitions.length === 0) notes.push('the GPT lists no readable partition (damaged header or entry array?); the whole disk is searched instead');
  notes.push(...partitionNotes(partitions, image.virtualBytes));
  const inspected: InspectedPartition[] = [];
  for (const partition of partitions) {
    const readable = partition.sizeBytes > 0 && partition.startBytes < image.virtualBytes;
    const start = readable ? await image.read(partition.startBytes, BINARY_HEADER_BYTES) : Buffer.alloc(0);
    const contents: PartitionContents = parseLuksBinaryHeader(start) ? 'luks' : isExtSuperblock(start) ? 'ext' : 'other';
    inspected.push({ ...partition, typeName: partitionTypeName(partition.type), contents });
  }
  return { scheme: table.scheme, sectorSize: table.sectorSize, partitions: inspected };
}

async function kernelSignatures(fs: Ext4Reader, path: string, notes: string[]): Promise<Signature[] | null> {
  try {
    const signed = peSignatures(await fs.read(await resolveLinks(fs, path)));
    return signed.pe ? signed.signatures : null;
  } catch (error) {
    notes.push(`kernel ${path}: signatures not read: ${(error as Error).message}`);
    return null;
  }
}

async function inspectEfi(host: ToolRunner, image: DiskImage, partitions: InspectedPartition[], scratchDir: string, notes: string[]): Promise<InspectReport['efi']> {
  const esp = partitions.find((p) => p.type === PARTITION_TYPES.esp);
  if (!esp) return null;
  try {
    return { partition: esp.number, files: await readEfiChain(host, image, esp, scratchDir) };
  } catch (error) {
    notes.push(`partition ${esp.number} (EFI system): EFI/ not read: ${firstLine(error)}`);
    return null;
  }
}

interface BootSection {
  boot: InspectReport['boot'];
  initramfs: InitramfsReport | null;
}

async function inspectBoot(host: ToolRunner, image: DiskImage, partitions: InspectedPartition[], scratchDir: string, notes: string[]): Promise<BootSection> {
  // keylessgo's /boot first; otherwise every ext file system is a candidate.
  const candidates = partitions.filter((p) => p.contents === 'ext').sort((a, b) => Number(b.label === 'keylessgo-boot') - Number(a.label === 'keylessgo-boot'));
  for (const partition of candidates) {
    if (image.format !== 'raw' && partition.sizeBytes > MAX_EXTRACTED_FS_BYTES) {
      notes.push(`partition ${partition.number}: ext file system not searched for /boot (larger than ${MAX_EXTRACTED_FS_BYTES / 1024 ** 3} GiB in a ${image.format} image)`);
      continue;
    }
    const fs = await Ext4Reader.open(host, image, partition.startBytes, partition.sizeBytes, scratchDir);
    const files = await findBootFiles(fs);
    if (!files) continue;
    const grubCfg = `${files.prefix}/grub/grub.cfg`;
    const hasGrubCfg = (await fs.list(`${files.prefix}/grub`)).some((entry) => entry.name === 'grub.cfg');
    const entry = hasGrubCfg ? parseGrubCfg((await fs.read(grubCfg)).toString('utf8')) : undefined;
    if (!entry) notes.push(hasGrubCfg ? `${grubCfg} has no linux entry` : `no ${grubCfg} on partition ${partition.number}`);
    const guessed = guessInitrd(files);
    const initrdPaths = entry?.initrds.length ? entry.initrds.map((path) => bootPath(files.prefix, path)) : guessed ? [guessed] : [];
    const boot = entry ? { partition: partition.number, grubCfg, ...entry, kernelSignatures: await kernelSignatures(fs, bootPath(files.prefix, entry.kernel), notes) } : null;
    if (initrdPaths.length === 0) {
      notes.push(`no initramfs found on partition ${partition.number}`);
      return { boot, initramfs: null };
    }
    try {
      const resolved = await Promise.all(initrdPaths.map((path) => resolveLinks(fs, path)));
      const images = await Promise.all(resolved.map((path) => fs.read(path)));
      const initramfs = await unpackInitramfs(images, fileDecompressor((file, args) => host.run(file, args), scratchDir));
      return { boot, initramfs: summariseInitramfs(initramfs, resolved) };
    } catch (error) {
      notes.push(`initramfs ${initrdPaths.join(' ')} could not be read: ${(error as Error).message}`);
      return { boot, initramfs: null };
    }
  }
  notes.push('no /boot found (no ext file system with grub/ or an initrd)');
  return { boot: null, initramfs: null };
}

/** The LUKS header the manifest describes: keylessgo's root partition, else the first one found. */
function rootLuks(report: Pick<InspectReport, 'luks' | 'partitionTable'>): LuksSummary | undefined {
  const root = report.partitionTable.partitions.find((p) => p.label === 'keylessgo-root');
  return report.luks.find((l) => l.partition === root?.number) ?? report.luks[0];
}

/** The initramfs crypttab should name a LUKS container that is in the image. */
function crypttabNotes(initramfs: InitramfsReport, luks: readonly LuksSummary[]): string[] {
  return initramfs.crypttab.flatMap((line) => {
    const uuid = /\bUUID=([0-9a-fA-F-]+)/.exec(line)?.[1];
    return uuid && !luks.some((l) => l.uuid === uuid) ? [`initramfs crypttab names UUID=${uuid}, which is not a LUKS header in this image`] : [];
  });
}

/** What a LUKS header showed that a report reader should know (LUKS1, unknown tokens, a data segment over the metadata). */
function luksNotes(partition: number, luks: LuksSummary): string[] {
  const notes: string[] = [];
  if (luks.version !== 2) notes.push(`partition ${partition}: LUKS${luks.version} header (only its binary header is read; keylessgo builds LUKS2)`);
  for (const token of luks.tokens.filter((t) => !KNOWN_TOKEN_TYPES.test(t.type))) notes.push(`partition ${partition}: token ${token.id} has type ${JSON.stringify(token.type)}, unknown to inspect`);
  if (luks.metadataBytes !== undefined && luks.dataOffsetBytes !== undefined && luks.dataOffsetBytes < luks.metadataBytes) {
    notes.push(`partition ${partition}: the data segment at byte ${luks.dataOffsetBytes} overlaps the LUKS metadata (${luks.metadataBytes} bytes)`);
  }
  return notes.concat(luks.damage.map((damage) => `partition ${partition}: ${damage}`));
}

const KNOWN_TOKEN_TYPES = /^(clevis|systemd-(tpm2|fido2|pkcs11|recovery)|luks2-keyring)$/;

export interface InspectOptions {
  /** What image formats and qcow2 features are read (default: raw and self-contained qcow2 only). */
  policy?: FormatPolicy;
}

/** The first line of an error's message: a damaged image yields a note or one line, never a trace. */
const firstLine = (error: unknown) => (error instanceof Error ? error.message : String(error)).split('\n')[0]!;

export async function inspectImage(hostRunner: HostRunner, imagePath: string, options: InspectOptions = {}): Promise<InspectReport> {
  const host = await inspectTools(hostRunner);
  // Owned, and so are its decompressors: what a killed inspect leaves (copies of the LUKS
  // metadata and /boot, a tool still running) is reaped by the next build or `cache prune`.
  await markChildProcesses();
  const scratchDir = await ownedTempDir('keylessgo-inspect-');
  try {
    const image = await openDiskImage(host, imagePath, scratchDir, options.policy);
    return await inspectOpened(host, image, scratchDir);
  } catch (error) {
    if (isReported(error)) throw error;
    // Whatever a hostile or damaged file did to a reader: exit 2 naming the file, not an internal error.
    throw new InputError(`cannot be inspected: ${firstLine(error)}`, imagePath);
  } finally {
    await rm(scratchDir, { recursive: true, force: true });
  }
}

async function inspectOpened(host: ToolRunner, image: DiskImage, scratchDir: string): Promise<InspectReport> {
  const imagePath = image.path;
  const notes: string[] = [];
  const partitionTable = await probePartitions(image, notes);
  if (partitionTable.scheme === 'none' && partitionTable.partitions[0]!.contents === 'other') {
    throw new InputError('not a disk image: no partition table, LUKS header or ext file system found', imagePath);
  }
  const luks: InspectReport['luks'] = [];
  for (const p of partitionTable.partitions.filter((p) => p.contents === 'luks')) {
    try {
      const summary = await readLuks(host, image, p.startBytes, p.sizeBytes, scratchDir);
      luks.push({ partition: p.number, ...summary });
      notes.push(...luksNotes(p.number, summary));
    } catch (error) {
      notes.push(`partition ${p.number}: the LUKS header could not be read: ${firstLine(error)}`);
    }
  }
  if (!partitionTable.partitions.some((p) => p.contents === 'luks')) notes.push('no LUKS header found in any partition');
  const efi = await inspectEfi(host, image, partitionTable.partitions, scratchDir, notes);
  const { boot, initramfs } = await inspectBoot(host, image, partitionTable.partitions, scratchDir, notes).catch((error: unknown) => {
    notes.push(`/boot could not be read: ${firstLine(error)}`);
    return { boot: null, initramfs: null };
  });
  if (initramfs) notes.push(...crypttabNotes(initramfs, luks));

  const manifestFile = join(dirname(imagePath), 'manifest.json');
  const { manifest: summary, error } = await readManifest(manifestFile);
  if (error) notes.push(`${manifestFile}: ${error}`);
  const manifest = summary
    ? {
        file: manifestFile,
        summary: summariseManifest(summary),
        ...compareWithManifest(summary, {
          imageName: basename(imagePath),
          imageBytes: (await stat(imagePath)).size,
          partitions: partitionTable.partitions,
          luks: rootLuks({ luks, partitionTable }),
          cmdline: boot?.cmdline,
          initramfs: initramfs ?? undefined,
        }),
      }
    : null;
  const sboms = await readSboms(imagePath, summary, notes);
  return { image: imagePath, format: image.format, virtualBytes: image.virtualBytes, partitionTable, luks, efi, boot, initramfs, manifest, sboms, notes };
}
