/** The batched manual_add_modules: when it replaces bookworm's, and what it copies (run in dash with a fake modprobe and modinfo). */
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BATCHED_MANUAL_ADD_MODULES, shellFunction, withBatchedModuleCopy } from '../../src/initramfs/module-copy.js';
import { tempDir } from './helpers.js';

const STOCK = 'manual_add_modules()\n{\n\tcopy_file module "$1"\n}\n';
const HOOK_FUNCTIONS = `# hook-functions\ncopy_file() {\n\t:\n}\n\n${STOCK}\nadd_firmware()\n{\n\t:\n}\n`;
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

describe('withBatchedModuleCopy', () => {
  it('finds a shell function up to its closing brace', () => {
    expect(shellFunction(HOOK_FUNCTIONS, 'manual_add_modules')).toBe(STOCK);
    expect(shellFunction(HOOK_FUNCTIONS, 'copy_exec')).toBeUndefined();
  });

  it('appends the batched function only to the version it was checked against, in a usr-merged tree', () => {
    const applied = withBatchedModuleCopy(HOOK_FUNCTIONS, true, sha256(STOCK));
    expect(applied).toEqual({ script: HOOK_FUNCTIONS + BATCHED_MANUAL_ADD_MODULES });
    expect(withBatchedModuleCopy(HOOK_FUNCTIONS.replace('"$1"', '"$2"'), true, sha256(STOCK))).toEqual({ reason: 'initramfs-tools is not the version it was written for' });
    expect(withBatchedModuleCopy(HOOK_FUNCTIONS, false, sha256(STOCK))).toEqual({ reason: 'the tree is not usr-merged' });
    expect(withBatchedModuleCopy('copy_file() {\n}\n', true, sha256(STOCK))).toEqual({ reason: 'hook-functions has no manual_add_modules' });
    // The default is bookworm's digest, which this synthetic function is not.
    expect(withBatchedModuleCopy(HOOK_FUNCTIONS, true)).toHaveProperty('reason');
  });
});

describe('the batched manual_add_modules (dash)', () => {
  /** Modules a/one.ko (needs b/two.ko, firmware fw/one.bin), b/two.ko, c/three.ko (firmware fw/one.bin, fw/three.bin), a symlinked d/link.ko. */
  async function setUp() {
    const dir = await tempDir();
    const modules = join(dir, 'modules');
    const destdir = join(dir, 'dest');
    const bin = join(dir, 'bin');
    for (const sub of ['a', 'b', 'c', 'd', 'real']) await mkdir(join(modules, sub), { recursive: true });
    await mkdir(destdir);
    await mkdir(bin);
    for (const [path, mode] of [['a/one.ko', 0o644], ['b/two.ko', 0o600], ['c/three.ko', 0o644], ['real/link.ko', 0o644]] as const) {
      await writeFile(join(modules, path), `module ${path}\n`);
      await chmod(join(modules, path), mode);
    }
    await symlink(join(modules, 'real/link.ko'), join(modules, 'd/link.ko'));
    const depends: Record<string, string[]> = { one: ['b/two.ko', 'a/one.ko'], two: ['b/two.ko'], three: ['c/three.ko'], link: ['d/link.ko'], builtin: [] };
    // Both modprobe runs print the same lines here; a builtin module prints no insmod line.
    await writeFile(
      join(bin, 'modprobe'),
      `#!/bin/sh\nfor a in "$@"; do case "$a" in\n${Object.entries(depends).map(([name, paths]) => `${name}) ${paths.length ? paths.map((p) => `echo "insmod ${join(modules, p)} "`).join('; ') : `echo "builtin ${name}"`} ;;`).join('\n')}\nesac; done\n`,
    );
    await writeFile(join(bin, 'modinfo'), `#!/bin/sh\nfor a in "$@"; do case "$a" in\n*/one.ko) echo fw/one.bin ;;\n*/three.ko) echo fw/one.bin; echo fw/three.bin ;;\nesac; done\n`);
    await chmod(join(bin, 'modprobe'), 0o755);
    await chmod(join(bin, 'modinfo'), 0o755);
    const log = join(dir, 'calls.log');
    const run = (...names: string[]) =>
      execa('dash', ['-c', `umask 077; copy_file() { echo "copy_file $*" >> ${log}; }; add_firmware() { echo "add_firmware $1" >> ${log}; }\n${BATCHED_MANUAL_ADD_MODULES}\nmanual_add_modules "$@"`, 'sh', ...names], {
        env: { PATH: `${bin}:/usr/bin:/bin`, DESTDIR: destdir, version: '6.1.0-test' },
      });
    return { modules, destdir, log, run };
  }

  it('copies every module and its dependencies once, with their modes, into umask directories; firmware once per name', async () => {
    const { modules, destdir, log, run } = await setUp();
    await run('one', 'three', 'builtin', 'two', 'link');
    for (const [path, mode] of [['a/one.ko', 0o644], ['b/two.ko', 0o600], ['c/three.ko', 0o644]] as const) {
      expect(await readFile(join(destdir, modules, path), 'utf8')).toBe(`module ${path}\n`);
      expect((await lstat(join(destdir, modules, path))).mode & 0o777).toBe(mode);
    }
    expect((await lstat(join(destdir, modules, 'a'))).mode & 0o777).toBe(0o700);
    const calls = (await readFile(log, 'utf8')).trim().split('\n');
    // The symlinked module goes through copy_file (which makes the link and copies its target); its firmware is still looked up.
    expect(calls.filter((c) => c.startsWith('copy_file'))).toEqual([`copy_file module ${join(modules, 'd/link.ko')}`]);
    expect(calls.filter((c) => c.startsWith('add_firmware')).sort()).toEqual(['add_firmware fw/one.bin', 'add_firmware fw/three.bin']);
  });

  it('leaves modules already in the initramfs alone, firmware included', async () => {
    const { modules, destdir, log, run } = await setUp();
    await mkdir(join(destdir, modules, 'a'), { recursive: true });
    await writeFile(join(destdir, modules, 'a/one.ko'), 'already there\n');
    await run('one');
    expect(await readFile(join(destdir, modules, 'a/one.ko'), 'utf8')).toBe('already there\n');
    expect(await readFile(join(destdir, modules, 'b/two.ko'), 'utf8')).toBe('module b/two.ko\n');
    expect(await readFile(log, 'utf8').catch(() => '')).toBe('');
  });

  it('does nothing without arguments', async () => {
    const { destdir, log, run } = await setUp();
    await run();
    expect(await readFile(log, 'utf8').catch(() => '')).toBe('');
    expect((await execa('find', [destdir, '-mindepth', '1'])).stdout).toBe('');
  });
});
