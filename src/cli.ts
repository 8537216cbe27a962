#!/usr/bin/env node
/** keylessgo command line: commands only; the work lives in pipeline/, qemu/ and host/. */
import { Command, CommanderError, Option } from 'commander';
import { isReported } from './errors.js';
import { missingTools, TOOL_PACKAGES, FILE_PACKAGES } from './host/tools.js';
import { Logger } from './log.js';
import { build } from './pipeline/build.js';
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

program
  .command('build')
  .description('build an encrypted whole-disk image from a recipe')
  .argument('<recipe>', 'recipe file (YAML)')
  .option('-o, --out <dir>', 'output directory', 'out')
  .option('--passphrase-file <file>', 'bootstrap LUKS passphrase (or env KEYLESSGO_PASSPHRASE_FILE); one line, mode 0600')
  .option('--authorized-keys <file>', 'SSH public keys allowed to unlock (overrides the recipe)')
  .option('--mirror <url>', 'Debian mirror (default: the recipe, else the host apt sources)')
  .addOption(verboseOption)
  .addOption(quietOption)
  .action(async (recipePath: string, opts: { out: string; passphraseFile?: string; authorizedKeys?: string; mirror?: string; verbose?: boolean; quiet?: boolean }) => {
    const log = logger(opts);
    const started = performance.now();
    const ctx = await build({ recipePath, outDir: opts.out, passphraseFile: opts.passphraseFile, authorizedKeysFile: opts.authorizedKeys, mirror: opts.mirror, log });
    log.info(`built ${ctx.recipe.name} in ${((performance.now() - started) / 1000).toFixed(1)} s:`);
    for (const output of ctx.state.outputs) log.info(`  ${output.path}  ${formatSize(output.bytes)}`);
    log.info(`  ${ctx.outDir}/SHA256SUMS, ${ctx.outDir}/manifest.json`);
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
