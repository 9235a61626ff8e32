// Job control: cancel, delete, list, queue limits, wait, Prefer wait, per-route timeout, interrupted leases.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Request } from 'express';
import { bgrs, MemoryStore, type Store } from '../src/index.js';
import { newJob } from '../src/model/job.js';
import { forEachExpress, type JobDoc, listen, type Running, sleep, waitForJob } from './helpers.js';
import { storeKinds } from './stores.js';

type Problem = { type: string; status: number };
const problemCode = (body: unknown): string => (body as Problem).type.split(':').pop()!;
const user = (name: string): { headers: Record<string, string> } => ({ headers: { 'x-user': name } });

for (const kind of await storeKinds())
  describe(kind.name, () =>
    forEachExpress((express) => {
      let server: Running;
      let store: Store;
      const seen = new Map<string, { aborted: boolean; reason?: { name: string; code?: string; message: string }; wroteAfterCancel?: boolean }>();
      const gates = new Map<string, () => void>();
      const gate = (name: string): Promise<void> => new Promise((resolve) => gates.set(name, resolve));

      before(async () => {
        store = await kind.create();
        const background = bgrs({
          store,
          owner: (req: Request) => (req.headers['x-user'] as string | undefined) ?? null,
          authorize: (req, job, action) =>
            req.headers['x-user'] === 'admin' || (action !== 'list-all' && job?.owner === ((req.headers['x-user'] as string | undefined) ?? null)),
          maxWait: 2,
        });
        const app = express();
        app.use(background);
        // Ignores its signal on purpose: a cancelled job must stay cancelled whatever it does later.
        app.get('/stubborn', async (req, res) => {
          const record = { aborted: false } as { aborted: boolean; reason?: { name: string; code?: string; message: string }; wroteAfterCancel?: boolean };
          seen.set(req.bgrs.id!, record);
          req.bgrs.signal.addEventListener('abort', () => {
            record.aborted = true;
            record.reason = req.bgrs.signal.reason as { name: string; code?: string; message: string };
          });
          await gate(String(req.query.gate));
          record.wroteAfterCancel = true;
          if (!res.destroyed) res.json({ finished: 'anyway' });
        });
        app.get('/quick', (req, res) => res.json({ n: req.query.n }));
        app.get('/sleep', async (req, res) => {
          await sleep(Number(req.query.ms));
          res.type('text').send(`slept ${req.query.ms}`);
        });
        app.get('/never', () => undefined);
        app.get('/steps', async (req, res) => {
          for (let i = 1; i <= 4; i++) {
            await gate(`${String(req.query.gate)}-${i}`);
            req.bgrs.progress(i * 25, `step ${i}`);
            req.bgrs.log(`line ${i}`, i === 2 ? 'warning' : 'info');
          }
          res.send('stepped');
        });
        app.get(
          '/per-route',
          background.detachable({ timeout: 200 }, (req) => {
            seen.set(req.bgrs.id!, { aborted: false });
            req.bgrs.signal.addEventListener('abort', () => (seen.get(req.bgrs.id!)!.aborted = true));
          }),
        );
        server = await listen(app);
      });
      after(async () => {
        await server.close();
        await kind.destroy(store);
      });

      describe('cancel and delete', () => {
        it('cancels a running job: the signal aborts with a readable reason, and it stays cancelled', async () => {
          const ack = await fetch(`${server.url}/stubborn?bgrs=yes&gate=c1`, user('ann'));
          const location = ack.headers.get('location')!;
          await sleep(50);
          const cancel = await fetch(`${server.url}${location}/cancel`, { method: 'POST', ...user('ann') });
          assert.equal(cancel.status, 202);
          const doc = (await cancel.json()) as JobDoc;
          assert.equal(doc.status, 'cancelled');
          assert.equal(doc.error?.type, 'cancelled');
          const record = seen.get(doc.id)!;
          assert.equal(record.aborted, true);
          assert.equal(record.reason?.code, 'BGRS_CANCELLED');
          assert.equal(record.reason?.name, 'AbortError');
          gates.get('c1')!();
          await sleep(50);
          assert.equal(record.wroteAfterCancel, true, 'the handler went on');
          const after = (await (await fetch(server.url + location, user('ann'))).json()) as JobDoc;
          assert.equal(after.status, 'cancelled', 'what it wrote later is discarded');
          const result = await fetch(`${server.url}${location}/result`, user('ann'));
          assert.equal(result.status, 409);
          assert.equal(problemCode(await result.json()), 'no-result');
        });

        it('refuses to cancel a finished job with 409, and a foreign one with 404', async () => {
          const ack = await fetch(`${server.url}/quick?bgrs=yes&n=1`, user('ann'));
          const location = ack.headers.get('location')!;
          await waitForJob(server.url, location, 5000, user('ann'));
          const foreign = await fetch(`${server.url}${location}/cancel`, { method: 'POST', ...user('bob') });
          assert.equal(foreign.status, 404);
          const res = await fetch(`${server.url}${location}/cancel`, { method: 'POST', ...user('ann') });
          assert.equal(res.status, 409);
          assert.equal(problemCode(await res.json()), 'already-final');
        });

        it('DELETE cancels a running job (202), forgets a finished one (204), then 404', async () => {
          const running = await fetch(`${server.url}/stubborn?bgrs=yes&gate=d1`, user('ann'));
          const runningAt = running.headers.get('location')!;
          await sleep(30);
          const cancel = await fetch(server.url + runningAt, { method: 'DELETE', ...user('ann') });
          assert.equal(cancel.status, 202);
          assert.equal(((await cancel.json()) as JobDoc).status, 'cancelled');
          gates.get('d1')!();
          const forget = await fetch(server.url + runningAt, { method: 'DELETE', ...user('ann') });
          assert.equal(forget.status, 204);
          assert.equal((await fetch(server.url + runningAt, user('ann'))).status, 404);
          assert.equal((await fetch(server.url + runningAt, { method: 'DELETE', ...user('ann') })).status, 404);
          assert.equal((await fetch(`${server.url}${runningAt}/result`, user('ann'))).status, 404);
        });
      });

      describe('events', () => {
        type Sse = { id: string; event: string; data: unknown };
        /** A reader over one event stream: `take(n)` resolves the next n events, `rest()` all until the end. */
        function sse(res: Response): { take(count: number): Promise<Sse[]>; rest(): Promise<Sse[]>; close(): Promise<void> } {
          const reader = res.body!.getReader();
          const decoder = new TextDecoder();
          const ready: Sse[] = [];
          let buffer = '';
          let ended = false;
          const pull = async (): Promise<void> => {
            const { value, done } = await reader.read();
            if (done) {
              ended = true;
              return;
            }
            buffer += decoder.decode(value, { stream: true });
            let cut: number;
            while ((cut = buffer.indexOf('\n\n')) !== -1) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              const event = /^event: (.*)$/m.exec(block)?.[1];
              if (event) ready.push({ id: /^id: (.*)$/m.exec(block)![1]!, event, data: JSON.parse(/^data: (.*)$/m.exec(block)![1]!) });
            }
          };
          return {
            async take(count) {
              while (ready.length < count && !ended) await pull();
              return ready.splice(0, count);
            },
            async rest() {
              while (!ended) await pull();
              return ready.splice(0);
            },
            close: () => reader.cancel(),
          };
        }
        const step = async (name: string): Promise<void> => {
          for (let i = 0; i < 100 && !gates.has(name); i++) await sleep(10);
          gates.get(name)!();
        };

        it('streams status, progress and log events live, then end; Last-Event-ID resumes without gap or repeat', { timeout: 20_000 }, async () => {
          const ack = await fetch(`${server.url}/steps?bgrs=yes&gate=sse1`, user('ann'));
          const { links } = (await ack.json()) as JobDoc;
          const first = await fetch(server.url + links.events, user('ann'));
          assert.equal(first.status, 200);
          assert.equal(first.headers.get('content-type'), 'text/event-stream; charset=utf-8');
          assert.equal(first.headers.get('cache-control'), 'no-store');
          const stream = sse(first);
          const [status] = await stream.take(1);
          assert.deepEqual([status!.event, status!.id, (status!.data as JobDoc).status], ['status', '0', 'running']);
          await step('sse1-1');
          const one = await stream.take(2);
          assert.deepEqual(
            one.map((e) => [e.event, e.id]),
            [
              ['progress', '0'],
              ['log', '1'],
            ],
          );
          assert.deepEqual(one[0]!.data, { progress: 25, message: 'step 1', resultCount: 0 });
          await step('sse1-2');
          const two = await stream.take(2);
          assert.deepEqual(
            two.map((e) => [e.event, e.id]),
            [
              ['progress', '1'],
              ['log', '2'],
            ],
          );
          assert.equal((two[1]!.data as { level: string }).level, 'warning');
          await stream.close();
          // The client dropped; it reconnects, telling where it was.
          await step('sse1-3');
          await step('sse1-4');
          const rest = await sse(await fetch(server.url + links.events, { headers: { 'x-user': 'ann', 'last-event-id': '2' } })).rest();
          const lines = rest.filter((e) => e.event === 'log').map((e) => (e.data as { seq: number }).seq);
          assert.deepEqual(lines, [3, 4], 'the lines after 2, once each');
          assert.equal(rest[0]!.event, 'status', 'a fresh snapshot first');
          const end = rest.at(-1)!;
          assert.equal(end.event, 'end');
          assert.equal(end.id, '4');
          assert.equal((end.data as JobDoc).status, 'completed');
          assert.equal((end.data as JobDoc).warnings, 1);
        });

        // Promise: a stream whose job vanishes from the store says so (`gone`) and closes, rather
        // than closing silently (an EventSource would reconnect forever into 404s).
        it('sends gone and closes when the job disappears from the store while streaming', { timeout: 20_000 }, async () => {
          const ack = await fetch(`${server.url}/steps?bgrs=yes&gate=sse-gone`, user('ann'));
          const { id, links } = (await ack.json()) as JobDoc;
          const stream = sse(await fetch(server.url + links.events, user('ann')));
          const [status] = await stream.take(1);
          assert.equal(status!.event, 'status');
          assert.equal(await store.deleteJob(id), true);
          await step('sse-gone-1');
          const rest = await stream.rest();
          assert.deepEqual(rest.at(-1), { event: 'gone', id: rest.at(-1)!.id, data: { id } });
          assert.ok(!rest.some((e) => e.event === 'end'), 'no end event for a job that is gone');
          // Let the handler run out (its writes land on a job that no longer exists).
          for (let i = 2; i <= 4; i++) {
            for (let t = 0; t < 50 && !gates.has(`sse-gone-${i}`); t++) await sleep(10);
            gates.get(`sse-gone-${i}`)?.();
          }
        });

        it('answers 404 for a foreign job, and streams a finished one to its end at once', { timeout: 20_000 }, async () => {
          const ack = await fetch(`${server.url}/quick?bgrs=yes&n=sse`, user('ann'));
          const { links } = (await ack.json()) as JobDoc;
          await waitForJob(server.url, links.self, 5000, user('ann'));
          assert.equal((await fetch(server.url + links.events, user('bob'))).status, 404);
          const done = await sse(await fetch(server.url + links.events, user('ann'))).rest();
          assert.deepEqual(
            done.map((e) => e.event),
            ['status', 'end'],
          );
        });
      });

      describe('list', () => {
        it("lists the caller's jobs newest first with a status filter and cursor pages", async () => {
          const me = `lister-${randomUUID()}`;
          const ids: string[] = [];
          for (let i = 0; i < 5; i++) {
            const ack = await fetch(`${server.url}/quick?bgrs=yes&n=${i}`, user(me));
            ids.push(((await ack.json()) as JobDoc).id);
            await sleep(3);
          }
          await fetch(`${server.url}/quick?bgrs=yes&n=other`, user(`other-${randomUUID()}`));
          for (const id of ids) await waitForJob(server.url, `/bgrs/${id}`, 5000, user(me));
          const first = await fetch(`${server.url}/bgrs?limit=2`, user(me));
          assert.equal(first.status, 200);
          assert.equal(first.headers.get('cache-control'), 'no-store');
          const page1 = (await first.json()) as { items: JobDoc[]; next: string | null };
          assert.deepEqual(
            page1.items.map((j) => j.id),
            [ids[4], ids[3]],
          );
          assert.match(page1.next!, /^\/bgrs\?limit=2&cursor=/);
          const page2 = (await (await fetch(server.url + page1.next!, user(me))).json()) as { items: JobDoc[]; next: string | null };
          assert.deepEqual(
            page2.items.map((j) => j.id),
            [ids[2], ids[1]],
          );
          const page3 = (await (await fetch(server.url + page2.next!, user(me))).json()) as { items: JobDoc[]; next: string | null };
          assert.deepEqual(
            page3.items.map((j) => j.id),
            [ids[0]],
          );
          assert.equal(page3.next, null);
          const running = (await (await fetch(`${server.url}/bgrs?status=running,queued`, user(me))).json()) as { items: JobDoc[] };
          assert.equal(running.items.length, 0);
          const completed = (await (await fetch(`${server.url}/bgrs?status=completed&status=failed`, user(me))).json()) as { items: JobDoc[] };
          assert.equal(completed.items.length, 5);
          assert.ok(completed.items.every((j) => !('owner' in j)));
        });

        it('lets authorize(req, null, "list-all") see every owner', async () => {
          const all = (await (await fetch(`${server.url}/bgrs?limit=100`, user('admin'))).json()) as { items: JobDoc[] };
          const mine = (await (await fetch(`${server.url}/bgrs?limit=100`, user('ann'))).json()) as { items: JobDoc[] };
          assert.ok(all.items.length > mine.items.length);
        });

        it('refuses bad status, limit and cursor values with 400', async () => {
          for (const query of ['status=done', 'limit=0', 'limit=101', 'limit=x', 'cursor=garbage']) {
            const res = await fetch(`${server.url}/bgrs?${query}`, user('ann'));
            assert.equal(res.status, 400, query);
            assert.equal(problemCode(await res.json()), 'invalid-parameter');
          }
          assert.equal((await fetch(`${server.url}/bgrs`, { method: 'POST' })).status, 405);
        });
      });

      describe('wait', () => {
        it('holds GET /bgrs/:id?wait=N until the job ends', async () => {
          const ack = await fetch(`${server.url}/sleep?bgrs=yes&ms=300`);
          const location = ack.headers.get('location')!;
          const started = Date.now();
          const res = await fetch(`${server.url}${location}?wait=2`);
          assert.equal(((await res.json()) as JobDoc).status, 'completed');
          assert.ok(Date.now() - started < 1500, 'answered when the job ended, not after the wait');
        });

        it('holds /result with Prefer: wait=N, capped by maxWait', async () => {
          const ack = await fetch(`${server.url}/sleep?bgrs=yes&ms=200`);
          const result = await fetch(`${server.url}${ack.headers.get('location')!}/result`, { headers: { prefer: 'wait=5' } });
          assert.equal(result.status, 200);
          assert.equal(await result.text(), 'slept 200');
          const slow = await fetch(`${server.url}/sleep?bgrs=yes&ms=5000`);
          const started = Date.now();
          const capped = await fetch(`${server.url}${slow.headers.get('location')!}?wait=30`);
          assert.equal(((await capped.json()) as JobDoc).status, 'running');
          const waited = Date.now() - started;
          assert.ok(waited >= 1900 && waited < 3500, `maxWait (2 s) caps the wait, waited ${waited} ms`);
          assert.equal((await fetch(`${server.url}${slow.headers.get('location')!}?wait=soon`)).status, 400);
        });

        it('answers Prefer: respond-async, wait=N with the real response when it comes in time, else 202', async () => {
          const fast = await fetch(`${server.url}/sleep?ms=100`, { headers: { prefer: 'respond-async, wait=2' } });
          assert.equal(fast.status, 200);
          assert.equal(await fast.text(), 'slept 100');
          const slow = await fetch(`${server.url}/sleep?ms=3000`, { headers: { prefer: 'respond-async, wait=1' } });
          assert.equal(slow.status, 202);
          assert.equal(slow.headers.get('preference-applied'), 'respond-async');
          assert.equal(((await slow.json()) as JobDoc).status, 'running');
        });
      });

      it('times a route out with its own timeout (detachable({ timeout }))', async () => {
        const ack = await fetch(`${server.url}/per-route?bgrs=yes`);
        const job = await waitForJob(server.url, ack.headers.get('location')!, 5000);
        assert.equal(job.status, 'failed');
        assert.equal(job.error?.type, 'timeout');
        assert.match(job.error!.message, /200 ms/);
        assert.equal(seen.get(job.id)?.aborted, true);
      });

      it('records a job whose process died (lease passed) as failed: interrupted when it is read', async () => {
        const dead = newJob({
          id: randomUUID(),
          method: 'GET',
          url: '/dead?bgrs=yes',
          owner: null,
          status: 'running',
          leaseUntil: new Date(Date.now() - 1000).toISOString(),
        });
        await store.createJob(dead);
        const doc = (await (await fetch(`${server.url}/bgrs/${dead.id}`)).json()) as JobDoc;
        assert.equal(doc.status, 'failed');
        assert.equal(doc.error?.type, 'interrupted');
      });
    }),
  );

describe('event stream heartbeat', () => {
  it('sends a comment every eventsHeartbeat ms while the job is quiet', async () => {
    const { default: express } = await import('express');
    const app = express();
    app.use(bgrs({ eventsHeartbeat: 100 }));
    app.get('/quiet', async (_req, res) => {
      await sleep(450);
      res.send('done');
    });
    const server = await listen(app);
    try {
      const ack = await fetch(`${server.url}/quiet?bgrs=yes`);
      const res = await fetch(`${server.url}${ack.headers.get('location')!}/events`);
      const text = await res.text();
      const beats = text.split('\n').filter((line) => line === ': heartbeat').length;
      assert.ok(beats >= 3, `${beats} heartbeats in ${text}`);
      assert.match(text, /event: end/);
    } finally {
      await server.close();
    }
  });
});

describe('queue limits', () => {
  it('queues beyond concurrency with a position, refuses beyond maxQueued with 429, and runs the queue in order', async () => {
    const { default: express } = await import('express');
    const release: Array<() => void> = [];
    const order: string[] = [];
    const app = express();
    app.use(bgrs({ concurrency: 1, maxQueued: 2 }));
    app.get('/work', async (req, res) => {
      order.push(String(req.query.n));
      await new Promise<void>((resolve) => release.push(resolve));
      res.send(String(req.query.n));
    });
    const server = await listen(app);
    try {
      const docs: JobDoc[] = [];
      for (let n = 1; n <= 3; n++) {
        const ack = await fetch(`${server.url}/work?bgrs=yes&n=${n}`);
        assert.equal(ack.status, 202);
        docs.push((await ack.json()) as JobDoc);
      }
      assert.deepEqual(
        docs.map((d) => d.status),
        ['running', 'queued', 'queued'],
      );
      assert.deepEqual(
        docs.map((d) => d.position),
        [undefined, 1, 2],
      );
      const refused = await fetch(`${server.url}/work?bgrs=yes&n=4`);
      assert.equal(refused.status, 429);
      assert.equal(refused.headers.get('retry-after'), '2');
      assert.equal(problemCode(await refused.json()), 'queue-full');
      const third = (await (await fetch(`${server.url}${docs[2]!.links.self}`)).json()) as JobDoc;
      assert.equal(third.position, 2);
      // Cancelling a queued job frees its place; the next one moves up.
      assert.equal((await fetch(`${server.url}${docs[1]!.links.cancel}`, { method: 'POST' })).status, 202);
      assert.equal(((await (await fetch(`${server.url}${docs[2]!.links.self}`)).json()) as JobDoc).position, 1);
      release.shift()!();
      await sleep(100);
      assert.deepEqual(order, ['1', '3'], 'the cancelled job never ran');
      release.shift()!();
      for (const doc of [docs[0]!, docs[2]!]) assert.equal((await waitForJob(server.url, doc.links.self)).status, 'completed');
      assert.equal(((await (await fetch(`${server.url}${docs[1]!.links.self}`)).json()) as JobDoc).status, 'cancelled');
    } finally {
      await server.close();
    }
  });

  it('never drops a job admitted while others were being written to a slow store', async () => {
    const { default: express } = await import('express');
    class SlowStore extends MemoryStore {
      override async createJob(job: Parameters<MemoryStore['createJob']>[0]): Promise<void> {
        await sleep(20);
        return super.createJob(job);
      }
    }
    const app = express();
    app.use(bgrs({ store: new SlowStore(), concurrency: 2 }));
    app.get('/n', async (req, res) => {
      await sleep(10);
      res.send(String(req.query.n));
    });
    const server = await listen(app);
    try {
      const acks = await Promise.all(Array.from({ length: 20 }, (_, n) => fetch(`${server.url}/n?bgrs=yes&n=${n}`)));
      assert.deepEqual(
        acks.map((a) => a.status),
        Array(20).fill(202),
      );
      const docs = (await Promise.all(acks.map((a) => a.json()))) as JobDoc[];
      assert.equal(docs.filter((d) => d.status === 'running').length, 2, 'exactly `concurrency` run at once');
      for (const [n, doc] of docs.entries()) {
        const done = await waitForJob(server.url, doc.links.self, 5000);
        assert.equal(done.status, 'completed', `job ${n}`);
        assert.equal(await (await fetch(server.url + doc.links.result)).text(), String(n));
      }
    } finally {
      await server.close();
    }
  });

  it('limits each owner with maxPerOwner', async () => {
    const { default: express } = await import('express');
    const app = express();
    app.use(bgrs({ maxPerOwner: 1, owner: (req) => (req.headers['x-user'] as string | undefined) ?? null }));
    app.get('/slow', async (_req, res) => {
      await sleep(300);
      res.send('ok');
    });
    const server = await listen(app);
    try {
      assert.equal((await fetch(`${server.url}/slow?bgrs=yes`, user('ann'))).status, 202);
      const second = await fetch(`${server.url}/slow?bgrs=yes`, user('ann'));
      assert.equal(second.status, 429);
      assert.equal(problemCode(await second.json()), 'queue-full');
      assert.equal((await fetch(`${server.url}/slow?bgrs=yes`, user('bob'))).status, 202, 'other owners are not limited');
      await sleep(400);
      assert.equal((await fetch(`${server.url}/slow?bgrs=yes`, user('ann'))).status, 202, 'a finished job frees the place');
    } finally {
      await server.close();
    }
  });
});

describe('graceful shutdown', () => {
  it('refuses new detaches, lets jobs finish within grace, fails the rest with shutdown, and resolves when all is stored', async () => {
    const { default: express } = await import('express');
    const store = new MemoryStore();
    const background = bgrs({ store, concurrency: 2 });
    const aborted: string[] = [];
    const app = express();
    app.use(background);
    app.get('/sleep', async (req, res) => {
      req.bgrs.signal.addEventListener('abort', () => aborted.push(String(req.query.ms)));
      await sleep(Number(req.query.ms));
      if (!req.bgrs.signal.aborted) res.send(`slept ${req.query.ms}`);
    });
    const server = await listen(app);
    try {
      const ids: string[] = [];
      for (const ms of [100, 5000, 5000]) ids.push(((await (await fetch(`${server.url}/sleep?bgrs=yes&ms=${ms}`)).json()) as JobDoc).id);
      const closing = background.close({ grace: 400 });
      const refused = await fetch(`${server.url}/sleep?bgrs=yes&ms=1`);
      assert.equal(refused.status, 503);
      assert.equal(refused.headers.get('retry-after'), '2');
      assert.equal(problemCode(await refused.json()), 'shutting-down');
      assert.equal((await fetch(`${server.url}/sleep?ms=1`)).status, 200, 'requests that are not detached still run');
      await closing;
      const [quick, slow, queued] = await Promise.all(ids.map((id) => store.getJob(id)));
      assert.equal(quick?.status, 'completed');
      assert.equal(slow?.status, 'failed');
      assert.equal(slow?.error?.type, 'shutdown');
      assert.equal(queued?.status, 'failed', 'a queued job is failed too');
      assert.equal(queued?.error?.type, 'shutdown');
      assert.deepEqual(aborted, ['5000'], "the running job's signal aborted");
    } finally {
      await server.close();
    }
  });
});
