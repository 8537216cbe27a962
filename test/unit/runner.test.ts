import { afterEach, describe, expect, it } from 'vitest';
import { reportFailure } from '../../src/errors.js';
import type { LogEvent, LogFormat } from '../../src/log.js';
import { CleanupStack } from '../../src/pipeline/cleanup.js';
import type { BuildContext } from '../../src/pipeline/context.js';
import { runStages, SignalGuard } from '../../src/pipeline/runner.js';
import type { Stage } from '../../src/pipeline/stage.js';
import { HostRunner } from '../../src/host/run.js';
import { captureLogger } from './helpers.js';

/** A stage that logs one line and, if `failure` is given, then throws it. */
function fakeStage(name: string, failure?: Error): Stage {
  return {
    name,
    summary: `the ${name} stage`,
    hostTools: () => [],
    run: async (ctx) => {
      ctx.log.info(`      ${name} working`);
      if (failure) throw failure;
    },
  };
}

const guards: SignalGuard[] = [];
afterEach(() => guards.splice(0).forEach((guard) => guard.dispose()));

/**
 * Runs fake stages on a context holding only what the runner touches, reports a failure the
 * way the CLI does, and returns the log lines and the exit code.
 */
async function run(stages: Stage[], format: LogFormat): Promise<{ lines: string[]; exitCode: number; ctx: BuildContext }> {
  const { log, lines } = captureLogger('info', undefined, format);
  const guard = new SignalGuard(log);
  guards.push(guard);
  const ctx = { log, host: new HostRunner(log), signal: guard.controller.signal, cleanup: new CleanupStack(log), state: { outputs: [], publish: [], stageSeconds: {} } } as unknown as BuildContext;
  let exitCode = 0;
  await runStages(ctx, stages, guard).catch((error: unknown) => (exitCode = reportFailure(log, error)));
  return { lines, exitCode, ctx };
}

function parse(lines: string[]): LogEvent[] {
  return lines.map((line) => JSON.parse(line) as LogEvent);
}

describe('runStages with --log-format json', () => {
  it('writes one parseable event per line: start, message and end with seconds for each stage', async () => {
    const { lines, exitCode, ctx } = await run([fakeStage('first'), fakeStage('second')], 'json');
    expect(exitCode).toBe(0);
    const events = parse(lines);
    expect(events.map((e) => [e.event, e.stage, e.index, e.total])).toEqual([
      ['stage-start', 'first', 1, 2],
      ['message', 'first', undefined, undefined],
      ['stage-end', 'first', 1, 2],
      ['stage-start', 'second', 2, 2],
      ['message', 'second', undefined, undefined],
      ['stage-end', 'second', 2, 2],
    ]);
    for (const event of events) {
      expect(new Date(event.time).toISOString()).toBe(event.time);
      expect(event.level).toBe('info');
    }
    const ends = events.filter((e) => e.event === 'stage-end');
    for (const end of ends) {
      expect(end.outcome).toBe('done');
      expect(end.seconds).toBeGreaterThanOrEqual(0);
    }
    expect(events[0]!.message).toBe('the first stage');
    // The human format's indentation is no part of a json message.
    expect(events[1]!.message).toBe('first working');
    expect(Object.keys(ctx.state.stageSeconds)).toEqual(['first', 'second']);
  });

  it('ends a failing stage with its seconds and names it in the error event', async () => {
    const { lines, exitCode } = await run([fakeStage('first'), fakeStage('broken', new Error('disk full')), fakeStage('never')], 'json');
    expect(exitCode).toBe(1);
    const events = parse(lines);
    expect(events.map((e) => [e.event, e.stage])).toEqual([
      ['stage-start', 'first'],
      ['message', 'first'],
      ['stage-end', 'first'],
      ['stage-start', 'broken'],
      ['message', 'broken'],
      ['stage-end', 'broken'],
      ['error', 'broken'],
    ]);
    expect(events[5]).toMatchObject({ outcome: 'failed', index: 2, total: 3 });
    expect(events[5]!.seconds).toBeGreaterThanOrEqual(0);
    expect(events[6]).toMatchObject({ level: 'error', message: 'stage broken failed: disk full' });
  });
});

describe('runStages with the human format', () => {
  it('shows [i/n] progress and the time each stage took, without carriage returns', async () => {
    const { lines } = await run([fakeStage('first'), fakeStage('broken', new Error('disk full'))], 'human');
    expect(lines.map((line) => line.replace(/\d+\.\d s$/, 'N s'))).toEqual([
      '[1/2] first: the first stage',
      '      first working',
      '      done in N s',
      '[2/2] broken: the broken stage',
      '      broken working',
      '      failed after N s',
      'error: stage broken failed: disk full',
    ]);
  });
});

describe('fault injection in the middle of a stage', () => {
  afterEach(() => {
    delete process.env.KEYLESSGO_FAIL_AT;
  });

  it('fails the stage at its second host command, after the first has run', async () => {
    const ran: string[] = [];
    const twoCommands: Stage = {
      name: 'two',
      summary: 'runs two commands',
      hostTools: () => ['true'],
      run: async (ctx) => {
        for (const label of ['first', 'second']) {
          await ctx.host.run('true', [label]);
          ran.push(label);
        }
      },
    };
    process.env.KEYLESSGO_FAIL_AT = 'two:middle';
    const { exitCode, lines } = await run([twoCommands], 'human');
    expect(exitCode).toBe(1);
    expect(ran).toEqual(['first']);
    expect(lines.join('\n')).toMatch(/stage two failed.*injected failure/s);
  });
});
