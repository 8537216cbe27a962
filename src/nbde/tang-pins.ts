/**
 * Which Tang signing keys a binding trusts: each server's advertisement is fetched from the
 * machine's side (where the binding is made and later used; Tang may not be reachable from
 * the operator's host at all), checked against the thumbprint given with --tang-thp, and
 * then passed to clevis inline, so that clevis neither fetches it again nor asks.
 * Host command on the machine: curl (a dependency of clevis's tang pin).
 */
import { EnrollError, InputError } from '../errors.js';
import { parseAdvertisement } from '../host/tang.js';
import { must, shellQuote, type EnrollLog, type Remote } from './machine.js';

export interface TrustedTang {
  url: string;
  /** Signing-key thumbprints of the advertisement used. */
  thumbprints: string[];
  /** pinned: checked against --tang-thp; first-use: trusted as served. */
  trust: 'pinned' | 'first-use';
  adv: Record<string, unknown>;
}

export function advertisementUrl(url: string): string {
  return `${url.replace(/\/+$/, '')}/adv`;
}

/** Fetches and checks each server's advertisement; `thps[i]` pins `urls[i]`. Logs what it trusts. */
export async function trustTang(remote: Remote, urls: readonly string[], thps: readonly string[], log: EnrollLog, step: string): Promise<TrustedTang[]> {
  const trusted: TrustedTang[] = [];
  for (const [index, url] of urls.entries()) {
    const thp = thps[index];
    const text = await must(remote, step, `curl -sSfg --max-time 15 ${shellQuote(advertisementUrl(url))}`);
    let adv;
    try {
      adv = parseAdvertisement(text, thp);
    } catch (error) {
      throw new EnrollError(step, `${url}: ${(error as Error).message}`);
    }
    const trust = thp ? 'pinned' : 'first-use';
    log.info(`Tang ${url}: trusting signing key ${adv.signingThumbprints.join(', ')} (${trust === 'pinned' ? 'pinned by --tang-thp' : 'trust on first use'})`);
    trusted.push({ url, thumbprints: adv.signingThumbprints, trust, adv: adv.jws });
  }
  return trusted;
}

/**
 * Checks --tang, --tang-thp and --threshold. Across several hosts, trusting whatever each one
 * is served would let one spoofed answer go unnoticed: refused without --trust-first-use.
 */
/** `tpm2`: the TPM counts as one more pin towards the threshold (enroll --tpm2). */
export function checkTangOptions(options: { tangUrls: string[]; tangThps: string[]; threshold: number; hosts: number; trustFirstUse: boolean; tpm2?: unknown }): void {
  const { tangUrls, tangThps } = options;
  const pins = tangUrls.length + (options.tpm2 ? 1 : 0);
  if (pins === 0) throw new InputError(options.tpm2 === undefined ? 'give at least one --tang URL' : 'give at least one --tang URL, or --tpm2');
  for (const url of tangUrls) if (!URL.canParse(url)) throw new InputError(`not a URL: ${url}`, '--tang');
  if (options.threshold > pins) throw new InputError(`--threshold ${options.threshold} exceeds the ${pins} pin(s) given (${tangUrls.length} Tang server(s)${options.tpm2 ? ' and the TPM' : ''})`);
  if (tangThps.length > 0 && tangThps.length !== tangUrls.length) throw new InputError(`give one thumbprint per --tang URL, in order (${tangUrls.length} URLs, ${tangThps.length} thumbprints)`, '--tang-thp');
  for (const thp of tangThps) if (!/^[A-Za-z0-9_-]{20,}$/.test(thp)) throw new InputError(`not a JWK thumbprint (base64url, as \`jose jwk thp\` prints it): ${thp}`, '--tang-thp');
  if (tangThps.length === 0 && options.hosts > 1 && !options.trustFirstUse) {
    throw new InputError(`${options.hosts} hosts and no --tang-thp: pin each Tang server's signing key (\`jose jwk thp -i KEY.jwk\` on the Tang server, or \`tang-show-keys\`), or pass --trust-first-use`);
  }
}
