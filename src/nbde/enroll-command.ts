/** Inputs, connection and reports of `keylessgo enroll`, `rebind` and `reseal` (the steps are in enroll.ts, rebind.ts and reseal.ts). */
import { HostError, InputError } from '../errors.js';
import type { Logger } from '../log.js';
import { readPassphraseFile } from '../base/secrets.js';
import { sshFingerprint } from '../recipe/authorized-keys.js';
import { runFleet, type FleetReport, type HostProgress, type TaskVerdict } from '../fleet/run.js';
import type { SshEndpoint } from '../fleet/connect.js';
import { readHostKeyTrust, type HostKeyTrust } from '../fleet/host-keys.js';
import type { FleetTarget } from '../fleet/targets.js';
import type { Tpm2Pin } from '../host/clevis.js';
import { readPrivateKey } from '../ssh/client.js';
import { enroll, type DropbearAction, type EnrollLog, type EnrollReport } from './enroll.js';
import { formatRebindReport, rebind, type RebindReport } from './rebind.js';
import { formatResealReport, reseal, type ResealMode, type ResealReport } from './reseal.js';
import { SshRemote } from './remote.js';
import { checkTangOptions } from './tang-pins.js';

export interface TangOptions {
  tangUrls: string[];
  tangThps: string[];
  /** Also bind to the machine's TPM (enroll only); the threshold counts it with the Tang servers. */
  tpm2?: Tpm2Pin;
  threshold: number;
}

/** How enroll and rebind reach a machine: the SSH key, the host keys trusted, where to log, when to stop. */
export interface RemoteAccess {
  keyText: string;
  /** Host keys to accept (--known-hosts, --host-key-fingerprint); undefined: any, with a warning. */
  trust?: HostKeyTrust;
  log: EnrollLog;
  signal: AbortSignal;
}

export interface EnrollHostOptions extends TangOptions, RemoteAccess {
  bootstrapPassphrase: string;
  /** Where to write the recovery passphrase; `{host}` is replaced by the host's name. */
  recoveryKeyOut?: string;
  dropbear: DropbearAction;
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
    ...report.dropbearHostKeys.map((line): [string, string] => {
      const [type = '', base64 = ''] = line.split(/\s+/);
      return ['  dropbear host key', `${type} ${sshFingerprint(Buffer.from(base64, 'base64'))}`];
    }),
    ...Object.entries(report.stepSeconds).map(([name, seconds]): [string, string] => [`  ${name}`, `${seconds} s`]),
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  return rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join('\n');
}

/**
 * Connects as `target.user` with the private key; with `trust`, a host key it does not vouch
 * for ends the connection during key exchange (nothing sent). Runs `work`, disconnects.
 */
async function withRemote<T>(target: SshEndpoint, access: RemoteAccess, work: (remote: SshRemote) => Promise<T>): Promise<T> {
  const { keyText, trust, log, signal } = access;
  const remote = await SshRemote.connect(target, keyText, signal, trust).catch((error: Error) => {
    throw new HostError(error.message);
  });
  try {
    const key = `host key ${remote.hostKey.type} ${remote.hostKey.fingerprint}`;
    if (remote.trustedBy) log.info(`connected to ${target.address}:${target.port}, ${key} (vouched for by ${remote.trustedBy})`);
    else log.warn(`connected to ${target.address}:${target.port}, ${key} NOT checked (no --known-hosts or --host-key-fingerprint)`);
    return await work(remote);
  } finally {
    remote.close();
  }
}

/** Enrolls one machine (or continues its enrollment): the per-host entry point of single-host and inventory runs. */
export function enrollHost(target: SshEndpoint, options: EnrollHostOptions): Promise<EnrollReport> {
  return withRemote(target, options, (remote) =>
    enroll(remote, { ...options, recoveryKeyOut: options.recoveryKeyOut?.replaceAll('{host}', target.name) }),
  );
}

export interface RebindHostOptions extends TangOptions, RemoteAccess {}

export function rebindHost(target: SshEndpoint, options: RebindHostOptions): Promise<RebindReport> {
  return withRemote(target, options, (remote) => rebind(remote, options));
}

export interface FleetCommandOptions extends TangOptions {
  keyFile: string;
  hostKeyFingerprint?: string;
  /** An OpenSSH known_hosts file with the machines' host keys: others are refused before anything is sent. */
  knownHosts?: string;
  trustFirstUse: boolean;
  parallel?: number;
  json: boolean;
  log: Logger;
}

/** A host's log lines go to the engine's per-host progress (named, redrawn on a terminal). */
function hostLog(log: Logger, progress: HostProgress): EnrollLog {
  return { info: (message) => progress.phase(message), warn: (message) => progress.warn(message), redactor: log.redactor };
}

/** Runs `work` on every target through the fleet engine; human output adds each host's full report. */
async function fleetCommand<T>(
  name: string,
  targets: FleetTarget[],
  options: FleetCommandOptions,
  describe: (report: T) => TaskVerdict,
  format: (report: T) => string,
  work: (target: SshEndpoint, access: RemoteAccess) => Promise<T>,
): Promise<FleetReport<T>> {
  const keyText = await readPrivateKey(options.keyFile);
  // Neither option: any host key, with a warning naming it (single-host use as before).
  const trust = options.knownHosts || options.hostKeyFingerprint ? await readHostKeyTrust({ knownHosts: options.knownHosts, fingerprint: options.hostKeyFingerprint }) : undefined;
  const report = await runFleet(targets, { command: name, log: options.log, parallel: options.parallel, json: options.json, describe }, (target, progress) =>
    work(target, { keyText, trust, log: hostLog(options.log, progress), signal: progress.signal }),
  );
  if (!options.json) {
    for (const record of report.records) if (record.details !== undefined) process.stdout.write(`\n${record.host}:\n${format(record.details)}\n`);
  }
  return report;
}

export async function enrollCommand(targets: FleetTarget[], options: FleetCommandOptions & { passphraseFile: string; recoveryKeyOut?: string; dropbear: DropbearAction }): Promise<FleetReport<EnrollReport>> {
  if (targets.length > 1 && options.recoveryKeyOut && !options.recoveryKeyOut.includes('{host}')) throw new InputError('with several hosts, put {host} in the path (one file per host)', '--recovery-key-out');
  checkTangOptions({ ...options, hosts: targets.length });
  const bootstrapPassphrase = await readPassphraseFile(options.passphraseFile);
  options.log.redactor.add(bootstrapPassphrase);
  const describe = (report: EnrollReport): TaskVerdict => ({
    skipped: report.result === 'already-enrolled',
    summary: `${report.result === 'already-enrolled' ? 'already enrolled' : 'enrolled'}; Tang keyslot ${report.tang.map((b) => b.slot).join(',')} (${report.tang.flatMap((b) => b.servers.flatMap((s) => s.thumbprints)).join(',')}), recovery keyslot ${report.recovery.slot}`,
  });
  return fleetCommand('enroll', targets, options, describe, formatEnrollReport, (target, access) => enrollHost(target, { ...options, ...access, bootstrapPassphrase }));
}

export function rebindCommand(targets: FleetTarget[], options: FleetCommandOptions): Promise<FleetReport<RebindReport>> {
  checkTangOptions({ ...options, hosts: targets.length });
  const describe = (report: RebindReport): TaskVerdict => ({
    skipped: report.result === 'current',
    summary: `${report.result === 'current' ? 'already current' : 'rebound'}: keyslot ${report.current.slot} ${report.current.servers.flatMap((s) => s.thumbprints).join(',')}${report.old.length ? `; removed ${report.old.map((b) => `${b.slot} ${b.servers.flatMap((s) => s.thumbprints).join(',')}`).join('; ')}` : ''}`,
  });
  return fleetCommand('rebind', targets, options, describe, formatRebindReport, (target, access) => rebindHost(target, { ...options, ...access }));
}

export interface ResealCommandOptions extends FleetCommandOptions {
  mode: ResealMode;
  /** The recovery passphrase file, `{host}` replaced by the host's name (--finish without a temporary binding). */
  recoveryKey?: string;
}

const RESEAL_SUMMARY: Record<ResealReport['result'], string> = {
  prepared: 'temporary binding made',
  'already-prepared': 'temporary binding already there',
  resealed: 'TPM binding sealed to today\'s PCRs',
  unchanged: 'PCRs unchanged since --prepare: temporary binding kept',
  current: 'the TPM binding unseals, no temporary binding',
  cancelled: 'temporary binding removed',
  'nothing-to-cancel': 'no temporary binding',
};

export async function resealCommand(targets: FleetTarget[], options: ResealCommandOptions): Promise<FleetReport<ResealReport>> {
  if (options.tangUrls.length > 0) checkTangOptions({ ...options, hosts: targets.length });
  if (targets.length > 1 && options.recoveryKey && !options.recoveryKey.includes('{host}')) throw new InputError('with several hosts, put {host} in the path (one file per host)', '--recovery-key');
  const describe = (report: ResealReport): TaskVerdict => ({
    skipped: ['already-prepared', 'unchanged', 'current', 'nothing-to-cancel'].includes(report.result),
    summary: `${RESEAL_SUMMARY[report.result]}; PCRs ${report.pcrs}${report.resealed.length ? `; keyslot ${report.resealed.map((r) => `${r.from} -> ${r.to}`).join(', ')}` : ''}`,
  });
  return fleetCommand('reseal', targets, options, describe, formatResealReport, async (target, access) => {
    const recoveryFile = options.recoveryKey?.replaceAll('{host}', target.name);
    const recoveryPassphrase = recoveryFile ? await readPassphraseFile(recoveryFile) : undefined;
    if (recoveryPassphrase) options.log.redactor.add(recoveryPassphrase);
    return withRemote(target, access, (remote) => reseal(remote, { ...options, threshold: options.tangUrls.length > 0 ? options.threshold : undefined, recoveryPassphrase, log: access.log }));
  });
}
