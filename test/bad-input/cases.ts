/**
 * The bad-input corpus: inputs `keylessgo build` must refuse before it writes anything,
 * with exit code 2 and one message naming the culprit. test/unit/bad-input.test.ts runs the
 * real CLI on each case in a fresh workspace whose inputs are all good except the one a
 * case spoils.
 *
 * Two kinds of cases:
 * - RECIPE_CASES: a recipe file in recipes/ and the fragment naming its field;
 * - WORKSPACE_CASES: a setup that spoils one input of the workspace (a file, a flag).
 */
import { execa } from 'execa';
import { chmod, mkdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';

export const RECIPES_DIR = join(import.meta.dirname, 'recipes');

/**
 * recipes/<file> → what stderr shows right after the recipe's path: ":<line>: <field>: <problem>"
 * for a field, ": <problem>" for the file as a whole.
 */
export const RECIPE_CASES: Record<string, string> = {
  'unknown-top-level-field.yaml': ':4: (top level): unknown field "package"',
  'unknown-nested-field.yaml': ':5: luks: unknown field "foo"',
  'disk-size-wrong-type.yaml': ':5: disk.size: expected a size such as "512MiB" or "3GiB", got true',
  'disk-size-bad-unit.yaml': ':5: disk.size: expected a size such as "512MiB" or "3GiB", got "3 parsecs"',
  'disk-size-negative.yaml': ':5: disk.size: expected a size such as "512MiB" or "3GiB", got "-3GiB"',
  'disk-size-huge.yaml': ':5: disk.size: expected a size such as "512MiB" or "3GiB", got "99999999TiB"',
  'disk-size-too-small.yaml': ':5: disk.size: disk.size must be at least 1024 MiB',
  'disk-size-not-whole-mib.yaml': ':5: disk.size: disk.size must be a whole number of MiB (partitions are MiB-aligned)',
  'esp-too-small.yaml': ':5: disk.esp: disk.esp must be at least 32 MiB',
  'boot-not-whole-mib.yaml': ':5: disk.boot: disk.boot must be a whole number of MiB (partitions are MiB-aligned)',
  'disk-too-small-for-partitions.yaml': ':5: disk.size: leaves 444 MiB for the root partition after ESP, /boot and BIOS boot; at least 512 MiB are needed',
  'boot-leaves-no-root.yaml': ':5: disk.size: leaves 180 MiB for the root partition after ESP, /boot and BIOS boot; at least 512 MiB are needed',
  'unknown-suite.yaml': ':3: suite: expected one of "bookworm", "trixie", got "sid"',
  'missing-name.yaml': ': invalid recipe\n  name: required field missing (expected string)',
  'name-upper-case.yaml': ':2: name: expected a lower-case name usable as a file name',
  'name-with-slash.yaml': ':2: name: expected a lower-case name usable as a file name',
  'hostname-leading-dash.yaml': ':4: hostname: expected a host name (RFC 1123 label)',
  'yaml-alias-bomb.yaml': ': invalid YAML: Excessive alias count indicates a resource exhaustion attack',
  'invalid-yaml.yaml': ': invalid YAML at line 6, column 1: Flow map in block collection must be sufficiently indented and end with a }',
  'list-not-mapping.yaml': ': a recipe must be a YAML mapping (name: ..., suite: ...)',
  'empty.yaml': ': a recipe must be a YAML mapping (name: ..., suite: ...)',
  'duplicate-keys.yaml': ': invalid YAML at line 4, column 1: Map keys must be unique',
  'bad-package-name.yaml': ':6: packages[1]: expected a Debian package name',
  'packages-not-a-list.yaml': ':4: packages: Expected array, received string',
  'kernel-removed.yaml': ':5: packages[0]: "linux-image-amd64-" ends in "-", which apt reads as "remove linux-image-amd64"',
  'second-kernel.yaml': ':5: packages[0]: the image\'s kernel is linux-image-amd64 (always installed); linux-image-cloud-amd64 would add a second one',
  'cmdline-with-space.yaml': ':7: kernel.cmdline[1]: expected one kernel parameter without spaces',
  'cmdline-sets-root.yaml': ':6: kernel.cmdline[0]: keylessgo sets root= itself (root= is the unlocked LUKS volume, ip= comes from initramfs.network)',
  'static-network-without-address.yaml': ':5: initramfs.network.address: required field missing (expected string)',
  'static-network-bad-ipv4.yaml': ':7: initramfs.network.address: expected an IPv4 address',
  'network-unknown-mode.yaml': ':6: initramfs.network.mode: Invalid discriminator value. Expected \'dhcp\' | \'static\'',
  'network-device-and-mac.yaml': ':5: initramfs.network: give device or mac, not both',
  'network-bad-mac.yaml': ':7: initramfs.network.mac: expected a MAC address such as 52:54:00:12:34:56',
  'pbkdf-memory-too-small.yaml': ':6: luks.pbkdf.memoryKiB: Number must be greater than or equal to 32768',
  'luks-key-size.yaml': ':5: luks.keySize: expected 256 or 512',
  'source-date-epoch-not-a-time.yaml': ':5: build.sourceDateEpoch: expected seconds since 1970 (SOURCE_DATE_EPOCH), e.g. 1700000000',
  'variables-nested.yaml': ':5: variables.site: expected a string, number or boolean',
  'mirror-not-a-url.yaml': ':5: bootstrap.mirror: expected an http://, https:// or file:// mirror URL',
  'mirror-not-http.yaml': ':5: bootstrap.mirror: expected an http://, https:// or file:// mirror URL',
  'dropbear-port-out-of-range.yaml': ':6: initramfs.dropbear.port: Number must be less than or equal to 65535',
  'dropbear-port-string.yaml': ':6: initramfs.dropbear.port: Expected number, received string',
  'tang-url-not-http.yaml': ':6: nbde.tang[0].url: expected an http:// URL: the Tang server as the machine will reach it',
  'tang-threshold-too-high.yaml': ':7: nbde.threshold: threshold 2 exceeds the 1 Tang server(s) listed',
  'tang-duplicate-url.yaml': ':7: nbde.tang[1].url: http://tang.example:7500 is listed twice',
  'tang-without-clevis.yaml': ':5: nbde.clevis: binding to Tang at build time needs clevis in the image (nbde.clevis: true)',
};

/**
 * A workspace: a directory with a good recipe, passphrase file and authorized_keys, all
 * given to the CLI by paths relative to it (so messages are predictable). A case spoils
 * one of them; `undefined` leaves that flag out.
 */
export interface Workspace {
  dir: string;
  /** YAML appended to the good recipe ("name: badinput", "suite: bookworm"). */
  recipeExtra: string;
  recipe: string;
  passphraseFile?: string;
  authorizedKeys?: string;
  out: string;
  /** More CLI arguments after the usual ones. */
  extraArgs: string[];
  /** The whole argument list after `node dist/cli.js`, replacing the usual one. */
  args?: string[];
  /** A public key line that parses (see helpers.ed25519Line). */
  keyLine: string;
  write(path: string, content: string, mode?: number): Promise<string>;
}

export interface WorkspaceCase {
  name: string;
  setup(ws: Workspace): Promise<unknown>;
  /** Fragments stderr must contain; the first names where (file, field or flag). */
  expect: string[];
  /** Needs root (chattr; the test file undoes +i before removing its temp dir). */
  root?: boolean;
}

/** A Tang advertisement (JWS in JSON serialisation, unsigned: nothing checks signatures before clevis). */
const advertisement = (keys: object[]) => JSON.stringify({ payload: Buffer.from(JSON.stringify({ keys })).toString('base64url'), signatures: [] });

const keysCase = (name: string, line: (key: string) => string, expect: string): WorkspaceCase => ({
  name: `authorized_keys: ${name}`,
  setup: (ws) => ws.write('keys.pub', `${line(ws.keyLine)}\n`),
  expect: [expect],
});

const passphraseCase = (name: string, content: string, mode: number, expect: string): WorkspaceCase => ({
  name: `passphrase file: ${name}`,
  setup: (ws) => ws.write('pass', content, mode),
  expect: [`pass: ${expect}`],
});

export const WORKSPACE_CASES: WorkspaceCase[] = [
  // Recipe files and the files they name.
  { name: 'recipe file missing', setup: async (ws) => (ws.recipe = 'nope.yaml'), expect: ['nope.yaml: cannot read recipe: no such file'] },
  { name: 'recipe is a directory', setup: async (ws) => (ws.recipe = await mkdir(join(ws.dir, 'dir.yaml')).then(() => 'dir.yaml')), expect: ['dir.yaml: cannot read recipe: EISDIR'] },
  { name: 'overlay directory missing', setup: async (ws) => (ws.recipeExtra = 'overlays: [files]\n'), expect: ['recipe.yaml: overlays[0]: ', '/files does not exist'] },
  {
    name: 'overlay is a file',
    setup: async (ws) => {
      ws.recipeExtra = 'overlays: [files]\n';
      await ws.write('files', 'not a tree\n');
    },
    expect: ['recipe.yaml: overlays[0]: ', '/files is not a directory'],
  },
  {
    name: 'overlay symlink escaping the root (etc/shadow -> ../../../../etc/shadow)',
    setup: async (ws) => {
      ws.recipeExtra = 'overlays: [files]\n';
      await mkdir(join(ws.dir, 'files/etc'), { recursive: true });
      await symlink('../../../../etc/shadow', join(ws.dir, 'files/etc/shadow'));
    },
    expect: ['/files/etc/shadow: overlays may hold only regular files and directories (no symlinks or devices)'],
  },
  {
    name: 'overlay path traversal through a symlinked directory (etc -> ../..)',
    setup: async (ws) => {
      ws.recipeExtra = 'overlays: [files]\n';
      await mkdir(join(ws.dir, 'files'));
      await symlink('../..', join(ws.dir, 'files/etc'));
    },
    expect: ['/files/etc: overlays may hold only regular files and directories (no symlinks or devices)'],
  },
  {
    name: 'overlay target given twice (a file and a template of it)',
    setup: async (ws) => {
      ws.recipeExtra = 'overlays: [files]\n';
      await ws.write('files/etc/motd', 'plain\n');
      await ws.write('files/etc/motd.ejs', 'templated\n');
    },
    expect: ['/files/etc/motd.ejs: overlay target etc/motd is also given by ', '/files/etc/motd'],
  },
  {
    name: 'overlay template error',
    setup: async (ws) => {
      ws.recipeExtra = 'overlays: [files]\n';
      await ws.write('files/etc/motd.ejs', 'welcome\n<%= it.vars.missing.name %>\n');
    },
    expect: ['/files/etc/motd.ejs:2: template error: ', 'Cannot read properties of undefined'],
  },
  { name: 'hook script missing', setup: async (ws) => (ws.recipeExtra = 'hooks: [setup.sh]\n'), expect: ['recipe.yaml: hooks[0]: ', '/setup.sh does not exist'] },
  {
    name: 'hook is a directory',
    setup: async (ws) => {
      ws.recipeExtra = 'hooks: [hooks]\n';
      await mkdir(join(ws.dir, 'hooks'));
    },
    expect: ['recipe.yaml: hooks[0]: ', '/hooks is not a file'],
  },
  {
    name: 'Tang advertisement file missing',
    setup: async (ws) => (ws.recipeExtra = 'nbde:\n  tang:\n    - {url: "http://tang.example:7500", adv: tang.adv}\n'),
    expect: ['recipe.yaml: nbde.tang[0].adv: ', '/tang.adv does not exist'],
  },
  {
    name: 'Tang advertisement file garbage',
    setup: async (ws) => {
      ws.recipeExtra = 'nbde:\n  tang:\n    - {url: "http://tang.example:7500", adv: tang.adv}\n';
      await ws.write('tang.adv', '<html>502 Bad Gateway</html>\n');
    },
    expect: ['recipe.yaml: nbde.tang[0].adv: ', '/tang.adv: not a Tang advertisement (the file is not JSON)'],
  },
  {
    name: 'Tang advertisement without a signing key',
    setup: async (ws) => {
      ws.recipeExtra = 'nbde:\n  tang:\n    - {url: "http://tang.example:7500", adv: tang.adv}\n';
      await ws.write('tang.adv', advertisement([{ kty: 'EC', crv: 'P-521', x: 'AA', y: 'AA', key_ops: ['deriveKey'] }]));
    },
    expect: ['recipe.yaml: nbde.tang[0].adv: ', '/tang.adv: the advertisement has no signing key'],
  },
  {
    name: 'Tang thp pins a key that does not sign the saved advertisement',
    setup: async (ws) => {
      ws.recipeExtra = `nbde:\n  tang:\n    - {url: "http://tang.example:7500", adv: tang.adv, thp: ${'A'.repeat(43)}}\n`;
      await ws.write('tang.adv', advertisement([{ kty: 'EC', crv: 'P-521', x: 'AA', y: 'AA', key_ops: ['verify'] }]));
    },
    expect: ['recipe.yaml: nbde.tang[0].adv: ', `/tang.adv: thp ${'A'.repeat(43)} is not a signing key of the advertisement (its keys: `],
  },

  // authorized_keys.
  keysCase('forced command option', (key) => `command="/bin/sh" ${key}`, 'keys.pub:1: key options are not accepted'),
  keysCase('no-pty option', (key) => `no-pty ${key}`, 'keys.pub:1: key options are not accepted'),
  keysCase('garbage', () => 'hello world', 'keys.pub:1: not a public key line'),
  keysCase('truncated key data', (key) => key.split(' ').slice(0, 2).join(' ').slice(0, 40), 'keys.pub:1: the base64 key data is damaged, truncated or does not match the type ssh-ed25519'),
  // Only the PEM header, assembled here so no private-key marker sits in the repository.
  keysCase('a private key instead of the public one', () => ['-----BEGIN OPENSSH', 'PRIVATE KEY-----'].join(' '), 'keys.pub:1: this is a private key; give the public one (.pub)'),
  keysCase('only comments', () => '# nothing here', 'keys.pub: no public key found'),
  { name: 'authorized_keys file missing', setup: async (ws) => (ws.authorizedKeys = 'nope.pub'), expect: ['nope.pub: cannot read authorized keys: no such file'] },
  {
    name: 'recipe authorizedKeys file missing',
    setup: async (ws) => {
      ws.authorizedKeys = undefined;
      ws.recipeExtra = 'authorizedKeys: nope.pub\n';
    },
    expect: ['recipe.yaml: authorizedKeys: ', '/nope.pub does not exist'],
  },
  { name: 'no authorized keys at all', setup: async (ws) => (ws.authorizedKeys = undefined), expect: ['no SSH key for the unlock: pass --authorized-keys FILE'] },

  // The bootstrap passphrase.
  passphraseCase('empty', '\n', 0o600, 'passphrase file is empty'),
  passphraseCase('too short', 'seven!7\n', 0o600, 'passphrase is shorter than 8 characters'),
  passphraseCase('two lines', 'correct horse\nbattery staple\n', 0o600, 'passphrase file has more than one line'),
  passphraseCase('a control character', 'correct\x00horse battery\n', 0o600, 'passphrase contains a control character'),
  passphraseCase('world-readable', 'correct horse battery staple\n', 0o644, 'passphrase file is readable by group or others (mode 644); chmod 600 it'),
  passphraseCase('group-readable', 'correct horse battery staple\n', 0o640, 'passphrase file is readable by group or others (mode 640); chmod 600 it'),
  { name: 'passphrase file missing', setup: async (ws) => (ws.passphraseFile = 'nope'), expect: ['nope: cannot read passphrase file: no such file'] },
  {
    name: 'passphrase file is a directory',
    setup: async (ws) => {
      ws.passphraseFile = 'secrets';
      await mkdir(join(ws.dir, 'secrets'), { mode: 0o700 });
    },
    expect: ['secrets: passphrase file is not a regular file'],
  },
  { name: 'no passphrase at all', setup: async (ws) => (ws.passphraseFile = undefined), expect: ['no bootstrap passphrase: pass --passphrase-file FILE or set KEYLESSGO_PASSPHRASE_FILE'] },

  // The output directory.
  {
    name: 'output directory below a regular file',
    setup: async (ws) => {
      await ws.write('file', 'a file\n');
      ws.out = 'file/out';
    },
    expect: ['file/out: cannot create output directory: ', '/file is not a directory'],
  },
  {
    name: 'output path is a regular file',
    setup: async (ws) => {
      await ws.write('out', 'a file\n');
    },
    expect: ['out: output path is not a directory'],
  },
  {
    name: 'output directory not writable (immutable)',
    root: true,
    setup: async (ws) => {
      await mkdir(join(ws.dir, 'locked'));
      await execa('chattr', ['+i', join(ws.dir, 'locked')]);
      ws.out = 'locked/out';
    },
    expect: ['locked/out: cannot create output directory: ', '/locked is not writable'],
  },

  // The signing key (--sign-key): checked before the build, never read into argv.
  { name: '--sign-key: no such file', setup: async (ws) => ws.extraArgs.push('--sign-key', 'nope'), expect: ['nope: cannot read the signing key: no such file'] },
  { name: '--sign-key: not a key', setup: async (ws) => ws.extraArgs.push('--sign-key', await ws.write('signer', 'not a key\n', 0o600)), expect: ['signer: not an OpenSSH key ssh-keygen can read'] },
  {
    name: '--sign-key: a private key readable by others',
    setup: async (ws) => {
      await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(ws.dir, 'signer')]);
      await chmod(join(ws.dir, 'signer'), 0o644);
      ws.extraArgs.push('--sign-key', 'signer');
    },
    expect: ['signer: the signing key is readable by group or others (mode 644); chmod 600 it'],
  },

  // Command line.
  { name: 'unknown flag', setup: async (ws) => ws.extraArgs.push('--colour'), expect: ["error: unknown option '--colour'"] },
  { name: 'flag without its value', setup: async (ws) => (ws.args = ['build', 'recipe.yaml', '--passphrase-file']), expect: ["error: option '--passphrase-file <file>' argument missing"] },
  { name: 'missing recipe argument', setup: async (ws) => (ws.args = ['build', '--out', ws.out]), expect: ["error: missing required argument 'recipe'"] },
  { name: 'unknown command', setup: async (ws) => (ws.args = ['biuld', 'recipe.yaml']), expect: ["error: unknown command 'biuld'"] },
  {
    name: '--mirror not a URL',
    setup: async (ws) => ws.extraArgs.push('--mirror', 'mirror.example'),
    expect: ["error: option '--mirror <url>' argument 'mirror.example' is invalid. expected an http://, https:// or file:// mirror URL"],
  },
];
