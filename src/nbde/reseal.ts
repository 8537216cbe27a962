/**
 * `keylessgo reseal`: a planned change that moves the PCRs a TPM binding is sealed to (a
 * firmware db/dbx update, Secure Boot turned on, a shim with a new SBAT level) without
 * leaving the machine at dropbear:
 *
 *   --prepare  before the change: a temporary binding that needs no TPM, in keyslot 30 (Tang
 *              only: the TPM binding's own servers, pinned to the signing keys it was made
 *              with, and its threshold as far as Tang servers alone can meet it), keyed by
 *              the TPM binding, proven to open the volume; today's PCR values are recorded.
 *   --finish   after the reboot: each TPM binding whose TPM part no longer unseals is made
 *              again with its own policy, sealed to the PCR values of now (keyed by the
 *              temporary binding, or by --recovery-key without one), proven to open the
 *              volume, and only then the old binding and the temporary one are removed. A
 *              machine whose PCRs are still those recorded at --prepare keeps its temporary
 *              binding and is reported unchanged. A re-run after an interruption goes on.
 *   --cancel   the temporary binding removed, while the TPM binding still unseals.
 *
 * Whether a TPM binding's TPM part unseals is asked of the TPM alone (`clevis decrypt` of its
 * tpm2 pin's JWE, the result to /dev/null): no Tang, nothing unlocked.
 * Host commands on the machine: those of machine.ts and tang-pins.ts, clevis luks bind/unbind,
 * clevis decrypt, tpm2_pcrread.
 */
import { EnrollError } from '../errors.js';
import { clevisPinConfig, clevisPolicyInToken, describeClevisPolicy, policyThreshold, tpm2JwesInToken, tpm2PinInToken, type BoundTangServer, type ClevisPolicy, type Tpm2Pin } from '../host/clevis.js';
import { parsePcrRead, pcrReadCommand } from '../host/tpm2.js';
import {
  bindingDecrypts, findRootDevice, must, readBindings, readHeader, readStateFiles, shellQuote, stageSecret, succeeds, unbindCommand, wipeCommand, type ClevisBinding, type EnrollLog, type Remote,
} from './machine.js';
import { trustTang } from './tang-pins.js';

export type ResealMode = 'prepare' | 'finish' | 'cancel';

/** The temporary binding's keyslot: fixed, so that every run (and `status`) knows it (31 is the recovery passphrase's). */
export const TEMPORARY_SLOT = 30;

const STATE = '/var/lib/keylessgo/reseal';
const PREPARED_PCRS = 'prepared-pcrs';
const SECRETS = '/run/keylessgo-reseal';
const RECOVERY = `${SECRETS}/recovery`;

export interface ResealOptions {
  mode: ResealMode;
  /** --prepare for a binding without Tang servers (TPM alone): the servers of the temporary binding. */
  tangUrls: string[];
  tangThps: string[];
  threshold?: number;
  /** --finish without a temporary binding: the recovery passphrase keys the new binding. */
  recoveryPassphrase?: string;
  log: EnrollLog;
}

export interface ResealReport {
  device: string;
  mode: ResealMode;
  /**
   * prepared: temporary binding made now; already-prepared: it was there and decrypts;
   * resealed: TPM binding(s) made again for today's PCRs; unchanged: PCRs as at --prepare,
   * nothing done; current: the TPM bindings unseal and there is no temporary binding;
   * cancelled / nothing-to-cancel.
   */
  result: 'prepared' | 'already-prepared' | 'resealed' | 'unchanged' | 'current' | 'cancelled' | 'nothing-to-cancel';
  /** PCR values now, of the PCRs the TPM bindings are sealed to. */
  pcrs: string;
  /** PCR values recorded by --prepare, when it ran. */
  preparedPcrs?: string;
  temporary?: { slot: number; policy: string };
  /** TPM bindings made again: old keyslot → new keyslot, and the policy. */
  resealed: Array<{ from: number; to: number; policy: string }>;
  removed: number[];
}

interface TpmBinding extends ClevisBinding {
  policy: ClevisPolicy;
  tpm2: Tpm2Pin;
  /** Its TPM part unseals with today's PCR values. */
  unseals: boolean;
}

/** Whether every tpm2 pin of the binding unseals now (the TPM alone is asked). */
export async function tpm2Unseals(remote: Remote, token: string): Promise<boolean> {
  for (const jwe of tpm2JwesInToken(token)) if (!(await succeeds(remote, 'clevis decrypt >/dev/null 2>&1', jwe))) return false;
  return true;
}

export async function reseal(remote: Remote, options: ResealOptions): Promise<ResealReport> {
  const { log } = options;
  const device = await findRootDevice(remote, 'find the root LUKS device');
  const readAll = async (step: string) => readBindings(remote, device, await readHeader(remote, device, step), step);
  const bindings = await readAll('read the bindings');
  const temporary = bindings.find((b) => b.slot === TEMPORARY_SLOT);
  const tpmBindings: TpmBinding[] = [];
  for (const binding of bindings.filter((b) => b.slot !== TEMPORARY_SLOT)) {
    const tpm2 = tpm2PinInToken(binding.token);
    const policy = clevisPolicyInToken(binding.token);
    if (tpm2 && policy) tpmBindings.push({ ...binding, tpm2, policy, unseals: await tpm2Unseals(remote, binding.token) });
  }
  if (tpmBindings.length === 0) throw new EnrollError('read the bindings', `${device} has no TPM2 binding${temporary ? ` (only the temporary one in keyslot ${TEMPORARY_SLOT})` : ''}: nothing to reseal`);
  const { pcrBank } = tpmBindings[0]!.tpm2;
  const pcrs = parsePcrRead(await must(remote, 'read the PCRs', pcrReadCommand(pcrBank, [...new Set(tpmBindings.flatMap((b) => b.tpm2.pcrIds))].sort((a, b) => a - b))));
  const preparedPcrs = (await readStateFiles(remote, STATE, [PREPARED_PCRS]))[PREPARED_PCRS];
  const report: ResealReport = { device, mode: options.mode, result: 'current', pcrs, ...(preparedPcrs ? { preparedPcrs } : {}), resealed: [], removed: [] };
  const describe = (binding: ClevisBinding) => {
    const policy = clevisPolicyInToken(binding.token);
    return policy ? describeClevisPolicy(policy) : binding.pin;
  };
  if (temporary) report.temporary = { slot: TEMPORARY_SLOT, policy: describe(temporary) };
  log.info(`reseal: PCRs ${pcrs}; ${tpmBindings.map((b) => `TPM binding in keyslot ${b.slot} ${b.unseals ? 'unseals' : 'does NOT unseal'}`).join(', ')}${temporary ? `; temporary binding in keyslot ${TEMPORARY_SLOT}` : ''}`);

  /** A command printing a passphrase of the volume: a binding that decrypts now, else the recovery passphrase. */
  const keySource = async (candidates: readonly ClevisBinding[], step: string): Promise<string> => {
    for (const binding of candidates) if (await bindingDecrypts(remote, device, binding.slot)) return `clevis luks pass -d ${device} -s ${binding.slot}`;
    if (options.recoveryPassphrase !== undefined) {
      await stageSecret(remote, RECOVERY, options.recoveryPassphrase);
      return `cat ${RECOVERY}`;
    }
    throw new EnrollError(step, `no binding opens ${device} now (${candidates.map((b) => `keyslot ${b.slot}`).join(', ') || 'none to try'}) and no --recovery-key was given`);
  };
  const clearState = () => must(remote, 'clear the record', `rm -f ${STATE}/${PREPARED_PCRS}`);

  try {
    switch (options.mode) {
      case 'prepare': {
        if (temporary && (await bindingDecrypts(remote, device, TEMPORARY_SLOT))) {
          log.info(`reseal: the temporary binding in keyslot ${TEMPORARY_SLOT} is there and opens the volume`);
          if (!preparedPcrs) await recordPcrs();
          return { ...report, result: 'already-prepared', preparedPcrs: preparedPcrs ?? pcrs };
        }
        const key = await keySource(tpmBindings.filter((b) => b.unseals), 'key the temporary binding');
        if (temporary) await must(remote, 'remove the temporary binding that does not decrypt', unbindCommand(device, TEMPORARY_SLOT, key));
        const [pin, config] = await temporaryPolicy();
        await must(remote, 'make the temporary binding', `${key} | clevis luks bind -y -d ${device} -s ${TEMPORARY_SLOT} -k - ${pin} ${shellQuote(config)}`);
        if (!(await bindingDecrypts(remote, device, TEMPORARY_SLOT))) throw new EnrollError('prove the temporary binding', `keyslot ${TEMPORARY_SLOT} does not open ${device}`);
        await recordPcrs();
        const made = (await readAll('read the bindings')).find((b) => b.slot === TEMPORARY_SLOT)!;
        log.info(`reseal: temporary binding in keyslot ${TEMPORARY_SLOT} (${describe(made)}) opens the volume; PCRs recorded`);
        return { ...report, result: 'prepared', preparedPcrs: pcrs, temporary: { slot: TEMPORARY_SLOT, policy: describe(made) } };
      }
      case 'finish': {
        const stale = tpmBindings.filter((b) => !b.unseals);
        if (stale.length === 0) {
          if (!temporary) return { ...report, result: 'current' };
          if (!preparedPcrs || preparedPcrs === pcrs) {
            log.info(`reseal: the PCRs are ${preparedPcrs ? 'those recorded at --prepare' : 'unchanged (no record of --prepare)'}: the temporary binding stays until the change (--finish after it, or --cancel)`);
            return { ...report, result: 'unchanged' };
          }
        }
        let current = tpmBindings.filter((b) => b.unseals);
        for (const old of stale) {
          const policy = describeClevisPolicy(old.policy);
          // A re-run after an interruption: the new binding was made and proven already.
          let made = current.find((b) => describeClevisPolicy(b.policy) === policy);
          if (!made) {
            const key = await keySource([...current, ...(temporary ? [temporary] : [])], 'key the new TPM binding');
            const tang = await trustTang(remote, old.servers.map((s) => s.url), old.servers.map((s) => s.thumbprints[0]!), log, 'check Tang from the machine');
            const [pin, config] = clevisPinConfig(tang, policyThreshold(old.policy), old.tpm2);
            log.info(`reseal: keyslot ${old.slot} (${policy}) made again for today's PCRs`);
            const before = new Set((await readAll('read the bindings')).map((b) => b.slot));
            await must(remote, 'make the new TPM binding', `${key} | clevis luks bind -y -d ${device} -k - ${pin} ${shellQuote(config)}`);
            const fresh = (await readAll('read the bindings')).find((b) => !before.has(b.slot));
            if (!fresh) throw new EnrollError('make the new TPM binding', 'clevis luks bind made no new keyslot');
            made = { ...fresh, policy: clevisPolicyInToken(fresh.token)!, tpm2: old.tpm2, unseals: true };
            if (!(await bindingDecrypts(remote, device, made.slot))) throw new EnrollError('prove the new TPM binding', `keyslot ${made.slot} does not open ${device} (the TPM or Tang did not answer); the old binding and the temporary one are kept`);
            current = [...current, made];
          }
          await must(remote, 'remove the old TPM binding', unbindCommand(device, old.slot, `clevis luks pass -d ${device} -s ${made.slot}`));
          report.resealed.push({ from: old.slot, to: made.slot, policy });
          report.removed.push(old.slot);
        }
        if (temporary) {
          await must(remote, 'remove the temporary binding', unbindCommand(device, TEMPORARY_SLOT, `clevis luks pass -d ${device} -s ${current[0]!.slot}`));
          report.removed.push(TEMPORARY_SLOT);
        }
        await clearState();
        return { ...report, result: 'resealed' };
      }
      case 'cancel': {
        if (!temporary) return { ...report, result: 'nothing-to-cancel' };
        const working = [];
        for (const binding of tpmBindings.filter((b) => b.unseals)) if (await bindingDecrypts(remote, device, binding.slot)) working.push(binding);
        if (working.length === 0) throw new EnrollError('remove the temporary binding', `no TPM binding opens ${device} now: without the temporary binding the next boot would stop at dropbear (run --finish)`);
        await must(remote, 'remove the temporary binding', unbindCommand(device, TEMPORARY_SLOT, `clevis luks pass -d ${device} -s ${working[0]!.slot}`));
        await clearState();
        return { ...report, result: 'cancelled', removed: [TEMPORARY_SLOT] };
      }
      default:
        throw new Error(`unknown reseal mode ${String(options.mode)}`);
    }
  } finally {
    if (options.recoveryPassphrase !== undefined) await remote.run(wipeCommand(SECRETS));
  }

  async function recordPcrs(): Promise<void> {
    await must(remote, 'record the PCRs', `mkdir -p ${STATE} && echo ${shellQuote(pcrs)} > ${STATE}/${PREPARED_PCRS}`);
  }

  /** The temporary binding's pin and config: the TPM binding's Tang servers (or --tang), pinned to the keys it trusts. */
  async function temporaryPolicy(): Promise<[string, string]> {
    if (options.tangUrls.length > 0) {
      const tang = await trustTang(remote, options.tangUrls, options.tangThps, log, 'check Tang from the machine');
      return clevisPinConfig(tang, options.threshold ?? 1);
    }
    const source = tpmBindings.find((b) => b.servers.length > 0);
    if (!source) throw new EnrollError('choose the temporary binding', 'the TPM binding has no Tang server: give the temporary binding\'s with --tang URL (and --tang-thp)');
    const servers: BoundTangServer[] = source.servers;
    const tang = await trustTang(remote, servers.map((s) => s.url), servers.map((s) => s.thumbprints[0]!), log, 'check Tang from the machine');
    return clevisPinConfig(tang, Math.min(policyThreshold(source.policy), servers.length));
  }
}

export function formatResealReport(report: ResealReport): string {
  const rows: Array<[string, string]> = [
    ['LUKS device', report.device],
    ['result', report.result],
    ['PCRs now', report.pcrs],
    ...(report.preparedPcrs ? [['PCRs at --prepare', report.preparedPcrs] as [string, string]] : []),
    ...(report.temporary ? [[`temporary binding`, `keyslot ${report.temporary.slot}: ${report.temporary.policy}${report.removed.includes(report.temporary.slot) ? ' (removed)' : ''}`] as [string, string]] : []),
    ...report.resealed.map((r): [string, string] => ['TPM binding resealed', `keyslot ${r.from} -> ${r.to}: ${r.policy}`]),
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  return rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join('\n');
}
