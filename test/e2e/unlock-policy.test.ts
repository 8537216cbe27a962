/**
 * Unlock policies beyond one Tang server, proven by booting (the power-cut case, Tang up
 * after the machine, is in nbde.test.ts's keyless boot):
 *
 *   1. Two Tang servers, threshold 1, the first silent (accepts, never answers): a copy of
 *      the fixture image rebound offline on the host, no enrollment; it unlocks through the
 *      second server.
 *   2. TPM2 and Tang: one enrollment (`enroll --tang URL --tpm2 --threshold 2`) on a machine
 *      with a TPM (swtpm), then power cycles of the same disk, ordered so that each adds to
 *      what the next needs: both present (unlocks by itself); Tang down (stays at dropbear,
 *      the recovery passphrase unlocks over SSH, and a TPM2-only binding is added); another
 *      machine's TPM with Tang up (neither binding unlocks); this machine's TPM with Tang down
 *      again (the TPM2-only binding unlocks by itself).
 */
import { execa } from 'execa';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { SECOND_TANG_GUEST_ADDRESS, TANG_GUEST_ADDRESS } from '../../src/qemu/vm.js';
import { CLI } from './fixture.js';
import { createTang } from './tang.js';
import { expectEncryptedRoot, TestVm } from './vm-session.js';

const image = inject('image');
const BOOT_TIMEOUT_MS = 10 * 60 * 1000;
/** How long a machine that must not unlock by itself is watched after dropbear answers. */
const STAYS_LOCKED_MS = 75_000;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(image.dir, 'unlock-policy-'));
});

afterAll(async () => {
  if (!process.env.KEYLESSGO_KEEP_FIXTURE) await rm(dir, { recursive: true, force: true });
});


/** Dropbear answers, and for STAYS_LOCKED_MS after that the booted system (OpenSSH) does not. */
async function expectStaysLocked(vm: TestVm): Promise<void> {
  await vm.waitFor(/dropbear/, BOOT_TIMEOUT_MS);
  const unlocked = await vm.waitFor(/OpenSSH/, STAYS_LOCKED_MS).then(
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
/** Enrollment and five boots of one machine: more than the default test timeout under TCG (1115 s without the last boot in CI). */
const POWER_CYCLES_TIMEOUT_MS = 40 * 60 * 1000;

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

describe('TPM2 and Tang', () => {
  it('needs both with --threshold 2, falls back to SSH without Tang, refuses another TPM, and a TPM2-only binding unlocks alone', async () => {
    const vm = await TestVm.create(image, join(dir, 'tpm'));
    const tang = await createTang(vm.dir);
    const tangLog = join(vm.dir, 'tang.log');
    const served = { keyDir: tang.keyDir, logFile: tangLog };
    // Tang down as a server that closes every connection: the tang pin fails at once. clevis-initramfs
    // tries the bindings one after the other, each to its end, so a Tang that hangs would hold up the next one.
    const down = { ...served, behaviour: 'refuse' as const };
    const thisTpm = { stateDir: join(vm.dir, 'tpm-this') };
    const recoveryFile = join(vm.dir, 'recovery-key');
    try {
      // Enrollment: the build-time Tang's keys are gone (a new server answers), so unlock over SSH first.
      await vm.boot(served, {}, { tpm: thisTpm });
      await vm.waitFor(/dropbear/, BOOT_TIMEOUT_MS);
      expect((await vm.ssh('cryptroot-unlock', image.passphrase)).output).toMatch(/set up successfully/);
      await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
      const started = performance.now();
      const enrolled = await execa('node', [CLI, 'enroll', '--host', '127.0.0.1', '--port', String(vm.port), '--key', image.privateKey, '--passphrase-file', image.passphraseFile,
        '--tang', `http://${TANG_GUEST_ADDRESS}`, '--tpm2', '--threshold', '2', '--recovery-key-out', recoveryFile, '--dropbear', 'keep', '--json'], { all: true, reject: false });
      process.stderr.write(`unlock-policy: enroll --tang --tpm2 --threshold 2 took ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
      expect(enrolled.exitCode, enrolled.all).toBe(0);
      // --json: one record per host, the enroll report in its details.
      const record = JSON.parse(enrolled.stdout) as { result: string; details: { tang: Array<{ pin: string; servers: Array<{ url: string }> }> } };
      expect(record.result).toBe('ok');
      expect(record.details.tang).toHaveLength(1);
      expect(record.details.tang[0]!.pin).toBe('sss');
      expect(record.details.tang[0]!.servers.map((s) => s.url)).toEqual([`http://${TANG_GUEST_ADDRESS}`]);
      const recovery = (await readFile(recoveryFile, 'utf8')).trim();
      const list = (await vm.ssh('clevis luks list -d "$(cryptsetup status cryptroot | awk \'/device:/ {print $2}\')"')).output;
      expect(list).toMatch(/^\d+: sss '\{"t":2,"pins":\{"tang":\[\{"url":"http:\/\/10\.0\.2\.100"\}\],"tpm2":\[\{[^}]*"pcr_bank":"sha256","pcr_ids":"7"\}\]\}\}'$/m);
      await vm.powerOff();

      // Both the TPM and Tang: unlocks by itself.
      let requests = recoveries(await readFile(tangLog, 'utf8'));
      await vm.boot(served, {}, { tpm: thisTpm });
      const both = await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
      process.stderr.write(`unlock-policy: TPM2 and Tang (threshold 2): OpenSSH after ${both} s\n`);
      await expectEncryptedRoot(vm);
      expect(recoveries(await readFile(tangLog, 'utf8'))).toBeGreaterThan(requests);
      await vm.powerOff();

      // The TPM without Tang: stays at dropbear; the recovery passphrase unlocks over SSH. Then a TPM2-only binding.
      await vm.boot(down, {}, { tpm: thisTpm });
      await expectStaysLocked(vm);
      expect((await vm.ssh('cryptroot-unlock', recovery)).output).toMatch(/set up successfully/);
      await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
      const bind = await vm.ssh(`set -e; umask 077; cat > /run/recovery; dev=$(cryptsetup status cryptroot | awk '/device:/ {print $2}'); clevis luks bind -y -d "$dev" -k /run/recovery tpm2 '{"pcr_bank":"sha256","pcr_ids":"7"}'; shred -u /run/recovery; clevis luks list -d "$dev"`, recovery);
      expect(bind.exitCode, bind.output).toBe(0);
      expect(await readFile(tangLog, 'utf8')).toMatch(/ refused$/m);
      const tpm2Slot = /^(\d+): tpm2 '\{[^}]*"pcr_bank":"sha256","pcr_ids":"7"\}'$/m.exec(bind.output)?.[1];
      expect(tpm2Slot, bind.output).toBeDefined();
      const pcr7AtBind = await pcr7(vm);
      await vm.powerOff();

      // Another machine's TPM (fresh state), Tang up: Tang answers, yet neither binding unlocks.
      requests = recoveries(await readFile(tangLog, 'utf8'));
      await vm.boot(served, {}, { tpm: { stateDir: join(vm.dir, 'tpm-other') } });
      await expectStaysLocked(vm);
      expect(recoveries(await readFile(tangLog, 'utf8'))).toBeGreaterThan(requests);
      await vm.stop();

      // This machine's TPM, Tang refusing every connection: only the TPM2-only binding can unlock (the sss one needs Tang as well).
      requests = recoveries(await readFile(tangLog, 'utf8'));
      await vm.boot(down, {}, { tpm: thisTpm });
      const tpmAlone = await vm.waitFor(/OpenSSH/, TPM_ALONE_TIMEOUT_MS).catch(async (error: Error) => {
        if (error.name !== 'TimeoutError') throw error;
        // Still locked: unlock with the recovery passphrase and say what the TPM2-only binding's unseal reports now.
        await vm.ssh('cryptroot-unlock', recovery);
        await vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS);
        const pass = await vm.ssh(`clevis luks pass -d "$(cryptsetup status cryptroot | awk '/device:/ {print $2}')" -s ${tpm2Slot} | wc -c`);
        throw new Error(`TPM2 alone did not unlock within ${TPM_ALONE_TIMEOUT_MS / 1000} s; PCR 7 at bind ${pcr7AtBind}, now ${await pcr7(vm)}; clevis luks pass -s ${tpm2Slot}: ${pass.output}`);
      });
      process.stderr.write(`unlock-policy: TPM2 alone (Tang refusing): OpenSSH after ${tpmAlone} s\n`);
      await expectEncryptedRoot(vm);
      // Tang was asked (the sss binding) and refused; no key came from it.
      expect(recoveries(await readFile(tangLog, 'utf8'))).toBe(requests);
      expect(await pcr7(vm)).toBe(pcr7AtBind);
    } finally {
      await vm.stop();
    }
  }, POWER_CYCLES_TIMEOUT_MS);
});
