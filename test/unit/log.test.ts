import { describe, expect, it } from 'vitest';
import { Redactor, type LogLevel } from '../../src/log.js';
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
