/**
 * Updates that take a TCG guest many minutes, so `make test-updates` runs them, not `make
 * test`: one machine (TPM2 + Tang, threshold 2, Secure Boot on), enrolled as by default, then
 *
 *   1. a newer kernel, the real one from bookworm-backports: apt installs it, the machine
 *      rebuilds its initramfs (MODULES=most), and reboots keyless into it; dropbear's host key
 *      is the one enroll made; grub.cfg offers the previous kernel;
 *   2. Debian 12 -> 13 as the README describes it: `reseal --prepare`, `apt full-upgrade`,
 *      reboot keyless, `reseal --finish`, and one more keyless reboot.
 *
 * The guest's apt reaches the mirror of the host's own apt sources through a proxy on the
 * host's loopback (apt-proxy.ts). Each phase prints its time.
 */
import { execa } from 'execa';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { mirrorFromSources, readHostAptSources } from '../../src/host/apt-sources.js';
import { SECURE_BOOT_CHECK } from '../../src/qemu/checks.js';
import { checkInitramfsListing } from '../../src/stages/initramfs.js';
import { OVMF } from '../../src/qemu/firmware.js';
import { TANG_GUEST_ADDRESS } from '../../src/qemu/vm.js';
import { pollUntil } from '../../src/qemu/wait.js';
import { APT_PROXY_GUEST_ADDRESS, APT_PROXY_GUEST_PORT, startAptProxy, type AptProxy } from '../e2e/apt-proxy.js';
import { CLI } from '../e2e/fixture.js';
import { createTang } from '../e2e/tang.js';
import { expectEncryptedRoot, TestVm } from '../e2e/vm-session.js';

const image = inject('image');
const BOOT_TIMEOUT_MS = 15 * 60 * 1000;
/** apt full-upgrade from bookworm to trixie under TCG. */
const DIST_UPGRADE_TIMEOUT_MS = 150 * 60 * 1000;
const APT = 'DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef';

let dir: string;
let vm: TestVm;
let proxy: AptProxy;
let served: { keyDir: string; logFile: string };
let machine: { tpm: { stateDir: string }; secureBootVars: string };
let network: { hostServices: Array<{ guestAddress: string; guestPort: number; hostPort: number }> };
let recoveryFile: string;
let dropbearKeys: string[];

const log = (message: string) => process.stderr.write(`updates: ${message}\n`);
const since = (started: number) => ((performance.now() - started) / 1000).toFixed(1);

async function cli(args: string[]) {
  const result = await execa('node', [CLI, ...args, '--host', '127.0.0.1', '--port', String(vm.port), '--key', image.privateKey, '--json'], { all: true, reject: false });
  const record = JSON.parse(String(result.stdout).split('\n').find((line) => line.startsWith('{')) ?? '{}') as { result?: string; details?: any };
  return { exitCode: result.exitCode, all: String(result.all), record };
}

/** Runs `command` on the machine, failing the test with its output unless it exits 0. */
async function must(command: string): Promise<string> {
  const { exitCode, output } = await vm.ssh(command);
  expect(exitCode, output.slice(-4000)).toBe(0);
  return output;
}

async function bootKeyless(what: string): Promise<void> {
  await vm.boot(served, network, machine);
  const seconds = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
  log(`${what}: keyless, OpenSSH after ${seconds} s`);
  await expectEncryptedRoot(vm);
}

beforeAll(async () => {
  dir = await mkdtemp(join(image.dir, 'updates-'));
  // Room for a second kernel and for Debian 13 (the root grows to the disk at first boot).
  vm = await TestVm.create(image, join(dir, 'machine'), image.qcow2, 6 * 1024 ** 3);
  const tang = await createTang(vm.dir);
  served = { keyDir: tang.keyDir, logFile: join(vm.dir, 'tang.log') };
  machine = { tpm: { stateDir: join(vm.dir, 'tpm') }, secureBootVars: join(vm.dir, 'OVMF_VARS.fd') };
  await copyFile(OVMF['uefi-secureboot'].varsTemplate, machine.secureBootVars);
  const mirror = mirrorFromSources(await readHostAptSources());
  if (!mirror) throw new Error('the host has no apt sources to take the mirror from');
  const hosts = [mirror.archive, mirror.security].filter((url): url is string => url !== undefined).map((url) => new URL(url).hostname);
  proxy = await startAptProxy(hosts, join(dir, 'apt-proxy.log'));
  network = { hostServices: [{ guestAddress: APT_PROXY_GUEST_ADDRESS, guestPort: APT_PROXY_GUEST_PORT, hostPort: proxy.port }] };
  recoveryFile = join(vm.dir, 'recovery-key');
});

afterAll(async () => {
  await vm?.stop();
  await proxy?.close();
  if (!process.env.KEYLESSGO_KEEP_FIXTURE) await rm(dir, { recursive: true, force: true });
});

describe('updates of an enrolled machine (TPM2 + Tang, Secure Boot on)', () => {
  it('is enrolled as by default', async () => {
    await vm.boot(served, network, machine);
    await vm.waitFor(/dropbear/, BOOT_TIMEOUT_MS);
    expect((await vm.ssh('cryptroot-unlock', image.passphrase)).output).toMatch(/set up successfully/);
    await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
    expect((await vm.ssh(SECURE_BOOT_CHECK.command)).output).toMatch(/^SecureBoot=1$/m);
    const started = performance.now();
    const enrolled = await cli(['enroll', '--passphrase-file', image.passphraseFile, '--tang', `http://${TANG_GUEST_ADDRESS}`, '--tpm2', '--threshold', '2', '--recovery-key-out', recoveryFile]);
    expect(enrolled.exitCode, enrolled.all).toBe(0);
    dropbearKeys = enrolled.record.details.dropbearHostKeys;
    log(`enroll: ${since(started)} s`);
    await must(`echo 'Acquire::http::Proxy "http://${APT_PROXY_GUEST_ADDRESS}:${APT_PROXY_GUEST_PORT}";' > /etc/apt/apt.conf.d/80test-proxy`);
  });

  it('a newer kernel from bookworm-backports: reboots keyless into it, dropbear keeps its host key, grub.cfg offers the previous kernel', async () => {
    const before = (await must('uname -r; sha256sum /boot/grub/grub.cfg')).trim().split('\n');
    const mirror = (await must("awk '$1 == \"deb\" && $3 == \"bookworm\" {print $2; exit}' /etc/apt/sources.list")).trim();
    await must(`echo "deb ${mirror} bookworm-backports main" > /etc/apt/sources.list.d/backports.list && ${APT} update`);
    const started = performance.now();
    const installed = await must(`${APT} install -t bookworm-backports linux-image-amd64 2>&1`);
    log(`apt-get install -t bookworm-backports linux-image-amd64: ${since(started)} s`);
    await writeFile(join(dir, 'kernel-install.log'), installed);
    const kernel = /^update-initramfs: Generating \/boot\/initrd\.img-(\S+)$/m.exec(installed)?.[1];
    expect(kernel, installed.slice(-3000)).toBeDefined();
    expect(kernel).not.toBe(before[0]);
    expect(installed).toMatch(/^keylessgo: \/boot\/grub\/grub\.cfg boots \/boot\/vmlinuz/m);
    const links = await must('readlink /boot/vmlinuz /boot/initrd.img /boot/vmlinuz.old /boot/initrd.img.old; sha256sum /boot/grub/grub.cfg');
    expect(links.trim().split('\n')).toEqual([`vmlinuz-${kernel}`, `initrd.img-${kernel}`, `vmlinuz-${before[0]}`, `initrd.img-${before[0]}`, before[1]]);
    expect(await must('grep -c "linux /vmlinuz.old" /boot/grub/grub.cfg')).toMatch(/^1$/m);
    // The new initramfs, as update-initramfs made it on the machine: dropbear with the enrolled
    // keys, clevis with its tpm2 pin, keylessgo's scripts (unmkinitramfs puts the main archive in
    // main/ only when an early one precedes it).
    const listing = await must(`rm -rf /run/initrd && unmkinitramfs /boot/initrd.img-${kernel} /run/initrd && { cd /run/initrd/main 2>/dev/null || cd /run/initrd; } && cmp etc/dropbear/dropbear_ed25519_host_key /etc/dropbear/initramfs/dropbear_ed25519_host_key && find . -mindepth 1 | sed 's|^\\./||' | sort; rm -rf /run/initrd`);
    const checks = checkInitramfsListing(listing, true, true, true);
    expect(Object.entries(checks).filter(([, found]) => !found).map(([name]) => name)).toEqual([]);
    await vm.powerOff();

    await bootKeyless('after the kernel update');
    expect((await must('uname -r')).trim()).toBe(kernel);
    await vm.powerOff();

    // Tang down: dropbear of the new kernel's initramfs, with the host key enroll made.
    await vm.boot({ ...served, behaviour: 'refuse' }, network, machine);
    await vm.waitFor(/dropbear/, BOOT_TIMEOUT_MS);
    const { stdout: scanned } = await execa('ssh-keyscan', ['-t', 'ed25519', '-p', String(vm.port), '127.0.0.1']);
    expect(scanned.trim().split(/\s+/).slice(1).join(' ')).toBe(dropbearKeys.find((line) => line.startsWith('ssh-ed25519 '))!.split(' ').slice(0, 2).join(' '));
    expect((await vm.ssh('cryptroot-unlock', (await readFile(recoveryFile, 'utf8')).trim())).output).toMatch(/set up successfully/);
    await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
    await vm.powerOff();
  });

  it('Debian 12 -> 13: reseal --prepare, full-upgrade, keyless reboot, reseal --finish, keyless again', async () => {
    await bootKeyless('before the upgrade');
    const prepared = await cli(['reseal', '--prepare']);
    expect(prepared.exitCode, prepared.all).toBe(0);
    await must(`sed -i 's/bookworm/trixie/g' /etc/apt/sources.list && rm -f /etc/apt/sources.list.d/backports.list && ${APT} update`);
    // As the README says: in a unit of its own, which a dropped SSH session does not stop.
    await must(`printf '%s\\n' '${APT} full-upgrade' 'echo $? > /root/dist-upgrade.status' > /root/dist-upgrade.sh && systemd-run --unit=dist-upgrade /bin/sh /root/dist-upgrade.sh`);
    const started = performance.now();
    // Done when the script has written its exit status. systemctl and sshd themselves are
    // upgraded meanwhile: an answer that is not "inactive" (or a refused login) is no end.
    const statusWritten = async () => (await vm.ssh('test -f /root/dist-upgrade.status').catch(() => ({ exitCode: 1 }))).exitCode === 0;
    await pollUntil(async () => ((await statusWritten()) ? true : undefined), 30_000, AbortSignal.any([AbortSignal.timeout(DIST_UPGRADE_TIMEOUT_MS), vm.exited]));
    const upgraded = await must('cat /root/dist-upgrade.status; journalctl --no-pager -o cat -u dist-upgrade');
    log(`apt-get full-upgrade to trixie: ${since(started)} s, exit ${upgraded.split('\n')[0]}`);
    await writeFile(join(dir, 'dist-upgrade.log'), upgraded);
    expect(upgraded.split('\n')[0], upgraded.slice(-4000)).toBe('0');
    log(`ESP: ${[...upgraded.matchAll(/^keylessgo-esp-sync: (.*)$/gm)].map((m) => m[1]).join('; ') || 'unchanged'}`);
    await vm.powerOff();

    await bootKeyless('after the upgrade to trixie');
    expect(await must('. /etc/os-release; echo $VERSION_ID')).toMatch(/^13$/m);
    expect((await vm.ssh(SECURE_BOOT_CHECK.command)).output).toMatch(/^SecureBoot=1$/m);
    const finished = await cli(['reseal', '--finish']);
    expect(finished.exitCode, finished.all).toBe(0);
    log(`reseal --finish after the upgrade: ${finished.record.details.result}`);
    await vm.powerOff();
    await bootKeyless('trixie, after reseal --finish');
    const status = await cli(['status']);
    expect(status.record.details.bindings).toEqual([expect.objectContaining({ pin: 'sss', decrypts: true, tpm2Unseals: true })]);
    await vm.powerOff();
  });
});
