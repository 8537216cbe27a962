/**
 * Reproducible plaintext, piece by piece: SOURCE_DATE_EPOCH's sources and their order, trees
 * whose times are clamped and compared by one digest, identifiers derived from the recipe, an
 * ext4 made twice from one tree (with different change times) that comes out byte for byte the
 * same once the build sets its times, a per-build file left out of its digest, the initramfs's
 * appended archive of one length whatever its ECDSA key's, dropbear's hook without its random
 * home, and `keylessgo diff` telling per-build values from real differences.
 */
import { execa } from 'execa';
import { chmod, lstat, mkdir, readFile, symlink, truncate, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { clampTimes, treeDigest } from '../../src/base/tree.js';
import { ext4FileRanges, ext4SetTimes, ext4TimeEnv, mkfsExt4Args, usedInodesFromDumpe2fs, usedRangesFromDumpe2fs } from '../../src/host/ext4.js';
import { HostRunner } from '../../src/host/run.js';
import { withFixedRootHome } from '../../src/initramfs/dropbear-hook.js';
import { newcArchive, stableLengthArchive } from '../../src/initramfs/newc.js';
import { diffManifests, flattenManifest } from '../../src/inspect/manifest-diff.js';
import { derivedBuildIds } from '../../src/pipeline/context.js';
import { sha256File, subtractRanges } from '../../src/pipeline/sparse-sha256.js';
import { chooseSourceDateEpoch, newestReleaseEpoch, sourceDateEpochFromEnv } from '../../src/recipe/source-date-epoch.js';
import { captureLogger, recipeWith, tempDir } from './helpers.js';

const EPOCH = 1_700_000_000;

describe('SOURCE_DATE_EPOCH', () => {
  const releases = { a: 'Sat, 10 May 2025 09:27:46 UTC', b: 'Sun, 18 May 2025 20:31:40 UTC', c: 'not a date' };

  it('comes from the environment, else the recipe, else the newest Release date, else the build start', () => {
    const recipe = recipeWith('build: {sourceDateEpoch: 1600000000}\n');
    expect(chooseSourceDateEpoch(recipe, releases, { SOURCE_DATE_EPOCH: '1500000000' })).toEqual({ seconds: 1_500_000_000, from: 'SOURCE_DATE_EPOCH in the environment' });
    expect(chooseSourceDateEpoch(recipe, releases, {}).seconds).toBe(1_600_000_000);
    expect(chooseSourceDateEpoch(recipeWith(), releases, {})).toEqual({ seconds: Date.UTC(2025, 4, 18, 20, 31, 40) / 1000, from: "the newest Date: of the archive's Release files" });
    expect(newestReleaseEpoch({ x: 'garbage' })).toBeUndefined();
    expect(chooseSourceDateEpoch(recipeWith(), undefined, {}, 1_234_567_890_123).seconds).toBe(1_234_567_890);
  });

  it('refuses a value that is no time (bad input, before anything is written)', () => {
    for (const bad of ['yesterday', '-5', '1e9', '12']) expect(() => sourceDateEpochFromEnv({ SOURCE_DATE_EPOCH: bad })).toThrow(InputError);
    expect(sourceDateEpochFromEnv({})).toBeUndefined();
    expect(() => recipeWith('build: {sourceDateEpoch: 12}\n')).toThrow(/1980 or later/);
  });
});

describe('trees', () => {
  async function tree(dir: string): Promise<void> {
    await mkdir(join(dir, 'etc/sub'), { recursive: true });
    await writeFile(join(dir, 'etc/a'), 'a\n');
    await writeFile(join(dir, 'etc/sub/key'), 'per-build secret 1\n');
    await symlink('a', join(dir, 'etc/link'));
  }

  it('clamps times after the epoch and keeps older ones; the digest sees content, modes, links and times but not per-build content', async () => {
    const dir = await tempDir();
    await tree(dir);
    await utimes(join(dir, 'etc/a'), EPOCH - 100, EPOCH - 100);
    expect(await clampTimes(dir, EPOCH)).toBe(5);
    expect((await lstat(join(dir, 'etc/a'))).mtimeMs).toBe((EPOCH - 100) * 1000);
    expect((await lstat(join(dir, 'etc/link'))).mtimeMs).toBe(EPOCH * 1000);
    expect(await clampTimes(dir, EPOCH)).toBe(0);

    const perBuild = ['etc/sub/key'];
    const digest = await treeDigest(dir, { perBuild });
    await writeFile(join(dir, 'etc/sub/key'), 'per-build secret 2, one byte longer\n');
    await clampTimes(dir, EPOCH);
    expect(await treeDigest(dir, { perBuild })).toBe(digest);
    expect(await treeDigest(dir)).not.toBe(digest);
    await chmod(join(dir, 'etc/a'), 0o600);
    expect(await treeDigest(dir, { perBuild })).not.toBe(digest);
  });
});

describe('identifiers', () => {
  it('are derived from the recipe: the same for the same recipe, others for another, each distinct', () => {
    const ids = derivedBuildIds('a'.repeat(64));
    expect(derivedBuildIds('a'.repeat(64))).toEqual(ids);
    expect(derivedBuildIds('b'.repeat(64)).luksUuid).not.toBe(ids.luksUuid);
    const uuids = [ids.luksUuid, ids.rootFsUuid, ids.bootFsUuid, ids.diskGuid, ...Object.values(ids.partitionUuids), ids.rootHashSeed, ids.bootHashSeed];
    expect(new Set(uuids).size).toBe(uuids.length);
    for (const uuid of uuids) expect(uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(ids.espVolumeId).toMatch(/^[0-9A-F]{8}$/);
  });
});

describe('ext4 made reproducibly', () => {
  const host = new HostRunner(captureLogger().log);

  /** mkfs.ext4 of `tree` into a new 32 MiB file the way the build does, times set afterwards. */
  async function mkfs(tree: string, image: string): Promise<string> {
    await writeFile(image, '');
    await truncate(image, 32 * 1024 * 1024);
    await clampTimes(tree, EPOCH);
    const args = mkfsExt4Args({ image, tree, label: 'root', uuid: '11111111-2222-8333-8444-555555555555', hashSeed: '66666666-7777-8888-8999-aaaaaaaaaaaa' });
    await host.run('mkfs.ext4', args, { env: ext4TimeEnv(EPOCH) });
    const dump = await host.run('dumpe2fs', [image]);
    await ext4SetTimes(host, image, EPOCH, usedInodesFromDumpe2fs(dump), `${image}.debugfs`);
    return dump;
  }

  it('comes out byte for byte the same from a tree whose change times moved, and a per-build file is left out of its digest', async () => {
    const dir = await tempDir();
    const tree = join(dir, 'tree');
    await mkdir(join(tree, 'etc/dropbear'), { recursive: true });
    for (let i = 0; i < 50; i++) await writeFile(join(tree, 'etc', `file-${i}`), `content ${i}\n`);
    await writeFile(join(tree, 'etc/dropbear/host_key'), 'key of build one');
    await mkfs(tree, join(dir, 'one.ext4'));
    // Every change time in the tree moves on (as in a second build), the content stays.
    await sleep(1100);
    await chmod(join(tree, 'etc/file-1'), 0o644);
    await mkfs(tree, join(dir, 'two.ext4'));
    expect(await sha256File(join(dir, 'two.ext4'))).toBe(await sha256File(join(dir, 'one.ext4')));
    await execa('e2fsck', ['-fn', join(dir, 'two.ext4')]);

    await writeFile(join(tree, 'etc/dropbear/host_key'), 'key of build three, longer');
    const dump = await mkfs(tree, join(dir, 'three.ext4'));
    expect(await sha256File(join(dir, 'three.ext4'))).not.toBe(await sha256File(join(dir, 'one.ext4')));
    const masked = async (image: string) => {
      const masks = await ext4FileRanges(host, image, [{ path: '/etc/dropbear/host_key' }]);
      expect(masks).toHaveLength(2);
      return sha256File(image, usedRangesFromDumpe2fs(dump), { masks, holes: 'skip' });
    };
    expect(await masked(join(dir, 'three.ext4'))).toBe(await masked(join(dir, 'one.ext4')));
    expect(usedInodesFromDumpe2fs(dump).slice(0, 12)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  });

  it('subtracts masks from data ranges', () => {
    expect(subtractRanges([{ start: 0, length: 100 }, { start: 200, length: 10 }], [{ start: 10, length: 5 }, { start: 90, length: 120 }])).toEqual([
      { start: 0, length: 10 },
      { start: 15, length: 75 },
    ]);
  });
});

describe('the initramfs', () => {
  it("appends an archive whose length does not follow the ECDSA key's (104 or 105 bytes)", () => {
    const files = (keyBytes: number) => [
      { path: 'etc/dropbear/dropbear_ecdsa_host_key', mode: 0o600, data: Buffer.alloc(keyBytes, 1) },
      { path: 'cryptroot/crypttab', mode: 0o644, data: Buffer.from('cryptroot UUID=x none luks\n') },
    ];
    const [short, long] = [stableLengthArchive(files(104)), stableLengthArchive(files(105))];
    expect(newcArchive(files(104)).length).not.toBe(newcArchive(files(105)).length);
    expect(short.length).toBe(long.length);
    expect(short.length % 512).toBe(0);
    expect(short.subarray(0, newcArchive(files(104)).length)).toEqual(newcArchive(files(104)));
    expect(short.subarray(newcArchive(files(104)).length).every((byte) => byte === 0)).toBe(true);
  });

  it("gives root the same home in every build instead of dropbear's random one", () => {
    const hook = 'if true; then\n    home="$(mktemp --directory -- "$DESTDIR/root-XXXXXXXXXX")" # avoid collisions with $rootmnt\n    chmod 0700 -- "$home"\nfi\n';
    const { script, changed } = withFixedRootHome(hook);
    expect(changed).toBe(true);
    expect(script).toContain('home="$DESTDIR/root-keylessgo"; mkdir -- "$home" # avoid collisions');
    expect(withFixedRootHome('no such line').changed).toBe(false);
  });
});

describe('keylessgo diff', () => {
  const manifest = {
    builtAt: '2026-01-01T00:00:00.000Z',
    luks: { uuid: 'u', headerDigests: [{ salt: 's1', digest: 'd1' }] },
    outputs: [
      { format: 'raw', path: 'x.raw', bytes: 10, sha256: 'r1' },
      { format: 'cyclonedx', path: 'x.cdx.json', bytes: 5, sha256: 'c1' },
    ],
    reproducibility: { plaintext: { rootExt4: 'e1', boot: 'b1' } },
    packages: { installed: [{ name: 'libc6', version: '1' }] },
  };

  it('names array elements by what identifies them', () => {
    const fields = flattenManifest(manifest);
    expect(fields.get('outputs[raw].sha256')).toBe('"r1"');
    expect(fields.get('packages.installed[libc6].version')).toBe('"1"');
  });

  it('says which differences are declared per-build values and which are not', () => {
    const other = structuredClone(manifest);
    Object.assign(other, { builtAt: '2026-01-02T00:00:00.000Z' });
    other.luks.headerDigests[0]!.salt = 's2';
    other.outputs[0]!.sha256 = 'r2';
    other.outputs[1]!.sha256 = 'c2';
    expect(diffManifests(manifest, other).differences.every((d) => d.perBuild)).toBe(true);
    other.reproducibility.plaintext.rootExt4 = 'e2';
    other.packages.installed[0]!.version = '2';
    other.outputs[0]!.bytes = 11;
    const undeclared = diffManifests(manifest, other).differences.filter((d) => !d.perBuild).map((d) => d.field);
    expect(undeclared).toEqual(['outputs[raw].bytes', 'packages.installed[libc6].version', 'reproducibility.plaintext.rootExt4']);
  });

  it('through the CLI: exit 0 when only per-build values differ, 1 otherwise, 2 for a file that is no manifest', async () => {
    const dir = await tempDir();
    const write = async (name: string, value: unknown) => {
      await writeFile(join(dir, name), JSON.stringify(value));
      return join(dir, name);
    };
    const cli = (...args: string[]) => execa('node', [join(import.meta.dirname, '../../dist/cli.js'), 'diff', ...args], { reject: false });
    const a = await write('a.json', manifest);
    const b = await write('b.json', { ...manifest, builtAt: 'later' });
    const c = await write('c.json', { ...manifest, reproducibility: { plaintext: { rootExt4: 'e2', boot: 'b1' } } });
    expect((await cli(a, b)).exitCode).toBe(0);
    const changed = await cli(a, c);
    expect(changed.exitCode).toBe(1);
    expect(changed.stdout).toMatch(/^DIFFERS +reproducibility\.plaintext\.rootExt4: "e1" -> "e2"$/m);
    const garbage = join(dir, 'garbage.json');
    await writeFile(garbage, '{{{');
    expect((await cli(a, garbage)).exitCode).toBe(2);
    expect(JSON.parse(await readFile(a, 'utf8'))).toEqual(manifest);
  });
});
