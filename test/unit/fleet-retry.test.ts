/** Retry files: where they go, what they hold, and --limit @FILE. */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { defaultRetryFile, expandRetryFiles, updateRetryFile } from '../../src/fleet/retry.js';
import type { FleetReport, HostResult } from '../../src/fleet/run.js';
import { resolveTargets } from '../../src/fleet/targets.js';
import { captureLogger, tempDir } from './helpers.js';

function report(results: Record<string, HostResult>): FleetReport<string> {
  const records = Object.entries(results).map(([host, result]) => ({ host, address: host, port: 22, result, seconds: 1, summary: '' }));
  return { records, seconds: 1, interrupted: false, exitCode: 1 };
}

describe('retry files', () => {
  it('go beside the inventory, in the current directory for several --host, nowhere for one', () => {
    expect(defaultRetryFile('unlock', { inventory: '/site/hosts.yml', hosts: 0 })).toBe('/site/hosts.unlock.retry');
    expect(defaultRetryFile('status', { inventory: 'fleet.json', hosts: 0 })).toBe('fleet.status.retry');
    expect(defaultRetryFile('enroll', { hosts: 3 })).toBe('keylessgo-enroll.retry');
    expect(defaultRetryFile('enroll', { hosts: 1 })).toBeUndefined();
  });

  it('list the hosts not done, say how to use them, and go once every host is done', async () => {
    const dir = await tempDir();
    const path = join(dir, 'hosts.unlock.retry');
    const { log, lines } = captureLogger();
    await updateRetryFile(report({ a: 'ok', b: 'failed', c: 'skipped', d: 'interrupted', e: 'not-started' }), path, log);
    expect(await readFile(path, 'utf8')).toBe('b\nd\ne\n');
    expect(lines).toEqual([`retry file: ${path} (3 host(s) not done); only those: --limit @${path}`]);
    await updateRetryFile(report({ b: 'ok', d: 'skipped', e: 'ok' }), path, log);
    await expect(readFile(path, 'utf8')).rejects.toThrow(/ENOENT/);
  });

  it('that cannot be written are a warning, not a failure', async () => {
    const { log, lines } = captureLogger();
    await updateRetryFile(report({ a: 'failed' }), '/nonexistent/dir/x.retry', log);
    expect(lines).toEqual([expect.stringMatching(/^warning: cannot write the retry file \/nonexistent\/dir\/x\.retry: ENOENT/)]);
  });

  it('--limit @FILE selects the hosts listed, also with other terms', async () => {
    const dir = await tempDir();
    const inventory = join(dir, 'hosts.ini');
    await writeFile(inventory, '[web]\nw1\nw2\nw3\n[db]\nd1\nd2\n');
    await writeFile(join(dir, 'failed.retry'), 'w2\n\nd2\n');
    const names = async (limit: string) => (await resolveTargets({ inventory, limit })).map((t) => t.name);
    expect(await names(`@${join(dir, 'failed.retry')}`)).toEqual(['w2', 'd2']);
    expect(await names(`@${join(dir, 'failed.retry')}:!db`)).toEqual(['w2']);
    expect(await names(`w1,@${join(dir, 'failed.retry')}`)).toEqual(['w1', 'w2', 'd2']);
    expect(await expandRetryFiles('web:&w1')).toBe('web,&w1');
    await writeFile(join(dir, 'empty.retry'), '\n');
    await expect(names(`@${join(dir, 'empty.retry')}`)).rejects.toThrow(/empty\.retry: the retry file lists no host$/);
  });
});
