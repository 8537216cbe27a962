/**
 * Retry files, as Ansible keeps them: after a fleet command, the hosts it did not finish
 * (failed, interrupted, not started) one name a line; `--limit @FILE` runs only those.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { InputError } from '../errors.js';
import type { Logger } from '../log.js';

/** Results of hosts that need nothing more (run.ts's HostResult; not imported: targets.ts reads retry files and run.ts uses targets). */
const FINISHED: readonly string[] = ['ok', 'skipped'];

/**
 * Where a run's retry file goes unless --retry-file says: beside the inventory
 * (`hosts.yml` → `hosts.unlock.retry`, as Ansible puts `site.retry` beside `site.yml`), in
 * the current directory for several --host values; none for one --host (run it again).
 */
export function defaultRetryFile(command: string, source: { inventory?: string; hosts: number }): string | undefined {
  if (source.inventory) return join(dirname(source.inventory), `${basename(source.inventory, extname(source.inventory))}.${command}.retry`);
  return source.hosts > 1 ? `keylessgo-${command}.retry` : undefined;
}

/** The host names in a retry file (blank lines skipped). */
export async function readRetryFile(path: string): Promise<string[]> {
  const text = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new InputError(`cannot read the retry file: ${error.code === 'ENOENT' ? 'no such file' : error.message}`, `--limit @${path}`);
  });
  const hosts = text.split('\n').map((line) => line.trim()).filter(Boolean);
  if (hosts.length === 0) throw new InputError('the retry file lists no host', `--limit @${path}`);
  return hosts;
}

/**
 * `@FILE` terms of a --limit pattern replaced by the hosts the file lists (Ansible's
 * `--limit @site.retry`), so that the pattern can say `@failed.retry:!db1`.
 */
export async function expandRetryFiles(pattern: string): Promise<string> {
  const terms = pattern.split(/[,:]/).map((term) => term.trim());
  const expanded = await Promise.all(terms.map(async (term) => (term.startsWith('@') ? (await readRetryFile(term.slice(1))).join(',') : term)));
  return expanded.filter(Boolean).join(',');
}

/**
 * Writes the hosts the run did not finish to `path` and says how to run them again; when every
 * host finished, a retry file left there by an earlier run is removed (nothing is left to retry).
 * A file that cannot be written is a warning: the run's own outcome stands.
 */
export async function updateRetryFile(report: { records: ReadonlyArray<{ host: string; result: string }> }, path: string, log: Logger): Promise<void> {
  const unfinished = report.records.filter((record) => !FINISHED.includes(record.result)).map((record) => record.host);
  try {
    if (unfinished.length === 0) {
      await rm(path, { force: true });
      return;
    }
    await writeFile(path, `${unfinished.join('\n')}\n`);
    log.info(`retry file: ${path} (${unfinished.length} host(s) not done); only those: --limit @${path}`);
  } catch (error) {
    log.warn(`cannot write the retry file ${path}: ${(error as Error).message}`);
  }
}
