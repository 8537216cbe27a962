/** Inputs, connection and report of `keylessgo enroll` (the steps are in enroll.ts). */
import { HostError, InputError } from '../errors.js';
import type { Logger } from '../log.js';
import { readPassphraseFile } from '../pipeline/secrets.js';
import { SignalGuard } from '../pipeline/runner.js';
import { readPrivateKey } from '../qemu/ssh.js';
import type { Tpm2Pin } from '../host/clevis.js';
import { enroll, type DropbearAction, type EnrollReport } from './enroll.js';
import { SshRemote } from './remote.js';

export interface EnrollCommandOptions {
  host: string;
  port: number;
  keyFile: string;
  passphraseFile: string;
  tangUrls: string[];
  tpm2?: Tpm2Pin;
  threshold: number;
  recoveryKeyOut?: string;
  hostKeyFingerprint?: string;
  dropbear: DropbearAction;
  json: boolean;
  log: Logger;
}

export function formatEnrollReport(report: EnrollReport): string {
  const rows: Array<[string, string]> = [
    ['LUKS device', report.device],
    ['keyslots before', report.keyslotsBefore.join(', ')],
    ['keyslots after', report.keyslotsAfter.join(', ')],
    ['clevis binding', `${report.tang.pin} in keyslot ${report.tang.slot}`],
    ...report.tang.servers.map((server): [string, string] => [`  ${server.url}`, `signing key ${server.thumbprints.join(', ')}`]),
    ['volume key changed', report.volumeKeyChanged ? 'yes' : 'no'],
    ['bootstrap passphrase removed', report.bootstrapRemoved ? 'yes' : 'no'],
    ['recovery passphrase', report.recoveryKeyFile ?? 'added (not written out: no --recovery-key-out)'],
    ['dropbear (SSH unlock fallback)', { 'regenerate-key': 'kept, new host key', keep: 'kept, host key unchanged', remove: 'removed' }[report.dropbear]],
    ...Object.entries(report.stepSeconds).map(([name, seconds]): [string, string] => [`  ${name}`, `${seconds} s`]),
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  return rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join('\n');
}

export async function enrollCommand(options: EnrollCommandOptions): Promise<EnrollReport> {
  const { log } = options;
  const pins = options.tangUrls.length + (options.tpm2 ? 1 : 0);
  if (pins === 0) throw new InputError('give at least one --tang URL, or --tpm2');
  if (options.threshold > pins) throw new InputError(`--threshold ${options.threshold} exceeds the ${pins} pin(s) given (${options.tangUrls.length} Tang server(s)${options.tpm2 ? ' and the TPM' : ''})`);
  for (const url of options.tangUrls) if (!URL.canParse(url)) throw new InputError(`not a URL: ${url}`, '--tang');
  const keyText = await readPrivateKey(options.keyFile);
  const bootstrapPassphrase = await readPassphraseFile(options.passphraseFile);
  log.redactor.add(bootstrapPassphrase);

  const guard = new SignalGuard(log);
  try {
    const remote = await SshRemote.connect(options.host, options.port, { type: 'publickey', username: 'root', key: keyText }, guard.controller.signal).catch((error: Error) => {
      throw new HostError(`cannot log in to root@${options.host}:${options.port}: ${error.message}`);
    });
    try {
      log.info(`enroll: connected to ${options.host}:${options.port}, host key ${remote.hostKey.type} ${remote.hostKey.fingerprint}`);
      if (options.hostKeyFingerprint && remote.hostKey.fingerprint !== options.hostKeyFingerprint) {
        throw new InputError(`host key ${remote.hostKey.fingerprint} is not the expected ${options.hostKeyFingerprint}`, '--host-key-fingerprint');
      }
      const report = await enroll(remote, {
        tangUrls: options.tangUrls,
        tpm2: options.tpm2,
        threshold: options.threshold,
        bootstrapPassphrase,
        recoveryKeyOut: options.recoveryKeyOut,
        dropbear: options.dropbear,
        log,
      });
      process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatEnrollReport(report)}\n`);
      return report;
    } finally {
      remote.close();
    }
  } finally {
    guard.dispose();
  }
}
