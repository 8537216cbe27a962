/**
 * The enroll sequence against a scripted machine: order of steps, secrets only on stdin,
 * and no step that removes a way in before the next one is proven.
 */
import { describe, expect, it } from 'vitest';
import { enroll, shellQuote, type Remote, type RemoteResult } from '../../src/nbde/enroll.js';
import { formatEnrollReport } from '../../src/nbde/enroll-command.js';
import { EnrollError } from '../../src/errors.js';
import { captureLogger } from './helpers.js';

const DEVICE = '/dev/vda4';
const BOOTSTRAP = 'bootstrap-passphrase-123';

const dump = (slots: number[]) => `LUKS header information\nVersion:       \t2\nUUID:          \tx\n\nKeyslots:\n${slots.map((s) => `  ${s}: luks2\n`).join('')}Tokens:\n`;

/** A machine whose answers are scripted by command pattern; records every command and stdin. */
class ScriptedMachine implements Remote {
  readonly calls: Array<{ command: string; stdin?: string }> = [];
  slots = [0, 1];
  digest = 'aaaa';

  constructor(private readonly failing?: RegExp) {}

  async run(command: string, stdin?: string): Promise<RemoteResult> {
    this.calls.push({ command, stdin });
    const ok = (output = ''): RemoteResult => ({ output, exitCode: 0 });
    if (this.failing?.test(command)) return { output: 'scripted failure', exitCode: 1 };
    if (command === 'findmnt -no SOURCE /') return ok('/dev/mapper/cryptroot\n');
    if (command.startsWith('cryptsetup status')) return ok(`  type:    LUKS2\n  device:  ${DEVICE}\n`);
    if (command.startsWith('cryptsetup luksDump --dump-volume-key')) return ok(this.digest);
    if (command.startsWith('cryptsetup luksDump')) return ok(dump(this.slots));
    if (command.startsWith('cryptsetup reencrypt')) {
      this.digest = 'bbbb';
      this.slots = [0];
      return ok();
    }
    if (command.startsWith('clevis luks list')) return ok(this.slots.includes(1) ? `1: tang '{"url":"http://tang.example"}'\n` : '');
    if (command.startsWith('clevis luks bind')) this.slots.push(1);
    if (command.startsWith('cryptsetup luksAddKey')) this.slots.push(2);
    if (command.startsWith('cryptsetup luksRemoveKey')) this.slots = this.slots.filter((s) => s !== 0);
    if (command.startsWith('cryptsetup open --test-passphrase') && command.includes('/bootstrap') && !this.slots.includes(0)) return { output: 'No key available', exitCode: 2 };
    return ok();
  }

  index(pattern: RegExp): number {
    return this.calls.findIndex((call) => pattern.test(call.command));
  }
}

function run(machine: ScriptedMachine) {
  const { log, lines } = captureLogger();
  return { lines, result: enroll(machine, { tangUrls: ['http://tang.example'], threshold: 1, bootstrapPassphrase: BOOTSTRAP, dropbear: 'regenerate-key', log }) };
}

describe('enroll', () => {
  it('runs the steps in an order that always leaves a way in, and reports slots and key change', async () => {
    const machine = new ScriptedMachine();
    const report = await run(machine).result;
    const order = [/clevis encrypt/, /cryptsetup reencrypt/, /clevis luks bind/, /clevis luks pass/, /luksAddKey/, /luksRemoveKey/, /update-initramfs/].map((p) => machine.index(p));
    expect(order.every((i) => i >= 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(report).toMatchObject({ device: DEVICE, keyslotsBefore: [0, 1], keyslotsAfter: [1, 2], volumeKeyChanged: true, tang: { slot: 1, pin: 'tang' } });
  });

  it('never puts a secret on a command line; they travel on stdin and are wiped at the end', async () => {
    const machine = new ScriptedMachine();
    await run(machine).result;
    for (const call of machine.calls) expect(call.command).not.toContain(BOOTSTRAP);
    expect(machine.calls.some((call) => call.stdin === BOOTSTRAP)).toBe(true);
    const recovery = machine.calls.find((call) => call.command.includes('/recovery') && call.stdin)?.stdin;
    expect(recovery).toMatch(/^[A-Za-z0-9_-]{32}$/);
    for (const call of machine.calls) expect(call.command).not.toContain(recovery);
    expect(machine.calls.at(-1)!.command).toMatch(/dd if=\/dev\/zero .*rm -rf \/run\/keylessgo-enroll/);
  });

  it.each([
    ['Tang unreachable', /clevis encrypt/],
    ['the rotation', /cryptsetup reencrypt/],
    ['the binding', /clevis luks bind/],
    ['the recovery passphrase', /luksAddKey/],
  ])('keeps the bootstrap passphrase when %s fails, and still wipes the secrets', async (_what, failing) => {
    const machine = new ScriptedMachine(failing);
    await expect(run(machine).result).rejects.toBeInstanceOf(EnrollError);
    expect(machine.index(/luksRemoveKey/)).toBe(-1);
    expect(machine.calls.at(-1)!.command).toMatch(/rm -rf \/run\/keylessgo-enroll/);
  });

  it('refuses a machine the bootstrap passphrase does not open', async () => {
    const machine = new ScriptedMachine(/cryptsetup open --test-passphrase/);
    await expect(run(machine).result).rejects.toThrow(/does not open the root volume/);
  });

  it('refuses a machine whose root is not on dm-crypt', async () => {
    const machine = new ScriptedMachine();
    machine.run = async (command) => (command === 'findmnt -no SOURCE /' ? { output: '/dev/vda2\n', exitCode: 0 } : { output: '', exitCode: 0 });
    await expect(run(machine).result).rejects.toThrow(/\/ is on \/dev\/vda2, not on a dm-crypt mapping/);
  });

  it('quotes configs for the remote shell', () => {
    expect(shellQuote(`{"url":"http://a'b"}`)).toBe(`'{"url":"http://a'\\''b"}'`);
  });
});

describe('enroll report', () => {
  it('lists slots, each Tang server with its signing key, the key change and the step times', () => {
    const table = formatEnrollReport({
      device: DEVICE,
      keyslotsBefore: [0, 1],
      keyslotsAfter: [1, 2],
      tang: { slot: 1, pin: 'tang', servers: [{ url: 'http://tang.example', thumbprints: ['abcdefghijklmnopqrstuvwxyz'] }] },
      volumeKeyChanged: true,
      bootstrapRemoved: true,
      dropbear: 'keep',
      stepSeconds: { 'bind to Tang': 3.2 },
    });
    expect(table).toMatch(/^keyslots before +0, 1$/m);
    expect(table).toMatch(/^ {2}http:\/\/tang\.example +signing key abcdefghijklmnopqrstuvwxyz$/m);
    expect(table).toMatch(/^volume key changed +yes$/m);
    expect(table).toMatch(/^recovery passphrase +added \(not written out/m);
    expect(table).toMatch(/^dropbear \(SSH unlock fallback\) +kept, host key unchanged$/m);
    expect(table).toMatch(/^ {2}bind to Tang +3\.2 s$/m);
  });
});
