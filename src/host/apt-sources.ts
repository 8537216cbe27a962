/**
 * Finds the Debian mirror the host already uses, so that no archive host name is ever
 * written into recipes or code, and users behind a local mirror need no configuration.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface AptSource {
  uri: string;
  suites: string[];
  components: string[];
}

/** Parses deb822 `.sources` text (stanzas separated by blank lines). */
export function parseDeb822(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last: string | undefined;
    for (const line of stanza.split('\n')) {
      if (line.startsWith('#')) continue;
      if (/^\s/.test(line) && last) {
        fields.set(last, `${fields.get(last)} ${line.trim()}`);
        continue;
      }
      const match = /^([\w-]+):\s*(.*)$/.exec(line);
      if (match) {
        last = match[1]!.toLowerCase();
        fields.set(last, match[2]!.trim());
      }
    }
    if (!(fields.get('types') ?? '').split(/\s+/).includes('deb')) continue;
    if ((fields.get('enabled') ?? 'yes').toLowerCase() === 'no') continue;
    const split = (key: string) => (fields.get(key) ?? '').split(/\s+/).filter(Boolean);
    for (const uri of split('uris')) sources.push({ uri, suites: split('suites'), components: split('components') });
  }
  return sources;
}

/** Parses one-line `sources.list` text (`deb [options] URI SUITE COMPONENT...`). */
export function parseOneLine(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').replace(/\[[^\]]*\]/, '').trim();
    const [type, uri, suite, ...components] = line.split(/\s+/);
    if (type === 'deb' && uri && suite) sources.push({ uri, suites: [suite], components });
  }
  return sources;
}

export async function readHostAptSources(root = '/'): Promise<AptSource[]> {
  const sources: AptSource[] = [];
  const dir = join(root, 'etc/apt/sources.list.d');
  const entries = await readdir(dir).catch(() => [] as string[]);
  for (const name of entries.sort()) {
    const text = await readFile(join(dir, name), 'utf8').catch(() => '');
    if (name.endsWith('.sources')) sources.push(...parseDeb822(text));
    else if (name.endsWith('.list')) sources.push(...parseOneLine(text));
  }
  sources.push(...parseOneLine(await readFile(join(root, 'etc/apt/sources.list'), 'utf8').catch(() => '')));
  return sources;
}

export interface MirrorChoice {
  /** Main archive URI (serves SUITE and SUITE-updates). */
  archive: string;
  /** Security archive URI (serves SUITE-security), if known. */
  security?: string;
  /** Where each URI came from, for the log and the manifest. */
  origin: string;
}

const isSecuritySuite = (suite: string) => /-security$|\/updates$/.test(suite);

/** Picks the archive and security URIs from the host's sources; `undefined` if none fits. */
export function mirrorFromSources(sources: AptSource[]): Omit<MirrorChoice, 'origin'> | undefined {
  const archive = sources.find((s) => s.suites.some((suite) => !isSecuritySuite(suite) && !suite.endsWith('-backports')));
  if (!archive) return undefined;
  const security = sources.find((s) => s.suites.some(isSecuritySuite));
  return { archive: archive.uri, security: security?.uri };
}

/** The apt source lines for a target suite, as mmdebstrap and the image's sources.list want them. */
export function sourceLines(mirror: MirrorChoice, suite: string, components: readonly string[]): string[] {
  const comps = components.join(' ');
  const lines = [`deb ${mirror.archive} ${suite} ${comps}`, `deb ${mirror.archive} ${suite}-updates ${comps}`];
  if (mirror.security) lines.push(`deb ${mirror.security} ${suite}-security ${comps}`);
  return lines;
}

/** The `dists/<suite>/InRelease` URLs of the suites sourceLines() lists. */
export function releaseFileUrls(mirror: MirrorChoice, suite: string): string[] {
  const url = (base: string, dist: string) => `${base.replace(/\/+$/, '')}/dists/${dist}/InRelease`;
  return [url(mirror.archive, suite), url(mirror.archive, `${suite}-updates`), ...(mirror.security ? [url(mirror.security, `${suite}-security`)] : [])];
}

export function parseReleaseDate(text: string): string | undefined {
  return /^Date:\s*(.+)$/m.exec(text)?.[1]?.trim();
}

/**
 * The `Date:` of each suite's Release file: what the archive served when it was last
 * updated. A cache key that includes these changes whenever the archive does.
 */
export async function archiveReleaseDates(mirror: MirrorChoice, suite: string, timeoutMs = 15_000): Promise<Record<string, string>> {
  const dates: Record<string, string> = {};
  for (const url of releaseFileUrls(mirror, suite)) {
    const text = url.startsWith('file:')
      ? await readFile(new URL(url), 'utf8')
      : await fetch(url, { signal: AbortSignal.timeout(timeoutMs) }).then(async (response) => {
          if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
          return response.text();
        });
    const date = parseReleaseDate(text);
    if (!date) throw new Error(`${url} has no Date: field`);
    dates[url] = date;
  }
  return dates;
}
