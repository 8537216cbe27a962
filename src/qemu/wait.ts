/**
 * Polling without its own deadline: every wait in the boot test ends when its signal
 * aborts (Ctrl-C, the overall timeout, or QEMU exiting), so nothing outlives the VM.
 */
import { setTimeout as sleep } from 'node:timers/promises';

/** Calls `probe` every `intervalMs` until it returns a value; throws the signal's reason when aborted. */
export async function pollUntil<T>(probe: () => Promise<T | undefined>, intervalMs: number, signal: AbortSignal): Promise<T> {
  for (;;) {
    signal.throwIfAborted();
    const value = await probe();
    if (value !== undefined) return value;
    await sleep(intervalMs, undefined, { signal }).catch(() => signal.throwIfAborted());
  }
}

/** Seconds since `startedMs` (a performance.now() value), one decimal. */
export function secondsSince(startedMs: number): number {
  return Math.round((performance.now() - startedMs) / 100) / 10;
}
