/**
 * Runs the stage graph with progress and timing, and owns cleanup: whatever happens (an
 * error, SIGINT, SIGTERM), every registered undo runs before the process exits. A second
 * signal during cleanup is ignored rather than leaving a half-cleaned host.
 */
import { rename } from 'node:fs/promises';
import { InputError, InterruptedError, StageError } from '../errors.js';
import type { Logger } from '../log.js';
import type { CleanupStack } from '../base/cleanup.js';
import type { BuildContext } from './context.js';
import type { AnyStage, ProductName } from './stage.js';

export type FaultPoint = 'start' | 'middle' | 'end';

/**
 * Test hook: `KEYLESSGO_FAIL_AT=<stage>[:start|middle|end]` makes that stage fail on purpose:
 * before it runs, at its second host command (resources of the first are held), or after it.
 */
export function injectedFailure(stage: string, point: FaultPoint, env = process.env): boolean {
  const spec = env.KEYLESSGO_FAIL_AT;
  if (!spec) return false;
  const [name, at = 'start'] = spec.split(':');
  return name === stage && at === point;
}

export class SignalGuard {
  readonly controller = new AbortController();
  private cleaningUp = false;
  private readonly onSignal = (signal: NodeJS.Signals) => {
    if (this.cleaningUp || this.controller.signal.aborted) {
      this.log.warn(`${signal} received again: still cleaning up, please wait`);
      return;
    }
    this.log.warn(`${signal} received: stopping and cleaning up`);
    this.controller.abort(new InterruptedError(signal));
  };

  constructor(private readonly log: Logger) {
    process.on('SIGINT', this.onSignal);
    process.on('SIGTERM', this.onSignal);
    process.on('SIGHUP', this.onSignal);
  }

  /** Stops the build for `reason` (a stage failed): the other running stages are cancelled. */
  stop(reason: unknown): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
  }

  enterCleanup(): void {
    this.cleaningUp = true;
  }

  dispose(): void {
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
    process.off('SIGHUP', this.onSignal);
  }
}

/**
 * Refuses a graph the runner could not finish: a need no stage produces, a product made by
 * two stages (which one would win?), or stages waiting on each other.
 */
export function checkStageGraph(stages: readonly AnyStage[]): void {
  const producer = new Map<ProductName, string>();
  for (const stage of stages) {
    for (const product of stage.produces) {
      const other = producer.get(product);
      if (other) throw new Error(`stage graph: ${product} is produced by both ${other} and ${stage.name}`);
      producer.set(product, stage.name);
    }
  }
  for (const stage of stages) {
    const unknown = stage.needs.filter((n) => !producer.has(n));
    if (unknown.length > 0) throw new Error(`stage graph: ${stage.name} needs ${unknown.join(', ')}, which no stage produces`);
  }
  const made = new Set<ProductName>();
  const left = new Set(stages);
  while (left.size > 0) {
    const ready = [...left].filter((s) => s.needs.every((n) => made.has(n)));
    if (ready.length === 0) throw new Error(`stage graph: ${[...left].map((s) => s.name).join(', ')} wait on each other`);
    for (const stage of ready) {
      left.delete(stage);
      stage.produces.forEach((p) => made.add(p));
    }
  }
}

const injected = () => new Error('injected failure (KEYLESSGO_FAIL_AT)');

/** Runs one stage with progress, timing and fault injection; failures come out as StageError (or InputError). */
async function runStage(ctx: BuildContext, stage: AnyStage, index: number, total: number, buildStart: number): Promise<void> {
  if (ctx.signal.aborted) throw ctx.signal.reason;
  ctx.log.stageStart(stage.name, stage.summary, index, total);
  const started = performance.now();
  const elapsed = () => (performance.now() - started) / 1000;
  // Each stage gets its own host runner: "middle" counts this stage's commands only.
  const host = ctx.host.forStage();
  let commands = 0;
  if (injectedFailure(stage.name, 'middle')) {
    host.beforeCommand = () => {
      if (++commands === 2) throw injected();
    };
  }
  try {
    if (injectedFailure(stage.name, 'start')) throw injected();
    await stage.run({ ...ctx, host });
    if (ctx.signal.aborted) throw ctx.signal.reason;
    const missing = stage.produces.filter((p) => ctx.state[p] === undefined);
    if (missing.length > 0) throw new Error(`stage ${stage.name} did not produce ${missing.join(', ')}`);
    if (injectedFailure(stage.name, 'end')) throw injected();
  } catch (error) {
    ctx.log.stageEnd(elapsed(), 'failed', stage.name);
    if (ctx.signal.aborted) throw ctx.signal.reason;
    // Input found wrong only now (e.g. the tree does not fit the disk) stays an input error.
    if (error instanceof InputError) throw error;
    throw new StageError(stage.name, error);
  }
  const seconds = elapsed();
  const round = (s: number) => Math.round(s * 10) / 10;
  ctx.state.stageSeconds[stage.name] = round(seconds);
  ctx.state.stageTimes[stage.name] = { start: round((started - buildStart) / 1000), end: round((performance.now() - buildStart) / 1000) };
  ctx.log.stageEnd(seconds, 'done', stage.name);
}

/** Reorders a record keyed by stage name as the stages are declared (the manifest reads the same whatever ran first). */
function inDeclaredOrder(record: Record<string, unknown>, stages: readonly AnyStage[]): void {
  for (const { name } of stages) {
    if (!(name in record)) continue;
    const value = record[name];
    delete record[name];
    record[name] = value;
  }
}

/**
 * Runs the stage graph: each stage starts as soon as every product it needs exists, so
 * independent stages run side by side. The first failure (or a signal) stops the build: the
 * stages still running are cancelled through the build's signal and awaited, then everything
 * registered for cleanup (by every branch) is undone.
 */
export async function runStages(ctx: BuildContext, stages: readonly AnyStage[], guard: SignalGuard): Promise<void> {
  checkStageGraph(stages);
  const made = new Set<ProductName>();
  const started = new Set<AnyStage>();
  const running = new Set<Promise<void>>();
  const buildStart = performance.now();
  let failure: { error: unknown } | undefined;
  try {
    for (;;) {
      if (!failure && ctx.signal.aborted) failure = { error: ctx.signal.reason };
      const ready = failure ? [] : stages.filter((s) => !started.has(s) && s.needs.every((n) => made.has(n)));
      for (const stage of ready) {
        started.add(stage);
        const done = ctx.log
          .inStage(stage.name, () => runStage(ctx, stage, started.size, stages.length, buildStart))
          .then(
            () => {
              stage.produces.forEach((p) => made.add(p));
              inDeclaredOrder(ctx.state.stageSeconds, stages);
              inDeclaredOrder(ctx.state.stageTimes, stages);
            },
            (error: unknown) => {
              if (failure) return;
              failure = { error };
              guard.stop(error);
            },
          )
          .finally(() => running.delete(done));
        running.add(done);
      }
      if (running.size === 0) break;
      await Promise.race(running);
    }
    if (failure) throw failure.error;
    if (ctx.signal.aborted) throw ctx.signal.reason;
    // Only a build that got through every stage gets outputs under their final names.
    for (const { from, to } of ctx.state.publish) await rename(from, to);
  } finally {
    guard.enterCleanup();
    await unwindAll(ctx.cleanup, ctx.log);
  }
}

export async function unwindAll(cleanup: CleanupStack, log: Logger): Promise<void> {
  const failed = await cleanup.unwind();
  if (failed.length > 0) log.error(`cleanup incomplete, check by hand: ${failed.join('; ')}`);
}
