/**
 * `keylessgo inspect` on the shared image (bound to the test Tang), through the real CLI:
 * its JSON against the manifest and against facts known independently (the test key's
 * ssh-keygen fingerprint, the Tang key's file name), the human table, the qcow2 twin, the
 * SBOMs, --check as a gate (passing, and failing on a tampered manifest, SHA256SUMS, SBOM or,
 * with --verify-key, signature), a qcow2 backed by the image refused, and exit 2 on a file
 * that is no disk image.
 */
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { InspectReport } from '../../src/inspect/inspect.js';
import { CLI } from './fixture.js';

const image = inject('image');

interface Manifest {
  luks: { uuid: string };
  kernel: { version: string; cmdline: string };
  partitions: Array<{ label: string; startBytes: number; sizeBytes: number }>;
  dropbear: { hostKeys: Array<{ type: string; fingerprint: string }> };
  nbde: { binding: { slot: number; servers: Array<{ url: string; thumbprints: string[] }> } };
  packages: { installed: Array<{ name: string }> };
}

let manifest: Manifest;
let report: InspectReport;
let human: string;
let scratch: string;
const seconds: Record<string, number> = {};

async function inspect(...args: string[]) {
  const started = performance.now();
  const result = await execa('node', [CLI, 'inspect', ...args], { reject: false });
  seconds[args.join(' ')] = (performance.now() - started) / 1000;
  return result;
}

beforeAll(async () => {
  manifest = JSON.parse(await readFile(image.manifestFile, 'utf8')) as Manifest;
  scratch = await mkdtemp(join(image.dir, 'inspect-cli-'));
  const result = await inspect(image.raw, '--json');
  expect(result.exitCode, result.stderr).toBe(0);
  report = JSON.parse(result.stdout) as InspectReport;
  const table = await inspect(image.raw);
  expect(table.exitCode, table.stderr).toBe(0);
  human = table.stdout;
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
  process.stderr.write(`inspect run times: ${JSON.stringify(seconds)}\n`);
});

describe('keylessgo inspect --json on the built image', () => {
  it('lists the GPT partitions with their labels, and finds LUKS and ext4 where they are', () => {
    expect(report.partitionTable.scheme).toBe('gpt');
    expect(report.partitionTable.partitions.map((p) => ({ label: p.label, startBytes: p.startBytes, sizeBytes: p.sizeBytes }))).toEqual(
      manifest.partitions.map(({ label, startBytes, sizeBytes }) => ({ label, startBytes, sizeBytes })),
    );
    expect(report.partitionTable.partitions.map((p) => p.contents)).toEqual(['other', 'other', 'ext', 'luks']);
  });

  it('reads the LUKS2 header: manifest UUID, keyslots 0 and 1, and the clevis token bound to the test Tang', async () => {
    expect(report.luks).toHaveLength(1);
    const luks = report.luks[0]!;
    expect(luks).toMatchObject({ partition: 4, version: 2, uuid: manifest.luks.uuid, cipher: 'aes-xts-plain64', keySizeBits: 512, sectorSize: 4096 });
    expect(luks.keyslots.map((k) => k.slot)).toEqual([0, 1]);
    expect(luks.keyslots[0]).toMatchObject({ kdf: 'argon2id', memoryKiB: 65536, timeCost: 4 });
    const [token] = luks.tokens;
    expect(token).toMatchObject({ type: 'clevis', clevisPin: 'tang', keyslots: [1], tang: [{ url: image.tang.guestUrl }] });
    // tangd-keygen names each key file by its thumbprint: an oracle independent of inspect's JWK code.
    const keyFiles = await readdir(image.tang.keyDir);
    expect(keyFiles).toContain(`${token!.tang![0]!.thumbprints[0]}.jwk`);
    expect(token!.tang).toEqual(manifest.nbde.binding.servers);
  });

  it('reads the kernel command line from grub.cfg on /boot, and who signed the kernel (Debian)', () => {
    expect(report.boot).toMatchObject({ partition: 3, grubCfg: '/grub/grub.cfg', kernel: '/vmlinuz', cmdline: manifest.kernel.cmdline, initrds: ['/initrd.img'] });
    expect(report.boot!.kernelSignatures).toEqual([{ subject: expect.stringMatching(/^CN=Debian Secure Boot Signer .* - linux$/), issuer: 'CN=Debian Secure Boot CA' }]);
  });

  it('shows the signed EFI loader chain: shim by Microsoft, GRUB and MokManager by Debian, no fallback', () => {
    const signer = (path: string) => report.efi!.files.find((f) => f.path === path)?.signatures.map((s) => s.issuer.split('\n').at(-1));
    expect(report.efi!.partition).toBe(2);
    expect(report.efi!.files.map((f) => f.path).sort()).toEqual(['EFI/BOOT/BOOTX64.EFI', 'EFI/BOOT/grubx64.efi', 'EFI/BOOT/mmx64.efi', 'EFI/debian/grub.cfg']);
    expect(signer('EFI/BOOT/BOOTX64.EFI')).toContain('CN=Microsoft Corporation UEFI CA 2011');
    expect(signer('EFI/BOOT/grubx64.efi')).toEqual(['CN=Debian Secure Boot CA']);
    expect(signer('EFI/BOOT/mmx64.efi')).toEqual(['CN=Debian Secure Boot CA']);
    expect(report.efi!.files.find((f) => f.path === 'EFI/debian/grub.cfg')).toMatchObject({ pe: false });
  });

  it('looks inside the initramfs: unlock tools, the forced-command key, dropbear host keys, crypttab', async () => {
    const initramfs = report.initramfs!;
    expect(initramfs.files).toEqual([`/initrd.img-${manifest.kernel.version}`]);
    expect(Object.entries(initramfs.contains).filter(([, present]) => !present)).toEqual([]);
    expect(Object.keys(initramfs.contains)).toEqual(expect.arrayContaining(['cryptsetup', 'dropbear', 'clevis', 'curl', 'cryptroot-unlock']));
    const fingerprint = (await execa('ssh-keygen', ['-l', '-E', 'sha256', '-f', image.publicKey])).stdout.split(' ')[1];
    expect(initramfs.authorizedKeys).toEqual([
      expect.objectContaining({ type: 'ssh-ed25519', fingerprint, comment: 'keylessgo-test', options: 'no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="cryptroot-unlock"' }),
    ]);
    const byFingerprint = (keys: Array<{ fingerprint: string }>) => keys.map((k) => k.fingerprint).sort();
    expect(byFingerprint(initramfs.dropbearHostKeys)).toEqual(byFingerprint(manifest.dropbear.hostKeys));
    expect(initramfs.dropbearOptions).toBe('-s -j -k -p 22 -I 180');
    expect(initramfs.crypttab).toEqual([expect.stringMatching(new RegExp(`^cryptroot\\s+UUID=${manifest.luks.uuid}\\s`))]);
  });

  it('reports the SBOMs beside the image: CycloneDX 1.6 and SPDX 2.3, each with every installed package', () => {
    expect(report.sboms).toEqual([
      { file: join(image.outDir, 'e2e-bookworm.cdx.json'), format: 'CycloneDX 1.6', packages: manifest.packages.installed.length, files: expect.any(Number) },
      { file: join(image.outDir, 'e2e-bookworm.spdx.json'), format: 'SPDX-2.3', packages: manifest.packages.installed.length, files: expect.any(Number) },
    ]);
    expect(human).toMatch(/^SBOMs\n {2}\S+e2e-bookworm\.cdx\.json +CycloneDX 1\.6: \d+ packages, \d+ files$/m);
  });

  it('compares the manifest beside the image and finds no mismatch', () => {
    expect(report.manifest?.file).toBe(image.manifestFile);
    expect(report.manifest?.compared).toEqual(expect.arrayContaining(['luks.uuid', 'luks.keyslots', 'nbde.binding', 'kernel.cmdline', 'dropbear.hostKeys', 'dropbear.authorizedKeys']));
    expect(report.manifest?.mismatches).toEqual([]);
    expect(report.notes).toEqual([]);
  });

  it('never prints secrets: no passphrase, no private key material, no canary', async () => {
    const privateKey = (await readFile(image.privateKey, 'utf8')).split('\n').slice(1, -2).join('');
    for (const output of [JSON.stringify(report), human]) {
      expect(output).not.toContain(image.passphrase);
      expect(output).not.toContain(image.canary);
      expect(output).not.toContain(privateKey.slice(0, 40));
    }
  });
});

describe('keylessgo inspect, human table and other inputs', () => {
  it('prints sections for partitions, LUKS2, boot, initramfs and manifest', () => {
    const out = human;
    expect(out).toMatch(/^ {2}4 +keylessgo-root +Linux root \(x86-64\) +.*luks$/m);
    expect(out).toContain(`LUKS2 on partition 4\n  uuid       ${manifest.luks.uuid}`);
    expect(out).toMatch(new RegExp(`^ {2}token 0 +clevis tang -> keyslot 1: ${image.tang.guestUrl} \\(signing key ${manifest.nbde.binding.servers[0]!.thumbprints[0]}\\)$`, 'm'));
    expect(out).toContain(`  cmdline  ${manifest.kernel.cmdline}`);
    expect(out).toMatch(/^ {2}cryptroot-unlock +yes$/m);
    expect(out).toMatch(/^ {2}EFI\/BOOT\/BOOTX64\.EFI +.*, signed by Microsoft Windows UEFI Driver Publisher \(issuer Microsoft Corporation UEFI CA 2011\)/m);
    expect(out).toMatch(/^ {2}compared +\d+ fields with the image, all match$/m);
  });

  it('reports the same for the qcow2 image, which passes --check (manifest, SHA256SUMS, the SBOMs)', async () => {
    const result = await inspect(image.qcow2, '--json', '--check');
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/check passed: \d+ manifest fields, SHA-256 of e2e-bookworm\.qcow2 against .*SHA256SUMS, SHA-256 of e2e-bookworm\.qcow2 against .*manifest\.json outputs, SHA-256 of e2e-bookworm\.cdx\.json against .*SHA256SUMS/);
    const fromQcow2 = JSON.parse(result.stdout) as InspectReport;
    expect(fromQcow2.format).toBe('qcow2');
    // The manifest comparison differs only in which output's size it checked.
    expect({ ...fromQcow2, image: image.raw, format: 'raw', manifest: null }).toEqual({ ...report, manifest: null });
    expect(fromQcow2.manifest?.compared).toContain('outputs e2e-bookworm.qcow2 bytes');
    expect(fromQcow2.manifest?.mismatches).toEqual([]);
  });

  /** A directory holding links to the build's outputs but its own copies of `replaced` (name → content). */
  async function outputsWith(replaced: Record<string, string>): Promise<string> {
    const dir = await mkdtemp(join(scratch, 'tampered-'));
    for (const name of await readdir(image.outDir)) {
      if (name in replaced) await writeFile(join(dir, name), replaced[name]!);
      else await symlink(join(image.outDir, name), join(dir, name));
    }
    return dir;
  }

  const checkErrors = (stderr: string) =>
    stderr.split('\n').filter(Boolean).map((line) => JSON.parse(line) as { level: string; message: string }).filter((e) => e.level === 'error').map((e) => e.message);

  it('--check exits 1 naming each difference when the manifest or SHA256SUMS does not match the image', async () => {
    const tampered = { ...(JSON.parse(await readFile(image.manifestFile, 'utf8')) as Manifest), luks: { ...manifest.luks, uuid: '00000000-0000-4000-8000-000000000000' } };
    const sums = (await readFile(join(image.outDir, 'SHA256SUMS'), 'utf8')).replace(/^[0-9a-f]{64}(?=  e2e-bookworm\.raw$)/m, '0'.repeat(64));
    const dir = await outputsWith({ 'manifest.json': JSON.stringify(tampered), SHA256SUMS: sums });
    const result = await inspect(join(dir, basename(image.raw)), '--check', '--log-format', 'json');
    expect(result.exitCode, result.stderr).toBe(1);
    expect(checkErrors(result.stderr)).toEqual([
      `check: manifest luks.uuid: manifest 00000000-0000-4000-8000-000000000000, image ${manifest.luks.uuid}`,
      expect.stringMatching(new RegExp(`^check: SHA-256 of e2e-bookworm\\.raw differs from ${join(dir, 'SHA256SUMS')}: expected 0{64}, file has [0-9a-f]{64}$`)),
      expect.stringMatching(new RegExp(`^check: SHA-256 of manifest\\.json differs from ${join(dir, 'SHA256SUMS')}: `)),
    ]);
  });

  it('--check fails on a changed SBOM; with --verify-key, on a SHA256SUMS the signature does not cover or another signer', async () => {
    const cdx = await readFile(join(image.outDir, 'e2e-bookworm.cdx.json'), 'utf8');
    const sbomChanged = await outputsWith({ 'e2e-bookworm.cdx.json': cdx.replace('"libc6"', '"libc7"') });
    const sbom = await inspect(join(sbomChanged, basename(image.qcow2)), '--check', '--log-format', 'json');
    expect(sbom.exitCode, sbom.stderr).toBe(1);
    expect(checkErrors(sbom.stderr)).toEqual([expect.stringMatching(/^check: SHA-256 of e2e-bookworm\.cdx\.json differs from .*SHA256SUMS: /), expect.stringMatching(/^check: SHA-256 of e2e-bookworm\.cdx\.json differs from .*manifest\.json outputs: /)]);

    const good = await inspect(image.qcow2, '--check', '--verify-key', image.signingPublicKey);
    expect(good.exitCode, good.stderr).toBe(0);
    expect(good.stderr).toMatch(/check passed: signature of SHA256SUMS by .*signing-key\.pub, /);

    // SHA256SUMS and the manifest agreeing with a changed SBOM: only the signature tells.
    const forgedSums = (await readFile(join(image.outDir, 'SHA256SUMS'), 'utf8')).replace(/^[0-9a-f]{64}(?=  e2e-bookworm\.cdx\.json$)/m, createHash('sha256').update(cdx.replace('"libc6"', '"libc7"')).digest('hex'));
    const forged = await outputsWith({ 'e2e-bookworm.cdx.json': cdx.replace('"libc6"', '"libc7"'), SHA256SUMS: forgedSums });
    const unsigned = await inspect(join(forged, basename(image.qcow2)), '--check', '--verify-key', image.signingPublicKey, '--log-format', 'json');
    expect(unsigned.exitCode).toBe(1);
    expect(checkErrors(unsigned.stderr)[0]).toMatch(/^check: .*SHA256SUMS\.sig is not a keylessgo signature of SHA256SUMS by /);

    const stranger = await inspect(image.qcow2, '--check', '--verify-key', image.publicKey, '--log-format', 'json');
    expect(stranger.exitCode).toBe(1);
    expect(checkErrors(stranger.stderr)[0]).toMatch(/is not a keylessgo signature of SHA256SUMS by /);
    const without = await inspect(image.qcow2, '--verify-key', image.signingPublicKey);
    expect(without.exitCode).toBe(2);
  });

  it('refuses a qcow2 whose backing file is the image (exit 2, one line, nothing read)', async () => {
    const overlay = join(scratch, 'backed.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', image.raw, overlay]);
    const refused = await inspect(overlay);
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toBe(`error: ${overlay}: qcow2 with a backing file (${JSON.stringify(image.raw)}) would be read from the host; pass --allow-external-files if you trust it`);
    expect(refused.stdout).toBe('');
  });

  // The trixie fixture is built for 4Kn disks (GPT in 4096-byte sectors).
  it('reads the GPT of the 4Kn trixie image and its 4096-byte-sector ESP', async () => {
    const trixie = inject('trixie');
    const result = await inspect(trixie.qcow2, '--json');
    expect(result.exitCode, result.stderr).toBe(0);
    const fourK = JSON.parse(result.stdout) as InspectReport;
    const trixieManifest = JSON.parse(await readFile(trixie.manifestFile, 'utf8')) as Manifest & { bootModes: string[] };
    expect(fourK.partitionTable).toMatchObject({ scheme: 'gpt', sectorSize: 4096 });
    expect(fourK.partitionTable.partitions.map(({ label, startBytes, sizeBytes }) => ({ label, startBytes, sizeBytes }))).toEqual(
      trixieManifest.partitions.map(({ label, startBytes, sizeBytes }) => ({ label, startBytes, sizeBytes })),
    );
    expect(fourK.efi!.files.map((f) => f.path)).toContain('EFI/BOOT/BOOTX64.EFI');
    expect(fourK.luks).toHaveLength(1);
    expect(fourK.manifest?.mismatches).toEqual([]);
    expect(trixieManifest.bootModes).toEqual(['uefi']);
  });

  it('exits 2 with one line on a file that is no disk image, and on a missing one', async () => {
    const garbage = join(scratch, 'garbage.img');
    await writeFile(garbage, Buffer.alloc(4 * 1024 * 1024, 0xa5));
    for (const [file, message] of [[garbage, 'not a disk image'], [join(scratch, 'absent.img'), 'no such file']] as const) {
      const result = await inspect(file);
      expect(result.exitCode).toBe(2);
      expect(result.stderr).toBe(`error: ${file}: ${message}${message === 'not a disk image' ? ': no partition table, LUKS header or ext file system found' : ''}`);
    }
  });
});
