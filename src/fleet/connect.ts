/** SSH to one fleet target: banner first (what is answering), then a session whose host key is judged before anything is sent. */
import type { AnyAuthMethod } from 'ssh2';
import { openSession, readBanner, type Session } from '../qemu/ssh.js';
import { judgeHostKey, type HostKeyTrust } from './host-keys.js';
import type { FleetTarget } from './targets.js';

const BANNER_TIMEOUT_MS = 10_000;
const LOGIN_TIMEOUT_MS = 60_000;

/** What answers on the target's SSH port: dropbear in the initramfs, the booted system's OpenSSH, something else, nothing. */
export type SshServer = 'dropbear' | 'openssh' | 'other' | 'none';

export async function probeSshServer(target: FleetTarget): Promise<{ server: SshServer; banner?: string }> {
  const banner = await readBanner(target.port, BANNER_TIMEOUT_MS, target.address);
  if (!banner) return { server: 'none' };
  return { server: /dropbear/i.test(banner) ? 'dropbear' : /openssh/i.test(banner) ? 'openssh' : 'other', banner };
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
