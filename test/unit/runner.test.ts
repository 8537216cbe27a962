import { afterEach, describe, expect, it } from 'vitest';
import { reportFailure } from '../../src/errors.js';
import type { LogEvent, LogFormat } from '../../src/log.js';
import { CleanupStack } from '../../src/base/cleanup.js';
import type { BuildContext } from '../../src/pipeline/context.js';
import { checkStageGraph, runStages, SignalGuard } from '../../src/pipeline/runner.js';
import type { AnyStage, ProductName, StageContext } from '../../src/pipeline/stage.js';
import { STAGES } from '../../src/stages/index.js';
import { HostRunner } from '../../src/host/run.js';
import { captureLogger } from './helpers.js';

interface FakeStage {
  needs?: ProductName[];
  produces?: ProductName[];
  failure?: Error;
  /** Runs after the log line, before the failure. */
  work?: (ctx: StageContext<any, any>) => Promise<void>;
}

/** A stage that logs one line, does its work, sets its products and, if `failure` is given, then throws it. */
function fakeStage(name: string, { needs = [], produces = [], failure, work }: FakeStage = {}): AnyStage {
  return {
    name,
    summary: `the ${name} stage`,
    needs,
    produces,
    hostTools: () => [],
    run: async (ctx) => {
      ctx.log.info(`      ${name} working`);
      await work?.(ctx);
      if (failure) throw failure;
      for (const product of produces) (ctx.state as Record<string, unknown>)[product] = `${product} from ${name}`;
    },
  };
}

/** Stages that run one after another: each needs what the one before produced. */
function chain(...specs: Array<[name: string, failure?: Error]>): AnyStage[] {
  const products: ProductName[] = ['kernelVersion', 'packages', 'archiveReleases', 'layout'];
  return specs.map(([name, failure], index) => fakeStage(name, { needs: index === 0 ? [] : [products[index - 1]!], produces: [products[index]!], failure }));
}

const guards: SignalGuard[] = [];
afterEach(() => guards.splice(0).forEach((guard) => guard.dispose()));

/**
 * Runs fake stages on a context holding only what the runner touches, reports a failure the
 * way the CLI does, and returns the log lines and the exit code.
 */
async function run(stages: AnyStage[], format: LogFormat): Promise<{ lines: string[]; exitCode: number; ctx: BuildContext }> {
  const { log, lines } = captureLogger('info', undefined, format);
  const guard = new SignalGuard(log);
  guards.push(guard);
  const ctx = { log, host: new HostRunner(log, guard.controller.signal), signal: guard.controller.signal, cleanup: new CleanupStack(log), state: { outputs: [], publish: [], stageSeconds: {}, stageTimes: {} } } as unknown as BuildContext;
  let exitCode = 0;
  await runStages(ctx, stages, guard).catch((error: unknown) => (exitCode = reportFailure(log, error)));
  return { lines, exitCode, ctx };
}

function parse(lines: string[]): LogEvent[] {
  return lines.map((line) => JSON.parse(line) as LogEvent);
}

describe('runStages with --log-format json', () => {
  it('writes one parseable event per line: start, message and end with seconds for each stage', async () => {
    const { lines, exitCode, ctx } = await run(chain(['first'], ['second']), 'json');
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
    const { lines, exitCode } = await run(chain(['first'], ['broken', new Error('disk full')], ['never']), 'json');
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
    const { lines } = await run(chain(['first'], ['broken', new Error('disk full')]), 'human');
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
    const twoCommands = fakeStage('two', {
      work: async (ctx) => {
        for (const label of ['first', 'second']) {
          await ctx.host.run('true', [label]);
          ran.push(label);
        }
      },
    });
    process.env.KEYLESSGO_FAIL_AT = 'two:middle';
    const { exitCode, lines } = await run([twoCommands], 'human');
    expect(exitCode).toBe(1);
    expect(ran).toEqual(['first']);
    expect(lines.join('\n')).toMatch(/stage two failed.*injected failure/s);
  });

  it('counts a step of in-process work as a command', async () => {
    const ran: string[] = [];
    const commandThenStep = fakeStage('two', {
      work: async (ctx) => {
        await ctx.host.run('true', []);
        ran.push('command');
        ctx.host.step('in-process work');
        ran.push('step');
      },
    });
    process.env.KEYLESSGO_FAIL_AT = 'two:middle';
    const { exitCode, lines } = await run([commandThenStep], 'human');
    expect(exitCode).toBe(1);
    expect(ran).toEqual(['command']);
    expect(lines.join('\n')).toMatch(/stage two failed.*injected failure/s);
  });
});

describe('runStages as a graph', () => {
  it('starts a stage once what it needs exists, and independent stages side by side', async () => {
    // Each of the two branches waits for the other to have started: run in series, this would never finish.
    let startB!: () => void;
    let startC!: () => void;
    const bStarted = new Promise<void>((resolve) => (startB = resolve));
    const cStarted = new Promise<void>((resolve) => (startC = resolve));
    const stages = [
      fakeStage('a', { produces: ['kernelVersion'] }),
      fakeStage('b', { needs: ['kernelVersion'], produces: ['packages'], work: async () => (startB(), cStarted) }),
      fakeStage('c', { needs: ['kernelVersion'], produces: ['layout'], work: async () => (startC(), bStarted) }),
      fakeStage('d', { needs: ['packages', 'layout'] }),
    ];
    const { exitCode, lines, ctx } = await run(stages, 'json');
    expect(exitCode).toBe(0);
    const events = parse(lines);
    // Messages carry the stage that logged them, also while two run at once.
    for (const event of events.filter((e) => e.event === 'message')) expect(event.message).toBe(`${event.stage} working`);
    const order = events.filter((e) => e.event.startsWith('stage-')).map((e) => `${e.event === 'stage-start' ? '+' : '-'}${e.stage}`);
    expect(order.slice(0, 4)).toEqual(['+a', '-a', '+b', '+c']);
    expect(order.at(-2)).toBe('+d');
    expect(Object.keys(ctx.state.stageSeconds)).toEqual(['a', 'b', 'c', 'd']);
    const times = ctx.state.stageTimes;
    expect(times.d!.start).toBeGreaterThanOrEqual(Math.max(times.b!.end, times.c!.end));
  });

  it('stops the other branch when one fails, and cleans up what both registered', async () => {
    let cRunning!: () => void;
    const cStarted = new Promise<void>((resolve) => (cRunning = resolve));
    const undone: string[] = [];
    const stages = [
      fakeStage('a', { produces: ['kernelVersion'] }),
      fakeStage('b', {
        needs: ['kernelVersion'],
        failure: new Error('disk full'),
        work: async (ctx) => {
          ctx.cleanup.add('b resource', async () => void undone.push('b'));
          await cStarted;
        },
      }),
      fakeStage('c', {
        needs: ['kernelVersion'],
        produces: ['layout'],
        work: async (ctx) => {
          ctx.cleanup.add('c resource', async () => void undone.push('c'));
          cRunning();
          await ctx.host.run('sleep', ['30']);
        },
      }),
      fakeStage('after-c', { needs: ['layout'] }),
    ];
    const started = performance.now();
    const { exitCode, lines } = await run(stages, 'json');
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(exitCode).toBe(1);
    const events = parse(lines);
    expect(events.filter((e) => e.event === 'stage-end').map((e) => [e.stage, e.outcome])).toEqual([
      ['a', 'done'],
      ['b', 'failed'],
      ['c', 'failed'],
    ]);
    expect(events.at(-1)).toMatchObject({ event: 'error', message: 'stage b failed: disk full' });
    expect(undone.sort()).toEqual(['b', 'c']);
  });

  it('fails a stage that did not set what it declared it produces', async () => {
    const liar: AnyStage = { ...fakeStage('liar'), produces: ['layout'] };
    const { exitCode, lines } = await run([liar], 'human');
    expect(exitCode).toBe(1);
    expect(lines.at(-1)).toBe('error: stage liar failed: stage liar did not produce layout');
  });

  it('refuses a graph with an unknown need, two producers of one product, or a cycle', () => {
    expect(() => checkStageGraph([fakeStage('x', { needs: ['layout'] })])).toThrow('x needs layout, which no stage produces');
    expect(() => checkStageGraph([fakeStage('x', { produces: ['layout'] }), fakeStage('y', { produces: ['layout'] })])).toThrow('layout is produced by both x and y');
    expect(() =>
      checkStageGraph([fakeStage('x', { needs: ['packages'], produces: ['layout'] }), fakeStage('y', { needs: ['layout'], produces: ['packages'] })]),
    ).toThrow('x, y wait on each other');
  });

  it("lets the build's initramfs run beside partition, encrypt and nbde, and bootloader beside encrypt and nbde", () => {
    checkStageGraph(STAGES);
    const byName = new Map(STAGES.map((s) => [s.name, s]));
    const producer = new Map(STAGES.flatMap((s) => s.produces.map((p) => [p, s.name] as const)));
    const upstream = (name: string): Set<string> => {
      const found = new Set<string>();
      for (const need of byName.get(name)!.needs) {
        const from = producer.get(need)!;
        found.add(from);
        upstream(from).forEach((s) => found.add(s));
      }
      return found;
    };
    const independent = (x: string, y: string) => !upstream(x).has(y) && !upstream(y).has(x);
    for (const other of ['partition', 'encrypt', 'nbde']) expect(independent('initramfs', other), other).toBe(true);
    for (const other of ['encrypt', 'nbde']) expect(independent('bootloader', other), other).toBe(true);
    expect([...upstream('export')].sort()).toEqual(STAGES.map((s) => s.name).filter((n) => n !== 'export').sort());
  });
});

describe('a command that acquires something (mount, losetup)', () => {
  it('runs to the end even when the build was stopped, so that its undo gets registered; others are cancelled', async () => {
    const { log } = captureLogger('info');
    const stopped = AbortSignal.abort(new Error('stopped'));
    const host = new HostRunner(log, stopped);
    expect(await host.run('echo', ['attached'], { acquires: true })).toBe('attached');
    await expect(host.run('echo', ['other'])).rejects.toThrow();
  });
});

describe('the host tool clock', () => {
  it('sums seconds per tool, and counts the wall-clock seconds with a command running once', async () => {
    const { log } = captureLogger('quiet');
    const host = new HostRunner(log);
    const stage = host.forStage();
    await Promise.all([host.run('sleep', ['0.4']), stage.run('sleep', ['0.4'])]);
    await host.run('true', []);
    expect(host.clock).toBe(stage.clock);
    expect(host.clock.seconds.sleep).toBeGreaterThanOrEqual(0.8);
    expect(host.clock.busySeconds).toBeGreaterThanOrEqual(0.4);
    expect(host.clock.busySeconds).toBeLessThan(host.clock.seconds.sleep! - 0.2);
    expect(Object.keys(host.clock.seconds).sort()).toEqual(['sleep', 'true']);
  });
});
