/** The many-hosts engine: parallel limit, independent failures, exit codes, records, table, Ctrl-C. */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { renderLiveCounts, runFleet, type FleetOptions, type LiveCounts } from '../../src/fleet/run.js';
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

  it('shows a count per state on a terminal, redrawn in place, not a line per host', async () => {
    const written: string[] = [];
    const tty = { isTTY: true, columns: 100, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
    const { opts, lines } = options({ stderr: tty, parallel: 3 });
    await runFleet(targets(6), opts, async (target, progress) => {
      progress.phase('unlocking');
      await sleep(150);
      if (target.name === 'h2') throw new Error('no SSH server answers');
      return 'unlocked';
    });
    const screen = written.join('');
    expect(screen).toContain('test: 0/6 hosts done in 0 s, 3 at a time\n  ok 0   skipped 0   failed 0   interrupted 0   not started 3\n  running 3: unlocking 3\n');
    expect(screen).toMatch(/test: 3\/6 hosts done in 0 s, 3 at a time\n  ok 2   skipped 0   failed 1   interrupted 0   not started 0\n  running 3: unlocking 3\n  last failed: h2: no SSH server answers\n/);
    // Each redraw goes back up over the block drawn before it; no per-host line scrolls by.
    expect(screen).toContain('\x1b[3F\x1b[J');
    expect(screen).not.toMatch(/h\d: ok/);
    expect(lines.filter((line) => /^h\d: /.test(line))).toEqual([]);
    // The block is gone at the end, before the summary.
    expect(written.at(-1)).toMatch(/^\x1b\[4F\x1b\[J$/);
  });

  it('with --json on a terminal, one line per host as in a CI log', async () => {
    const tty = { isTTY: true, columns: 100, write: () => true } as unknown as NodeJS.WriteStream;
    const { opts, lines } = options({ stderr: tty, json: true });
    await runFleet(targets(2), opts, async () => 'unlocked');
    expect(lines.filter((line) => /^h\d: ok in/.test(line))).toHaveLength(2);
  });
});

describe('renderLiveCounts', () => {
  const counts = (extra: Partial<LiveCounts> = {}): LiveCounts => ({
    command: 'unlock',
    total: 300,
    parallel: 50,
    seconds: 71.6,
    results: new Map([['ok', 120], ['skipped', 10], ['failed', 13]]),
    phases: new Map([['reading the SSH banner', 30], ['unlocking', 15], ["checking dropbear's host key", 5]]),
    lastFailure: 'node117: no SSH server answers on 10.1.1.17:22',
    ...extra,
  });

  it('counts hosts by result and by phase, with the last failure', () => {
    expect(renderLiveCounts(counts(), 120)).toEqual([
      'unlock: 143/300 hosts done in 72 s, 50 at a time',
      '  ok 120   skipped 10   failed 13   interrupted 0   not started 107',
      "  running 50: reading the SSH banner 30, unlocking 15, checking dropbear's host key 5",
      '  last failed: node117: no SSH server answers on 10.1.1.17:22',
    ]);
  });

  it('names the four commonest phases and counts the rest together', () => {
    const phases = new Map([['a', 1], ['b', 5], ['c', 2], ['d', 7], ['e', 3], ['f', 1]]);
    expect(renderLiveCounts(counts({ phases, lastFailure: undefined }), 120)[2]).toBe('  running 19: d 7, b 5, e 3, c 2, other phases 2');
    expect(renderLiveCounts(counts({ phases: new Map(), results: new Map(), lastFailure: undefined }), 120)).toEqual([
      'unlock: 0/300 hosts done in 72 s, 50 at a time',
      '  ok 0   skipped 0   failed 0   interrupted 0   not started 300',
      '  running 0',
    ]);
  });

  it('cuts every line to the terminal width', () => {
    const lines = renderLiveCounts(counts(), 40);
    expect(lines.every((line) => line.length <= 39)).toBe(true);
    expect(lines[3]).toBe('  last failed: node117: no SSH server …');
  });
});
