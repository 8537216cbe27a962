/**
 * `keylessgo unlock`: for machines waiting at dropbear in the initramfs (after a power cut,
 * with Tang down), sends the bootstrap or recovery passphrase to `cryptroot-unlock`, on
 * stdin, once dropbear's host key is proven to be the image's (manifest.json) or a known one
 * (known_hosts). Machines already up (OpenSSH answers) are skipped.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { InputError } from '../errors.js';
import type { Logger } from '../log.js';
import { readPassphraseFile } from '../base/secrets.js';
import { exec, readPrivateKey, type HostKey } from '../ssh/client.js';
import { connectTarget, noSshServer, probeSshServer, RETRY_ATTEMPTS } from './connect.js';
import { readHostKeyTrust, type HostKeyTrust } from './host-keys.js';
import { runFleet, type FleetReport, type HostProgress } from './run.js';
import type { FleetTarget } from './targets.js';

export const UNLOCK_COMMAND = 'cryptroot-unlock';
/** What cryptroot-unlock prints once cryptsetup has opened the volume. */
const UNLOCKED = /set up successfully/;
/**
 * cryptroot-unlock returns once the keyslot's KDF has run: seconds on hardware, a minute
 * under emulation with an argon2id slot (see boot-test.ts).
 */
const UNLOCK_TIMEOUT_MS = 300_000;
const WAIT_POLL_MS = 3000;

export interface UnlockOptions {
  keyFile: string;
  passphraseFile: string;
  manifest?: string;
  knownHosts?: string;
  /** After unlocking, wait this long for the booted system's OpenSSH (0: do not wait). */
  waitSeconds: number;
  parallel?: number;
  json: boolean;
  log: Logger;
}

export interface UnlockResult {
  outcome: 'unlocked' | 'already up';
  hostKey?: HostKey;
  /** Which file vouched for dropbear's host key. */
  trustedBy?: string;
  /** Seconds from the unlock until OpenSSH answered (with --wait). */
  upAfterSeconds?: number;
}

function lastLine(text: string): string {
  return text.trim().split('\n').filter(Boolean).at(-1) ?? '(no output)';
}

async function waitForOpenSsh(target: FleetTarget, seconds: number, signal: AbortSignal): Promise<number> {
  const started = performance.now();
  while (performance.now() - started < seconds * 1000) {
    if ((await probeSshServer(target)).server === 'openssh') return Math.round((performance.now() - started) / 100) / 10;
    await sleep(WAIT_POLL_MS, undefined, { signal });
  }
  throw new Error(`unlocked, but OpenSSH did not answer within ${seconds} s`);
}

export async function unlockHost(target: FleetTarget, inputs: { privateKey: string; passphrase: string; trust: HostKeyTrust; waitSeconds: number }, progress: HostProgress): Promise<UnlockResult> {
  progress.phase('reading the SSH banner');
  const probe = await probeSshServer(target, RETRY_ATTEMPTS, progress.signal);
  if (probe.server === 'openssh') return { outcome: 'already up' };
  if (probe.server === 'none') throw noSshServer(target, probe.why);
  if (probe.server === 'other') throw new Error(`not dropbear: the server says "${probe.banner}"`);
  progress.phase('checking dropbear\'s host key');
  const { client, hostKey, trustedBy } = await connectTarget(target, inputs.privateKey, progress.signal, inputs.trust);
  try {
    progress.phase('unlocking');
    const result = await exec(client, UNLOCK_COMMAND, { timeoutMs: UNLOCK_TIMEOUT_MS, signal: progress.signal, stdin: inputs.passphrase });
    if (!UNLOCKED.test(result.output)) {
      // No exit status: the connection ended under the command (a reset, dropbear killed), the outcome is unknown.
      if (result.exitCode === undefined) throw new Error(`the SSH connection ended before cryptroot-unlock told whether the volume opened (its last line: ${lastLine(result.output)}); run unlock again: a machine that booted is skipped`);
      throw new Error(`the passphrase did not unlock the volume; cryptroot-unlock said: ${lastLine(result.output)}`);
    }
  } finally {
    client.end();
  }
  if (inputs.waitSeconds === 0) return { outcome: 'unlocked', hostKey, trustedBy };
  progress.phase('waiting for the booted system\'s OpenSSH');
  return { outcome: 'unlocked', hostKey, trustedBy, upAfterSeconds: await waitForOpenSsh(target, inputs.waitSeconds, progress.signal) };
}

export function describeUnlock(result: UnlockResult) {
  if (result.outcome === 'already up') return { summary: 'already up (OpenSSH answers)', skipped: true };
  const up = result.upAfterSeconds === undefined ? '' : `, OpenSSH up after ${result.upAfterSeconds} s`;
  return { summary: `unlocked; dropbear key ${result.hostKey!.fingerprint} (${result.trustedBy})${up}` };
}

export async function unlockCommand(targets: FleetTarget[], options: UnlockOptions): Promise<FleetReport<UnlockResult>> {
  if (!options.manifest && !options.knownHosts) {
    throw new InputError("give --manifest FILE (the image's manifest.json) or --known-hosts FILE: a passphrase is never sent to a dropbear whose host key is not known");
  }
  const trust = await readHostKeyTrust(options);
  const privateKey = await readPrivateKey(options.keyFile);
  const passphrase = await readPassphraseFile(options.passphraseFile);
  options.log.redactor.add(passphrase);
  return runFleet(targets, { command: 'unlock', log: options.log, parallel: options.parallel, json: options.json, describe: describeUnlock }, (target, progress) =>
    unlockHost(target, { privateKey, passphrase, trust, waitSeconds: options.waitSeconds }, progress),
  );
}
