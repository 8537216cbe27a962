/**
 * Line-oriented logger. Every line passes through the redactor so that a secret which
 * slipped into a tool's output never reaches the terminal or a CI log.
 */
export type LogLevel = 'quiet' | 'info' | 'verbose';

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
}

export class Logger {
  constructor(
    readonly level: LogLevel = 'info',
    readonly redactor = new Redactor(),
    private readonly write: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
  ) {}

  info(message: string): void {
    if (this.level !== 'quiet') this.emit(message);
  }

  verbose(message: string): void {
    if (this.level === 'verbose') this.emit(message);
  }

  warn(message: string): void {
    this.emit(`warning: ${message}`);
  }

  error(message: string): void {
    this.emit(`error: ${message}`);
  }

  private emit(message: string): void {
    for (const line of this.redactor.redact(message).split('\n')) this.write(line);
  }
}

/** Left-aligned columns under a header row, for listings on stdout. */
export function formatColumns(headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  return [headers, ...rows].map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n');
}
