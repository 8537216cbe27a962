/**
 * clevis LUKS bindings without device-mapper: `clevis luks bind` adds a keyslot and a
 * token to the header, which works on loop devices and image files. The existing
 * passphrase is passed by file (-k), never in argv.
 */
import { jwkThumbprint } from './tang.js';
export interface TangPin {
  url: string;
  /** The advertisement JWS: binding then needs no network (else clevis fetches it). */
  adv?: Record<string, unknown>;
}

/** clevis's tpm2 pin: the key is sealed by this machine's TPM, released only while these PCRs hold the values they had at binding. */
export interface Tpm2Pin {
  pcrBank: 'sha1' | 'sha256';
  pcrIds: number[];
}

/** PCR 7 (Secure Boot state and keys) only: unchanged by kernel, initramfs and GRUB updates, so it survives `apt upgrade`. */
export const DEFAULT_TPM2_PIN: Tpm2Pin = { pcrBank: 'sha256', pcrIds: [7] };

/** Parses a PCR list such as `7` or `0,2,7` (each 0-23, no repeats). */
export function parsePcrList(text: string): number[] {
  const ids = text.split(',').map((part) => part.trim());
  if (ids.some((id) => !/^\d+$/.test(id) || Number(id) > 23)) throw new Error(`expected PCR numbers 0-23 separated by commas, got "${text}"`);
  const numbers = ids.map(Number);
  if (new Set(numbers).size !== numbers.length) throw new Error(`PCR listed twice in "${text}"`);
  return numbers.sort((a, b) => a - b);
}

function tpm2Config(tpm2: Tpm2Pin): Record<string, string> {
  return { pcr_bank: tpm2.pcrBank, pcr_ids: tpm2.pcrIds.join(',') };
}

/**
 * The clevis pin and its JSON config: `tang` or `tpm2` for a single pin, else `sss` whose
 * threshold counts across every pin (Tang servers and the TPM): `t: 2` with one Tang server
 * and the TPM needs both.
 */
export function clevisPinConfig(servers: readonly TangPin[], threshold: number, tpm2?: Tpm2Pin): [pin: string, config: string] {
  const pins = servers.map((server) => ({ url: server.url, adv: server.adv }));
  if (pins.length === 1 && !tpm2) return ['tang', JSON.stringify(pins[0])];
  if (pins.length === 0 && tpm2) return ['tpm2', JSON.stringify(tpm2Config(tpm2))];
  return ['sss', JSON.stringify({ t: threshold, pins: { ...(pins.length ? { tang: pins } : {}), ...(tpm2 ? { tpm2: tpm2Config(tpm2) } : {}) } })];
}

export function clevisBindArgs(device: string, keyFile: string, servers: readonly TangPin[], threshold: number): string[] {
  const [pin, config] = clevisPinConfig(servers, threshold);
  return ['luks', 'bind', '-y', '-d', device, '-k', keyFile, pin, config];
}

export interface ClevisBinding {
  slot: number;
  pin: string;
  config: string;
}

/** Parses `clevis luks list` lines such as `1: tang '{"url":"http://..."}'`. */
export function parseClevisList(text: string): ClevisBinding[] {
  return [...text.matchAll(/^(\d+): (\w+) '(.*)'$/gm)].map((m) => ({ slot: Number(m[1]), pin: m[2]!, config: m[3]! }));
}

export interface BoundTangServer {
  url: string;
  /** Thumbprints of the advertisement's signing keys the binding was made with. */
  thumbprints: string[];
}

/** A TPM2 binding as its token records it; without PCRs the key is bound to the TPM alone. */
export interface BoundTpm2 {
  pcrBank?: string;
  pcrIds: number[];
}

/** A clevis binding's policy: a pin, or sss with a threshold over nested pins. */
export type ClevisPolicy =
  | ({ pin: 'tang' } & BoundTangServer)
  | ({ pin: 'tpm2' } & BoundTpm2)
  | { pin: 'sss'; threshold: number; pins: ClevisPolicy[] }
  | { pin: string };

interface ClevisHeader {
  clevis?: {
    pin?: string;
    tang?: { url?: string; adv?: { keys?: Array<{ kty: string; key_ops?: string[] }> } };
    tpm2?: { pcr_bank?: string; pcr_ids?: string };
    sss?: { t?: number; jwe?: string[] };
  };
}

function decodeProtected(segment: string): ClevisHeader {
  return JSON.parse(Buffer.from(segment, 'base64url').toString('utf8')) as ClevisHeader;
}

/** The policy in a clevis JWE protected header, sss nesting followed down to tang and tpm2 pins. */
function policyInHeader(header: ClevisHeader): ClevisPolicy | undefined {
  const clevis = header.clevis ?? {};
  if (clevis.pin === 'tang' && clevis.tang?.url) {
    const signing = (clevis.tang.adv?.keys ?? []).filter((key) => key.key_ops?.includes('verify'));
    return { pin: 'tang', url: clevis.tang.url, thumbprints: signing.map(jwkThumbprint) };
  }
  if (clevis.pin === 'tpm2') {
    const ids = clevis.tpm2?.pcr_ids ? clevis.tpm2.pcr_ids.split(',').map(Number) : [];
    return { pin: 'tpm2', ...(clevis.tpm2?.pcr_bank ? { pcrBank: clevis.tpm2.pcr_bank } : {}), pcrIds: ids };
  }
  if (clevis.pin === 'sss') {
    const pins = (clevis.sss?.jwe ?? []).map((compact) => policyInHeader(decodeProtected(compact.split('.')[0]!))).filter((p) => p !== undefined);
    return { pin: 'sss', threshold: clevis.sss?.t ?? 0, pins };
  }
  return clevis.pin ? { pin: clevis.pin } : undefined;
}

/** Every pin of a policy, sss nodes flattened away. */
function leafPins(policy: ClevisPolicy | undefined): ClevisPolicy[] {
  if (!policy) return [];
  return policy.pin === 'sss' && 'pins' in policy ? policy.pins.flatMap(leafPins) : [policy];
}

/** One line for a policy: `tang http://a`, `tpm2 sha256:7`, `sss 2 of (tang http://a, tpm2 sha256:7)`. */
export function describeClevisPolicy(policy: ClevisPolicy): string {
  if (policy.pin === 'tang' && 'url' in policy) return `tang ${policy.url}`;
  if (policy.pin === 'tpm2' && 'pcrIds' in policy) return `tpm2 ${policy.pcrIds.length ? `${policy.pcrBank ?? 'sha1'}:${policy.pcrIds.join(',')}` : '(no PCR policy)'}`;
  if (policy.pin === 'sss' && 'pins' in policy) return `sss ${policy.threshold} of (${policy.pins.map(describeClevisPolicy).join(', ')})`;
  return policy.pin;
}

function clevisHeaderInToken(tokenJson: string): ClevisHeader | undefined {
  const token = JSON.parse(tokenJson) as { type?: string; jwe?: { protected?: string } };
  if (token.type !== 'clevis' || !token.jwe?.protected) return undefined;
  return decodeProtected(token.jwe.protected);
}

/** The policy of a clevis LUKS2 token (`cryptsetup token export`); undefined for other tokens. */
export function clevisPolicyInToken(tokenJson: string): ClevisPolicy | undefined {
  const header = clevisHeaderInToken(tokenJson);
  return header ? policyInHeader(header) : undefined;
}

/** Reads a clevis LUKS2 token down to its Tang servers. */
export function tangServersInToken(tokenJson: string): BoundTangServer[] {
  return leafPins(clevisPolicyInToken(tokenJson)).flatMap((p) => (p.pin === 'tang' && 'url' in p ? [{ url: p.url, thumbprints: p.thumbprints }] : []));
}

/** Reads a clevis LUKS2 token down to its TPM2 bindings (at most one per sss level, usually one). */
export function tpm2BindingsInToken(tokenJson: string): BoundTpm2[] {
  return leafPins(clevisPolicyInToken(tokenJson)).flatMap((p) => (p.pin === 'tpm2' && 'pcrIds' in p ? [{ ...(p.pcrBank ? { pcrBank: p.pcrBank } : {}), pcrIds: p.pcrIds }] : []));
}

/** The token's TPM2 pin as enroll --tpm2 would give it again (the first, if sss nests several). */
export function tpm2PinInToken(tokenJson: string): Tpm2Pin | undefined {
  const [bound] = tpm2BindingsInToken(tokenJson);
  return bound ? { pcrBank: (bound.pcrBank ?? 'sha1') as Tpm2Pin['pcrBank'], pcrIds: bound.pcrIds } : undefined;
}

/** How many pins of a policy must answer: sss's threshold, 1 for a single pin. */
export function policyThreshold(policy: ClevisPolicy): number {
  return policy.pin === 'sss' && 'threshold' in policy ? policy.threshold : 1;
}

/**
 * The compact JWEs of the token's tpm2 pins (the token's own JWE for a tpm2 binding, or the
 * nested ones of sss). `clevis decrypt` of one asks the TPM alone: whether it still unseals
 * with today's PCR values, without Tang and without unlocking anything. Not secret: the LUKS
 * header holds them for anyone with the disk.
 */
export function tpm2JwesInToken(tokenJson: string): string[] {
  const token = JSON.parse(tokenJson) as { type?: string; jwe?: Record<string, string | undefined> };
  if (token.type !== 'clevis' || !token.jwe?.protected) return [];
  const { protected: header, encrypted_key: key = '', iv = '', ciphertext = '', tag = '' } = token.jwe;
  const nested = (compact: string): string[] => {
    const clevis = decodeProtected(compact.split('.')[0]!).clevis ?? {};
    if (clevis.pin === 'tpm2') return [compact];
    return clevis.pin === 'sss' ? (clevis.sss?.jwe ?? []).flatMap(nested) : [];
  };
  return nested([header, key, iv, ciphertext, tag].join('.'));
}

/** The clevis pin (tang, sss, tpm2, ...) of a clevis LUKS2 token; undefined for other tokens. */
export function clevisPinInToken(tokenJson: string): string | undefined {
  return clevisHeaderInToken(tokenJson)?.clevis?.pin;
}
