/** GPT (or, failing that, MBR) partition tables parsed from the first sectors of a disk. */
import { PARTITION_TYPES } from '../formats/gpt.js';

export const SECTOR = 512;
/** GPT's logical block sizes: 512 bytes, or 4096 on 4Kn disks (the header is then at byte 4096). */
const GPT_SECTOR_SIZES = [512, 4096];
/** Enough for the protective MBR, the GPT header and 128 entries of 128 bytes, with 4096-byte sectors too. */
export const TABLE_BYTES = 2 * 4096 + 128 * 128;

export interface Partition {
  number: number;
  /** GPT partition name (keylessgo labels its partitions keylessgo-*), empty for MBR. */
  label: string;
  /** GPT type GUID (upper case) or MBR type byte as 0xNN. */
  type: string;
  startBytes: number;
  sizeBytes: number;
}

export interface PartitionTable {
  scheme: 'gpt' | 'mbr' | 'none';
  /** The logical sector size the table was written for (where the GPT header was found). */
  sectorSize: number;
  partitions: Partition[];
}

/** Mixed-endian GUID as GPT stores it, printed the usual way. */
function guid(bytes: Buffer): string {
  const hex = (b: Buffer) => b.toString('hex');
  const swapped = (b: Buffer) => hex(Buffer.from(b).reverse());
  return [swapped(bytes.subarray(0, 4)), swapped(bytes.subarray(4, 6)), swapped(bytes.subarray(6, 8)), hex(bytes.subarray(8, 10)), hex(bytes.subarray(10, 16))].join('-').toUpperCase();
}

function parseGpt(disk: Buffer, sector: number): Partition[] | undefined {
  const header = disk.subarray(sector, 2 * sector);
  if (header.toString('latin1', 0, 8) !== 'EFI PART') return undefined;
  const entriesLba = Number(header.readBigUInt64LE(72));
  const count = header.readUInt32LE(80);
  const entryBytes = header.readUInt32LE(84);
  // The spec's entry size is 128 * 2^n; anything else is a damaged header, not a loop of 2^32 empty entries.
  if (entryBytes < 128 || (entryBytes & (entryBytes - 1)) !== 0) return [];
  const partitions: Partition[] = [];
  for (let index = 0; index < count; index++) {
    const offset = entriesLba * sector + index * entryBytes;
    if (offset + entryBytes > disk.length) break;
    const entry = disk.subarray(offset, offset + entryBytes);
    if (entry.subarray(0, 16).every((b) => b === 0)) continue;
    const first = Number(entry.readBigUInt64LE(32));
    const last = Number(entry.readBigUInt64LE(40));
    partitions.push({
      number: index + 1,
      label: entry.subarray(56, 128).toString('utf16le').replace(/\0.*$/s, ''),
      type: guid(entry.subarray(0, 16)),
      startBytes: first * sector,
      sizeBytes: (last - first + 1) * sector,
    });
  }
  return partitions;
}

function parseMbr(disk: Buffer): Partition[] | undefined {
  if (disk.length < SECTOR || disk.readUInt16LE(510) !== 0xaa55) return undefined;
  const partitions: Partition[] = [];
  for (let index = 0; index < 4; index++) {
    const entry = disk.subarray(446 + index * 16, 462 + index * 16);
    const type = entry[4]!;
    const sectors = entry.readUInt32LE(12);
    if (type === 0 || sectors === 0) continue;
    partitions.push({ number: index + 1, label: '', type: `0x${type.toString(16).padStart(2, '0')}`, startBytes: entry.readUInt32LE(8) * SECTOR, sizeBytes: sectors * SECTOR });
  }
  return partitions.length > 0 ? partitions : undefined;
}

/** Parses the first TABLE_BYTES of a disk. A boot sector with no partitions is 'none'. */
export function parsePartitionTable(disk: Buffer): PartitionTable {
  for (const sectorSize of GPT_SECTOR_SIZES) {
    const gpt = parseGpt(disk, sectorSize);
    if (gpt) return { scheme: 'gpt', sectorSize, partitions: gpt };
  }
  const mbr = parseMbr(disk);
  if (mbr) return { scheme: 'mbr', sectorSize: SECTOR, partitions: mbr };
  return { scheme: 'none', sectorSize: SECTOR, partitions: [] };
}

const TYPE_NAMES: Record<string, string> = {
  [PARTITION_TYPES.bios]: 'BIOS boot',
  [PARTITION_TYPES.esp]: 'EFI system',
  [PARTITION_TYPES.boot]: 'Linux extended boot',
  [PARTITION_TYPES.root]: 'Linux root (x86-64)',
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'Linux filesystem',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'Linux swap',
  '0x83': 'Linux',
  '0xef': 'EFI system',
  '0xee': 'GPT protective',
  '0x82': 'Linux swap',
};

export function partitionTypeName(type: string): string {
  return TYPE_NAMES[type] ?? type;
}
