/**
 * Reaping leftovers of dead builds, without root: work trees, secret stores, partial outputs,
 * cache locks and orphaned processes of an owner that has exited are removed; those of a live
 * owner (this process) and of a dead PID now reused by another process are kept.
 * Loop devices and mounts need root and a real build: test/e2e/faults.test.ts.
 */
import { execa } from 'execa';
import { chmod, mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { StageCache } from '../../src/pipeline/cache.js';
import { reapDeadBuilds, recordOutDir } from '../../src/pipeline/leftovers.js';
import { currentOwner, formatOwner, OWNER_ENV, OWNER_FILE, ownerAlive, parseOwner, processStartTime, type Owner } from '../../src/base/owner.js';
import { HostRunner } from '../../src/host/run.js';
import { captureLogger, REPO, tempDir } from './helpers.js';
import { syntheticDisk } from './synthetic-disk.js';

/** The owner of a process that has already exited. */
async function deadOwner(): Promise<Owner> {
  const child = execa('sleep', ['30']);
  const owner = { pid: child.pid!, startTime: (await processStartTime(child.pid!))! };
  child.kill('SIGKILL');
  await child.catch(() => undefined);
  return owner;
}

async function ownedDir(root: string, name: string, owner: Owner): Promise<string> {
  const dir = join(root, name);
  await mkdir(dir);
  await writeFile(join(dir, OWNER_FILE), formatOwner(owner));
  await writeFile(join(dir, 'content'), 'x');
  return dir;
}

describe('owners', () => {
  it('tell a live process from a dead one and from a reused PID', async () => {
    const self = await currentOwner();
    expect(await ownerAlive(self)).toBe(true);
    expect(await ownerAlive(await deadOwner())).toBe(false);
    expect(await ownerAlive({ pid: self.pid, startTime: '1' })).toBe(false);
    expect(parseOwner('1234')).toEqual({ pid: 1234, startTime: '' });
    expect(parseOwner(formatOwner(self))).toEqual(self);
    expect(parseOwner('garbage')).toBeUndefined();
  });
});

describe('reapDeadBuilds', () => {
  it('removes the work tree, secret store, partial outputs and orphans of a dead build, and nothing of a live one', async () => {
    const root = await tempDir();
    const tmp = join(root, 'tmp');
    const outDir = join(root, 'out');
    await mkdir(tmp);
    await mkdir(outDir);
    const dead = await deadOwner();
    const deadTree = await ownedDir(tmp, 'keylessgo-test-AAAAAA', dead);
    await recordOutDir(deadTree, join(root, 'dead-out'));
    await mkdir(join(root, 'dead-out'));
    await writeFile(join(root, 'dead-out', 'test.raw.partial'), 'partial');
    await writeFile(join(root, 'dead-out', 'test.raw'), 'a finished image stays');
    await ownedDir(tmp, 'keylessgo-secrets-AAAAAA', dead);
    const liveTree = await ownedDir(tmp, 'keylessgo-test-BBBBBB', await currentOwner());
    await recordOutDir(liveTree, outDir);
    await writeFile(join(outDir, 'live.raw.partial'), 'live');
    await ownedDir(tmp, 'keylessgo-secrets-BBBBBB', { pid: process.pid, startTime: (await currentOwner()).startTime });
    await ownedDir(tmp, 'keylessgo-reused-CCCCCC', { pid: process.pid, startTime: '1' });
    await mkdir(join(tmp, 'keylessgo-inspect-unowned'));
    // A process the dead build left running, found by the owner marker in its environment.
    const orphan = execa('sleep', ['60'], { env: { [OWNER_ENV]: formatOwner(dead) }, reject: false });

    const { log, lines } = captureLogger();
    const previous = process.env.TMPDIR;
    process.env.TMPDIR = tmp;
    try {
      const removed = await reapDeadBuilds(new HostRunner(log), log);
      expect(removed).toEqual(
        expect.arrayContaining([
          `killed process ${orphan.pid} left running of dead build process ${dead.pid}`,
          `removed ${join(root, 'dead-out', 'test.raw.partial')} of dead build process ${dead.pid}`,
          `removed work tree ${deadTree} of dead build process ${dead.pid}`,
          `removed secret store ${join(tmp, 'keylessgo-secrets-AAAAAA')} of dead build process ${dead.pid}`,
          `removed work tree ${join(tmp, 'keylessgo-reused-CCCCCC')} of dead build process ${process.pid}`,
        ]),
      );
      expect(removed).toHaveLength(5);
    } finally {
      if (previous === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = previous;
    }
    expect((await orphan).signal).toBe('SIGKILL');
    expect(lines.filter((line) => line.startsWith('reaped: '))).toHaveLength(5);
    expect((await readdir(tmp)).sort()).toEqual(['keylessgo-inspect-unowned', 'keylessgo-secrets-BBBBBB', 'keylessgo-test-BBBBBB']);
    expect(await readdir(outDir)).toEqual(['live.raw.partial']);
    expect(await readdir(join(root, 'dead-out'))).toEqual(['test.raw']);
  });

  it("reaps a SIGKILLed inspect's scratch directory and the decompressor it left running", { timeout: 60_000 }, async () => {
    const root = await tempDir();
    const tmp = join(root, 'tmp');
    const bin = join(root, 'bin');
    await mkdir(tmp);
    await mkdir(bin);
    // A zstd that never finishes: inspect is killed while it waits for the initramfs.
    await writeFile(join(bin, 'zstd'), '#!/bin/sh\nexec sleep 60\n');
    await chmod(join(bin, 'zstd'), 0o755);
    const { disk } = await syntheticDisk(root);
    const inspect = execa('node', [join(REPO, 'dist/cli.js'), 'inspect', disk], { env: { TMPDIR: tmp, PATH: `${bin}:${process.env.PATH}` }, reject: false });
    let scratch: string | undefined;
    for (let tries = 0; tries < 200 && !scratch; tries++) {
      await sleep(100);
      for (const name of (await readdir(tmp)).filter((n) => n.startsWith('keylessgo-inspect-'))) {
        if ((await readdir(join(tmp, name))).some((f) => f.startsWith('segment-'))) scratch = join(tmp, name);
      }
    }
    expect(scratch, 'inspect reached its decompressor').toBeDefined();
    inspect.kill('SIGKILL');
    await inspect;

    const { log } = captureLogger();
    const previous = process.env.TMPDIR;
    process.env.TMPDIR = tmp;
    try {
      const removed = await reapDeadBuilds(new HostRunner(log), log);
      expect(removed).toEqual([expect.stringMatching(new RegExp(`^killed process \\d+ left running of dead build process ${inspect.pid}$`)), `removed work tree ${scratch} of dead build process ${inspect.pid}`]);
    } finally {
      if (previous === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = previous;
    }
    expect(await readdir(tmp)).toEqual([]);
  });

  it('removes cache locks and partial entries of dead processes, keeps those of live ones', async () => {
    const dir = join(await tempDir(), 'cache');
    const { log } = captureLogger();
    const cache = new StageCache(dir, log);
    await mkdir(join(dir, 'bootstrap'), { recursive: true });
    const dead = await deadOwner();
    await writeFile(join(dir, 'bootstrap', 'a'.repeat(32) + '.lock'), formatOwner(dead));
    await mkdir(join(dir, 'bootstrap', `${'a'.repeat(32)}.partial-${dead.pid}`));
    await writeFile(join(dir, 'bootstrap', 'b'.repeat(32) + '.lock'), formatOwner(await currentOwner()));
    const removed = await cache.reapDeadBuilds();
    expect(removed.sort()).toEqual([
      `removed ${join(dir, 'bootstrap', 'a'.repeat(32) + '.lock')} of dead build process ${dead.pid}`,
      `removed ${join(dir, 'bootstrap', `${'a'.repeat(32)}.partial-${dead.pid}`)} of dead build process ${dead.pid}`,
    ]);
    expect(await readdir(join(dir, 'bootstrap'))).toEqual(['b'.repeat(32) + '.lock']);
  });
});
