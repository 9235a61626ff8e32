// Lease renewals during a slow store: a beat still in flight is never joined by another, for job
// leases and Idempotency-Key leases alike, so an outage does not pile up renewals.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { bgrs, MemoryStore } from '../src/index.js';
import { forEachExpress, listen, type Running } from './helpers.js';

/** A MemoryStore whose renewals take `delayMs`, counting how many run at once. */
class SlowRenewals extends MemoryStore {
  inFlight = { leases: 0, keys: 0 };
  most = { leases: 0, keys: 0 };
  calls = { leases: 0, keys: 0 };
  constructor(private readonly delayMs: number) {
    super();
  }
  async #slow<T>(kind: 'leases' | 'keys', call: () => Promise<T>): Promise<T> {
    this.calls[kind]++;
    this.inFlight[kind]++;
    this.most[kind] = Math.max(this.most[kind], this.inFlight[kind]);
    try {
      await new Promise((r) => setTimeout(r, this.delayMs));
      return await call();
    } finally {
      this.inFlight[kind]--;
    }
  }
  override renewLeases(ids: string[], until: string): Promise<string[]> {
    return this.#slow('leases', () => super.renewLeases(ids, until));
  }
  override renewIdempotencyKey(name: string, id: string, until: number): Promise<boolean> {
    return this.#slow('keys', () => super.renewIdempotencyKey(name, id, until));
  }
}

forEachExpress((express) => {
  let server: Running;
  const store = new SlowRenewals(700);
  before(async () => {
    const app = express();
    // lease 300 ms: a beat every 100 ms, each renewal taking 700 ms.
    const background = bgrs({ store, lease: 300, storeTimeout: 10_000, idempotency: { lease: 300 } });
    app.use(background);
    app.post('/slow', async (_req, res) => {
      await new Promise((r) => setTimeout(r, 1600));
      res.status(201).json({ done: true });
    });
    server = await listen(app);
  });
  after(() => server.close());

  // Promise: at most one renewal of each kind in flight, however slow the store.
  it('never overlaps a lease renewal or a key renewal with the previous one', async () => {
    const res = await fetch(`${server.url}/slow`, { method: 'POST', headers: { 'idempotency-key': `hb-${Math.random()}` } });
    assert.equal(res.status, 201);
    assert.ok(store.calls.leases >= 2, `lease renewals: ${store.calls.leases}`);
    assert.ok(store.calls.keys >= 2, `key renewals: ${store.calls.keys}`);
    assert.equal(store.most.leases, 1);
    assert.equal(store.most.keys, 1);
  });
});
