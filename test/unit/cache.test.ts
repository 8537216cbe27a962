/** The stage cache: keys, hit and miss, publication only when complete, locking, pruning. */
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cacheKey, canonicalJson, defaultCacheDir, StageCache } from '../../src/pipeline/cache.js';
import { overlayLowerDirs, overlaySupportsVolatile } from '../../src/host/mounts.js';
import { archiveReleaseDates, parseReleaseDate, releaseFileUrls } from '../../src/host/apt-sources.js';
import { captureLogger, MIRROR, tempDir } from './helpers.js';

const INPUTS = { suite: 'bookworm', packages: ['a', 'b'], releases: { main: 'Sat, 14 Nov 2026 10:00:00 UTC' } };

describe('cache keys', () => {
  it('do not depend on object key order, and change with any input (e.g. the archive Release date)', () => {
    expect(canonicalJson({ b: 1, a: [{ d: 2, c: 3 }] })).toBe('{"a":[{"c":3,"d":2}],"b":1}');
    expect(cacheKey({ packages: ['a', 'b'], suite: 'bookworm', releases: INPUTS.releases })).toBe(cacheKey(INPUTS));
    expect(cacheKey({ ...INPUTS, releases: { main: 'Sat, 21 Nov 2026 10:00:00 UTC' } })).not.toBe(cacheKey(INPUTS));
    expect(cacheKey({ ...INPUTS, packages: ['a', 'b', 'c'] })).not.toBe(cacheKey(INPUTS));
    expect(cacheKey(INPUTS)).toMatch(/^[0-9a-f]{32}$/);
  });

  it('default to KEYLESSGO_CACHE_DIR, else XDG_CACHE_HOME/keylessgo, else ~/.cache/keylessgo', () => {
    expect(defaultCacheDir({ KEYLESSGO_CACHE_DIR: '/c', XDG_CACHE_HOME: '/x' })).toBe('/c');
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/x' })).toBe('/x/keylessgo');
    expect(defaultCacheDir({})).toMatch(/\/\.cache\/keylessgo$/);
  });
});

describe('archive Release dates', () => {
  it('are read from each suite the image uses, over file: URLs too', async () => {
    const dir = await tempDir();
    for (const dist of ['bookworm', 'bookworm-updates']) {
      await mkdir(join(dir, 'dists', dist), { recursive: true });
      await writeFile(join(dir, 'dists', dist, 'InRelease'), `Origin: Debian\nSuite: ${dist}\nDate: Sat, 14 Nov 2026 10:0${dist.length % 10}:00 UTC\n`);
    }
    const mirror = { archive: `file://${dir}`, origin: 'test' };
    expect(releaseFileUrls(MIRROR, 'bookworm')).toEqual([
      `${MIRROR.archive}/dists/bookworm/InRelease`,
      `${MIRROR.archive}/dists/bookworm-updates/InRelease`,
      `${MIRROR.security}/dists/bookworm-security/InRelease`,
    ]);
    expect(Object.values(await archiveReleaseDates(mirror, 'bookworm'))).toEqual(['Sat, 14 Nov 2026 10:08:00 UTC', 'Sat, 14 Nov 2026 10:06:00 UTC']);
    await expect(archiveReleaseDates(mirror, 'trixie')).rejects.toThrow(/ENOENT/);
    expect(parseReleaseDate('Suite: x\n')).toBeUndefined();
  });
});

describe('StageCache', () => {
  it('misses, stores, then hits with the stored data; nothing is visible while an entry is filled', async () => {
    const cache = new StageCache(await tempDir(), captureLogger().log);
    const key = cacheKey(INPUTS);
    expect(await cache.lookup('bootstrap', key)).toBeUndefined();
    const entry = await cache.store('bootstrap', key, INPUTS, async (dir) => {
      await writeFile(join(dir, 'payload'), 'x'.repeat(10_000));
      expect(await cache.lookup('bootstrap', key)).toBeUndefined();
      return { rootHome: 'root-abc' };
    });
    expect(entry.bytes).toBeGreaterThanOrEqual(10_000);
    const hit = await cache.lookup('bootstrap', key);
    expect(hit).toMatchObject({ kind: 'bootstrap', key, inputs: INPUTS, data: { rootHome: 'root-abc' } });
    expect(await readFile(join(hit!.dir, 'payload'), 'utf8')).toHaveLength(10_000);
    expect(await cache.lookup('initramfs', key)).toBeUndefined();
  });

  it('leaves no entry and no partial directory when filling fails', async () => {
    const root = await tempDir();
    const cache = new StageCache(root, captureLogger().log);
    await expect(cache.store('initramfs', cacheKey(INPUTS), INPUTS, async () => Promise.reject(new Error('disk full')))).rejects.toThrow('disk full');
    expect(await readdir(join(root, 'initramfs'))).toEqual([]);
  });

  it('makes a second locker of the same key wait until the first releases', async () => {
    const cache = new StageCache(await tempDir(), captureLogger().log);
    const key = cacheKey(INPUTS);
    const events: string[] = [];
    const releaseFirst = await cache.lock('bootstrap', key);
    const second = cache.lock('bootstrap', key).then((release) => {
      events.push('second locked');
      return release;
    });
    await new Promise((resolve) => setTimeout(resolve, 1200));
    events.push('first releases');
    await releaseFirst();
    await (await second)();
    expect(events).toEqual(['first releases', 'second locked']);
    // Other keys are independent.
    await (await cache.lock('bootstrap', cacheKey({ other: true })))();
  });

  it('takes over a lock whose process is gone, with a warning', async () => {
    const root = await tempDir();
    const { log, lines } = captureLogger();
    const cache = new StageCache(root, log);
    const key = cacheKey(INPUTS);
    const child = spawn('true');
    await new Promise((resolve) => child.on('exit', resolve));
    await mkdir(join(root, 'bootstrap'), { recursive: true });
    await writeFile(join(root, 'bootstrap', `${key}.lock`), String(child.pid));
    await (await cache.lock('bootstrap', key))();
    expect(lines.join('\n')).toMatch(new RegExp(`taking over the bootstrap lock of process ${child.pid}`));
  });

  it('honours an abort while waiting for a lock', async () => {
    const cache = new StageCache(await tempDir(), captureLogger().log);
    const key = cacheKey(INPUTS);
    await cache.lock('bootstrap', key);
    const controller = new AbortController();
    const waiting = cache.lock('bootstrap', key, controller.signal);
    controller.abort(new Error('interrupted'));
    await expect(waiting).rejects.toThrow('interrupted');
  });

  it('lists entries least recently used first and prunes by age or all, with leftovers of dead builds', async () => {
    const root = await tempDir();
    const cache = new StageCache(root, captureLogger().log);
    const old = cacheKey({ n: 1 });
    const recent = cacheKey({ n: 2 });
    await cache.store('bootstrap', old, { n: 1 }, async () => ({}));
    await cache.store('initramfs', recent, { n: 2 }, async () => ({}));
    const entryJson = join(root, 'bootstrap', old, 'entry.json');
    const entry = JSON.parse(await readFile(entryJson, 'utf8'));
    await writeFile(entryJson, JSON.stringify({ ...entry, lastUsedAt: '2026-01-01T00:00:00.000Z' }));
    await mkdir(join(root, 'bootstrap', `${cacheKey({ n: 3 })}.partial-999999999`));
    expect((await cache.list()).map((e) => e.key)).toEqual([old, recent]);

    expect((await cache.prune(new Date(Date.now() - 86_400_000))).map((e) => e.key)).toEqual([old]);
    expect(await readdir(join(root, 'bootstrap'))).toEqual([]);
    expect((await cache.prune()).map((e) => e.key)).toEqual([recent]);
    expect(await cache.list()).toEqual([]);
  });

  it('keeps an entry whose tree a running build has mounted as its lower layer (a real overlay mount)', async () => {
    const root = await tempDir();
    const { log, lines } = captureLogger();
    const cache = new StageCache(root, log);
    const key = cacheKey({ n: 4 });
    const entry = await cache.store('bootstrap', key, { n: 4 }, async (dir) => {
      await mkdir(join(dir, 'rootfs/etc'), { recursive: true });
      return {};
    });
    const scratch = await tempDir();
    for (const name of ['upper', 'work', 'merged']) await mkdir(join(scratch, name));
    const merged = join(scratch, 'merged');
    await execa('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${join(entry.dir, 'rootfs')},upperdir=${join(scratch, 'upper')},workdir=${join(scratch, 'work')}`, merged]);
    try {
      expect(await cache.prune()).toEqual([]);
      expect(lines.join('\n')).toContain(`cache: kept bootstrap ${key}: a running build has its tree mounted`);
      expect((await cache.list()).map((e) => e.key)).toEqual([key]);
    } finally {
      await execa('umount', [merged]);
    }
    expect((await cache.prune()).map((e) => e.key)).toEqual([key]);
  });
});

describe('overlaySupportsVolatile', () => {
  it('is true from Linux 5.10 on', () => {
    expect(['4.18.0-553.el8_10.x86_64', '5.4.0-190-generic', '5.9.16'].map((r) => overlaySupportsVolatile(r))).toEqual([false, false, false]);
    expect(['5.10.0-32-amd64', '6.1.0-57-amd64', '6.18.44-fc-v782'].map((r) => overlaySupportsVolatile(r))).toEqual([true, true, true]);
  });
});

describe('overlayLowerDirs', () => {
  it('reads every lower directory of the overlays in a mount table, escapes decoded', async () => {
    const mounts = [
      '/dev/vda / ext4 rw,relatime 0 0',
      'overlay /tmp/b/rootfs overlay rw,relatime,lowerdir=/var/cache/keylessgo/bootstrap/abc/rootfs,upperdir=/tmp/b/u,workdir=/tmp/b/w,uuid=on 0 0',
      'overlay /tmp/c overlay rw,lowerdir=/a\\040b:/c,upperdir=/u,workdir=/w 0 0',
    ].join('\n');
    expect(await overlayLowerDirs(mounts)).toEqual(['/var/cache/keylessgo/bootstrap/abc/rootfs', '/a b', '/c']);
  });
});
