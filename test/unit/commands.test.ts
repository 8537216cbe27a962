/** Command lines and parsers of host tools: built and read here, never run. */
import { describe, expect, it } from 'vitest';
import { dropbearKeyOptions, dropbearOptions, kernelCmdline, kernelIpParameters } from '../../src/pipeline/build.js';
import { injectedFailure, type FaultPoint } from '../../src/pipeline/runner.js';
import { luksFormatArgs, parseLuksDump } from '../../src/host/cryptsetup.js';
import { formatCommand } from '../../src/host/run.js';
import { BASE_PACKAGES, CLEVIS_PACKAGES, debootstrapArgs, GROW_PACKAGES, mmdebstrapArgs, packageList } from '../../src/stages/bootstrap.js';
import { qemuImgConvertArgs } from '../../src/stages/export.js';
import { checkInitramfsListing, REQUIRED_INITRAMFS_ENTRIES } from '../../src/stages/initramfs.js';
import { MIRROR, recipeWith } from './helpers.js';

/** The value following `flag` in an argv. */
const valueOf = (args: readonly string[], flag: string) => {
  const index = args.indexOf(flag);
  return index >= 0 ? args[index + 1] : undefined;
};

describe('cryptsetup luksFormatArgs', () => {
  const KEY_FILE = '/tmp/keylessgo-secrets-x/bootstrap-passphrase';
  const VOLUME_KEY_FILE = '/tmp/keylessgo-secrets-x/volume-key';
  const UUID = '11111111-2222-4333-8444-555555555555';
  const args = (yaml = '') => luksFormatArgs({ device: '/dev/loop7p4', uuid: UUID, keyFile: KEY_FILE, volumeKeyFile: VOLUME_KEY_FILE, luks: recipeWith(yaml).luks });

  it('formats LUKS2 with the recipe cipher, our volume key, fixed UUID, data offset 16 MiB and key slot 0', () => {
    const argv = args();
    expect(argv.slice(0, 3)).toEqual(['luksFormat', '--type', 'luks2']);
    expect(argv.at(-1)).toBe('/dev/loop7p4');
    expect(Object.fromEntries(['--offset', '--uuid', '--cipher', '--key-size', '--sector-size', '--volume-key-file', '--key-slot'].map((f) => [f, valueOf(argv, f)]))).toEqual({
      '--offset': '32768',
      '--uuid': UUID,
      '--cipher': 'aes-xts-plain64',
      '--key-size': '512',
      '--sector-size': '4096',
      '--volume-key-file': VOLUME_KEY_FILE,
      '--key-slot': '0',
    });
    expect(argv).toContain('--batch-mode');
  });

  it('passes the passphrase as a --key-file path only', () => {
    const argv = args();
    expect(valueOf(argv, '--key-file')).toBe(KEY_FILE);
    expect(argv.filter((a) => a.startsWith('--key-file') || a === '-')).toEqual(['--key-file']);
    expect(argv.join(' ')).not.toMatch(/[0-9a-f]{64}/);
  });

  it('fixes the Argon2 cost instead of benchmarking the build host', () => {
    const argv = args('luks:\n  pbkdf: {type: argon2i, memoryKiB: 131072, iterations: 6, parallel: 2}\n');
    expect(argv.slice(argv.indexOf('--pbkdf'), argv.indexOf('--key-slot'))).toEqual([
      '--pbkdf', 'argon2i', '--pbkdf-memory', '131072', '--pbkdf-force-iterations', '6', '--pbkdf-parallel', '2',
    ]);
  });

  it.each([
    [4, '1000'],
    [600_000, '600000'],
  ])('gives PBKDF2 at least 1000 iterations (recipe %d → %s) and no memory cost', (iterations, expected) => {
    const argv = args(`luks:\n  pbkdf: {type: pbkdf2, iterations: ${iterations}}\n`);
    expect(argv.slice(argv.indexOf('--pbkdf'), argv.indexOf('--key-slot'))).toEqual(['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', expected]);
  });
});

describe('parseLuksDump', () => {
  /** `cryptsetup luksDump` of a LUKS2 header (cryptsetup 2.6) with two key slots and a clevis token. */
  const DUMP = [
    'LUKS header information',
    'Version:       \t2',
    'Epoch:         \t6',
    'Metadata area: \t16384 [bytes]',
    'Keyslots area: \t16744448 [bytes]',
    'UUID:          \t11111111-2222-4333-8444-555555555555',
    'Label:         \t(no label)',
    'Subsystem:     \t(no subsystem)',
    'Flags:       \t(no flags)',
    '',
    'Data segments:',
    '  0: crypt',
    '\toffset: 16777216 [bytes]',
    '\tlength: (whole device)',
    '\tcipher: aes-xts-plain64',
    '\tsector: 4096 [bytes]',
    '',
    'Keyslots:',
    ...[0, 1].flatMap((slot) => [
      `  ${slot}: luks2`,
      '\tKey:        512 bits',
      '\tPriority:   normal',
      '\tCipher:     aes-xts-plain64',
      '\tCipher key: 512 bits',
      '\tPBKDF:      argon2id',
      '\tTime cost:  4',
      '\tMemory:     65536',
      '\tThreads:    1',
      '\tSalt:       07 18 34 b2 d8 c3 59 1b 67 23 78 cd 73 69 ba 29 ',
      '\t            18 0b db 2c 11 07 d5 01 7d 30 10 53 aa c2 f8 95 ',
      '\tAF stripes: 4000',
      '\tAF hash:    sha256',
      `\tArea offset:${32768 + slot * 258048} [bytes]`,
      '\tArea length:258048 [bytes]',
      '\tDigest ID:  0',
    ]),
    'Tokens:',
    '  0: clevis',
    '\tKeyslot:    1',
    'Digests:',
    '  0: pbkdf2',
    '\tHash:       sha256',
    '\tIterations: 1000',
    '',
  ].join('\n');

  it('reads version, UUID, data cipher, key slots (not tokens or digests) and data offset', () => {
    expect(parseLuksDump(DUMP)).toEqual({
      version: 2,
      uuid: '11111111-2222-4333-8444-555555555555',
      cipher: 'aes-xts-plain64',
      keyslots: [0, 1],
      dataOffsetBytes: 16777216,
    });
  });

  it('reads a header with one key slot, as the encrypt stage leaves it', () => {
    const oneSlot = DUMP.replace(/^ {2}1: luks2\n(\t.*\n)+/m, '');
    expect(parseLuksDump(oneSlot).keyslots).toEqual([0]);
  });

  it('does not report an unbound reencryption slot as a key slot', () => {
    expect(parseLuksDump(DUMP.replace('  1: luks2', '  1: reencrypt (unbound)')).keyslots).toEqual([0]);
  });
});

describe('bootstrap', () => {
  const ctx = (yaml = '') => ({ recipe: recipeWith(yaml), mirror: MIRROR, rootfs: '/tmp/build/rootfs', workDir: '/tmp/build' });

  const DEFAULT_PACKAGES = [...BASE_PACKAGES, ...CLEVIS_PACKAGES, ...GROW_PACKAGES];

  it('packageList is the base, clevis and grow packages, then the recipe packages, without duplicates', () => {
    const list = packageList(recipeWith('packages: [vim, cryptsetup, curl, vim]\n'));
    expect(list).toEqual([...DEFAULT_PACKAGES, 'vim']);
  });

  it('packageList leaves clevis out when nbde.clevis is false', () => {
    expect(packageList(recipeWith('nbde: {clevis: false}\npackages: [curl]\n'))).toEqual([...BASE_PACKAGES, ...GROW_PACKAGES, 'curl']);
  });

  it('packageList leaves fdisk out when the root does not grow at first boot', () => {
    expect(packageList(recipeWith('disk: {growOnFirstBoot: false}\n'))).toEqual([...BASE_PACKAGES, ...CLEVIS_PACKAGES]);
  });

  it('mmdebstrap: root mode, variant, arch, components, packages, diverted update-initramfs, then suite, target and apt lines', () => {
    const args = mmdebstrapArgs(ctx('packages: [vim]\nbootstrap: {components: [main, contrib]}\n'));
    expect(args.slice(0, 5)).toEqual([
      '--mode=root',
      '--variant=apt',
      '--architectures=amd64',
      '--components=main,contrib',
      `--include=${[...DEFAULT_PACKAGES, 'vim'].join(',')}`,
    ]);
    expect(args[5]).toMatch(/^--essential-hook=chroot "\$1" dpkg-divert .*--add \/usr\/sbin\/update-initramfs && ln -s \/bin\/true "\$1\/usr\/sbin\/update-initramfs"$/);
    // dpkg without fsync while bootstrapping (mmdebstrap's hooks remove eatmydata again).
    expect(args[6]).toBe('--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata');
    // The SHA-256 of every .deb installed from, for the SBOMs: the essential packages' files stay until the cleanup.
    expect(args.slice(7, 9)).toEqual(['--skip=essential/unlink', `--customize-hook=find "$1"/var/cache/apt/archives -maxdepth 1 -name '*.deb' -exec sha256sum {} + > '/tmp/build/deb-sha256'`]);
    expect(args.slice(9)).toEqual([
      'bookworm',
      '/tmp/build/rootfs',
      `deb ${MIRROR.archive} bookworm main contrib`,
      `deb ${MIRROR.archive} bookworm-updates main contrib`,
      `deb ${MIRROR.security} bookworm-security main contrib`,
    ]);
  });

  it("mmdebstrap: the package cache's options come after the hooks, before the suite", () => {
    const args = mmdebstrapArgs(ctx(), ['--skip=essential/unlink', '--setup-hook=copy in']);
    expect(args.slice(9, 12)).toEqual(['--skip=essential/unlink', '--setup-hook=copy in', 'bookworm']);
  });

  it('debootstrap: keeps its .deb files in the package cache directory', () => {
    expect(debootstrapArgs(ctx('bootstrap: {tool: debootstrap}\n'), '/var/cache/kg/packages/bookworm').slice(4, 6)).toEqual(['--cache-dir=/var/cache/kg/packages/bookworm', 'bookworm']);
  });

  it('mmdebstrap: uses the target suite for every apt line', () => {
    const args = mmdebstrapArgs({ ...ctx(), recipe: recipeWith('', 'trixie') });
    expect(args.filter((a) => a.startsWith('deb '))).toEqual([
      `deb ${MIRROR.archive} trixie main`,
      `deb ${MIRROR.archive} trixie-updates main`,
      `deb ${MIRROR.security} trixie-security main`,
    ]);
  });

  it.each([
    ['apt', 'minbase'],
    ['minbase', 'minbase'],
    ['important', 'important'],
  ])('debootstrap: variant %s becomes --variant=%s, mirror is the archive', (variant, expected) => {
    expect(debootstrapArgs(ctx(`bootstrap: {tool: debootstrap, variant: ${variant}}\n`))).toEqual([
      `--variant=${expected}`,
      '--arch=amd64',
      '--components=main',
      `--include=${DEFAULT_PACKAGES.join(',')}`,
      'bookworm',
      '/tmp/build/rootfs',
      MIRROR.archive,
    ]);
  });
});

describe('export qemuImgConvertArgs', () => {
  it('compresses (only a compressed qcow2 comes from qemu-img)', () => {
    expect(qemuImgConvertArgs('in.raw', 'out.qcow2')).toEqual(['convert', '-f', 'raw', '-O', 'qcow2', '-c', '-o', 'compat=1.1', 'in.raw', 'out.qcow2']);
  });
});

describe('kernel command line', () => {
  it.each([
    // The device field stays empty (never a bare ip=dhcp, which clevis-initramfs reads as a device named "dhcp").
    ['dhcp on every interface', 'network: {mode: dhcp}', ['ip=::::::dhcp']],
    ['dhcp on a named device', 'network: {mode: dhcp, device: ens3}', ['ip=:::::ens3:dhcp']],
    ['dhcp on the interface with a MAC', 'network: {mode: dhcp, mac: "52:54:00:AB:CD:EF"}', ['ip=::::::dhcp', 'BOOTIF=01-52-54-00-ab-cd-ef']],
    ['static with gateway', 'network: {mode: static, address: 192.0.2.10, netmask: 255.255.255.0, gateway: 192.0.2.1}', ['ip=192.0.2.10::192.0.2.1:255.255.255.0:vault:eth0:none']],
    ['static without gateway', 'network: {mode: static, device: eth1, address: 10.0.0.5, netmask: 255.0.0.0}', ['ip=10.0.0.5:::255.0.0.0:vault:eth1:none']],
    ['static on the interface with a MAC', 'network: {mode: static, mac: "52:54:00:ab:cd:ef", address: 10.0.0.5, netmask: 255.0.0.0}', ['ip=10.0.0.5:::255.0.0.0:vault::none', 'BOOTIF=01-52-54-00-ab-cd-ef']],
  ])('kernelIpParameters: %s', (_what, network, expected) => {
    const recipe = recipeWith(`hostname: vault\ninitramfs:\n  ${network}\n`);
    expect(kernelIpParameters(recipe.initramfs.network, recipe.hostname)).toEqual(expected);
  });

  it('kernelCmdline: mapper root, read-only, ip=, then the recipe parameters in order', () => {
    expect(kernelCmdline(recipeWith('kernel:\n  cmdline: [quiet, console=ttyS1]\n'))).toBe('root=/dev/mapper/cryptroot ro ip=::::::dhcp quiet console=ttyS1');
  });
});

describe('dropbear options', () => {
  it.each([
    ['defaults', '', '-s -j -k -p 22 -I 180'],
    ['another port and timeout', 'port: 2222, idleTimeoutSeconds: 60', '-s -j -k -p 2222 -I 60'],
    ['idle timeout 0 (none)', 'idleTimeoutSeconds: 0', '-s -j -k -p 22'],
    ['extra options appended', 'extraOptions: ["-W 65536", "-c"]', '-s -j -k -p 22 -I 180 -W 65536 -c'],
  ])('dropbearOptions: %s', (_what, dropbear, expected) => {
    expect(dropbearOptions(recipeWith(`initramfs:\n  dropbear: {${dropbear}}\n`))).toBe(expected);
  });

  it.each([
    [true, 'no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="cryptroot-unlock"'],
    [false, 'no-port-forwarding,no-agent-forwarding,no-X11-forwarding'],
  ])('dropbearKeyOptions with forceUnlockCommand %s', (force, expected) => {
    expect(dropbearKeyOptions(recipeWith(`initramfs:\n  dropbear: {forceUnlockCommand: ${force}}\n`))).toBe(expected);
  });
});

describe('initramfs checkInitramfsListing', () => {
  /** What lsinitramfs lists for a working unlock initramfs (merged /usr). */
  const LISTING = [
    'usr/sbin/cryptsetup',
    'usr/sbin/dropbear',
    'etc/dropbear/dropbear.conf',
    'etc/dropbear/dropbear_ed25519_host_key',
    'etc/dropbear/dropbear_rsa_host_key',
    'root-Xb3kZ1/.ssh/authorized_keys',
    'cryptroot/crypttab',
    'usr/bin/cryptroot-unlock',
    'scripts/init-top/keylessgo-link-up',
    'usr/bin/ip',
    'usr/lib/modules/6.1.0-28-amd64/kernel/drivers/md/dm-crypt.ko',
  ].join('\n');
  const ALL_TRUE = Object.fromEntries(Object.keys(REQUIRED_INITRAMFS_ENTRIES).map((name) => [name, true]));

  it('finds everything in a complete listing', () => {
    expect(checkInitramfsListing(LISTING)).toEqual(ALL_TRUE);
  });

  it('finds binaries in /sbin and /bin as well', () => {
    const split = LISTING.replace('usr/sbin/cryptsetup', 'sbin/cryptsetup').replace('usr/bin/cryptroot-unlock', 'bin/cryptroot-unlock');
    expect(checkInitramfsListing(split)).toEqual(ALL_TRUE);
  });

  it.each([
    ['cryptsetup', 'usr/sbin/cryptsetup'],
    ['dropbear', 'usr/sbin/dropbear'],
    ['dropbear config', 'etc/dropbear/dropbear.conf'],
    ['dropbear host key', 'etc/dropbear/dropbear_ed25519_host_key'],
    ['authorized_keys', 'root-Xb3kZ1/.ssh/authorized_keys'],
    ['crypttab', 'cryptroot/crypttab'],
    ['cryptroot-unlock', 'usr/bin/cryptroot-unlock'],
    ['link-up script', 'scripts/init-top/keylessgo-link-up'],
    ['ip', 'usr/bin/ip'],
  ])('reports %s missing when %s is not listed', (name, path) => {
    const listing = LISTING.split('\n').filter((line) => line !== path).join('\n');
    expect(checkInitramfsListing(listing)).toEqual({ ...ALL_TRUE, [name]: false });
  });

  it('wants sfdisk, partx and the grow script when the root grows at first boot', () => {
    expect(checkInitramfsListing(LISTING, false, true)).toEqual({ ...ALL_TRUE, sfdisk: false, partx: false, 'grow-root script': false });
    const withGrow = `${LISTING}\nusr/sbin/sfdisk\nusr/bin/partx\nscripts/init-premount/keylessgo-grow-root`;
    expect(checkInitramfsListing(withGrow, false, true)).toEqual({ ...ALL_TRUE, sfdisk: true, partx: true, 'grow-root script': true });
  });

  it('does not take a look-alike path for the real one', () => {
    const lookalikes = LISTING.replace('usr/sbin/dropbear\n', 'usr/sbin/dropbearkey\n').replace('cryptroot/crypttab', 'etc/crypttab');
    expect(checkInitramfsListing(lookalikes)).toMatchObject({ dropbear: false, crypttab: false });
  });
});

describe('runner injectedFailure', () => {
  it.each<[string | undefined, string, FaultPoint, boolean]>([
    [undefined, 'encrypt', 'start', false],
    ['', 'encrypt', 'start', false],
    ['encrypt', 'encrypt', 'start', true],
    ['encrypt', 'encrypt', 'end', false],
    ['encrypt:start', 'encrypt', 'start', true],
    ['encrypt:end', 'encrypt', 'end', true],
    ['encrypt:end', 'encrypt', 'start', false],
    ['encrypt', 'export', 'start', false],
    ['encrypt:middle', 'encrypt', 'start', false],
    ['encrypt:middle', 'encrypt', 'middle', true],
  ])('KEYLESSGO_FAIL_AT=%j fails stage %s at %s: %s', (spec, stage, point, expected) => {
    expect(injectedFailure(stage, point, spec === undefined ? {} : { KEYLESSGO_FAIL_AT: spec })).toBe(expected);
  });
});

describe('formatCommand', () => {
  it.each<[string[], string]>([
    [['ls', '-l', '/tmp'], 'ls -l /tmp'],
    [['cryptsetup', '--key-file', '/run/x/pass', 'a=b,c:d@e%f+g'], 'cryptsetup --key-file /run/x/pass a=b,c:d@e%f+g'],
    [['echo', 'two words'], "echo 'two words'"],
    [['echo', ''], "echo ''"],
    [['echo', "it's"], "echo 'it'\\''s'"],
    [['sh', '-c', 'echo $HOME; rm *'], "sh -c 'echo $HOME; rm *'"],
    [['mmdebstrap', 'deb http://mirror.example/debian bookworm main'], "mmdebstrap 'deb http://mirror.example/debian bookworm main'"],
    [['printf', 'a\nb'], "printf 'a\nb'"],
  ])('%j → %s', ([file, ...args], expected) => {
    expect(formatCommand(file!, args)).toBe(expected);
  });
});
