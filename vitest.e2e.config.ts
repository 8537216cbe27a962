import { defineConfig } from 'vitest/config';

// End-to-end tests need root and real tools; they share one image built in globalSetup.
export default defineConfig({
  test: {
    include: ['test/e2e/**/*.test.ts'],
    globalSetup: ['test/e2e/global-setup.ts'],
    testTimeout: 20 * 60 * 1000,
    hookTimeout: 20 * 60 * 1000,
    // Boot tests are CPU-bound under TCG on a 2-core machine: run test files one at a time.
    fileParallelism: false,
    // The JSON report keeps each file's start and end: `make bench` prints the suite's wall time from it.
    reporters: ['default', ['json', { outputFile: 'test-results/e2e.json' }]],
  },
});
