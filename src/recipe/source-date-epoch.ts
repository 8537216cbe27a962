/**
 * SOURCE_DATE_EPOCH (reproducible-builds.org): the one time a build writes wherever a tool would
 * write "now". Taken from the environment, else the recipe's build.sourceDateEpoch, else the
 * newest `Date:` of the archive's Release files, so two builds from the same mirror state agree
 * without being told.
 */
import { InputError } from '../errors.js';
import { SOURCE_DATE_EPOCH_RANGE, type Recipe } from './schema.js';

export interface SourceDateEpoch {
  seconds: number;
  /** Where it came from, for the log and the manifest. */
  from: string;
}

/** SOURCE_DATE_EPOCH from the environment, if set; bad input when it is not whole seconds in range. */
export function sourceDateEpochFromEnv(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const text = env.SOURCE_DATE_EPOCH;
  if (text === undefined || text === '') return undefined;
  const seconds = Number(text);
  if (!/^\d+$/.test(text) || seconds < SOURCE_DATE_EPOCH_RANGE.min || seconds > SOURCE_DATE_EPOCH_RANGE.max) {
    throw new InputError(`SOURCE_DATE_EPOCH must be whole seconds since 1970, from 1980 to 9999; got ${JSON.stringify(text)}`);
  }
  return seconds;
}

/** The newest of the Release files' `Date:` fields, in seconds; undefined if none parses. */
export function newestReleaseEpoch(releases: Record<string, string>): number | undefined {
  const times = Object.values(releases).map((date) => Date.parse(date)).filter(Number.isFinite);
  return times.length ? Math.floor(Math.max(...times) / 1000) : undefined;
}

/**
 * The build's SOURCE_DATE_EPOCH. `releases` undefined: the archive's dates could not be read,
 * and without another source the build time is used (then two builds differ in their times).
 */
export function chooseSourceDateEpoch(recipe: Recipe, releases: Record<string, string> | undefined, env: NodeJS.ProcessEnv = process.env, now = Date.now()): SourceDateEpoch {
  const fromEnv = sourceDateEpochFromEnv(env);
  if (fromEnv !== undefined) return { seconds: fromEnv, from: 'SOURCE_DATE_EPOCH in the environment' };
  if (recipe.build.sourceDateEpoch !== undefined) return { seconds: recipe.build.sourceDateEpoch, from: 'the recipe (build.sourceDateEpoch)' };
  const newest = releases && newestReleaseEpoch(releases);
  if (newest !== undefined) return { seconds: newest, from: "the newest Date: of the archive's Release files" };
  return { seconds: Math.floor(now / 1000), from: "the build's start (the archive's Release dates could not be read)" };
}
