/**
 * A stage is one step of the build (one file under src/stages/). It declares what it needs
 * (products of earlier stages) and what it produces, so the runner can start it as soon as
 * its inputs exist and run independent stages side by side; it declares the host tools it
 * runs so that the runner can refuse to start before anything is touched; and it acquires
 * resources only through the context's cleanup stack so that the runner can undo them on
 * any failure.
 */
import type { Recipe } from '../recipe/schema.js';
import type { BuildContext, BuildRecord, Products } from './context.js';

export type ProductName = keyof Products;

/** What a stage sees as `ctx.state`: its inputs (present), its outputs (to set), and the build's records. */
export type StageState<N extends ProductName, P extends ProductName> = Readonly<Pick<Products, N>> & Partial<Pick<Products, P>> & BuildRecord;

export type StageContext<N extends ProductName, P extends ProductName> = Omit<BuildContext, 'state'> & { readonly state: StageState<N, P> };

export interface Stage<N extends ProductName = ProductName, P extends ProductName = ProductName> {
  readonly name: string;
  /** One line for the progress display. */
  readonly summary: string;
  /** Products of other stages this one reads; it starts once all of them exist. */
  readonly needs: readonly N[];
  /** Products this stage sets (every one of them, null for "none"). */
  readonly produces: readonly P[];
  /** Host commands this stage runs (checked before the build starts). */
  hostTools(recipe: Recipe): readonly string[];
  run(ctx: StageContext<N, P>): Promise<void>;
}

/** Any stage, as the runner schedules them. */
// run's context is checked per stage by defineStage.
export type AnyStage = Omit<Stage, 'run'> & { run(ctx: StageContext<any, any>): Promise<void> };

/** Declares a stage; `needs` and `produces` type its `ctx.state`. */
export function defineStage<const N extends ProductName = never, const P extends ProductName = never>(stage: Stage<N, P>): AnyStage {
  return stage as unknown as AnyStage;
}
