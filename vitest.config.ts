import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts'],
    // Some unit tests run real host tools (clevis, cryptsetup, mkfs); a loaded 2-core CI machine needs more than 5 s.
    testTimeout: 30_000,
  },
});
