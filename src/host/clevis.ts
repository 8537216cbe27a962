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

/** The clevis pin and its JSON config: `tang` for one server, `sss` with a threshold for several. */
export function clevisPinConfig(servers: readonly TangPin[], threshold: number): [pin: string, config: string] {
  const pins = servers.map((server) => ({ url: server.url, adv: server.adv }));
  if (pins.length === 1) return ['tang', JSON.stringify(pins[0])];
  return ['sss', JSON.stringify({ t: threshold, pins: { tang: pins } })];
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

interface ClevisHeader {
  clevis?: { pin?: string; tang?: { url?: string; adv?: { keys?: Array<{ kty: string; key_ops?: string[] }> } }; sss?: { jwe?: string[] } };
}

function decodeProtected(segment: string): ClevisHeader {
  return JSON.parse(Buffer.from(segment, 'base64url').toString('utf8')) as ClevisHeader;
}

/** The Tang servers and signing-key thumbprints in a clevis JWE protected header (tang, or sss of tang). */
function serversInHeader(header: ClevisHeader): BoundTangServer[] {
  const clevis = header.clevis ?? {};
  if (clevis.pin === 'tang' && clevis.tang?.url) {
    const signing = (clevis.tang.adv?.keys ?? []).filter((key) => key.key_ops?.includes('verify'));
    return [{ url: clevis.tang.url, thumbprints: signing.map(jwkThumbprint) }];
  }
  if (clevis.pin === 'sss') return (clevis.sss?.jwe ?? []).flatMap((compact) => serversInHeader(decodeProtected(compact.split('.')[0]!)));
  return [];
}

function clevisHeaderInToken(tokenJson: string): ClevisHeader | undefined {
  const token = JSON.parse(tokenJson) as { type?: string; jwe?: { protected?: string } };
  if (token.type !== 'clevis' || !token.jwe?.protected) return undefined;
  return decodeProtected(token.jwe.protected);
}

/** Reads a clevis LUKS2 token (`cryptsetup token export`) down to its Tang servers. */
export function tangServersInToken(tokenJson: string): BoundTangServer[] {
  const header = clevisHeaderInToken(tokenJson);
  return header ? serversInHeader(header) : [];
}

/** The clevis pin (tang, sss, tpm2, ...) of a clevis LUKS2 token; undefined for other tokens. */
export function clevisPinInToken(tokenJson: string): string | undefined {
  return clevisHeaderInToken(tokenJson)?.clevis?.pin;
}
