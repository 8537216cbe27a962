/**
 * The fleet commands at site scale, against 100 real SSH daemons on loopback ports
 * (test/fleet-load/: dropbear with a stand-in cryptroot-unlock, then OpenSSH with stand-in
 * tools), with faults spread over the fleet: silent hosts, a reset mid-session, a changed
 * host key, a refused passphrase, hosts 2 s late, hosts already up. No QEMU: what a machine
 * really does is fleet.test.ts's; this file checks the engine at scale:
 *
 *   1. `unlock`, Ctrl-C (SIGINT to the CLI) after 30 hosts: exit 130, every host exactly one
 *      record, the retry file lists exactly the hosts not done
 *   2. `unlock --limit @retry --wait`: the re-run continues with exactly those hosts (the
 *      late ones switched on as it starts); each host's record names what happened to it;
 *      exit 1; the retry file lists the failed ones
 *   3. the silent hosts answer again; `unlock --limit @retry` touches only the failed ones:
 *      the silent and reset ones unlock, the others fail again
 *   4. `status` over all: every booted host read from its own state files, the locked ones
 *      reported at dropbear; exit 0, no retry file left
 *
 * About 80 s here, most of it step 2's silent hosts (5 banner reads of 10 s, 3 s apart).
 */
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LoadFleet, runKeylessgo, type CliRun, type LoadHost } from '../fleet-load/load-fleet.js';

const COUNT = 100;
const PARALLEL = '25';
let fleet: LoadFleet;

beforeAll(async () => {
  fleet = await LoadFleet.start(COUNT);
}, 120_000);

afterAll(async () => {
  await fleet?.stop();
});

const common = () => ['--inventory', fleet.files.inventory, '--key', fleet.files.key, '--known-hosts', fleet.files.knownHosts, '--parallel', PARALLEL, '--json'];
const unlockArgs = (...extra: string[]) => ['unlock', ...common(), '--passphrase-file', fleet.files.passphrase, ...extra];
const retryFile = (command: string) => join(fleet.dir, `inventory.${command}.retry`);
const readRetry = async (command: string) => (await readFile(retryFile(command), 'utf8')).trim().split('\n');
const byName = (names: Iterable<string>) => [...names].sort();
const host = (name: string) => fleet.hosts.find((h) => h.name === name)!;

/**
 * What the machines were before a run: the hosts up (booted, or unlocked by an earlier run,
 * also one whose record says interrupted: Ctrl-C met it after the unlock), the reset hosts
 * whose reset is still to come.
 */
let up = new Set<string>();
let resetting = new Set<string>();
/** The late hosts' machines are switched on (at the start of step 2): before, nothing listens on their ports. */
let lateOn = false;

async function beforeRun(): Promise<void> {
  up = new Set();
  resetting = new Set();
  for (const h of fleet.hosts) {
    if ((await fleet.state(h)) === 'up') up.add(h.name);
    if (await fleet.resetPending(h)) resetting.add(h.name);
  }
}

const unlocked = { result: 'ok', text: /^unlocked; dropbear key SHA256:\S+ \(\S+known_hosts\)(, OpenSSH up after [\d.]+ s)?$/ };

/** What unlock must report for a host that it finished, by the host's fault. */
function unlockOutcome(h: LoadHost): { result: string; text: RegExp } {
  if (up.has(h.name)) return { result: 'skipped', text: /^already up \(OpenSSH answers\)$/ };
  switch (h.fault === 'reset' && !resetting.has(h.name) ? undefined : h.fault) {
    case 'silent':
      return { result: 'failed', text: /^no SSH server answers on 127\.0\.0\.1:\d+: connection accepted, no SSH banner within 10 s \(5 attempts\)$/ };
    case 'reset':
      return { result: 'failed', text: /^the SSH connection ended before cryptroot-unlock told whether the volume opened \(its last line: Please unlock disk cryptroot\)/ };
    case 'changed-host-key':
      return { result: 'failed', text: /^refused, nothing sent: host key ssh-ed25519 SHA256:\S+ is not in \S+known_hosts \(2 other key\(s\) for \[node\d+\]:\d+\)$/ };
    case 'refused-passphrase':
      return { result: 'failed', text: /^the passphrase did not unlock the volume; cryptroot-unlock said: cryptsetup: cryptsetup failed, bad password or options\?$/ };
    case 'late':
      if (!lateOn) return { result: 'failed', text: /^no SSH server answers on 127\.0\.0\.1:\d+: connection refused \(5 attempts\)$/ };
      return unlocked;
    default:
      return unlocked;
  }
}

function expectOutcome(run: CliRun, name: string): void {
  const record = run.records.find((r) => r.host === name)!;
  const { result, text } = unlockOutcome(host(name));
  expect({ host: name, result: record.result, text: record.error ?? record.summary }).toEqual({ host: name, result, text: expect.stringMatching(text) });
}

const unfinished = (run: CliRun) => run.records.filter((r) => r.result !== 'ok' && r.result !== 'skipped').map((r) => r.host);

describe('fleet commands over 100 SSH daemons', () => {
  it('unlock, interrupted by Ctrl-C: exit 130, one record per host, the hosts not done in the retry file', async () => {
    await beforeRun();
    expect(up.size).toBeGreaterThan(0);
    expect(resetting.size).toBeGreaterThan(0);
    const firstRun = await runKeylessgoLogged(unlockArgs(), { interruptAfter: 30 });
    expect(firstRun.exitCode, firstRun.stderr).toBe(130);
    expect(byName(firstRun.records.map((r) => r.host))).toEqual(byName(fleet.hosts.map((h) => h.name)));
    const counts = (result: string) => firstRun.records.filter((r) => r.result === result).length;
    expect(counts('ok') + counts('skipped') + counts('failed')).toBeGreaterThanOrEqual(30);
    expect(counts('not-started')).toBeGreaterThan(0);
    for (const record of firstRun.records) {
      if (record.result === 'interrupted') expect(record.error).toBe('interrupted by SIGINT');
      else if (record.result === 'not-started') expect(record.summary).toBe('interrupted before this host started');
      else expectOutcome(firstRun, record.host);
    }
    expect(byName(await readRetry('unlock'))).toEqual(byName(unfinished(firstRun)));
    expect(firstRun.stderr).toContain(`retry file: ${retryFile('unlock')}`);
  }, 60_000);

  it('unlock --limit @retry --wait continues with exactly those hosts; each record names what happened', async () => {
    const expected = await readRetry('unlock');
    await beforeRun();
    // The late hosts' daemons come 2 s after this run starts, and their OpenSSH 2 s after the unlock.
    await fleet.powerOnLate();
    lateOn = true;
    const run = await runKeylessgoLogged(unlockArgs('--limit', `@${retryFile('unlock')}`, '--wait', '30'));
    expect(run.exitCode, run.stderr).toBe(1);
    expect(byName(run.records.map((r) => r.host))).toEqual(byName(expected));
    for (const name of expected) expectOutcome(run, name);
    // Between the two runs every host has its outcome; the failed ones are the faulty ones.
    const faulty = fleet.hosts.filter((h) => ['silent', 'changed-host-key', 'refused-passphrase'].includes(h.fault ?? '') || resetting.has(h.name)).map((h) => h.name);
    expect(byName(await readRetry('unlock'))).toEqual(byName(faulty));
    for (const h of fleet.hosts) expect({ host: h.name, state: await fleet.state(h) }).toEqual({ host: h.name, state: faulty.includes(h.name) ? 'locked' : 'up' });
    // The late hosts answered on a later banner read, the others' OpenSSH after their unlock.
    const late = run.records.filter((r) => host(r.host).fault === 'late');
    expect(late.length).toBeGreaterThan(0);
    for (const record of late) expect(record.seconds).toBeGreaterThanOrEqual(2);
    for (const record of run.records.filter((r) => r.result === 'ok')) expect(record.summary).toMatch(/, OpenSSH up after [\d.]+ s$/);
  }, 120_000);

  it('after the silent hosts answer again, a retry touches only the failed: silent and reset ones unlock', async () => {
    const failed = await readRetry('unlock');
    for (const h of fleet.hosts.filter((x) => x.fault === 'silent')) await fleet.resume(h);
    await beforeRun();
    const run = await runKeylessgoLogged(unlockArgs('--limit', `@${retryFile('unlock')}`));
    expect(run.exitCode, run.stderr).toBe(1);
    expect(byName(run.records.map((r) => r.host))).toEqual(byName(failed));
    for (const record of run.records) {
      const fault = host(record.host).fault;
      if (fault === 'silent' || fault === 'reset') expect({ host: record.host, result: record.result }).toEqual({ host: record.host, result: 'ok' });
      else expectOutcome(run, record.host);
    }
    expect(byName(await readRetry('unlock'))).toEqual(byName(fleet.hosts.filter((h) => h.fault === 'changed-host-key' || h.fault === 'refused-passphrase').map((h) => h.name)));
  }, 60_000);

  it('status reads each booted host from its own state; the locked ones are at dropbear', async () => {
    const run = await runKeylessgoLogged(['status', ...common(), '--passphrase-file', fleet.files.passphrase]);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(byName(run.records.map((r) => r.host))).toEqual(byName(fleet.hosts.map((h) => h.name)));
    for (const record of run.records) {
      const h = host(record.host);
      const locked = h.fault === 'changed-host-key' || h.fault === 'refused-passphrase';
      const summary = locked ? 'at dropbear, locked' : `keyslots 0,1; 1 binding(s), ${h.tangDown ? 0 : 1} decrypt; bootstrap passphrase opens; volume key unknown; dropbear in initramfs`;
      expect({ host: record.host, result: record.result, summary: record.summary }).toEqual({ host: record.host, result: 'ok', summary });
    }
    await expect(access(retryFile('status'))).rejects.toThrow(/ENOENT/);
  }, 60_000);

  it('leaves no daemon behind', async () => {
    const dir = fleet.dir;
    await fleet.stop();
    const left = async () => (await execa('ps', ['-eo', 'args'])).stdout.split('\n').filter((line) => line.includes(dir));
    // SIGKILL is sent to every machine's process group; give the kernel a moment to end them.
    for (let polls = 0; polls < 20 && (await left()).length > 0; polls++) await sleep(100);
    expect(await left()).toEqual([]);
    await expect(access(dir)).rejects.toThrow(/ENOENT/);
  });
});

/** Runs the CLI in the fleet's directory; its wall time goes to the log. */
async function runKeylessgoLogged(args: string[], options: { interruptAfter?: number } = {}): Promise<CliRun> {
  const run = await runKeylessgo(args, { ...options, cwd: fleet.dir });
  process.stderr.write(`fleet-load: ${args[0]} ${args.includes('--limit') ? '--limit @retry ' : ''}${run.records.length} hosts in ${run.seconds.toFixed(1)} s, exit ${run.exitCode}, peak RSS ${(run.peakRssBytes / 1e6).toFixed(0)} MB, ${run.peakFds} fds\n`);
  return run;
}
