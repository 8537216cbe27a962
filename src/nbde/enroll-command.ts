/** Inputs, connection and reports of `keylessgo enroll` and `keylessgo rebind` (the steps are in enroll.ts and rebind.ts). */
import { HostError, InputError } from '../errors.js';
import type { Logger } from '../log.js';
import { readPassphraseFile } from '../pipeline/secrets.js';
import { SignalGuard } from '../pipeline/runner.js';
import { readPrivateKey } from '../qemu/ssh.js';
import { enroll, type DropbearAction, type EnrollReport } from './enroll.js';
import { formatRebindReport, rebind, type RebindReport } from './rebind.js';
import { SshRemote } from './remote.js';
import { checkTangOptions } from './tang-pins.js';

/** One machine, reachable over SSH. */
export interface SshTarget {
  host: string;
  port: number;
  user: string;
  /** Refuse the machine when its SSH host key has another SHA256 fingerprint. */
  hostKeyFingerprint?: string;
}

export interface TangOptions {
  tangUrls: string[];
  tangThps: string[];
  threshold: number;
}

export interface EnrollHostOptions extends TangOptions {
  keyText: string;
  bootstrapPassphrase: string;
  /** Where to write the recovery passphrase; `{host}` is replaced by the host's name. */
  recoveryKeyOut?: string;
  dropbear: DropbearAction;
  log: Logger;
  signal: AbortSignal;
  pollMs?: number;
}

export function formatEnrollReport(report: EnrollReport): string {
  const rows: Array<[string, string]> = [
    ['LUKS device', report.device],
    ['result', report.result === 'already-enrolled' ? 'already enrolled, nothing to do' : `enrolled (${report.steps.join(', ')})`],
    ['keyslots before', report.keyslotsBefore.join(', ')],
    ['keyslots after', report.keyslotsAfter.join(', ')],
    ...report.tang.flatMap((binding): Array<[string, string]> => [
      ['Tang binding', `${binding.pin} in keyslot ${binding.slot}`],
      ...binding.servers.map((server): [string, string] => [`  ${server.url}`, `signing key ${server.thumbprints.join(', ')}`]),
    ]),
    ...report.trusted.map((t): [string, string] => [`trusted ${t.url}`, `${t.thumbprints.join(', ')} (${t.trust === 'pinned' ? 'pinned' : 'trust on first use'})`]),
    ['volume key changed', report.volumeKeyChanged === undefined ? 'unknown (no record of the image key)' : report.volumeKeyChanged ? 'yes' : 'no'],
    ['bootstrap passphrase removed', report.bootstrapRemoved ? 'yes' : 'no'],
    ['recovery passphrase', `keyslot ${report.recovery.slot}: ${report.recovery.note}`],
    ['dropbear (SSH unlock fallback)', { 'regenerate-key': 'kept, new host key', keep: 'kept, host key unchanged', remove: 'removed' }[report.dropbear]],
    ...Object.entries(report.stepSeconds).map(([name, seconds]): [string, string] => [`  ${name}`, `${seconds} s`]),
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  return rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join('\n');
}

/** Connects as `target.user` with the private key, checks the host key, runs `work`, disconnects. */
async function withRemote<T>(target: SshTarget, keyText: string, log: Logger, signal: AbortSignal, work: (remote: SshRemote) => Promise<T>): Promise<T> {
  const remote = await SshRemote.connect(target.host, target.port, { type: 'publickey', username: target.user, key: keyText }, signal).catch((error: Error) => {
    throw new HostError(`cannot log in to ${target.user}@${target.host}:${target.port}: ${error.message}`);
  });
  try {
    log.info(`connected to ${target.host}:${target.port}, host key ${remote.hostKey.type} ${remote.hostKey.fingerprint}`);
    if (target.hostKeyFingerprint && remote.hostKey.fingerprint !== target.hostKeyFingerprint) {
      throw new InputError(`host key ${remote.hostKey.fingerprint} of ${target.host} is not the expected ${target.hostKeyFingerprint}`, '--host-key-fingerprint');
    }
    return await work(remote);
  } finally {
    remote.close();
  }
}

/** Enrolls one machine (or continues its enrollment): the per-host entry point of single-host and inventory runs. */
export function enrollHost(target: SshTarget, options: EnrollHostOptions): Promise<EnrollReport> {
  return withRemote(target, options.keyText, options.log, options.signal, (remote) =>
    enroll(remote, { ...options, recoveryKeyOut: options.recoveryKeyOut?.replaceAll('{host}', target.host) }),
  );
}

export interface RebindHostOptions extends TangOptions {
  keyText: string;
  log: Logger;
  signal: AbortSignal;
}

export function rebindHost(target: SshTarget, options: RebindHostOptions): Promise<RebindReport> {
  return withRemote(target, options.keyText, options.log, options.signal, (remote) => rebind(remote, options));
}

export interface SingleHostOptions extends TangOptions {
  target: SshTarget;
  keyFile: string;
  trustFirstUse: boolean;
  json: boolean;
  log: Logger;
}

/** Inputs common to enroll and rebind: Tang options checked, the key read, signals handled. */
async function singleHost<T>(options: SingleHostOptions, work: (keyText: string, signal: AbortSignal) => Promise<T>, format: (report: T) => string): Promise<T> {
  checkTangOptions({ ...options, hosts: 1 });
  const keyText = await readPrivateKey(options.keyFile);
  const guard = new SignalGuard(options.log);
  try {
    const report = await work(keyText, guard.controller.signal);
    process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : `${format(report)}\n`);
    return report;
  } finally {
    guard.dispose();
  }
}

export async function enrollCommand(options: SingleHostOptions & { passphraseFile: string; recoveryKeyOut?: string; dropbear: DropbearAction }): Promise<EnrollReport> {
  const bootstrapPassphrase = await readPassphraseFile(options.passphraseFile);
  options.log.redactor.add(bootstrapPassphrase);
  return singleHost(options, (keyText, signal) => enrollHost(options.target, { ...options, keyText, bootstrapPassphrase, signal }), formatEnrollReport);
}

export function rebindCommand(options: SingleHostOptions): Promise<RebindReport> {
  return singleHost(options, (keyText, signal) => rebindHost(options.target, { ...options, keyText, signal }), formatRebindReport);
}
