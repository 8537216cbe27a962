import { Worker } from 'node:worker_threads';

/**
 * A worker thread running `main` from its source text (eval), so the same code works from the
 * compiled dist/ and under the test runner, which has no compiled file to point a worker at.
 * `main` may use only what it requires itself, and gets `workerData` from node:worker_threads.
 */
export function sourceWorker(main: () => void, workerData: unknown): Worker {
  return new Worker(`(${main.toString()})()`, { eval: true, workerData });
}
