import { describe, expect, it } from 'vitest';
import { guestChecks, parseNumbers, ROOT_GROWTH_CHECK } from '../../src/qemu/checks.js';
import type { BootManifest } from '../../src/qemu/manifest.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** What the check's command prints for a 6 GiB disk whose root starts at 450 MiB. */
function growthOutput(overrides: Partial<Record<'disk' | 'start' | 'partition' | 'header' | 'volume' | 'ext4' | 'df', number>> = {}): string {
  const disk = 6 * GiB;
  const start = 450 * MiB;
  const partition = disk - MiB - start;
  const values = { disk, start, partition, header: 16 * MiB, volume: partition - 16 * MiB, ext4: partition - 16 * MiB, df: 5 * GiB, ...overrides };
  return `${Object.entries(values).map(([k, v]) => `${k}=${v}`).join(' ')}\ninitramfs: grew /dev/vda4\n`;
}

const MANIFEST = { recipe: { name: 'test', suite: 'trixie' }, luks: { mapperName: 'cryptroot', cipher: 'aes-xts-plain64', keySize: 512, uuid: 'u' }, disk: { growOnFirstBoot: false } } as BootManifest;

describe('Debian release check', () => {
  const release = guestChecks(MANIFEST).find((c) => c.name === 'Debian release from the recipe')!;

  it('passes the release the recipe names', () => {
    expect(release.judge('13 trixie\n')).toMatchObject({ ok: true, detail: 'VERSION_ID=13 VERSION_CODENAME=trixie' });
  });

  it('fails another release', () => {
    expect(release.judge('12 bookworm\n').ok).toBe(false);
  });
});

describe('root growth check', () => {
  it('parseNumbers reads name=value pairs', () => {
    expect(parseNumbers('disk=10 start=2 other text=x')).toEqual({ disk: 10, start: 2 });
  });

  it('passes a root that fills the disk, with LUKS2 = partition - header and ext4 = volume', () => {
    const result = ROOT_GROWTH_CHECK.judge(growthOutput());
    expect(result.ok).toBe(true);
    expect(result.detail).toMatch(/initramfs: grew/);
  });

  it.each([
    ['a partition that did not grow', { partition: 2 * GiB }],
    ['a partition of an odd number of 512-byte sectors', { partition: 6 * GiB - MiB - 450 * MiB - 512 }],
    ['a LUKS2 volume that did not follow the partition', { volume: 2 * GiB }],
    ['an ext4 that did not follow the volume', { ext4: 2 * GiB }],
  ])('fails %s', (_name, overrides) => {
    expect(ROOT_GROWTH_CHECK.judge(growthOutput(overrides)).ok).toBe(false);
  });

  it('fails on no output', () => {
    expect(ROOT_GROWTH_CHECK.judge('').ok).toBe(false);
  });

  it('runs only for images that grow the root at first boot, after the boot settled', () => {
    const manifest = (grow: boolean) => ({ ...MANIFEST, disk: { growOnFirstBoot: grow } }) as BootManifest;
    expect(guestChecks(manifest(false)).map((c) => c.name)).not.toContain(ROOT_GROWTH_CHECK.name);
    const names = guestChecks(manifest(true)).map((c) => c.name);
    expect(names.at(-1)).toBe(ROOT_GROWTH_CHECK.name);
    expect(names.indexOf('systemctl is-system-running')).toBeLessThan(names.indexOf(ROOT_GROWTH_CHECK.name));
  });
});
