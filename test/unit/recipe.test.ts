import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadRecipe, parseRecipeText, validateRecipe } from '../../src/recipe/load.js';
import { SUITES } from '../../src/recipe/schema.js';
import { DEFAULT_RECIPE, expectInputError, recipeWith, tempDir } from './helpers.js';

const MiB = 1024 ** 2;

/** Every default, stated once: what a recipe that says only name and suite builds. */
const DEFAULTS = {
  description: '',
  architecture: 'amd64',
  bootstrap: { tool: 'mmdebstrap', variant: 'apt', components: ['main'] },
  build: {},
  packages: [],
  hostname: 'keylessgo',
  root: { login: 'key-only' },
  network: { manager: 'systemd-networkd' },
  disk: { size: 3072 * MiB, esp: 64 * MiB, boot: 384 * MiB, growOnFirstBoot: true, sectorSize: 512 },
  boot: { secureBoot: true },
  luks: {
    cipher: 'aes-xts-plain64',
    keySize: 512,
    sectorSize: 4096,
    pbkdf: { type: 'argon2id', memoryKiB: 65536, iterations: 4, parallel: 1 },
  },
  initramfs: {
    network: { mode: 'dhcp' },
    modules: 'most',
    compress: 'zstd',
    compressLevel: 3,
    dropbear: { port: 22, idleTimeoutSeconds: 180, forceUnlockCommand: true, extraOptions: [] },
  },
  kernel: { cmdline: ['console=tty0', 'console=ttyS0,115200n8', 'net.ifnames=0'] },
  nbde: { clevis: true, tang: [], tpm2: false, threshold: 1 },
  overlays: [],
  variables: {},
  hooks: [],
  output: { formats: ['raw', 'qcow2'], compress: false },
};

describe('the default recipe', () => {
  it('loads and spells out exactly the defaults', async () => {
    const loaded = await loadRecipe(DEFAULT_RECIPE);
    expect(loaded.recipe).toEqual({
      ...DEFAULTS,
      name: 'debian-bookworm',
      suite: 'bookworm',
      description: 'Debian 12 (bookworm), LUKS2 root, SSH unlock',
    });
    expect(loaded).toMatchObject({ file: DEFAULT_RECIPE, overlayDirs: [], hookFiles: [], authorizedKeysFile: undefined });
  });

  it('records the sha256 of the file bytes', async () => {
    const loaded = await loadRecipe(DEFAULT_RECIPE);
    expect(loaded.sha256).toBe(createHash('sha256').update(await readFile(DEFAULT_RECIPE)).digest('hex'));
  });
});

describe('the trixie recipe', () => {
  it('differs from the bookworm one only in name, description and suite', async () => {
    const bookworm = (await loadRecipe(DEFAULT_RECIPE)).recipe;
    const trixie = (await loadRecipe(join(DEFAULT_RECIPE, '../debian-trixie.yaml'))).recipe;
    expect(trixie).toEqual({ ...bookworm, name: 'debian-trixie', description: trixie.description, suite: 'trixie' });
    expect(trixie.description).toMatch(/Debian 13/);
  });
});

describe('parseRecipeText', () => {
  it('gives a recipe of only name and suite every default', () => {
    expect(recipeWith()).toEqual({ ...DEFAULTS, name: 'test', suite: 'bookworm' });
  });

  it.each(SUITES)('accepts suite %s', (suite) => {
    expect(parseRecipeText(`name: x\nsuite: ${suite}\n`, 'x.yaml').suite).toBe(suite);
  });

  it.each([
    ['2GiB', 2048 * MiB],
    ['1.5G', 1536 * MiB],
    ['1536 MiB', 1536 * MiB],
    [2048 * MiB, 2048 * MiB],
  ])('reads disk.size %j as %d bytes', (size, bytes) => {
    expect(recipeWith(`disk:\n  size: ${JSON.stringify(size)}\n`).disk.size).toBe(bytes);
  });

  it('keeps defaults of a section that is only partly given', () => {
    const recipe = recipeWith('luks:\n  pbkdf:\n    memoryKiB: 131072\n');
    expect(recipe.luks).toEqual({ ...DEFAULTS.luks, pbkdf: { ...DEFAULTS.luks.pbkdf, memoryKiB: 131072 } });
  });

  it('accepts a static initramfs network (its device defaults to eth0 on the kernel command line)', () => {
    const recipe = recipeWith('initramfs:\n  network:\n    mode: static\n    address: 192.0.2.10\n    netmask: 255.255.255.0\n');
    expect(recipe.initramfs.network).toEqual({ mode: 'static', address: '192.0.2.10', netmask: '255.255.255.0' });
  });
});

describe('boot and disk sector size', () => {
  it('turns Secure Boot off with boot.secureBoot: false', () => {
    expect(recipeWith('boot: {secureBoot: false}\n').boot).toEqual({ secureBoot: false });
  });

  it('gives a 4Kn disk a 260 MiB ESP by default (FAT32 needs 65525 clusters of 4096 bytes)', () => {
    expect(recipeWith('disk: {sectorSize: 4096}\n').disk).toEqual({ ...DEFAULTS.disk, sectorSize: 4096, esp: 260 * MiB });
    expect(recipeWith('disk: {sectorSize: 4096, esp: 300MiB}\n').disk.esp).toBe(300 * MiB);
  });

  it('compresses the initramfs with zstd -3 unless told; other compressors keep initramfs-tools\' levels', () => {
    expect(recipeWith('initramfs: {compressLevel: 19}\n').initramfs).toMatchObject({ compress: 'zstd', compressLevel: 19 });
    expect(recipeWith('initramfs: {compress: xz}\n').initramfs.compressLevel).toBeUndefined();
    expect(recipeWith('initramfs: {compress: xz, compressLevel: 0}\n').initramfs.compressLevel).toBe(0);
  });

  it.each([
    ['disk: {sectorSize: 1024}', 'disk.sectorSize: expected 512 or 4096'],
    ['disk: {sectorSize: 4096, esp: 64MiB}', 'disk.esp: with disk.sectorSize 4096 the ESP must be at least 260 MiB'],
    ['disk: {sectorSize: 4096}\nluks: {sectorSize: 512}', 'luks.sectorSize: must be at least disk.sectorSize (4096)'],
    ['boot: {secureBoot: yes-please}', 'boot.secureBoot: '],
    ['initramfs: {compressLevel: 20}', 'initramfs.compressLevel: zstd takes levels 1 to 19'],
    ['initramfs: {compress: gzip, compressLevel: 0}', 'initramfs.compressLevel: gzip takes levels 1 to 9'],
    ['initramfs: {compressLevel: 2.5}', 'initramfs.compressLevel: '],
  ])('refuses %s', async (yaml, message) => {
    const error = await expectInputError(() => recipeWith(`${yaml}\n`));
    expect(error.message).toContain(message);
  });
});

describe('validateRecipe', () => {
  it('reports every problem at once, each with its field path', async () => {
    const error = await expectInputError(() => validateRecipe({ name: 'Bad', suite: 'sid', packages: ['ok', 'Not OK'] }, 'r.yaml'));
    expect(error.message.split('\n')).toEqual([
      'r.yaml: invalid recipe',
      '  name: expected a lower-case name usable as a file name',
      '  suite: expected one of "bookworm", "trixie", got "sid"',
      '  packages[1]: expected a Debian package name',
    ]);
  });

  it('names all unknown fields of one object', async () => {
    await expectInputError(() => validateRecipe({ name: 'x', suite: 'bookworm', foo: 1, bar: 2 }, 'r.yaml'), '(top level): unknown fields "foo", "bar"');
  });
});

describe('loadRecipe', () => {
  /** Writes a recipe into a fresh directory; `extra` is appended YAML. */
  async function recipeIn(extra: string): Promise<{ dir: string; path: string }> {
    const dir = await tempDir();
    const path = join(dir, 'recipe.yaml');
    await writeFile(path, `name: local\nsuite: trixie\n${extra}`);
    return { dir, path };
  }

  it('resolves overlays, hooks and authorizedKeys against the recipe directory, not the cwd', async () => {
    const { dir, path } = await recipeIn('overlays: [files]\nhooks: [hooks/setup.sh]\nauthorizedKeys: keys.pub\n');
    await mkdir(join(dir, 'files'));
    await mkdir(join(dir, 'hooks'));
    await writeFile(join(dir, 'hooks/setup.sh'), 'true\n');
    await writeFile(join(dir, 'keys.pub'), '');
    const loaded = await loadRecipe(path);
    expect(loaded).toMatchObject({
      file: path,
      overlayDirs: [join(dir, 'files')],
      hookFiles: [join(dir, 'hooks/setup.sh')],
      authorizedKeysFile: join(dir, 'keys.pub'),
    });
  });

  it.each([
    ['a missing overlay directory', 'overlays: [files]\n', 'overlays[0]', 'files', 'does not exist'],
    ['a missing hook file', 'hooks: [first.sh, missing.sh]\n', 'hooks[1]', 'missing.sh', 'does not exist'],
    ['a missing authorizedKeys file', 'authorizedKeys: keys.pub\n', 'authorizedKeys', 'keys.pub', 'does not exist'],
    ['an overlay that is a file', 'overlays: [first.sh]\n', 'overlays[0]', 'first.sh', 'is not a directory'],
    ['a hook that is a directory', 'hooks: [dir]\n', 'hooks[0]', 'dir', 'is not a file'],
  ])('refuses %s, naming the recipe, the field and the resolved path', async (_what, yaml, field, name, problem) => {
    const { dir, path } = await recipeIn(yaml);
    await writeFile(join(dir, 'first.sh'), 'true\n');
    await mkdir(join(dir, 'dir'));
    await expectInputError(loadRecipe(path), `${path}: ${field}: ${join(dir, name)} ${problem}`);
  });

  it('refuses a recipe file that does not exist', async () => {
    const path = join(await tempDir(), 'nope.yaml');
    await expectInputError(loadRecipe(path), `${path}: cannot read recipe: no such file`);
  });
});
