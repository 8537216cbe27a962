/**
 * `keylessgo boot-test`: boots an image in a throwaway VM, unlocks it over SSH to dropbear
 * in the initramfs, then checks the booted system. Phases, in order:
 *
 *   dropbear  wait for dropbear's SSH banner on the forwarded port
 *   negative  (optional) password, unknown key, port forwarding and a wrong passphrase are refused
 *   unlock    cryptroot-unlock with the passphrase on stdin; record dropbear's host key
 *   booted    wait for OpenSSH's banner on the same port
 *   checks    root on dm-crypt, LUKS2 parameters, mounts, systemctl is-system-running
 *
 * A failing phase ends the test; QEMU is stopped and the overlay removed in every case
 * (also on Ctrl-C and on the overall timeout), and the result is always written.
 */
import { randomBytes } from 'node:crypto';
import { access, constants, mkdir, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { AnyAuthMethod } from 'ssh2';
import { HostError, InputError, InterruptedError } from '../errors.js';
import { HostRunner } from '../host/run.js';
import { probeImageFormat, type FormatPolicy, type ImageFormat } from '../inspect/disk-format.js';
import { missingTools } from '../host/tools.js';
import type { Logger } from '../log.js';
import { CleanupStack } from '../base/cleanup.js';
import { markChildProcesses, ownedTempDir } from '../base/owner.js';
import { SignalGuard, unwindAll } from '../pipeline/runner.js';
import { readPassphraseFile } from '../base/secrets.js';
import { chooseAccel, type AccelChoice } from './accel.js';
import { BOOT_ANALYSIS_COMMAND, check, guestChecks, hostKeyCheck, SYSTEM_RUNNING_WAIT_SECONDS, type Check, type GuestCheckOptions } from './checks.js';
import { firmwareArgs, firmwareFiles, isSecureBoot, type Firmware } from './firmware.js';
import { readBootManifest, type BootManifest } from '../formats/build-manifest.js';
import { hasPassed, writeResultJson, type BootTestResult, type Milestones } from './report.js';
import { exec, isAuthRefusal, openSession, readBanner, readPrivateKey, runOnce, tryPortForwarding, unknownKeyAuth, type HostKey, type SshOptions } from '../ssh/client.js';
import { pollUntil, secondsSince } from './wait.js';
import { createOverlay, freePort, QEMU, Vm, type Accel } from './vm.js';

export interface BootTestOptions {
  image: string;
  privateKeyFile: string;
  passphraseFile: string;
  /** Default: manifest.json beside the image. */
  manifestFile?: string;
  /** Where serial.log, qemu.log and result.json go. */
  outDir: string;
  firmware: Firmware;
  accel: AccelChoice;
  memoryMiB: number;
  cpus: number;
  timeoutSeconds: number;
  negativeChecks: boolean;
  /** The guest's disk: the image followed by empty space up to this size (default: the image's size). */
  diskSizeBytes?: number;
  /** Which formats and qcow2 features are booted (default: raw and self-contained qcow2, as inspect). */
  formatPolicy?: FormatPolicy;
  /** NICs in all; the first nics-1 are connected to nothing (default 1). */
  nics?: number;
  /** A config drive (ISO 9660) attached as a CD. */
  configDrive?: string;
  /** The guest's static address to forward SSH to (default: the one QEMU's DHCP gives). */
  guestAddress?: string;
  /** Logical (and physical) sector size of the guest's disk (default: the one the image was built for). */
  sectorSize?: number;
  /** A TPM 2.0 (swtpm): a fresh one per run, or the one whose state is in `stateDir` (kept). */
  tpm?: { stateDir?: string };
  log: Logger;
}

const USER = 'root';
const BANNER_POLL_MS = 1000;
const BANNER_READ_MS = 5000;
const SSH_TIMEOUT_MS = 60_000;
/**
 * cryptroot-unlock returns once cryptsetup has run the keyslot's KDF. Under TCG the default
 * argon2id slot (64 MiB, 4 iterations) took ~10 s with bookworm's cryptsetup (libargon2) but
 * 63 s with trixie's (Argon2 from OpenSSL): allow minutes beyond the SSH timeout.
 */
const UNLOCK_EXTRA_MS = 240_000;
/** systemd-analyze critical-chain took over 60 s in a trixie guest under TCG on a busy host. */
const BOOT_ANALYSIS_EXTRA_MS = 120_000;
const UNLOCKED = /set up successfully/;

interface Inputs {
  /** Checked before anything boots: the same refusals as inspect (backing files, unknown features, ...). */
  image: { path: string } & ImageFormat;
  manifest: BootManifest;
  keyAuth: AnyAuthMethod;
  passphrase: string;
}

async function readInputs(options: BootTestOptions, log: Logger): Promise<Inputs> {
  await access(options.image, constants.R_OK).catch((error: Error) => {
    throw new InputError(`cannot read image: ${error.message}`, options.image);
  });
  const image = { path: options.image, ...(await probeImageFormat(new HostRunner(log), options.image, options.formatPolicy)) };
  const manifestFile = options.manifestFile ?? join(dirname(options.image), 'manifest.json');
  const manifest = await readBootManifest(manifestFile);
  const mode = options.firmware === 'bios' ? 'bios' : 'uefi';
  if (!manifest.bootModes.includes(mode)) {
    throw new InputError(`the image boots with ${manifest.bootModes.join(', ')} only (built for ${manifest.disk.sectorSize}-byte sectors): --firmware ${options.firmware} cannot boot it`, manifestFile);
  }
  const keyText = await readPrivateKey(options.privateKeyFile);
  const passphrase = await readPassphraseFile(options.passphraseFile);
  log.redactor.add(passphrase);
  const missing = await missingTools([QEMU, 'qemu-img', ...firmwareFiles(options.firmware), ...(options.tpm ? ['swtpm'] : [])]);
  if (missing.length > 0) throw new HostError(`missing for the boot test: ${missing.map((m) => `${m.name} (package ${m.package})`).join(', ')}`);
  return { image, manifest, keyAuth: { type: 'publickey', username: USER, key: keyText }, passphrase };
}

/** State shared by the phases of one run. */
interface Run {
  inputs: Inputs;
  checkOptions: GuestCheckOptions;
  port: number;
  guestPort: number;
  started: number;
  signal: AbortSignal;
  milestones: Milestones;
  checks: Check[];
  log: Logger;
}

function sshOptions(run: Run, extraMs = 0): SshOptions {
  return { timeoutMs: SSH_TIMEOUT_MS + extraMs, signal: run.signal };
}

function bannerMatching(run: Run, pattern: RegExp): Promise<string> {
  return pollUntil(async () => {
    const banner = await readBanner(run.port, BANNER_READ_MS);
    return banner && pattern.test(banner) ? banner : undefined;
  }, BANNER_POLL_MS, run.signal);
}

async function refusedLogin(run: Run, name: string, auth: AnyAuthMethod): Promise<Check> {
  try {
    const { client } = await openSession(run.port, auth, sshOptions(run));
    client.end();
    return check(name, false, 'login succeeded');
  } catch (error) {
    run.signal.throwIfAborted();
    return check(name, isAuthRefusal(error), (error as Error).message);
  }
}

/** Against dropbear, before the real unlock. A wrong passphrase uses up one of cryptsetup's tries. */
async function negativeChecks(run: Run): Promise<Check[]> {
  const checks = [
    await refusedLogin(run, 'dropbear refuses password login', { type: 'password', username: USER, password: randomBytes(12).toString('base64url') }),
    await refusedLogin(run, 'dropbear refuses a key not in authorized_keys', unknownKeyAuth(USER)),
  ];
  const { client } = await openSession(run.port, run.inputs.keyAuth, sshOptions(run));
  try {
    const forwards = await tryPortForwarding(client, run.guestPort);
    const refused = forwards.local.startsWith('refused') && forwards.remote.startsWith('refused');
    checks.push(check('dropbear refuses port forwarding', refused, `local: ${forwards.local}; remote: ${forwards.remote}`));
  } finally {
    client.end();
  }
  const wrong = await runOnce(run.port, run.inputs.keyAuth, 'cryptroot-unlock', { ...sshOptions(run, UNLOCK_EXTRA_MS), stdin: `wrong-${randomBytes(9).toString('base64url')}` });
  const stillLocked = !UNLOCKED.test(wrong.output) && (await readBanner(run.port, BANNER_READ_MS))?.includes('dropbear') === true;
  checks.push(check('a wrong passphrase does not unlock', stillLocked, lastLine(wrong.output)));
  return checks;
}

function lastLine(text: string): string {
  return text.trim().split('\n').filter(Boolean).at(-1) ?? '(no output)';
}

async function unlock(run: Run): Promise<HostKey> {
  const result = await runOnce(run.port, run.inputs.keyAuth, 'cryptroot-unlock', { ...sshOptions(run, UNLOCK_EXTRA_MS), stdin: run.inputs.passphrase });
  if (!UNLOCKED.test(result.output)) {
    run.checks.push(check('unlock with the passphrase', false, lastLine(result.output)));
    throw new Error(`the passphrase did not unlock the root volume; cryptroot-unlock said: ${lastLine(result.output)}`);
  }
  run.checks.push(check('unlock with the passphrase', true, lastLine(result.output)));
  return result.hostKey;
}

async function checkBootedSystem(run: Run, dropbearKey: HostKey): Promise<string> {
  const { client, hostKey } = await openSession(run.port, run.inputs.keyAuth, sshOptions(run));
  try {
    // The initramfs key sits unencrypted on /boot: the booted system must not reuse it.
    run.checks.push(check('OpenSSH host key differs from dropbear\'s', hostKey.fingerprint !== dropbearKey.fingerprint, `${hostKey.type} ${hostKey.fingerprint}`));
    for (const guestCheck of guestChecks(run.inputs.manifest, run.checkOptions)) {
      const { output } = await exec(client, guestCheck.command, sshOptions(run, SYSTEM_RUNNING_WAIT_SECONDS * 1000));
      run.checks.push(guestCheck.judge(output));
      if (guestCheck.name === 'systemctl is-system-running') run.milestones.running = secondsSince(run.started);
    }
    return (await exec(client, BOOT_ANALYSIS_COMMAND, sshOptions(run, BOOT_ANALYSIS_EXTRA_MS))).output;
  } finally {
    client.end();
  }
}

async function runPhases(run: Run, negative: boolean, setPhase: (phase: string) => void): Promise<string> {
  setPhase('waiting for dropbear');
  await bannerMatching(run, /dropbear/i);
  run.milestones.dropbear = secondsSince(run.started);
  run.log.info(`  dropbear answered after ${run.milestones.dropbear} s`);
  if (negative) {
    setPhase('negative checks against dropbear');
    run.checks.push(...(await negativeChecks(run)));
  }
  setPhase('unlocking');
  const dropbearKey = await unlock(run);
  run.milestones.unlocked = secondsSince(run.started);
  run.checks.push(hostKeyCheck(dropbearKey, run.inputs.manifest));
  run.log.info(`  unlocked after ${run.milestones.unlocked} s`);
  setPhase('waiting for the booted system (OpenSSH)');
  await bannerMatching(run, /OpenSSH/);
  run.milestones.booted = secondsSince(run.started);
  run.log.info(`  OpenSSH answered after ${run.milestones.booted} s`);
  setPhase('checking the booted system');
  return checkBootedSystem(run, dropbearKey);
}

interface Launch {
  options: BootTestOptions;
  inputs: Inputs;
  accel: Accel;
  host: HostRunner;
  workDir: string;
  serialLog: string;
}

/** The overlay and firmware copy go to `workDir`; QEMU's own messages to qemu.log beside the serial log. */
async function launchVm({ options, inputs, accel, host, workDir, serialLog }: Launch): Promise<Vm> {
  const overlay = join(workDir, 'overlay.qcow2');
  await createOverlay(host, inputs.image, overlay, options.diskSizeBytes);
  const config = {
    accel,
    cpus: options.cpus,
    memoryMiB: options.memoryMiB,
    firmwareArgs: await firmwareArgs(options.firmware, workDir),
    overlay,
    sectorSize: options.sectorSize ?? inputs.manifest.disk.sectorSize,
    hostPort: await freePort(),
    guestPort: inputs.manifest.dropbear.port,
    serialLog,
    nics: options.nics,
    guestAddress: options.guestAddress,
    cdrom: options.configDrive && resolve(options.configDrive),
    tpm: options.tpm && { stateDir: options.tpm.stateDir ? resolve(options.tpm.stateDir) : join(workDir, 'tpm') },
  };
  return Vm.start(config, join(dirname(serialLog), 'qemu.log'), options.log);
}

/** Aborts `target` when `source` aborts, with the same reason. */
function follow(target: AbortController, source: AbortSignal): void {
  if (source.aborted) target.abort(source.reason);
  else source.addEventListener('abort', () => target.abort(source.reason), { once: true });
}

function describeFailure(error: unknown, phase: string, timeoutSeconds: number): string {
  if (error instanceof DOMException && error.name === 'TimeoutError') return `timed out after ${timeoutSeconds} s while ${phase}`;
  return `${phase}: ${error instanceof Error ? error.message : String(error)}`;
}

export async function bootTest(options: BootTestOptions): Promise<BootTestResult> {
  const { log } = options;
  const inputs = await readInputs(options, log);
  const outDir = resolve(options.outDir);
  await mkdir(outDir, { recursive: true });
  const serialLog = join(outDir, 'serial.log');
  const result: BootTestResult = {
    image: resolve(options.image),
    firmware: options.firmware,
    accel: 'tcg',
    accelReason: '',
    cpus: options.cpus,
    memoryMiB: options.memoryMiB,
    milestones: {},
    checks: [],
    serialLog,
    passed: false,
  };

  const guard = new SignalGuard(log);
  const cleanup = new CleanupStack(log);
  // One signal ends the run early: Ctrl-C, the overall timeout, or (below) QEMU exiting. Plain
  // controllers and a timer rather than AbortSignal.timeout/any, whose unreferenced signals
  // Node may collect before they fire (seen here: a 15 s timeout never fired).
  const stop = new AbortController();
  follow(stop, guard.controller.signal);
  const deadline = setTimeout(() => stop.abort(new DOMException('overall timeout', 'TimeoutError')), options.timeoutSeconds * 1000);
  const host = new HostRunner(log, guard.controller.signal);
  let phase = 'preparing the VM';
  try {
    // Owned, and QEMU and swtpm carry the owner: a killed boot-test's VM and overlay are reaped
    // by the next build or `cache prune`, as a dead build's things are.
    await markChildProcesses();
    const workDir = await ownedTempDir('keylessgo-boot-test-');
    cleanup.add(`remove ${workDir}`, () => rm(workDir, { recursive: true, force: true }));
    phase = 'probing KVM';
    const decision = await chooseAccel(options.accel, { host, image: options.image, format: inputs.image.format, manifest: inputs.manifest, workDir });
    Object.assign(result, { accel: decision.accel, accelReason: decision.reason });
    log.info(`boot-test ${basename(options.image)}: ${options.firmware}, ${decision.accel} (${decision.reason})`);

    const vm = await launchVm({ options, inputs, accel: decision.accel, host, workDir, serialLog });
    cleanup.add('stop QEMU', () => vm.stop());
    follow(stop, vm.exited.signal);
    const run: Run = {
      inputs,
      checkOptions: { secureBoot: isSecureBoot(options.firmware), sectorSize: vm.config.sectorSize },
      port: vm.config.hostPort,
      guestPort: vm.config.guestPort,
      started: performance.now(),
      signal: stop.signal,
      milestones: result.milestones,
      checks: result.checks,
      log,
    };
    result.bootAnalysis = await runPhases(run, options.negativeChecks, (next) => (phase = next));
  } catch (error) {
    const interrupted = guard.controller.signal.aborted;
    result.error = describeFailure(interrupted ? guard.controller.signal.reason : error, phase, options.timeoutSeconds);
    if (interrupted) throw guard.controller.signal.reason as InterruptedError;
  } finally {
    clearTimeout(deadline);
    guard.enterCleanup();
    await unwindAll(cleanup, log);
    guard.dispose();
    result.passed = hasPassed(result);
    await writeResultJson(join(outDir, 'result.json'), result);
  }
  return result;
}
