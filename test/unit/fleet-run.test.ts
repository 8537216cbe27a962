/** The many-hosts engine: parallel limit, independent failures, exit codes, records, table, Ctrl-C. */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { runFleet, type FleetOptions } from '../../src/fleet/run.js';
import type { FleetTarget } from '../../src/fleet/targets.js';
import { captureLogger } from './helpers.js';

const targets = (n: number): FleetTarget[] => Array.from({ length: n }, (_, i) => ({ name: `h${i + 1}`, address: `10.0.0.${i + 1}`, port: 22, user: 'root', vars: {} }));

function options(extra: Partial<FleetOptions<string>> = {}) {
  const { log, lines } = captureLogger();
  const out: string[] = [];
  const opts: FleetOptions<string> = {
    command: 'test',
    log,
    describe: (result) => ({ summary: result, skipped: result === 'nothing to do' }),
    signal: new AbortController().signal,
    stdout: (text) => out.push(text),
    stderr: { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream,
    ...extra,
  };
  return { opts, lines, out };
}

describe('runFleet', () => {
  it('runs at most --parallel hosts at a time and every host once', async () => {
    const { opts } = options({ parallel: 3 });
    let running = 0;
    let peak = 0;
    const seen: string[] = [];
    const report = await runFleet(targets(10), opts, async (target) => {
      running++;
      peak = Math.max(peak, running);
      seen.push(target.name);
      await sleep(5);
      running--;
      return 'done';
    });
    expect(peak).toBe(3);
    expect(seen.sort()).toEqual(targets(10).map((t) => t.name).sort());
    expect(report.exitCode).toBe(0);
  });

  it('keeps going after a host fails, and exits 1', async () => {
    const { opts, out, lines } = options({ parallel: 2 });
    const report = await runFleet(targets(4), opts, async (target, progress) => {
      progress.phase('connecting');
      if (target.name === 'h1') throw new Error('connection refused');
      return target.name === 'h4' ? 'nothing to do' : 'unlocked';
    });
    expect(report.records.map((r) => [r.host, r.result])).toEqual([
      ['h1', 'failed'],
      ['h2', 'ok'],
      ['h3', 'ok'],
      ['h4', 'skipped'],
    ]);
    expect(report.records[0]!.error).toBe('connection refused');
    expect(report.exitCode).toBe(1);
    // Progress: one line per host per phase, with the host's name.
    expect(lines).toContain('h3: connecting');
    expect(lines.some((l) => /^error: h1: failed in \d+\.\d s: connection refused$/.test(l))).toBe(true);
    const table = out.join('');
    expect(table.split('\n')[0]).toMatch(/^host +address +result +time +details$/);
    expect(table).toMatch(/^h1 +10\.0\.0\.1:22 +failed +\d+\.\d s +connection refused$/m);
    expect(table).toMatch(/^h4 +10\.0\.0\.4:22 +skipped +\d+\.\d s +nothing to do$/m);
    expect(lines.at(-1)).toMatch(/^test: 1 failed, 2 ok, 1 skipped of 4 host\(s\) in/);
  });

  it('prints one JSON line per host with --json, secrets redacted', async () => {
    const { opts, out } = options({ json: true });
    opts.log.redactor.add('sekret-passphrase');
    const report = await runFleet(targets(2), opts, async (target) => {
      if (target.name === 'h2') throw new Error('said sekret-passphrase');
      return 'unlocked';
    });
    const records = out.map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(out.every((line) => line.endsWith('\n') && !line.slice(0, -1).includes('\n'))).toBe(true);
    expect(records.map((r) => r.host).sort()).toEqual(['h1', 'h2']);
    const h2 = records.find((r) => r.host === 'h2')!;
    expect(h2).toMatchObject({ address: '10.0.0.2', port: 22, result: 'failed', error: 'said [redacted]' });
    expect(records.find((r) => r.host === 'h1')).toMatchObject({ result: 'ok', summary: 'unlocked', details: 'unlocked' });
    expect(report.exitCode).toBe(1);
  });

  it('on abort: running hosts see the signal, the rest are not started, exit 130', async () => {
    const controller = new AbortController();
    const { opts } = options({ parallel: 2, signal: controller.signal });
    const report = await runFleet(targets(5), opts, async (_target, progress) => {
      setTimeout(() => controller.abort(new Error('interrupted by SIGINT')), 10);
      await sleep(10_000, undefined, { signal: progress.signal });
      return 'never';
    });
    expect(report.records.map((r) => r.result)).toEqual(['interrupted', 'interrupted', 'not-started', 'not-started', 'not-started']);
    expect(report.records[0]!.error).toBe('interrupted by SIGINT');
    expect(report.exitCode).toBe(130);
  });

  it('redraws one line per running host on a terminal', async () => {
    const written: string[] = [];
    const tty = { isTTY: true, columns: 80, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
    const { opts } = options({ stderr: tty, parallel: 2 });
    await runFleet(targets(2), opts, async (_target, progress) => {
      progress.phase('unlocking');
      await sleep(5);
      return 'unlocked';
    });
    const screen = written.join('');
    expect(screen).toContain('  h1  unlocking  0 s');
    expect(screen).toContain('\x1b[J');
    expect(screen).toMatch(/h2: ok in \d+\.\d s: unlocked\n/);
  });
});
