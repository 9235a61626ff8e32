// The smaller Store contract: a store without the Idempotency-Key methods backs every job feature,
// the guard refuses to start on it, and a keyed detach is refused rather than run unguarded.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { bgrs, MemoryStore, type Store } from '../src/index.js';
import { storeConformanceSuite } from '../src/testing/index.js';
import { forEachExpress, listen, type Running, waitForJob } from './helpers.js';

const GUARD_METHODS = ['claimIdempotencyKey', 'renewIdempotencyKey', 'completeIdempotencyKey', 'releaseIdempotencyKey'] as const;

/** A store with the job methods only: a MemoryStore seen through an object that hides the four key methods. */
function keylessStore(inner = new MemoryStore()): Store {
  const store: Record<string, unknown> = {};
  for (const name of Object.getOwnPropertyNames(MemoryStore.prototype)) {
    if (name === 'constructor' || (GUARD_METHODS as readonly string[]).includes(name)) continue;
    const value = (inner as unknown as Record<string, unknown>)[name];
    if (typeof value === 'function') store[name] = value.bind(inner);
  }
  return store as unknown as Store;
}

storeConformanceSuite('a store without Idempotency-Key methods', { create: () => keylessStore(), idempotency: false });

describe('the Store contract at setup', () => {
  it('takes a store without the key methods, and names them when the guard is asked for', () => {
    const store = keylessStore();
    const background = bgrs({ store });
    assert.throws(
      () => background.idempotency(),
      (err: unknown) => {
        assert.ok(err instanceof TypeError);
        for (const method of GUARD_METHODS) assert.match(err.message, new RegExp(`\`${method}\\(\\)\``));
        return true;
      },
    );
    assert.throws(() => bgrs({ store, idempotency: { required: true } }), /bgrs\(\{ idempotency \}\): the Idempotency-Key guard needs a store that keeps keys/);
  });

  it('refuses a store with some of the key methods only, naming the missing ones', () => {
    const store = keylessStore() as Store & Record<string, unknown>;
    const inner = new MemoryStore();
    store.claimIdempotencyKey = inner.claimIdempotencyKey.bind(inner);
    assert.throws(
      () => bgrs({ store }),
      /lacks `renewIdempotencyKey\(\)`, `completeIdempotencyKey\(\)`, `releaseIdempotencyKey\(\)`; a store has all four or none/,
    );
  });

  it('warns about a process-local store in production by its `local` property, not its class', () => {
    const warnings: string[] = [];
    const logger = { warn: (m: string) => warnings.push(m), error: () => {} };
    const previous = process.env.NODE_ENV;
    process.env.NODE_ENV = 'production';
    try {
      const local = Object.assign(keylessStore(), { local: true }) as Store;
      bgrs({ store: local, logger });
      bgrs({ store: keylessStore(), logger });
    } finally {
      process.env.NODE_ENV = previous;
    }
    assert.equal(warnings.filter((w) => w.includes('BGRS_MEMORY_STORE_PRODUCTION')).length, 1);
  });
});

forEachExpress((express) => {
  let server: Running;
  let runs = 0;
  before(async () => {
    const app = express();
    app.use(bgrs({ store: keylessStore() }));
    app.post('/orders', (_req, res) => {
      runs++;
      res.status(201).json({ run: runs });
    });
    server = await listen(app);
  });
  after(() => server.close());

  // Promise: every job feature works on a store that keeps no keys.
  it('detaches, tracks and replays a job', async () => {
    const ack = await fetch(`${server.url}/orders?bgrs=yes`, { method: 'POST' });
    assert.equal(ack.status, 202);
    const job = await waitForJob(server.url, ack.headers.get('location')!);
    assert.equal(job.status, 'completed');
    const result = await fetch(`${server.url}${job.links.result}`);
    assert.equal(result.status, 201);
  });

  // Promise: a key the server cannot keep is never silently ignored on a detach (that could run it twice).
  it('refuses a keyed detach with 501 idempotency-unsupported and runs nothing', async () => {
    const before = runs;
    const res = await fetch(`${server.url}/orders?bgrs=yes`, { method: 'POST', headers: { 'idempotency-key': 'k-1' } });
    assert.equal(res.status, 501);
    assert.equal(((await res.json()) as { type: string }).type, 'urn:express-bgrs:problem:idempotency-unsupported');
    assert.equal(runs, before);
  });
});
