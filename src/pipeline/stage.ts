/**
 * A stage is one step of the build (one file under src/stages/). It declares the host
 * tools it runs so that the runner can refuse to start before anything is touched, and it
 * acquires resources only through the context's cleanup stack so that the runner can undo
 * them on any failure.
 */
import type { BuildContext } from './context.js';
import type { Recipe } from '../recipe/schema.js';

export interface Stage {
  readonly name: string;
  /** One line for the progress display. */
  readonly summary: string;
  /** Host commands this stage runs (checked before the build starts). */
  hostTools(recipe: Recipe): readonly string[];
  run(ctx: BuildContext): Promise<void>;
}
