/**
 * Who signed an EFI binary (shim, GRUB, a kernel): the Authenticode signatures in a PE
 * file's certificate table (data directory 4), each a WIN_CERTIFICATE holding a PKCS#7
 * SignedData; the signer is the certificate its SignerInfo names by issuer and serial.
 * Only read, never verified: the firmware (and shim) decide; this says who they will ask.
 */
import { X509Certificate } from 'node:crypto';

export interface Signature {
  /** Subject and issuer of the signing certificate, as OpenSSL prints them (one RDN a line). */
  subject: string;
  issuer: string;
}

export type PeSignatures = { pe: false } | { pe: true; signatures: Signature[] };

const CERT_TABLE_DIRECTORY = 4;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002;
const PE32_MAGIC = 0x10b;
const PE32_PLUS_MAGIC = 0x20b;

/** The certificate table's byte range, or undefined when the file is no PE image. */
function certificateTable(file: Buffer): { offset: number; size: number } | undefined | 'none' {
  if (file.length < 64 || file.toString('latin1', 0, 2) !== 'MZ') return undefined;
  const pe = file.readUInt32LE(0x3c);
  if (pe + 24 > file.length || file.toString('latin1', pe, pe + 4) !== 'PE\0\0') return undefined;
  const optional = pe + 24;
  const magic = file.readUInt16LE(optional);
  if (magic !== PE32_MAGIC && magic !== PE32_PLUS_MAGIC) return undefined;
  const counts = optional + (magic === PE32_MAGIC ? 92 : 108);
  if (file.readUInt32LE(counts) <= CERT_TABLE_DIRECTORY) return 'none';
  const entry = counts + 4 + CERT_TABLE_DIRECTORY * 8;
  // For this directory the "virtual address" is a file offset.
  const offset = file.readUInt32LE(entry);
  const size = file.readUInt32LE(entry + 4);
  if (size === 0) return 'none';
  if (offset + size > file.length) throw new Error(`certificate table at ${offset}+${size} lies beyond the file's ${file.length} bytes`);
  return { offset, size };
}

interface Der {
  tag: number;
  /** The contents, without tag and length. */
  body: Buffer;
  /** The whole element, tag and length included. */
  raw: Buffer;
}

/** The DER elements in `data`, one after the other (definite lengths only, as Authenticode uses). */
function derChildren(data: Buffer): Der[] {
  const elements: Der[] = [];
  for (let at = 0; at < data.length; ) {
    const tag = data[at]!;
    let length = data[at + 1]!;
    let header = 2;
    if (length & 0x80) {
      const bytes = length & 0x7f;
      if (bytes === 0 || bytes > 4) throw new Error('unsupported DER length');
      length = data.subarray(at + 2, at + 2 + bytes).reduce((value, byte) => value * 256 + byte, 0);
      header += bytes;
    }
    if (at + header + length > data.length) throw new Error('truncated DER element');
    elements.push({ tag, body: data.subarray(at + header, at + header + length), raw: data.subarray(at, at + header + length) });
    at += header + length;
  }
  return elements;
}

const SEQUENCE = 0x30;
const SET = 0x31;
const CONTEXT_0 = 0xa0;

/** The signer of one PKCS#7 SignedData (ContentInfo) blob. */
export function pkcs7Signer(contentInfo: Buffer): Signature {
  const [outer] = derChildren(contentInfo);
  const explicit = outer && derChildren(outer.body).find((e) => e.tag === CONTEXT_0);
  const signedData = explicit && derChildren(explicit.body)[0];
  if (!signedData || signedData.tag !== SEQUENCE) throw new Error('not a PKCS#7 SignedData');
  const fields = derChildren(signedData.body);
  // version, digestAlgorithms, contentInfo, [0] certificates, [1] crls, signerInfos
  const certificates = derChildren(fields.find((e) => e.tag === CONTEXT_0)?.body ?? Buffer.alloc(0)).map((c) => new X509Certificate(c.raw));
  const signerInfos = fields.at(-1);
  const signerInfo = signerInfos?.tag === SET ? derChildren(signerInfos.body)[0] : undefined;
  const sid = signerInfo && derChildren(signerInfo.body)[1];
  const serial = sid && derChildren(sid.body)[1];
  if (!serial) throw new Error('PKCS#7 SignedData without a SignerInfo');
  const serialHex = (hex: string) => hex.replace(/^(00)+/, '').toUpperCase();
  const signer = certificates.find((cert) => serialHex(cert.serialNumber) === serialHex(serial.body.toString('hex')));
  if (!signer) throw new Error(`the signing certificate (serial ${serial.body.toString('hex')}) is not in the signature`);
  return { subject: signer.subject, issuer: signer.issuer };
}

/** The Authenticode signers of a PE file; `{ pe: false }` for anything that is not one. */
export function peSignatures(file: Buffer): PeSignatures {
  const table = certificateTable(file);
  if (table === undefined) return { pe: false };
  if (table === 'none') return { pe: true, signatures: [] };
  const signatures: Signature[] = [];
  // WIN_CERTIFICATE: dwLength, wRevision, wCertificateType, then the blob; entries 8-byte aligned.
  for (let at = table.offset; at + 8 <= table.offset + table.size; ) {
    const length = file.readUInt32LE(at);
    if (length < 8) break;
    if (file.readUInt16LE(at + 6) === WIN_CERT_TYPE_PKCS_SIGNED_DATA) signatures.push(pkcs7Signer(file.subarray(at + 8, at + length)));
    at += Math.ceil(length / 8) * 8;
  }
  return { pe: true, signatures };
}

/** The CN of an OpenSSL-style distinguished name, else the whole name on one line. */
export function commonName(name: string): string {
  return /^CN=(.*)$/m.exec(name)?.[1] ?? name.split('\n').join(', ');
}
