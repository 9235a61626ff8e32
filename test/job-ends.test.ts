// A job that ends before it starts (cancelled while queued, or shut down by close()) releases everything: its
// queue place, its owner's place, its Idempotency-Key, its waiting clients (?wait=, /events, a guarded sync
// client). Express 4 and 5 × every store, real HTTP; a child process checks that nothing keeps the process alive.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Request } from 'express';
import express5 from 'express';
import express4 from 'express4';
import type { BgrsMiddleware } from '../src/bgrs.js';
import { recordKey } from '../src/http/idempotency-key.js';
import { bgrs, type Store } from '../src/index.js';
import { type ExpressModule, forEachExpress, type JobDoc, listen, type Running, sleep, waitForJob } from './helpers.js';
import { type StoreKind, storeKinds } from './stores.js';

type Problem = { type: string; status: number; job?: { id: string; status: string | null; error: { type: string } | null } };
const problemCode = (body: unknown): string => (body as Problem).type.split(':').pop()!;
const ANN = { 'x-user': 'ann' };

type Sse = { event: string; data: JobDoc };

/** Reads a whole event stream; resolves its events once the server ends it. */
async function readEvents(res: Response): Promise<Sse[]> {
  assert.equal(res.status, 200);
  const text = await res.text();
  const events: Sse[] = [];
  for (const block of text.split('\n\n')) {
    const event = /^event: (.*)$/m.exec(block)?.[1];
    const data = /^data: (.*)$/m.exec(block)?.[1];
    if (event && data) events.push({ event, data: JSON.parse(data) as JobDoc });
  }
  return events;
}

/** Resolves `promise`, or fails after `ms`: a client that hangs is the bug these tests look for. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_resolve, reject) => (timer = setTimeout(() => reject(new Error(`${what} still waiting after ${ms} ms`)), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The app of these tests: one slot, a blocking route and a guarded POST that counts its runs. */
function buildApp(express: ExpressModule, background: BgrsMiddleware, runs: string[], gates: Map<string, () => void>) {
  const app = express();
  app.use(express.json());
  app.use(background);
  app.get('/block', async (req, res) => {
    await new Promise<void>((resolve) => gates.set(String(req.query.gate), resolve));
    if (!res.destroyed && !res.headersSent) res.send('unblocked');
  });
  app.post('/work', background.idempotency(), (req, res) => {
    runs.push(String(req.get('idempotency-key')));
    res.status(201).json({ ran: req.get('idempotency-key'), body: req.body });
  });
  return app;
}

const options = (store: Store) => ({
  store,
  concurrency: 1,
  maxQueued: 2,
  maxPerOwner: 3,
  owner: (req: Request) => (req.headers['x-user'] as string | undefined) ?? null,
});

/**
 * Whether the key's record is free in the store: a probe claim wins. The probe is released at once,
 * so the key stays free for the request that follows.
 */
async function keyIsFree(store: Store, owner: string, path: string, key: string): Promise<boolean> {
  const name = recordKey(`owner:${owner}`, 'POST', path, key);
  const now = Date.now();
  const probe = `probe-${randomUUID()}`;
  const claim = await store.claimIdempotencyKey!(name, {
    fingerprint: 'probe',
    jobId: probe,
    state: 'running',
    leaseUntil: now + 5000,
    expiresAt: now + 60_000,
  });
  if (claim.won) await store.releaseIdempotencyKey!(name, probe);
  return claim.won;
}

async function eventually(what: string, check: () => Promise<boolean>, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`${what}: not after ${ms} ms`);
    await sleep(20);
  }
}

/** Waits until `owner` has a queued job here (a guarded sync request's job has no 202 to tell its id). */
async function queuedJobOf(base: string, owner: Record<string, string>, not: string[] = []): Promise<JobDoc> {
  for (let i = 0; i < 300; i++) {
    const page = (await (await fetch(`${base}/bgrs?status=queued`, { headers: owner })).json()) as { items: JobDoc[] };
    const found = page.items.find((job) => !not.includes(job.id));
    if (found) return found;
    await sleep(10);
  }
  throw new Error('no queued job appeared');
}

/** Starts watchers of one job: a ?wait= poll, a /result with Prefer: wait, and an /events stream. */
function watch(base: string, job: JobDoc): { doc: Promise<JobDoc>; result: Promise<Response>; events: Promise<Sse[]> } {
  const doc = fetch(`${base}${job.links.self}?wait=30`, { headers: ANN }).then((res) => res.json() as Promise<JobDoc>);
  const result = fetch(`${base}${job.links.result}`, { headers: { ...ANN, prefer: 'wait=30' } });
  const events = fetch(`${base}${job.links.events}`, { headers: ANN }).then(readEvents);
  // Failures surface where they are awaited; never as unhandled rejections if a test ends early.
  for (const p of [doc, result, events]) (p as Promise<unknown>).catch(() => undefined);
  return { doc, result, events };
}

async function checkWatchers(watchers: ReturnType<typeof watch>, status: string, errorType: string): Promise<void> {
  const doc = await within(5000, 'the ?wait= client', watchers.doc);
  assert.equal(doc.status, status);
  assert.equal(doc.error?.type, errorType);
  const result = await within(5000, 'the /result Prefer: wait client', watchers.result);
  assert.equal(result.status, 409);
  const problem = await result.json();
  assert.equal(problemCode(problem), 'no-result');
  const events = await within(5000, 'the /events subscriber', watchers.events);
  const end = events.at(-1)!;
  assert.equal(end.event, 'end', JSON.stringify(events.map((e) => e.event)));
  assert.equal(end.data.status, status);
  assert.equal(end.data.error?.type, errorType);
  assert.equal(events.filter((e) => e.event === 'end').length, 1);
}

/**
 * The child process: the whole story (queue, cancel, a guarded sync client, close), then everything
 * closed. It must then exit by itself; the parent measures how long that takes.
 */
async function child(kindName: string, expressName: string): Promise<void> {
  const kind = (await storeKinds()).find((k) => k.name === kindName)!;
  const express = expressName === 'Express 4' ? express4 : express5;
  const store = await kind.create();
  const background = bgrs(options(store));
  const runs: string[] = [];
  const gates = new Map<string, () => void>();
  const server = await listen(buildApp(express, background, runs, gates));
  const post = (path: string, key: string): Promise<Response> =>
    fetch(server.url + path, { method: 'POST', headers: { ...ANN, 'content-type': 'application/json', 'idempotency-key': key }, body: '{"v":1}' });
  assert.equal((await fetch(`${server.url}/block?bgrs=yes&gate=g`, { headers: ANN })).status, 202);
  const queued = (await (await post('/work?bgrs=yes', 'child-1')).json()) as JobDoc;
  assert.equal(queued.status, 'queued');
  const watchers = watch(server.url, queued);
  await sleep(100);
  assert.equal((await fetch(server.url + queued.links.cancel, { method: 'POST', headers: ANN })).status, 202);
  await checkWatchers(watchers, 'cancelled', 'cancelled');
  const sync = post('/work', 'child-2');
  const waiting = await queuedJobOf(server.url, ANN);
  const watchers2 = watch(server.url, waiting);
  await sleep(100);
  await background.close();
  assert.equal((await sync).status, 500);
  await checkWatchers(watchers2, 'failed', 'shutdown');
  gates.get('g')?.();
  await server.close();
  await kind.destroy(store);
  console.log('CHILD-DONE');
}

const childEnv = process.env.BGRS_JOB_ENDS_CHILD;
if (childEnv) {
  const [kindName, expressName] = childEnv.split('|') as [string, string];
  await child(kindName, expressName);
} else {
  for (const kind of await storeKinds()) describe(kind.name, () => forEachExpress((express, expressName) => tests(kind, express, expressName)));
}

function tests(kind: StoreKind, express: ExpressModule, expressName: string): void {
  describe('a queued job cancelled before it starts', () => {
    let server: Running;
    let store: Store;
    let background: BgrsMiddleware;
    const runs: string[] = [];
    const gates = new Map<string, () => void>();

    before(async () => {
      store = await kind.create();
      background = bgrs(options(store));
      server = await listen(buildApp(express, background, runs, gates));
    });
    after(async () => {
      for (const release of gates.values()) release();
      await background.close();
      await server.close();
      await kind.destroy(store);
    });

    const post = (path: string, key: string, body: unknown = { v: 1 }, headers: Record<string, string> = ANN): Promise<Response> =>
      fetch(server.url + path, {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify(body),
      });
    const block = async (gate: string): Promise<JobDoc> => {
      const ack = await fetch(`${server.url}/block?bgrs=yes&gate=${gate}`, { headers: ANN });
      assert.equal(ack.status, 202);
      const doc = (await ack.json()) as JobDoc;
      assert.equal(doc.status, 'running');
      for (let i = 0; i < 300 && !gates.has(gate); i++) await sleep(10);
      return doc;
    };
    const release = async (gate: string, blocker: JobDoc): Promise<void> => {
      gates.get(gate)!();
      assert.equal((await waitForJob(server.url, blocker.links.self, 10_000, { headers: ANN })).status, 'completed');
    };

    for (const how of ['POST /bgrs/:id/cancel', 'DELETE /bgrs/:id'] as const) {
      it(`${how}: cancelled, its watchers end, its places and its Idempotency-Key are free again`, async () => {
        const gate = `cancel-${randomUUID()}`;
        const key = `key-${randomUUID()}`;
        const blocker = await block(gate);
        const ack = await post('/work?bgrs=yes', key);
        assert.equal(ack.status, 202);
        const queued = (await ack.json()) as JobDoc;
        assert.equal(queued.status, 'queued');
        assert.equal(queued.position, 1);
        assert.equal((await post('/work?bgrs=yes', `other-${randomUUID()}`)).status, 202, 'a second queued job (maxQueued 2)');
        const full = await post('/work?bgrs=yes', `third-${randomUUID()}`, { v: 1 }, { 'x-user': 'bob' });
        assert.equal(full.status, 429, 'the queue is full');
        assert.equal(problemCode(await full.json()), 'queue-full');
        const watchers = watch(server.url, queued);
        await sleep(150);

        const cancel =
          how === 'DELETE /bgrs/:id'
            ? await fetch(server.url + queued.links.self, { method: 'DELETE', headers: ANN })
            : await fetch(server.url + queued.links.cancel, { method: 'POST', headers: ANN });
        assert.equal(cancel.status, 202);
        const cancelled = (await cancel.json()) as JobDoc;
        assert.equal(cancelled.status, 'cancelled');
        assert.equal(cancelled.error?.type, 'cancelled');
        await checkWatchers(watchers, 'cancelled', 'cancelled');
        const stored = await store.getJob(queued.id);
        assert.equal(stored?.status, 'cancelled');
        assert.equal(stored?.response, null);

        // The key had no response: it is released, not left to its lease.
        await eventually('the Idempotency-Key released', () => keyIsFree(store, 'ann', '/work', key));
        // Its queue place is free again: bob may queue now.
        const bob = await post('/work?bgrs=yes', `bob-${randomUUID()}`, { v: 1 }, { 'x-user': 'bob' });
        assert.equal(bob.status, 202, await bob.clone().text());
        // The same key, the same request: a new execution (a new job), not a replay of the cancel.
        const again = await post('/work?bgrs=yes', key);
        const againText = await again.text();
        assert.equal(again.status, 429, `the queue is full again (2 queued): ${againText}`);
        await release(gate, blocker);
        const retry = await post('/work?bgrs=yes', key);
        assert.equal(retry.status, 202, await retry.clone().text());
        const retried = (await retry.json()) as JobDoc;
        assert.notEqual(retried.id, queued.id);
        const done = await waitForJob(server.url, retried.links.self, 10_000, { headers: ANN });
        assert.equal(done.status, 'completed');
        assert.equal(runs.filter((k) => k === key).length, 1, 'the cancelled job never ran; the retry ran once');
        const replay = await post('/work', key);
        assert.equal(replay.status, 201);
        assert.equal(replay.headers.get('idempotent-replayed'), 'true');
        // Let the rest of the queue drain before the next test.
        await eventually(
          'the queue drained',
          async () => {
            const page = (await (await fetch(`${server.url}/bgrs?status=queued,running`, { headers: ANN })).json()) as { items: JobDoc[] };
            const bobs = (await (await fetch(`${server.url}/bgrs?status=queued,running`, { headers: { 'x-user': 'bob' } })).json()) as { items: JobDoc[] };
            return page.items.length === 0 && bobs.items.length === 0;
          },
          10_000,
        );
      });
    }

    it('a guarded sync client waiting in the queue gets a problem+json answer when its job is cancelled; the key is free again', async () => {
      const gate = `sync-${randomUUID()}`;
      const key = `sync-${randomUUID()}`;
      const blocker = await block(gate);
      const sync = post('/work', key);
      sync.catch(() => undefined);
      const queued = await queuedJobOf(server.url, ANN);
      assert.equal(queued.method, 'POST');
      const watchers = watch(server.url, queued);
      await sleep(150);
      assert.equal((await fetch(server.url + queued.links.cancel, { method: 'POST', headers: ANN })).status, 202);
      const answer = await within(5000, 'the guarded sync client', sync);
      assert.equal(answer.status, 500);
      assert.equal(answer.headers.get('content-type'), 'application/problem+json; charset=utf-8');
      const problem = (await answer.json()) as Problem;
      assert.equal(problemCode(problem), 'job-failed');
      assert.equal(problem.job?.id, queued.id);
      assert.equal(problem.job?.status, 'cancelled');
      await checkWatchers(watchers, 'cancelled', 'cancelled');
      await eventually('the Idempotency-Key released', () => keyIsFree(store, 'ann', '/work', key));
      await release(gate, blocker);
      const retry = await post('/work', key);
      assert.equal(retry.status, 201, await retry.clone().text());
      assert.equal(retry.headers.get('idempotent-replayed'), null, 'a new execution');
      assert.equal(runs.filter((k) => k === key).length, 1);
    });
  });

  describe('background.close() with a queue', () => {
    let server: Running;
    let store: Store;
    let background: BgrsMiddleware;
    const runs: string[] = [];
    const gates = new Map<string, () => void>();

    before(async () => {
      store = await kind.create();
      background = bgrs({ ...options(store), maxQueued: 5, maxPerOwner: 10 });
      server = await listen(buildApp(express, background, runs, gates));
    });
    after(async () => {
      for (const release of gates.values()) release();
      await server.close();
      await kind.destroy(store);
    });

    const post = (path: string, key: string | null): Promise<Response> =>
      fetch(server.url + path, {
        method: 'POST',
        headers: { ...ANN, 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) },
        body: '{"v":1}',
      });

    it('fails the running and queued jobs with shutdown, answers every waiting client, frees the keys', async () => {
      const blocker = (await (await fetch(`${server.url}/block?bgrs=yes&gate=close`, { headers: ANN })).json()) as JobDoc;
      assert.equal(blocker.status, 'running');
      const plain = (await (await post('/work?bgrs=yes', null)).json()) as JobDoc;
      const keyed = `close-keyed-${randomUUID()}`;
      const keyedDoc = (await (await post('/work?bgrs=yes', keyed)).json()) as JobDoc;
      assert.deepEqual([plain.status, keyedDoc.status], ['queued', 'queued']);
      const syncKey = `close-sync-${randomUUID()}`;
      const sync = post('/work', syncKey);
      sync.catch(() => undefined);
      const syncJob = await queuedJobOf(server.url, ANN, [plain.id, keyedDoc.id]);
      const watchers = [plain, keyedDoc, syncJob].map((job) => watch(server.url, job));
      const blockerWatch = fetch(`${server.url}${blocker.links.self}?wait=30`, { headers: ANN }).then((res) => res.json() as Promise<JobDoc>);
      blockerWatch.catch(() => undefined);
      await sleep(150);

      await within(10_000, 'close()', background.close());

      const answer = await within(5000, 'the guarded sync client', sync);
      assert.equal(answer.status, 500);
      assert.equal(answer.headers.get('content-type'), 'application/problem+json; charset=utf-8');
      const problem = (await answer.json()) as Problem;
      assert.equal(problemCode(problem), 'job-failed');
      assert.equal(problem.job?.id, syncJob.id);
      assert.equal(problem.job?.status, 'failed');
      assert.equal(problem.job?.error?.type, 'shutdown');
      for (const watcher of watchers) await checkWatchers(watcher, 'failed', 'shutdown');
      const blockerEnd = await within(5000, 'the running job ?wait= client', blockerWatch);
      assert.equal(blockerEnd.status, 'failed');
      assert.equal(blockerEnd.error?.type, 'shutdown');
      for (const id of [blocker.id, plain.id, keyedDoc.id, syncJob.id]) {
        const job = await store.getJob(id);
        assert.equal(job?.status, 'failed', id);
        assert.equal(job?.error?.type, 'shutdown', id);
        assert.equal(job?.response, null, id);
      }
      assert.deepEqual(runs, [], 'no queued job started once close() was called');

      // Closed: no new detaches, the job routes still answer.
      const refused = await post('/work?bgrs=yes', null);
      assert.equal(refused.status, 503);
      assert.equal(problemCode(await refused.json()), 'shutting-down');
      assert.equal((await fetch(server.url + plain.links.self, { headers: ANN })).status, 200);

      // The keys had no response: free again, for another instance on the same store.
      for (const key of [keyed, syncKey]) await eventually(`key ${key} released`, () => keyIsFree(store, 'ann', '/work', key));
      const next = bgrs(options(store));
      const nextRuns: string[] = [];
      const nextServer = await listen(buildApp(express, next, nextRuns, new Map()));
      try {
        for (const key of [keyed, syncKey]) {
          const res = await fetch(`${nextServer.url}/work`, {
            method: 'POST',
            headers: { ...ANN, 'content-type': 'application/json', 'idempotency-key': key },
            body: '{"v":1}',
          });
          assert.equal(res.status, 201, await res.clone().text());
          assert.equal(res.headers.get('idempotent-replayed'), null);
        }
        assert.deepEqual(nextRuns, [keyed, syncKey]);
      } finally {
        await next.close();
        await nextServer.close();
      }
    });
  });

  it('the process exits by itself once the server, bgrs and the store are closed (no timer keeps it alive)', { timeout: 60_000 }, async () => {
    const file = fileURLToPath(import.meta.url);
    const proc = spawn(process.execPath, ['--import', 'tsx', '--import', './test/fail-on-unhandled.mjs', file], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      env: { ...process.env, BGRS_JOB_ENDS_CHILD: `${kind.name}|${expressName}` },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let doneAt = 0;
    const timers: NodeJS.Timeout[] = [setTimeout(() => proc.kill('SIGKILL'), 45_000)];
    proc.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (!doneAt && stdout.includes('CHILD-DONE')) {
        doneAt = Date.now();
        // Everything is closed: a child still alive 5 s later is held by a handle.
        timers.push(setTimeout(() => proc.kill('SIGKILL'), 5000));
      }
    });
    proc.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => {
      proc.on('exit', (exitCode) => {
        for (const timer of timers) clearTimeout(timer);
        resolve(exitCode);
      });
    });
    assert.ok(doneAt > 0, `the child finished its story\nstdout: ${stdout}\nstderr: ${stderr}`);
    const lingered = Date.now() - doneAt;
    assert.equal(code, 0, `the child exited ${code}\nstderr: ${stderr}`);
    assert.ok(lingered < 2000, `the child lingered ${lingered} ms after closing everything`);
  });
}
