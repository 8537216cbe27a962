/**
 * Downloaded .deb files kept between bootstraps, in `packages/SUITE/` beside the stage cache
 * (one directory per suite: two suites' versions of a package must not supersede each other). Every
 * archive publication is a bootstrap cache miss (the key holds the archive's Release dates),
 * but with this cache the miss downloads only the packages whose version the archive changed.
 * apt checks each cached file against the size and SHA-256 the archive's Packages index gives
 * for that version before it uses it, so the file stands for its hash: one that differs from
 * the archive's is downloaded again, never installed. Files enter under a temporary name and
 * are renamed; the versions a bootstrap superseded are removed, so the cache stays about one
 * package set large. A build's incoming directory (`.incoming-PID`) is removed by the build,
 * or by the next one when the build died.
 *
 * Host commands: cp (inside mmdebstrap's hooks).
 */
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { markOwned, ownerAlive, readOwner } from '../base/owner.js';
import { shellQuote } from '../base/shell.js';

/** An installed package as dpkg names it. */
export interface InstalledPackage {
  name: string;
  version: string;
  architecture: string;
}

export interface PackageCacheUse {
  /** Packages of the tree whose file came from the cache. */
  reused: number;
  /** Packages of the tree whose file was downloaded (and is now cached). */
  downloaded: number;
  /** Superseded versions removed from the cache. */
  removed: number;
}

/** The file name apt gives a package's .deb in /var/cache/apt/archives (an epoch's colon as %3a). */
export function debFileName(pkg: InstalledPackage): string {
  return `${pkg.name}_${pkg.version.replaceAll(':', '%3a')}_${pkg.architecture}.deb`;
}

/** `name_arch` of a .deb file name: versions of one package share it. */
function packageSlot(fileName: string): string {
  const [name, , arch] = fileName.slice(0, -'.deb'.length).split('_');
  return `${name}_${arch}`;
}

async function debsIn(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.deb'));
}

export class PackageCache {
  constructor(readonly dir: string) {}

  static beside(stageCacheRoot: string, suite: string): PackageCache {
    return new PackageCache(join(stageCacheRoot, 'packages', suite));
  }

  async files(): Promise<Set<string>> {
    return new Set(await debsIn(this.dir));
  }

  /**
   * A new directory, owned by this process, where its bootstrap puts the files it used (inside
   * the cache, so they move in by rename). Those that builds which died left are removed first.
   */
  async createIncoming(): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    for (const name of (await readdir(this.dir)).filter((n) => n.startsWith('.incoming-'))) {
      const owner = await readOwner(join(this.dir, name));
      if (!owner || owner.pid === process.pid || !(await ownerAlive(owner))) await rm(join(this.dir, name), { recursive: true, force: true });
    }
    const incoming = join(this.dir, `.incoming-${process.pid}`);
    await mkdir(incoming, { mode: 0o755 });
    await markOwned(incoming);
    return incoming;
  }

  /**
   * mmdebstrap options that copy the cached files into the new tree's apt cache before apt
   * downloads, and every file the bootstrap used out to `incoming` before mmdebstrap's cleanup
   * empties it. A file that vanishes while it is copied in (another build pruning) is simply
   * downloaded.
   */
  mmdebstrapOptions(incoming: string): string[] {
    const archives = '"$1"/var/cache/apt/archives';
    return [
      '--skip=essential/unlink',
      `--setup-hook=mkdir -p ${archives} && find ${shellQuote(this.dir)} -maxdepth 1 -name '*.deb' -exec cp --reflink=auto -p -t ${archives} {} + 2>/dev/null; true`,
      `--customize-hook=mkdir -p ${shellQuote(incoming)} && find ${archives} -maxdepth 1 -name '*.deb' -exec cp --reflink=auto -p -t ${shellQuote(incoming)} {} +`,
    ];
  }

  /**
   * After a bootstrap: moves the tree's new files in from `incoming` (mmdebstrap; debootstrap
   * writes into the cache itself), removes the versions they superseded and says how many of
   * the tree's packages came from the cache (`before`: the cache's files before the bootstrap).
   */
  async update(installed: InstalledPackage[], before: Set<string>, incoming?: string): Promise<PackageCacheUse> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    if (incoming) {
      for (const file of await debsIn(incoming)) {
        if (!before.has(file)) await rename(join(incoming, file), join(this.dir, file));
      }
      await rm(incoming, { recursive: true, force: true });
    }
    const used = new Set(installed.map(debFileName));
    const usedSlots = new Set([...used].map(packageSlot));
    let removed = 0;
    for (const file of await debsIn(this.dir)) {
      if (!used.has(file) && usedSlots.has(packageSlot(file))) {
        await rm(join(this.dir, file), { force: true });
        removed++;
      }
    }
    const reused = [...used].filter((f) => before.has(f)).length;
    return { reused, downloaded: used.size - reused, removed };
  }
}
