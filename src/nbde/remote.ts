/** The enrolled machine's root shell over SSH (ssh2), as the `Remote` that enroll drives. */
import type { AnyAuthMethod, Client } from 'ssh2';
import { exec, openSession, type HostKey } from '../qemu/ssh.js';
import type { Remote, RemoteResult } from './enroll.js';

// Online re-encryption of a large disk and an initramfs rebuild take a while.
const COMMAND_TIMEOUT_MS = 60 * 60 * 1000;

export class SshRemote implements Remote {
  private constructor(
    private readonly client: Client,
    readonly hostKey: HostKey,
    private readonly signal: AbortSignal,
  ) {}

  static async connect(host: string, port: number, auth: AnyAuthMethod, signal: AbortSignal): Promise<SshRemote> {
    const { client, hostKey } = await openSession(port, auth, { timeoutMs: 60_000, signal, host });
    return new SshRemote(client, hostKey, signal);
  }

  /** stdin is always closed (empty when not given): a command that would read a passphrase from it must not wait forever. */
  run(command: string, stdin = ''): Promise<RemoteResult> {
    return exec(this.client, command, { timeoutMs: COMMAND_TIMEOUT_MS, signal: this.signal, stdin });
  }

  close(): void {
    this.client.end();
  }
}
