// The job routes: status document, details paging, result states, uniform 404s, owners, store outages.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Request } from 'express';
import { bgrs, MemoryStore, type Store } from '../src/index.js';
import { detachAndWait, forEachExpress, type JobDoc, listen, type Running, sleep, waitForJob } from './helpers.js';

/** A MemoryStore whose every call can be made to fail, as a store whose server went away. */
class SwitchableStore extends MemoryStore {
  down = false;
  constructor() {
    super();
    for (const method of ['createJob', 'getJob', 'readLogs', 'readResult'] as const) {
      const original = (this[method] as (...args: unknown[]) => Promise<unknown>).bind(this);
      (this as Record<string, unknown>)[method] = (...args: unknown[]) => (this.down ? Promise.reject(new Error('connection refused')) : original(...args));
    }
  }
}

const owner = (req: Request): string | null => (req.headers['x-user'] as string | undefined) ?? null;

forEachExpress((express) => {
  let server: Running;
  const store = new SwitchableStore();
  let release: () => void = () => undefined;

  before(async () => {
    const app = express();
    app.use(
      bgrs({
        store,
        owner,
        authorize: (req, job, action) => req.headers['x-user'] === 'admin' || (action !== 'list-all' && owner(req) === job?.owner),
        timeout: 500,
      }),
    );
    app.get('/logs', (req, res) => {
      for (let i = 1; i <= 25; i++) req.bgrs.log(`line ${i}`, i % 10 === 0 ? 'warning' : i === 7 ? 'error' : 'info');
      res.send('done');
    });
    app.get('/slow', async (_req, res) => {
      await new Promise<void>((resolve) => (release = resolve));
      res.send('finally');
    });
    app.get('/hang', () => undefined);
    app.get('/plain', (_req, res) => res.json({ plain: true }));
    server = await listen(app);
  });
  after(() => server.close());

  it('serves the job document with no-store, and Retry-After only while running', async () => {
    const ack = await fetch(`${server.url}/slow?bgrs=yes`, { headers: { 'x-user': 'ann' } });
    assert.equal(ack.status, 202);
    assert.equal(ack.headers.get('cache-control'), 'no-store');
    assert.equal(ack.headers.get('retry-after'), '2');
    assert.equal(ack.headers.get('vary'), 'Prefer');
    const location = ack.headers.get('location')!;
    assert.match(location, /^\/bgrs\/[0-9a-f-]{36}$/);
    const running = await fetch(server.url + location, { headers: { 'x-user': 'ann' } });
    assert.equal(running.status, 200);
    assert.equal(running.headers.get('retry-after'), '2');
    assert.equal(running.headers.get('cache-control'), 'no-store');
    const doc = (await running.json()) as JobDoc;
    assert.equal(doc.status, 'running');
    assert.equal('owner' in doc, false, 'the owner is not shown to clients');
    const pending = await fetch(`${server.url}${location}/result`, { headers: { 'x-user': 'ann' } });
    assert.equal(pending.status, 202);
    assert.equal(pending.headers.get('retry-after'), '2');
    assert.equal(((await pending.json()) as JobDoc).id, doc.id);
    release();
    const done = await waitForJob(server.url, location, 5000, { headers: { 'x-user': 'ann' } });
    assert.equal(done.status, 'completed');
    const final = await fetch(server.url + location, { headers: { 'x-user': 'ann' } });
    assert.equal(final.headers.get('retry-after'), null);
  });

  it('answers the same 404 bytes for unknown, malformed and foreign ids', async () => {
    const { location } = await detachAndWait(server.url, '/plain?bgrs=yes', { headers: { 'x-user': 'ann' } });
    const id = location.split('/').pop()!;
    const probes = [
      '/bgrs/00000000-0000-4000-8000-000000000000',
      '/bgrs/not-a-uuid',
      '/bgrs/%E0%A4%A',
      `/bgrs/${id.toUpperCase()}`,
      `/bgrs/${id}x`,
      `/bgrs/${'9'.repeat(5000)}`,
    ];
    const bodies = new Set<string>();
    for (const path of probes) {
      for (const suffix of ['', '/details', '/result']) {
        const res = await fetch(server.url + path + suffix, { headers: { 'x-user': 'ann' } });
        assert.equal(res.status, 404, path + suffix);
        assert.equal(res.headers.get('content-type'), 'application/problem+json; charset=utf-8');
        bodies.add(await res.text());
      }
    }
    for (const suffix of ['', '/details', '/result']) {
      const foreign = await fetch(server.url + location + suffix, { headers: { 'x-user': 'bob' } });
      assert.equal(foreign.status, 404);
      bodies.add(await foreign.text());
      const anonymous = await fetch(server.url + location + suffix);
      assert.equal(anonymous.status, 404);
      bodies.add(await anonymous.text());
    }
    assert.equal(bodies.size, 1, `404 bodies differ: ${[...bodies].join(' | ')}`);
    const problem = JSON.parse([...bodies][0]!) as Record<string, unknown>;
    assert.equal(problem.type, 'urn:express-bgrs:problem:not-found');
    assert.equal(problem.status, 404);
    assert.equal(problem.error, 'Not Found');
    const admin = await fetch(server.url + location, { headers: { 'x-user': 'admin' } });
    assert.equal(admin.status, 200, 'authorize() lets an admin read any job');
  });

  it('pages log lines oldest first with a next link, and counts warnings and errors', async () => {
    const { job, location } = await detachAndWait(server.url, '/logs?bgrs=yes');
    assert.equal(job.warnings, 2);
    assert.equal(job.errors, 1);
    const first = (await (await fetch(`${server.url}${location}/details?limit=10`)).json()) as {
      items: Array<{ seq: number; level: string; message: string; at: string }>;
      next: string | null;
    };
    assert.deepEqual(
      first.items.map((line) => line.seq),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    );
    assert.equal(first.items[6]!.level, 'error');
    assert.equal(first.items[9]!.level, 'warning');
    assert.ok(!Number.isNaN(Date.parse(first.items[0]!.at)));
    assert.equal(first.next, `${location}/details?after=10&limit=10`);
    const second = (await (await fetch(server.url + first.next!)).json()) as { items: Array<{ seq: number }>; next: string | null };
    assert.equal(second.items[0]!.seq, 11);
    const last = (await (await fetch(`${server.url}${location}/details?after=20`)).json()) as { items: Array<{ message: string }>; next: string | null };
    assert.deepEqual(
      last.items.map((line) => line.message),
      ['line 21', 'line 22', 'line 23', 'line 24', 'line 25'],
    );
    assert.equal(last.next, null);
    const all = (await (await fetch(`${server.url}${location}/details`)).json()) as { items: unknown[] };
    assert.equal(all.items.length, 25);
  });

  it('rejects bad paging values with a 400 problem', async () => {
    const { location } = await detachAndWait(server.url, '/logs?bgrs=yes');
    for (const query of ['after=-1', 'after=abc', 'limit=0', 'limit=1001', 'limit=2.5', 'after=1&after=2', 'limit=']) {
      const res = await fetch(`${server.url}${location}/details?${query}`);
      assert.equal(res.status, 400, query);
      assert.equal(res.headers.get('content-type'), 'application/problem+json; charset=utf-8');
      const problem = (await res.json()) as { type: string };
      assert.equal(problem.type, 'urn:express-bgrs:problem:invalid-parameter');
    }
  });

  it('answers 409 no-result for a job that ended before its handler answered', async () => {
    const { job, result } = await detachAndWait(server.url, '/hang?bgrs=yes');
    assert.equal(job.status, 'failed');
    assert.equal(job.error?.type, 'timeout');
    assert.equal(result.status, 409);
    assert.equal(((await result.json()) as { type: string }).type, 'urn:express-bgrs:problem:no-result');
  });

  it('never detaches a job route, and refuses other methods with 405', async () => {
    const { location } = await detachAndWait(server.url, '/plain?bgrs=yes');
    const read = await fetch(`${server.url}${location}?bgrs=yes`);
    assert.equal(read.status, 200);
    const post = await fetch(server.url + location, { method: 'POST' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD, DELETE');
    const head = await fetch(`${server.url}${location}/result`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(JSON.stringify({ plain: true }).length));
  });

  describe('when the store is down', () => {
    it('answers detaches and reads with 503 problem+json and Retry-After, then recovers', async () => {
      const { location } = await detachAndWait(server.url, '/plain?bgrs=yes');
      store.down = true;
      try {
        for (const [path, label] of [
          ['/plain?bgrs=yes', 'detach'],
          [location, 'status'],
          [`${location}/details`, 'details'],
          [`${location}/result`, 'result'],
        ] as const) {
          const res = await fetch(server.url + path);
          assert.equal(res.status, 503, label);
          assert.equal(res.headers.get('retry-after'), '2', label);
          assert.equal(((await res.json()) as { type: string }).type, 'urn:express-bgrs:problem:store-unavailable', label);
        }
        const plain = await fetch(`${server.url}/plain`);
        assert.equal(plain.status, 200, 'requests that are not detached do not touch the store');
      } finally {
        store.down = false;
      }
      await sleep(10);
      assert.equal((await fetch(server.url + location)).status, 200);
    });
  });
});

describe('a store that is not a Store', () => {
  it('is refused at setup with the missing method named', () => {
    assert.throws(
      () => bgrs({ store: {} as Store }),
      /`store` must be a Store; it lacks `createJob\(\)`, `getJob\(\)`, .*`startJob\(\)`, `renewLeases\(\)`, `listJobs\(\)`/,
    );
    const partial = {
      ...Object.fromEntries(
        [
          'createJob',
          'getJob',
          'updateProgress',
          'finishJob',
          'appendLog',
          'readLogs',
          'appendResult',
          'readResult',
          'deleteJob',
          'claimIdempotencyKey',
          'renewIdempotencyKey',
          'completeIdempotencyKey',
          'releaseIdempotencyKey',
        ].map((name) => [name, async () => null]),
      ),
    };
    // The three job-control methods were once left unchecked: each is named.
    assert.throws(() => bgrs({ store: partial as unknown as Store }), /it lacks `startJob\(\)`, `renewLeases\(\)`, `listJobs\(\)` \(README/);
  });
});

describe('a store that hangs or fails mid-job', () => {
  /** A MemoryStore whose calls can be made to never answer, as a client queueing commands offline. */
  class StallingStore extends MemoryStore {
    stalled = false;
    failResults = false;
    appendCalls = 0;
    constructor() {
      super();
      for (const method of ['createJob', 'getJob'] as const) {
        const original = (this[method] as (...args: unknown[]) => Promise<unknown>).bind(this);
        (this as Record<string, unknown>)[method] = (...args: unknown[]) => (this.stalled ? new Promise(() => undefined) : original(...args));
      }
      const append = this.appendResult.bind(this);
      this.appendResult = (id, chunk, attempt, offset) => {
        this.appendCalls++;
        return this.failResults ? Promise.reject(new Error('ECONNRESET')) : append(id, chunk, attempt, offset);
      };
    }
  }

  it('answers 503 within storeTimeout instead of hanging', async () => {
    const { default: express } = await import('express');
    const store = new StallingStore();
    const app = express();
    app.use(bgrs({ store, storeTimeout: 300 }));
    app.get('/x', (_req, res) => res.send('x'));
    const server = await listen(app);
    try {
      const { location } = await detachAndWait(server.url, '/x?bgrs=yes');
      store.stalled = true;
      for (const path of ['/x?bgrs=yes', location]) {
        const started = Date.now();
        const res = await fetch(server.url + path);
        assert.equal(res.status, 503, path);
        assert.equal(res.headers.get('retry-after'), '2');
        assert.ok(Date.now() - started < 2000, `answered in ${Date.now() - started} ms`);
      }
      assert.equal((await fetch(`${server.url}/x`)).status, 200, 'requests that are not detached are unaffected');
      store.stalled = false;
      assert.equal((await fetch(server.url + location)).status, 200, 'recovers by itself');
    } finally {
      await server.close();
    }
  });

  it('retries a result write that fails for one lease, then fails the job store_unavailable', async () => {
    const { default: express } = await import('express');
    const store = new StallingStore();
    const app = express();
    // A lease of 1 s: the failing write is retried (backing off from 100 ms) for one second.
    app.use(bgrs({ store, lease: 1000 }));
    let aborted: string | undefined;
    app.get('/big', async (req, res) => {
      req.bgrs.signal.addEventListener('abort', () => (aborted = (req.bgrs.signal.reason as { code: string }).code));
      res.write('first chunk');
      await sleep(100);
      res.end('second chunk');
    });
    const server = await listen(app);
    try {
      store.failResults = true;
      const ack = await fetch(`${server.url}/big?bgrs=yes`);
      const job = await waitForJob(server.url, ack.headers.get('location')!);
      assert.equal(job.status, 'failed');
      assert.equal(job.error?.type, 'store_unavailable');
      assert.equal(aborted, 'BGRS_STORE_UNAVAILABLE');
      assert.ok(store.appendCalls >= 3 && store.appendCalls <= 8, `the write was made ${store.appendCalls} times in one lease`);
    } finally {
      await server.close();
    }
  });
});
