import { describe, expect, it } from 'vitest';
import type { BuildContext, OutputFile } from '../../src/pipeline/context.js';
import { buildManifest, glanceProperties } from '../../src/stages/export.js';
import { IDS, MIRROR, recipeWith } from './helpers.js';

const SHA = 'ab'.repeat(32);

describe('glanceProperties', () => {
  it('gives a whole-disk qcow2 of the default recipe what Glance and Ironic want', () => {
    expect(glanceProperties(recipeWith(), { format: 'qcow2', sha256: SHA })).toEqual({
      disk_format: 'qcow2',
      container_format: 'bare',
      os_hash_algo: 'sha256',
      os_hash_value: SHA,
      min_disk: 3,
      os_distro: 'debian',
      os_version: '12',
      architecture: 'x86_64',
    });
  });

  it('names Debian 13 for trixie and the raw format for raw images', () => {
    expect(glanceProperties(recipeWith('', 'trixie'), { format: 'raw', sha256: SHA })).toMatchObject({ disk_format: 'raw', os_version: '13' });
  });

  it('rounds min_disk up to whole GiB', () => {
    expect(glanceProperties(recipeWith('disk: {size: 2600MiB}\n'), { format: 'raw', sha256: SHA }).min_disk).toBe(3);
    expect(glanceProperties(recipeWith('disk: {size: 2GiB}\n'), { format: 'raw', sha256: SHA }).min_disk).toBe(2);
  });
});

describe('buildManifest', () => {
  const outputs: OutputFile[] = [
    { format: 'qcow2', path: '/out/test.qcow2', bytes: 10, sha256: SHA },
    { format: 'raw', path: '/out/test.raw', bytes: 20, sha256: 'cd'.repeat(32) },
    { format: 'kernel', path: '/out/vmlinuz', bytes: 30, sha256: 'ef'.repeat(32) },
    { format: 'cmdline', path: '/out/cmdline', bytes: 40, sha256: '01'.repeat(32) },
  ];
  const ctx = {
    recipe: recipeWith(),
    loaded: { file: '/recipes/test.yaml', sha256: SHA },
    mirror: MIRROR,
    ids: IDS,
    authorizedKeys: [],
    kernelCmdline: 'root=/dev/mapper/cryptroot ro',
    toolVersion: '0.0.0',
    host: { clock: { seconds: { mmdebstrap: 12.34 }, busySeconds: 12.34 } },
    state: { layout: { diskBytes: 3 * 1024 ** 3, partitions: [] }, outputs, cacheKeys: {}, stageSeconds: {} },
  } as unknown as BuildContext;
  const manifest = buildManifest(ctx, {}, new Date(0));

  it('lists every output by file name, Glance properties on disk images only', () => {
    expect(manifest.outputs.map((o) => [o.path, 'glance' in o])).toEqual([
      ['test.qcow2', true],
      ['test.raw', true],
      ['vmlinuz', false],
      ['cmdline', false],
    ]);
    expect(manifest.outputs[1]).toMatchObject({ glance: { disk_format: 'raw', os_hash_value: 'cd'.repeat(32) } });
  });

  it('says both firmwares boot the image, with Secure Boot, and whether the root grows at first boot', () => {
    expect(manifest.bootModes).toEqual(['uefi', 'bios']);
    expect(manifest.secureBoot).toBe(true);
    expect(manifest.disk).toEqual({ sizeBytes: 3 * 1024 ** 3, growOnFirstBoot: true, sectorSize: 512 });
  });
});
