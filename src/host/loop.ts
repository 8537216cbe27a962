/** Loop devices with partition nodes; detaching is registered for cleanup on attach. */
import { access } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CleanupHandle, CleanupStack } from '../base/cleanup.js';
import type { HostRunner } from './run.js';

export interface LoopDevice {
  device: string;
  /** Partition node for a 1-based partition number, e.g. /dev/loop0p4. */
  partition(number: number): string;
  handle: CleanupHandle;
}

const exists = (path: string) => access(path).then(() => true, () => false);

export function losetupArgs(file: string, sectorSize: number): string[] {
  return ['--find', '--show', '--partscan', '--sector-size', String(sectorSize), file];
}

/**
 * Attaches `file` with `sectorSize`-byte logical sectors (as the target disk will have them),
 * lets `writeTable` write the partition table to the device, and waits for the partition nodes.
 */
export async function attachLoop(host: HostRunner, cleanup: CleanupStack, file: string, sectorSize: number, partitions: number, writeTable: (device: string) => Promise<void>): Promise<LoopDevice> {
  const device = (await host.run('losetup', losetupArgs(file, sectorSize), { acquires: true })).trim();
  const handle = cleanup.add(`detach ${device}`, () => detachLoop(host.forCleanup, device));
  const partition = (n: number) => `${device}p${n}`;
  await writeTable(device);
  // The table was written after the kernel's scan of the empty device (and without udev
  // nothing rescans): partx adds the partitions explicitly.
  await host.run('partx', ['--add', device]);
  for (let attempt = 0; attempt < 20 && !(await exists(partition(partitions))); attempt++) await sleep(100);
  if (!(await exists(partition(partitions)))) throw new Error(`partition nodes of ${device} did not appear`);
  return { device, partition, handle };
}

async function detachLoop(host: HostRunner, device: string): Promise<void> {
  // A just-closed filesystem can keep the device busy for a moment.
  for (let attempt = 0; ; attempt++) {
    try {
      await host.run('losetup', ['--detach', device]);
      return;
    } catch (error) {
      if (attempt >= 10) throw error;
      await sleep(200);
    }
  }
}
