import { describe, expect, it } from 'vitest';
import { guestChecks, LOCKDOWN_CHECK, parseNumbers, ROOT_GROWTH_CHECK, SECURE_BOOT_CHECK, sectorSizeCheck } from '../../src/qemu/checks.js';
import type { BootManifest } from '../../src/formats/build-manifest.js';

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

const PLAIN = { secureBoot: false, sectorSize: 512 };

describe('Secure Boot and disk checks', () => {
  it('run the Secure Boot checks only in Secure Boot runs, the sector size check always', () => {
    const names = (options: typeof PLAIN) => guestChecks(MANIFEST, options).map((c) => c.name);
    expect(names(PLAIN)).not.toContain(SECURE_BOOT_CHECK.name);
    expect(names(PLAIN)).toContain('disk has 512-byte logical sectors');
    expect(names({ secureBoot: true, sectorSize: 4096 })).toEqual(expect.arrayContaining([SECURE_BOOT_CHECK.name, LOCKDOWN_CHECK.name, 'disk has 4096-byte logical sectors']));
  });

  it('reads the SecureBoot variable\'s data byte', () => {
    expect(SECURE_BOOT_CHECK.command).toContain('od -An -tu1 -j4 -N1');
    expect(SECURE_BOOT_CHECK.command).toContain('/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c');
    expect(SECURE_BOOT_CHECK.judge('SecureBoot=1\n').ok).toBe(true);
    expect(SECURE_BOOT_CHECK.judge('SecureBoot=0\n').ok).toBe(false);
    expect(SECURE_BOOT_CHECK.judge('od: /sys/firmware/efi/efivars/SecureBoot-x: No such file\nSecureBoot=\n').ok).toBe(false);
  });

  it.each([
    ['none [integrity] confidentiality', true],
    ['none integrity [confidentiality]', true],
    ['[none] integrity confidentiality', false],
    ['', false],
  ])('judges lockdown %j: %s', (output, ok) => {
    expect(LOCKDOWN_CHECK.judge(output).ok).toBe(ok);
  });

  it('compares the logical sector size the guest sees', () => {
    expect(sectorSizeCheck(4096).judge('/dev/vda 4096\n').ok).toBe(true);
    expect(sectorSizeCheck(4096).judge('/dev/vda 512\n').ok).toBe(false);
  });
});

describe('Debian release check', () => {
  const release = guestChecks(MANIFEST, PLAIN).find((c) => c.name === 'Debian release from the recipe')!;

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
    expect(guestChecks(manifest(false), PLAIN).map((c) => c.name)).not.toContain(ROOT_GROWTH_CHECK.name);
    const names = guestChecks(manifest(true), PLAIN).map((c) => c.name);
    expect(names).toContain(ROOT_GROWTH_CHECK.name);
    expect(names.indexOf('systemctl is-system-running')).toBeLessThan(names.indexOf(ROOT_GROWTH_CHECK.name));
  });
});

describe('mount checks', () => {
  const boot = guestChecks(MANIFEST, PLAIN).find((c) => c.name === '/boot mounted (ext4)')!;

  it('starts the mount unit first: /boot is an automount, the ESP a nofail mount', () => {
    expect(boot.command).toMatch(/^systemctl start "\$\(systemd-escape -p --suffix=mount \/boot\)" 2>&1; findmnt -n -o SOURCE,FSTYPE \/boot$/);
  });

  it('judges the file system mounted over the automount', () => {
    expect(boot.judge('systemd-1 autofs\n/dev/vda3 ext4\n')).toMatchObject({ ok: true, detail: '/dev/vda3 ext4' });
  });

  it('fails an automount that never mounted, and says why', () => {
    expect(boot.judge('systemd-1 autofs\n').ok).toBe(false);
    const failed = boot.judge('Job for boot.mount failed.\n');
    expect(failed).toMatchObject({ ok: false, detail: 'Job for boot.mount failed.' });
    expect(boot.judge('').detail).toBe('not mounted');
  });
});
