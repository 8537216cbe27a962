/** The enrolled machine's root shell over SSH (ssh2), as the `Remote` that enroll drives. */
import type { AnyAuthMethod, Client } from 'ssh2';
import { HostError } from '../errors.js';
import { exec, openSession, type HostKey } from '../qemu/ssh.js';
import type { Remote, RemoteResult } from './enroll.js';

// Online re-encryption of a large disk and an initramfs rebuild take a while.
const COMMAND_TIMEOUT_MS = 60 * 60 * 1000;

export class SshRemote implements Remote {
  /** Set once the connection has closed: a command then has no answer, and ssh2 would wait for one forever. */
  private lost?: HostError;

  private constructor(
    private readonly client: Client,
    readonly hostKey: HostKey,
    private readonly signal: AbortSignal,
    where: string,
  ) {
    client.once('close', () => (this.lost = new HostError(`the SSH connection to ${where} was lost`)));
  }

  static async connect(host: string, port: number, auth: AnyAuthMethod, signal: AbortSignal): Promise<SshRemote> {
    const { client, hostKey } = await openSession(port, auth, { timeoutMs: 60_000, signal, host });
    return new SshRemote(client, hostKey, signal, `${host}:${port}`);
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
