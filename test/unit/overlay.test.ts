import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { templateData } from '../../src/pipeline/build.js';
import { earlyGrubConfig, GRUB_TARGETS, SIGNED_EFI_CHAIN } from '../../src/stages/bootloader.js';
import { BASE_OVERLAY, renderOverlays, resolveInRoot, writeOverlayFiles, type RenderedFile } from '../../src/pipeline/overlay.js';
import { parseAuthorizedKeys } from '../../src/recipe/authorized-keys.js';
import type { Recipe } from '../../src/recipe/schema.js';
import { defaultRecipe, ed25519Line, expectInputError, IDS, MIRROR, recipeWith, tempDir } from './helpers.js';

const KEY_LINE = ed25519Line('alice@laptop');
const KEYS = parseAuthorizedKeys(KEY_LINE, 'keys.pub');

/** Writes `files` (path relative to the overlay → content) into a fresh overlay directory. */
async function overlay(files: Record<string, string>): Promise<string> {
  const dir = await tempDir();
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), content);
  }
  return dir;
}

const render = (dirs: string[], recipe: Recipe) => renderOverlays(dirs, templateData(recipe, IDS, KEYS, MIRROR));

/** Rendered files as target → text. */
const texts = (files: RenderedFile[]) => Object.fromEntries(files.map((f) => [f.target, f.content.toString('utf8')]));

describe('the base overlay rendered for the default recipe', () => {
  let files: Record<string, string>;
  let rendered: RenderedFile[];
  beforeAll(async () => {
    rendered = await render([BASE_OVERLAY], await defaultRecipe());
    files = texts(rendered);
  });

  it('has the files every image needs, without the .ejs suffix', () => {
    expect(Object.keys(files).sort()).toEqual([
      'boot/grub/grub.cfg',
      'etc/crypttab',
      'etc/dpkg/dpkg.cfg.d/keylessgo-esp-sync',
      'etc/dropbear/initramfs/authorized_keys',
      'etc/dropbear/initramfs/dropbear.conf',
      'etc/fstab',
      'etc/hostname',
      'etc/hosts',
      'etc/initramfs-tools/conf.d/keylessgo.conf',
      'etc/initramfs-tools/hooks/keylessgo-config-drive',
      'etc/initramfs-tools/hooks/keylessgo-crypttab',
      'etc/initramfs-tools/hooks/keylessgo-grow-root',
      'etc/initramfs-tools/scripts/init-premount/keylessgo-grow-root',
      'etc/initramfs-tools/scripts/init-top/keylessgo-config-drive',
      'etc/initramfs-tools/scripts/init-top/keylessgo-link-up',
      'etc/kernel-img.conf',
      'etc/keylessgo/esp.conf',
      'etc/keylessgo/grub-early.cfg',
      'etc/ssh/sshd_config.d/keylessgo.conf',
      'etc/systemd/network/20-wired.network',
      'etc/systemd/system/keylessgo-config-drive.service',
      'etc/systemd/system/keylessgo-grow-root.service',
      'etc/systemd/system/keylessgo-ssh-host-keys.service',
      'root/.ssh/authorized_keys',
      'usr/lib/keylessgo/config-drive',
      'usr/lib/keylessgo/config-drive-functions',
      'usr/lib/keylessgo/esp-sync',
      'usr/lib/keylessgo/grow-root-fs',
      'usr/lib/keylessgo/network-data.jq',
      'usr/lib/keylessgo/update-grub',
    ]);
  });

  it('grub.cfg boots /vmlinuz and offers the previous kernel, /vmlinuz.old, when there is one, with the same command line', () => {
    const cfg = files['boot/grub/grub.cfg']!;
    const cmdline = /^\tlinux \/vmlinuz (.*)$/m.exec(cfg)?.[1];
    expect(cmdline).toMatch(/^root=\/dev\/mapper\/cryptroot ro /);
    expect(cfg).toMatch(/^\tinitrd \/initrd\.img$/m);
    expect(cfg).toContain(`if [ -f /vmlinuz.old ]; then\n\tmenuentry 'Debian 12 (bookworm), LUKS2 root, SSH unlock, previous kernel' {\n\t\tlinux /vmlinuz.old ${cmdline}\n\t\tinitrd /initrd.img.old\n\t}\nfi\n`);
  });

  it("esp.conf names the image's own ESP, and the signed loaders with shim last", async () => {
    const conf = join(await tempDir(), 'esp.conf');
    await writeFile(conf, files['etc/keylessgo/esp.conf']!);
    const { stdout } = await execa('sh', ['-c', `. ${conf}; echo "$ESP_UUID|$SECURE_BOOT|$GRUB_EFI_MODULES"; echo "$SIGNED_FILES"`]);
    const [first, ...signed] = stdout.split('\n');
    const espUuid = `${IDS.espVolumeId.slice(0, 4)}-${IDS.espVolumeId.slice(4)}`;
    expect(first).toBe(`${espUuid}|yes|${GRUB_TARGETS.efi.modules.join(' ')}`);
    expect(files['etc/fstab']).toMatch(new RegExp(`^UUID=${espUuid}\\s+/boot/efi\\s+vfat\\s`, 'm'));
    expect(signed).toEqual(['/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed EFI/BOOT/grubx64.efi', '/usr/lib/shim/mmx64.efi.signed EFI/BOOT/mmx64.efi', '/usr/lib/shim/shimx64.efi.signed EFI/BOOT/BOOTX64.EFI']);
    expect(signed.map((line) => line.split(' '))).toEqual(expect.arrayContaining(SIGNED_EFI_CHAIN.map(([tree, esp]) => [`/${tree}`, esp])));
    expect(files['etc/keylessgo/grub-early.cfg']).toBe(earlyGrubConfig(IDS.bootFsUuid));
    const unsigned = texts(await render([BASE_OVERLAY], recipeWith('boot: {secureBoot: false}\n')));
    expect(unsigned['etc/keylessgo/esp.conf']).toMatch(/^SECURE_BOOT=no$/m);
  });

  it('dpkg runs esp-sync after every run; update-grub, diverted to keylessgo\'s, leaves grub.cfg and says why', async () => {
    expect(files['etc/dpkg/dpkg.cfg.d/keylessgo-esp-sync']).toMatch(/^post-invoke=\/usr\/lib\/keylessgo\/esp-sync --from-dpkg$/m);
    for (const script of ['usr/lib/keylessgo/esp-sync', 'usr/lib/keylessgo/update-grub']) {
      expect(rendered.find((f) => f.target === script)!.mode & 0o111).toBe(0o111);
      await execa('sh', ['-n', join(BASE_OVERLAY, script)]);
    }
    const updateGrub = await execa('sh', [join(BASE_OVERLAY, 'usr/lib/keylessgo/update-grub')], { reject: false });
    expect(updateGrub.exitCode).toBe(0);
    expect(updateGrub.stderr).toMatch(/^keylessgo: \/boot\/grub\/grub\.cfg boots \/boot\/vmlinuz .*nothing to update/m);
  });

  it('the initramfs grows the root only when the recipe says so', async () => {
    expect(files['etc/initramfs-tools/conf.d/keylessgo.conf']).toMatch(/^KEYLESSGO_GROW_ROOT=yes$/m);
    const off = texts(await render([BASE_OVERLAY], recipeWith('disk: {growOnFirstBoot: false}\n')));
    expect(off['etc/initramfs-tools/conf.d/keylessgo.conf']).toMatch(/^KEYLESSGO_GROW_ROOT=no$/m);
  });

  it('crypttab unlocks the LUKS UUID in the initramfs; after it, systemd does not wait for its disk', () => {
    expect(files['etc/crypttab']).toMatch(new RegExp(`^cryptroot\\s+UUID=${IDS.luksUuid}\\s+none\\s+luks,discard,initramfs,nofail$`, 'm'));
  });

  it('the initramfs hook drops crypttab\'s "nofail", which only systemd knows, and nothing else', async () => {
    const hook = join(BASE_OVERLAY, 'etc/initramfs-tools/hooks/keylessgo-crypttab');
    expect((await execa('sh', [hook, 'prereqs'])).stdout).toBe('cryptroot');
    const destdir = await tempDir();
    await mkdir(join(destdir, 'cryptroot'));
    const entries = ['cryptroot\tUUID=a\tnone\tluks,discard,initramfs,nofail', 'data UUID=b none nofail,luks', 'swap UUID=c none luks,nofail,discard', 'other UUID=d none luks'];
    await writeFile(join(destdir, 'cryptroot/crypttab'), `${entries.join('\n')}\n`);
    await execa('sh', [hook], { env: { DESTDIR: destdir } });
    expect(await readFile(join(destdir, 'cryptroot/crypttab'), 'utf8')).toBe('cryptroot\tUUID=a\tnone\tluks,discard,initramfs\ndata UUID=b none luks\nswap UUID=c none luks,discard\nother UUID=d none luks\n');
    // No crypttab in the initramfs (no encrypted volume): nothing to do, and no error.
    await execa('sh', [hook], { env: { DESTDIR: await tempDir() } });
  });

  it('fstab mounts the mapper root, /boot by UUID and the ESP by volume id XXXX-XXXX, /boot and the ESP without holding up the boot', () => {
    const entries = files['etc/fstab']!.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(/\s+/).slice(0, 4));
    expect(entries).toEqual([
      ['/dev/mapper/cryptroot', '/', 'ext4', 'errors=remount-ro'],
      [`UUID=${IDS.bootFsUuid}`, '/boot', 'ext4', 'defaults,nodev,nosuid,x-systemd.automount,nofail'],
      ['UUID=A1B2-C3D4', '/boot/efi', 'vfat', 'umask=0077,shortname=winnt,nofail'],
    ]);
  });

  it('the config drive service keeps its temporary files out of /tmp, which systemd-tmpfiles-setup empties beside it', () => {
    const unit = files['etc/systemd/system/keylessgo-config-drive.service']!;
    expect(unit).toMatch(/^DefaultDependencies=no$/m);
    expect(unit).toMatch(/^RuntimeDirectory=keylessgo-config-drive$/m);
    expect(unit).toMatch(/^Environment=TMPDIR=\/run\/keylessgo-config-drive$/m);
  });

  it('dropbear runs without passwords or forwarding, with the idle timeout', () => {
    expect(files['etc/dropbear/initramfs/dropbear.conf']).toContain('DROPBEAR_OPTIONS="-s -j -k -p 22 -I 180"\n');
  });

  it('dropbear authorized_keys forces cryptroot-unlock and forbids forwarding', () => {
    expect(files['etc/dropbear/initramfs/authorized_keys']).toBe(
      `no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="cryptroot-unlock" ${KEY_LINE}\n`,
    );
  });

  it("root's authorized_keys holds the bare key", () => {
    expect(files['root/.ssh/authorized_keys']).toBe(`${KEY_LINE}\n`);
  });

  it('grub.cfg finds /boot by UUID and boots the mapper root with the initramfs network', () => {
    const grub = files['boot/grub/grub.cfg']!;
    expect(grub).toContain(`search --no-floppy --fs-uuid --set=root ${IDS.bootFsUuid}\n`);
    expect(grub).toContain("menuentry 'Debian 12 (bookworm), LUKS2 root, SSH unlock' {");
    expect(grub).toMatch(/^\s*linux \/vmlinuz root=\/dev\/mapper\/cryptroot ro ip=::::::dhcp console=tty0 console=ttyS0,115200n8 net\.ifnames=0$/m);
  });

  it('hostname, hosts, network and initramfs settings come from the recipe', () => {
    expect(files['etc/hostname']).toBe('keylessgo\n');
    expect(files['etc/hosts']).toContain('127.0.1.1\tkeylessgo\n');
    // Every Ethernet NIC, whatever the kernel named it and whichever is cabled.
    expect(files['etc/systemd/network/20-wired.network']).toContain('[Match]\nType=ether\n');
    expect(files['etc/initramfs-tools/conf.d/keylessgo.conf']).toMatch(/^MODULES=most\nCOMPRESS=zstd\nCOMPRESSLEVEL=3\n# /m);
  });

  it('keeps each source file and its permission bits', () => {
    const crypttab = rendered.find((f) => f.target === 'etc/crypttab')!;
    expect(crypttab.source).toBe(join(BASE_OVERLAY, 'etc/crypttab.ejs'));
    expect(crypttab.mode).toBeGreaterThan(0);
    expect(crypttab.mode & ~0o777).toBe(0);
  });
});

describe('renderOverlays with recipe settings', () => {
  it('renders a static initramfs network and no forced command when the recipe says so', async () => {
    const recipe = recipeWith(
      'hostname: vault\ninitramfs:\n  network: {mode: static, address: 192.0.2.10, netmask: 255.255.255.0, gateway: 192.0.2.1}\n  dropbear: {forceUnlockCommand: false, idleTimeoutSeconds: 0}\n',
    );
    const files = texts(await render([BASE_OVERLAY], recipe));
    expect(files['boot/grub/grub.cfg']).toContain(' ip=192.0.2.10::192.0.2.1:255.255.255.0:vault:eth0:none ');
    expect(files['etc/dropbear/initramfs/dropbear.conf']).toContain('DROPBEAR_OPTIONS="-s -j -k -p 22"');
    expect(files['etc/dropbear/initramfs/authorized_keys']).toBe(`no-port-forwarding,no-agent-forwarding,no-X11-forwarding ${KEY_LINE}\n`);
  });

  it('limits the booted system\'s DHCP to network.match when the recipe sets it', async () => {
    const files = texts(await render([BASE_OVERLAY], recipeWith('network: {match: "eth1 enp*"}\n')));
    expect(files['etc/systemd/network/20-wired.network']).toContain('[Match]\nName=eth1 enp*\n');
  });

  it('gives templates the recipe variables as it.vars', async () => {
    const dir = await overlay({ 'etc/motd.ejs': 'welcome to <%= it.vars.site %> (<%= it.vars.rack %>)\n' });
    const files = texts(await render([dir], recipeWith('variables:\n  site: lab\n  rack: 7\n')));
    expect(files['etc/motd']).toBe('welcome to lab (7)\n');
  });

  it('writes recipe text into grub.cfg unescaped, quoted for GRUB', async () => {
    const files = texts(await render([BASE_OVERLAY], recipeWith("description: R&D's build\n")));
    expect(files['boot/grub/grub.cfg']).toContain("menuentry 'R&D'\\''s build' {");
  });
});

describe('renderOverlays with several overlays', () => {
  it('lets later overlays replace files of earlier ones, templates and plain files alike', async () => {
    const first = await overlay({ 'etc/motd': 'first\n', 'etc/issue.ejs': 'first <%= it.recipe.name %>\n', 'etc/only-first': 'kept\n' });
    const second = await overlay({ 'etc/motd.ejs': 'second <%= it.recipe.suite %>\n', 'etc/issue': 'second\n' });
    const files = texts(await render([first, second], recipeWith()));
    expect(files).toEqual({ 'etc/motd': 'second bookworm\n', 'etc/issue': 'second\n', 'etc/only-first': 'kept\n' });
  });

  it('lets a recipe overlay replace a base file', async () => {
    const mine = await overlay({ 'etc/hostname': 'fixed-name\n' });
    const files = texts(await render([BASE_OVERLAY, mine], await defaultRecipe()));
    expect(files['etc/hostname']).toBe('fixed-name\n');
    expect(files['etc/crypttab']).toContain(IDS.luksUuid);
  });

  it('copies non-template files byte for byte', async () => {
    const dir = await overlay({ 'etc/literal.txt': '<%= not a template %>\n' });
    expect(texts(await render([dir], recipeWith()))['etc/literal.txt']).toBe('<%= not a template %>\n');
  });
});

describe('renderOverlays refusals', () => {
  it('names file:line of a template that fails while rendering', async () => {
    const dir = await overlay({ 'etc/broken.conf.ejs': '# line 1\n# line 2\nvalue=<%= it.recipe.nosuch.field %>\n' });
    await expectInputError(render([dir], recipeWith()), `${join(dir, 'etc/broken.conf.ejs')}:3: template error: `, "reading 'field'");
  });

  it('names file:line of a template that uses an unknown variable', async () => {
    const dir = await overlay({ 'etc/x.ejs': `${'# comment\n'.repeat(11)}<%= hostname %>\n` });
    await expectInputError(render([dir], recipeWith()), `${join(dir, 'etc/x.ejs')}:12: template error: hostname is not defined`);
  });

  it('names the file of a template with a syntax error', async () => {
    const dir = await overlay({ 'etc/x.ejs': 'ok\n<% if (it.vars { %>\n' });
    await expectInputError(render([dir], recipeWith()), `${join(dir, 'etc/x.ejs')}`, 'template error');
  });

  it('says what the syntax error is', async () => {
    const dir = await overlay({ 'etc/x.ejs': 'ok\n<% if (it.vars { %>\n' });
    await expectInputError(render([dir], recipeWith()), 'Unexpected token');
  });

  it('refuses a symlink inside an overlay', async () => {
    const dir = await overlay({ 'etc/real': 'x\n' });
    await symlink('/etc/passwd', join(dir, 'etc/passwd'));
    await expectInputError(render([dir], recipeWith()), `${join(dir, 'etc/passwd')}: overlays may hold only regular files and directories`);
  });
});

describe('resolveInRoot', () => {
  /** A root with etc/, a link etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf and a few more. */
  async function imageRoot(): Promise<string> {
    const root = await tempDir();
    await mkdir(join(root, 'etc'));
    await mkdir(join(root, 'usr/lib'), { recursive: true });
    await symlink('/run/systemd/resolve/stub-resolv.conf', join(root, 'etc/resolv.conf'));
    await symlink('../usr/lib/os-release', join(root, 'etc/os-release'));
    await symlink('usr/lib', join(root, 'lib'));
    await symlink('/../../../../tmp', join(root, 'escape'));
    await symlink('loop-b', join(root, 'loop-a'));
    await symlink('loop-a', join(root, 'loop-b'));
    return root;
  }

  it.each([
    ['a plain path', 'etc/hostname', 'etc/hostname'],
    ['an absolute link, inside the root', 'etc/resolv.conf', 'run/systemd/resolve/stub-resolv.conf'],
    ['a relative link', 'etc/os-release', 'usr/lib/os-release'],
    ['a link in the middle of the path', 'lib/modules/x', 'usr/lib/modules/x'],
    ['.. that would leave the root', '../../etc/passwd', 'etc/passwd'],
    ['a link pointing above the root', 'escape/x', 'tmp/x'],
    ['. and repeated slashes', './etc//./hosts', 'etc/hosts'],
  ])('resolves %s', async (_what, target, expected) => {
    const root = await imageRoot();
    expect(await resolveInRoot(root, target)).toBe(join(root, expected));
  });

  it('refuses a symlink loop', async () => {
    const root = await imageRoot();
    await expectInputError(resolveInRoot(root, 'loop-a/file'), 'too many symlinks');
  });

  it('makes writeOverlayFiles write through an absolute link into the root, never onto the host', async () => {
    const root = await imageRoot();
    await writeOverlayFiles(root, [{ target: 'etc/resolv.conf', content: Buffer.from('nameserver 192.0.2.53\n'), mode: 0o644, source: 'test' }]);
    expect(await readFile(join(root, 'run/systemd/resolve/stub-resolv.conf'), 'utf8')).toBe('nameserver 192.0.2.53\n');
  });
});
