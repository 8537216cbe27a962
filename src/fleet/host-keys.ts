/**
 * Which SSH host keys a fleet command trusts before it sends a secret: the dropbear keys an
 * image's manifest.json lists, and/or an OpenSSH known_hosts file (plain or hashed host
 * names, `[host]:port` entries, `*`/`?` patterns and `!` negation, @revoked keys).
 */
import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { InputError } from '../errors.js';
import type { HostKey } from '../ssh/client.js';
import { readBootManifest } from '../formats/build-manifest.js';
import { sshFingerprint } from '../recipe/authorized-keys.js';

export interface KnownHostsEntry {
  /** Comma-separated host patterns, or one `|1|salt|hash` hashed name. */
  hosts: string;
  type: string;
  fingerprint: string;
  revoked: boolean;
}

export function parseKnownHosts(text: string, file: string): KnownHostsEntry[] {
  const entries: KnownHostsEntry[] = [];
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const fields = line.split(/\s+/);
    const marker = fields[0]!.startsWith('@') ? fields.shift() : undefined;
    // Certificate authorities sign host certificates, which keylessgo's hosts do not have.
    if (marker === '@cert-authority') continue;
    if (marker !== undefined && marker !== '@revoked') throw new InputError(`unknown marker ${marker}`, `${file}:${index + 1}`);
    const [hosts, type, base64] = fields;
    const blob = base64 === undefined ? undefined : Buffer.from(base64, 'base64');
    if (!hosts || !type || !blob || blob.length === 0 || blob.toString('base64').replace(/=+$/, '') !== base64!.replace(/=+$/, '')) {
      throw new InputError('expected "host[,host...] key-type base64-key"', `${file}:${index + 1}`);
    }
    entries.push({ hosts, type, fingerprint: sshFingerprint(blob), revoked: marker === '@revoked' });
  }
  return entries;
}

export async function readKnownHosts(path: string): Promise<KnownHostsEntry[]> {
  const text = await readFile(path, 'utf8').catch((error: Error) => {
    throw new InputError(`cannot read known_hosts: ${error.message}`, path);
  });
  return parseKnownHosts(text, path);
}

/** How OpenSSH names a host in known_hosts: `host` on port 22, `[host]:port` elsewhere. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

function patternMatches(pattern: string, name: string): boolean {
  const source = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replaceAll('*', '.*').replaceAll('?', '.');
  return new RegExp(`^${source}$`, 'i').test(name);
}

function entryMatches(entry: KnownHostsEntry, name: string): boolean {
  if (entry.hosts.startsWith('|1|')) {
    const [, , salt, hash] = entry.hosts.split('|');
    return createHmac('sha1', Buffer.from(salt ?? '', 'base64')).update(name).digest('base64') === hash;
  }
  let matched = false;
  for (const pattern of entry.hosts.split(',')) {
    if (pattern.startsWith('!')) {
      if (patternMatches(pattern.slice(1), name)) return false;
    } else if (patternMatches(pattern, name)) {
      matched = true;
    }
  }
  return matched;
}

/** What a command trusts; a key is accepted if any source lists it for the host and none revokes it. */
export interface HostKeyTrust {
  /** Dropbear host key fingerprints from the image's manifest.json (any host). */
  manifest?: { file: string; fingerprints: string[] };
  knownHosts?: { file: string; entries: KnownHostsEntry[] };
  /** One expected SHA256 fingerprint (enroll and rebind's --host-key-fingerprint, for one machine). */
  fingerprint?: string;
}

export type HostKeyVerdict = { trusted: true; by: string } | { trusted: false; reason: string };

/** `hosts`: the names the host may be listed under (inventory name, address). */
export function judgeHostKey(trust: HostKeyTrust, hosts: readonly string[], port: number, key: HostKey): HostKeyVerdict {
  if (!trust.manifest && !trust.knownHosts && !trust.fingerprint) return { trusted: false, reason: 'no --manifest or --known-hosts to check the host key against' };
  const names = [...new Set(hosts)].map((host) => knownHostsName(host, port));
  const entries = (trust.knownHosts?.entries ?? []).filter((entry) => names.some((name) => entryMatches(entry, name)));
  if (entries.some((entry) => entry.revoked && entry.fingerprint === key.fingerprint)) return { trusted: false, reason: `host key ${key.type} ${key.fingerprint} is @revoked in ${trust.knownHosts!.file}` };
  if (entries.some((entry) => !entry.revoked && entry.fingerprint === key.fingerprint)) return { trusted: true, by: trust.knownHosts!.file };
  if (trust.manifest?.fingerprints.includes(key.fingerprint)) return { trusted: true, by: trust.manifest.file };
  if (trust.fingerprint === key.fingerprint) return { trusted: true, by: '--host-key-fingerprint' };
  const sources = [
    ...(trust.fingerprint ? [`--host-key-fingerprint ${trust.fingerprint}`] : []),
    ...(trust.manifest ? [`the manifest ${trust.manifest.file}`] : []),
    ...(trust.knownHosts ? [`${trust.knownHosts.file} (${entries.length === 0 ? `no entry for ${names[0]}` : `${entries.length} other key(s) for ${names[0]}`})`] : []),
  ];
  return { trusted: false, reason: `host key ${key.type} ${key.fingerprint} is not in ${sources.join(' or ')}` };
}

export async function readHostKeyTrust(options: { manifest?: string; knownHosts?: string; fingerprint?: string }): Promise<HostKeyTrust> {
  const trust: HostKeyTrust = options.fingerprint ? { fingerprint: options.fingerprint } : {};
  if (options.manifest) trust.manifest = { file: options.manifest, fingerprints: (await readBootManifest(options.manifest)).dropbear.hostKeys.map((k) => k.fingerprint) };
  if (options.knownHosts) trust.knownHosts = { file: options.knownHosts, entries: await readKnownHosts(options.knownHosts) };
  return trust;
}
