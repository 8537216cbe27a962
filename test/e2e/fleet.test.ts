/**
 * Fleet operations on two guests from the fixture image, booted side by side (1 vCPU each),
 * reached through an Ansible inventory written now. Their build-time Tang is gone (a new
 * "fleet" Tang answers at the same address), so they wait at dropbear:
 *
 *   1. `unlock --inventory` unlocks both after checking dropbear's host key, and refuses a
 *      third entry (one of the guests under a name the known_hosts file does not vouch for):
 *      nothing sent to it, exit 1
 *   2. `status --json` before: bootstrap passphrase opens, volume key the image's
 *   3. `enroll --inventory --parallel 2 --known-hosts`, pinned to the fleet Tang's key: the SSH
 *      connection of one guest is dropped while its header shows the online re-encryption;
 *      that host fails at once, its re-encryption goes on as a systemd unit (checked); the
 *      other host is enrolled; a second `enroll` continues from where the first left it and
 *      finishes (the other host: already enrolled, skipped). Prints the wall times and steps
 *   4. `status --json` after; the volume key differs from the image's (read from the image
 *      file), recovery files 0600, no secret in any output
 *   5. Tang key rotation: tangd-rotate-keys, `rebind --inventory`, the old keys deleted
 *   6. the Ansible example's status run against one guest
 *   7. both guests powered off and booted again: they unlock through Tang with no SSH input
 *
 * One enrollment under TCG is minutes (the online re-encryption of the root): this file has
 * the repository's enroll checks, nbde.test.ts keeps the keyless boot.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, readdir, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { REENCRYPT_UNIT } from '../../src/nbde/enroll.js';
import { TANG_GUEST_ADDRESS } from '../../src/qemu/vm.js';
import { CLI, REPO } from './fixture.js';
import { dumpVolumeKey, extractPartition } from './image-reader.js';
import { createTang, type TangFixture } from './tang.js';
import { TestVm } from './vm-session.js';

const image = inject('image');
const BOOT_TIMEOUT_MS = 10 * 60 * 1000;
const TANG_URL = `http://${TANG_GUEST_ADDRESS}`;
const NAMES = ['node-a', 'node-b'] as const;
let dir: string;
let tang: TangFixture;
let tangLog: string;
const vms = new Map<string, TestVm>();
let inventory: string;
let knownHosts: string;
/** The booted systems' OpenSSH host keys, by inventory name (status sends the bootstrap passphrase only to those). */
let systemKnownHosts: string;
/** Everything keylessgo printed in this file: no secret may appear in it. */
const outputs: string[] = [];

interface HostRecord<T> {
  host: string;
  result: 'ok' | 'skipped' | 'failed' | 'interrupted' | 'not-started';
  seconds: number;
  summary: string;
  error?: string;
  details?: T;
}

/** Runs the CLI; `--json` output is one record per host. */
async function keylessgo(args: string[]): Promise<{ exitCode: number; records: Map<string, HostRecord<any>>; all: string }> {
  const result = await execa('node', [CLI, ...args], { all: true, reject: false });
  return parsed(result);
}

function parsed(result: { exitCode?: number; stdout?: unknown; all?: unknown }) {
  outputs.push(String(result.all));
  const records = new Map<string, HostRecord<any>>();
  for (const line of String(result.stdout).split('\n').filter((l) => l.startsWith('{'))) {
    const record = JSON.parse(line) as HostRecord<any>;
    records.set(record.host, record);
  }
  return { exitCode: result.exitCode ?? -1, records, all: String(result.all) };
}

const sshArgs = () => ['--inventory', inventory, '--key', image.privateKey];
const log = (message: string) => process.stderr.write(`fleet: ${message}\n`);

/** Boots both guests at once with the fleet Tang behind them; resolves when each shows `banner`. */
async function bootBoth(banner: RegExp): Promise<number[]> {
  await Promise.all([...vms.values()].map((vm) => vm.boot({ keyDir: tang.keyDir, logFile: tangLog }, {}, { cpus: 1 })));
  return Promise.all([...vms.values()].map((vm) => vm.waitFor(banner, BOOT_TIMEOUT_MS)));
}

async function writeInventory(): Promise<void> {
  const [a, b] = NAMES.map((name) => vms.get(name)!);
  inventory = join(dir, 'inventory.ini');
  // impostor: guest a's port under another name, which known_hosts does not vouch for; listed
  // first so that unlock meets it while guest a still waits at dropbear.
  await writeFile(inventory, `[others]\nimpostor ansible_host=127.0.0.1 ansible_port=${a!.port}\n\n[fleet]\n${NAMES[0]} ansible_host=127.0.0.1 ansible_port=${a!.port}\n${NAMES[1]} ansible_host=127.0.0.1 ansible_port=${b!.port}\n`);
}

beforeAll(async () => {
  dir = await mkdtemp(join(image.dir, 'fleet-'));
  tang = await createTang(dir);
  tangLog = join(dir, 'tang.log');
  for (const name of NAMES) vms.set(name, await TestVm.create(image, join(dir, name)));
  const seconds = await bootBoth(/dropbear/);
  log(`two guests (1 vCPU each) at dropbear after ${seconds.join(' s, ')} s`);
  await writeInventory();
  // dropbear's host key is the image's, the same on both guests: vouched for by name only.
  knownHosts = await scanKnownHosts('known_hosts-dropbear');
}, BOOT_TIMEOUT_MS);

async function retry<T>(work: () => Promise<T>, attempts = 5): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      if (attempt === attempts) throw error;
      await sleep(2000);
    }
  }
}

/** A known_hosts file with each guest's current ed25519 host key under its inventory name only. */
async function scanKnownHosts(file: string): Promise<string> {
  const lines = [];
  for (const name of NAMES) {
    // Right after the first banner QEMU's forward can still close the connection at once: ask again.
    const { stdout } = await retry(() => execa('ssh-keyscan', ['-t', 'ed25519', '-p', String(vms.get(name)!.port), '127.0.0.1']));
    const key = stdout.trim().split(/\s+/).slice(1).join(' ');
    expect(key).toMatch(/^ssh-ed25519 /);
    lines.push(`[${name}]:${vms.get(name)!.port} ${key}\n`);
  }
  await writeFile(join(dir, file), lines.join(''));
  return join(dir, file);
}


afterAll(async () => {
  await Promise.all([...vms.values()].map((vm) => vm.stop()));
  if (!process.env.KEYLESSGO_KEEP_FIXTURE) await rm(dir, { recursive: true, force: true });
});

describe('fleet', () => {
  it('unlock --inventory unlocks both guests and refuses the one whose host key is not vouched for', async () => {
    // All three at once: the impostor's refusal (key exchange, a second) meets guest a still at
    // dropbear, whose own unlock waits for its keyslot's KDF (a minute under TCG).
    const unlocked = await keylessgo(['unlock', ...sshArgs(), '--passphrase-file', image.passphraseFile, '--known-hosts', knownHosts, '--parallel', '3', '--limit', 'others:fleet', '--json']);
    expect(unlocked.exitCode, unlocked.all).toBe(1);
    expect(unlocked.records.get('impostor')).toMatchObject({ result: 'failed', error: expect.stringMatching(/refused, nothing sent/) });
    for (const name of NAMES) expect(unlocked.records.get(name), unlocked.all).toMatchObject({ result: 'ok', details: { outcome: 'unlocked' } });
    const seconds = await Promise.all([...vms.values()].map((vm) => vm.waitFor(/OpenSSH/, BOOT_TIMEOUT_MS)));
    log(`unlocked, OpenSSH after ${seconds.join(' s, ')} s`);
    systemKnownHosts = await scanKnownHosts('known_hosts-openssh');
  }, BOOT_TIMEOUT_MS);

  it('status --json before enrollment: the bootstrap passphrase opens, no binding decrypts', async () => {
    const status = await keylessgo(['status', ...sshArgs(), '--limit', 'fleet', '--passphrase-file', image.passphraseFile, '--known-hosts', systemKnownHosts, '--json']);
    for (const name of NAMES) {
      expect(status.records.get(name), status.all).toMatchObject({ result: 'ok', details: { state: 'up', bootstrapPassphrase: 'opens' } });
      // The build-time binding: its Tang keys are gone.
      expect(status.records.get(name)!.details.bindings).toEqual([expect.objectContaining({ decrypts: false })]);
    }
  }, 120_000);

  let thumbprint: string;
  it('enroll --inventory --parallel 2 enrolls both; a host whose connection drops mid re-encryption is finished by a second enroll', async () => {
    // tangd-keygen names each key file by its thumbprint: the signing one is the pin.
    thumbprint = await signingThumbprint();
    const enrollArgs = ['enroll', ...sshArgs(), '--known-hosts', systemKnownHosts, '--limit', 'fleet', '--parallel', '2', '--passphrase-file', image.passphraseFile, '--tang', TANG_URL, '--tang-thp', thumbprint, '--recovery-key-out', join(dir, '{host}.recovery'), '--json',
      // Rebuilding the initramfs for a new dropbear key takes minutes under TCG; unit tests cover that step.
      '--dropbear', 'keep'];
    const started = performance.now();
    const first = execa('node', [CLI, ...enrollArgs], { all: true, reject: false });
    const b = vms.get(NAMES[1])!;
    await dropConnectionDuringReencrypt(b, first);
    const firstRun = parsed(await first);
    const firstSeconds = (performance.now() - started) / 1000;
    expect(firstRun.exitCode, firstRun.all).toBe(1);
    expect(firstRun.records.get(NAMES[0]), firstRun.all).toMatchObject({ result: 'ok', details: { result: 'enrolled', volumeKeyChanged: true } });
    expect(firstRun.records.get(NAMES[1])).toMatchObject({ result: 'failed', error: expect.stringMatching(/SSH connection to 127\.0\.0\.1:\d+ was lost/) });
    const a = firstRun.records.get(NAMES[0])!;
    log(`enroll --parallel 2: ${firstSeconds.toFixed(1)} s wall; ${NAMES[0]} enrolled in ${a.seconds} s (steps ${JSON.stringify(a.details.stepSeconds)}), its re-encryption beside ${NAMES[1]}'s; ${NAMES[1]} dropped after ${firstRun.records.get(NAMES[1])!.seconds} s`);

    const resumedStarted = performance.now();
    const second = await keylessgo(enrollArgs);
    const resumedSeconds = (performance.now() - resumedStarted) / 1000;
    expect(second.exitCode, second.all).toBe(0);
    expect(second.records.get(NAMES[0])).toMatchObject({ result: 'skipped', details: { result: 'already-enrolled', steps: [] } });
    const resumed = second.records.get(NAMES[1])!;
    expect(resumed).toMatchObject({ result: 'ok', details: { result: 'enrolled', volumeKeyChanged: true, bootstrapRemoved: true } });
    // Its re-encryption still running (waited for) or ended on its own: either way it goes on from there, never rotating the key again.
    expect(['wait for the re-encryption', 'remove stale bindings']).toContain(resumed.details.steps[0]);
    expect(resumed.details.steps.slice(-3)).toEqual(['bind to Tang', 'add the recovery passphrase', 'remove the bootstrap passphrase']);
    expect(resumed.details.steps).not.toContain('rotate the volume key');
    log(`second enroll (${NAMES[1]} resumed alone, ${NAMES[0]} skipped): ${resumedSeconds.toFixed(1)} s wall; ${NAMES[1]} ${resumed.seconds} s (steps ${JSON.stringify(resumed.details.stepSeconds)})`);

    for (const name of NAMES) {
      const report = (name === NAMES[0] ? firstRun : second).records.get(name)!.details;
      expect(report.tang).toHaveLength(1);
      expect(report.tang[0].servers).toEqual([{ url: TANG_URL, thumbprints: [thumbprint] }]);
      expect(report.trusted).toEqual([{ url: TANG_URL, thumbprints: [thumbprint], trust: 'pinned' }]);
      expect([...report.keyslotsAfter].sort((x: number, y: number) => x - y)).toEqual([report.tang[0].slot, 31].sort((x, y) => x - y));
      const recoveryFile = join(dir, `${name}.recovery`);
      expect((await stat(recoveryFile)).mode & 0o777).toBe(0o600);
    }
    // The image's bootstrap and build-time binding slots; the resumed host also had the re-encryption's new one.
    expect(firstRun.records.get(NAMES[0])!.details.keyslotsBefore).toEqual([0, 1]);
    expect(resumed.details.keyslotsBefore).toContain(2);
    // No secret went to a host the known_hosts file does not vouch for: both were checked.
    for (const run of [firstRun, second]) expect(run.all).not.toMatch(/NOT checked/);
  }, 60 * 60 * 1000);

  it('after enrollment: status shows the new state, the volume keys differ from the image and from each other, the recovery passphrases open', async () => {
    const status = await keylessgo(['status', ...sshArgs(), '--limit', 'fleet', '--passphrase-file', image.passphraseFile, '--known-hosts', systemKnownHosts, '--tang-thp', thumbprint, '--json']);
    for (const name of NAMES) {
      const record = status.records.get(name);
      expect(record, status.all).toMatchObject({ result: 'ok', details: { bootstrapPassphrase: 'refused' } });
      expect(record!.details.bindings).toEqual([expect.objectContaining({ decrypts: true, dependsOnOldKey: false, servers: [expect.objectContaining({ url: TANG_URL, thumbprints: [thumbprint] })] })]);
    }
    const template = await dumpVolumeKey(await extractPartition(image.raw, await rootPartition(), join(dir, 'header'), 16 * 1024 * 1024), image.passphraseFile);
    const keys = new Set<string>();
    for (const name of NAMES) {
      const vm = vms.get(name)!;
      const recovery = (await readFile(join(dir, `${name}.recovery`), 'utf8')).trim();
      const device = (await vm.ssh("cryptsetup status cryptroot | awk '/device:/ {print $2}'")).output.trim();
      expect((await vm.ssh(`cryptsetup open --test-passphrase --key-file - ${device}`, image.passphrase)).exitCode).not.toBe(0);
      expect((await vm.ssh(`cryptsetup open --test-passphrase --key-slot 31 --key-file - ${device}`, recovery)).exitCode).toBe(0);
      const machineKey = (await vm.ssh(`cryptsetup luksDump --dump-volume-key --batch-mode --key-file - ${device} | sed -n '/MK dump:/,$p' | sed 's/MK dump://' | tr -d ' \\t\\n'`, recovery)).output.trim();
      expect(machineKey).toMatch(/^[0-9a-f]{128}$/);
      keys.add(machineKey);
      outputs.push(recovery);
    }
    expect(keys.size).toBe(2);
    expect(keys.has(template.key.toString('hex'))).toBe(false);
    // No secret in anything keylessgo printed (the recovery passphrases were pushed last: compare before them).
    const printed = outputs.slice(0, -2).join('\n');
    for (const secret of [image.passphrase, ...outputs.slice(-2)]) expect(printed).not.toContain(secret);
  }, 300_000);

  it('Tang key rotation: rebind moves both guests to the new key, then the old keys are deleted', async () => {
    const before = new Set(await readdir(tang.keyDir));
    await execa('/usr/libexec/tangd-rotate-keys', ['-d', tang.keyDir]);
    const newThumbprint = await signingThumbprint();
    expect(newThumbprint).not.toBe(thumbprint);
    const rebound = await keylessgo(['rebind', ...sshArgs(), '--known-hosts', systemKnownHosts, '--limit', 'fleet', '--parallel', '2', '--tang', TANG_URL, '--tang-thp', newThumbprint, '--json']);
    expect(rebound.exitCode, rebound.all).toBe(0);
    for (const name of NAMES) {
      expect(rebound.records.get(name)).toMatchObject({
        result: 'ok',
        details: { result: 'rebound', old: [{ servers: [{ url: TANG_URL, thumbprints: [thumbprint] }] }], current: { servers: [{ url: TANG_URL, thumbprints: [newThumbprint] }] } },
      });
    }
    // A second rebind finds nothing to do.
    const again = await keylessgo(['rebind', ...sshArgs(), '--known-hosts', systemKnownHosts, '--limit', 'fleet', '--tang', TANG_URL, '--tang-thp', newThumbprint, '--json']);
    for (const name of NAMES) expect(again.records.get(name), again.all).toMatchObject({ result: 'skipped', details: { result: 'current' } });
    // status: no host depends on the old keys now...
    const status = await keylessgo(['status', ...sshArgs(), '--limit', 'fleet', '--known-hosts', systemKnownHosts, '--tang-thp', newThumbprint, '--json']);
    for (const name of NAMES) expect(status.records.get(name)!.details.bindings, status.all).toEqual([expect.objectContaining({ decrypts: true, dependsOnOldKey: false })]);
    // ...so retire them (tangd-rotate-keys hid them as .<thp>.jwk).
    const hidden = (await readdir(tang.keyDir)).filter((file) => file.startsWith('.'));
    expect(hidden.map((file) => file.slice(1))).toEqual([...before].sort());
    for (const file of hidden) await unlink(join(tang.keyDir, file));
  }, 600_000);

  it('the Ansible example runs keylessgo status against one guest', async () => {
    const wrapper = join(dir, 'keylessgo');
    await writeFile(wrapper, `#!/bin/sh\nexec node ${CLI} "$@"\n`, { mode: 0o755 });
    const example = join(REPO, 'examples/ansible/keylessgo.yml');
    const played = await execa('ansible-playbook', ['-i', inventory, example, '--limit', NAMES[0], '-e', 'keylessgo_action=status', '-e', `keylessgo_command=${wrapper}`, '-e', `keylessgo_key=${image.privateKey}`],
      { all: true, reject: false, env: { ANSIBLE_HOST_KEY_CHECKING: 'False', ANSIBLE_NOCOLOR: '1' } });
    outputs.push(String(played.all));
    expect(played.exitCode, played.all).toBe(0);
    expect(played.all).toMatch(new RegExp(`${NAMES[0]}\\s*: ok=\\d+ .*failed=0`));
  }, 300_000);

  it('both guests, powered off and booted again, unlock through the rotated Tang with no SSH input', async () => {
    await Promise.all([...vms.values()].map(async (vm) => {
      await vm.ssh('systemctl poweroff').catch(() => undefined);
      await vm.stop();
    }));
    const requestsBefore = (await readFile(tangLog, 'utf8')).length;
    const seconds = await bootBoth(/OpenSSH/);
    log(`keyless boots after rotation reached OpenSSH after ${seconds.join(' s, ')} s`);
    for (const vm of vms.values()) expect((await vm.ssh('findmnt -no SOURCE /')).output.trim()).toBe('/dev/mapper/cryptroot');
    expect((await readFile(tangLog, 'utf8')).slice(requestsBefore).match(/POST \/rec\/\S+ => 200/g)?.length).toBeGreaterThanOrEqual(2);
  }, 2 * BOOT_TIMEOUT_MS);
});

/** The thumbprint of the Tang key that signs advertisements now (tangd names key files by thumbprint). */
async function signingThumbprint(): Promise<string> {
  for (const file of (await readdir(tang.keyDir)).filter((f) => !f.startsWith('.'))) {
    const jwk = JSON.parse(await readFile(join(tang.keyDir, file), 'utf8')) as { key_ops?: string[] };
    if (jwk.key_ops?.includes('verify')) return file.replace(/\.jwk$/, '');
  }
  throw new Error(`no signing key in ${tang.keyDir}`);
}

/** Prints 1 while the root's LUKS header shows an online re-encryption, else 0. */
const REENCRYPT_FLAG = "cryptsetup luksDump $(cryptsetup status cryptroot | awk '/device:/ {print $2}') | grep -c '^Requirements:.*online-reencrypt' || true";

/**
 * Waits until `vm`'s LUKS header shows the online re-encryption, then kills every other SSH
 * session on it (keylessgo's): the enroll of that host fails at once; its unit goes on.
 */
async function dropConnectionDuringReencrypt(vm: TestVm, enroll: ResultPromise): Promise<void> {
  let exited = false;
  void enroll.finally(() => (exited = true));
  for (;;) {
    if (exited) throw new Error('enroll ended before the re-encryption started');
    const { output } = await vm.ssh(REENCRYPT_FLAG);
    if (output.trim() === '1') break;
    await sleep(3000);
  }
  await sleep(10_000);
  // This command's own sshd processes are its parent and grandparent: everything else goes.
  const killed = await vm.ssh('me=$PPID; priv=$(ps -o ppid= -p $me | tr -d " "); for p in $(pgrep -f "^sshd: root"); do [ "$p" = "$me" ] || [ "$p" = "$priv" ] || kill "$p"; done; echo killed');
  expect(killed.output).toContain('killed');
  // The re-encryption goes on without keylessgo (stopReencryptAt then waits for it to get further).
  await sleep(5000);
  expect((await vm.ssh(`systemctl is-active ${REENCRYPT_UNIT}`)).output.trim()).toBe('active');
  log(`dropped the enroll connection of one guest during its re-encryption (${await reencryptProgress(vm)}% done); its unit is still active`);
}

/** The last progress `cryptsetup reencrypt` logged (its unit's journal), in percent. */
async function reencryptProgress(vm: TestVm): Promise<number> {
  const { output } = await vm.ssh(`journalctl --no-pager -o cat -u ${REENCRYPT_UNIT} | grep -o 'Progress: *[0-9.]*' | tail -1`);
  return Number(/([\d.]+)/.exec(output)?.[1] ?? 0);
}

async function rootPartition() {
  const manifest = JSON.parse(await readFile(image.manifestFile, 'utf8')) as { partitions: Array<{ label: string; startBytes: number; sizeBytes: number }> };
  return manifest.partitions.find((p) => p.label === 'keylessgo-root')!;
}
