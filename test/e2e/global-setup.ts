import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { GlobalSetupContext } from 'vitest/node';
import { buildFixture, buildRebuild, buildReproduction, buildTrixieFixture, loadFixture, REPRODUCTION_DIR, TRIXIE_DIR, type BuiltImage, type ImageFixture } from './fixture.js';

declare module 'vitest' {
  export interface ProvidedContext {
    image: ImageFixture;
    /** The fixture's recipe built again, cold, with a cache of its own: its plaintext must be the fixture's. */
    reproduction: ImageFixture;
    /** The fixture's recipe rebuilt with new secrets, a kernel parameter and an overlay file, from the cache. */
    rebuild: ImageFixture;
    trixie: BuiltImage;
  }
}

/**
 * Builds the shared images, one after the other (a build uses both cores of a CI machine).
 * KEYLESSGO_KEEP_FIXTURE=1 keeps them afterwards and KEYLESSGO_FIXTURE_DIR=<dir> reuses
 * kept ones (for iterating on tests, never in CI).
 */
export default async function setup({ provide }: GlobalSetupContext) {
  const reuse = process.env.KEYLESSGO_FIXTURE_DIR;
  const image = reuse ? await loadFixture(reuse) : await buildFixture();
  process.stderr.write(`e2e fixture: ${reuse ? 'reusing' : `built in ${image.buildSeconds.toFixed(1)} s:`} ${image.dir}\n`);
  // Right after the fixture, so that both cold builds see the same state of the mirror.
  const reproduction = reuse ? await loadFixture(join(reuse, REPRODUCTION_DIR)) : await buildReproduction(image);
  process.stderr.write(`e2e second cold build (reproducibility): ${reuse ? 'reusing' : `built in ${reproduction.buildSeconds.toFixed(1)} s:`} ${reproduction.dir}\n`);
  const rebuild = reuse ? await loadFixture(join(reuse, 'rebuild')) : await buildRebuild(image);
  process.stderr.write(`e2e rebuild from the cache: ${reuse ? 'reusing' : `built in ${rebuild.buildSeconds.toFixed(1)} s:`} ${rebuild.dir}\n`);
  const trixie = reuse ? await loadFixture<BuiltImage>(join(reuse, TRIXIE_DIR)) : await buildTrixieFixture(image.dir);
  process.stderr.write(`e2e trixie fixture: ${reuse ? 'reusing' : `built in ${trixie.buildSeconds.toFixed(1)} s:`} ${trixie.dir}\n`);
  provide('image', image);
  provide('reproduction', reproduction);
  provide('rebuild', rebuild);
  provide('trixie', trixie);
  return async () => {
    if (!reuse && !process.env.KEYLESSGO_KEEP_FIXTURE) await rm(image.dir, { recursive: true, force: true });
  };
}
