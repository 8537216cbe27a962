/**
 * Ironic's agent (ironic-python-agent) putting a config drive on a freshly written
 * whole-disk image, re-enacted with the commands it runs (partition_utils
 * create_config_drive_partition): it reuses the partition whose file system is labelled
 * config-2; otherwise, after `sgdisk -e` (the backup GPT moves to the disk's end), it makes a
 * new last partition with `sgdisk -n 0:-64MB:0 -u 0:<uuid>`; then it dd's the ISO into that
 * partition. Here on a loop device over a copy of the image; without udev, `blkid -p` reads
 * what IPA's lsblk reads from udev (labels, partition UUIDs), and partx re-reads the table.
 */
import { execa } from 'execa';
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const CONFIG_DRIVE_LABEL = 'config-2';
/** IPA's MAX_CONFIG_DRIVE_SIZE_MB: the new partition's size, and sgdisk's "MB" are MiB. */
export const CONFIG_DRIVE_MIB = 64;

/** The commands IPA runs on `device`: always `sgdisk -e`; a new partition only without a config-2 one. */
export function ipaPartitionCommands(device: string, reuse: boolean, partUuid: string): string[][] {
  return [['sgdisk', '-e', device], ...(reuse ? [] : [['sgdisk', '-n', `0:-${CONFIG_DRIVE_MIB}MB:0`, '-u', `0:${partUuid}`, device]])];
}

/** One partition as `blkid -p -o export` describes it: DEVNAME, LABEL, PART_ENTRY_UUID, ... */
export type PartitionInfo = Record<string, string>;

export function parseBlkidExport(text: string): PartitionInfo {
  return Object.fromEntries(text.split('\n').flatMap((line) => {
    const match = /^([A-Z_]+)=(.*)$/.exec(line);
    return match ? [[match[1]!, match[2]!]] : [];
  }));
}

/** As IPA's get_labelled_partition: the one partition whose file system is labelled config-2 (any case); several are an error. */
export function labelledPartition(partitions: PartitionInfo[]): string | undefined {
  const found = partitions.filter((p) => p.LABEL?.toUpperCase() === CONFIG_DRIVE_LABEL.toUpperCase());
  if (found.length > 1) throw new Error(`more than one partition labelled ${CONFIG_DRIVE_LABEL}: ${found.map((p) => p.DEVNAME).join(', ')}`);
  return found[0]?.DEVNAME;
}

/** A config drive as Nova and Ironic make it: ISO 9660, volume config-2, openstack/latest/*.json. */
export async function makeConfigDrive(dir: string, metaData: object, networkData: object): Promise<string> {
  const tree = join(dir, 'config-drive');
  await mkdir(join(tree, 'openstack/latest'), { recursive: true });
  await writeFile(join(tree, 'openstack/latest/meta_data.json'), JSON.stringify(metaData));
  await writeFile(join(tree, 'openstack/latest/network_data.json'), JSON.stringify(networkData));
  const iso = join(dir, 'config-drive.iso');
  await execa('genisoimage', ['-quiet', '-o', iso, '-V', CONFIG_DRIVE_LABEL, '-r', '-J', tree]);
  return iso;
}

export interface Deployed {
  /** The config drive's partition number. */
  partition: number;
  reused: boolean;
  commands: string[][];
}

async function partitions(device: string): Promise<PartitionInfo[]> {
  const name = device.replace('/dev/', '');
  const parts = (await readdir(`/sys/block/${name}`)).filter((entry) => entry.startsWith(`${name}p`));
  return Promise.all(parts.map(async (part) => ({ DEVNAME: `/dev/${part}`, ...parseBlkidExport((await execa('blkid', ['-p', '-o', 'export', `/dev/${part}`], { reject: false })).stdout) })));
}

/** IPA's steps on the disk file `disk` (already as large as the target disk); rejects as IPA fails (sgdisk exit 4: no room). */
export async function deployConfigDrive(disk: string, iso: string): Promise<Deployed> {
  const device = (await execa('losetup', ['--show', '-f', '-P', disk])).stdout.trim();
  try {
    // The kernel's partition scan of a new loop device may not be done yet.
    await execa('partx', ['-u', device]);
    const existing = labelledPartition(await partitions(device));
    const partUuid = randomUUID();
    const commands = ipaPartitionCommands(device, existing !== undefined, partUuid);
    for (const [command, ...args] of commands) await execa(command!, args);
    await execa('partx', ['-u', device]);
    const target = existing ?? (await partitions(device)).find((p) => p.PART_ENTRY_UUID === partUuid)?.DEVNAME;
    if (!target) throw new Error(`no partition ${partUuid} on ${device} after sgdisk`);
    await execa('dd', [`if=${iso}`, `of=${target}`, 'bs=1M', 'oflag=direct', 'status=none']);
    return { partition: Number(/(\d+)$/.exec(target)![1]), reused: existing !== undefined, commands };
  } finally {
    await execa('losetup', ['-d', device]);
  }
}
