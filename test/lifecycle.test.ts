// No work at import and no stray timers: importing builds nothing, bgrs({ store }) builds no store
// of its own, and close() closes the default store it made, never one the app passed.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { bgrs, MemoryStore } from '../src/index.js';

const root = fileURLToPath(new URL('..', import.meta.url));

/** Runs a script in a fresh Node and returns what it printed (JSON). */
function fresh(script: string): unknown {
  const out = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
  assert.equal(out.status, 0, out.stderr);
  return JSON.parse(out.stdout.trim().split('\n').at(-1)!);
}

class CountingStore extends MemoryStore {
  static built = 0;
  closed = 0;
  constructor() {
    super();
    CountingStore.built++;
  }
  override async close(): Promise<void> {
    this.closed++;
    await super.close();
  }
}

describe('lifecycle', () => {
  // Promise: importing the package starts nothing (no timer, no handle keeps a process alive).
  it('importing every entry point leaves no timer or handle behind', () => {
    const resources = fresh(`
      const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout' || r === 'Immediate').length;
      const before = timers();
      await import('./src/index.ts'); await import('./src/testing/index.ts');
      await import('./src/stores/redis.ts'); await import('./src/stores/postgres.ts');
      const after = timers();
      console.log(JSON.stringify({ before, after }));
    `) as { before: number; after: number };
    assert.equal(resources.after, resources.before, "no timer (even an unref'd one) started at import");
  });

  // Promise: an app that brings its own store gets no second one.
  it('bgrs({ store }) builds no MemoryStore of its own, and close() leaves that store open', async () => {
    const store = new CountingStore();
    const built = CountingStore.built;
    const memoryBefore = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const background = bgrs({ store });
    assert.equal(background.store === store || Object.getPrototypeOf(background.store) === store, true);
    assert.equal(CountingStore.built, built);
    assert.equal(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length, memoryBefore, 'no timer started');
    await background.close();
    assert.equal(store.closed, 0, "the app's store is the app's to close");
  });

  // Promise: the default store is bgrs' own, and close() releases it.
  it('close() closes the default MemoryStore it made', async () => {
    const background = bgrs();
    assert.ok(background.store instanceof MemoryStore || Object.getPrototypeOf(background.store) instanceof MemoryStore);
    let closed = 0;
    const inner =
      Object.getPrototypeOf(background.store) instanceof MemoryStore
        ? (Object.getPrototypeOf(background.store) as MemoryStore)
        : (background.store as MemoryStore);
    const original = inner.close.bind(inner);
    inner.close = async () => {
      closed++;
      await original();
    };
    await background.close();
    assert.equal(closed, 1);
  });
});
