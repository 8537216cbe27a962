#!/usr/bin/env node
/** keylessgo command line: commands only; the work lives in pipeline/, qemu/, inspect/ and host/. */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { dirname, join } from 'node:path';
import { InputError, reportFailure } from './errors.js';
import { missingTools, TOOL_PACKAGES, FILE_PACKAGES } from './host/tools.js';
import { formatColumns, formatSeconds, LOG_FORMATS, Logger, type LogFormat } from './log.js';
import { build, toolVersion } from './pipeline/build.js';
import { defaultCacheDir, StageCache } from './pipeline/cache.js';
import { reapDeadBuilds } from './pipeline/leftovers.js';
import { bootTest } from './qemu/boot-test.js';
import { enrollCommand, rebindCommand, resealCommand } from './nbde/enroll-command.js';
import { finishFleetCommand, fleetOptions, fleetTargets, type FleetCliOptions } from './fleet/options.js';
import { statusCommand } from './fleet/status.js';
import { unlockCommand } from './fleet/unlock.js';
import { MAX_VIRTUAL_BYTES, type FormatPolicy } from './inspect/disk-format.js';
import { formatInspectReport } from './inspect/format.js';
import { verifyImage } from './inspect/verify.js';
import { diffManifests, formatManifestDiff, readManifestArgument } from './inspect/manifest-diff.js';
import { inspectImage } from './inspect/inspect.js';
import { HostRunner } from './host/run.js';
import { DEFAULT_TPM2_PIN, parsePcrList } from './host/clevis.js';
import type { DropbearAction } from './nbde/enroll.js';
import { FIRMWARES, type Firmware } from './qemu/firmware.js';
import { formatTable } from './qemu/report.js';
import { isMirrorUrl, MIRROR_URL_MESSAGE } from './recipe/schema.js';
import { readAuthorizedKeys } from './recipe/authorized-keys.js';
import { formatSize, MiB, parseSize } from './recipe/size.js';

/**
 * Under `--log-format json` a usage error is one JSON error event like every other error.
 * Commander reports it before any option is parsed, so the flag is looked up in argv itself.
 */
function jsonLogRequested(argv: readonly string[]): boolean {
  return argv.some((arg, i) => arg === '--log-format=json' || (arg === '--log-format' && argv[i + 1] === 'json'));
}

const program = new Command();
program
  .name('keylessgo')
  .description('Build LUKS2-encrypted Debian whole-disk images that unlock over SSH (dropbear) and Tang (NBDE)')
  .version(await toolVersion())
  .showHelpAfterError()
  .exitOverride();
if (jsonLogRequested(process.argv)) {
  // Set before the commands are added: they inherit it. The help text after the error is left out.
  program.configureOutput({
    outputError: (message) => new Logger('info', { format: 'json' }).error(message.replace(/^error: /, '').trim()),
    writeErr: () => undefined,
  });
}

const verboseOption = new Option('-v, --verbose', 'print every host command and its output');
const quietOption = new Option('-q, --quiet', 'print only warnings and errors');
const logFormatOption = new Option('--log-format <format>', 'stderr: progress lines for people, or one JSON event per line').choices(LOG_FORMATS).default('human');

const allowExternalFilesOption = new Option('--allow-external-files', "read a qcow2's backing file or external data file from the host (refused by default: a crafted image could name any host file)");
const allowFormatOption = new Option('--allow-format <format...>', 'also read these formats (vmdk, vhdx, vpc, vdi, ...), which keylessgo does not check itself; only for images you trust');
const maxVirtualSizeOption = new Option('--max-virtual-size <size>', 'refuse images with a larger virtual disk').default(MAX_VIRTUAL_BYTES, '64TiB').argParser((value: string) => {
  const bytes = parseSize(value);
  if (bytes === undefined) throw new InvalidArgumentError('--max-virtual-size must be a size such as 64TiB');
  return bytes;
});

interface FormatOptions {
  allowExternalFiles?: boolean;
  allowFormat?: string[];
  maxVirtualSize: number;
}

function formatPolicy(opts: FormatOptions): FormatPolicy {
  return { allowExternalFiles: opts.allowExternalFiles ?? false, allowFormats: opts.allowFormat ?? [], maxVirtualBytes: opts.maxVirtualSize };
}

const cacheDirOption = new Option('--cache-dir <dir>', 'stage cache (bootstrap tree, base initramfs); env KEYLESSGO_CACHE_DIR').default(defaultCacheDir());

interface LogOptions {
  verbose?: boolean;
  quiet?: boolean;
  logFormat: LogFormat;
}

/** The running command's logger: an error it throws is reported through it, redacted and in its format. */
let log = new Logger();

function commandLogger(opts: LogOptions): Logger {
  log = new Logger(opts.verbose ? 'verbose' : opts.quiet ? 'quiet' : 'info', { format: opts.logFormat });
  return log;
}

function mirrorUrl(value: string): string {
  if (!isMirrorUrl(value)) throw new InvalidArgumentError(MIRROR_URL_MESSAGE);
  return value;
}

program
  .command('build')
  .description('build an encrypted whole-disk image from a recipe')
  .argument('<recipe>', 'recipe file (YAML)')
  .option('-o, --out <dir>', 'output directory', 'out')
  .option('--passphrase-file <file>', 'bootstrap LUKS passphrase (or env KEYLESSGO_PASSPHRASE_FILE); one line, mode 0600')
  .option('--authorized-keys <file>', 'SSH public keys allowed to unlock (overrides the recipe)')
  .option('--mirror <url>', 'Debian mirror (default: the recipe, else the host apt sources)', mirrorUrl)
  .addOption(cacheDirOption)
  .option('--no-cache', 'neither use nor fill the stage cache')
  .option('--export-boot', 'also write vmlinuz, initrd.img and cmdline beside the image (network-boot the kernel, unlock the local disk)')
  .option('--sign-key <file>', 'sign SHA256SUMS (SHA256SUMS.sig, ssh-keygen -Y sign, namespace keylessgo) with this OpenSSH private key, or a public key whose private key ssh-agent holds')
  .addOption(verboseOption)
  .addOption(quietOption)
  .addOption(logFormatOption)
  .action(async (recipePath: string, opts: { out: string; passphraseFile?: string; authorizedKeys?: string; mirror?: string; cacheDir: string; cache: boolean; exportBoot?: boolean; signKey?: string } & LogOptions) => {
    const log = commandLogger(opts);
    const started = performance.now();
    const ctx = await build({
      recipePath,
      outDir: opts.out,
      passphraseFile: opts.passphraseFile,
      authorizedKeysFile: opts.authorizedKeys,
      mirror: opts.mirror,
      cacheDir: opts.cache ? opts.cacheDir : null,
      exportBoot: opts.exportBoot ?? false,
      signKeyFile: opts.signKey,
      log,
    });
    const seconds = (performance.now() - started) / 1000;
    const checksums = join(ctx.outDir, 'SHA256SUMS');
    const manifest = join(ctx.outDir, 'manifest.json');
    const summary = [
      `built ${ctx.recipe.name} in ${formatSeconds(seconds)}:`,
      ...ctx.state.outputs.map((output) => `  ${output.path}  ${formatSize(output.bytes)}`),
      `  ${checksums}, ${manifest}`,
    ];
    log.result(summary.join('\n'), { recipe: ctx.recipe.name, outputs: ctx.state.outputs, checksums, manifest, stageSeconds: ctx.state.stageSeconds, cache: ctx.state.cacheKeys }, seconds);
  });

function positiveInteger(name: string) {
  return (value: string): number => {
    const number = Number(value);
    if (!Number.isInteger(number) || number <= 0) throw new InvalidArgumentError(`${name} must be a positive whole number`);
    return number;
  };
}

function diskSize(value: string): number {
  const bytes = parseSize(value);
  if (bytes === undefined || bytes % MiB !== 0) throw new InvalidArgumentError('--disk-size must be a size in whole MiB such as 6GiB');
  return bytes;
}

function tpm2PcrList(value: string): number[] {
  try {
    return parsePcrList(value);
  } catch (error) {
    throw new InvalidArgumentError(`--tpm2-pcrs: ${(error as Error).message}`);
  }
}

/** QEMU's user network is 10.0.2.0/24: .2 is the host, .3 DNS, .15 the DHCP address. */
function guestAddress(value: string): string {
  const match = /^10\.0\.2\.(\d{1,3})$/.exec(value);
  if (!match || Number(match[1]) < 4 || Number(match[1]) > 254) throw new InvalidArgumentError("--guest-address must be an address in QEMU's user network, 10.0.2.4 to 10.0.2.254");
  return value;
}

program
  .command('boot-test')
  .description('boot an image in a throwaway QEMU VM, unlock it over SSH and check the booted system')
  .argument('<image>', 'disk image (qcow2 or raw); only read, through a temporary overlay')
  .requiredOption('--key <file>', 'SSH private key allowed to unlock (and to log in as root)')
  .option('--passphrase-file <file>', 'LUKS passphrase to unlock with (or env KEYLESSGO_PASSPHRASE_FILE)')
  .option('--manifest <file>', "the build's manifest.json (default: beside the image)")
  .option('-o, --out <dir>', 'directory for serial.log, qemu.log and result.json (default: boot-test-<firmware> beside the image)')
  .addOption(new Option('--firmware <firmware>', 'firmware').choices(FIRMWARES).default('uefi'))
  .addOption(new Option('--accel <accel>', 'acceleration; auto uses KVM only if a probe boots a kernel with it').choices(['auto', 'kvm', 'tcg']).default('auto'))
  .option('--memory <MiB>', 'guest memory', positiveInteger('--memory'), 2048)
  .option('--cpus <n>', 'guest CPUs', positiveInteger('--cpus'), 2)
  .option('--timeout <seconds>', 'give up (and stop the VM) after this long', positiveInteger('--timeout'), 900)
  .option('--negative-checks', 'also check that dropbear refuses passwords, unknown keys, port forwarding and a wrong passphrase')
  .option('--disk-size <size>', 'boot from a disk this large (e.g. 6GiB), the image at its start: tests growing the root at first boot', diskSize)
  .option('--nics <n>', 'NICs in all; the first n-1 are connected to nothing (tests that every NIC is tried)', positiveInteger('--nics'), 1)
  .option('--config-drive <iso>', 'attach this config drive (ISO 9660, volume config-2) as a CD')
  .option('--guest-address <ipv4>', "forward SSH to this static guest address in QEMU's user network (10.0.2.0/24), e.g. one the config drive sets", guestAddress)
  .addOption(new Option('--sector-size <bytes>', "the disk's logical and physical sector size (4096: a 4Kn disk); default: the manifest's disk.sectorSize").choices(['512', '4096']))
  .option('--tpm', 'give the VM a TPM 2.0 (swtpm), a fresh one unless --tpm-state names one')
  .option('--tpm-state <dir>', "the TPM's state directory, created if missing and kept: the same directory is the same machine's TPM (implies --tpm)")
  .addOption(allowExternalFilesOption)
  .addOption(allowFormatOption)
  .addOption(maxVirtualSizeOption)
  .addOption(verboseOption)
  .addOption(quietOption)
  .addOption(logFormatOption)
  .action(async (image: string, opts: { key: string; passphraseFile?: string; manifest?: string; out?: string; firmware: Firmware; accel: 'auto' | 'kvm' | 'tcg'; memory: number; cpus: number; timeout: number; negativeChecks?: boolean; diskSize?: number; nics: number; configDrive?: string; guestAddress?: string; sectorSize?: string; tpm?: boolean; tpmState?: string } & FormatOptions & LogOptions) => {
    const log = commandLogger(opts);
    const passphraseFile = opts.passphraseFile ?? process.env.KEYLESSGO_PASSPHRASE_FILE;
    if (!passphraseFile) throw new InputError('no passphrase: pass --passphrase-file FILE or set KEYLESSGO_PASSPHRASE_FILE');
    const outDir = opts.out ?? join(dirname(image), `boot-test-${opts.firmware}`);
    const result = await bootTest({
      image,
      privateKeyFile: opts.key,
      passphraseFile,
      manifestFile: opts.manifest,
      outDir,
      firmware: opts.firmware,
      accel: opts.accel,
      memoryMiB: opts.memory,
      cpus: opts.cpus,
      timeoutSeconds: opts.timeout,
      negativeChecks: opts.negativeChecks ?? false,
      diskSizeBytes: opts.diskSize,
      formatPolicy: formatPolicy(opts),
      nics: opts.nics,
      configDrive: opts.configDrive,
      guestAddress: opts.guestAddress,
      sectorSize: opts.sectorSize === undefined ? undefined : Number(opts.sectorSize),
      tpm: opts.tpm || opts.tpmState ? { stateDir: opts.tpmState } : undefined,
      log,
    });
    log.result(`boot-test ${result.passed ? 'passed' : 'failed'}, result in ${join(outDir, 'result.json')}`, result);
    process.stdout.write(formatTable(result));
    process.exitCode = result.passed ? 0 : 1;
  });

const tangOptions = [
  // Required by rebind; enroll may bind to the TPM alone (checked with the other pin rules).
  new Option('--tang <url...>', 'Tang server(s) as the machine reaches them'),
  new Option('--tang-thp <thumbprint...>', "each Tang server's signing-key thumbprint (`jose jwk thp`), one per --tang in order; refuses an advertisement it does not sign"),
  new Option('--trust-first-use', 'with several hosts and no --tang-thp: trust the advertisement each host is served (printed)'),
  new Option('--threshold <n>', 'how many of the pins (each Tang server, and the TPM with enroll --tpm2) must answer').argParser(positiveInteger('--threshold')).default(1),
];

/** The fleet, SSH and Tang options of enroll and rebind. */
function sshTangCommand(name: string, description: string): Command {
  const command = program
    .command(name)
    .description(description)
    .requiredOption('--key <file>', 'SSH private key for root on the machines')
    .option('--host-key-fingerprint <SHA256:...>', "refuse a machine whose SSH host key differs")
    .option('--known-hosts <file>', "refuse machines whose OpenSSH host key this known_hosts file does not list (checked before anything is sent)");
  for (const option of tangOptions) command.addOption(option);
  return withFleetOptions(command);
}

interface SshTangOptions extends FleetCliOptions, LogOptions {
  key: string;
  hostKeyFingerprint?: string;
  knownHosts?: string;
  tang?: string[];
  tangThp?: string[];
  trustFirstUse?: boolean;
  threshold: number;
}

function fleetCommandOptions(opts: SshTangOptions, log: Logger) {
  return {
    keyFile: opts.key,
    hostKeyFingerprint: opts.hostKeyFingerprint,
    knownHosts: opts.knownHosts,
    tangUrls: opts.tang ?? [],
    tangThps: opts.tangThp ?? [],
    trustFirstUse: opts.trustFirstUse ?? false,
    threshold: opts.threshold,
    parallel: opts.parallel,
    json: opts.json ?? false,
    log,
  };
}

sshTangCommand('enroll', 'bind deployed, unlocked machines to Tang, rotate their volume keys, add a recovery passphrase and remove the bootstrap one (over SSH); a re-run continues an interrupted one')
  .option('--passphrase-file <file>', 'the bootstrap passphrase the image was built with (or env KEYLESSGO_PASSPHRASE_FILE)')
  .option('--tpm2', "also bind to the machine's TPM 2.0 (clevis tpm2 pin; the image needs nbde.tpm2)")
  .option('--tpm2-pcrs <list>', 'PCRs (sha256 bank) the TPM binding is sealed to, e.g. 7 or 0,2,4,7; default 7 (Secure Boot state), which survives kernel and GRUB updates', tpm2PcrList)
  .option('--recovery-key-out <file>', 'write the new recovery passphrase here (mode 0600; must not exist, unless an interrupted enroll of the same machine wrote it); {host} is replaced by the host')
  .addOption(new Option('--dropbear <action>', 'the SSH unlock fallback afterwards').choices(['regenerate-key', 'keep', 'remove']).default('regenerate-key'))
  .action(async (opts: SshTangOptions & { passphraseFile?: string; tpm2?: boolean; tpm2Pcrs?: number[]; recoveryKeyOut?: string; dropbear: DropbearAction }) => {
    const log = commandLogger(opts);
    const passphraseFile = opts.passphraseFile ?? process.env.KEYLESSGO_PASSPHRASE_FILE;
    if (!passphraseFile) throw new InputError('no bootstrap passphrase: pass --passphrase-file FILE or set KEYLESSGO_PASSPHRASE_FILE');
    const tpm2 = opts.tpm2 ? { ...DEFAULT_TPM2_PIN, ...(opts.tpm2Pcrs ? { pcrIds: opts.tpm2Pcrs } : {}) } : undefined;
    const report = await enrollCommand(await fleetTargets(opts), { ...fleetCommandOptions(opts, log), tpm2, passphraseFile, recoveryKeyOut: opts.recoveryKeyOut, dropbear: opts.dropbear });
    process.exitCode = await finishFleetCommand('enroll', opts, report, log);
  });

sshTangCommand('rebind', "after Tang key rotation: bind machines to the current advertisement, prove each new binding opens the volume, then remove the bindings to old keys")
  .action(async (opts: SshTangOptions) => {
    const log = commandLogger(opts);
    const report = await rebindCommand(await fleetTargets(opts), fleetCommandOptions(opts, log));
    process.exitCode = await finishFleetCommand('rebind', opts, report, log);
  });

sshTangCommand('reseal', 'around a planned change that moves the PCRs a TPM binding is sealed to (firmware db/dbx update, Secure Boot turned on): --prepare adds a temporary Tang-only binding, --finish seals the TPM binding again to the new PCRs and removes it')
  .option('--prepare', 'before the change: a temporary binding that needs no TPM (the TPM binding\'s Tang servers, or --tang), in keyslot 30')
  .option('--finish', 'after the reboot: seal each TPM binding that no longer unseals to the PCRs of now, prove it, remove the old one and the temporary binding')
  .option('--cancel', 'remove the temporary binding (only while the TPM binding still unseals)')
  .option('--recovery-key <file>', '--finish without a temporary binding: key the new binding with this recovery passphrase (mode 0600); {host} is replaced by the host')
  .action(async (opts: SshTangOptions & { prepare?: boolean; finish?: boolean; cancel?: boolean; recoveryKey?: string }) => {
    const modes = (['prepare', 'finish', 'cancel'] as const).filter((mode) => opts[mode]);
    if (modes.length !== 1) throw new InputError('give exactly one of --prepare, --finish and --cancel');
    const log = commandLogger(opts);
    const report = await resealCommand(await fleetTargets(opts), { ...fleetCommandOptions(opts, log), mode: modes[0]!, recoveryKey: opts.recoveryKey });
    process.exitCode = await finishFleetCommand('reseal', opts, report, log);
  });

/** Adds the options every fleet command shares (hosts, inventory, parallelism, output). */
function withFleetOptions(command: Command): Command {
  for (const option of fleetOptions()) command.addOption(option);
  return command.addOption(verboseOption).addOption(quietOption).addOption(logFormatOption);
}

withFleetOptions(
  program
    .command('unlock')
    .description('unlock machines waiting at dropbear in the initramfs with the bootstrap or recovery passphrase, after checking dropbear\'s host key; skips machines already up')
    .requiredOption('--key <file>', 'SSH private key in dropbear\'s authorized_keys')
    .option('--passphrase-file <file>', 'the bootstrap or recovery passphrase (or env KEYLESSGO_PASSPHRASE_FILE)')
    .option('--manifest <file>', "the image's manifest.json: trust the dropbear host keys it lists")
    .option('--known-hosts <file>', 'trust the host keys this OpenSSH known_hosts file lists for each host')
    .option('--wait <seconds>', "after unlocking, wait up to this long for the booted system's OpenSSH", positiveInteger('--wait')),
).action(async (opts: { key: string; passphraseFile?: string; manifest?: string; knownHosts?: string; wait?: number } & FleetCliOptions & LogOptions) => {
  const log = commandLogger(opts);
  const passphraseFile = opts.passphraseFile ?? process.env.KEYLESSGO_PASSPHRASE_FILE;
  if (!passphraseFile) throw new InputError('no passphrase: pass --passphrase-file FILE or set KEYLESSGO_PASSPHRASE_FILE');
  const report = await unlockCommand(await fleetTargets(opts), {
    keyFile: opts.key,
    passphraseFile,
    manifest: opts.manifest,
    knownHosts: opts.knownHosts,
    waitSeconds: opts.wait ?? 0,
    parallel: opts.parallel,
    json: opts.json ?? false,
    log,
  });
  process.exitCode = await finishFleetCommand('unlock', opts, report, log);
});

const collect = (value: string, previous: string[] = []) => [...previous, value];

withFleetOptions(
  program
    .command('status')
    .description('report, read-only, each machine\'s LUKS keyslots and tokens, Tang bindings, bootstrap passphrase, volume key and dropbear')
    .requiredOption('--key <file>', 'SSH private key for the machines')
    .option('--passphrase-file <file>', 'also test whether this (bootstrap) passphrase still opens each volume; needs --known-hosts')
    .option('--manifest <file>', "the image's manifest.json: tell whether each volume key is still the image's")
    .option('--known-hosts <file>', 'refuse machines whose OpenSSH host key this known_hosts file does not list')
    .option('--tang-thp <thumbprint>', 'a current Tang signing key (repeatable): flag bindings that depend only on older ones', collect, [])
    .option('--tang <url>', "a Tang server whose current advertisement's signing keys count as current (repeatable)", collect, []),
).action(async (opts: { key: string; passphraseFile?: string; manifest?: string; knownHosts?: string; tangThp: string[]; tang: string[] } & FleetCliOptions & LogOptions) => {
  const log = commandLogger(opts);
  const report = await statusCommand(await fleetTargets(opts), {
    keyFile: opts.key,
    passphraseFile: opts.passphraseFile,
    manifest: opts.manifest,
    knownHosts: opts.knownHosts,
    tangThumbprints: opts.tangThp,
    tangUrls: opts.tang,
    parallel: opts.parallel,
    json: opts.json ?? false,
    log,
  });
  process.exitCode = await finishFleetCommand('status', opts, report, log);
});

const cache = program.command('cache').description('list or prune the stage cache');
cache
  .command('ls')
  .description('list cache entries, least recently used first')
  .addOption(cacheDirOption)
  .action(async (opts: { cacheDir: string }) => {
    const entries = await new StageCache(opts.cacheDir, new Logger()).list();
    const rows = entries.map((e) => [e.kind, e.key, formatSize(e.bytes), e.createdAt.slice(0, 19), e.lastUsedAt.slice(0, 19)]);
    process.stdout.write(`${formatColumns(['kind', 'key', 'size', 'created', 'last used'], rows)}\n`);
    process.stdout.write(`${entries.length} entries, ${formatSize(entries.reduce((sum, e) => sum + e.bytes, 0))} in ${opts.cacheDir}\n`);
  });
cache
  .command('prune')
  .description('remove cache entries (all, or those unused for some days) and what builds that died left behind (work trees, mounts, loop devices, secret stores, locks)')
  .addOption(cacheDirOption)
  .option('--unused-days <days>', 'only entries not used for this many days', positiveInteger('--unused-days'))
  .action(async (opts: { cacheDir: string; unusedDays?: number }) => {
    const before = opts.unusedDays === undefined ? undefined : new Date(Date.now() - opts.unusedDays * 86_400_000);
    const log = new Logger();
    const reaped = await reapDeadBuilds(new HostRunner(log), log);
    const removed = await new StageCache(opts.cacheDir, log).prune(before);
    process.stdout.write(`removed ${removed.length} entries, ${formatSize(removed.reduce((sum, e) => sum + e.bytes, 0))}; ${reaped.length} leftovers of dead builds\n`);
  });

program
  .command('inspect')
  .description('report what an image holds (partitions, LUKS header, Tang binding, initramfs, kernel command line) without its passphrase; never writes to it')
  .argument('<image>', 'disk image (raw or qcow2); a manifest.json beside it is compared too')
  .option('--json', 'print the report as JSON')
  .option('--check', 'exit 1 unless the image matches the manifest.json and SHA256SUMS beside it (a CI gate, e.g. before uploading to Glance)')
  .option('--verify-key <file>', 'with --check: SHA256SUMS.sig must be a keylessgo signature of SHA256SUMS by this OpenSSH public key (one of the keys in the file), checked before SHA256SUMS is trusted')
  .addOption(allowExternalFilesOption)
  .addOption(allowFormatOption)
  .addOption(maxVirtualSizeOption)
  .addOption(verboseOption)
  .addOption(quietOption)
  .addOption(logFormatOption)
  .action(async (image: string, opts: { json?: boolean; check?: boolean; verifyKey?: string } & FormatOptions & LogOptions) => {
    const log = commandLogger(opts);
    if (opts.verifyKey && !opts.check) throw new InputError('--verify-key is checked by --check: pass both');
    // A key file that is no public key is bad input, refused before the image is read.
    if (opts.verifyKey) await readAuthorizedKeys(opts.verifyKey);
    const host = new HostRunner(log);
    const report = await inspectImage(host, image, { policy: formatPolicy(opts) });
    process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : formatInspectReport(report));
    if (!opts.check) return;
    const { checked, failures } = await verifyImage(report, host, { verifyKeyFile: opts.verifyKey });
    for (const failure of failures) log.error(`check: ${failure}`);
    log.result(`check ${failures.length === 0 ? 'passed' : 'FAILED'}: ${checked.join(', ')}`, { checked, failures });
    process.exitCode = failures.length === 0 ? 0 : 1;
  });

program
  .command('diff')
  .description("compare two builds' manifests, plaintext digests included (nothing is decrypted): every difference, and whether it is a declared per-build value; exit 1 if any is not")
  .argument('<a>', 'manifest.json, or the output directory holding it')
  .argument('<b>', 'manifest.json, or the output directory holding it')
  .option('--json', 'print the differences as JSON')
  .action(async (a: string, b: string, opts: { json?: boolean }) => {
    const diff = diffManifests(await readManifestArgument(a), await readManifestArgument(b));
    process.stdout.write(opts.json ? `${JSON.stringify(diff, null, 2)}\n` : formatManifestDiff(diff));
    process.exitCode = diff.differences.every((d) => d.perBuild) ? 0 : 1;
  });

program
  .command('doctor')
  .description('list missing host tools and the Debian package providing each')
  .action(async () => {
    const missing = await missingTools([...Object.keys(TOOL_PACKAGES), ...Object.keys(FILE_PACKAGES)]);
    const total = Object.keys(TOOL_PACKAGES).length + Object.keys(FILE_PACKAGES).length;
    if (missing.length === 0) {
      process.stdout.write(`all ${total} host tools found\n`);
      return;
    }
    for (const tool of missing) process.stdout.write(`missing  ${tool.name.padEnd(36)} apt-get install ${tool.package}\n`);
    process.stdout.write(`${missing.length} of ${total} host tools missing; scripts/install-deps.sh installs them all\n`);
    process.exitCode = 1;
  });

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // Commander has printed its message; help and version exit 0, usage errors 2.
    process.exitCode = error.exitCode === 0 ? 0 : 2;
  } else {
    process.exitCode = reportFailure(log, error);
  }
}
