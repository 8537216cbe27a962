/** The GPT layout of an image: partition roles, their type GUIDs, and where each one lies. */
export const PARTITION_TYPES = {
  bios: '21686148-6449-6E6F-744E-656564454649',
  esp: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  boot: 'BC13C2FF-59E6-4262-A352-B275FD6F7172',
  root: '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709',
} as const;

export type PartitionRole = keyof typeof PARTITION_TYPES;

export interface PartitionSpec {
  role: PartitionRole;
  number: number;
  label: string;
  startBytes: number;
  sizeBytes: number;
}

export interface PartitionLayout {
  diskBytes: number;
  /** Logical sector size the GPT is written for. */
  sectorSize: number;
  partitions: PartitionSpec[];
}
