/**
 * The image's own dpkg database (`var/lib/dpkg/status` in its root tree): what is installed,
 * from which source package, as dpkg itself records it. Not the host's, and not the package
 * list the build asked for: the SBOM lists what the image holds.
 */

export interface DpkgPackage {
  name: string;
  version: string;
  architecture: string;
  /** The source package and its version (dpkg leaves them out when they equal the binary's). */
  source: string;
  sourceVersion: string;
  maintainer?: string;
  homepage?: string;
  /** The description's first line. */
  summary?: string;
}

/** The fields of each deb822 stanza (continuation lines joined with newlines). */
export function parseDeb822Stanzas(text: string): Array<Map<string, string>> {
  const stanzas: Array<Map<string, string>> = [];
  for (const block of text.split(/\n[ \t]*\n/)) {
    const fields = new Map<string, string>();
    let last: string | undefined;
    for (const line of block.split('\n')) {
      if (/^[ \t]/.test(line) && last) fields.set(last, `${fields.get(last)}\n${line.trim()}`);
      else {
        const match = /^([^:\s]+):[ \t]*(.*)$/.exec(line);
        if (match) fields.set((last = match[1]!), match[2]!.trim());
      }
    }
    if (fields.size > 0) stanzas.push(fields);
  }
  return stanzas;
}

/** Installed packages (status `installed`) of a dpkg status file, sorted by name and architecture. */
export function parseDpkgStatus(text: string): DpkgPackage[] {
  const packages: DpkgPackage[] = [];
  for (const fields of parseDeb822Stanzas(text)) {
    const name = fields.get('Package');
    const version = fields.get('Version');
    if (!name || !version || fields.get('Status')?.split(/\s+/)[2] !== 'installed') continue;
    // "Source: name" or "Source: name (version)", the version when it differs from the binary's.
    const source = /^(\S+)(?:\s+\(([^)]+)\))?$/.exec(fields.get('Source') ?? '');
    packages.push({
      name,
      version,
      architecture: fields.get('Architecture') ?? 'all',
      source: source?.[1] ?? name,
      sourceVersion: source?.[2] ?? version,
      maintainer: fields.get('Maintainer'),
      homepage: fields.get('Homepage'),
      summary: fields.get('Description')?.split('\n')[0],
    });
  }
  return packages.sort((a, b) => (a.name === b.name ? a.architecture.localeCompare(b.architecture) : a.name < b.name ? -1 : 1));
}

/**
 * The package that installed each of `paths` (tree paths without a leading slash), from the
 * file lists in var/lib/dpkg/info (`lists`: file name → text, e.g. `linux-image-6.1.0-56-amd64.list`).
 */
export function owningPackages(lists: ReadonlyMap<string, string>, paths: readonly string[]): Map<string, string> {
  const wanted = new Set(paths.map((p) => `/${p}`));
  const owners = new Map<string, string>();
  for (const [file, text] of lists) {
    const pkg = file.replace(/\.list$/, '').replace(/:[^:]+$/, '');
    for (const line of text.split('\n')) if (wanted.has(line)) owners.set(line.slice(1), pkg);
  }
  return owners;
}
