/**
 * Dropbear host keys as stored in an initramfs (dropbear's own private key format), reduced
 * to the public key's fingerprint in memory. The private part is never kept or printed.
 */
import { blobFields, sshFingerprint } from '../recipe/authorized-keys.js';

export interface HostKey {
  type: string;
  fingerprint: string;
}

function sshString(field: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(field.length);
  return Buffer.concat([length, field]);
}

/** The public key of a dropbear private key file: ed25519 (seed || public), RSA (e, n, ...), ECDSA (curve, Q, d). */
export function dropbearHostKey(file: Buffer): HostKey | undefined {
  const fields = blobFields(file);
  const type = fields?.[0]?.toString('latin1');
  if (!fields || !type) return undefined;
  let publicFields: Buffer[];
  if (type === 'ssh-ed25519' && fields[1]?.length === 64) publicFields = [fields[1].subarray(32)];
  else if (type === 'ssh-rsa' && fields.length >= 3) publicFields = fields.slice(1, 3);
  else if (type.startsWith('ecdsa-sha2-') && fields.length >= 3) publicFields = fields.slice(1, 3);
  else return undefined;
  return { type, fingerprint: sshFingerprint(Buffer.concat([sshString(fields[0]!), ...publicFields.map(sshString)])) };
}
