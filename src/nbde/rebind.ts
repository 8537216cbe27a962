/**
 * `keylessgo rebind`: after Tang's keys were rotated (tangd-rotate-keys), gives the machine a
 * binding to the current advertisement and removes the bindings to old keys, never leaving it
 * without a way in:
 *
 *   1. read the clevis bindings and their signing-key thumbprints; fetch and check (pin) the
 *      current advertisement from the machine
 *   2. no binding trusts the current keys: bind a new keyslot, its passphrase taken from an
 *      old binding (`clevis luks pass | clevis luks bind -k -`: Tang still answers for
 *      rotated keys until they are deleted), nothing of it in a command line
 *   3. prove the new binding opens the volume (`clevis luks pass | cryptsetup open --test-passphrase`)
 *   4. only then unbind the old ones; a re-run after an interruption finds the new binding and
 *      goes on at 3; a machine already bound to the current keys only is skipped
 *
 * Not `clevis luks regen`: it re-binds to whatever advertisement the server presents (-y, no
 * pinning), cannot change the URLs, and overwrites the slot without first proving the new
 * binding decrypts.
 * Host commands on the machine: those of machine.ts and tang-pins.ts, clevis luks bind/unbind.
 */
import { EnrollError } from '../errors.js';
import { clevisPinConfig, clevisPolicyInToken, policyThreshold, tpm2PinInToken, type BoundTangServer } from '../host/clevis.js';
import { bindingDecrypts, findRootDevice, must, readBindings, readHeader, shellQuote, unbindCommand, type ClevisBinding, type EnrollLog, type Remote } from './machine.js';
import { trustTang, type TrustedTang } from './tang-pins.js';

export interface RebindOptions {
  tangUrls: string[];
  tangThps: string[];
  threshold: number;
  log: EnrollLog;
}

export interface RebindReport {
  device: string;
  /** rebound: old bindings replaced; current: already bound to the current keys only. */
  result: 'rebound' | 'current';
  trusted: Array<Omit<TrustedTang, 'adv'>>;
  /** The bindings removed, with the thumbprints they trusted. */
  old: Array<{ slot: number; servers: BoundTangServer[] }>;
  /** The binding to the current keys. */
  current: { slot: number; servers: BoundTangServer[] };
}

/** Whether `binding` trusts, for every server, one of its current signing keys (and no other server). */
export function trustsCurrentKeys(binding: Pick<ClevisBinding, 'servers'>, trusted: readonly Pick<TrustedTang, 'url' | 'thumbprints'>[]): boolean {
  const urls = new Set(binding.servers.map((s) => s.url));
  if (urls.size !== trusted.length || !trusted.every((t) => urls.has(t.url))) return false;
  return binding.servers.every((server) => server.thumbprints.some((thp) => trusted.find((t) => t.url === server.url)!.thumbprints.includes(thp)));
}

export async function rebind(remote: Remote, options: RebindOptions): Promise<RebindReport> {
  const { log } = options;
  const device = await findRootDevice(remote, 'find the root LUKS device');
  const bindings = async () => readBindings(remote, device, await readHeader(remote, device, 'read the bindings'), 'read the bindings');
  // Bindings without a Tang server (TPM2 alone) do not depend on Tang's keys: they stay.
  const tangBound = async () => (await bindings()).filter((b) => b.servers.length > 0);
  const before = await tangBound();
  if (before.length === 0) throw new EnrollError('read the bindings', `${device} has no clevis binding to a Tang server (enroll it first)`);
  const trusted = await trustTang(remote, options.tangUrls, options.tangThps, log, 'fetch the Tang advertisement');

  let current = before.find((b) => trustsCurrentKeys(b, trusted));
  if (current) {
    log.info(`rebind: keyslot ${current.slot} is already bound to the current keys`);
  } else {
    for (const old of before) {
      // Only the Tang keys change: a TPM2 pin stays, and with it the old threshold across Tang and the TPM.
      const tpm2 = tpm2PinInToken(old.token);
      const policy = clevisPolicyInToken(old.token);
      const [pin, config] = clevisPinConfig(trusted, tpm2 && policy ? policyThreshold(policy) : options.threshold, tpm2);
      log.info(`rebind: new binding${tpm2 ? ' (with its TPM2 pin)' : ''}, keyed by the binding in keyslot ${old.slot}`);
      const made = await remote.run(`clevis luks pass -d ${device} -s ${old.slot} | clevis luks bind -y -d ${device} -k - ${pin} ${shellQuote(config)}`);
      if (made.exitCode === 0) break;
      log.warn(`rebind: the binding in keyslot ${old.slot} gave no key: ${made.output.trim().split('\n').slice(-2).join(' | ')}`);
    }
    current = (await tangBound()).find((b) => !before.some((old) => old.slot === b.slot) && trustsCurrentKeys(b, trusted));
    if (!current) throw new EnrollError('bind to the current keys', 'no old binding decrypts (the old Tang keys deleted already?): enroll again with the recovery passphrase');
  }
  if (!(await bindingDecrypts(remote, device, current.slot))) throw new EnrollError('prove the new binding', `the binding in keyslot ${current.slot} does not open ${device}; the old bindings are kept`);

  const old = (await tangBound()).filter((b) => b.slot !== current.slot);
  const proven = current.slot;
  for (const binding of old) await must(remote, 'remove the old bindings', unbindCommand(device, binding.slot, `clevis luks pass -d ${device} -s ${proven}`));
  return {
    device,
    result: old.length === 0 ? 'current' : 'rebound',
    trusted: trusted.map(({ adv: _adv, ...rest }) => rest),
    old: old.map((b) => ({ slot: b.slot, servers: b.servers })),
    current: { slot: current.slot, servers: current.servers },
  };
}

export function formatRebindReport(report: RebindReport): string {
  const thumbprints = (servers: BoundTangServer[]) => servers.map((s) => `${s.url} ${s.thumbprints.join(',')}`).join('; ');
  return [
    `${report.device}: ${report.result === 'current' ? 'already bound to the current keys' : 'rebound'}`,
    ...report.old.map((b) => `  removed keyslot ${b.slot}: ${thumbprints(b.servers)}`),
    `  bound keyslot ${report.current.slot}: ${thumbprints(report.current.servers)}`,
  ].join('\n');
}
