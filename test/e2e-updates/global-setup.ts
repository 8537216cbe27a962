import { rm } from 'node:fs/promises';
import type { GlobalSetupContext } from 'vitest/node';
import { buildFixture, loadFixture, type ImageFixture } from '../e2e/fixture.js';

declare module 'vitest' {
  export interface ProvidedContext {
    image: ImageFixture;
  }
}

/** The default image only (KEYLESSGO_FIXTURE_DIR and KEYLESSGO_KEEP_FIXTURE as for the e2e suite). */
export default async function setup({ provide }: GlobalSetupContext) {
  const reuse = process.env.KEYLESSGO_FIXTURE_DIR;
  const image = reuse ? await loadFixture(reuse) : await buildFixture();
  process.stderr.write(`e2e-updates fixture: ${reuse ? 'reusing' : `built in ${image.buildSeconds.toFixed(1)} s:`} ${image.dir}\n`);
  provide('image', image);
  return async () => {
    if (!reuse && !process.env.KEYLESSGO_KEEP_FIXTURE) await rm(image.dir, { recursive: true, force: true });
  };
}
