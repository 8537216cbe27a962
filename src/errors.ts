/**
 * Errors keylessgo reports to the user. Anything else reaching the CLI is a bug and is
 * shown with its stack trace.
 */
import type { Logger } from './log.js';

/** Bad input (recipe, flags, key or passphrase files): exit code 2, nothing touched. */
export class InputError extends Error {
  readonly exitCode = 2;
  constructor(message: string, readonly where?: string) {
    super(where ? `${where}: ${message}` : message);
    this.name = 'InputError';
  }
}

/** The host cannot run the build (missing tools, not root): exit code 3. */
export class HostError extends Error {
  readonly exitCode = 3;
  constructor(message: string) {
    super(message);
    this.name = 'HostError';
  }
}

/** A stage failed while running: exit code 1, message names the stage. */
export class StageError extends Error {
  readonly exitCode = 1;
  constructor(readonly stage: string, readonly reason: unknown) {
    super(`stage ${stage} failed: ${reason instanceof Error ? reason.message : String(reason)}`);
    this.name = 'StageError';
  }
}

/** An enrollment step failed on the machine: exit code 1, message names the step. */
export class EnrollError extends Error {
  readonly exitCode = 1;
  constructor(step: string, detail: string) {
    super(`enroll step "${step}" failed: ${detail}`);
    this.name = 'EnrollError';
  }
}

/** The build was interrupted by SIGINT/SIGTERM: exit code 130 like a shell. */
export class InterruptedError extends Error {
  readonly exitCode = 130;
  constructor(signal: string) {
    super(`interrupted by ${signal}`);
    this.name = 'InterruptedError';
  }
}

export type ReportedError = InputError | HostError | StageError | EnrollError | InterruptedError;

export function isReported(error: unknown): error is ReportedError {
  return (
    error instanceof InputError ||
    error instanceof HostError ||
    error instanceof StageError ||
    error instanceof EnrollError ||
    error instanceof InterruptedError
  );
}

/**
 * Reports an error that ended a command and returns the exit code. Through the logger, so the
 * message is redacted and in the chosen format; a failed stage is named in its own field.
 */
export function reportFailure(log: Logger, error: unknown): number {
  if (isReported(error)) {
    log.error(error.message, error instanceof StageError ? error.stage : undefined);
    return error.exitCode;
  }
  log.error(`internal error (please report): ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  return 70;
}
