/**
 * Commands inside the image's root tree. A session mounts /proc, /sys, /dev and /dev/pts,
 * blocks service starts (policy-rc.d), and registers the unmounts for cleanup.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CleanupHandle, CleanupStack } from '../base/cleanup.js';
import type { HostRunner, RunOptions } from './run.js';

const MOUNTS: Array<{ target: string; args: (host: string) => string[] }> = [
  { target: 'proc', args: (t) => ['-t', 'proc', 'proc', t] },
  { target: 'sys', args: (t) => ['-t', 'sysfs', 'sysfs', t] },
  { target: 'dev', args: (t) => ['--bind', '/dev', t] },
  { target: 'dev/pts', args: (t) => ['--bind', '/dev/pts', t] },
];

const POLICY_RC = 'usr/sbin/policy-rc.d';

export async function unmount(host: HostRunner, target: string): Promise<void> {
  try {
    await host.run('umount', [target]);
  } catch {
    // A process that outlived its chroot keeps the mount busy: detach it lazily.
    await host.run('umount', ['--lazy', target]);
  }
}

export class ChrootSession {
  private readonly handles: CleanupHandle[] = [];

  private constructor(
    readonly root: string,
    private readonly host: HostRunner,
  ) {}

  static async open(host: HostRunner, cleanup: CleanupStack, root: string): Promise<ChrootSession> {
    const session = new ChrootSession(root, host);
    try {
      for (const mount of MOUNTS) {
        const target = join(root, mount.target);
        await mkdir(target, { recursive: true });
        await host.run('mount', mount.args(target), { acquires: true });
        session.handles.push(cleanup.add(`unmount ${target}`, () => unmount(host.forCleanup, target)));
      }
      const policy = join(root, POLICY_RC);
      await writeFile(policy, '#!/bin/sh\n# keylessgo: no service starts while building\nexit 101\n', { mode: 0o755 });
      session.handles.push(cleanup.add(`remove ${policy}`, () => rm(policy, { force: true })));
    } catch (error) {
      await session.close();
      throw error;
    }
    return session;
  }

  run(command: string, args: readonly string[] = [], options: RunOptions = {}): Promise<string> {
    return this.host.run('chroot', [this.root, command, ...args], {
      ...options,
      env: { DEBIAN_FRONTEND: 'noninteractive', PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...options.env },
    });
  }

  async close(): Promise<void> {
    while (this.handles.length > 0) await this.handles.pop()!.release();
  }
}

/** Runs `fn` inside a chroot session that is always closed afterwards. */
export async function withChroot<T>(host: HostRunner, cleanup: CleanupStack, root: string, fn: (chroot: ChrootSession) => Promise<T>): Promise<T> {
  const session = await ChrootSession.open(host, cleanup, root);
  try {
    return await fn(session);
  } finally {
    await session.close();
  }
}
