import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Every temporary folder of the run lives under one, removed when the run ends.
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // 2-core CI machines: onnxruntime sessions already use both cores.
    fileParallelism: true,
    maxWorkers: 2,
  },
});
