import { rm } from 'node:fs/promises';
import type { GlobalSetupContext } from 'vitest/node';
import { join } from 'node:path';
import { buildFixture, buildRebuild, loadFixture, type ImageFixture } from './fixture.js';

declare module 'vitest' {
  export interface ProvidedContext {
    image: ImageFixture;
    /** The fixture's recipe rebuilt with new secrets, a kernel parameter and an overlay file, from the cache. */
    rebuild: ImageFixture;
  }
}

/**
 * Builds the shared image. KEYLESSGO_KEEP_FIXTURE=1 keeps it afterwards and
 * KEYLESSGO_FIXTURE_DIR=<dir> reuses a kept one (for iterating on tests, never in CI).
 */
export default async function setup({ provide }: GlobalSetupContext) {
  const reuse = process.env.KEYLESSGO_FIXTURE_DIR;
  const image = reuse ? await loadFixture(reuse) : await buildFixture();
  process.stderr.write(`e2e fixture: ${reuse ? 'reusing' : `built in ${image.buildSeconds.toFixed(1)} s:`} ${image.dir}\n`);
  const rebuild = reuse ? await loadFixture(join(reuse, 'rebuild')) : await buildRebuild(image);
  process.stderr.write(`e2e rebuild from the cache: ${reuse ? 'reusing' : `built in ${rebuild.buildSeconds.toFixed(1)} s:`} ${rebuild.dir}\n`);
  provide('image', image);
  provide('rebuild', rebuild);
  return async () => {
    if (!reuse && !process.env.KEYLESSGO_KEEP_FIXTURE) await rm(image.dir, { recursive: true, force: true });
  };
}
