// The store wrappers (withTimeouts, which bgrs() puts around every store, and withFaults from
// express-bgrs/testing) forward createJob's request, appendResult's attempt and the optional readRequest and restartJob,
// and add neither to a store that has none.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { MemoryStore, StaleAttemptError, type Store } from '../src/index.js';
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

/** A store with MemoryStore's methods but `leftOut`: the shape of a store written without them. */
function memoryStoreWithout(...leftOut: string[]): Store {
  const inner = new MemoryStore();
  const store: Record<string, unknown> = {};
  for (const name of Object.getOwnPropertyNames(MemoryStore.prototype)) {
    const value = (inner as unknown as Record<string, unknown>)[name];
    if (name !== 'constructor' && !leftOut.includes(name) && typeof value === 'function') store[name] = value.bind(inner);
  }
  return store as unknown as Store;
}

type Restart = Parameters<NonNullable<Store['restartJob']>>[1];

/** A store whose restartJob records its calls and answers `answer` (or never, while `hang`). */
function restartingStore(answer: Job | null) {
  const calls: Array<[string, Restart]> = [];
  const state = { hang: false };
  const store: Store = {
    ...memoryStoreWithout('restartJob'),
    restartJob: (id: string, restart: Restart): Promise<Job | null> => {
      calls.push([id, restart]);
      return state.hang ? new Promise(() => {}) : Promise.resolve(answer);
    },
  };
  return { store, calls, state };
}

const queued = (): Job => newJob({ id: randomUUID(), method: 'POST', url: '/q', owner: null, status: 'queued' });
const restart: Restart = {
  startedAt: new Date().toISOString(),
  leaseUntil: new Date(Date.now() + 30_000).toISOString(),
  ifLeaseExpiredBy: new Date().toISOString(),
};
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

    it('forwards restartJob to a store that has it, with its arguments and its answer', async () => {
      const restarted = { ...queued(), status: 'running' as const, attempt: 2 };
      const inner = restartingStore(restarted);
      const store = wrap(inner.store);
      assert.equal(typeof store.restartJob, 'function');
      assert.deepEqual(await store.restartJob!('some-id', restart), restarted);
      assert.deepEqual(inner.calls, [['some-id', restart]]);
      assert.equal(await wrap(restartingStore(null).store).restartJob!('other', restart), null);
    });

    it('adds no restartJob to a store without one', () => {
      const store = wrap(memoryStoreWithout('restartJob'));
      assert.equal(store.restartJob, undefined);
      assert.ok(!('restartJob' in store));
    });

    it('forwards watchChanges to a store that has it, bound to that store, and adds none to a store without it', async () => {
      const heard: Array<string | null> = [];
      const unwatched: string[] = [];
      // A class, so the method reads state of its own instance: a wrapper must call it on the store, not on itself.
      class Notifying extends MemoryStore {
        readonly listeners = new Set<(id: string | null) => void>();
        watchChanges(listener: (id: string | null) => void): Promise<() => Promise<void>> {
          this.listeners.add(listener);
          return Promise.resolve(async () => {
            this.listeners.delete(listener);
            unwatched.push('done');
          });
        }
      }
      const inner = new Notifying();
      const store = wrap(inner);
      assert.equal(typeof store.watchChanges, 'function');
      const unwatch = await store.watchChanges!((id) => heard.push(id));
      assert.equal(inner.listeners.size, 1, 'the listener reached the inner store');
      for (const listener of inner.listeners) listener('job-1');
      assert.deepEqual(heard, ['job-1']);
      await unwatch();
      assert.equal(inner.listeners.size, 0);
      assert.deepEqual(unwatched, ['done']);
      const plain = wrap(new MemoryStore());
      assert.equal(plain.watchChanges, undefined);
      assert.ok(!('watchChanges' in plain));
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

describe('withTimeouts and restartJob', () => {
  it('gives restartJob a timeout like every other method', async () => {
    const inner = restartingStore(null);
    inner.state.hang = true;
    await assert.rejects(withTimeouts(inner.store, 100).restartJob!('some-id', restart), {
      code: 'BGRS_STORE_TIMEOUT',
      message: /restartJob\(\) within 100 ms/,
    });
  });
});

describe('withFaults and restartJob', () => {
  it('injects faults into restartJob like every other method: applied then lost, or refused', async () => {
    const inner = restartingStore(null);
    const faulty = withFaults(inner.store);
    faulty.fail('restartJob');
    await assert.rejects(
      faulty.store.restartJob!('a', restart),
      (err: unknown) => err instanceof InjectedFault && err.method === 'restartJob' && err.committed,
    );
    faulty.fail('restartJob', { commit: false });
    await assert.rejects(faulty.store.restartJob!('b', restart), (err: unknown) => err instanceof InjectedFault && !err.committed);
    assert.deepEqual(
      inner.calls.map(([id]) => id),
      ['a'],
      'the committed fault reached the store, the refused one did not',
    );
    assert.equal(faulty.injected.restartJob, 2);
    assert.equal(await faulty.store.restartJob!('c', restart), null, 'then the calls reach the store again');
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

  it("opens a forMs window at the method's first call with fromFirstCall, at once without it", async () => {
    const faulty = withFaults(new MemoryStore());
    faulty.fail('getJob', { forMs: 100, commit: false, fromFirstCall: true });
    await new Promise((resolve) => setTimeout(resolve, 150));
    await assert.rejects(faulty.store.getJob(randomUUID()), InjectedFault, 'the window had not opened before the call');
    await assert.rejects(faulty.store.getJob(randomUUID()), InjectedFault, 'still inside the window');
    await new Promise((resolve) => setTimeout(resolve, 120));
    assert.equal(await faulty.store.getJob(randomUUID()), null, 'closed 100 ms after the first call');
    assert.equal(faulty.injected.getJob, 2);
    faulty.fail('getJob', { forMs: 100, commit: false });
    await new Promise((resolve) => setTimeout(resolve, 150));
    assert.equal(await faulty.store.getJob(randomUUID()), null, 'without it, the window ran from fail()');
  });
});

// The attempt fence of queue mode rides on appendResult's third argument: a wrapper that dropped it
// would let a late worker's chunks into a restarted job without a sound.
describe('withTimeouts and withFaults and the attempt fence', () => {
  for (const [name, wrap] of [
    ['withTimeouts', (store: Store): Store => withTimeouts(store, 1000)],
    ['withFaults', (store: Store): Store => withFaults(store).store],
  ] as const) {
    it(`${name} passes appendResult's attempt through to the store`, async () => {
      const inner = new MemoryStore();
      const store = wrap(inner);
      const job = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: null, status: 'running' });
      await store.createJob(job);
      await store.appendResult(job.id, Buffer.from('ok'), 1);
      await assert.rejects(store.appendResult(job.id, Buffer.from('stale'), 2), StaleAttemptError);
      assert.equal(await store.updateProgress(job.id, { progress: 9, ifAttempt: 2 }), false);
      assert.equal(
        (
          await store.finishJob(job.id, {
            status: 'completed',
            finishedAt: new Date().toISOString(),
            expiresAt: new Date(Date.now() + 60_000).toISOString(),
            response: null,
            error: null,
            ifAttempt: 2,
          })
        )?.applied,
        false,
      );
      await inner.close();
    });
  }
});
