/**
 * Content-addressed cache of stage results (the bootstrapped root tree, the initramfs built
 * from it). An entry's key is the SHA-256 of everything its content depends on, so a stale
 * entry is never hit: a changed input is a different key. Entries are written under a
 * temporary name and renamed when complete; a per-key lock file makes concurrent builds of
 * the same inputs wait for one another instead of both filling (or one reading half) an entry.
 * Cache entries never hold secrets (host keys are removed before a tree is stored).
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, sep } from 'node:path';
import { overlayLowerDirs } from '../host/mounts.js';
import type { Logger } from '../log.js';
import { currentOwner, formatOwner, ownerAlive, parseOwner } from '../base/owner.js';

export type CacheKind = 'bootstrap' | 'initramfs';
export const CACHE_KINDS: readonly CacheKind[] = ['bootstrap', 'initramfs'];

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KEYLESSGO_CACHE_DIR) return env.KEYLESSGO_CACHE_DIR;
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'keylessgo');
}

/** JSON with object keys sorted, so equal inputs always hash alike. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

export function cacheKey(inputs: unknown): string {
  return createHash('sha256').update(canonicalJson(inputs)).digest('hex').slice(0, 32);
}

export interface CacheEntry {
  kind: CacheKind;
  key: string;
  dir: string;
  createdAt: string;
  lastUsedAt: string;
  bytes: number;
  inputs: unknown;
  /** What the stage needs to reuse the entry without redoing the work (e.g. the initramfs listing). */
  data: Record<string, unknown>;
}

const ENTRY_JSON = 'entry.json';
const LOCK_POLL_MS = 500;

async function directoryBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += (await stat(join(entry.parentPath, entry.name))).blocks * 512;
  }
  return total;
}

export class StageCache {
  constructor(
    readonly root: string,
    private readonly log: Logger,
  ) {}

  private kindDir(kind: CacheKind): string {
    return join(this.root, kind);
  }

  entryDir(kind: CacheKind, key: string): string {
    return join(this.kindDir(kind), key);
  }

  /**
   * Takes the lock of one key, waiting while another live process holds it; a lock left by
   * a dead process is taken over. Returns the release function.
   */
  async lock(kind: CacheKind, key: string, signal?: AbortSignal): Promise<() => Promise<void>> {
    await mkdir(this.kindDir(kind), { recursive: true, mode: 0o700 });
    const lockFile = `${this.entryDir(kind, key)}.lock`;
    let waiting = false;
    for (;;) {
      signal?.throwIfAborted();
      try {
        await writeFile(lockFile, formatOwner(await currentOwner()), { flag: 'wx', mode: 0o600 });
        return () => rm(lockFile, { force: true });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const holder = parseOwner(await readFile(lockFile, 'utf8').catch(() => ''));
      if (holder && !(await ownerAlive(holder))) {
        this.log.warn(`cache: taking over the ${kind} lock of process ${holder.pid}, which is gone`);
        await rm(lockFile, { force: true });
        continue;
      }
      if (!waiting) this.log.info(`      cache: waiting for process ${holder?.pid ?? '?'} to finish the ${kind} entry ${key}`);
      waiting = true;
      await new Promise((resolve) => setTimeout(resolve, LOCK_POLL_MS));
    }
  }

  /** The complete entry for a key, if any (its last use is updated). */
  async lookup(kind: CacheKind, key: string): Promise<CacheEntry | undefined> {
    const dir = this.entryDir(kind, key);
    const text = await readFile(join(dir, ENTRY_JSON), 'utf8').catch(() => undefined);
    if (!text) return undefined;
    const entry = { ...(JSON.parse(text) as CacheEntry), dir, lastUsedAt: new Date().toISOString() };
    await writeFile(join(dir, ENTRY_JSON), `${JSON.stringify(entry, null, 2)}\n`);
    return entry;
  }

  /** Fills a new entry through `fill(dir)` and publishes it only once complete. */
  async store(kind: CacheKind, key: string, inputs: unknown, fill: (dir: string) => Promise<Record<string, unknown>>): Promise<CacheEntry> {
    const dir = this.entryDir(kind, key);
    const partial = `${dir}.partial-${process.pid}`;
    await rm(partial, { recursive: true, force: true });
    await mkdir(partial, { recursive: true, mode: 0o700 });
    try {
      const data = await fill(partial);
      const now = new Date().toISOString();
      const entry: CacheEntry = { kind, key, dir, createdAt: now, lastUsedAt: now, bytes: await directoryBytes(partial), inputs, data };
      await writeFile(join(partial, ENTRY_JSON), `${JSON.stringify(entry, null, 2)}\n`);
      await rm(dir, { recursive: true, force: true });
      await rename(partial, dir);
      return entry;
    } catch (error) {
      await rm(partial, { recursive: true, force: true });
      throw error;
    }
  }

  async list(): Promise<CacheEntry[]> {
    const entries: CacheEntry[] = [];
    for (const kind of CACHE_KINDS) {
      const names = await readdir(this.kindDir(kind)).catch(() => [] as string[]);
      for (const name of names.filter((n) => /^[0-9a-f]{32}$/.test(n))) {
        const text = await readFile(join(this.kindDir(kind), name, ENTRY_JSON), 'utf8').catch(() => undefined);
        if (text) entries.push({ ...(JSON.parse(text) as CacheEntry), dir: join(this.kindDir(kind), name) });
      }
    }
    return entries.sort((a, b) => a.lastUsedAt.localeCompare(b.lastUsedAt));
  }

  /**
   * Removes entries last used before `before` (all entries without it), each under its lock,
   * and leftovers of builds that died while filling an entry. An entry a running build has
   * mounted (its tree is that build's lower layer) is kept. Returns what was removed.
   */
  async prune(before?: Date): Promise<CacheEntry[]> {
    const removed: CacheEntry[] = [];
    for (const entry of await this.list()) {
      if (before && new Date(entry.lastUsedAt) >= before) continue;
      // Under the lock: a build mounts the tree while it holds it.
      const release = await this.lock(entry.kind, entry.key);
      try {
        if ((await overlayLowerDirs()).some((dir) => dir === entry.dir || dir.startsWith(entry.dir + sep))) {
          this.log.warn(`cache: kept ${entry.kind} ${entry.key}: a running build has its tree mounted`);
          continue;
        }
        await rm(entry.dir, { recursive: true, force: true });
        removed.push(entry);
      } finally {
        await release();
      }
    }
    await this.reapDeadBuilds();
    return removed;
  }

  /**
   * Removes lock files and partly filled entries of processes that are gone (a build killed
   * while it held a lock or filled an entry); returns one line per thing removed (also logged).
   */
  async reapDeadBuilds(): Promise<string[]> {
    const removed: string[] = [];
    for (const kind of CACHE_KINDS) {
      for (const name of await readdir(this.kindDir(kind)).catch(() => [] as string[])) {
        const path = join(this.kindDir(kind), name);
        const partialOf = Number(/\.partial-(\d+)$/.exec(name)?.[1]);
        const holder = name.endsWith('.lock') ? parseOwner(await readFile(path, 'utf8').catch(() => '')) : partialOf ? { pid: partialOf, startTime: '' } : undefined;
        if (!holder || (await ownerAlive(holder))) continue;
        await rm(path, { recursive: true, force: true });
        removed.push(`removed ${path} of dead build process ${holder.pid}`);
        this.log.info(`reaped: ${removed.at(-1)!}`);
      }
    }
    return removed;
  }
}
