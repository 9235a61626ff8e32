// Regressions a review of the layered tree found: each test states the promise a bug broke.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Scheduler } from '../src/executors/local.js';
import { bgrs, MemoryStore, nativeView, type Store, type View } from '../src/index.js';
import { newJob } from '../src/model/job.js';
import { forEachExpress, listen, type Running } from './helpers.js';
import { storeKinds } from './stores.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const finish = (expiresInMs = 3_600_000) => ({
  status: 'completed' as const,
  finishedAt: new Date().toISOString(),
  expiresAt: new Date(Date.now() + expiresInMs).toISOString(),
  response: null,
  error: null,
});

const kinds = await storeKinds();
forEachExpress((express) => {
  for (const kind of kinds) {
    describe(`${kind.name}: a cancel from another instance`, () => {
      let store: Store;
      const servers: Running[] = [];
      const runs: string[] = [];
      before(async () => {
        store = await kind.create();
        for (const name of ['A', 'B']) {
          const app = express();
          app.use(bgrs({ store, owner: () => 'alice' }));
          app.post('/orders', async (_req, res) => {
            runs.push(name);
            res.writeHead(200, { 'Content-Type': 'text/plain' });
            res.write('charged; ');
            await sleep(600);
            res.end('done');
          });
          servers.push(await listen(app));
        }
      });
      after(async () => {
        for (const server of servers) await server.close();
        await kind.destroy(store);
      });

      // Promise: one key, one execution, also when another instance cancels a handler that already began answering.
      it('never frees the key of a handler that began answering: a retry gets 409 while it runs, 410 after', async () => {
        const [a, b] = servers as [Running, Running];
        const headers = { 'idempotency-key': `order-${Date.now()}`, 'content-type': 'application/json' };
        const first = await fetch(`${a.url}/orders?bgrs=yes`, { method: 'POST', headers, body: '{"item":"book"}' });
        assert.equal(first.status, 202);
        const { id } = (await first.json()) as { id: string };
        await sleep(150);
        const cancel = await fetch(`${b.url}/bgrs/${id}/cancel`, { method: 'POST' });
        assert.equal(cancel.status, 202);
        const during = await fetch(`${b.url}/orders?bgrs=yes`, { method: 'POST', headers, body: '{"item":"book"}' });
        assert.equal(during.status, 409);
        await during.arrayBuffer();
        // A's heartbeat stops its handler and completes the key.
        let later: Response | undefined;
        for (let i = 0; i < 40; i++) {
          await sleep(100);
          later = await fetch(`${b.url}/orders?bgrs=yes`, { method: 'POST', headers, body: '{"item":"book"}' });
          if (later.status !== 409) break;
          await later.arrayBuffer();
        }
        assert.equal(later?.status, 410);
        await later?.arrayBuffer();
        assert.deepEqual(runs, ['A'], 'the handler ran once');
      });
    });
  }

  describe('a view whose problem() throws', () => {
    let server: Running;
    let background: ReturnType<typeof bgrs>;
    before(async () => {
      const view: View = {
        ...nativeView,
        problem: (problem) => {
          if (problem.type.endsWith('job-failed')) throw new Error('view bug');
          return nativeView.problem(problem);
        },
      };
      const errors: string[] = [];
      background = bgrs({ view, concurrency: 1, timeout: 100, idempotency: {}, logger: { warn: () => {}, error: (m) => errors.push(m) } });
      const app = express();
      app.use(background);
      app.post('/slow', async (_req, res) => {
        await sleep(5_000);
        res.end('late');
      });
      app.get('/quick', (_req, res) => res.json({ ok: true }));
      server = await listen(app);
    });
    after(async () => {
      await background.close();
      await server.close();
    });

    // Promise: user code in a view never keeps a job's slot forever.
    it('still frees the slot: the next job runs', async () => {
      const first = await fetch(`${server.url}/slow`, { method: 'POST', headers: { 'idempotency-key': 'k1' }, signal: AbortSignal.timeout(2000) }).catch(
        () => null,
      );
      await first?.arrayBuffer().catch(() => null);
      const ack = await fetch(`${server.url}/quick?bgrs=yes`);
      const { id } = (await ack.json()) as { id: string };
      const job = (await (await fetch(`${server.url}/bgrs/${id}?wait=3`)).json()) as { status: string };
      assert.equal(job.status, 'completed');
    });
  });

  describe('close() while a job is being recorded', () => {
    // Promise: nothing runs after close() resolved; a job recorded as close() began ends as shut down.
    it('hands the job over and shuts it down before close() resolves', async () => {
      const inner = new MemoryStore();
      const store = Object.create(inner) as Store;
      store.createJob = async (job) => {
        await sleep(200);
        return inner.createJob(job);
      };
      const background = bgrs({ store });
      let ran = 0;
      const app = express();
      app.use(background);
      app.post('/work', (_req, res) => {
        ran++;
        res.json({ ok: true });
      });
      const server = await listen(app);
      const pending = fetch(`${server.url}/work?bgrs=yes`, { method: 'POST' });
      await sleep(50);
      await background.close();
      const ranAtClose = ran;
      const doc = (await (await pending).json()) as { id: string };
      await sleep(200);
      assert.equal(ran, ranAtClose, 'no handler starts after close() resolved');
      assert.equal((await inner.getJob(doc.id))?.status, 'failed');
      await server.close();
    });
  });
});

describe('the in-process executor', () => {
  // Promise: never more jobs running than `concurrency`, also while an admitted job is still being recorded.
  it('counts a slot reserved by an admission still being recorded', async () => {
    const store = new MemoryStore();
    const s = new Scheduler({
      store,
      logger: console,
      concurrency: 1,
      maxQueued: 10,
      maxPerOwner: 10,
      maxHeldBodyBytes: 1e9,
      lease: 30_000,
      ttl: 60_000,
      storeTimeout: 5000,
    });
    let live = 0;
    let peak = 0;
    const run = () => () => {
      live++;
      peak = Math.max(peak, live);
      return { stop: async () => {}, done: new Promise<void>(() => {}) };
    };
    const a = s.admit('ip:a');
    const b = s.admit('ip:b');
    assert.ok(a.ok && !a.queued && b.ok && b.queued);
    await store.createJob(newJob({ id: 'b', method: 'POST', url: '/x', owner: null, status: 'queued' }));
    s.place(b, 'b', run(), async () => undefined);
    await sleep(20);
    s.place(a, 'a', run(), async () => undefined);
    assert.equal(peak, 1);
    s.dispose();
    await store.close();
  });
});

describe('MemoryStore listing against what it holds', () => {
  // Promise: a list never shows a job that reading it says is gone.
  it('drops a job past the ttl cap from the list, as getJob does', async () => {
    const store = new MemoryStore({ ttl: 100 });
    await store.createJob(newJob({ id: 'j1', method: 'GET', url: '/x', owner: 'alice', status: 'running' }));
    await store.finishJob('j1', finish());
    await sleep(1200);
    assert.deepEqual((await store.listJobs({ owner: 'alice', limit: 10 })).jobs, []);
    assert.equal(await store.getJob('j1'), null);
    await store.close();
  });

  // Promise: the index holds no job the store no longer has (a result larger than maxBytes is not kept).
  it('forgets a finished job too large to keep', async () => {
    const store = new MemoryStore({ maxBytes: 4096 });
    for (let i = 0; i < 50; i++) {
      const id = `j${i}`;
      await store.createJob(newJob({ id, method: 'GET', url: '/x', owner: 'alice', status: 'running' }));
      await store.appendResult(id, Buffer.alloc(8192));
      await store.finishJob(id, finish());
    }
    assert.equal((store as unknown as { index: { size: number } }).index.size, 0);
    await store.close();
  });

  // Promise: an expired job is unknown to finishJob as to getJob (the Store contract).
  it('reports an expired finished job as unknown to finishJob', async () => {
    const store = new MemoryStore();
    await store.createJob(newJob({ id: 'j2', method: 'GET', url: '/x', owner: null, status: 'running' }));
    await store.finishJob('j2', finish(50));
    await sleep(80);
    assert.equal(await store.finishJob('j2', finish()), null);
    await store.close();
  });
});
