/**
 * The many-hosts engine behind `unlock`, `status`, `enroll` and `rebind`: one async task per
 * host, at most `parallel` at a time, a live per-host progress display, a summary table and
 * one JSON record per host. A failing host never stops the others; Ctrl-C stops starting
 * hosts and aborts the running ones through their AbortSignal, and every host still gets a
 * record saying what happened to it.
 */
import { InterruptedError } from '../errors.js';
import { formatColumns, formatSeconds, type Logger } from '../log.js';
import { SignalGuard } from '../pipeline/runner.js';
import type { FleetTarget } from './targets.js';

const INTERRUPTED_EXIT_CODE = new InterruptedError('SIGINT').exitCode;

/** What the engine hands each host's task. */
export interface HostProgress {
  /** Aborted on Ctrl-C (and when the command gives up): end the host's work cleanly. */
  readonly signal: AbortSignal;
  /** The host entered a new phase ("connecting", "unlocking", ...): redrawn on a terminal, logged elsewhere. */
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

export type FleetTask<T> = (target: FleetTarget, progress: HostProgress) => Promise<T>;

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Per-host lines on a terminal: finished hosts scroll up as permanent lines, running ones are redrawn below. */
class LiveDisplay {
  private drawn = 0;
  private readonly running = new Map<string, { phase: string; started: number }>();
  private readonly ticker: NodeJS.Timeout;

  constructor(
    private readonly stream: NodeJS.WritableStream,
    private readonly redact: (text: string) => string,
    private readonly status: () => string,
  ) {
    this.ticker = setInterval(() => this.redraw(), 1000);
    this.ticker.unref();
  }

  phase(host: string, phase: string): void {
    const entry = this.running.get(host);
    this.running.set(host, { phase, started: entry?.started ?? Date.now() });
    this.redraw();
  }

  /** A permanent line (a host finished, a warning); `host` leaves the running block. */
  line(text: string, host?: string): void {
    if (host !== undefined) this.running.delete(host);
    this.redraw([text]);
  }

  close(): void {
    clearInterval(this.ticker);
    this.redraw([], false);
  }

  private redraw(permanent: string[] = [], live = true): void {
    const width = (this.stream as { columns?: number }).columns ?? 120;
    const fit = (text: string) => (text.length > width - 1 ? `${text.slice(0, width - 2)}…` : text);
    const block = live
      ? [...[...this.running].map(([host, { phase, started }]) => `  ${host}  ${phase}  ${Math.round((Date.now() - started) / 1000)} s`), this.status()]
      : [];
    // Up to the first line drawn last time, clear to the end of the screen, draw again.
    const up = this.drawn > 0 ? `\x1b[${this.drawn}F` : '';
    const text = [...permanent.map((line) => this.redact(line)), ...block.map((line) => fit(this.redact(line)))];
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
  const stdout = options.stdout ?? ((text: string) => void process.stdout.write(text));
  const stderr = options.stderr ?? process.stderr;
  const started = performance.now();
  const records: Array<HostRecord<T> | undefined> = targets.map(() => undefined);
  let finished = 0;
  const live =
    stderr.isTTY && log.format === 'human' && log.level === 'info'
      ? new LiveDisplay(stderr, (text) => log.redactor.redact(text), () => `${command}: ${finished}/${targets.length} hosts done, ${parallel} at a time`)
      : undefined;

  const finish = (index: number, record: HostRecord<T>) => {
    records[index] = record;
    finished++;
    if (live) live.line(recordLine(record), record.host);
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
