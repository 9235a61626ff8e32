// Regressions a third review found (store notifications, takeJob, resumable appends, keyed detach in queue
// mode): each test states its promise. Tests marked todo reproduce a bug that is not fixed yet.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import express from 'express';
import { Redis, type RedisOptions } from 'ioredis';
import { bullmq } from '../src/executors/bullmq.js';
import { type BgrsMiddleware, bgrs, type Store } from '../src/index.js';
import { endingNow, newJob } from '../src/model/job.js';
import { RedisStore } from '../src/stores/redis.js';
import { withFaults } from '../src/testing/faults.js';
import { detached, type JobDoc, listen, type Running, sleep, until, waitForJob } from './helpers.js';
import { REDIS_URL } from './services.js';
import { dropRedisPrefix } from './stores.js';

const { hostname, port } = new URL(REDIS_URL);
const connection = { host: hostname, port: Number(port) };

/** Resolves with `true` if `promise` settles within `ms`, else `false` (it keeps running). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const result = await Promise.race([promise.then(() => true), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)))]);
  clearTimeout(timer);
  return result;
}

describe('queue worker: close() while a takeJob is on its way', () => {
  let client: Redis;
  let store: RedisStore;
  const prefix = `bgrs-rr3-${randomUUID()}:`;
  const bullPrefix = `bgrs-rr3-bull-${randomUUID()}`;
  let server: Running;
  let background: BgrsMiddleware;
  let releaseTake!: () => void;
  let takeCalled!: () => void;
  const taking = new Promise<void>((resolve) => (takeCalled = resolve));
  const takeGate = new Promise<void>((resolve) => (releaseTake = resolve));
  let releaseHandler: (() => void) | undefined;
  let app: ReturnType<typeof express>;

  before(async () => {
    client = new Redis(REDIS_URL);
    store = new RedisStore({ client, prefix });
    // The store as it is, except that takeJob lands only once the test says so (a slow round trip).
    const slow = Object.create(store) as Store;
    slow.takeJob = async (id, start) => {
      takeCalled();
      await takeGate;
      return store.takeJob(id, start);
    };
    background = bgrs({ store: slow, executor: bullmq({ name: `q-${randomUUID()}`, connection, prefix: bullPrefix }), lease: 2000 });
    app = express();
    app.use(background);
    app.get('/block', async (req, res) => {
      await new Promise<void>((resolve) => {
        releaseHandler = resolve;
        req.bgrs.signal.addEventListener('abort', () => resolve(), { once: true });
      });
      if (!res.headersSent && !res.destroyed) res.send('done');
    });
    server = await listen(app);
  });

  after(async () => {
    releaseHandler?.();
    await background.close();
    await server.close();
    await dropRedisPrefix(client, prefix);
    await dropRedisPrefix(client, bullPrefix);
    await client.quit();
  });

  // Promise: worker.close({ grace: 0 }) ends (or hands back) every job the worker runs and resolves promptly,
  // also a job whose take was on its way when close() began.
  it('resolves promptly and ends the job that the pending take started', async () => {
    const worker = background.work(app, { concurrency: 1 });
    const ack = await fetch(`${server.url}${detached('/block')}`);
    assert.equal(ack.status, 202);
    const location = ack.headers.get('location')!;
    await taking;
    const closing = worker.close();
    await sleep(50);
    releaseTake();
    try {
      assert.ok(await settlesWithin(closing, 3000), 'worker.close() still pending 3 s after the take landed');
      // A GET may run again: handed back, as close() hands back its running jobs (its lease made to
      // lapse, so the next worker restarts it at once), and its handler never ran here.
      const job = (await store.getJob(location.split('/').pop()!))!;
      assert.equal(job.status, 'running');
      assert.ok(job.leaseUntil !== null && Date.parse(job.leaseUntil) <= Date.now(), `its lease lapsed: ${job.leaseUntil}`);
      assert.equal(releaseHandler, undefined, 'the handler never ran');
      // Another worker takes it and runs it.
      const next = background.work(app, { concurrency: 1 });
      try {
        await until('the next worker runs it', () => (releaseHandler !== undefined ? true : undefined));
        releaseHandler!();
        assert.equal((await waitForJob(server.url, location, 5000)).status, 'completed');
      } finally {
        await next.close();
      }
    } finally {
      releaseHandler?.();
      await closing;
    }
  });
});

describe('queue worker: a takeJob whose reply is lost (applied, then the call fails)', () => {
  let client: Redis;
  const prefix = `bgrs-rr3-${randomUUID()}:`;
  const bullPrefix = `bgrs-rr3-bull-${randomUUID()}`;
  let server: Running;
  let background: BgrsMiddleware;
  let worker: ReturnType<BgrsMiddleware['work']>;
  let runs = 0;
  let faulty: ReturnType<typeof withFaults>;

  before(async () => {
    client = new Redis(REDIS_URL);
    faulty = withFaults(new RedisStore({ client, prefix }));
    background = bgrs({
      store: faulty.store,
      executor: bullmq({ name: `q-${randomUUID()}`, connection, prefix: bullPrefix, attempts: 5, backoff: 300 }),
      lease: 1000,
    });
    const app = express();
    app.use(background);
    app.post('/order', (_req, res) => {
      runs++;
      res.status(201).json({ order: runs });
    });
    server = await listen(app);
    worker = background.work(app, { concurrency: 1 });
  });

  after(async () => {
    await worker.close();
    await background.close();
    await server.close();
    await dropRedisPrefix(client, prefix);
    await dropRedisPrefix(client, bullPrefix);
    await client.quit();
  });

  // Promise: a store hiccup at the take never loses an accepted job: it runs (once) and completes.
  it('runs the job once it is taken again', async () => {
    faulty.fail('takeJob', { commit: true });
    const ack = await fetch(`${server.url}${detached('/order')}`, { method: 'POST' });
    assert.equal(ack.status, 202);
    const job = await waitForJob(server.url, ack.headers.get('location')!, 15_000);
    assert.equal(faulty.injected.takeJob, 1, 'the fault was injected');
    assert.deepEqual([job.status, job.error?.type ?? null, runs], ['completed', null, 1]);
  });
});

/** One web process (a local bgrs) watching a job that "another process" (a second store) runs and ends. */
function remoteEndLatency(label: string, clientOptions: RedisOptions | undefined, todo?: string): void {
  describe(`store notifications reach a waiting client: ${label}`, () => {
    let web: Redis;
    let other: Redis;
    let plain: Redis;
    const prefix = `bgrs-rr3-${randomUUID()}:`;
    let background: BgrsMiddleware;
    let server: Running;
    let otherStore: RedisStore;

    before(async () => {
      web = new Redis(REDIS_URL, clientOptions ?? {});
      other = new Redis(REDIS_URL, clientOptions ?? {});
      plain = new Redis(REDIS_URL);
      // A client without an offline queue refuses commands until it is connected (README).
      await Promise.all([web, other].map((client) => (client.status === 'ready' ? undefined : new Promise((resolve) => client.once('ready', resolve)))));
      background = bgrs({ store: new RedisStore({ client: web, prefix }) });
      otherStore = new RedisStore({ client: other, prefix });
      const app = express();
      app.use(background);
      server = await listen(app);
    });

    after(async () => {
      await background.close();
      await server.close();
      await otherStore.close();
      const keyPrefix = (clientOptions as { keyPrefix?: string } | undefined)?.keyPrefix ?? '';
      await dropRedisPrefix(plain, keyPrefix + prefix);
      await Promise.all([web.quit(), other.quit(), plain.quit()]);
    });

    // Promise: GET /bgrs/:id?wait=N answers soon after another process ends the job (notification or poll),
    // not at the end of N seconds.
    it('answers ?wait=10 within 2 s of the end', { todo }, async () => {
      const id = randomUUID();
      // Running elsewhere, with a lease far ahead: no crash rule applies while we wait.
      const job = newJob({ id, method: 'GET', url: '/x', owner: null, status: 'running', leaseUntil: new Date(Date.now() + 600_000).toISOString() });
      await otherStore.createJob(job);
      // A first watcher opens the subscription; let it go live.
      await (await fetch(`${server.url}/bgrs/${id}?wait=1`)).arrayBuffer();
      const waiting = fetch(`${server.url}/bgrs/${id}?wait=10`);
      await sleep(1000);
      const ended = Date.now();
      await otherStore.finishJob(id, {
        status: 'completed',
        response: { status: 200, contentType: null, size: 0, headers: [] },
        error: null,
        ...endingNow(60_000),
      });
      const res = await waiting;
      const doc = (await res.json()) as JobDoc;
      const took = Date.now() - ended;
      assert.equal(doc.status, 'completed');
      assert.ok(took < 2000, `answered ${took} ms after the end`);
    });
  });
}

remoteEndLatency('a plain ioredis client', undefined);
remoteEndLatency('an ioredis client with keyPrefix', { keyPrefix: `kp-${randomUUID()}:` });
// The feed's own connection queues its subscribe: without that, a client made with
// enableOfflineQueue: false had its psubscribe refused at once, and watchers fell back to polling.
remoteEndLatency('an ioredis client with enableOfflineQueue: false', { enableOfflineQueue: false });

describe('queue mode, keyed detach: the worker could not record the end, but the handler answered', () => {
  let client: Redis;
  const prefix = `bgrs-rr3-${randomUUID()}:`;
  const bullPrefix = `bgrs-rr3-bull-${randomUUID()}`;
  let server: Running;
  let background: BgrsMiddleware;
  let worker: ReturnType<BgrsMiddleware['work']>;
  let runs = 0;
  let faulty: ReturnType<typeof withFaults>;

  before(async () => {
    client = new Redis(REDIS_URL);
    faulty = withFaults(new RedisStore({ client, prefix }));
    background = bgrs({
      store: faulty.store,
      executor: bullmq({ name: `q-${randomUUID()}`, connection, prefix: bullPrefix, lockDuration: 1000, stalledInterval: 500 }),
      lease: 1000,
    });
    const app = express();
    app.use(background);
    app.post('/pay', background.idempotency({ lease: 1000 }), (_req, res) => {
      runs++;
      res.status(201).json({ payment: runs });
    });
    server = await listen(app);
    worker = background.work(app, { concurrency: 1 });
  });

  after(async () => {
    await worker.close();
    await background.close();
    await server.close();
    await dropRedisPrefix(client, prefix);
    await dropRedisPrefix(client, bullPrefix);
    await client.quit();
  });

  // Promise (as without a queue, where the guard completes the key whenever the handler answered):
  // one key, one execution, even when the job's end could not be recorded.
  // Not reproduced in review: within 5 s the job was still `running` (its lease still renewed), so
  // the retry re-attached. The suspected path (keyEnd returned on job === null before `answered`)
  // needs the job later recorded interrupted; kept as a guard of the promise.
  it('a retry with the key does not run the handler again', async () => {
    const key = `k-${randomUUID()}`;
    // The end's store writes fail for longer than JobEnd retries them (one lease), once they begin.
    faulty.fail('finishJob', { forMs: 1800, commit: false, fromFirstCall: true });
    const first = await fetch(`${server.url}${detached('/pay')}`, { method: 'POST', headers: { 'idempotency-key': key } });
    assert.equal(first.status, 202);
    await until('the handler ran', () => (runs === 1 ? true : undefined));
    // JobEnd gives up after one lease; then the job's lease and the key's lapse.
    await sleep(5000);
    const retry = await fetch(`${server.url}${detached('/pay')}`, { method: 'POST', headers: { 'idempotency-key': key } });
    await retry.arrayBuffer();
    await sleep(1500);
    assert.equal(runs, 1, `the handler ran ${runs} times for one key (retry answered ${retry.status})`);
  });
});
