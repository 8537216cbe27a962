/**
 * The built image, checked from the outside with tools independent of the build code:
 * sfdisk, cryptsetup, an AES-XTS decryption with the volume key, debugfs, cpio, qemu-img.
 */
import { execa } from 'execa';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  decryptDataArea,
  dumpExt4File,
  dumpVolumeKey,
  extractPartition,
  fileContains,
  fileContainsAny,
  listExt4Dir,
  listInitramfs,
  readExt4File,
  readInitramfsMember,
  type PartitionRange,
} from './image-reader.js';
import { cacheDirOf, CLI, REPO } from './fixture.js';

const image = inject('image');

interface Manifest {
  luks: { uuid: string; cipher: string; sectorSize: number };
  filesystems: { rootUuid: string; bootUuid: string; espVolumeId: string; usedBytes: { root: number; boot: number; esp: number } };
  initramfs: { appended: { baseBytes: number; offset: number; bytes: number; paths: string[] } };
  kernel: { version: string; cmdline: string };
  partitions: PartitionRange[];
  dropbear: { hostKeys: Array<{ type: string; fingerprint: string }> };
  outputs: Array<{ format: string; path: string; sha256: string; glance?: Record<string, string | number> }>;
  signature: unknown;
  bootModes: string[];
  packages: { installed: Array<{ name: string; version: string }> };
  stageSeconds: Record<string, number>;
  nbde: { binding: { slot: number; pin: string; servers: Array<{ url: string; thumbprints: string[] }> } | null };
}

let manifest: Manifest;
let scratch: string;
let rootPlain: string;
let bootPart: string;
let headerCopy: string;
const partition = (label: string) => manifest.partitions.find((p) => p.label === label)!;

beforeAll(async () => {
  manifest = JSON.parse(await readFile(image.manifestFile, 'utf8')) as Manifest;
  scratch = await mkdtemp(join(image.dir, 'inspect-'));
  const root = partition('keylessgo-root');
  headerCopy = await extractPartition(image.raw, root, join(scratch, 'luks-header'), 16 * 1024 * 1024);
  const encrypted = await extractPartition(image.raw, root, join(scratch, 'root.luks'));
  const volume = await dumpVolumeKey(headerCopy, image.passphraseFile);
  rootPlain = await decryptDataArea(encrypted, volume, manifest.luks.sectorSize, join(scratch, 'root.ext4'));
  await rm(encrypted);
  bootPart = await extractPartition(image.raw, partition('keylessgo-boot'), join(scratch, 'boot.ext4'));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('artefacts', () => {
  it('SHA256SUMS verifies every output and the manifest, and matches the manifest', async () => {
    const result = await execa('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: image.outDir });
    expect(result.stdout).toMatch(/e2e-bookworm\.raw: OK/);
    expect(result.stdout).toMatch(/e2e-bookworm\.qcow2: OK/);
    for (const name of ['vmlinuz', 'initrd.img', 'cmdline', 'e2e-bookworm.cdx.json', 'e2e-bookworm.spdx.json', 'manifest.json']) expect(result.stdout).toContain(`${name}: OK`);
    const sums = await readFile(join(image.outDir, 'SHA256SUMS'), 'utf8');
    for (const output of manifest.outputs) expect(sums).toContain(`${output.sha256}  ${output.path}`);
  });

  it('SHA256SUMS.sig is an OpenSSH signature of SHA256SUMS by the --sign-key key, in the keylessgo namespace', async () => {
    const allowed = join(scratch, 'allowed_signers');
    const [type, base64] = (await readFile(image.signingPublicKey, 'utf8')).trim().split(' ');
    await writeFile(allowed, `builder ${type} ${base64}\n`);
    const verify = (namespace: string) =>
      execa('ssh-keygen', ['-Y', 'verify', '-f', allowed, '-I', 'builder', '-n', namespace, '-s', join(image.outDir, 'SHA256SUMS.sig')], { inputFile: join(image.outDir, 'SHA256SUMS'), reject: false });
    expect((await verify('keylessgo')).stdout).toMatch(/^Good "keylessgo" signature for builder/);
    expect((await verify('git')).exitCode).not.toBe(0);
    expect(manifest.signature).toEqual({ file: 'SHA256SUMS.sig', format: 'sshsig', namespace: 'keylessgo', signs: 'SHA256SUMS', key: { type: 'ED25519', fingerprint: expect.stringMatching(/^SHA256:/) } });
  });

  it('leaves no *.partial file in the output directory', async () => {
    const { stdout } = await execa('ls', ['-A', image.outDir]);
    expect(stdout.split('\n').sort()).toEqual([
      'SHA256SUMS',
      'SHA256SUMS.sig',
      'cmdline',
      'e2e-bookworm.cdx.json',
      'e2e-bookworm.qcow2',
      'e2e-bookworm.raw',
      'e2e-bookworm.spdx.json',
      'initrd.img',
      'manifest.json',
      'vmlinuz',
    ]);
  });

  it('manifest gives each disk image its Glance/Ironic properties, and both boot modes', () => {
    const qcow2 = manifest.outputs.find((o) => o.format === 'qcow2')!;
    expect(qcow2.glance).toEqual({
      disk_format: 'qcow2',
      container_format: 'bare',
      os_hash_algo: 'sha256',
      os_hash_value: qcow2.sha256,
      min_disk: 2,
      os_distro: 'debian',
      os_version: '12',
      architecture: 'x86_64',
    });
    expect(manifest.outputs.find((o) => o.format === 'raw')!.glance).toMatchObject({ disk_format: 'raw' });
    expect(manifest.bootModes).toEqual(['uefi', 'bios']);
  });

  it('--export-boot: vmlinuz and initrd.img are the ones on /boot, cmdline is grub.cfg\'s', async () => {
    const sha256 = async (path: string) => (await execa('sha256sum', [path])).stdout.split(' ')[0];
    for (const [exported, onBoot] of [['vmlinuz', `/vmlinuz-${manifest.kernel.version}`], ['initrd.img', `/initrd.img-${manifest.kernel.version}`]] as const) {
      const copy = await dumpExt4File(bootPart, onBoot, join(scratch, `boot-${exported}`));
      expect(await sha256(join(image.outDir, exported)), exported).toBe(await sha256(copy));
    }
    expect(await readFile(join(image.outDir, 'cmdline'), 'utf8')).toBe(`${manifest.kernel.cmdline}\n`);
    expect(await readExt4File(bootPart, '/grub/grub.cfg')).toContain(`linux /vmlinuz ${manifest.kernel.cmdline}`);
  });

  it('qcow2 passes qemu-img check and holds the same disk as the raw image', async () => {
    await execa('qemu-img', ['check', image.qcow2]);
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', image.qcow2])).stdout) as { format: string; 'virtual-size': number };
    expect(info.format).toBe('qcow2');
    await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', image.raw, image.qcow2]);
  });

  it('manifest records packages, per-stage times and the dropbear host key', () => {
    expect(manifest.packages.installed.map((p) => p.name)).toEqual(expect.arrayContaining(['linux-image-amd64', 'cryptsetup-initramfs', 'dropbear-initramfs', 'openssh-server']));
    expect(Object.keys(manifest.stageSeconds)).toEqual(['bootstrap', 'configure', 'initramfs', 'partition', 'encrypt', 'nbde', 'bootloader']);
    expect(manifest.dropbear.hostKeys.find((k) => k.type === 'ssh-ed25519')?.fingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });
});

describe('partition table', () => {
  it('is GPT with BIOS boot, ESP, /boot and the LUKS root, labelled as documented', async () => {
    const table = JSON.parse((await execa('sfdisk', ['--json', image.raw])).stdout) as {
      partitiontable: { label: string; partitions: Array<{ start: number; size: number; type: string; name: string }> };
    };
    expect(table.partitiontable.label).toBe('gpt');
    expect(table.partitiontable.partitions.map((p) => [p.name, p.type])).toEqual([
      ['keylessgo-bios', '21686148-6449-6E6F-744E-656564454649'],
      ['keylessgo-esp', 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'],
      ['keylessgo-boot', 'BC13C2FF-59E6-4262-A352-B275FD6F7172'],
      ['keylessgo-root', '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709'],
    ]);
    for (const p of table.partitiontable.partitions) expect((p.start * 512) % (1024 * 1024)).toBe(0);
  });
});

describe('LUKS2 root', () => {
  it('has the bootstrap keyslot 0, the manifest UUID, aes-xts-plain64 and fixed argon2id cost', async () => {
    const { stdout } = await execa('cryptsetup', ['luksDump', headerCopy]);
    expect(stdout).toMatch(/^Version:\s+2$/m);
    expect(stdout).toContain(`UUID:          \t${manifest.luks.uuid}`);
    expect([...stdout.matchAll(/^ {2}(\d+): luks2$/gm)].map((m) => m[1])).toEqual(['0', '1']);
    expect(stdout).toMatch(/cipher:\s+aes-xts-plain64/);
    expect(stdout).toMatch(/sector:\s+4096 \[bytes\]/);
    expect(stdout).toMatch(/PBKDF:\s+argon2id/);
    expect(stdout).toMatch(/Memory:\s+65536/);
    expect(stdout).toMatch(/Time cost:\s+4/);
  });

  it('is bound to the test Tang in keyslot 1 with the saved advertisement (clevis token)', async () => {
    const { stdout } = await execa('clevis', ['luks', 'list', '-d', headerCopy]);
    expect(stdout).toMatch(new RegExp(`^1: tang '\\{"url":"${image.tang.guestUrl}"`, 'm'));
    expect(manifest.nbde.binding).toMatchObject({ slot: 1, pin: 'tang', servers: [{ url: image.tang.guestUrl }] });
    // The manifest's thumbprint is the Tang key's file name (tangd-keygen names keys by S256 thumbprint).
    const keyFiles = (await execa('ls', [image.tang.keyDir])).stdout.split('\n');
    expect(keyFiles).toContain(`${manifest.nbde.binding!.servers[0]!.thumbprints[0]}.jwk`);
  });

  it('is sparse: only the blocks the root filesystem uses were encrypted and written', async () => {
    const MiB = 1024 * 1024;
    const { blocks } = await stat(image.raw);
    const used = manifest.filesystems.usedBytes;
    expect(used.root).toBeGreaterThan(200 * MiB);
    expect(used.boot).toBeGreaterThan(20 * MiB);
    // Allocated: what the three filesystems use, the 16 MiB LUKS2 header, the GPT and GRUB's core.img.
    const filesystems = used.root + used.boot + used.esp;
    expect(blocks * 512).toBeGreaterThan(filesystems);
    expect(blocks * 512).toBeLessThan(filesystems + 16 * MiB + 4 * MiB);
  });

  it('decrypts with the bootstrap passphrase to the root ext4 with the manifest UUID', async () => {
    const { stdout } = await execa('dumpe2fs', ['-h', rootPlain], { stderr: 'ignore' });
    expect(stdout).toMatch(new RegExp(`Filesystem UUID:\\s+${manifest.filesystems.rootUuid}`));
    await execa('e2fsck', ['-fn', rootPlain]);
  });

  it('carries crypttab and fstab that point at the LUKS and /boot UUIDs', async () => {
    expect(await readExt4File(rootPlain, '/etc/crypttab')).toMatch(new RegExp(`^cryptroot\\s+UUID=${manifest.luks.uuid}\\s+none\\s+luks,discard,initramfs,nofail$`, 'm'));
    const fstab = await readExt4File(rootPlain, '/etc/fstab');
    expect(fstab).toMatch(/^\/dev\/mapper\/cryptroot\s+\/\s+ext4/m);
    expect(fstab).toContain(`UUID=${manifest.filesystems.bootUuid}\t/boot\t`);
    expect(fstab).toContain(`UUID=${manifest.filesystems.espVolumeId.slice(0, 4)}-${manifest.filesystems.espVolumeId.slice(4)}\t/boot/efi\t`);
  });

  it('is safe to clone: no SSH host keys, empty machine-id, root password locked, key for root', async () => {
    const sshFiles = await listExt4Dir(rootPlain, '/etc/ssh');
    expect(sshFiles).toContain('sshd_config');
    expect(sshFiles.filter((f) => f.startsWith('ssh_host_'))).toEqual([]);
    expect(await readExt4File(rootPlain, '/etc/machine-id')).toBe('');
    expect(await readExt4File(rootPlain, '/etc/shadow')).toMatch(/^root:!/m);
    const publicKey = (await readFile(image.publicKey, 'utf8')).trim();
    expect(await readExt4File(rootPlain, '/root/.ssh/authorized_keys')).toContain(publicKey.split(' ')[1]);
    expect(await listExt4Dir(rootPlain, '/boot')).toEqual([]);
  });

  it('holds the canary written by the recipe hook, and the canary appears nowhere in the raw image', async () => {
    expect((await readExt4File(rootPlain, '/etc/keylessgo-canary')).trim()).toBe(image.canary);
    expect(await listExt4Dir(rootPlain, '/etc')).toContain(`${image.canary}-etc`);
    expect(await listExt4Dir(rootPlain, '/root')).toContain(`${image.canary}-root`);
    // Neither the content nor the file names (all start with the canary) are anywhere in the image.
    expect(await fileContains(image.raw, Buffer.from(image.canary))).toBe(false);
    expect(await fileContains(image.raw, Buffer.from(image.passphrase))).toBe(false);
  });
});

describe('/boot and the initramfs', () => {
  it('grub.cfg boots the stable kernel links with the LUKS root and DHCP on every NIC (ip= with every field empty)', async () => {
    const grub = await readExt4File(bootPart, '/grub/grub.cfg');
    expect(grub).toContain(`search --no-floppy --fs-uuid --set=root ${manifest.filesystems.bootUuid}`);
    expect(grub).toMatch(/linux \/vmlinuz root=\/dev\/mapper\/cryptroot ro ip=::::::dhcp /);
    expect(grub).toContain('initrd /initrd.img');
  });

  it('the initramfs holds cryptsetup, dropbear, its config, the forced-command key, the crypttab entry, and clevis with its tang and tpm2 pins', async () => {
    const initrd = await dumpExt4File(bootPart, `/initrd.img-${manifest.kernel.version}`, join(scratch, 'initrd.img'));
    const layout = manifest.initramfs.appended;
    const { base, appended } = await listInitramfs(initrd, layout);
    for (const entry of [/^usr\/sbin\/cryptsetup$/m, /^usr\/sbin\/dropbear$/m, /^cryptroot\/crypttab$/m, /^etc\/dropbear\/dropbear\.conf$/m, /^usr\/bin\/clevis$/m, /^usr\/bin\/curl$/m,
      // nbde.tpm2: clevis-initramfs's hook copies the tpm2 pin, the tools it calls and the TCTI library for /dev/tpmrm0.
      /^usr\/bin\/clevis-decrypt-tpm2$/m, /^usr\/bin\/tpm2_unseal$/m, /^usr\/bin\/tpm2_createprimary$/m, /^usr\/lib\/x86_64-linux-gnu\/libtss2-tcti-device\.so/m]) {
      expect(base).toMatch(entry);
    }
    // The base (cached across builds) holds no host key and no authorized key; this build's are appended.
    expect(base).not.toMatch(/_host_key$/m);
    expect(appended.split('\n').sort()).toEqual([...layout.paths].sort());
    expect(appended).toMatch(/^etc\/dropbear\/dropbear_ed25519_host_key$/m);
    const keysPath = /^root-[^/]+\/\.ssh\/authorized_keys$/m.exec(appended)?.[0];
    expect(keysPath).toBeDefined();
    const extractDir = await mkdtemp(join(scratch, 'initrd-'));
    const baseDir = await mkdtemp(join(scratch, 'initrd-base-'));
    expect(await readInitramfsMember(initrd, keysPath!, baseDir, layout, 'base')).toBe('');
    const keys = await readInitramfsMember(initrd, keysPath!, extractDir, layout, 'appended');
    const publicKey = (await readFile(image.publicKey, 'utf8')).trim().split(' ')[1]!;
    expect(keys).toMatch(new RegExp(`^no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="cryptroot-unlock" ssh-ed25519 ${publicKey.replace(/[+/]/g, '\\$&')}`, 'm'));
    expect(await readInitramfsMember(initrd, 'cryptroot/crypttab', extractDir, layout, 'appended')).toContain(`UUID=${manifest.luks.uuid}`);
    expect(await readInitramfsMember(initrd, 'etc/dropbear/dropbear.conf', extractDir, layout, 'base')).toMatch(/^DROPBEAR_OPTIONS="-s -j -k -p 22 -I 180"$/m);
  });

  it('/boot holds nothing from /etc, /root or /home', async () => {
    const top = await listExt4Dir(bootPart, '/');
    expect(top).toEqual(expect.arrayContaining(['grub', 'efi', 'vmlinuz', 'initrd.img']));
    for (const name of ['etc', 'root', 'home', 'keylessgo-canary']) expect(top).not.toContain(name);
    expect(await fileContains(bootPart, Buffer.from(image.canary))).toBe(false);
  });
});

describe('the SBOMs', () => {
  let cdx: Record<string, any>;
  let spdx: Record<string, any>;
  let installed: Array<{ name: string; version: string; architecture: string }>;

  beforeAll(async () => {
    cdx = JSON.parse(await readFile(join(image.outDir, 'e2e-bookworm.cdx.json'), 'utf8')) as Record<string, any>;
    spdx = JSON.parse(await readFile(join(image.outDir, 'e2e-bookworm.spdx.json'), 'utf8')) as Record<string, any>;
    // The image's own dpkg database, read from the decrypted root with debugfs (not with keylessgo's parser).
    const status = await readExt4File(rootPlain, '/var/lib/dpkg/status');
    installed = status
      .split(/\n\n+/)
      .filter((stanza) => /^Status: \S+ ok installed$/m.test(stanza))
      .map((stanza) => ({ name: /^Package: (.+)$/m.exec(stanza)![1]!, version: /^Version: (.+)$/m.exec(stanza)![1]!, architecture: /^Architecture: (.+)$/m.exec(stanza)![1]! }));
    expect(installed.length).toBeGreaterThan(100);
  });

  it("validate: CycloneDX by the CycloneDX library's strict validator, SPDX against the SPDX 2.3 JSON schema", async () => {
    const CDX = await import('@cyclonedx/cyclonedx-library');
    expect(await new CDX.Validation.JsonStrictValidator(CDX.Spec.Version.v1dot6).validate(JSON.stringify(cdx))).toBeNull();
    const { default: Ajv } = await import('ajv');
    const { default: addFormats } = await import('ajv-formats');
    const ajv = new Ajv({ strict: false, allErrors: true });
    addFormats(ajv);
    const validate = ajv.compile(JSON.parse(await readFile(join(REPO, 'test/data/spdx/spdx-schema-2.3.json'), 'utf8')) as object);
    expect(validate(spdx), JSON.stringify(validate.errors)).toBe(true);
  });

  it("name every package of the image's dpkg status exactly once, with its purl and its .deb's SHA-256", () => {
    // purl-spec, type deb: + percent-encoded (in names too: libstdc++6), the epoch's colon as it is.
    const encoded = (text: string) => text.replaceAll('+', '%2B');
    const purl = (p: (typeof installed)[number]) => `pkg:deb/debian/${encoded(p.name)}@${encoded(p.version)}?arch=${p.architecture}&distro=debian-12`;
    const expected = installed.map(purl).sort();
    const libraries = (cdx.components as Array<Record<string, any>>).filter((c) => c.type === 'library');
    expect(libraries.map((c) => c.purl).sort()).toEqual(expected);
    expect(libraries.filter((c) => !/^[0-9a-f]{64}$/.test(c.hashes?.[0]?.content ?? ''))).toEqual([]);
    const spdxPurls = (spdx.packages as Array<Record<string, any>>).filter((p) => !p.primaryPackagePurpose).map((p) => p.externalRefs[0].referenceLocator as string);
    expect(spdxPurls.sort()).toEqual(expected);
    // The .deb hashes are those of the files the package cache keeps (apt checked them against the archive).
    const libc = libraries.find((c) => c.name === 'libc6')!;
    expect(libc.hashes[0].content).toBe(spdx.packages.find((p: Record<string, any>) => p.name === 'libc6').checksums[0].checksumValue);
  });

  it('name the kernel and initramfs with the SHA-256 of the files on /boot, and the signed loaders on the ESP', async () => {
    const sha256 = async (path: string) => (await execa('sha256sum', [path])).stdout.split(' ')[0];
    const files = new Map((cdx.components as Array<Record<string, any>>).filter((c) => c.type === 'file').map((c) => [c.name as string, c.hashes.find((h: { alg: string }) => h.alg === 'SHA-256').content as string]));
    expect(files.get(`/boot/vmlinuz-${manifest.kernel.version}`)).toBe(await sha256(join(image.outDir, 'vmlinuz')));
    expect(files.get(`/boot/initrd.img-${manifest.kernel.version}`)).toBe(await sha256(join(image.outDir, 'initrd.img')));
    expect([...files.keys()]).toEqual(expect.arrayContaining(['ESP/EFI/BOOT/BOOTX64.EFI', 'ESP/EFI/BOOT/grubx64.efi', 'ESP/EFI/BOOT/mmx64.efi', 'initramfs/scripts/init-top/keylessgo-link-up']));
    expect(cdx.metadata.component.properties).toEqual(expect.arrayContaining([{ name: 'keylessgo:recipe:sha256', value: expect.stringMatching(/^[0-9a-f]{64}$/) }, { name: 'keylessgo:source-date-epoch', value: expect.stringMatching(/^\d+$/) }]));
  });

  it('hold no secret, no host key and no authorized key', async () => {
    const texts = [JSON.stringify(cdx), JSON.stringify(spdx)];
    const publicKey = (await readFile(image.publicKey, 'utf8')).trim().split(' ')[1]!;
    const header = await extractPartition(image.raw, partition('keylessgo-root'), join(scratch, 'sbom-header'), 16 * 1024 * 1024);
    const volume = await dumpVolumeKey(header, image.passphraseFile);
    const forbidden = [image.passphrase, publicKey, volume.key.toString('hex'), ...manifest.dropbear.hostKeys.map((k) => k.fingerprint), image.canary];
    for (const text of texts) for (const secret of forbidden) expect(text).not.toContain(secret);
  });
});

describe('rebuild from the stage cache', () => {
  const rebuild = inject('rebuild');
  let rebuilt: Manifest & { cache: Record<string, string>; kernel: { cmdline: string }; mirror: { releases: Record<string, string> }; secureBoot: boolean; packages: { requested: string[] } };

  beforeAll(async () => {
    rebuilt = JSON.parse(await readFile(rebuild.manifestFile, 'utf8')) as typeof rebuilt;
  });

  it('took the bootstrap tree and the base initramfs from the cache filled by the first build', async () => {
    const log = await readFile(rebuild.buildLog, 'utf8');
    const first = JSON.parse(await readFile(image.manifestFile, 'utf8')) as typeof rebuilt;
    expect(await readFile(image.buildLog, 'utf8')).toMatch(/cache miss: bootstrap[\s\S]*cache miss: initramfs/);
    // The archive may have published an update between the two builds: then a miss is right.
    if (JSON.stringify(rebuilt.mirror.releases) !== JSON.stringify(first.mirror.releases)) {
      expect(log).toMatch(/cache miss: bootstrap/);
      return;
    }
    expect(log).toMatch(new RegExp(`cache hit: bootstrap ${first.cache.bootstrap}`));
    expect(log).toMatch(new RegExp(`cache hit: initramfs ${first.cache.initramfs}`));
    expect(rebuilt.cache).toEqual(first.cache);
  });

  it('has its own secrets, identifiers of its own recipe, and the recipe changes', async () => {
    // Identifiers derive from the recipe file (reproducible builds): another recipe, other ones.
    expect(rebuilt.luks.uuid).not.toBe(manifest.luks.uuid);
    expect(rebuilt.filesystems.rootUuid).not.toBe(manifest.filesystems.rootUuid);
    expect(rebuilt.dropbear.hostKeys.map((k) => k.fingerprint)).not.toContain(manifest.dropbear.hostKeys[0]!.fingerprint);
    expect(rebuilt.kernel.cmdline).toMatch(/ keylessgo\.rebuild=1$/);
  });

  it('boot.secureBoot false: the same packages (signed shim and GRUB too), an unsigned GRUB alone on the ESP', async () => {
    const first = JSON.parse(await readFile(image.manifestFile, 'utf8')) as typeof rebuilt;
    expect([first.secureBoot, rebuilt.secureBoot]).toEqual([true, false]);
    expect(rebuilt.packages.requested).toEqual(first.packages.requested);
    expect(rebuilt.packages.requested).toEqual(expect.arrayContaining(['shim-signed', 'grub-efi-amd64-signed']));
    const esp = rebuilt.partitions.find((p) => p.label === 'keylessgo-esp')!;
    const listing = await execa('mdir', ['-/', '-b', '-i', `${rebuild.raw}@@${esp.startBytes}`, '::/EFI']);
    expect(listing.stdout.split('\n').filter((line) => !line.endsWith('/'))).toEqual(['::/EFI/BOOT/BOOTX64.EFI']);
  });

  it("lists the same packages with the same .deb hashes in its SBOM, taken from the cache entry", async () => {
    const packagesOf = async (dir: string) => {
      const bom = JSON.parse(await readFile(join(dir, 'e2e-bookworm.cdx.json'), 'utf8')) as { components: Array<{ type: string; purl?: string; hashes?: Array<{ content: string }> }> };
      return bom.components.filter((c) => c.type === 'library').map((c) => `${c.purl} ${c.hashes?.[0]?.content}`).sort();
    };
    const first = JSON.parse(await readFile(image.manifestFile, 'utf8')) as typeof rebuilt;
    if (JSON.stringify(rebuilt.mirror.releases) !== JSON.stringify(first.mirror.releases)) return;
    expect(await packagesOf(rebuild.outDir)).toEqual(await packagesOf(image.outDir));
  });

  it('`keylessgo cache ls` lists the bootstrap and initramfs entries with their sizes', async () => {
    const first = JSON.parse(await readFile(image.manifestFile, 'utf8')) as typeof rebuilt;
    const { stdout } = await execa('node', [CLI, 'cache', 'ls', '--cache-dir', cacheDirOf(image.dir)]);
    expect(stdout).toMatch(new RegExp(`^bootstrap +${first.cache.bootstrap} +\\d+(\\.\\d)? MiB `, 'm'));
    expect(stdout).toMatch(new RegExp(`^initramfs +${first.cache.initramfs} +\\d+(\\.\\d)? MiB `, 'm'));
    // The run's cache also holds the trixie image's entries.
    expect(stdout).toMatch(/^\d+ entries, \d+(\.\d+)? (MiB|GiB) in /m);
  });

  it("keeps the first build's .deb files in the package cache, one per installed package, none in the image", async () => {
    const debs = await readdir(join(cacheDirOf(image.dir), 'packages', 'bookworm'));
    const cached = new Set(debs.filter((f) => f.endsWith('.deb')).map((f) => f.split('_').slice(0, 2).join('_')));
    const installed = manifest.packages.installed.map((p) => `${p.name}_${p.version.replaceAll(':', '%3a')}`);
    expect(installed.length).toBeGreaterThan(100);
    expect(installed.filter((p) => !cached.has(p))).toEqual([]);
    expect(debs.filter((f) => f.startsWith('.incoming-'))).toEqual([]);
    expect(await readFile(image.buildLog, 'utf8')).toMatch(new RegExp(`package cache: 0 packages from it, ${installed.length} downloaded`));
    expect((await listExt4Dir(rootPlain, '/var/cache/apt/archives')).filter((f) => f.endsWith('.deb'))).toEqual([]);
    // The bootstrap's dpkg ran under eatmydata: none of it stays in the image, whose own apt must sync.
    expect((await listExt4Dir(rootPlain, '/usr/bin')).filter((f) => /^dpkg\.distrib$|^eatmydata$/.test(f))).toEqual([]);
    expect((await listExt4Dir(rootPlain, '/usr/lib/x86_64-linux-gnu')).filter((f) => f.startsWith('libeatmydata'))).toEqual([]);
    expect(await readExt4File(rootPlain, '/var/lib/dpkg/diversions')).not.toContain('/usr/bin/dpkg');
  });

  it('leaves no lock and no partial entry in the cache, which holds no private key', async () => {
    const cache = cacheDirOf(image.dir);
    const names = (await execa('find', [cache, '-maxdepth', '2', '(', '-name', '*.lock', '-o', '-name', '*.partial-*', ')'])).stdout;
    expect(names).toBe('');
    // Every OpenSSH private key holds base64("openssh-key-v1"); binaries only hold the PEM header text.
    const keys = await execa('grep', ['-rl', '--binary-files=text', 'b3BlbnNzaC1rZXktdjE', cache], { reject: false });
    expect(keys.stdout).toBe('');
    const hostKeys = (await execa('find', [cache, '-name', 'ssh_host_*', '-o', '-name', 'dropbear_*_host_key'])).stdout;
    expect(hostKeys).toBe('');
  });
});

describe('secrets never leak', () => {
  const rebuild = inject('rebuild');
  const scans = { count: 0, hits: [] as string[] };

  /** Looks for every form of every secret in one place; records the scans and any hit. */
  function record(where: string, secrets: Record<string, Buffer>, found: string[]): void {
    scans.count += Object.keys(secrets).length;
    scans.hits.push(...found.map((name) => `${name} in ${where}`));
  }

  const inText = (text: string, secrets: Record<string, Buffer>) => Object.keys(secrets).filter((name) => text.includes(secrets[name]!.toString('latin1')));

  it.each([
    ['the first build', () => image],
    ['the rebuild from the cache (--verbose)', () => rebuild],
  ])('%s: not in argv, the log, the manifest, the SBOMs, the raw image, /boot or the decrypted root', async (_name, which) => {
    const built = which();
    const work = await mkdtemp(join(scratch, 'secrets-'));
    const builtManifest = JSON.parse(await readFile(built.manifestFile, 'utf8')) as Manifest;
    const root = builtManifest.partitions.find((p) => p.label === 'keylessgo-root')!;
    const header = await extractPartition(built.raw, root, join(work, 'header'), 16 * 1024 * 1024);
    const volume = await dumpVolumeKey(header, built.passphraseFile);
    const secrets = {
      passphrase: Buffer.from(built.passphrase),
      'volume key': volume.key,
      'volume key (hex)': Buffer.from(volume.key.toString('hex')),
      'SSH private key': Buffer.from((await readFile(built.privateKey, 'utf8')).split('\n').slice(1, -2).join('')),
    };
    record('process command lines during the build', secrets, inText(await readFile(built.argvLog, 'latin1'), secrets));
    expect((await readFile(built.argvLog, 'utf8')).split('\n').length).toBeGreaterThan(20);
    record('the build log', secrets, inText(await readFile(built.buildLog, 'latin1'), secrets));
    record('manifest.json', secrets, inText(await readFile(built.manifestFile, 'latin1'), secrets));
    for (const sbom of ['e2e-bookworm.cdx.json', 'e2e-bookworm.spdx.json']) record(sbom, secrets, inText(await readFile(join(built.outDir, sbom), 'latin1'), secrets));
    record('the raw image', secrets, await fileContainsAny(built.raw, secrets));
    record('the qcow2 image', secrets, await fileContainsAny(built.qcow2, secrets));
    if (built === image) record('the decrypted root', secrets, await fileContainsAny(rootPlain, secrets));
    await rm(work, { recursive: true, force: true });
    expect(scans.hits).toEqual([]);
  });

  afterAll(() => {
    process.stderr.write(`secret scans: ${scans.count}, hits: ${scans.hits.length}\n`);
  });
});
