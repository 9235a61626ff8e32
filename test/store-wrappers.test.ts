// The store wrappers (withTimeouts, which bgrs() puts around every store, and withFaults from
// express-bgrs/testing) forward createJob's request and readRequest, and add no readRequest to a
// store that has none.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { MemoryStore, type Store } from '../src/index.js';
import type { Job } from '../src/model/job.js';
import { newJob } from '../src/model/job.js';
import { withTimeouts } from '../src/stores/timed.js';
import { InjectedFault, withFaults } from '../src/testing/index.js';

/** A MemoryStore that keeps requests as a shared store would, and can be made to hang on readRequest. */
class RequestStore extends MemoryStore {
  readonly requests = new Map<string, Buffer>();
  hang = false;

  override async createJob(job: Job, request?: Buffer): Promise<void> {
    await super.createJob(job);
    if (request) this.requests.set(job.id, Buffer.from(request));
  }

  readRequest(id: string): Promise<Buffer | null> {
    if (this.hang) return new Promise(() => {});
    return Promise.resolve(this.requests.get(id) ?? null);
  }
}

const queued = (): Job => newJob({ id: randomUUID(), method: 'POST', url: '/q', owner: null, status: 'queued' });
const request = Buffer.from([0, 1, 2, 254, 255]);

const wrappers: Array<[string, (store: Store) => Store]> = [
  ['withTimeouts', (store) => withTimeouts(store, 200)],
  ['withFaults', (store) => withFaults(store).store],
];

for (const [name, wrap] of wrappers) {
  describe(`${name} and requests`, () => {
    it('forwards the request of createJob, and readRequest, to a store that has it', async () => {
      const inner = new RequestStore();
      const store = wrap(inner);
      const j = queued();
      await store.createJob(j, request);
      assert.deepEqual(inner.requests.get(j.id), request);
      assert.equal(typeof store.readRequest, 'function');
      assert.deepEqual(await store.readRequest!(j.id), request);
      assert.equal(await store.readRequest!(randomUUID()), null);
    });

    it('adds no readRequest to a store without one, and still takes the request argument', async () => {
      const store = wrap(new MemoryStore());
      assert.equal(store.readRequest, undefined);
      assert.ok(!('readRequest' in store));
      const j = queued();
      await store.createJob(j, request);
      assert.deepEqual(await store.getJob(j.id), j);
    });
  });
}

describe('withTimeouts', () => {
  it('gives readRequest a timeout like every other method', async () => {
    const inner = new RequestStore();
    inner.hang = true;
    await assert.rejects(withTimeouts(inner, 100).readRequest!(randomUUID()), { code: 'BGRS_STORE_TIMEOUT', message: /readRequest\(\) within 100 ms/ });
  });
});

describe('withFaults', () => {
  it('injects faults into readRequest like every other method', async () => {
    const inner = new RequestStore();
    const faulty = withFaults(inner);
    const j = queued();
    await faulty.store.createJob(j, request);
    faulty.fail('readRequest', { commit: false });
    await assert.rejects(faulty.store.readRequest!(j.id), (err: unknown) => err instanceof InjectedFault && err.method === 'readRequest' && !err.committed);
    assert.equal(faulty.injected.readRequest, 1);
    assert.deepEqual(await faulty.store.readRequest!(j.id), request, 'one fault, then the calls reach the store again');
    faulty.fail('createJob');
    const k = queued();
    await assert.rejects(faulty.store.createJob(k, request), InjectedFault);
    assert.deepEqual(inner.requests.get(k.id), request, 'a committed fault applied the create with its request');
  });
});
