// Build config: ESM and CommonJS bundles with type declarations for every public entry point.
import { defineConfig } from 'tsup';

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    redis: 'src/stores/redis.ts',
    postgres: 'src/stores/postgres.ts',
    bullmq: 'src/executors/bullmq.ts',
    testing: 'src/testing/index.ts',
  },
  format: ['esm', 'cjs'],
  dts: true,
  target: 'node20',
  platform: 'node',
  // node:test exists only under its node: name.
  removeNodeProtocol: false,
  sourcemap: true,
  clean: true,
  // Shared code goes into chunks, so that instanceof and the Store types agree across entry points.
  splitting: true,
  outDir: 'dist',
});
