import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // 2-core CI machines: onnxruntime sessions already use both cores.
    fileParallelism: true,
    maxWorkers: 2,
  },
});
