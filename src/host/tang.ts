/**
 * Tang advertisements: fetched or read from a saved file, parsed, and reduced to the
 * thumbprints of their signing keys (what `thp` pins and the manifest records).
 */
import { createHash } from 'node:crypto';

interface Jwk {
  kty: string;
  key_ops?: string[];
  [member: string]: unknown;
}

export interface TangAdvertisement {
  /** The advertisement as served (a JWS in JSON serialisation). */
  jws: Record<string, unknown>;
  /** RFC 7638 SHA-256 thumbprints of the keys that sign advertisements. */
  signingThumbprints: string[];
}

// RFC 7638: the required members of each key type, in lexicographic order.
const REQUIRED_MEMBERS: Record<string, string[]> = {
  EC: ['crv', 'kty', 'x', 'y'],
  RSA: ['e', 'kty', 'n'],
  OKP: ['crv', 'kty', 'x'],
};

export function jwkThumbprint(jwk: Jwk): string {
  const members = REQUIRED_MEMBERS[jwk.kty];
  if (!members) throw new Error(`unsupported JWK key type ${jwk.kty}`);
  const canonical = `{${members.map((m) => `${JSON.stringify(m)}:${JSON.stringify(jwk[m])}`).join(',')}}`;
  return createHash('sha256').update(canonical).digest('base64url');
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`not a Tang advertisement (${what} is not JSON)`);
  }
}

/** Parses an advertisement; with `thp`, also checks that the pinned key signs it. */
export function parseAdvertisement(text: string, thp?: string): TangAdvertisement {
  const jws = parseJson(text, 'the file') as Record<string, unknown>;
  if (typeof jws?.payload !== 'string') throw new Error('not a Tang advertisement (no JWS payload)');
  const payload = parseJson(Buffer.from(jws.payload, 'base64url').toString('utf8'), 'its payload') as { keys?: Jwk[] };
  const signing = (payload.keys ?? []).filter((key) => key.key_ops?.includes('verify'));
  if (signing.length === 0) throw new Error('the advertisement has no signing key');
  const signingThumbprints = signing.map(jwkThumbprint);
  if (thp && !signingThumbprints.includes(thp)) throw new Error(`thp ${thp} is not a signing key of the advertisement (its keys: ${signingThumbprints.join(', ')})`);
  return { jws, signingThumbprints };
}

/** Fetches `${url}/adv`; Tang has no timeout of its own worth trusting, so this one bounds it. */
export async function fetchAdvertisement(url: string, timeoutMs = 15_000): Promise<string> {
  const response = await fetch(new URL('adv', url.endsWith('/') ? url : `${url}/`), { signal: AbortSignal.timeout(timeoutMs) });
  if (!response.ok) throw new Error(`${url}/adv answered ${response.status}`);
  return response.text();
}
