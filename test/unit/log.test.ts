import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Logger, Redactor, streamOutput, type LogEvent, type LogFormat, type LogLevel, type LogOutput } from '../../src/log.js';
import { captureLogger } from './helpers.js';

const SECRET = 'hunter2-but-longer';

describe('Redactor', () => {
  it('replaces every occurrence of every registered secret', () => {
    const redactor = new Redactor();
    redactor.add(SECRET);
    redactor.add('second-secret');
    expect(redactor.redact(`${SECRET}/${SECRET} and second-secret`)).toBe('[redacted]/[redacted] and [redacted]');
  });

  it('registers the trimmed value (a passphrase file line with whitespace)', () => {
    const redactor = new Redactor();
    redactor.add(`  ${SECRET}\n`);
    expect(redactor.redact(`key=${SECRET};`)).toBe('key=[redacted];');
  });

  it.each(['', 'a', 'abc', '  abc  '])('does not register %j (shorter than 4 characters)', (value) => {
    const redactor = new Redactor();
    redactor.add(value);
    expect(redactor.redact('a abc abcd')).toBe('a abc abcd');
  });

  it('registers a value of exactly 4 characters', () => {
    const redactor = new Redactor();
    redactor.add('abcd');
    expect(redactor.redact('xabcdx')).toBe('x[redacted]x');
  });

  it('hides all of a secret that contains a shorter secret registered first', () => {
    const redactor = new Redactor();
    redactor.add('abcd');
    redactor.add('abcdefgh');
    expect(redactor.redact('abcdefgh')).not.toContain('efgh');
  });
});

describe('Logger', () => {
  /** Emits one message at every level and returns the lines written. */
  function emitAll(level: LogLevel, secret?: string): string[] {
    const { log, lines } = captureLogger(level);
    if (secret) log.redactor.add(secret);
    const tail = secret ? ` ${secret}` : '';
    log.verbose(`verbose message${tail}`);
    log.info(`info message${tail}`);
    log.warn(`warn message${tail}`);
    log.error(`error message${tail}`);
    return lines;
  }

  it.each<[LogLevel, string[]]>([
    ['quiet', ['warning: warn message', 'error: error message']],
    ['info', ['info message', 'warning: warn message', 'error: error message']],
    ['verbose', ['verbose message', 'info message', 'warning: warn message', 'error: error message']],
  ])('at level %s writes %j', (level, expected) => {
    expect(emitAll(level)).toEqual(expected);
  });

  it.each<LogLevel>(['quiet', 'info', 'verbose'])('redacts secrets from every line at level %s', (level) => {
    const lines = emitAll(level, SECRET);
    expect(lines.length).toBeGreaterThan(0);
    for (const line of lines) expect(line).toMatch(/ \[redacted\]$/);
    expect(lines.join('\n')).not.toContain(SECRET);
  });

  it('writes a multi-line message as separate, redacted lines', () => {
    const { log, lines } = captureLogger('info');
    log.redactor.add(SECRET);
    log.error(`cryptsetup failed:\nbad passphrase ${SECRET}\ntry again`);
    expect(lines).toEqual(['error: cryptsetup failed:', 'bad passphrase [redacted]', 'try again']);
  });
});

describe('Logger, json format', () => {
  /** A secret with every character JSON escapes in a string, so an escaped copy would not match it. */
  const NASTY = 'pa"ss\\wo\trd\u0001"}';

  function jsonLines(level: LogLevel = 'info'): { log: Logger; lines: string[]; events: () => LogEvent[] } {
    const { log, lines } = captureLogger(level, undefined, 'json');
    return { log, lines, events: () => lines.map((line) => JSON.parse(line) as LogEvent) };
  }

  it('redacts secrets with quotes and backslashes before serialising, in every field', () => {
    const { log, lines, events } = jsonLines();
    log.redactor.add(NASTY);
    log.stageStart('encrypt', `summary ${NASTY}`, 1, 1);
    log.info(`message ${NASTY}`);
    log.warn(`warning ${NASTY}`);
    log.stageEnd(1.25, 'done');
    log.result(`result ${NASTY}`, { outputs: [{ path: `/out/${NASTY}` }], nested: { deeper: [NASTY] } });
    log.error(`error ${NASTY}`, NASTY);
    const escaped = JSON.stringify(NASTY).slice(1, -1);
    for (const line of lines) {
      expect(line).not.toContain(NASTY);
      expect(line).not.toContain(escaped);
      expect(line).not.toContain('pa\\"ss');
    }
    const parsed = events();
    expect(parsed.map((e) => e.message)).toEqual([
      'summary [redacted]',
      'message [redacted]',
      'warning [redacted]',
      'done in 1.3 s',
      'result [redacted]',
      'error [redacted]',
    ]);
    expect(parsed[4]!.result).toEqual({ outputs: [{ path: '/out/[redacted]' }], nested: { deeper: ['[redacted]'] } });
    expect(parsed[5]!.stage).toBe('[redacted]');
  });

  it('keeps a multi-line message in one event on one line', () => {
    const { lines, log, events } = jsonLines();
    log.error('cryptsetup failed:\nbad passphrase');
    expect(lines).toHaveLength(1);
    expect(events()[0]!.message).toBe('cryptsetup failed:\nbad passphrase');
  });

  it.each<[LogLevel, string[]]>([
    ['quiet', ['warn', 'error']],
    ['info', ['info', 'warn', 'error']],
    ['verbose', ['verbose', 'info', 'warn', 'error']],
  ])('at level %s writes events of levels %j', (level, expected) => {
    const { log, events } = jsonLines(level);
    log.verbose('v');
    log.info('i');
    log.warn('w');
    log.error('e');
    expect(events().map((e) => e.level)).toEqual(expected);
    expect(events().map((e) => e.event)).toEqual(expected.map((l) => ({ verbose: 'message', info: 'message', warn: 'warning', error: 'error' })[l]));
  });
});

describe('Logger, elapsed-time ticker', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  /** A fake terminal recording its line writes and status-line calls in order. */
  function terminal(): { output: LogOutput; calls: string[] } {
    const calls: string[] = [];
    return {
      calls,
      output: { line: (text) => calls.push(`line ${text}`), status: { show: (text) => calls.push(`show ${text}`), clear: () => calls.push('clear') } },
    };
  }

  it('shows elapsed seconds on a terminal and clears them before the next line', () => {
    const { output, calls } = terminal();
    const log = new Logger('info', { output });
    log.stageStart('bootstrap', 'debootstrap', 1, 2);
    vi.advanceTimersByTime(2000);
    log.info('      installed');
    log.stageEnd(2, 'done');
    vi.advanceTimersByTime(5000);
    expect(calls).toEqual(['line [1/2] bootstrap: debootstrap', 'show   bootstrap 1 s', 'show   bootstrap 2 s', 'clear', 'line       installed', 'line       done in 2.0 s']);
  });

  it.each<[LogLevel, LogFormat]>([
    ['verbose', 'human'],
    ['info', 'json'],
  ])('has no ticker at level %s in format %s', (level, format) => {
    const { output, calls } = terminal();
    const log = new Logger(level, { output, format });
    log.stageStart('bootstrap', 'debootstrap', 1, 1);
    vi.advanceTimersByTime(3000);
    log.stageEnd(3, 'done');
    expect(calls.filter((call) => !call.startsWith('line '))).toEqual([]);
  });

  it('writes no carriage return or escape sequence to a stream that is not a TTY', () => {
    let written = '';
    const stream = { isTTY: false, write: (text: string) => (written += text) } as unknown as NodeJS.WriteStream;
    expect(streamOutput(stream).status).toBeUndefined();
    const log = new Logger('info', { output: streamOutput(stream) });
    log.stageStart('bootstrap', 'debootstrap', 1, 1);
    vi.advanceTimersByTime(3000);
    log.stageEnd(3, 'done');
    expect(written).toBe('[1/1] bootstrap: debootstrap\n      done in 3.0 s\n');
  });
});
