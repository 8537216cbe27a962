/**
 * Small PE32+ files for the Authenticode reader: a header with a certificate table holding
 * one WIN_CERTIFICATE with a PKCS#7 SignedData made by `openssl cms` with a key and a
 * self-signed certificate generated now (never committed). Not a valid Authenticode
 * signature over the image (no SpcIndirectDataContent): inspect only reads who signed.
 */
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

const PE_OFFSET = 0x40;
const OPTIONAL_HEADER = PE_OFFSET + 24;
/** PE32+: NumberOfRvaAndSizes at 108, the data directories from 112; directory 4 is the certificate table. */
const CERT_DIRECTORY_ENTRY = OPTIONAL_HEADER + 112 + 4 * 8;
const HEADER_BYTES = 512;

/** A PE32+ header whose certificate table holds `signedData` (none when undefined). */
export function peWithSignature(signedData?: Buffer): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  header.write('MZ', 0, 'latin1');
  header.writeUInt32LE(PE_OFFSET, 0x3c);
  header.write('PE\0\0', PE_OFFSET, 'latin1');
  header.writeUInt16LE(0x20b, OPTIONAL_HEADER);
  header.writeUInt32LE(16, OPTIONAL_HEADER + 108);
  if (!signedData) return header;
  const length = 8 + signedData.length;
  const certificate = Buffer.alloc(Math.ceil(length / 8) * 8);
  certificate.writeUInt32LE(length, 0);
  certificate.writeUInt16LE(0x0200, 4);
  certificate.writeUInt16LE(0x0002, 6);
  signedData.copy(certificate, 8);
  header.writeUInt32LE(HEADER_BYTES, CERT_DIRECTORY_ENTRY);
  header.writeUInt32LE(certificate.length, CERT_DIRECTORY_ENTRY + 4);
  return Buffer.concat([header, certificate]);
}

/** A PKCS#7 SignedData (DER) over a few bytes, signed by a new key with a certificate for `subject`, issued by a new CA `issuer`. */
export async function signedData(dir: string, subject: string, issuer: string): Promise<Buffer> {
  const file = (name: string) => join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await execa('openssl', ['req', '-x509', ...ec, '-keyout', file('ca.key'), '-out', file('ca.pem'), '-subj', `/CN=${issuer}`, '-days', '1']);
  await execa('openssl', ['req', ...ec, '-keyout', file('signer.key'), '-out', file('signer.csr'), '-subj', `/O=Example/CN=${subject}`]);
  await execa('openssl', ['x509', '-req', '-in', file('signer.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-set_serial', '0x00f1e2d3c4', '-days', '1', '-out', file('signer.pem')]);
  // The CA certificate goes in too, first, so the signer must be picked by issuer and serial.
  await execa('openssl', ['cms', '-sign', '-binary', '-nodetach', '-outform', 'DER', '-signer', file('signer.pem'), '-inkey', file('signer.key'), '-certfile', file('ca.pem'), '-out', file('signed.der')], { input: 'content' });
  return readFile(file('signed.der'));
}
