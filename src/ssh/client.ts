/**
 * keylessgo's SSH client, with the `ssh2` package (no OpenSSH client config or known_hosts
 * involved): the fleet commands reach machines with it, the boot test its guest through the
 * forwarded port. Every connection reports the host key it saw, so the caller can compare it
 * with the manifest; fleet commands refuse unknown keys with `acceptHostKey`.
 */
import { readFile } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
import { InputError } from '../errors.js';
import { setTimeout as sleep } from 'node:timers/promises';
import ssh2, { type AnyAuthMethod, type Client, type ClientErrorExtensions } from 'ssh2';
import { sshFingerprint } from '../recipe/authorized-keys.js';

// ssh2 is CommonJS: Node's ESM loader exposes only its default export.
const { utils } = ssh2;

export const GUEST_HOST = '127.0.0.1';

export interface HostKey {
  type: string;
  fingerprint: string;
}

/** What answered on an SSH port: its identification line, or why there was none. */
export type BannerProbe = { banner: string } | { banner?: undefined; failure: string };

/**
 * Reads the identification line an SSH server sends first ("SSH-2.0-dropbear_2022.83"); says
 * why when none came: refused, no answer to the TCP connection, accepted and closed, accepted
 * and silent (a hung machine), interrupted (`signal`).
 */
export function probeBanner(port: number, timeoutMs: number, host = GUEST_HOST, signal?: AbortSignal): Promise<BannerProbe> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host, port });
    let received = '';
    let connected = false;
    const finish = (probe: BannerProbe) => {
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      resolve(probe);
    };
    const onAbort = () => finish({ failure: 'interrupted' });
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('connect', () => (connected = true));
    socket.setTimeout(timeoutMs, () =>
      finish({ failure: connected ? `connection accepted, no SSH banner within ${timeoutMs / 1000} s` : `no answer to the TCP connection within ${timeoutMs / 1000} s` }),
    );
    socket.on('error', (error: NodeJS.ErrnoException) => finish({ failure: error.code === 'ECONNREFUSED' ? 'connection refused' : error.message }));
    // QEMU accepts on the host side even when nothing listens in the guest, then closes.
    socket.on('close', () => finish({ failure: 'connection closed before the SSH banner' }));
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      const line = received.split('\n').find((l) => l.startsWith('SSH-'));
      if (line) finish({ banner: line.trim() });
    });
  });
}

/** The identification line an SSH server sends first, if any (probeBanner without the why). */
export async function readBanner(port: number, timeoutMs: number, host = GUEST_HOST): Promise<string | undefined> {
  return (await probeBanner(port, timeoutMs, host)).banner;
}

export const parseKey = utils.parseKey;

/** Reads an unencrypted SSH private key file (what ssh2 logs in with); InputError otherwise. */
export async function readPrivateKey(path: string): Promise<string> {
  const keyText = await readFile(path, 'utf8').catch((error: Error) => {
    throw new InputError(`cannot read private key: ${error.message}`, path);
  });
  const parsed = parseKey(keyText);
  if (parsed instanceof Error || !parsed.isPrivateKey()) throw new InputError(`not an unencrypted SSH private key${parsed instanceof Error ? `: ${parsed.message}` : ''}`, path);
  return keyText;
}

export function describeHostKey(blob: Buffer): HostKey {
  const parsed = parseKey(blob);
  const type = parsed instanceof Error ? 'unknown' : parsed.type;
  return { type, fingerprint: sshFingerprint(blob) };
}

export interface Session {
  client: Client;
  hostKey: HostKey;
}

export type SshError = Error & ClientErrorExtensions;

export interface SshOptions {
  timeoutMs: number;
  /** Default: the VM's forwarded port on 127.0.0.1. */
  host?: string;
  /** Ends the connection at once (Ctrl-C, overall timeout, QEMU gone). */
  signal: AbortSignal;
  /** False refuses the server during key exchange, before authentication or anything else is sent. */
  acceptHostKey?: (key: HostKey) => boolean;
}

/** Destroys the connection and rejects when `signal` aborts; returns the function that stops listening. */
function abortWith(client: Client, signal: AbortSignal, reject: (reason: unknown) => void): () => void {
  const onAbort = () => {
    client.destroy();
    reject(signal.reason);
  };
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

function connectOnce(port: number, auth: AnyAuthMethod, options: SshOptions): Promise<Session> {
  return new Promise((resolve, reject) => {
    options.signal.throwIfAborted();
    const client = new ssh2.Client();
    let hostKey: HostKey | undefined;
    const stopListening = abortWith(client, options.signal, reject);
    client.once('ready', () => {
      stopListening();
      resolve({ client, hostKey: hostKey! });
    });
    // Also after `ready`: a reset when dropbear is stopped must not become an unhandled 'error'.
    client.on('error', (error: SshError) => {
      stopListening();
      client.end();
      if (hostKey === undefined && error.level !== 'client-timeout') lostBeforeHostKey.add(error);
      reject(error);
    });
    client.connect({
      host: options.host ?? GUEST_HOST,
      port,
      username: auth.username,
      authHandler: [auth],
      readyTimeout: options.timeoutMs,
      hostVerifier: (key: Buffer) => {
        hostKey = describeHostKey(key);
        return options.acceptHostKey?.(hostKey) ?? true;
      },
    });
  });
}

// QEMU accepts on the host side and closes again if nothing answers in the guest. This was
// seen right after dropbear's first banner, too. A connection that failed before the server
// showed its host key (ssh2's "lost before handshake", a reset, a refusal) sent nothing to
// the guest: connecting again is safe. A timeout is not tried again (it already waited).
const CONNECT_ATTEMPTS = 3;
const CONNECT_RETRY_MS = 2000;
const lostBeforeHostKey = new WeakSet<Error>();

/** Opens an authenticated session; rejects with ssh2's error (level `client-authentication` when refused). */
export async function openSession(port: number, auth: AnyAuthMethod, options: SshOptions): Promise<Session> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await connectOnce(port, auth, options);
    } catch (error) {
      if (!(error instanceof Error && lostBeforeHostKey.has(error)) || attempt === CONNECT_ATTEMPTS) throw error;
      await sleep(CONNECT_RETRY_MS, undefined, { signal: options.signal });
    }
  }
}

export interface ExecResult {
  output: string;
  /** Undefined when the connection ended without an exit status (dropbear is killed by a successful unlock). */
  exitCode: number | undefined;
}

/** Runs a command, optionally feeding stdin, and collects stdout+stderr until the channel or connection ends. */
export function exec(client: Client, command: string, options: SshOptions & { stdin?: string }): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    let output = '';
    let exitCode: number | undefined;
    const stopListening = abortWith(client, options.signal, reject);
    const timer = setTimeout(() => {
      client.destroy();
      reject(new Error(`\`${command}\` did not finish within ${options.timeoutMs / 1000} s`));
    }, options.timeoutMs);
    const done = () => {
      clearTimeout(timer);
      stopListening();
      resolve({ output, exitCode });
    };
    const fail = (error: unknown) => {
      clearTimeout(timer);
      stopListening();
      client.off('close', done);
      reject(error);
    };
    client.once('close', done);
    // ssh2 throws "Not connected" at once on a closed connection: the timer must not outlive
    // the command (a 60-minute one kept a finished `enroll` process alive).
    try {
      client.exec(command, (error, channel) => {
        if (error) {
          fail(error);
          return;
        }
        channel.on('data', (chunk: Buffer) => (output += chunk.toString()));
        channel.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
        channel.on('exit', (code: number | null) => (exitCode = code ?? undefined));
        channel.on('close', () => {
          client.off('close', done);
          done();
        });
        if (options.stdin !== undefined) channel.end(options.stdin);
      });
    } catch (error) {
      fail(error);
    }
  });
}

/** Connects, runs one command and disconnects. */
export async function runOnce(port: number, auth: AnyAuthMethod, command: string, options: SshOptions & { stdin?: string }): Promise<ExecResult & { hostKey: HostKey }> {
  const { client, hostKey } = await openSession(port, auth, options);
  try {
    return { ...(await exec(client, command, options)), hostKey };
  } finally {
    client.end();
  }
}

/**
 * An ed25519 key pair in OpenSSH format that ssh2 can read back: ssh2 1.17's generator strips
 * leading zero bytes from the public key, so about 1 pair in 256 does not parse (mscdex/ssh2#1390).
 */
export function ed25519KeyPair(): { private: string; public: string } {
  for (;;) {
    const pair = utils.generateKeyPairSync('ed25519');
    if (!(utils.parseKey(pair.private) instanceof Error) && !(utils.parseKey(pair.public) instanceof Error)) return pair;
  }
}

/** A throwaway key pair that no authorized_keys file contains. */
export function unknownKeyAuth(username: string): AnyAuthMethod {
  return { type: 'publickey', username, key: ed25519KeyPair().private };
}

/** Whether ssh2 failed because the server refused every offered authentication. */
export function isAuthRefusal(error: unknown): boolean {
  return error instanceof Error && (error as SshError).level === 'client-authentication';
}

/** Asks for a local (direct-tcpip) and a remote (tcpip-forward) forward; returns how each was answered. */
export async function tryPortForwarding(client: Client, guestPort: number): Promise<{ local: string; remote: string }> {
  const local = await new Promise<string>((resolve) => {
    client.forwardOut(GUEST_HOST, 0, GUEST_HOST, guestPort, (error, channel) => {
      if (error) return resolve(`refused: ${error.message}`);
      channel.close();
      resolve('allowed');
    });
  });
  const remote = await new Promise<string>((resolve) => {
    client.forwardIn(GUEST_HOST, 0, (error) => resolve(error ? `refused: ${error.message}` : 'allowed'));
  });
  return { local, remote };
}
