/** The package cache beside the stage cache: file names, what a bootstrap adds and removes, mmdebstrap's hooks. */
import { execa } from 'execa';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { debFileName, PackageCache } from '../../src/host/package-cache.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'keylessgo-packages-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const pkg = (name: string, version: string, architecture = 'amd64') => ({ name, version, architecture });
const touch = (dir: string, names: string[]) => Promise.all(names.map((n) => writeFile(join(dir, n), n)));

describe('debFileName', () => {
  it("is apt's archive file name, an epoch's colon escaped", () => {
    expect(debFileName(pkg('dropbear-bin', '2022.83-1+deb12u2'))).toBe('dropbear-bin_2022.83-1+deb12u2_amd64.deb');
    expect(debFileName(pkg('libc6', '1:2.36-9', 'all'))).toBe('libc6_1%3a2.36-9_all.deb');
  });
});

describe('PackageCache', () => {
  it('moves in what the bootstrap downloaded, removes the versions it superseded, keeps the rest, and counts', async () => {
    const cache = PackageCache.beside(root, 'bookworm');
    await mkdir(cache.dir, { recursive: true });
    await touch(cache.dir, ['a_1_amd64.deb', 'b_1_amd64.deb', 'c_1_amd64.deb', 'c_1_i386.deb']);
    const before = await cache.files();
    const incoming = await cache.createIncoming();
    // The tree's files as mmdebstrap's hook copied them out: the cached a and c, a new b.
    await touch(incoming, ['a_1_amd64.deb', 'b_2_amd64.deb', 'c_1_amd64.deb']);
    const use = await cache.update([pkg('a', '1'), pkg('b', '2'), pkg('c', '1')], before, incoming);
    expect(use).toEqual({ reused: 2, downloaded: 1, removed: 1 });
    // b_1 superseded by b_2; c_1_i386 is another architecture's slot, kept.
    expect((await readdir(cache.dir)).sort()).toEqual(['a_1_amd64.deb', 'b_2_amd64.deb', 'c_1_amd64.deb', 'c_1_i386.deb']);
  });

  it('counts for debootstrap too, which writes into the cache itself', async () => {
    const cache = PackageCache.beside(root, 'bookworm');
    await mkdir(cache.dir, { recursive: true });
    await touch(cache.dir, ['a_1_amd64.deb']);
    const before = await cache.files();
    await touch(cache.dir, ['a_2_amd64.deb', 'b_1_amd64.deb']);
    expect(await cache.update([pkg('a', '2'), pkg('b', '1')], before)).toEqual({ reused: 0, downloaded: 2, removed: 1 });
    expect((await readdir(cache.dir)).sort()).toEqual(['a_2_amd64.deb', 'b_1_amd64.deb']);
  });

  it("removes incoming directories of dead builds, never a live one's", async () => {
    const cache = PackageCache.beside(root, 'bookworm');
    const dead = join(cache.dir, '.incoming-999999999');
    const alive = join(cache.dir, '.incoming-1');
    await mkdir(dead, { recursive: true });
    await writeFile(join(dead, '.keylessgo-owner'), '999999999 1\n');
    await mkdir(alive, { recursive: true });
    // pid 1 with an unknown start time: alive.
    await writeFile(join(alive, '.keylessgo-owner'), '1\n');
    const incoming = await cache.createIncoming();
    expect((await readdir(cache.dir)).sort()).toEqual(['.incoming-1', incoming.slice(cache.dir.length + 1)].sort());
  });

  it("mmdebstrap's hooks copy the cache in and the tree's files out, through a path with a quote in it", async () => {
    const cache = new PackageCache(join(root, "it's packages"));
    await mkdir(cache.dir, { recursive: true });
    await touch(cache.dir, ['a_1_amd64.deb']);
    const incoming = join(root, 'in coming');
    const options = cache.mmdebstrapOptions(incoming);
    expect(options[0]).toBe('--skip=essential/unlink');
    const target = join(root, 'target');
    const hook = (option: string) => execa('sh', ['-c', option.slice(option.indexOf('=') + 1), 'hook', target]);
    await hook(options[1]!);
    expect(await readdir(join(target, 'var/cache/apt/archives'))).toEqual(['a_1_amd64.deb']);
    await touch(join(target, 'var/cache/apt/archives'), ['b_1_amd64.deb']);
    await hook(options[2]!);
    expect((await readdir(incoming)).sort()).toEqual(['a_1_amd64.deb', 'b_1_amd64.deb']);
  });

  it('an empty or missing cache is no error for the copy-in hook', async () => {
    const cache = PackageCache.beside(join(root, 'missing'), 'bookworm');
    const option = cache.mmdebstrapOptions(join(root, 'incoming'))[1]!;
    await execa('sh', ['-c', option.slice(option.indexOf('=') + 1), 'hook', join(root, 'target')]);
    expect(await readdir(join(root, 'target/var/cache/apt/archives'))).toEqual([]);
  });
});
