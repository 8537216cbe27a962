/**
 * authorized_keys input: plain public keys only. Options are keylessgo's to set (forced
 * unlock command, no forwarding), so a line that brings its own is refused.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { InputError } from '../errors.js';

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

/** Wire-format fields of each public key type (RFC 4253, 5656, 8709; OpenSSH PROTOCOL.u2f). */
const KEY_FIELDS: Record<string, number> = {
  'ssh-ed25519': 2,
  'ssh-rsa': 3,
  'ecdsa-sha2-nistp256': 3,
  'ecdsa-sha2-nistp384': 3,
  'ecdsa-sha2-nistp521': 3,
  'sk-ssh-ed25519@openssh.com': 3,
  'sk-ecdsa-sha2-nistp256@openssh.com': 4,
};

/** Splits an SSH key blob into its length-prefixed fields; undefined if the lengths don't add up. */
export function blobFields(blob: Buffer): Buffer[] | undefined {
  const fields: Buffer[] = [];
  for (let offset = 0; offset < blob.length; ) {
    if (offset + 4 > blob.length) return undefined;
    const length = blob.readUInt32BE(offset);
    if (offset + 4 + length > blob.length) return undefined;
    fields.push(blob.subarray(offset + 4, offset + 4 + length));
    offset += 4 + length;
  }
  return fields;
}

/** Whether a decoded key blob is complete and of the stated type (catches truncated copy-pastes). */
function isWellFormedKey(type: string, blob: Buffer): boolean {
  const fields = blobFields(blob);
  if (!fields || fields.length !== KEY_FIELDS[type] || fields[0]!.toString('latin1') !== type) return false;
  return type !== 'ssh-ed25519' || fields[1]!.length === 32;
}

/** Splits at whitespace outside double quotes (authorized_keys options may quote spaces). */
function splitOutsideQuotes(line: string): string[] {
  return line.match(/(?:[^\s"]+|"(?:[^"\\]|\\.)*")+/g) ?? [];
}

export interface AuthorizedKeyWithOptions extends AuthorizedKey {
  /** The options before the key type, as written (e.g. no-port-forwarding,command="..."). */
  options: string;
}

/** Reads an installed authorized_keys file, options included; lines that are no valid key are skipped. */
export function parseInstalledAuthorizedKeys(text: string): AuthorizedKeyWithOptions[] {
  return text.split('\n').flatMap((raw): AuthorizedKeyWithOptions[] => {
    const tokens = splitOutsideQuotes(raw.trim());
    const typeIndex = tokens.findIndex((token) => token in KEY_FIELDS);
    if (raw.trim().startsWith('#') || typeIndex < 0) return [];
    const [type, base64 = '', ...comment] = tokens.slice(typeIndex);
    const blob = Buffer.from(base64, 'base64');
    if (!isWellFormedKey(type!, blob)) return [];
    return [{ options: tokens.slice(0, typeIndex).join(' '), type: type!, base64, comment: comment.join(' '), fingerprint: sshFingerprint(blob) }];
  });
}

export function parseAuthorizedKeys(text: string, source: string): AuthorizedKey[] {
  const keys: AuthorizedKey[] = [];
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const where = `${source}:${index + 1}`;
    const tokens = line.split(/\s+/);
    const [type, base64, ...comment] = tokens;
    if (line.startsWith('-----BEGIN') && line.includes('PRIVATE KEY')) throw new InputError('this is a private key; give the public one (.pub)', where);
    if (!(type! in KEY_FIELDS)) {
      // A key type later in the line means options precede it (quoted options may hold spaces).
      const hasOptions = tokens.slice(1).some((token) => token in KEY_FIELDS);
      throw new InputError(
        hasOptions
          ? 'key options are not accepted (keylessgo sets the forced command and forwarding restrictions itself); give the bare public key'
          : `not a public key line (expected a key type such as ssh-ed25519 followed by base64)`,
        where,
      );
    }
    const blob = /^[A-Za-z0-9+/]+={0,2}$/.test(base64 ?? '') ? Buffer.from(base64!, 'base64') : undefined;
    if (!blob || !isWellFormedKey(type!, blob)) throw new InputError(`the base64 key data is damaged, truncated or does not match the type ${type}`, where);
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
