/**
 * rebind against a scripted machine after Tang key rotation: the new binding is keyed by the
 * old one and proven before the old one goes; re-runs and failures keep a way in; and the
 * checks of --tang, --tang-thp and --trust-first-use.
 */
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { formatRebindReport, rebind } from '../../src/nbde/rebind.js';
import { checkTangOptions } from '../../src/nbde/tang-pins.js';
import { captureLogger, expectInputError } from './helpers.js';
import { DEVICE, FakeLuksMachine, TANG, thp } from './fake-luks-machine.js';

/** An enrolled machine bound to Tang key k1 in keyslot 1, after tangd-rotate-keys made k2 (k1 still answers). */
function rotatedTang(): FakeLuksMachine {
  const machine = new FakeLuksMachine('gone', 'k1');
  machine.slots.delete(0);
  machine.slots.set(31, { opener: 'passphrase', secret: 'recovery' });
  machine.tang = { up: true, served: 'k2', recoverable: new Set(['k1', 'k2']) };
  return machine;
}

function run(machine: FakeLuksMachine, tangThps: string[] = []) {
  const { log, lines } = captureLogger();
  return { lines, result: rebind(machine, { tangUrls: [TANG], tangThps, threshold: 1, log }) };
}

describe('rebind', () => {
  it('binds to the current key with the old binding as the key, proves it, then unbinds the old one', async () => {
    const machine = rotatedTang();
    const report = await run(machine, [thp('k2')]).result;
    expect(report).toEqual({
      device: DEVICE,
      result: 'rebound',
      trusted: [{ url: TANG, thumbprints: [thp('k2')], trust: 'pinned' }],
      old: [{ slot: 1, servers: [{ url: TANG, thumbprints: [thp('k1')] }] }],
      current: { slot: 0, servers: [{ url: TANG, thumbprints: [thp('k2')] }] },
    });
    const order = [/clevis luks pass -d \/dev\/vda4 -s 1 \| clevis luks bind -y -d \/dev\/vda4 -k - tang/, /clevis luks pass -d \/dev\/vda4 -s 0 \| cryptsetup open --test-passphrase/, /^clevis luks pass -d \/dev\/vda4 -s 0 \| clevis luks unbind -f -d \/dev\/vda4 -s 1$/].map((p) => machine.index(p));
    expect(order.every((i) => i >= 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect([...machine.slots.keys()].sort()).toEqual([0, 31]);
    expect(formatRebindReport(report)).toBe(`${DEVICE}: rebound\n  removed keyslot 1: ${TANG} ${thp('k1')}\n  bound keyslot 0: ${TANG} ${thp('k2')}`);
  });

  it('keeps a TPM2 pin and its threshold in the new binding, and leaves a TPM2-only binding alone', async () => {
    const machine = rotatedTang();
    machine.tokens.get(0)!.policy = 'tang+tpm2';
    // A binding to the TPM alone (keyslot 2): no Tang key in it, nothing to rebind.
    machine.slots.set(2, { opener: 'clevis', key: 'tpm-only' });
    machine.tokens.set(1, { keyslot: 2, key: 'tpm-only', policy: 'tpm2' });
    const report = await run(machine, [thp('k2')]).result;
    expect(report.old.map((b) => b.slot)).toEqual([1]);
    const [bind] = machine.commands(/clevis luks bind/);
    expect(bind).toMatch(/clevis luks bind -y -d \/dev\/vda4 -k - sss '\{"t":2,"pins":\{"tang":\[\{"url":"http:\/\/tang\.example","adv":\{.*\}\}\],"tpm2":\{"pcr_bank":"sha256","pcr_ids":"7"\}\}\}'$/);
    expect([...machine.slots.keys()].sort()).toEqual([0, 2, 31]);
  });

  it('skips a machine bound to the current key only', async () => {
    const machine = rotatedTang();
    await run(machine).result;
    machine.calls.length = 0;
    const report = await run(machine).result;
    expect(report.result).toBe('current');
    expect(machine.commands(/clevis luks (bind|unbind)/)).toEqual([]);
  });

  it('after an interruption between bind and unbind: proves the new binding and removes the old, binding nothing new', async () => {
    const machine = rotatedTang();
    machine.failing = /clevis luks unbind/;
    await expect(run(machine).result).rejects.toThrow(/remove the old bindings/);
    machine.failing = undefined;
    machine.calls.length = 0;
    const report = await run(machine).result;
    expect(report).toMatchObject({ result: 'rebound', old: [{ slot: 1 }], current: { slot: 0 } });
    expect(machine.commands(/clevis luks bind/)).toEqual([]);
  });

  it('keeps the old binding when the new one does not decrypt', async () => {
    const machine = rotatedTang();
    machine.tang.recoverable = new Set(['k1']);
    await expect(run(machine).result).rejects.toThrow(/keyslot 0 does not open \/dev\/vda4; the old bindings are kept/);
    expect(machine.slots.get(1)).toEqual({ opener: 'clevis', key: 'k1' });
  });

  it('fails, changing nothing, when no old binding decrypts any more (old keys deleted too early)', async () => {
    const machine = rotatedTang();
    machine.tang.recoverable = new Set(['k2']);
    await expect(run(machine).result).rejects.toThrow(/no old binding decrypts/);
    expect([...machine.slots.keys()].sort()).toEqual([1, 31]);
  });

  it('refuses an advertisement the pinned thumbprint does not sign, before any change', async () => {
    const machine = rotatedTang();
    await expect(run(machine, [thp('k1')]).result).rejects.toThrow(/is not a signing key of the advertisement/);
    expect(machine.commands(/clevis luks (bind|unbind)/)).toEqual([]);
  });

  it('refuses a machine with no binding', async () => {
    const machine = rotatedTang();
    machine.slots.delete(1);
    machine.tokens.clear();
    await expect(run(machine).result).rejects.toThrow(/has no clevis binding to a Tang server \(enroll it first\)/);
  });
});

describe('Tang options', () => {
  const base = { tangUrls: [TANG], tangThps: [] as string[], threshold: 1, hosts: 1, trustFirstUse: false };

  it('trusts on first use for one host, refuses it for several unless asked', async () => {
    expect(() => checkTangOptions(base)).not.toThrow();
    await expectInputError(() => checkTangOptions({ ...base, hosts: 3 }), '3 hosts and no --tang-thp', '--trust-first-use');
    expect(() => checkTangOptions({ ...base, hosts: 3, trustFirstUse: true })).not.toThrow();
    expect(() => checkTangOptions({ ...base, hosts: 3, tangThps: [thp('k1')] })).not.toThrow();
  });

  it('wants one thumbprint per URL, each a base64url thumbprint', async () => {
    await expectInputError(() => checkTangOptions({ ...base, tangUrls: [TANG, 'http://b.example'], tangThps: [thp('k1')], threshold: 1 }), '--tang-thp', 'one thumbprint per --tang URL');
    await expectInputError(() => checkTangOptions({ ...base, tangThps: ['not a thp!'] }), '--tang-thp', 'not a JWK thumbprint');
    expect(() => checkTangOptions({ ...base, tangUrls: ['nope'] })).toThrow(InputError);
    await expectInputError(() => checkTangOptions({ ...base, threshold: 2 }), '--threshold 2 exceeds');
  });
});
