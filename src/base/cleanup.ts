/**
 * Undo actions registered while resources are acquired (loop devices, mounts, temp dirs,
 * partial outputs). The runner unwinds them in reverse order on success, error and
 * signals; a failing undo is reported and the rest still run.
 */
import type { Logger } from '../log.js';

export interface CleanupHandle {
  /** Runs this undo now (e.g. detach a loop device once its stage is done). */
  release(): Promise<void>;
  /** Forgets this undo without running it (e.g. a partial file renamed to its final name). */
  dismiss(): void;
}

interface Entry {
  description: string;
  undo: () => Promise<void>;
}

export class CleanupStack {
  private readonly entries: Entry[] = [];

  constructor(private readonly log: Logger) {}

  get pending(): string[] {
    return this.entries.map((e) => e.description);
  }

  add(description: string, undo: () => Promise<void>): CleanupHandle {
    const entry: Entry = { description, undo };
    this.entries.push(entry);
    const remove = () => {
      const index = this.entries.indexOf(entry);
      if (index >= 0) this.entries.splice(index, 1);
      return index >= 0;
    };
    return {
      release: async () => {
        if (remove()) await entry.undo();
      },
      dismiss: () => void remove(),
    };
  }

  /** Runs every pending undo, newest first. Returns the descriptions that failed. */
  async unwind(): Promise<string[]> {
    const failed: string[] = [];
    while (this.entries.length > 0) {
      const entry = this.entries.pop()!;
      try {
        this.log.verbose(`cleanup: ${entry.description}`);
        await entry.undo();
      } catch (error) {
        failed.push(entry.description);
        this.log.error(`cleanup of ${entry.description} failed: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
    return failed;
  }
}
