/**
 * reseal against a scripted machine with a TPM whose PCR 7 can move: --prepare's temporary
 * binding, --finish's new TPM binding proven before anything goes, the unchanged and
 * unprepared cases, re-runs after an interruption, and --cancel.
 */
import { describe, expect, it } from 'vitest';
import { formatResealReport, reseal, TEMPORARY_SLOT, type ResealMode } from '../../src/nbde/reseal.js';
import { captureLogger } from './helpers.js';
import { DEVICE, FakeLuksMachine, TANG } from './fake-luks-machine.js';

const RECOVERY = 'recovery-passphrase-1';

/** Enrolled with --tpm2 --threshold 2: sss of Tang key k1 and the TPM (sealed to PCR 7 = A1) in keyslot 1, recovery in 31. */
function enrolled(): FakeLuksMachine {
  const machine = new FakeLuksMachine('gone', 'k1');
  machine.slots.delete(0);
  machine.slots.set(1, { opener: 'clevis', key: 'k1', sealedTo: 'A1' });
  machine.tokens.get(0)!.policy = 'tang+tpm2';
  machine.slots.set(31, { opener: 'passphrase', secret: RECOVERY });
  return machine;
}

function run(machine: FakeLuksMachine, mode: ResealMode, recoveryPassphrase?: string) {
  const { log, lines } = captureLogger();
  return { lines, result: reseal(machine, { mode, tangUrls: [], tangThps: [], recoveryPassphrase, log }) };
}

const PREPARED = `sha256:7=0xA1`;

describe('reseal --prepare', () => {
  it('adds a Tang-only binding in keyslot 30, keyed by the TPM binding and proven, and records the PCRs', async () => {
    const machine = enrolled();
    const report = await run(machine, 'prepare').result;
    expect(report).toMatchObject({ device: DEVICE, result: 'prepared', pcrs: PREPARED, preparedPcrs: PREPARED, temporary: { slot: TEMPORARY_SLOT, policy: `tang ${TANG}` } });
    const order = [
      /^clevis luks pass -d \/dev\/vda4 -s 1 \| cryptsetup open --test-passphrase/,
      /^clevis luks pass -d \/dev\/vda4 -s 1 \| clevis luks bind -y -d \/dev\/vda4 -s 30 -k - tang '\{"url":"http:\/\/tang\.example","adv":/,
      /^clevis luks pass -d \/dev\/vda4 -s 30 \| cryptsetup open --test-passphrase --key-slot 30/,
      /^mkdir -p \/var\/lib\/keylessgo\/reseal && echo 'sha256:7=0xA1' > \/var\/lib\/keylessgo\/reseal\/prepared-pcrs$/,
    ].map((pattern) => machine.index(pattern));
    expect(order.every((i) => i >= 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    // The TPM was asked alone, and Tang's advertisement pinned to the key the binding trusts.
    expect(machine.calls.some((call) => call.command === 'clevis decrypt >/dev/null 2>&1' && call.stdin?.includes('.'))).toBe(true);
    expect([...machine.slots.keys()].sort((a, b) => a - b)).toEqual([1, 30, 31]);
  });

  it('again: finds the temporary binding and binds nothing', async () => {
    const machine = enrolled();
    await run(machine, 'prepare').result;
    machine.calls.length = 0;
    expect((await run(machine, 'prepare').result).result).toBe('already-prepared');
    expect(machine.commands(/clevis luks bind/)).toEqual([]);
  });

  it('refuses a machine without a TPM binding', async () => {
    const machine = enrolled();
    machine.tokens.get(0)!.policy = 'tang';
    await expect(run(machine, 'prepare').result).rejects.toThrow(/has no TPM2 binding: nothing to reseal/);
  });
});

describe('reseal --finish', () => {
  it('before the change: keeps the temporary binding and says the PCRs are those of --prepare', async () => {
    const machine = enrolled();
    await run(machine, 'prepare').result;
    const { result, lines } = run(machine, 'finish');
    expect(await result).toMatchObject({ result: 'unchanged', removed: [], resealed: [] });
    expect(machine.slots.has(TEMPORARY_SLOT)).toBe(true);
    expect(lines.some((line) => /those recorded at --prepare: the temporary binding stays/.test(line))).toBe(true);
  });

  it('after the change: a new TPM binding keyed by the temporary one, proven, then the old binding and the temporary one removed', async () => {
    const machine = enrolled();
    await run(machine, 'prepare').result;
    machine.pcr7 = 'B2';
    machine.calls.length = 0;
    const report = await run(machine, 'finish').result;
    expect(report).toMatchObject({ result: 'resealed', pcrs: 'sha256:7=0xB2', preparedPcrs: PREPARED, resealed: [{ from: 1, to: 0, policy: `sss 2 of (tang ${TANG}, tpm2 sha256:7)` }], removed: [1, TEMPORARY_SLOT] });
    const order = [
      /^clevis luks pass -d \/dev\/vda4 -s 30 \| clevis luks bind -y -d \/dev\/vda4 -k - sss '\{"t":2,"pins":\{"tang":\[\{"url":"http:\/\/tang\.example","adv":.*"tpm2":\{"pcr_bank":"sha256","pcr_ids":"7"\}\}\}'$/,
      /^clevis luks pass -d \/dev\/vda4 -s 0 \| cryptsetup open --test-passphrase --key-slot 0/,
      /^clevis luks pass -d \/dev\/vda4 -s 0 \| clevis luks unbind -f -d \/dev\/vda4 -s 1$/,
      /^clevis luks pass -d \/dev\/vda4 -s 0 \| clevis luks unbind -f -d \/dev\/vda4 -s 30$/,
      /^rm -f \/var\/lib\/keylessgo\/reseal\/prepared-pcrs$/,
    ].map((pattern) => machine.index(pattern));
    expect(order.every((i) => i >= 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect([...machine.slots.keys()].sort((a, b) => a - b)).toEqual([0, 31]);
    expect(machine.slots.get(0)).toEqual({ opener: 'clevis', key: 'k1', sealedTo: 'B2' });
    expect(formatResealReport(report)).toMatch(/^TPM binding resealed +keyslot 1 -> 0: sss 2 of \(tang http:\/\/tang\.example, tpm2 sha256:7\)$/m);
  });

  it('interrupted after the new binding was made: a re-run finds it, binds nothing, and removes the old and the temporary binding', async () => {
    const machine = enrolled();
    await run(machine, 'prepare').result;
    machine.pcr7 = 'B2';
    machine.failing = /clevis luks unbind -f -d \/dev\/vda4 -s 1$/;
    await expect(run(machine, 'finish').result).rejects.toThrow(/remove the old TPM binding/);
    machine.failing = undefined;
    machine.calls.length = 0;
    const report = await run(machine, 'finish').result;
    expect(report).toMatchObject({ result: 'resealed', resealed: [{ from: 1, to: 0 }], removed: [1, TEMPORARY_SLOT] });
    expect(machine.commands(/clevis luks bind/)).toEqual([]);
    expect([...machine.slots.keys()].sort((a, b) => a - b)).toEqual([0, 31]);
  });

  it('a new binding that does not open the volume (Tang down) keeps the old binding and the temporary one', async () => {
    const machine = enrolled();
    await run(machine, 'prepare').result;
    machine.pcr7 = 'B2';
    machine.failing = /^clevis luks pass -d \/dev\/vda4 -s 0 \| cryptsetup open/;
    await expect(run(machine, 'finish').result).rejects.toThrow(/prove the new TPM binding.*keyslot 0 does not open/);
    expect([...machine.slots.keys()].sort((a, b) => a - b)).toEqual([0, 1, 30, 31]);
  });

  it('unprepared, after the change: refuses without a key, and reseals with the recovery passphrase, which stays off every command line', async () => {
    const machine = enrolled();
    machine.pcr7 = 'B2';
    await expect(run(machine, 'finish').result).rejects.toThrow(/no binding opens \/dev\/vda4 now \(none to try\) and no --recovery-key was given/);
    machine.calls.length = 0;
    const report = await run(machine, 'finish', RECOVERY).result;
    expect(report).toMatchObject({ result: 'resealed', resealed: [{ from: 1, to: 0 }], removed: [1] });
    expect(machine.commands(/^cat \/run\/keylessgo-reseal\/recovery \| clevis luks bind -y -d \/dev\/vda4 -k - sss /)).toHaveLength(1);
    for (const call of machine.calls) expect(call.command).not.toContain(RECOVERY);
    expect([...machine.files.keys()].filter((f) => f.startsWith('/run/'))).toEqual([]);
  });

  it('nothing to do when the TPM binding unseals and there is no temporary binding', async () => {
    const machine = enrolled();
    expect((await run(machine, 'finish').result).result).toBe('current');
    expect(machine.commands(/clevis luks (bind|unbind)/)).toEqual([]);
  });
});

describe('reseal --cancel', () => {
  it('removes the temporary binding while the TPM binding unseals', async () => {
    const machine = enrolled();
    await run(machine, 'prepare').result;
    expect(await run(machine, 'cancel').result).toMatchObject({ result: 'cancelled', removed: [TEMPORARY_SLOT] });
    expect([...machine.slots.keys()].sort((a, b) => a - b)).toEqual([1, 31]);
    expect(machine.files.has('/var/lib/keylessgo/reseal/prepared-pcrs')).toBe(false);
  });

  it('refuses once the PCRs moved: without the temporary binding the next boot would stop at dropbear', async () => {
    const machine = enrolled();
    await run(machine, 'prepare').result;
    machine.pcr7 = 'B2';
    await expect(run(machine, 'cancel').result).rejects.toThrow(/no TPM binding opens \/dev\/vda4 now/);
    expect(machine.slots.has(TEMPORARY_SLOT)).toBe(true);
  });
});
