/**
 * The single place where keylessgo starts host processes. Arguments are passed as an
 * array (no shell), secrets travel only through files or stdin, and failures carry the
 * command line plus the tail of stderr (redacted).
 */
import { execa } from 'execa';
import type { Logger } from '../log.js';

export interface RunOptions {
  /** Data written to the child's stdin (e.g. a passphrase); never logged. */
  input?: string | Buffer;
  cwd?: string;
  env?: Record<string, string>;
  /** Aborts the child (SIGTERM) when the build is interrupted. */
  signal?: AbortSignal;
  /** Stream the child's output to the log at verbose level instead of buffering only. */
  stream?: boolean;
  /**
   * Let the command finish even when the build is stopped: for commands that acquire what
   * cleanup must undo (attach a loop device, mount), which killed midway would leave it
   * acquired but unregistered. The next command sees the stop.
   */
  acquires?: boolean;
}

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | undefined,
    readonly stderrTail: string,
  ) {
    super(`${command} failed${exitCode === undefined ? '' : ` (exit ${exitCode})`}${stderrTail ? `:\n${stderrTail}` : ''}`);
    this.name = 'CommandError';
  }
}

/** Quotes an argv for display so that a reader can paste it into a shell. */
export function formatCommand(file: string, args: readonly string[]): string {
  return [file, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)).join(' ');
}

/**
 * Time in host commands, the floor `make bench` compares a build against: seconds per tool
 * (summed, so commands that ran side by side count twice), and the wall-clock seconds during
 * which at least one ran (each second once).
 */
export class ToolClock {
  readonly seconds: Record<string, number> = {};
  private running = 0;
  private busySince = 0;
  private busyMs = 0;

  start(): number {
    const now = performance.now();
    if (this.running++ === 0) this.busySince = now;
    return now;
  }

  stop(tool: string, started: number): void {
    const now = performance.now();
    this.seconds[tool] = (this.seconds[tool] ?? 0) + (now - started) / 1000;
    if (--this.running === 0) this.busyMs += now - this.busySince;
  }

  get busySeconds(): number {
    return (this.busyMs + (this.running > 0 ? performance.now() - this.busySince : 0)) / 1000;
  }
}

export class HostRunner {
  constructor(
    private readonly log: Logger,
    private readonly signal?: AbortSignal,
    readonly clock = new ToolClock(),
  ) {}

  /** The same runner without the build's cancel signal: undo actions must run after Ctrl-C. */
  get forCleanup(): HostRunner {
    return this.signal ? new HostRunner(this.log, undefined, this.clock) : this;
  }

  /** A runner of its own for one stage (its own fault-injection hook), with the same signal and clock. */
  forStage(): HostRunner {
    return new HostRunner(this.log, this.signal, this.clock);
  }

  /** Called before each command and step (the build's fault injection); throwing stops it. */
  beforeCommand?: (display: string) => void;

  /** Work done in-process that stands where a host command would: fault injection counts it as one. */
  step(display: string): void {
    this.beforeCommand?.(display);
  }

  async run(file: string, args: readonly string[], options: RunOptions = {}): Promise<string> {
    const display = formatCommand(file, args);
    this.beforeCommand?.(display);
    this.log.verbose(`$ ${display}`);
    // From before the spawn: starting a process is part of what a tool costs.
    const started = this.clock.start();
    const child = execa(file, args, {
      input: options.input,
      cwd: options.cwd,
      env: { LC_ALL: 'C.UTF-8', ...options.env },
      cancelSignal: options.acquires ? undefined : (options.signal ?? this.signal),
      reject: false,
      stripFinalNewline: true,
      all: true,
      maxBuffer: 256 * 1024 * 1024,
      encoding: 'utf8',
    });
    if (options.stream && child.all) {
      child.all.on('data', (chunk: Buffer) => {
        for (const line of chunk.toString().split('\n')) if (line.trim()) this.log.verbose(`  ${line}`);
      });
    }
    // A chroot'ed command is counted under its own name.
    const result = await child.finally(() => this.clock.stop(file === 'chroot' && args[1] ? `chroot ${args[1]}` : file, started));
    if (result.isCanceled) throw new CommandError(display, undefined, 'cancelled');
    if (result.failed) {
      const tail = String(result.stderr || result.all || result.message).split('\n').slice(-15).join('\n');
      throw new CommandError(display, result.exitCode, this.log.redactor.redact(tail));
    }
    return String(result.stdout);
  }
}
