/**
 * The faster hook-functions: when they replace bookworm's, and what they copy (run in dash
 * with a fake modprobe, modinfo and ldd, copy_file recording its calls).
 */
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BATCHED_MANUAL_ADD_MODULES, LEAN_COPY_EXEC, shellFunction, withFasterHookFunctions, type HookFunctionOverride } from '../../src/initramfs/hook-functions.js';
import { tempDir } from './helpers.js';

const STOCK = 'manual_add_modules()\n{\n\tcopy_file module "$1"\n}\n';
const HOOK_FUNCTIONS = `# hook-functions\ncopy_file() {\n\t:\n}\n\n${STOCK}\nadd_firmware()\n{\n\t:\n}\n`;
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

describe('withFasterHookFunctions', () => {
  const checked: HookFunctionOverride[] = [{ name: 'manual_add_modules', stockSha256: sha256(STOCK), replacement: BATCHED_MANUAL_ADD_MODULES }];

  it('finds a shell function up to its closing brace', () => {
    expect(shellFunction(HOOK_FUNCTIONS, 'manual_add_modules')).toBe(STOCK);
    expect(shellFunction(HOOK_FUNCTIONS, 'copy_exec')).toBeUndefined();
  });

  it('appends a replacement only to the version it was checked against, in a usr-merged tree, and says why not', () => {
    expect(withFasterHookFunctions(HOOK_FUNCTIONS, true, checked)).toEqual({ script: HOOK_FUNCTIONS + BATCHED_MANUAL_ADD_MODULES, notes: ["manual_add_modules: keylessgo's"] });
    const changed = HOOK_FUNCTIONS.replace('"$1"', '"$2"');
    expect(withFasterHookFunctions(changed, true, checked)).toEqual({ script: changed, notes: ["manual_add_modules: initramfs-tools's own (not the version keylessgo's was written for)"] });
    expect(withFasterHookFunctions(HOOK_FUNCTIONS, false, checked).notes).toEqual(["manual_add_modules: initramfs-tools's own (the tree is not usr-merged)"]);
    expect(withFasterHookFunctions('copy_file() {\n}\n', true, checked).notes).toEqual(["manual_add_modules: initramfs-tools's own (hook-functions has no manual_add_modules)"]);
    // The defaults are bookworm's digests, which these synthetic functions are not.
    const byDefault = withFasterHookFunctions(HOOK_FUNCTIONS, true);
    expect(byDefault.script).toBe(HOOK_FUNCTIONS);
    expect(byDefault.notes).toEqual(["manual_add_modules: initramfs-tools's own (not the version keylessgo's was written for)", "copy_exec: initramfs-tools's own (hook-functions has no copy_exec)"]);
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

describe('the lean copy_exec (dash)', () => {
  const LIB = '/lib/x86_64-linux-gnu';

  /** A binary whose fake ldd lists `libraries` (ldd's own line format); copy_file records each call and returns `copyFileStatus`. */
  async function setUp(libraries: string[], copyFileStatus = 0) {
    const dir = await tempDir();
    const destdir = join(dir, 'dest');
    const bin = join(dir, 'bin');
    await mkdir(destdir);
    await mkdir(bin);
    const lines = ['\tlinux-vdso.so.1 (0x00007ffd)', ...libraries.map((path) => (path.startsWith('/lib64/') ? `\t${path} (0x00007f01)` : `\t${path.split('/').pop()} => ${path} (0x00007f00)`))];
    await writeFile(join(bin, 'ldd'), `#!/bin/sh\nprintf '%s\\n' ${lines.map((line) => `'${line}'`).join(' ')}\n`);
    await chmod(join(bin, 'ldd'), 0o755);
    const log = join(dir, 'calls.log');
    const run = () =>
      execa('dash', ['-c', `copy_file() { echo "copy_file $*" >> ${log}; return ${copyFileStatus}; }; copy_libgcc() { echo "copy_libgcc $1" >> ${log}; }\n${LEAN_COPY_EXEC}\ncopy_exec /usr/bin/tool /bin/tool; echo "status $?" >> ${log}`], {
        env: { PATH: `${bin}:/usr/bin:/bin`, DESTDIR: destdir },
      });
    const calls = async () => (await readFile(log, 'utf8')).trim().split('\n');
    /** A file in DESTDIR, as a library already copied. */
    const present = async (path: string) => {
      await mkdir(join(destdir, path, '..'), { recursive: true });
      await writeFile(join(destdir, path), '');
    };
    return { destdir, run, calls, present };
  }

  it('copies the binary, then every library it links, in ldd\'s order', async () => {
    const { run, calls } = await setUp([`${LIB}/libc.so.6`, '/usr/lib/x86_64-linux-gnu/libzstd.so.1', '/lib64/ld-linux-x86-64.so.2']);
    await run();
    expect(await calls()).toEqual(['copy_file binary /usr/bin/tool /bin/tool', `copy_file binary ${LIB}/libc.so.6`, 'copy_file binary /usr/lib/x86_64-linux-gnu/libzstd.so.1', 'copy_file binary /lib64/ld-linux-x86-64.so.2', 'status 0']);
  });

  it('starts no copy_file for a library already in the initramfs, /lib being /usr/lib there', async () => {
    // The fake ldd names real host files: the stock copy_file looks for the source first (-f).
    const { run, calls, present } = await setUp([`${LIB}/libc.so.6`, '/usr/lib/x86_64-linux-gnu/libzstd.so.1', '/lib64/ld-linux-x86-64.so.2', `${LIB}/libm.so.6`]);
    await present(`/usr${LIB}/libc.so.6`);
    await present('/usr/lib/x86_64-linux-gnu/libzstd.so.1');
    await present('/usr/lib64/ld-linux-x86-64.so.2');
    await run();
    expect(await calls()).toEqual(['copy_file binary /usr/bin/tool /bin/tool', `copy_file binary ${LIB}/libm.so.6`, 'status 0']);
  });

  it('leaves to copy_file what it would canonicalise or treat differently: .. in the path, a directory at the target, a missing source', async () => {
    const dotted = `${LIB}/../x86_64-linux-gnu/libc.so.6`;
    const { run, calls, present, destdir } = await setUp([dotted, `${LIB}/libm.so.6`, `${LIB}/libnot-on-this-host.so.1`]);
    await present(`/usr${LIB}/libc.so.6`);
    await mkdir(join(destdir, `/usr${LIB}/libm.so.6`), { recursive: true });
    await present(`/usr${LIB}/libnot-on-this-host.so.1`);
    await run();
    expect(await calls()).toEqual(['copy_file binary /usr/bin/tool /bin/tool', `copy_file binary ${dotted}`, `copy_file binary ${LIB}/libm.so.6`, `copy_file binary ${LIB}/libnot-on-this-host.so.1`, 'status 0']);
  });

  it('takes the non-optimised library for a HWCAP one where it exists, and copies libgcc_s beside libpthread', async () => {
    const { run, calls } = await setUp([`${LIB}/tls/libc.so.6`, `${LIB}/sse2/libnot-on-this-host.so.1`, `${LIB}/libpthread.so.0`]);
    await run();
    expect(await calls()).toEqual([
      'copy_file binary /usr/bin/tool /bin/tool',
      `copy_file binary ${LIB}/libc.so.6`,
      `copy_file binary ${LIB}/sse2/libnot-on-this-host.so.1`,
      `copy_libgcc ${LIB}`,
      `copy_file binary ${LIB}/libpthread.so.0`,
      'status 0',
    ]);
  });

  it('returns as the stock function does when the binary is not copied: 0 when it is there already, 1 when it is missing', async () => {
    const already = await setUp([`${LIB}/libc.so.6`], 1);
    await already.run();
    expect(await already.calls()).toEqual(['copy_file binary /usr/bin/tool /bin/tool', 'status 0']);
    const missing = await setUp([`${LIB}/libc.so.6`], 2);
    await missing.run();
    expect(await missing.calls()).toEqual(['copy_file binary /usr/bin/tool /bin/tool', 'status 1']);
  });
});
