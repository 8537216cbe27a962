/**
 * The many-hosts engine behind `unlock`, `status`, `enroll` and `rebind`: one async task per
 * host, at most `parallel` at a time, progress (on a terminal a live count per state, elsewhere
 * a line per host and phase), a summary table and one JSON record per host. A failing host never stops the others; Ctrl-C stops starting
 * hosts and aborts the running ones through their AbortSignal, and every host still gets a
 * record saying what happened to it.
 */
import { setMaxListeners } from 'node:events';
import { InterruptedError } from '../errors.js';
import { formatColumns, formatSeconds, type Logger } from '../log.js';
import { SignalGuard } from '../pipeline/runner.js';
import type { FleetTarget } from './targets.js';

const INTERRUPTED_EXIT_CODE = new InterruptedError('SIGINT').exitCode;

/** What the engine hands each host's task. */
export interface HostProgress {
  /** Aborted on Ctrl-C (and when the command gives up): end the host's work cleanly. */
  readonly signal: AbortSignal;
  /** The host entered a new phase ("connecting", "unlocking", ...): counted on a terminal, logged elsewhere. */
  phase(text: string): void;
  /** A message about this host that must stay visible (logged with the host's name). */
  warn(message: string): void;
}

/** `skipped`: the task decided there was nothing to do (e.g. unlock on a machine already up). */
export type HostResult = 'ok' | 'skipped' | 'failed' | 'interrupted' | 'not-started';

/** One host's record: the summary table's row and, with --json, one line of output. */
export interface HostRecord<T> {
  host: string;
  address: string;
  port: number;
  result: HostResult;
  seconds: number;
  /** Short key facts for the summary table ("unlocked, dropbear key SHA256:..."). */
  summary: string;
  /** Why the host failed (failed / interrupted only). */
  error?: string;
  /** The task's result (ok / skipped only). */
  details?: T;
}

/** How the task's result is shown: the summary column, and whether it counts as skipped. */
export interface TaskVerdict {
  summary: string;
  skipped?: boolean;
}

export interface FleetOptions<T> {
  /** The command's name, in progress lines and the final message. */
  command: string;
  log: Logger;
  /** Hosts at a time (default: DEFAULT_PARALLEL, never more than there are hosts). */
  parallel?: number;
  /** Print one JSON line per host on stdout instead of the summary table. */
  json?: boolean;
  describe(result: T): TaskVerdict;
  /** A host's detail block, printed above the summary table (not with --json). */
  formatDetails?(host: string, result: T): string;
  /** Default: a SignalGuard on SIGINT/SIGTERM/SIGHUP for the duration of the run. */
  signal?: AbortSignal;
  /** Default: process.stdout (table or JSON lines). */
  stdout?: (text: string) => void;
  /** Default: process.stderr; the live display is used only when it is a TTY. */
  stderr?: NodeJS.WritableStream & { isTTY?: boolean };
}

export interface FleetReport<T> {
  records: Array<HostRecord<T>>;
  seconds: number;
  interrupted: boolean;
  /** 0: every host ok or skipped; 1: some host failed; 130: interrupted (like a shell). */
  exitCode: number;
}

/**
 * Most fleet work is waiting on the remote (a KDF, a re-encryption, a reboot), so hosts run
 * side by side; 8 connections keep the display readable and stay well under sshd's default
 * MaxStartups (10) when the hosts sit behind one jump host or NAT address.
 */
export const DEFAULT_PARALLEL = 8;

const LISTENERS_PER_HOST = 4;

export type FleetTask<T> = (target: FleetTarget, progress: HostProgress) => Promise<T>;

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** What the live display shows: hosts by result so far, running hosts by phase, the latest failure. */
export interface LiveCounts {
  command: string;
  total: number;
  parallel: number;
  seconds: number;
  /** Finished hosts by result. */
  results: ReadonlyMap<HostResult, number>;
  /** Running hosts by their current phase. */
  phases: ReadonlyMap<string, number>;
  /** The last host that failed, with why ("node7: no SSH server answers on ..."). */
  lastFailure?: string;
}

/** Phases named on the running line; the rest are counted together (enroll's phases are free text). */
const SHOWN_PHASES = 4;

/**
 * The block a terminal shows while a fleet command runs: a count per state, a few lines
 * whatever the number of hosts, each cut to the terminal's width.
 */
export function renderLiveCounts(counts: LiveCounts, width: number): string[] {
  const running = [...counts.phases.values()].reduce((sum, n) => sum + n, 0);
  const done = [...counts.results.values()].reduce((sum, n) => sum + n, 0);
  const phases = [...counts.phases].sort(([a, m], [b, n]) => n - m || a.localeCompare(b));
  const others = phases.slice(SHOWN_PHASES).reduce((sum, [, n]) => sum + n, 0);
  const lines = [
    `${counts.command}: ${done}/${counts.total} hosts done in ${Math.round(counts.seconds)} s, ${counts.parallel} at a time`,
    `  ${(['ok', 'skipped', 'failed', 'interrupted'] as const).map((result) => `${result} ${counts.results.get(result) ?? 0}`).join('   ')}   not started ${counts.total - done - running}`,
    `  running ${running}${phases.length > 0 ? ': ' : ''}${[...phases.slice(0, SHOWN_PHASES).map(([phase, n]) => `${phase} ${n}`), ...(others > 0 ? [`other phases ${others}`] : [])].join(', ')}`,
    ...(counts.lastFailure ? [`  last failed: ${counts.lastFailure}`] : []),
  ];
  return lines.map((line) => (line.length > width - 1 ? `${line.slice(0, Math.max(0, width - 2))}…` : line));
}

/** How often a burst of phase changes is drawn at most, and the clock's tick. */
const REDRAW_MS = 100;
const TICK_MS = 1000;

/** The count per state on a terminal, redrawn in place; warnings scroll above it as lines of their own. */
class LiveDisplay {
  private drawn = 0;
  private readonly started = Date.now();
  private readonly phases = new Map<string, string>();
  private readonly results = new Map<HostResult, number>();
  private lastFailure?: string;
  private pending?: NodeJS.Timeout;
  private readonly ticker: NodeJS.Timeout;

  constructor(
    private readonly stream: NodeJS.WritableStream,
    private readonly redact: (text: string) => string,
    private readonly shape: { command: string; total: number; parallel: number },
  ) {
    this.ticker = setInterval(() => this.redraw(), TICK_MS);
    this.ticker.unref();
  }

  phase(host: string, phase: string): void {
    this.phases.set(host, phase);
    this.schedule();
  }

  finished(record: HostRecord<unknown>): void {
    this.phases.delete(record.host);
    this.results.set(record.result, (this.results.get(record.result) ?? 0) + 1);
    if (record.result === 'failed') this.lastFailure = `${record.host}: ${record.error ?? ''}`;
    this.schedule();
  }

  /** A line that stays (a warning), above the block. */
  line(text: string): void {
    this.redraw([text]);
  }

  close(): void {
    clearInterval(this.ticker);
    clearTimeout(this.pending);
    this.redraw([], false);
  }

  private schedule(): void {
    this.pending ??= setTimeout(() => {
      this.pending = undefined;
      this.redraw();
    }, REDRAW_MS);
  }

  private redraw(permanent: string[] = [], live = true): void {
    const width = (this.stream as { columns?: number }).columns ?? 120;
    const phases = new Map<string, number>();
    for (const phase of this.phases.values()) phases.set(phase, (phases.get(phase) ?? 0) + 1);
    const counts: LiveCounts = { ...this.shape, seconds: (Date.now() - this.started) / 1000, results: this.results, phases, lastFailure: this.lastFailure };
    const block = live ? renderLiveCounts(counts, width) : [];
    // Up to the first line drawn last time, clear to the end of the screen, draw again.
    const up = this.drawn > 0 ? `\x1b[${this.drawn}F` : '';
    const text = [...permanent, ...block].map((line) => this.redact(line));
    this.stream.write(`${up}\x1b[J${text.map((line) => `${line}\n`).join('')}`);
    this.drawn = block.length;
  }
}

function recordLine<T>(record: HostRecord<T>): string {
  const took = record.result === 'not-started' ? '' : ` in ${formatSeconds(record.seconds)}`;
  const why = record.error ? `: ${record.error}` : record.summary ? `: ${record.summary}` : '';
  return `${record.host}: ${record.result}${took}${why}`;
}

/** The table printed at the end: one row per host, in the targets' order. */
export function formatFleetTable<T>(records: ReadonlyArray<HostRecord<T>>): string {
  const rows = records.map((r) => [r.host, `${r.address}:${r.port}`, r.result, r.result === 'not-started' ? '-' : formatSeconds(r.seconds), r.error ?? r.summary]);
  return formatColumns(['host', 'address', 'result', 'time', 'details'], rows);
}

export function countResults<T>(records: ReadonlyArray<HostRecord<T>>): string {
  const counts = new Map<HostResult, number>();
  for (const record of records) counts.set(record.result, (counts.get(record.result) ?? 0) + 1);
  return [...counts].map(([result, count]) => `${count} ${result}`).join(', ');
}

/** Runs `task` once per target, at most `parallel` at a time; never throws for a host's failure. */
export async function runFleet<T>(targets: readonly FleetTarget[], options: FleetOptions<T>, task: FleetTask<T>): Promise<FleetReport<T>> {
  const { log, command } = options;
  const parallel = Math.max(1, Math.min(options.parallel ?? DEFAULT_PARALLEL, targets.length));
  const guard = options.signal ? undefined : new SignalGuard(log);
  const signal = options.signal ?? guard!.controller.signal;
  // Every running host listens on the signal in a few places at once (banner, connection, command, pause).
  setMaxListeners(Math.max(10, parallel * LISTENERS_PER_HOST), signal);
  const stdout = options.stdout ?? ((text: string) => void process.stdout.write(text));
  const stderr = options.stderr ?? process.stderr;
  const started = performance.now();
  const records: Array<HostRecord<T> | undefined> = targets.map(() => undefined);
  // On a terminal a count per state; elsewhere (CI logs, --json, --log-format json) one line per host.
  const live =
    stderr.isTTY && !options.json && log.format === 'human' && log.level === 'info'
      ? new LiveDisplay(stderr, (text) => log.redactor.redact(text), { command, total: targets.length, parallel })
      : undefined;

  const finish = (index: number, record: HostRecord<T>) => {
    records[index] = record;
    if (live) live.finished(record);
    else if (record.result === 'failed' || record.result === 'interrupted') log.error(recordLine(record));
    else log.info(recordLine(record));
    if (options.json) stdout(`${JSON.stringify(log.redactor.redactValue(record))}\n`);
  };

  const runOne = async (index: number): Promise<void> => {
    const target = targets[index]!;
    const base = { host: target.name, address: target.address, port: target.port };
    const hostStarted = performance.now();
    const seconds = () => Math.round((performance.now() - hostStarted) / 100) / 10;
    const progress: HostProgress = {
      signal,
      phase: (text) => (live ? live.phase(target.name, text) : log.info(`${target.name}: ${text}`)),
      warn: (message) => (live ? live.line(`warning: ${target.name}: ${message}`) : log.warn(`${target.name}: ${message}`)),
    };
    try {
      progress.phase('starting');
      const details = await task(target, progress);
      const verdict = options.describe(details);
      finish(index, { ...base, result: verdict.skipped ? 'skipped' : 'ok', seconds: seconds(), summary: verdict.summary, details });
    } catch (error) {
      const interrupted = signal.aborted;
      const message = interrupted ? errorMessage(signal.reason ?? error) : errorMessage(error);
      finish(index, { ...base, result: interrupted ? 'interrupted' : 'failed', seconds: seconds(), summary: '', error: message });
    }
  };

  let next = 0;
  const worker = async () => {
    while (next < targets.length && !signal.aborted) await runOne(next++);
  };
  try {
    await Promise.all(Array.from({ length: parallel }, worker));
  } finally {
    live?.close();
    guard?.dispose();
  }
  for (const [index, target] of targets.entries()) {
    if (records[index]) continue;
    const record: HostRecord<T> = { host: target.name, address: target.address, port: target.port, result: 'not-started', seconds: 0, summary: 'interrupted before this host started' };
    records[index] = record;
    if (options.json) stdout(`${JSON.stringify(record)}\n`);
  }
  const all = records as Array<HostRecord<T>>;
  if (!options.json) {
    for (const record of all) if (options.formatDetails && record.details !== undefined) stdout(`${options.formatDetails(record.host, record.details)}\n\n`);
    stdout(`${formatFleetTable(all)}\n`);
  }
  const seconds = (performance.now() - started) / 1000;
  const interrupted = signal.aborted;
  const failed = all.some((r) => r.result === 'failed' || r.result === 'interrupted');
  const exitCode = interrupted ? INTERRUPTED_EXIT_CODE : failed ? 1 : 0;
  log.result(`${command}: ${countResults(all)} of ${targets.length} host(s) in ${formatSeconds(seconds)}`, { hosts: targets.length, results: countResults(all) }, seconds);
  return { records: all, seconds, interrupted, exitCode };
}
