import { rm } from 'node:fs/promises';
import type { GlobalSetupContext } from 'vitest/node';
import { buildFixture, type ImageFixture } from './fixture.js';

declare module 'vitest' {
  export interface ProvidedContext {
    image: ImageFixture;
  }
}

export default async function setup({ provide }: GlobalSetupContext) {
  const image = await buildFixture();
  process.stderr.write(`e2e fixture: built ${image.raw} in ${image.buildSeconds.toFixed(1)} s\n`);
  provide('image', image);
  return async () => {
    if (!process.env.KEYLESSGO_KEEP_FIXTURE) await rm(image.dir, { recursive: true, force: true });
  };
}
