#!/usr/bin/env node
/**
 * keylessgo command line: commands only; the work lives in pipeline/, qemu/ and host/.
 * Each command imports its implementation when it runs, so a refusal stays quick.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { dirname, join } from 'node:path';
import { InputError, isReported } from './errors.js';
import { missingTools, TOOL_PACKAGES, FILE_PACKAGES } from './host/tools.js';
import { Logger } from './log.js';
import type { DropbearAction } from './nbde/enroll.js';
import { FIRMWARES, type Firmware } from './qemu/firmware.js';
import { isMirrorUrl, MIRROR_URL_MESSAGE } from './recipe/schema.js';
import { formatSize } from './recipe/size.js';

const program = new Command();
program
  .name('keylessgo')
  .description('Build LUKS2-encrypted Debian whole-disk images that unlock over SSH (dropbear) and Tang (NBDE)')
  .showHelpAfterError()
  .exitOverride();

const verboseOption = new Option('-v, --verbose', 'print every host command and its output');
const quietOption = new Option('-q, --quiet', 'print only warnings and errors');

function logger(opts: { verbose?: boolean; quiet?: boolean }): Logger {
  return new Logger(opts.verbose ? 'verbose' : opts.quiet ? 'quiet' : 'info');
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
  .addOption(verboseOption)
  .addOption(quietOption)
  .action(async (recipePath: string, opts: { out: string; passphraseFile?: string; authorizedKeys?: string; mirror?: string; verbose?: boolean; quiet?: boolean }) => {
    const { build } = await import('./pipeline/build.js');
    const log = logger(opts);
    const started = performance.now();
    const ctx = await build({ recipePath, outDir: opts.out, passphraseFile: opts.passphraseFile, authorizedKeysFile: opts.authorizedKeys, mirror: opts.mirror, log });
    log.info(`built ${ctx.recipe.name} in ${((performance.now() - started) / 1000).toFixed(1)} s:`);
    for (const output of ctx.state.outputs) log.info(`  ${output.path}  ${formatSize(output.bytes)}`);
    log.info(`  ${ctx.outDir}/SHA256SUMS, ${ctx.outDir}/manifest.json`);
  });

function positiveInteger(name: string) {
  return (value: string): number => {
    const number = Number(value);
    if (!Number.isInteger(number) || number <= 0) throw new InvalidArgumentError(`${name} must be a positive whole number`);
    return number;
  };
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
  .addOption(verboseOption)
  .addOption(quietOption)
  .action(async (image: string, opts: { key: string; passphraseFile?: string; manifest?: string; out?: string; firmware: Firmware; accel: 'auto' | 'kvm' | 'tcg'; memory: number; cpus: number; timeout: number; negativeChecks?: boolean; verbose?: boolean; quiet?: boolean }) => {
    const passphraseFile = opts.passphraseFile ?? process.env.KEYLESSGO_PASSPHRASE_FILE;
    if (!passphraseFile) throw new InputError('no passphrase: pass --passphrase-file FILE or set KEYLESSGO_PASSPHRASE_FILE');
    const [{ bootTest }, { formatTable }] = await Promise.all([import('./qemu/boot-test.js'), import('./qemu/report.js')]);
    const result = await bootTest({
      image,
      privateKeyFile: opts.key,
      passphraseFile,
      manifestFile: opts.manifest,
      outDir: opts.out ?? join(dirname(image), `boot-test-${opts.firmware}`),
      firmware: opts.firmware,
      accel: opts.accel,
      memoryMiB: opts.memory,
      cpus: opts.cpus,
      timeoutSeconds: opts.timeout,
      negativeChecks: opts.negativeChecks ?? false,
      log: logger(opts),
    });
    process.stdout.write(formatTable(result));
    process.exitCode = result.passed ? 0 : 1;
  });

program
  .command('enroll')
  .description('bind a deployed, unlocked machine to Tang, rotate its volume key, add a recovery passphrase and remove the bootstrap one (over SSH)')
  .requiredOption('--host <host>', 'the machine, reachable over SSH as root')
  .option('--port <port>', 'SSH port', positiveInteger('--port'), 22)
  .requiredOption('--key <file>', 'SSH private key for root on the machine')
  .option('--passphrase-file <file>', 'the bootstrap passphrase the image was built with (or env KEYLESSGO_PASSPHRASE_FILE)')
  .requiredOption('--tang <url...>', 'Tang server(s) as the machine reaches them')
  .option('--threshold <n>', 'with several Tang servers: how many must answer', positiveInteger('--threshold'), 1)
  .option('--recovery-key-out <file>', 'write the new recovery passphrase here (mode 0600; must not exist)')
  .option('--host-key-fingerprint <SHA256:...>', "refuse a machine whose SSH host key differs")
  .addOption(new Option('--dropbear <action>', 'the SSH unlock fallback afterwards').choices(['regenerate-key', 'keep', 'remove']).default('regenerate-key'))
  .option('--json', 'print the report as JSON')
  .addOption(verboseOption)
  .addOption(quietOption)
  .action(async (opts: { host: string; port: number; key: string; passphraseFile?: string; tang: string[]; threshold: number; recoveryKeyOut?: string; hostKeyFingerprint?: string; dropbear: DropbearAction; json?: boolean; verbose?: boolean; quiet?: boolean }) => {
    const passphraseFile = opts.passphraseFile ?? process.env.KEYLESSGO_PASSPHRASE_FILE;
    if (!passphraseFile) throw new InputError('no bootstrap passphrase: pass --passphrase-file FILE or set KEYLESSGO_PASSPHRASE_FILE');
    const { enrollCommand } = await import('./nbde/enroll-command.js');
    await enrollCommand({
      host: opts.host,
      port: opts.port,
      keyFile: opts.key,
      passphraseFile,
      tangUrls: opts.tang,
      threshold: opts.threshold,
      recoveryKeyOut: opts.recoveryKeyOut,
      hostKeyFingerprint: opts.hostKeyFingerprint,
      dropbear: opts.dropbear,
      json: opts.json ?? false,
      log: logger(opts),
    });
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
  } else if (isReported(error)) {
    process.stderr.write(`error: ${error.message}\n`);
    process.exitCode = error.exitCode;
  } else {
    process.stderr.write(`internal error (please report): ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 70;
  }
}
