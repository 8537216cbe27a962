/**
 * Signatures over a build's SHA256SUMS in OpenSSH's format (`ssh-keygen -Y`, the SSHSIG format
 * git and OpenSSH use), so that an operator checks them with the SSH keys they already manage:
 * no keyring, no other tool. The namespace keeps a keylessgo signature from being replayed as
 * a signature for something else (a git commit, a file signed for another purpose).
 *
 * Host commands: ssh-keygen (-l, -Y sign, -Y verify). The private key is named by its path
 * only: its content never reaches argv or the log.
 */
import { stat, writeFile } from 'node:fs/promises';
import { HostError, InputError } from '../errors.js';
import type { HostRunner } from './run.js';
import { missingTools } from './tools.js';

export const SIGNATURE_NAMESPACE = 'keylessgo';
/** The signature file beside SHA256SUMS. */
export const SUMS_SIGNATURE_FILE = 'SHA256SUMS.sig';
/** The principal allowed_signers names the given keys by (verification asks for this one). */
const PRINCIPAL = 'keylessgo-signer';

export interface SigningKey {
  /** The key file (private, or public with the private key in ssh-agent). */
  file: string;
  /** `SHA256:...`, as `ssh-keygen -l` prints it. */
  fingerprint: string;
  /** ED25519, ECDSA, RSA, ... */
  type: string;
}

/** Parses `ssh-keygen -l` output: `256 SHA256:... comment (ED25519)`. */
export function parseKeyListing(text: string): { fingerprint: string; type: string } | undefined {
  const match = /^\d+ (SHA256:[A-Za-z0-9+/]+) .*\(([A-Z0-9-]+)\)$/m.exec(text.trim());
  return match ? { fingerprint: match[1]!, type: match[2]! } : undefined;
}

/**
 * Checks a signing key before anything is built: readable, a key ssh-keygen knows, and, when it
 * holds a private key, not readable by group or others (ssh-keygen would refuse it at the end).
 */
export async function checkSigningKey(host: HostRunner, file: string): Promise<SigningKey> {
  const info = await stat(file).catch((error: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read the signing key: ${error.code === 'ENOENT' ? 'no such file' : error.message}`, file);
  });
  if (!info.isFile()) throw new InputError('the signing key is not a file', file);
  if ((await missingTools(['ssh-keygen'])).length > 0) throw new HostError('--sign-key needs ssh-keygen (apt-get install openssh-client)');
  const listing = await host.run('ssh-keygen', ['-l', '-E', 'sha256', '-f', file]).catch(() => undefined);
  const key = listing === undefined ? undefined : parseKeyListing(listing);
  if (!key) throw new InputError('not an OpenSSH key ssh-keygen can read (give a private key file, or a public one whose private key ssh-agent holds)', file);
  const isPublic = /\.pub$/.test(file);
  if (!isPublic && (info.mode & 0o077) !== 0) throw new InputError(`the signing key is readable by group or others (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`, file);
  return { file, ...key };
}

/** The signature (armored SSHSIG text) of `data` by the key, in keylessgo's namespace. */
export async function signData(host: HostRunner, key: SigningKey, data: string): Promise<string> {
  // No file argument: ssh-keygen signs stdin and writes the signature to stdout.
  return `${await host.run('ssh-keygen', ['-Y', 'sign', '-f', key.file, '-n', SIGNATURE_NAMESPACE], { input: data })}\n`;
}

/** An allowed_signers file trusting `keys` for keylessgo signatures only. */
export async function writeAllowedSigners(path: string, keys: ReadonlyArray<{ type: string; base64: string }>): Promise<void> {
  await writeFile(path, keys.map((k) => `${PRINCIPAL} namespaces="${SIGNATURE_NAMESPACE}" ${k.type} ${k.base64}\n`).join(''), { mode: 0o600 });
}

/**
 * Whether `signatureFile` is a keylessgo signature of `data` by one of the keys in
 * `allowedSigners`: undefined when it is, else why not (ssh-keygen's words).
 */
export async function verifySignature(host: Pick<HostRunner, 'run'>, data: string, signatureFile: string, allowedSigners: string): Promise<string | undefined> {
  try {
    await host.run('ssh-keygen', ['-Y', 'verify', '-f', allowedSigners, '-I', PRINCIPAL, '-n', SIGNATURE_NAMESPACE, '-s', signatureFile], { input: data });
    return undefined;
  } catch (error) {
    const lines = (error as Error).message.split('\n').slice(1).map((line) => line.trim()).filter(Boolean);
    return lines.join('; ') || (error as Error).message;
  }
}
