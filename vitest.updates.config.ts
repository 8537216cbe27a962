import { defineConfig } from 'vitest/config';

// `make test-updates`, not in `make test`: updates that rebuild the initramfs with
// MODULES=most on the machine (10-25 min each under TCG) and a Debian 12 -> 13 upgrade.
export default defineConfig({
  test: {
    include: ['test/e2e-updates/**/*.test.ts'],
    globalSetup: ['test/e2e-updates/global-setup.ts'],
    testTimeout: 180 * 60 * 1000,
    hookTimeout: 20 * 60 * 1000,
    fileParallelism: false,
    reporters: ['default', ['json', { outputFile: 'test-results/e2e-updates.json' }]],
  },
});
