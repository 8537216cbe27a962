import { rm } from 'node:fs/promises';
import type { GlobalSetupContext } from 'vitest/node';
import { buildFixture, loadFixture, type ImageFixture } from './fixture.js';

declare module 'vitest' {
  export interface ProvidedContext {
    image: ImageFixture;
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
  provide('image', image);
  return async () => {
    if (!reuse && !process.env.KEYLESSGO_KEEP_FIXTURE) await rm(image.dir, { recursive: true, force: true });
  };
}
