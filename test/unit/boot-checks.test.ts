import { describe, expect, it } from 'vitest';
import { guestChecks } from '../../src/qemu/checks.js';
import type { BootManifest } from '../../src/qemu/manifest.js';

const MANIFEST = { recipe: { name: 'test', suite: 'trixie' }, luks: { mapperName: 'cryptroot', cipher: 'aes-xts-plain64', keySize: 512, uuid: 'u' } } as BootManifest;

describe('Debian release check', () => {
  const release = guestChecks(MANIFEST).find((c) => c.name === 'Debian release from the recipe')!;

  it('passes the release the recipe names', () => {
    expect(release.judge('13 trixie\n')).toMatchObject({ ok: true, detail: 'VERSION_ID=13 VERSION_CODENAME=trixie' });
  });

  it('fails another release', () => {
    expect(release.judge('12 bookworm\n').ok).toBe(false);
  });
});
