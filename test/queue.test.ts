// Queue mode (express-bgrs/bullmq), web and worker in one process: a detach is recorded queued, waits in a
// real BullMQ queue (Redis), and a worker replays it through the app. Express 4 and 5 × RedisStore and
// PostgresStore, each test with its own store namespace and queue name.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Request, Response } from 'express';
import { Redis } from 'ioredis';
import { bullmq } from '../src/executors/bullmq.js';
import { recordKey } from '../src/http/idempotency-key.js';
import { type BgrsMiddleware, bgrs, MemoryStore, type Store } from '../src/index.js';
import { newJob } from '../src/model/job.js';
import { encodeRequest } from '../src/replay/stored.js';
import { detached, type ExpressModule, forEachExpress, type JobDoc, listen, type Running, sleep, until, waitForJob } from './helpers.js';
import { POSTGRES_URL, REDIS_URL } from './services.js';
import { dropRedisPrefix, type StoreKind, storeKinds } from './stores.js';

const kinds = (await storeKinds()).filter((kind) => kind.name !== 'MemoryStore');
const { hostname, port } = new URL(REDIS_URL);
const connection = { host: hostname, port: Number(port) };

/** Counts handler runs per path and lets a test hold a handler until it says so. */
interface App {
  runs: string[];
  gates: Map<string, () => void>;
  aborted: string[];
}

function buildApp(express: ExpressModule, background: BgrsMiddleware, state: App) {
  const app = express();
  app.use(express.json());
  app.use(background);
  app.get('/report', (req, res) => {
    state.runs.push('report');
    req.bgrs.progress(50, 'half way');
    res.type('text/csv').send(`a,b\n${String(req.query.n ?? 1)},2\n`);
  });
  app.post('/echo', (req, res) => {
    state.runs.push('echo');
    res.json({ got: req.body as unknown, user: req.get('x-user') ?? null });
  });
  app.put('/raw', (req, res) => {
    state.runs.push('raw');
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => res.type('application/octet-stream').send(Buffer.concat(chunks)));
  });
  const block = async (req: Request, res: Response): Promise<void> => {
    const gate = String(req.query.gate);
    state.runs.push(`block:${gate}`);
    const aborted = new Promise<void>((resolve) => req.bgrs.signal.addEventListener('abort', () => resolve(), { once: true }));
    const released = new Promise<void>((resolve) => state.gates.set(gate, resolve));
    await Promise.race([released, aborted]);
    if (req.bgrs.signal.aborted) state.aborted.push(gate);
    if (!res.destroyed && !res.headersSent) res.send(`unblocked ${gate}`);
  };
  app.get('/block', block);
  // Writes part of its answer, waits at the gate, then writes the rest.
  app.get('/partial', async (req, res) => {
    const gate = String(req.query.gate);
    state.runs.push(`partial:${gate}`);
    res.type('text/plain').write('part one\n');
    await new Promise<void>((resolve) => state.gates.set(gate, resolve));
    res.end('part two\n');
  });
  app.post('/block', block);
  app.get('/slow', background.detachable({ timeout: 300 }, block));
  app.post('/keyed', background.idempotency(), block);
  return app;
}

async function jobOf(base: string, location: string): Promise<JobDoc> {
  const res = await fetch(base + location);
  assert.equal(res.status, 200);
  return (await res.json()) as JobDoc;
}

describe('queue mode: setup', () => {
  it('refuses the MemoryStore with a clear error', () => {
    assert.throws(
      () => bgrs({ store: new MemoryStore(), executor: bullmq({ connection }) }),
      (err: Error) => err instanceof TypeError && /queue mode needs a store that every web and worker process shares/.test(err.message),
    );
  });

  it('refuses bullmq() without a connection or with an unknown backend', () => {
    assert.throws(() => bullmq({} as never), /needs `connection`/);
    assert.throws(() => bullmq({ connection, backend: 'kafka' as never }), /`backend` must be "redis" or "postgres"/);
  });

  it('refuses background.work() on an instance that is not in queue mode', () => {
    const background = bgrs();
    assert.throws(() => background.work(() => undefined), /takes jobs from a queue/);
    void background.close();
  });
});

/** BullMQ's two backends: each test gets its own key prefix (Redis) or schema (PostgreSQL). */
interface Backend {
  name: string;
  make(): { options: Omit<Parameters<typeof bullmq>[0], 'name'>; drop(): Promise<void> };
}
const backends: Backend[] = [];
if (kinds.some((kind) => kind.name === 'RedisStore')) {
  backends.push({
    name: 'Redis',
    make() {
      const prefix = `bgrs-test-bull-${randomUUID()}`;
      return {
        options: { connection, prefix },
        async drop() {
          const redis = new Redis(REDIS_URL);
          await dropRedisPrefix(redis, prefix);
          await redis.quit();
        },
      };
    },
  });
}
if (kinds.some((kind) => kind.name === 'PostgresStore')) {
  backends.push({
    name: 'PostgreSQL',
    make() {
      const schema = `bgrs_bull_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
      return {
        options: { backend: 'postgres', connection: { connectionString: POSTGRES_URL, schema, migrate: true, max: 5 } },
        async drop() {
          const { default: pg } = await import('pg');
          const pool = new pg.Pool({ connectionString: POSTGRES_URL });
          await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
          await pool.end();
        },
      };
    },
  });
}

for (const kind of kinds)
  for (const backend of backends) {
    describe(`queue mode on BullMQ (${backend.name}), ${kind.name}`, () => {
      forEachExpress((express) => {
        let store: Store;
        let background: BgrsMiddleware;
        let server: Running;
        let worker: ReturnType<BgrsMiddleware['work']> | undefined;
        const queueName = `q-${randomUUID()}`;
        const queue = backend.make();
        const state: App = { runs: [], gates: new Map(), aborted: [] };
        const redis = new Redis(REDIS_URL);

        before(async () => {
          store = await kind.create();
          background = bgrs({ store, executor: bullmq({ name: queueName, ...queue.options }), lease: 1000 });
          const app = buildApp(express, background, state);
          server = await listen(app);
          worker = background.work(app, { concurrency: 4 });
        });

        after(async () => {
          await worker?.close();
          await background.close();
          await server.close();
          await kind.destroy(store);
          await queue.drop();
          await redis.quit();
        });

        it('acks 202 with the job queued, and a worker replays it through the app: status, progress, result', async () => {
          const ack = await fetch(`${server.url}${detached('/report?n=7')}`);
          assert.equal(ack.status, 202);
          const doc = (await ack.json()) as JobDoc;
          assert.equal(doc.status, 'queued', 'recorded queued: it waits in the queue');
          const job = await waitForJob(server.url, ack.headers.get('location')!);
          assert.equal(job.status, 'completed', JSON.stringify(job.error));
          assert.equal(job.progress, 100);
          const result = await fetch(`${server.url}${ack.headers.get('location')}/result`);
          assert.equal(result.headers.get('content-type'), 'text/csv; charset=utf-8');
          assert.equal(await result.text(), 'a,b\n7,2\n');
        });

        it('carries a body a parser read before bgrs, and the request headers', async () => {
          const ack = await fetch(`${server.url}${detached('/echo')}`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'x-user': 'ann' },
            body: JSON.stringify({ order: [1, 2, 3], note: 'ünïcode' }),
          });
          assert.equal(ack.status, 202);
          const location = ack.headers.get('location')!;
          assert.equal((await waitForJob(server.url, location)).status, 'completed');
          assert.deepEqual(await (await fetch(`${server.url}${location}/result`)).json(), { got: { order: [1, 2, 3], note: 'ünïcode' }, user: 'ann' });
        });

        it('carries a raw body byte for byte (every byte value, 1 MiB)', async () => {
          const body = Buffer.alloc(1024 * 1024);
          for (let i = 0; i < body.length; i++) body[i] = i % 256;
          const ack = await fetch(`${server.url}${detached('/raw')}`, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body });
          assert.equal(ack.status, 202);
          const location = ack.headers.get('location')!;
          assert.equal((await waitForJob(server.url, location)).status, 'completed');
          const result = Buffer.from(await (await fetch(`${server.url}${location}/result`)).arrayBuffer());
          assert.ok(result.equals(body), 'the replayed body is the one sent');
        });

        it('cancels a running job from the web side: the worker aborts its signal within a second', async () => {
          const gate = randomUUID();
          const ack = await fetch(`${server.url}${detached(`/block?gate=${gate}`)}`);
          const location = ack.headers.get('location')!;
          await until('the job runs', async () => ((await jobOf(server.url, location)).status === 'running' ? true : undefined));
          const started = Date.now();
          const cancel = await fetch(`${server.url}${location}/cancel`, { method: 'POST' });
          assert.equal(cancel.status, 202);
          await until('the handler hears the abort', () => (state.aborted.includes(gate) ? true : undefined), 3000);
          assert.ok(Date.now() - started < 1500, `aborted after ${Date.now() - started} ms`);
          assert.equal((await waitForJob(server.url, location)).status, 'cancelled');
        });

        it('fences a run that another worker restarted: its late writes and its end are refused, and it stops', async () => {
          const gate = randomUUID();
          const ack = await fetch(`${server.url}${detached(`/partial?gate=${gate}`)}`);
          const location = ack.headers.get('location')!;
          const { id } = (await ack.json()) as JobDoc;
          await until('the first part is written', () => (state.gates.has(gate) ? true : undefined));
          // What another worker does when it finds this run's lease lapsed (this run was alive but late).
          const now = Date.now();
          const restarted = await store.restartJob!(id, {
            startedAt: new Date(now).toISOString(),
            leaseUntil: new Date(now + 60_000).toISOString(),
            ifLeaseExpiredBy: new Date(now + 3_600_000).toISOString(),
          });
          assert.equal(restarted?.attempt, 2);
          state.gates.get(gate)!();
          await sleep(300);
          const job = await jobOf(server.url, location);
          assert.equal(job.status, 'running', `the stale run did not end attempt 2: ${JSON.stringify(job)}`);
          assert.equal(job.attempt, 2);
          assert.equal(job.response, null);
          const chunks: Buffer[] = [];
          for await (const chunk of (await store.readResult(id)) ?? []) chunks.push(Buffer.from(chunk));
          assert.equal(Buffer.concat(chunks).length, 0, 'no byte of the stale run in the result');
          assert.equal((await fetch(`${server.url}${location}/cancel`, { method: 'POST' })).status, 202);
        });

        it('runs a keyed detach once: a retry while it runs re-attaches to its job, and once it ended the worker has completed the key and retries replay it', async () => {
          const key = randomUUID();
          const gate = randomUUID();
          const send = (path: string) =>
            fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': key }, body: '{"n":1}' });
          const ack = await send(detached(`/keyed?gate=${gate}`));
          assert.equal(ack.status, 202);
          const { id } = (await ack.json()) as JobDoc;
          await until('the worker runs it', () => (state.gates.has(gate) ? true : undefined));
          const again = await send(detached(`/keyed?gate=${gate}`));
          assert.equal(again.status, 202, 'a retry while it runs re-attaches');
          assert.equal(((await again.json()) as JobDoc).id, id, 'to the same job');
          const differs = await fetch(`${server.url}${detached(`/keyed?gate=${gate}`)}`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'idempotency-key': key },
            body: '{"n":2}',
          });
          assert.equal(differs.status, 422, 'the same key with another body is refused');
          state.gates.get(gate)!();
          assert.equal((await waitForJob(server.url, `/bgrs/${id}`)).status, 'completed');
          // The worker completed the key as the job ended: the record says done, for this job.
          const name = recordKey(null, 'POST', `/keyed?gate=${gate}`, key);
          const record = await until('the key is completed', async () => {
            const claim = await store.claimIdempotencyKey!(name, {
              fingerprint: 'x',
              jobId: randomUUID(),
              state: 'running',
              leaseUntil: 0,
              expiresAt: Date.now() + 60_000,
            });
            assert.equal(claim.won, false, 'the key is still on record');
            return !claim.won && claim.record.state === 'done' ? claim.record : undefined;
          });
          assert.equal(record.jobId, id);
          const replayed = await send(detached(`/keyed?gate=${gate}`));
          assert.equal(replayed.status, 200, 'a detached retry gets the finished job');
          assert.equal(replayed.headers.get('idempotent-replayed'), 'true');
          assert.equal(((await replayed.json()) as JobDoc).id, id);
          const sync = await send(`/keyed?gate=${gate}`);
          assert.equal(sync.status, 200);
          assert.equal(sync.headers.get('idempotent-replayed'), 'true');
          assert.equal(await sync.text(), `unblocked ${gate}`, 'a synchronous retry replays the stored response');
          assert.equal(state.runs.filter((run) => run === `block:${gate}`).length, 1, 'the handler ran once');
        });

        it("keeps a route's timeout in queue mode: the worker ends the job failed timeout", async () => {
          const gate = randomUUID();
          const ack = await fetch(`${server.url}${detached(`/slow?gate=${gate}`)}`);
          assert.equal(ack.status, 202);
          const job = await waitForJob(server.url, ack.headers.get('location')!);
          assert.equal(job.status, 'failed');
          assert.equal(job.error?.type, 'timeout', JSON.stringify(job.error));
        });
      });
    });

    describe(`queue mode, web and worker apart, BullMQ on ${backend.name}, ${kind.name}`, () => {
      forEachExpress((express) => {
        const state: App = { runs: [], gates: new Map(), aborted: [] };
        const queueName = `q-${randomUUID()}`;
        const queue = backend.make();
        const redis = new Redis(REDIS_URL);
        let store: Store;
        let web: BgrsMiddleware;
        let server: Running;

        before(async () => {
          store = await kind.create();
          web = bgrs({ store, executor: bullmq({ name: queueName, ...queue.options }), lease: 1000 });
          server = await listen(buildApp(express, web, state));
        });

        after(async () => {
          await web.close();
          await server.close();
          await kind.destroy(store);
          await queue.drop();
          await redis.quit();
        });

        it('keeps acked jobs queued while no worker runs (no lease lapses), and a worker started later runs each once', async () => {
          const acks = await Promise.all(Array.from({ length: 5 }, (_, i) => fetch(`${server.url}${detached(`/report?n=${i}`)}`)));
          const locations = acks.map((ack) => {
            assert.equal(ack.status, 202);
            return ack.headers.get('location')!;
          });
          // Longer than the lease: a queued job waits in the queue, not on a lease of ours.
          await sleep(1500);
          for (const location of locations) assert.equal((await jobOf(server.url, location)).status, 'queued');
          assert.equal(state.runs.length, 0);
          // A worker of its own: another bgrs instance on the same store and queue, as another process would be.
          const workerSide = bgrs({ store, executor: bullmq({ name: queueName, ...queue.options }), lease: 1000 });
          const worker = workerSide.work(buildApp(express, workerSide, state), { concurrency: 2 });
          try {
            for (const [i, location] of locations.entries()) {
              const job = await waitForJob(server.url, location);
              assert.equal(job.status, 'completed');
              assert.equal(await (await fetch(`${server.url}${location}/result`)).text(), `a,b\n${i},2\n`);
            }
            assert.equal(state.runs.filter((run) => run === 'report').length, 5, 'each job ran once');
          } finally {
            await worker.close();
            await workerSide.close();
          }
        });

        it('hands a job recorded queued whose hand-over was lost (its web died in between) to the queue again, and it runs once', async () => {
          const id = randomUUID();
          const envelope = {
            method: 'GET',
            url: '/report?n=3',
            rawHeaders: ['Host', '127.0.0.1'],
            body: null,
            bodyConsumed: false,
            contentLength: undefined,
            remoteAddress: '127.0.0.1',
            remotePort: 50000,
            remoteFamily: 'IPv4',
            encrypted: false,
          };
          // What a web process killed between the two steps leaves: the record, and nothing in the queue.
          await store.createJob(newJob({ id, method: 'GET', url: '/report?n=3', owner: null, status: 'queued' }), encodeRequest({ envelope, rerun: true }));
          const before = state.runs.length;
          const workerSide = bgrs({ store, executor: bullmq({ name: queueName, ...queue.options, recoverInterval: 100 }), lease: 1000, storeTimeout: 100 });
          const worker = workerSide.work(buildApp(express, workerSide, state));
          try {
            const job = await waitForJob(server.url, `/bgrs/${id}`);
            assert.equal(job.status, 'completed');
            assert.equal(await (await fetch(`${server.url}/bgrs/${id}/result`)).text(), 'a,b\n3,2\n');
            // Later sweeps find it no longer queued: it is not run again.
            await sleep(400);
            assert.equal(state.runs.length - before, 1, 'ran once');
          } finally {
            await worker.close();
            await workerSide.close();
          }
        });

        it('cancels a job that waits in the queue: the worker that starts later never runs it', async () => {
          const gate = randomUUID();
          const ack = await fetch(`${server.url}${detached(`/block?gate=${gate}`)}`);
          const location = ack.headers.get('location')!;
          const cancel = await fetch(`${server.url}${location}/cancel`, { method: 'POST' });
          assert.equal(cancel.status, 202);
          assert.equal(((await cancel.json()) as JobDoc).status, 'cancelled');
          const workerSide = bgrs({ store, executor: bullmq({ name: queueName, ...queue.options }), lease: 1000 });
          const worker = workerSide.work(buildApp(express, workerSide, state));
          try {
            // A later job runs: by then the worker has seen (and skipped) the cancelled one.
            const next = await fetch(`${server.url}${detached('/report?n=9')}`);
            assert.equal((await waitForJob(server.url, next.headers.get('location')!)).status, 'completed');
            assert.ok(!state.runs.includes(`block:${gate}`), 'the cancelled job never ran');
            assert.equal((await jobOf(server.url, location)).status, 'cancelled');
          } finally {
            await worker.close();
            await workerSide.close();
          }
        });

        it('worker.close({ grace }) lets a running job finish within grace; then a GET goes back to the queue (another worker runs it as attempt 2) and a POST fails shutdown', async () => {
          const workerSide = bgrs({ store, executor: bullmq({ name: queueName, ...queue.options }), lease: 1000 });
          const worker = workerSide.work(buildApp(express, workerSide, state));
          const [quick, again, once] = [randomUUID(), randomUUID(), randomUUID()];
          const acks = await Promise.all([
            fetch(`${server.url}${detached(`/block?gate=${quick}`)}`),
            fetch(`${server.url}${detached(`/block?gate=${again}`)}`),
            fetch(`${server.url}${detached(`/block?gate=${once}`)}`, { method: 'POST' }),
          ]);
          const [lQuick, lAgain, lOnce] = acks.map((ack) => ack.headers.get('location')!) as [string, string, string];
          await until('all three run', async () => {
            const docs = await Promise.all([lQuick, lAgain, lOnce].map((location) => jobOf(server.url, location)));
            return docs.every((doc) => doc.status === 'running') ? true : undefined;
          });
          const closing = worker.close({ grace: 300 });
          state.gates.get(quick)!();
          await closing;
          await workerSide.close();
          assert.equal((await jobOf(server.url, lQuick)).status, 'completed', 'finished within grace');
          const post = await jobOf(server.url, lOnce);
          assert.equal(post.status, 'failed', 'a POST is not run again');
          assert.equal(post.error?.type, 'shutdown');
          assert.equal((await jobOf(server.url, lAgain)).status, 'running', 'the GET waits for another worker');
          state.gates.delete(again);
          const nextSide = bgrs({ store, executor: bullmq({ name: queueName, ...queue.options }), lease: 1000 });
          const next = nextSide.work(buildApp(express, nextSide, state));
          try {
            const release = await until('the GET runs again', () => state.gates.get(again));
            release();
            const job = await waitForJob(server.url, lAgain);
            assert.equal(job.status, 'completed');
            assert.equal(job.attempt, 2);
            assert.equal(await (await fetch(`${server.url}${lAgain}/result`)).text(), `unblocked ${again}`);
            assert.equal(state.runs.filter((run) => run === `block:${again}`).length, 2, 'the GET ran twice');
            assert.equal(state.runs.filter((run) => run === `block:${once}`).length, 1, 'the POST ran once');
          } finally {
            await next.close();
            await nextSide.close();
          }
        });
      });
    });
  }

describe('queue mode: the queue is away', () => {
  it('records the job failed and answers 503 with Retry-After', async () => {
    const kind: StoreKind | undefined = kinds[0];
    if (!kind) return;
    const store = await kind.create();
    // Nothing listens on port 1: BullMQ's add never gets an answer.
    const background = bgrs({
      store,
      executor: bullmq({ name: `q-${randomUUID()}`, connection: { host: '127.0.0.1', port: 1 } }),
      storeTimeout: 300,
      owner: (req) => req.get('x-user'),
    });
    const { default: express } = await import('express');
    const app = express();
    app.use(background);
    app.get('/report', (_req, res) => res.send('never'));
    const server = await listen(app);
    try {
      const res = await fetch(`${server.url}${detached('/report')}`, { headers: { 'x-user': 'ann' } });
      assert.equal(res.status, 503);
      assert.equal(((await res.json()) as { type: string }).type, 'urn:express-bgrs:problem:queue-unavailable');
      assert.equal(res.headers.get('retry-after'), '2');
      const list = await (await fetch(`${server.url}/bgrs?status=failed`, { headers: { 'x-user': 'ann' } })).json();
      const failed = (list as { items: JobDoc[] }).items;
      assert.equal(failed.length, 1, 'the job is recorded failed, not left queued');
      assert.equal(failed[0]!.error?.type, 'queue_unavailable');
    } finally {
      await background.close();
      await server.close();
      await kind.destroy(store);
    }
  });
});
