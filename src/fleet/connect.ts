/** SSH to one fleet target: banner first (what is answering), then a session whose host key is judged before anything is sent. */
import { setTimeout as sleep } from 'node:timers/promises';
import type { AnyAuthMethod } from 'ssh2';
import { openSession, probeBanner, type Session } from '../ssh/client.js';
import { judgeHostKey, type HostKeyTrust } from './host-keys.js';
import type { FleetTarget } from './targets.js';

const BANNER_TIMEOUT_MS = 10_000;
const LOGIN_TIMEOUT_MS = 60_000;
/**
 * A machine that is booting (its initramfs reconfiguring the network, or QEMU's forward to it)
 * may close a connection before its banner: ask again, a few times, before calling it silent.
 * (openSession retries a connection lost before the handshake itself.)
 */
export const RETRY_ATTEMPTS = 5;
const RETRY_DELAY_MS = 3_000;

async function pause(signal?: AbortSignal): Promise<void> {
  await sleep(RETRY_DELAY_MS, undefined, { signal }).catch(() => undefined);
}

/** What answers on the target's SSH port: dropbear in the initramfs, the booted system's OpenSSH, something else, nothing. */
export type SshServer = 'dropbear' | 'openssh' | 'other' | 'none';

/** `attempts`: RETRY_ATTEMPTS where one probe decides what to do; 1 where a loop polls anyway. `why`: with `none`, the last attempt's failure. */
export async function probeSshServer(target: FleetTarget, attempts = 1, signal?: AbortSignal): Promise<{ server: SshServer; banner?: string; why?: string }> {
  let failure = 'not tried';
  let tried = 0;
  while (tried < attempts && !signal?.aborted) {
    if (tried++ > 0) await pause(signal);
    const probe = await probeBanner(target.port, BANNER_TIMEOUT_MS, target.address, signal);
    if (probe.banner !== undefined) return { server: /dropbear/i.test(probe.banner) ? 'dropbear' : /openssh/i.test(probe.banner) ? 'openssh' : 'other', banner: probe.banner };
    failure = probe.failure;
  }
  return { server: 'none', why: tried > 1 ? `${failure} (${tried} attempts)` : failure };
}

/** The failure of a host where no SSH server answered (probeSshServer's `none`). */
export function noSshServer(target: SshEndpoint, why = 'no answer'): Error {
  return new Error(`no SSH server answers on ${target.address}:${target.port}: ${why}`);
}

/** What a connection needs of a target (enroll and rebind have no inventory variables). */
export type SshEndpoint = Pick<FleetTarget, 'name' | 'address' | 'port' | 'user'>;

function keyAuth(target: SshEndpoint, privateKey: string): AnyAuthMethod {
  return { type: 'publickey', username: target.user, key: privateKey };
}

/** Thrown when the server's host key is not trusted: the connection ended during key exchange. */
export class UntrustedHostKeyError extends Error {}

/**
 * Opens a session; with `trust`, a host key it does not vouch for ends the connection during
 * key exchange (before authentication), and the error says why.
 */
export async function connectTarget(target: SshEndpoint, privateKey: string, signal: AbortSignal, trust?: HostKeyTrust): Promise<Session & { trustedBy?: string }> {
  let refusal: string | undefined;
  let trustedBy: string | undefined;
  try {
    const session = await openSession(target.port, keyAuth(target, privateKey), {
      host: target.address,
      timeoutMs: LOGIN_TIMEOUT_MS,
      signal,
      acceptHostKey: trust
        ? (key) => {
            const verdict = judgeHostKey(trust, [target.name, target.address], target.port, key);
            if (verdict.trusted) trustedBy = verdict.by;
            else refusal = verdict.reason;
            return verdict.trusted;
          }
        : undefined,
    });
    return { ...session, trustedBy };
  } catch (error) {
    if (refusal) throw new UntrustedHostKeyError(`refused, nothing sent: ${refusal}`);
    throw new Error(`cannot log in to ${target.user}@${target.address}:${target.port}: ${(error as Error).message}`);
  }
}
