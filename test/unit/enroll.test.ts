/**
 * The enroll state machine against a scripted machine: the whole sequence from a fresh image,
 * every point a re-run can resume from, order of steps (always a way in), secrets only on
 * stdin, Tang pinning; and the report.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EnrollError } from '../../src/errors.js';
import { enroll, RECOVERY_SLOT, shellQuote, type DropbearAction, type EnrollStep } from '../../src/nbde/enroll.js';
import { formatEnrollReport } from '../../src/nbde/enroll-command.js';
import { captureLogger } from './helpers.js';
import { DEVICE, FakeLuksMachine, TANG, thp } from './fake-luks-machine.js';

const BOOTSTRAP = 'bootstrap-passphrase-123';
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'keylessgo-enroll-test-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function run(machine: FakeLuksMachine, options: { dropbear?: DropbearAction; recoveryKeyOut?: string; tangThps?: string[] } = {}) {
  const { log, lines } = captureLogger();
  const result = enroll(machine, { tangUrls: [TANG], tangThps: options.tangThps ?? [], threshold: 1, bootstrapPassphrase: BOOTSTRAP, dropbear: options.dropbear ?? 'regenerate-key', recoveryKeyOut: options.recoveryKeyOut, log, pollMs: 0 });
  return { lines, result };
}

/** The machine after a complete enrollment from its image. */
async function enrolled(): Promise<FakeLuksMachine> {
  const machine = new FakeLuksMachine(BOOTSTRAP);
  await run(machine).result;
  machine.calls.length = 0;
  return machine;
}

const FULL: EnrollStep[] = ['rotate the volume key', 'remove stale bindings', 'bind to Tang', 'add the recovery passphrase', 'update dropbear', 'remove the bootstrap passphrase'];

/** Runs enroll on a fresh image up to (not including) `step`, stopping as an interrupted run would. */
async function interruptedBefore(step: RegExp): Promise<FakeLuksMachine> {
  const machine = new FakeLuksMachine(BOOTSTRAP);
  machine.failing = step;
  await run(machine).result.catch(() => undefined);
  machine.failing = undefined;
  machine.calls.length = 0;
  return machine;
}

describe('enroll from the image', () => {
  it('takes every step in an order that always leaves a way in, and ends with Tang + recovery only', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    const recoveryKeyOut = join(dir, 'recovery');
    const report = await run(machine, { recoveryKeyOut }).result;
    expect(report.steps).toEqual(FULL);
    expect(report.dropbearHostKeys).toEqual(['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm8n root@machine']);
    expect(report).toMatchObject({ device: DEVICE, result: 'enrolled', keyslotsBefore: [0, 1], keyslotsAfter: [1, RECOVERY_SLOT], volumeKeyChanged: true, bootstrapRemoved: true });
    expect(report.tang).toEqual([{ slot: 1, pin: 'tang', servers: [{ url: TANG, thumbprints: [thp('k1')] }] }]);
    expect(report.trusted).toEqual([{ url: TANG, thumbprints: [thp('k1')], trust: 'first-use' }]);
    const order = [/clevis encrypt/, /systemd-run .*reencrypt/, /clevis luks unbind|token remove/, /clevis luks bind/, /luksAddKey/, /systemd-run .*initramfs/, /luksRemoveKey/].map((p) => machine.index(p));
    expect(order.every((i) => i >= 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    // The recovery passphrase is in its file (0600) and in keyslot 31.
    expect((await stat(recoveryKeyOut)).mode & 0o777).toBe(0o600);
    expect(machine.slots.get(RECOVERY_SLOT)).toEqual({ opener: 'passphrase', secret: (await readFile(recoveryKeyOut, 'utf8')).trim() });
    expect(report.recovery.note).toBe(`added, written to ${recoveryKeyOut}`);
  });

  it('runs the re-encryption and the dropbear update as detached systemd units, the unit wiping its key copy when it stops', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    await run(machine).result;
    const [reencrypt] = machine.commands(/systemd-run .*keylessgo-enroll-reencrypt/);
    expect(reencrypt).toMatch(/--collect --unit=keylessgo-enroll-reencrypt /);
    expect(reencrypt).toMatch(/cryptsetup reencrypt --key-file \/run\/keylessgo-enroll\/reencrypt-unit --progress-frequency 10 .*--key-slot 0 --resilience checksum \/dev\/vda4/);
    // --batch-mode would silence the progress lines the journal and keylessgo show.
    expect(reencrypt).not.toContain('--batch-mode');
    expect(reencrypt).toMatch(/--property='ExecStopPost=\/bin\/sh -c .*dd if=\/dev\/zero.*rm -rf \/run\/keylessgo-enroll\/reencrypt-unit/);
    // New host keys appended to each initramfs, not a rebuild (minutes with MODULES=most on a small machine).
    const [dropbear] = machine.commands(/systemd-run .*keylessgo-enroll-initramfs/);
    // Every $ doubled: systemd would otherwise expand ${t} in the Exec line itself.
    expect(dropbear).toMatch(/dropbearkey -t \$\$t -f dropbear_\$\$\{t\}_host_key\.new/);
    expect(dropbear).toMatch(/cpio --quiet -o -H newc/);
    expect(dropbear).not.toMatch(/update-initramfs|>\s*\/dev\/null/);
    // Recorded before the rotation: how a re-run knows the key is no longer the image's.
    expect(machine.index(/image-volume-key-digest-salt; \}/)).toBeLessThan(machine.index(/systemd-run .*reencrypt/));
  });

  it('never puts a secret on a command line; they travel on stdin and are wiped at the end', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    await run(machine).result;
    for (const call of machine.calls) expect(call.command).not.toContain(BOOTSTRAP);
    expect(machine.calls.some((call) => call.stdin === BOOTSTRAP)).toBe(true);
    const recovery = machine.calls.find((call) => call.command.includes('/recovery') && call.stdin)?.stdin;
    expect(recovery).toMatch(/^[A-Za-z0-9_-]{32}$/);
    for (const call of machine.calls) expect(call.command).not.toContain(recovery);
    expect(machine.calls.at(-1)!.command).toMatch(/dd if=\/dev\/zero .*rm -rf \/run\/keylessgo-enroll$/);
    expect([...machine.files.keys()].filter((f) => f.startsWith('/run/'))).toEqual([]);
  });

  it('runs a keyslot KDF again only when the keyslots changed: the bootstrap test once per layout, each binding proven once', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    await run(machine).result;
    const bootstrapTests = machine.commands(/^cryptsetup open --test-passphrase --verbose --key-file \/run\/keylessgo-enroll\/bootstrap /).length;
    const bindingProofs = machine.commands(/^clevis luks pass .*\| cryptsetup open --test-passphrase/).length;
    // Layouts: the image's [0,1]; rotated [0]; bound [0,1]; recovery [0,1,31]; bootstrap gone [1,31]
    // (the dropbear step leaves the keyslots as they are), plus the check after the removal.
    expect(bootstrapTests).toBe(6);
    // The binding: proven after it was made, its proof kept through the steps that follow.
    expect(bindingProofs).toBe(1);
  });

  it('with --dropbear keep rebuilds nothing', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    const report = await run(machine, { dropbear: 'keep' }).result;
    expect(report.steps).not.toContain('update dropbear');
    expect(machine.index(/update-initramfs/)).toBe(-1);
  });
});

describe('enroll resumes where an interrupted run left the machine', () => {
  it('re-encryption still running (keylessgo killed or disconnected): waits for its unit, then goes on', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    machine.files.set('/var/lib/keylessgo/enroll/image-volume-key-digest-salt', `${machine.digestSalt}\n`);
    machine.reencryptFlag = true;
    machine.units.set('keylessgo-enroll-reencrypt', { polls: 3, finish: () => machine.rotate() });
    const { result, lines } = run(machine);
    const report = await result;
    expect(report.steps).toEqual(['wait for the re-encryption', ...FULL.slice(1)]);
    expect(machine.index(/systemd-run .*reencrypt/)).toBe(-1);
    expect(lines.some((line) => /keylessgo-enroll-reencrypt: Progress: +50\.0%/.test(line))).toBe(true);
    expect(report.volumeKeyChanged).toBe(true);
  });

  it('a systemctl that times out on a loaded machine is asked again, never taken for an ended unit', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    machine.files.set('/var/lib/keylessgo/enroll/image-volume-key-digest-salt', `${machine.digestSalt}\n`);
    machine.reencryptFlag = true;
    machine.units.set('keylessgo-enroll-reencrypt', { polls: 2, finish: () => machine.rotate() });
    machine.systemctlTimeouts = 3;
    const report = await run(machine).result;
    expect(report.steps[0]).toBe('wait for the re-encryption');
    expect(machine.index(/systemd-run .*reencrypt/)).toBe(-1);
  });

  it('re-encryption interrupted with no unit left (machine rebooted): resumes it with --resume-only, detached', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    machine.files.set('/var/lib/keylessgo/enroll/image-volume-key-digest-salt', `${machine.digestSalt}\n`);
    machine.reencryptFlag = true;
    const report = await run(machine).result;
    expect(report.steps).toEqual(['resume the re-encryption', ...FULL.slice(1)]);
    expect(machine.commands(/systemd-run/)[0]).toMatch(/cryptsetup reencrypt .*--resume-only \/dev\/vda4/);
  });

  it('a resumed re-encryption that fails again is reported with its journal, the bootstrap kept', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    machine.files.set('/var/lib/keylessgo/enroll/image-volume-key-digest-salt', `${machine.digestSalt}\n`);
    machine.reencryptFlag = true;
    machine.reencryptFails = true;
    await expect(run(machine).result).rejects.toThrow(/"resume the re-encryption" failed: `cryptsetup reencrypt .*--resume-only \/dev\/vda4` exited 1 in keylessgo-enroll-reencrypt; its last lines: .*No usable keyslot is available\./);
    expect(machine.slots.get(0)).toEqual({ opener: 'passphrase', secret: BOOTSTRAP });
  });

  it('rotated, the stale build-time binding already gone, not bound yet: binds', async () => {
    const machine = await interruptedBefore(/clevis luks bind/);
    expect(machine.tokens.size).toBe(0);
    const report = await run(machine).result;
    expect(report.steps).toEqual(FULL.slice(2));
  });

  it('a bind interrupted between keyslot and token: the stray keyslot is killed, then bound', async () => {
    const machine = await interruptedBefore(/clevis luks bind/);
    machine.slots.set(1, { opener: 'clevis', key: 'k1' });
    const report = await run(machine).result;
    expect(report.steps).toEqual(['remove stale bindings', ...FULL.slice(2)]);
    expect(machine.commands(/luksKillSlot/)).toEqual([`cryptsetup luksKillSlot --batch-mode --key-file /run/keylessgo-enroll/bootstrap ${DEVICE} 1`]);
  });

  it('a binding made after the rotation whose Tang key is gone now (Tang up): unbound with the bootstrap on stdin, then bound again', async () => {
    const machine = await interruptedBefore(/luksAddKey/);
    machine.tang.served = 'k2';
    machine.tang.recoverable = new Set(['k2']);
    const report = await run(machine).result;
    expect(report.steps).toEqual(['remove stale bindings', ...FULL.slice(2)]);
    expect(machine.commands(/clevis luks unbind/)).toEqual([`cat /run/keylessgo-enroll/bootstrap | clevis luks unbind -f -d ${DEVICE} -s 1`]);
    expect(report.tang[0]!.servers[0]!.thumbprints).toEqual([thp('k2')]);
  });

  it('bound, no recovery yet, and a recovery file left by the interrupted run: that passphrase is used, no second one made', async () => {
    const machine = await interruptedBefore(/luksAddKey/);
    const recoveryKeyOut = join(dir, 'recovery');
    await writeFile(recoveryKeyOut, 'written-before-the-interruption\n', { mode: 0o600 });
    const { result, lines } = run(machine, { recoveryKeyOut });
    const report = await result;
    expect(report.steps).toEqual(FULL.slice(3));
    expect(machine.slots.get(RECOVERY_SLOT)).toEqual({ opener: 'passphrase', secret: 'written-before-the-interruption' });
    expect(lines.some((line) => line.includes('left by an interrupted run'))).toBe(true);
  });

  it('recovery added, its file present: verified against keyslot 31, then dropbear and the bootstrap', async () => {
    const recoveryKeyOut = join(dir, 'recovery');
    const machine = new FakeLuksMachine(BOOTSTRAP);
    machine.failing = /systemd-run .*initramfs/;
    await run(machine, { recoveryKeyOut }).result.catch(() => undefined);
    machine.failing = undefined;
    const report = await run(machine, { recoveryKeyOut }).result;
    expect(report.steps).toEqual(['update dropbear', 'remove the bootstrap passphrase']);
    expect(report.recovery.note).toBe(`added by an earlier run, ${recoveryKeyOut} opens it`);
  });

  it('recovery added but its file is not where this run was told: says so and invents no new one', async () => {
    const machine = await interruptedBefore(/systemd-run .*initramfs/);
    const recoveryKeyOut = join(dir, 'elsewhere');
    const report = await run(machine, { recoveryKeyOut }).result;
    expect(report.recovery.note).toMatch(/added by an earlier run.*does not exist: no new one was made/);
    await expect(stat(recoveryKeyOut)).rejects.toThrow(/ENOENT/);
    expect(machine.index(/luksAddKey/)).toBe(-1);
  });

  it('a dropbear update that fails names the command, its exit status and last lines, and keeps the bootstrap', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    machine.initramfsFails = { label: 'append the new host keys to each initramfs', lines: ['cp: error writing \'/boot/initrd.img-6.1.0-28-amd64.keylessgo-new\': No space left on device'] };
    await expect(run(machine).result).rejects.toThrow(/"update dropbear" failed: `append the new host keys to each initramfs` exited 1 in keylessgo-enroll-initramfs; its last lines: cp: error writing .*No space left on device/);
    expect(machine.slots.get(0)).toEqual({ opener: 'passphrase', secret: BOOTSTRAP });
  });

  it('initramfs rebuild still running: waits for its unit, then removes the bootstrap', async () => {
    const machine = await interruptedBefore(/systemd-run .*initramfs/);
    machine.units.set('keylessgo-enroll-initramfs', { polls: 2, finish: () => void machine.files.set('/var/lib/keylessgo/enroll/dropbear-done', 'regenerate-key\n') });
    const report = await run(machine).result;
    expect(report.steps).toEqual(['wait for the initramfs rebuild', 'remove the bootstrap passphrase']);
  });

  it('interrupted just before removing the bootstrap: removes it and tests it fails', async () => {
    const machine = await interruptedBefore(/luksRemoveKey/);
    const report = await run(machine).result;
    expect(report.steps).toEqual(['remove the bootstrap passphrase']);
    expect(machine.slots.get(0)).toBeUndefined();
  });

  it('already enrolled: reports what it found and changes nothing', async () => {
    const machine = await enrolled();
    const report = await run(machine).result;
    expect(report).toMatchObject({ result: 'already-enrolled', steps: [], keyslotsAfter: [1, RECOVERY_SLOT], volumeKeyChanged: true, bootstrapRemoved: true });
    expect(report.tang[0]!.servers[0]!.thumbprints).toEqual([thp('k1')]);
    expect(machine.commands(/systemd-run|luksAddKey|luksRemoveKey|luksKillSlot|clevis luks (bind|unbind)|token remove/)).toEqual([]);
  });
});

describe('enroll refuses or stops before losing a way in', () => {
  it.each([
    ['Tang unreachable', /clevis encrypt|curl/],
    ['the rotation unit', /systemd-run .*reencrypt/],
    ['the binding', /clevis luks bind/],
    ['the recovery passphrase', /luksAddKey/],
  ])('keeps the bootstrap passphrase when %s fails, and still wipes the secrets', async (_what, failing) => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    machine.failing = failing;
    await expect(run(machine).result).rejects.toBeInstanceOf(EnrollError);
    expect(machine.index(/luksRemoveKey/)).toBe(-1);
    expect(machine.calls.at(-1)!.command).toMatch(/rm -rf \/run\/keylessgo-enroll$/);
  });

  it('never rotates when the pinned thumbprint does not sign the advertisement', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    await expect(run(machine, { tangThps: [thp('other')] }).result).rejects.toThrow(new RegExp(`thp ${thp('other')} is not a signing key`));
    expect(machine.index(/systemd-run/)).toBe(-1);
  });

  it('binds to the pinned key and says it was pinned', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    const { result, lines } = run(machine, { tangThps: [thp('k1')] });
    expect((await result).trusted).toEqual([{ url: TANG, thumbprints: [thp('k1')], trust: 'pinned' }]);
    expect(lines.some((line) => line.includes(`trusting signing key ${thp('k1')} (pinned by --tang-thp)`))).toBe(true);
    // The checked advertisement goes to clevis inline: it fetches nothing itself.
    expect(machine.commands(/clevis luks bind/)[0]).toContain('"adv":{"payload"');
  });

  it('does not unbind a binding that fails because Tang is down after the rotation', async () => {
    const machine = await interruptedBefore(/luksAddKey/);
    machine.tang.up = false;
    await expect(run(machine).result).rejects.toThrow(/Failed to connect/);
    expect(machine.index(/clevis luks unbind/)).toBe(-1);
  });

  it('refuses a machine the bootstrap passphrase does not open and no binding decrypts', async () => {
    const machine = await enrolled();
    machine.tang.up = false;
    await expect(run(machine).result).rejects.toThrow(/does not open the root volume, and no clevis binding decrypts now/);
  });

  it('refuses a machine whose root is not on dm-crypt', async () => {
    const machine = new FakeLuksMachine(BOOTSTRAP);
    machine.run = async (command) => (command === 'findmnt -no SOURCE /' ? { output: '/dev/vda2\n', exitCode: 0 } : { output: '', exitCode: 0 });
    await expect(run(machine).result).rejects.toThrow(/\/ is on \/dev\/vda2, not on a dm-crypt mapping/);
  });

  it('quotes configs for the remote shell', () => {
    expect(shellQuote(`{"url":"http://a'b"}`)).toBe(`'{"url":"http://a'\\''b"}'`);
  });
});

describe('enroll report', () => {
  it('lists the result, slots, each Tang server with its signing key, what was trusted, the key change and the step times', () => {
    const table = formatEnrollReport({
      device: DEVICE,
      result: 'enrolled',
      steps: ['wait for the re-encryption', 'bind to Tang'],
      keyslotsBefore: [0, 1],
      keyslotsAfter: [1, 31],
      tang: [{ slot: 1, pin: 'tang', servers: [{ url: TANG, thumbprints: ['abcdefghijklmnopqrstuvwxyz'] }] }],
      trusted: [{ url: TANG, thumbprints: ['abcdefghijklmnopqrstuvwxyz'], trust: 'pinned' }],
      volumeKeyChanged: true,
      bootstrapRemoved: true,
      recovery: { slot: 31, note: 'added (not written out: no --recovery-key-out)' },
      dropbear: 'regenerate-key',
      dropbearHostKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm8n root@machine'],
      stepSeconds: { 'bind to Tang': 3.2 },
    });
    expect(table).toMatch(/^dropbear \(SSH unlock fallback\) +kept, new host key$/m);
    expect(table).toMatch(/^ {2}dropbear host key +ssh-ed25519 SHA256:[A-Za-z0-9+/]{43}$/m);
    expect(table).toMatch(/^result +enrolled \(wait for the re-encryption, bind to Tang\)$/m);
    expect(table).toMatch(/^keyslots before +0, 1$/m);
    expect(table).toMatch(/^ {2}http:\/\/tang\.example +signing key abcdefghijklmnopqrstuvwxyz$/m);
    expect(table).toMatch(/^trusted http:\/\/tang\.example +abcdefghijklmnopqrstuvwxyz \(pinned\)$/m);
    expect(table).toMatch(/^volume key changed +yes$/m);
    expect(table).toMatch(/^recovery passphrase +keyslot 31: added \(not written out/m);
    expect(table).toMatch(/^ {2}bind to Tang +3\.2 s$/m);
  });
});
