/** The enrolled machine's root shell over SSH (ssh2), as the `Remote` that enroll drives. */
import type { Client } from 'ssh2';
import { HostError } from '../errors.js';
import { connectTarget, type SshEndpoint } from '../fleet/connect.js';
import type { HostKeyTrust } from '../fleet/host-keys.js';
import { exec, type HostKey } from '../ssh/client.js';
import type { Remote, RemoteResult } from './enroll.js';

// Online re-encryption of a large disk and an initramfs rebuild take a while.
const COMMAND_TIMEOUT_MS = 60 * 60 * 1000;

export class SshRemote implements Remote {
  /** Set once the connection has closed: a command then has no answer, and ssh2 would wait for one forever. */
  private lost?: HostError;
  /** The file that vouched for the host key (undefined: not checked). */
  trustedBy?: string;

  private constructor(
    private readonly client: Client,
    readonly hostKey: HostKey,
    private readonly signal: AbortSignal,
    where: string,
  ) {
    client.once('close', () => (this.lost = new HostError(`the SSH connection to ${where} was lost`)));
  }

  /** With `trust`, a host key it does not vouch for ends the connection during key exchange (UntrustedHostKeyError). */
  static async connect(target: SshEndpoint, privateKey: string, signal: AbortSignal, trust?: HostKeyTrust): Promise<SshRemote> {
    const { client, hostKey, trustedBy } = await connectTarget(target, privateKey, signal, trust);
    const remote = new SshRemote(client, hostKey, signal, `${target.address}:${target.port}`);
    remote.trustedBy = trustedBy;
    return remote;
  }

  /**
   * stdin is always closed (empty when not given): a command that would read a passphrase from
   * it must not wait forever. A connection lost before or during the command fails it: its
   * outcome is unknown (a re-run continues from what the machine shows).
   */
  async run(command: string, stdin = ''): Promise<RemoteResult> {
    if (this.lost) throw this.lost;
    const result = await exec(this.client, command, { timeoutMs: COMMAND_TIMEOUT_MS, signal: this.signal, stdin });
    if (this.lost) throw this.lost;
    return result;
  }

  close(): void {
    this.client.end();
  }
}
