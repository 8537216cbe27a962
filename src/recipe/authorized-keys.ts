/**
 * authorized_keys input: plain public keys only. Options are keylessgo's to set (forced
 * unlock command, no forwarding), so a line that brings its own is refused.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { InputError } from '../errors.js';

const KEY_TYPES = new Set([
  'ssh-ed25519',
  'ssh-rsa',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
]);

export interface AuthorizedKey {
  type: string;
  base64: string;
  comment: string;
  /** OpenSSH-style SHA256 fingerprint, e.g. SHA256:abc... */
  fingerprint: string;
}

export function sshFingerprint(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** Reads the string at the start of an SSH wire-format key blob (its key type). */
function blobKeyType(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const length = blob.readUInt32BE(0);
  return length > 0 && length <= blob.length - 4 ? blob.subarray(4, 4 + length).toString('latin1') : undefined;
}

export function parseAuthorizedKeys(text: string, source: string): AuthorizedKey[] {
  const keys: AuthorizedKey[] = [];
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const where = `${source}:${index + 1}`;
    const [type, base64, ...comment] = line.split(/\s+/);
    if (!KEY_TYPES.has(type!)) {
      throw new InputError(
        /^[a-z-]+(=|,)/.test(type!)
          ? 'key options are not accepted (keylessgo sets the forced command and forwarding restrictions itself); give the bare public key'
          : `not a public key line (expected one of ${[...KEY_TYPES].slice(0, 3).join(', ')}, ... followed by base64)`,
        where,
      );
    }
    const blob = /^[A-Za-z0-9+/]+={0,2}$/.test(base64 ?? '') ? Buffer.from(base64!, 'base64') : undefined;
    if (!blob || blobKeyType(blob) !== type) throw new InputError(`the base64 key data is damaged or does not match the type ${type}`, where);
    keys.push({ type: type!, base64: base64!, comment: comment.join(' '), fingerprint: sshFingerprint(blob) });
  }
  if (keys.length === 0) throw new InputError('no public key found', source);
  return keys;
}

export async function readAuthorizedKeys(path: string): Promise<AuthorizedKey[]> {
  const text = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read authorized keys: ${error.code === 'ENOENT' ? 'no such file' : error.message}`, path);
  });
  return parseAuthorizedKeys(text, path);
}
