/** Loop devices with partition nodes; detaching is registered for cleanup on attach. */
import { access } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CleanupHandle, CleanupStack } from '../pipeline/cleanup.js';
import type { HostRunner } from './run.js';

export interface LoopDevice {
  device: string;
  /** Partition node for a 1-based partition number, e.g. /dev/loop0p4. */
  partition(number: number): string;
  handle: CleanupHandle;
}

const exists = (path: string) => access(path).then(() => true, () => false);

export async function attachLoop(host: HostRunner, cleanup: CleanupStack, file: string, partitions: number): Promise<LoopDevice> {
  const device = (await host.run('losetup', ['--find', '--show', '--partscan', file])).trim();
  const handle = cleanup.add(`detach ${device}`, () => detachLoop(host.forCleanup, device));
  const partition = (n: number) => `${device}p${n}`;
  // Without udev the kernel's partition scan can be missing or late: wait briefly, then ask
  // partx to add the partitions explicitly.
  for (let attempt = 0; attempt < 20 && !(await exists(partition(partitions))); attempt++) {
    if (attempt === 5) await host.run('partx', ['--add', device]).catch(() => undefined);
    await sleep(100);
  }
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
