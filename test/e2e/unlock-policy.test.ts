/**
 * Unlock policies beyond one Tang server, proven by booting (the power-cut case, Tang up
 * after the machine, is in nbde.test.ts's keyless boot):
 *
 *   1. Two Tang servers, threshold 1, the first silent (accepts, never answers): a copy of
 *      the fixture image rebound offline on the host, no enrollment; it unlocks through the
 *      second server.
 *   2. TPM2 and Tang: one enrollment (`enroll --tang URL --tpm2 --threshold 2`, dropbear's
 *      host keys renewed as by default) on a machine with a TPM (swtpm), then power cycles of
 *      the same disk, ordered so that each adds to what the next needs: both present (unlocks
 *      by itself); the ESP's loaders replaced by an apt reinstall of shim and GRUB; Secure Boot
 *      turned on unprepared (PCR 7 moves: stays at dropbear, whose host key is the new one;
 *      the recovery passphrase unlocks; `reseal --finish` seals to the new PCR 7); keyless
 *      under Secure Boot, then `reseal --prepare`; Secure Boot off again (keyless through the
 *      temporary binding; `reseal --finish`); keyless through the TPM binding; Tang down
 *      (stays at dropbear, the recovery passphrase unlocks over SSH, and a TPM2-only binding
 *      is added); another machine's TPM with Tang up (neither binding unlocks); this
 *      machine's TPM with Tang down again (the TPM2-only binding unlocks by itself).
 */
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { SECURE_BOOT_CHECK } from '../../src/qemu/checks.js';
import { OVMF } from '../../src/qemu/firmware.js';
import { SECOND_TANG_GUEST_ADDRESS, TANG_GUEST_ADDRESS } from '../../src/qemu/vm.js';
import { cacheDirOf, CLI } from './fixture.js';
import { pollUntil } from '../../src/qemu/wait.js';
import { connectionTimes, createTang } from './tang.js';
import { expectEncryptedRoot, TestVm } from './vm-session.js';

const image = inject('image');
const BOOT_TIMEOUT_MS = 10 * 60 * 1000;
/** How long a locked machine is watched after its second round of asking Tang. */
const STAYS_LOCKED_GRACE_MS = 10_000;
/** clevis-initramfs sleeps 5 s between rounds over the bindings. */
const CLEVIS_ROUND_GAP_S = 4;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(image.dir, 'unlock-policy-'));
});

afterAll(async () => {
  if (!process.env.KEYLESSGO_KEEP_FIXTURE) await rm(dir, { recursive: true, force: true });
});


const tangConnections = async (tangLog: string) => connectionTimes(await readFile(tangLog, 'utf8').catch(() => ''));

/**
 * Dropbear answers and clevis-initramfs does not unlock: it asks Tang a second time, one
 * round over the bindings later (it stops asking once one unlocks), and the booted system's
 * OpenSSH is not up even a little after that. Call it right after powering on.
 */
async function expectStaysLocked(vm: TestVm, tangLog: string): Promise<void> {
  const before = (await tangConnections(tangLog)).length;
  await vm.waitFor(/dropbear/, BOOT_TIMEOUT_MS);
  await pollUntil(async () => {
    const asked = (await tangConnections(tangLog)).slice(before);
    return asked.length > 1 && asked.at(-1)! - asked[0]! >= CLEVIS_ROUND_GAP_S ? true : undefined;
  }, 1000, AbortSignal.any([AbortSignal.timeout(BOOT_TIMEOUT_MS), vm.exited]));
  const unlocked = await vm.waitFor(/OpenSSH/, STAYS_LOCKED_GRACE_MS).then(
    () => true,
    (error: Error) => {
      if (error.name === 'TimeoutError') return false;
      throw error;
    },
  );
  expect(unlocked).toBe(false);
}

/** How long this machine's TPM alone may take to unlock (a keyless boot takes 70-200 s under TCG). */
const TPM_ALONE_TIMEOUT_MS = 6 * 60 * 1000;

/** The booted system's PCR 7 (sha256 bank), the one the tpm2 bindings are sealed to. */
async function pcr7(vm: TestVm): Promise<string> {
  const { output } = await vm.ssh('tpm2_pcrread sha256:7');
  return /7\s*:\s*(0x[0-9A-F]+)/i.exec(output)?.[1] ?? output;
}

const recoveries = (log: string) => log.match(/POST \/rec\/\S+ => 200/g)?.length ?? 0;

/** The LUKS2 root of a whole-disk image file, as the manifest places it. */
async function rootPartition(): Promise<{ startBytes: number; sizeBytes: number }> {
  const manifest = JSON.parse(await readFile(image.manifestFile, 'utf8')) as { partitions: Array<{ label: string; startBytes: number; sizeBytes: number }> };
  return manifest.partitions.find((p) => p.label === 'keylessgo-root')!;
}

describe('two Tang servers, threshold 1', () => {
  it('unlocks through the second server when the first accepts connections and never answers', async () => {
    const disk = join(dir, 'two-tang.raw');
    await execa('cp', ['--sparse=always', image.raw, disk]);
    // Rebind offline, as the build does: the build-time binding (one server) goes, an sss binding over two servers comes.
    const root = await rootPartition();
    const { stdout: loop } = await execa('losetup', ['--show', '-f', '--offset', String(root.startBytes), '--sizelimit', String(root.sizeBytes), disk]);
    try {
      const adv = JSON.parse(await readFile(image.tang.advFile, 'utf8')) as unknown;
      // cryptsetup luksKillSlot (under unbind) reads a remaining passphrase from stdin when stdin is no terminal.
      await execa('clevis', ['luks', 'unbind', '-f', '-d', loop, '-s', '1'], { inputFile: image.passphraseFile });
      const config = { t: 1, pins: { tang: [{ url: `http://${TANG_GUEST_ADDRESS}`, adv }, { url: `http://${SECOND_TANG_GUEST_ADDRESS}`, adv }] } };
      await execa('clevis', ['luks', 'bind', '-y', '-d', loop, '-k', image.passphraseFile, 'sss', JSON.stringify(config)]);
      expect((await execa('clevis', ['luks', 'list', '-d', loop])).stdout).toMatch(/^1: sss '\{"t":1,"pins":\{"tang":\[\{"url":"http:\/\/10\.0\.2\.100"\},\{"url":"http:\/\/10\.0\.2\.101"\}\]\}\}'$/m);
    } finally {
      await execa('losetup', ['-d', loop]);
    }
    const vm = await TestVm.create(image, join(dir, 'two-tang'), disk);
    const silentLog = join(vm.dir, 'silent.log');
    const secondLog = join(vm.dir, 'second.log');
    try {
      await vm.boot([
        { keyDir: image.tang.keyDir, logFile: silentLog, behaviour: 'silent' },
        { keyDir: image.tang.keyDir, logFile: secondLog, address: SECOND_TANG_GUEST_ADDRESS },
      ]);
      const seconds = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
      process.stderr.write(`unlock-policy: two Tang servers, the first silent: OpenSSH after ${seconds} s\n`);
      await expectEncryptedRoot(vm);
      // The machine did ask the silent server, and got its key from the second one.
      expect(await readFile(silentLog, 'utf8')).toMatch(/ silent$/m);
      expect(recoveries(await readFile(secondLog, 'utf8'))).toBeGreaterThan(0);
    } finally {
      await vm.stop();
    }
  });
});

/**
 * One machine with a TPM (swtpm), enrolled once and then kept for years in a few boots. Its
 * firmware is OVMF's Secure Boot build with the machine's own variable store: Secure Boot off
 * (no keys) at first; a copy of the store with Microsoft's keys turns it on (PCR 7 changes and
 * nothing else), a fresh copy without keys turns it off again.
 */
describe('TPM2 and Tang, from enrollment through day two', () => {
  let vm: TestVm;
  let tangLog: string;
  let served: { keyDir: string; logFile: string };
  /** Tang down as a server that closes every connection: the tang pin fails at once. */
  let down: { keyDir: string; logFile: string; behaviour: 'refuse' };
  let thisTpm: { stateDir: string };
  let vars: string;
  let recoveryFile: string;
  let recovery: string;
  /** dropbear's host keys after enrollment (OpenSSH public key lines), as enroll reported them. */
  let dropbearKeys: string[];
  let tpm2Slot: string | undefined;
  let pcr7AtBind: string;

  const machine = () => ({ tpm: thisTpm, secureBootVars: vars });
  const cli = async (args: string[]) => {
    const result = await execa('node', [CLI, ...args, '--host', '127.0.0.1', '--port', String(vm.port), '--key', image.privateKey, '--json'], { all: true, reject: false });
    const record = JSON.parse(String(result.stdout).split('\n').find((line) => line.startsWith('{')) ?? '{}') as { result?: string; error?: string; details?: any };
    return { exitCode: result.exitCode, all: String(result.all), record };
  };
  /** Firmware variables for the next boot: Secure Boot on (Microsoft's keys) or off (none). */
  const secureBoot = (on: boolean) => copyFile(on ? OVMF['uefi-secureboot'].varsTemplate : OVMF.uefi.varsTemplate, vars);

  beforeAll(async () => {
    vm = await TestVm.create(image, join(dir, 'tpm'));
    const tang = await createTang(vm.dir);
    tangLog = join(vm.dir, 'tang.log');
    served = { keyDir: tang.keyDir, logFile: tangLog };
    down = { ...served, behaviour: 'refuse' };
    thisTpm = { stateDir: join(vm.dir, 'tpm-this') };
    vars = join(vm.dir, 'OVMF_VARS.fd');
    recoveryFile = join(vm.dir, 'recovery-key');
    await secureBoot(false);
  });
  afterAll(async () => {
    await vm?.stop();
  });

  it('enroll --tang --tpm2 --threshold 2 with the default dropbear action: new dropbear host keys appended to the initramfs', async () => {
    // The build-time Tang's keys are gone (a new server answers): unlock over SSH first.
    await vm.boot(served, {}, machine());
    await vm.waitFor(/dropbear/, BOOT_TIMEOUT_MS);
    expect((await vm.ssh('cryptroot-unlock', image.passphrase)).output).toMatch(/set up successfully/);
    await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
    const started = performance.now();
    const enrolled = await cli(['enroll', '--passphrase-file', image.passphraseFile, '--tang', `http://${TANG_GUEST_ADDRESS}`, '--tpm2', '--threshold', '2', '--recovery-key-out', recoveryFile]);
    const seconds = (performance.now() - started) / 1000;
    expect(enrolled.exitCode, enrolled.all).toBe(0);
    const report = enrolled.record.details as { tang: Array<{ pin: string; servers: Array<{ url: string }> }>; dropbear: string; dropbearHostKeys: string[]; stepSeconds: Record<string, number> };
    process.stderr.write(`unlock-policy: enroll --tang --tpm2 --threshold 2 (dropbear: new host keys) took ${seconds.toFixed(1)} s; steps ${JSON.stringify(report.stepSeconds)}\n`);
    expect(report.tang).toHaveLength(1);
    expect(report.tang[0]!.pin).toBe('sss');
    expect(report.tang[0]!.servers.map((s) => s.url)).toEqual([`http://${TANG_GUEST_ADDRESS}`]);
    expect(report.dropbear).toBe('regenerate-key');
    dropbearKeys = report.dropbearHostKeys;
    const manifest = JSON.parse(await readFile(image.manifestFile, 'utf8')) as { dropbear: { hostKeys: Array<{ type: string; fingerprint: string }> } };
    expect(dropbearKeys.map((line) => line.split(' ')[0]).sort()).toEqual(manifest.dropbear.hostKeys.map((k) => k.type).sort());
    for (const line of dropbearKeys) expect(manifest.dropbear.hostKeys.map((k) => k.fingerprint)).not.toContain(fingerprintOf(line));
    recovery = (await readFile(recoveryFile, 'utf8')).trim();
    const list = (await vm.ssh(`clevis luks list -d ${ROOT_DEVICE}`)).output;
    expect(list).toMatch(/^\d+: sss '\{"t":2,"pins":\{"tang":\[\{"url":"http:\/\/10\.0\.2\.100"\}\],"tpm2":\[\{[^}]*"pcr_bank":"sha256","pcr_ids":"7"\}\]\}\}'$/m);
    // The unit's journal keeps every step's output; the initramfs got the keys as a second archive.
    const journal = (await vm.ssh('journalctl --no-pager -o cat -u keylessgo-enroll-initramfs')).output;
    expect(journal).toMatch(/^keylessgo-step: running: new dropbear host keys$/m);
    expect(journal).toMatch(/^\/boot\/initrd\.img-\S+: new dropbear host keys appended at byte \d+$/m);
    expect(journal).toMatch(/^keylessgo-step: done$/m);
    await vm.powerOff();
  });

  it('reboots keyless (TPM and Tang); status shows the TPM binding unsealing and the lockout counter', async () => {
    const requests = recoveries(await readFile(tangLog, 'utf8'));
    await vm.boot(served, {}, machine());
    const both = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
    process.stderr.write(`unlock-policy: TPM2 and Tang (threshold 2): OpenSSH after ${both} s\n`);
    await expectEncryptedRoot(vm);
    expect(recoveries(await readFile(tangLog, 'utf8'))).toBeGreaterThan(requests);
    const status = await cli(['status']);
    expect(status.exitCode, status.all).toBe(0);
    expect(status.record.details.bindings).toEqual([expect.objectContaining({ pin: 'sss', decrypts: true, tpm2Unseals: true })]);
    expect(status.record.details.tpm).toMatchObject({ counter: 0, maxTries: 3 });
    expect(status.record.details.espInStep).toBe(true);
  });

  it('the ESP follows shim and GRUB: apt-get reinstall replaces stale loaders, shim last, and says so in the journal', async () => {
    // Loaders the firmware would refuse, as after Microsoft or Debian revoked the ones written at build time.
    const revoked = [['/usr/lib/shim/shimx64.efi', 'BOOTX64.EFI'], ['/usr/lib/shim/fbx64.efi', 'grubx64.efi'], ['/usr/lib/shim/mmx64.efi', 'mmx64.efi']];
    const esp = await vm.ssh(`set -e; systemctl start boot-efi.mount; findmnt -no SOURCE /boot/efi; ${revoked.map(([from, to]) => `cp ${from} /boot/efi/EFI/BOOT/${to}`).join('; ')}; sync`);
    expect(esp.output.trim()).toBe('/dev/vda2');
    const stale = await vm.ssh('/usr/lib/keylessgo/esp-sync --check');
    expect(stale.exitCode).toBe(1);
    expect(stale.output.match(/^keylessgo-esp-sync: out of step: EFI\/BOOT\/\S+ on \/dev\/vda2 differs from /gm)).toHaveLength(3);
    const debs = await packageFiles(['shim-signed', 'shim-helpers-amd64-signed', 'grub-efi-amd64-signed']);
    for (const deb of debs) await vm.upload(`/root/${basename(deb)}`, await readFile(deb));
    const started = performance.now();
    const apt = await vm.ssh(`DEBIAN_FRONTEND=noninteractive apt-get install --reinstall -y -q ${debs.map((deb) => `/root/${basename(deb)}`).join(' ')}`);
    process.stderr.write(`unlock-policy: apt-get install --reinstall of shim and GRUB: ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
    expect(apt.exitCode, apt.output).toBe(0);
    expect(apt.output).not.toMatch(/^(E|W): /m);
    const replaced = [...apt.output.matchAll(/^keylessgo-esp-sync: replaced (EFI\/BOOT\/\S+) on /gm)].map((m) => m[1]);
    expect(replaced).toEqual(['EFI/BOOT/grubx64.efi', 'EFI/BOOT/mmx64.efi', 'EFI/BOOT/BOOTX64.EFI']);
    const check = await vm.ssh('cd /boot/efi/EFI/BOOT && cmp BOOTX64.EFI /usr/lib/shim/shimx64.efi.signed && cmp grubx64.efi /usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed && cmp mmx64.efi /usr/lib/shim/mmx64.efi.signed && ls -a && journalctl --no-pager -o cat -t keylessgo-esp-sync');
    expect(check.exitCode, check.output).toBe(0);
    expect(check.output).not.toContain('keylessgo-new');
    expect(check.output.match(/^replaced EFI\/BOOT\/\S+ on \/dev\/vda2 \(sha256 [0-9a-f]{16}\.\.\. -> [0-9a-f]{16}\.\.\.\) with \/usr\/lib\/\S+ \(\S+ \S+\)$/gm)).toHaveLength(3);
    // In step now: a second run by hand changes nothing and says nothing; --check agrees.
    expect(await vm.ssh('/usr/lib/keylessgo/esp-sync')).toMatchObject({ exitCode: 0, output: '' });
    expect(await vm.ssh('/usr/lib/keylessgo/esp-sync --check')).toMatchObject({ exitCode: 0, output: '' });
    await vm.powerOff();
  });

  it('Secure Boot turned on without reseal --prepare: stops at dropbear (its new key), the recovery passphrase unlocks, reseal --finish seals to the new PCR 7', async () => {
    await secureBoot(true);
    await vm.boot(served, {}, machine());
    await expectStaysLocked(vm, tangLog);
    const { stdout: scanned } = await execa('ssh-keyscan', ['-t', 'ed25519', '-p', String(vm.port), '127.0.0.1']);
    expect(scanned.trim().split(/\s+/).slice(1).join(' ')).toBe(dropbearKeys.find((line) => line.startsWith('ssh-ed25519 '))!.split(' ').slice(0, 2).join(' '));
    const knownHosts = join(vm.dir, 'known_hosts-dropbear');
    await writeFile(knownHosts, dropbearKeys.map((line) => `[127.0.0.1]:${vm.port} ${line}\n`).join(''));
    const unlocked = await cli(['unlock', '--passphrase-file', recoveryFile, '--known-hosts', knownHosts]);
    expect(unlocked.exitCode, unlocked.all).toBe(0);
    expect(unlocked.record.details).toMatchObject({ outcome: 'unlocked' });
    await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
    // Booted from the loaders esp-sync wrote, with Secure Boot enforced.
    expect((await vm.ssh(SECURE_BOOT_CHECK.command)).output).toMatch(/^SecureBoot=1$/m);
    const before = await cli(['status']);
    expect(before.record.details.bindings).toEqual([expect.objectContaining({ decrypts: false, tpm2Unseals: false })]);
    const resealed = await cli(['reseal', '--finish', '--recovery-key', recoveryFile]);
    expect(resealed.exitCode, resealed.all).toBe(0);
    expect(resealed.record.details).toMatchObject({ result: 'resealed', resealed: [expect.objectContaining({ policy: 'sss 2 of (tang http://10.0.2.100, tpm2 sha256:7)' })] });
    // The next boot, keyless, shows the new binding unseals.
    await vm.powerOff();
  });

  it('boots keyless under Secure Boot through the resealed binding; reseal --prepare adds the temporary binding', async () => {
    await vm.boot(served, {}, machine());
    const seconds = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
    process.stderr.write(`unlock-policy: Secure Boot on, resealed TPM2 and Tang: OpenSSH after ${seconds} s\n`);
    await expectEncryptedRoot(vm);
    const prepared = await cli(['reseal', '--prepare']);
    expect(prepared.exitCode, prepared.all).toBe(0);
    expect(prepared.record.details).toMatchObject({ result: 'prepared', temporary: { slot: 30, policy: 'tang http://10.0.2.100' } });
    // Nothing changed yet: --finish keeps the temporary binding.
    const early = await cli(['reseal', '--finish']);
    expect(early.record).toMatchObject({ result: 'skipped', details: { result: 'unchanged' } });
    const status = await cli(['status']);
    expect(status.record.details.bindings).toHaveLength(2);
    expect(status.record.details.bindings).toEqual(expect.arrayContaining([expect.objectContaining({ pin: 'sss', tpm2Unseals: true }), expect.objectContaining({ pin: 'tang', keyslots: [30], temporary: true, decrypts: true })]));
    await vm.powerOff();
  });

  it('Secure Boot turned off after --prepare: keyless through the temporary binding; --finish reseals and removes it', async () => {
    await secureBoot(false);
    await vm.boot(served, {}, machine());
    const seconds = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
    process.stderr.write(`unlock-policy: PCR 7 changed after reseal --prepare: OpenSSH after ${seconds} s\n`);
    await expectEncryptedRoot(vm);
    const finished = await cli(['reseal', '--finish']);
    expect(finished.exitCode, finished.all).toBe(0);
    expect(finished.record.details).toMatchObject({ result: 'resealed', removed: expect.arrayContaining([30]) });
    expect((await vm.ssh(`cryptsetup luksDump ${ROOT_DEVICE} | sed -n '/^Keyslots:/,/^Tokens:/p' | grep -c ': luks2$'`)).output.trim()).toBe('2');
    expect((await vm.ssh(`clevis luks list -d ${ROOT_DEVICE}`)).output).toMatch(/^\d+: sss '\{"t":2,"pins":\{"tang":\[\{"url":"http:\/\/10\.0\.2\.100"\}\],"tpm2":\[\{[^}]*\}\]\}\}'\n?$/);
    await vm.powerOff();
  });

  it('one more reboot is keyless through the resealed TPM binding', async () => {
    await vm.boot(served, {}, machine());
    const seconds = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
    process.stderr.write(`unlock-policy: after reseal --finish: OpenSSH after ${seconds} s\n`);
    await expectEncryptedRoot(vm);
    await vm.powerOff();
  });

  it('without Tang it stays at dropbear; the recovery passphrase unlocks, and a TPM2-only binding is added', async () => {
    await vm.boot(down, {}, machine());
    await expectStaysLocked(vm, tangLog);
    expect((await vm.ssh('cryptroot-unlock', recovery)).output).toMatch(/set up successfully/);
    await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
    const bind = await vm.ssh(`set -e; umask 077; cat > /run/recovery; clevis luks bind -y -d ${ROOT_DEVICE} -k /run/recovery tpm2 '{"pcr_bank":"sha256","pcr_ids":"7"}'; shred -u /run/recovery; clevis luks list -d ${ROOT_DEVICE}`, recovery);
    expect(bind.exitCode, bind.output).toBe(0);
    expect(await readFile(tangLog, 'utf8')).toMatch(/ refused$/m);
    tpm2Slot = /^(\d+): tpm2 '\{[^}]*"pcr_bank":"sha256","pcr_ids":"7"\}'$/m.exec(bind.output)?.[1];
    expect(tpm2Slot, bind.output).toBeDefined();
    pcr7AtBind = await pcr7(vm);
    await vm.powerOff();
  });

  it("in another machine (another TPM), with Tang up, neither binding unlocks", async () => {
    const requests = recoveries(await readFile(tangLog, 'utf8'));
    await vm.boot(served, {}, { ...machine(), tpm: { stateDir: join(vm.dir, 'tpm-other') } });
    await expectStaysLocked(vm, tangLog);
    expect(recoveries(await readFile(tangLog, 'utf8'))).toBeGreaterThan(requests);
    await vm.stop();
  });

  it('with Tang refusing, the TPM2-only binding unlocks by itself', async () => {
    const requests = recoveries(await readFile(tangLog, 'utf8'));
    await vm.boot(down, {}, machine());
    const tpmAlone = await vm.waitFor(/OpenSSH/, TPM_ALONE_TIMEOUT_MS).catch(async (error: Error) => {
      if (error.name !== 'TimeoutError') throw error;
      // Still locked: unlock with the recovery passphrase and say what the TPM2-only binding's unseal reports now.
      await vm.ssh('cryptroot-unlock', recovery);
      await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
      const pass = await vm.ssh(`clevis luks pass -d ${ROOT_DEVICE} -s ${tpm2Slot} | wc -c`);
      throw new Error(`TPM2 alone did not unlock within ${TPM_ALONE_TIMEOUT_MS / 1000} s; PCR 7 at bind ${pcr7AtBind}, now ${await pcr7(vm)}; clevis luks pass -s ${tpm2Slot}: ${pass.output}`);
    });
    process.stderr.write(`unlock-policy: TPM2 alone (Tang refusing): OpenSSH after ${tpmAlone} s\n`);
    await expectEncryptedRoot(vm);
    // Tang was asked (the sss binding) and refused; no key came from it.
    expect(recoveries(await readFile(tangLog, 'utf8'))).toBe(requests);
    expect(await pcr7(vm)).toBe(pcr7AtBind);
  });
});

/** The root's LUKS device on the booted system. */
const ROOT_DEVICE = '"$(cryptsetup status cryptroot | awk \'/device:/ {print $2}\')"';

/** An OpenSSH public key line's SHA256 fingerprint, as the manifest gives dropbear's. */
function fingerprintOf(line: string): string {
  return `SHA256:${createHash('sha256').update(Buffer.from(line.split(' ')[1]!, 'base64')).digest('base64').replace(/=+$/, '')}`;
}

/** The .deb files of `packages` in the test run's package cache (the versions the image has). */
async function packageFiles(packages: string[]): Promise<string[]> {
  const dir = join(cacheDirOf(image.dir), 'packages', 'bookworm');
  const files = await readdir(dir);
  return packages.map((name) => {
    const file = files.find((f) => f.startsWith(`${name}_`) && f.endsWith('.deb'));
    if (!file) throw new Error(`${name} is not in ${dir}`);
    return join(dir, file);
  });
}
