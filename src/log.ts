/**
 * Line-oriented logger. Every line passes through the redactor so that a secret which
 * slipped into a tool's output never reaches the terminal or a CI log.
 *
 * Two formats: `human` (progress lines, plus an elapsed-time ticker on a terminal) and `json`
 * (one event object per line, for CI systems to parse). Callers say what happened (a stage
 * started, a warning, the result); the logger decides how it looks.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

export type LogLevel = 'quiet' | 'info' | 'verbose';

export const LOG_FORMATS = ['human', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** How important one event is; `quiet` shows only warn and error, `info` adds info. */
export type Severity = 'verbose' | 'info' | 'warn' | 'error';
export type StageOutcome = 'done' | 'failed';

/** One line of the json format. */
export interface LogEvent {
  time: string;
  level: Severity;
  event: 'stage-start' | 'stage-end' | 'message' | 'warning' | 'error' | 'result';
  /** The stage the event belongs to, if one was running (or, for an error, the one that failed). */
  stage?: string;
  /** 1-based position of the stage, with `total`: `[index/total]` in the human format. */
  index?: number;
  total?: number;
  /** Duration of the stage (stage-end) or of the whole command (result). */
  seconds?: number;
  outcome?: StageOutcome;
  message: string;
  /** What the command produced (result events only). */
  result?: unknown;
}

const REDACTED = '[redacted]';

export class Redactor {
  private readonly secrets = new Set<string>();

  /** Registers a secret value; values shorter than 4 characters would redact noise. */
  add(secret: string): void {
    const trimmed = secret.trim();
    if (trimmed.length >= 4) this.secrets.add(trimmed);
  }

  redact(text: string): string {
    let result = text;
    // Longest first: a shorter secret inside a longer one must not leave part of the longer visible.
    for (const secret of [...this.secrets].sort((a, b) => b.length - a.length)) result = result.split(secret).join(REDACTED);
    return result;
  }

  /**
   * Redacts every string inside a JSON-like value. Done before serialising: once JSON.stringify
   * has escaped a secret's quotes or backslashes, the escaped text no longer matches the secret.
   */
  redactValue(value: unknown): unknown {
    if (typeof value === 'string') return this.redact(value);
    if (Array.isArray(value)) return value.map((item) => this.redactValue(item));
    if (value !== null && typeof value === 'object') {
      return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, this.redactValue(item)]));
    }
    return value;
  }
}

/** Where finished lines go. `status` exists only on a terminal: a transient line the next one overwrites. */
export interface LogOutput {
  line(text: string): void;
  status?: { show(text: string): void; clear(): void };
}

/** A stream's output; only a TTY gets the status line, so CI logs never see carriage returns. */
export function streamOutput(stream: NodeJS.WriteStream = process.stderr): LogOutput {
  const output: LogOutput = { line: (text) => stream.write(`${text}\n`) };
  if (stream.isTTY) output.status = { show: (text) => stream.write(`\r\x1b[K${text}`), clear: () => stream.write('\r\x1b[K') };
  return output;
}

export interface LoggerOptions {
  format?: LogFormat;
  redactor?: Redactor;
  /** Default: stderr. */
  output?: LogOutput;
  /** Default: the system clock (tests may fix it). */
  clock?: () => Date;
}

export function formatSeconds(seconds: number): string {
  return `${seconds.toFixed(1)} s`;
}

interface RunningStage {
  name: string;
  index: number;
  total: number;
  ticker?: NodeJS.Timeout;
}

export class Logger {
  readonly format: LogFormat;
  readonly redactor: Redactor;
  private readonly output: LogOutput;
  private readonly clock: () => Date;
  /** Stages running now (side by side when the build's graph allows). */
  private readonly running = new Map<string, RunningStage>();
  /** The stage whose code is running, for attributing messages when several run at once. */
  private readonly current = new AsyncLocalStorage<string>();
  private statusShown = false;

  constructor(
    readonly level: LogLevel = 'info',
    options: LoggerOptions = {},
  ) {
    this.format = options.format ?? 'human';
    this.redactor = options.redactor ?? new Redactor();
    this.output = options.output ?? streamOutput();
    this.clock = options.clock ?? (() => new Date());
  }

  info(message: string): void {
    this.emit({ level: 'info', event: 'message', message }, message);
  }

  verbose(message: string): void {
    this.emit({ level: 'verbose', event: 'message', message }, message);
  }

  warn(message: string): void {
    this.emit({ level: 'warn', event: 'warning', message }, `warning: ${message}`);
  }

  /** `stage` names the stage that failed when the error is reported after it ended. */
  error(message: string, stage?: string): void {
    this.emit({ level: 'error', event: 'error', message, ...(stage === undefined ? {} : { stage }) }, `error: ${message}`);
  }

  /** A stage begins; events logged inside `inStage(name, ...)` until stageEnd belong to it. `index` is 1-based. */
  stageStart(name: string, summary: string, index: number, total: number): void {
    const stage = { name, index, total };
    this.running.set(name, stage);
    this.emit({ level: 'info', event: 'stage-start', stage: name, index, total, message: summary }, `[${index}/${total}] ${name}: ${summary}`);
    this.startTicker(stage);
  }

  /** Runs `fn` with its messages attributed to stage `name` (other stages may be logging meanwhile). */
  inStage<T>(name: string, fn: () => Promise<T>): Promise<T> {
    return this.current.run(name, fn);
  }

  /** Ends stage `name` (by default: the one whose code is running, or the only one running). */
  stageEnd(seconds: number, outcome: StageOutcome, name = this.currentStage()?.name): void {
    const stage = name === undefined ? undefined : this.running.get(name);
    const message = `${outcome === 'done' ? 'done in' : 'failed after'} ${formatSeconds(seconds)}`;
    const position = stage ? { stage: stage.name, index: stage.index, total: stage.total } : {};
    // Emitted while the stage still counts as running, so that the human format names it if others run too.
    this.emit({ level: 'info', event: 'stage-end', ...position, seconds: Math.round(seconds * 10) / 10, outcome, message }, `      ${message}`);
    if (name !== undefined) this.running.delete(name);
    if (stage?.ticker) clearInterval(stage.ticker);
  }

  /** The command's outcome: `message` for people, `result` (json format only) for machines. */
  result(message: string, result: unknown, seconds?: number): void {
    this.emit({ level: 'info', event: 'result', ...(seconds === undefined ? {} : { seconds: Math.round(seconds * 10) / 10 }), message, result }, message);
  }

  private shows(level: Severity): boolean {
    if (level === 'verbose') return this.level === 'verbose';
    if (level === 'info') return this.level !== 'quiet';
    return true;
  }

  private emit(event: Omit<LogEvent, 'time'>, human: string): void {
    if (!this.shows(event.level)) return;
    if (this.format === 'json') {
      const { level, event: name, ...details } = event;
      // Messages logged inside a stage carry its name; the human format shows that by position.
      const running = this.currentStage();
      const stage = running && details.stage === undefined ? { stage: running.name } : {};
      const full: LogEvent = { time: this.clock().toISOString(), level, event: name, ...stage, ...details, message: details.message.trim() };
      this.output.line(JSON.stringify(this.redactor.redactValue(full)));
      return;
    }
    this.clearStatus();
    // With stages side by side, position no longer tells whose line it is: the stage's name does.
    const running = this.running.size > 1 ? this.currentStage() : undefined;
    const text = running && event.event !== 'stage-start' ? human.replace(/^(\s*)/, `$1${running.name}: `) : human;
    for (const line of this.redactor.redact(text).split('\n')) this.output.line(line);
  }

  /** Elapsed time of the running stage, once a second, on a terminal at the info level only. */
  private startTicker(stage: RunningStage): void {
    const status = this.output.status;
    if (!status || this.format !== 'human' || this.level !== 'info') return;
    const started = Date.now();
    stage.ticker = setInterval(() => {
      status.show(this.redactor.redact(`  ${stage.name} ${Math.round((Date.now() - started) / 1000)} s`));
      this.statusShown = true;
    }, 1000);
    // The runner always ends the stage; unref keeps a forgotten ticker from holding the process.
    stage.ticker.unref();
  }

  private currentStage(): RunningStage | undefined {
    const name = this.current.getStore();
    if (name !== undefined) return this.running.get(name);
    return this.running.size === 1 ? [...this.running.values()][0] : undefined;
  }

  private clearStatus(): void {
    if (!this.statusShown) return;
    this.output.status?.clear();
    this.statusShown = false;
  }
}

/** Left-aligned columns under a header row, for listings on stdout. */
export function formatColumns(headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  return [headers, ...rows].map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n');
}
