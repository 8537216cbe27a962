/**
 * Runs stages in order with progress and timing, and owns cleanup: whatever happens (an
 * error, SIGINT, SIGTERM), every registered undo runs before the process exits. A second
 * signal during cleanup is ignored rather than leaving a half-cleaned host.
 */
import { rename } from 'node:fs/promises';
import { InputError, InterruptedError, StageError } from '../errors.js';
import type { Logger } from '../log.js';
import type { CleanupStack } from './cleanup.js';
import type { BuildContext } from './context.js';
import type { Stage } from './stage.js';

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

  enterCleanup(): void {
    this.cleaningUp = true;
  }

  dispose(): void {
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
    process.off('SIGHUP', this.onSignal);
  }
}

export async function runStages(ctx: BuildContext, stages: readonly Stage[], guard: SignalGuard): Promise<void> {
  const total = stages.length;
  try {
    for (const [index, stage] of stages.entries()) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      ctx.log.stageStart(stage.name, stage.summary, index + 1, total);
      const started = performance.now();
      const elapsed = () => (performance.now() - started) / 1000;
      try {
        if (injectedFailure(stage.name, 'start')) throw new Error('injected failure (KEYLESSGO_FAIL_AT)');
        let commands = 0;
        ctx.host.beforeCommand = injectedFailure(stage.name, 'middle')
          ? () => {
              if (++commands === 2) throw new Error('injected failure (KEYLESSGO_FAIL_AT)');
            }
          : undefined;
        await stage.run(ctx);
        if (ctx.signal.aborted) throw ctx.signal.reason;
        if (injectedFailure(stage.name, 'end')) throw new Error('injected failure (KEYLESSGO_FAIL_AT)');
      } catch (error) {
        ctx.log.stageEnd(elapsed(), 'failed');
        if (ctx.signal.aborted) throw ctx.signal.reason;
        // Input found wrong only now (e.g. the tree does not fit the disk) stays an input error.
        if (error instanceof InputError) throw error;
        throw new StageError(stage.name, error);
      }
      const seconds = elapsed();
      ctx.state.stageSeconds[stage.name] = Math.round(seconds * 10) / 10;
      ctx.log.stageEnd(seconds, 'done');
    }
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
