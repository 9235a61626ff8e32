// Unit tests without HTTP: the request envelope (src/replay/envelope.ts: body reading, budget, replayed headers) and
// the scheduler (src/executors/local.ts: admission, placing, body bytes, limits, the queue, ends of queued jobs, stopAll,
// the lease heartbeat), on a real MemoryStore.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { describe, it } from 'node:test';
import type { Options } from '../src/config/options.js';
import { parseOptions } from '../src/config/options.js';
import type { Admission, EndQueued, RunningJob } from '../src/executors/executor.js';
import { Scheduler } from '../src/executors/local.js';
import { MemoryStore } from '../src/index.js';
import { JobEnd } from '../src/jobs/end.js';
import { JobAbortError } from '../src/model/errors.js';
import type { Job, JobError } from '../src/model/job.js';
import { leaseExpired, newJob } from '../src/model/job.js';
import { HOP_BY_HOP } from '../src/replay/capture.js';
import { BodyBudgetError, BodyTooLargeError, bodyConsumed, buildEnvelope, hasBody, readBody } from '../src/replay/envelope.js';
import { sleep } from './helpers.js';

// ---- envelope ----

/** A real IncomingMessage, fed by hand: headers, then `feed(chunks)` and `end()` as the HTTP parser would. */
function incoming(
  headers: Record<string, string> = {},
  rawHeaders?: string[],
): IncomingMessage & { feed(...chunks: Array<string | Buffer>): void; end(): void } {
  const req = new IncomingMessage(new Socket()) as IncomingMessage & { feed(...chunks: Array<string | Buffer>): void; end(): void };
  req.method = 'POST';
  req.url = '/upload';
  req.headers = Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
  req.rawHeaders = rawHeaders ?? Object.entries(headers).flat();
  req.feed = (...chunks) => {
    for (const chunk of chunks) req.push(Buffer.from(chunk));
  };
  req.end = () => {
    req.complete = true;
    req.push(null);
  };
  return req;
}

describe('envelope', () => {
  describe('errors', () => {
    it('BodyTooLargeError carries its limit; BodyBudgetError names maxHeldBodyBytes', () => {
      const tooLarge = new BodyTooLargeError(1024);
      assert.ok(tooLarge instanceof Error);
      assert.equal(tooLarge.limit, 1024);
      assert.equal(tooLarge.message, 'request body is larger than 1024 bytes');
      const budget = new BodyBudgetError();
      assert.ok(budget instanceof Error);
      assert.match(budget.message, /maxHeldBodyBytes/);
    });
  });

  describe('hasBody and bodyConsumed', () => {
    it('sees a body in a non-zero Content-Length or any Transfer-Encoding', () => {
      assert.equal(hasBody(incoming()), false);
      assert.equal(hasBody(incoming({ 'content-length': '0' })), false);
      assert.equal(hasBody(incoming({ 'content-length': '12' })), true);
      assert.equal(hasBody(incoming({ 'transfer-encoding': 'chunked' })), true);
    });
    it('knows a body a parser read (_body) or a stream already ended', async () => {
      const parsed = incoming({ 'content-length': '2' }) as IncomingMessage & { _body?: boolean };
      assert.equal(bodyConsumed(parsed), false);
      parsed._body = true;
      assert.equal(bodyConsumed(parsed), true);
      const drained = incoming({ 'content-length': '2' });
      drained.feed('ok');
      drained.end();
      drained.resume();
      await new Promise((resolve) => drained.once('end', resolve));
      assert.equal(bodyConsumed(drained), true);
    });
  });

  describe('readBody', () => {
    it('reads a declared body, holding its whole length once, before the first byte', async () => {
      const held: number[] = [];
      const req = incoming({ 'content-length': '11' });
      const body = readBody(req, 100, (bytes) => {
        held.push(bytes);
        return true;
      });
      assert.deepEqual(held, [11], 'held at once');
      req.feed('hello ', 'world');
      req.end();
      assert.equal((await body).toString(), 'hello world');
      assert.deepEqual(held, [11], 'nothing more');
      assert.equal(req.listenerCount('data'), 0, 'its listeners are removed');
      assert.equal(req.listenerCount('close'), 0);
    });

    it('reads a chunked body, holding it piece by piece', async () => {
      const held: number[] = [];
      const req = incoming({ 'transfer-encoding': 'chunked' });
      const body = readBody(req, 100, (bytes) => {
        held.push(bytes);
        return true;
      });
      req.feed('abc', 'defgh', Buffer.from([0, 255]));
      req.end();
      assert.deepEqual([...(await body)], [...Buffer.from('abcdefgh'), 0, 255]);
      assert.deepEqual(held, [3, 5, 2]);
    });

    it('resolves an empty buffer for an empty body, and the one chunk itself when there is one', async () => {
      const empty = incoming({ 'transfer-encoding': 'chunked' });
      const read = readBody(empty, 10);
      empty.end();
      assert.equal((await read).length, 0);
      const single = incoming({ 'content-length': '3' });
      const one = readBody(single, 10);
      single.feed('xyz');
      single.end();
      assert.equal((await one).toString(), 'xyz');
    });

    it('refuses a declared length over the limit at once, without holding anything, and drains the request', async () => {
      let held = 0;
      const req = incoming({ 'content-length': '101' });
      await assert.rejects(
        readBody(req, 100, (bytes) => {
          held += bytes;
          return true;
        }),
        (err: unknown) => err instanceof BodyTooLargeError && err.limit === 100,
      );
      assert.equal(held, 0);
      assert.equal(req.readableFlowing, true, 'the rest of the body is drained, not left in the socket');
    });

    it('accepts a declared length equal to the limit', async () => {
      const req = incoming({ 'content-length': '4' });
      const read = readBody(req, 4);
      req.feed('four');
      req.end();
      assert.equal((await read).toString(), 'four');
    });

    it('refuses a chunked body once it passes the limit', async () => {
      const held: number[] = [];
      const req = incoming({ 'transfer-encoding': 'chunked' });
      const read = readBody(req, 5, (bytes) => {
        held.push(bytes);
        return true;
      });
      req.feed('abc', 'def', 'ghi');
      await assert.rejects(read, BodyTooLargeError);
      assert.deepEqual(held, [3], 'the piece that passed the limit is not held');
      assert.equal(req.listenerCount('data'), 0);
    });

    it('refuses with BodyBudgetError when the budget will not hold the declared length', async () => {
      const asked: number[] = [];
      const req = incoming({ 'content-length': '50' });
      await assert.rejects(
        readBody(req, 100, (bytes) => {
          asked.push(bytes);
          return false;
        }),
        BodyBudgetError,
      );
      assert.deepEqual(asked, [50]);
      assert.equal(req.readableFlowing, true);
    });

    it('refuses with BodyBudgetError when the budget runs out in the middle of a chunked body', async () => {
      let budget = 5;
      const req = incoming({ 'transfer-encoding': 'chunked' });
      const read = readBody(req, 100, (bytes) => {
        if (bytes > budget) return false;
        budget -= bytes;
        return true;
      });
      req.feed('abc', 'defg');
      await assert.rejects(read, BodyBudgetError);
      assert.equal(budget, 2, 'the refused piece was not counted');
    });

    it('rejects when the client goes away before the whole body arrived', async () => {
      const req = incoming({ 'content-length': '10' });
      const read = readBody(req, 100);
      req.feed('abc');
      await sleep(5);
      req.destroy();
      await assert.rejects(read, /closed the connection before sending the whole body/);
    });

    it('rejects with the stream error', async () => {
      const req = incoming({ 'transfer-encoding': 'chunked' });
      const read = readBody(req, 100);
      req.destroy(new Error('socket hang up'));
      await assert.rejects(read, /socket hang up/);
    });
  });

  describe('buildEnvelope', () => {
    const raw = [
      'Host',
      'example.test',
      'Connection',
      'keep-alive, X-Hop',
      'X-Hop',
      'dropped: named by Connection',
      'Keep-Alive',
      'timeout=5',
      'Proxy-Authorization',
      'Basic eA==',
      'Transfer-Encoding',
      'chunked',
      'TE',
      'trailers',
      'Upgrade',
      'h2c',
      'Expect',
      '100-continue',
      'Accept-Encoding',
      'gzip',
      'Range',
      'bytes=0-10',
      'If-Match',
      '"a"',
      'If-None-Match',
      '"b"',
      'If-Modified-Since',
      'Tue, 01 Jan 2030 00:00:00 GMT',
      'If-Unmodified-Since',
      'Tue, 01 Jan 2030 00:00:00 GMT',
      'If-Range',
      '"c"',
      'Content-Length',
      '4',
      'Authorization',
      'Bearer t',
      'Cookie',
      'sid=1',
      'x-Custom',
      'One',
      'X-Multi',
      'a',
      'X-Multi',
      'b',
      'Prefer',
      'respond-async, wait=5',
      'Prefer',
      'respond-async',
      'Content-Type',
      'text/plain',
    ];
    const headers = (list: string[]): Record<string, string> => {
      const out: Record<string, string> = {};
      for (let i = 0; i < list.length; i += 2) out[list[i]!.toLowerCase()] = list[i + 1]!;
      return out;
    };

    it("replays end-to-end headers in the client's order and case, without hop-by-hop, conditional, range or encoding headers", () => {
      const req = incoming(headers(raw), raw);
      const envelope = buildEnvelope(req, '/upload?a=1', Buffer.from('body'), false);
      assert.deepEqual(envelope.rawHeaders, [
        'Host',
        'example.test',
        'Authorization',
        'Bearer t',
        'Cookie',
        'sid=1',
        'x-Custom',
        'One',
        'X-Multi',
        'a',
        'X-Multi',
        'b',
        'Prefer',
        'wait=5',
        'Content-Type',
        'text/plain',
        'Content-Length',
        '4',
      ]);
      for (let i = 0; i < envelope.rawHeaders.length; i += 2) assert.equal(HOP_BY_HOP.has(envelope.rawHeaders[i]!.toLowerCase()), false);
      assert.equal(envelope.method, 'POST');
      assert.equal(envelope.url, '/upload?a=1');
      assert.equal(envelope.body?.toString(), 'body');
      assert.equal(envelope.bodyConsumed, false);
      assert.equal(envelope.contentLength, '4');
      assert.equal(envelope.encrypted, false);
    });

    it('sets Content-Length to the bytes it carries: the body, 0 for a consumed one, none without a body', () => {
      const withBody = buildEnvelope(incoming({ 'transfer-encoding': 'chunked' }, ['Transfer-Encoding', 'chunked']), '/u', Buffer.from('12345'), false);
      assert.deepEqual(withBody.rawHeaders, ['Content-Length', '5']);
      const consumed = buildEnvelope(incoming({ 'content-length': '9' }, ['Content-Length', '9']), '/u', null, true);
      assert.deepEqual(consumed.rawHeaders, ['Content-Length', '0']);
      assert.equal(consumed.contentLength, '9', 'the original length travels beside');
      assert.equal(consumed.bodyConsumed, true);
      const none = buildEnvelope(incoming({ host: 'h' }, ['Host', 'h']), '/u', null, false);
      assert.deepEqual(none.rawHeaders, ['Host', 'h']);
      assert.equal(none.body, null);
      const declaredButUnread = buildEnvelope(incoming({ 'content-length': '3' }, ['Content-Length', '3']), '/u', null, false);
      assert.deepEqual(declaredButUnread.rawHeaders, ['Content-Length', '0']);
    });

    it('takes the client address from its socket', () => {
      const envelope = buildEnvelope(incoming(), '/u', null, false);
      assert.equal(envelope.remoteAddress, undefined, 'an unconnected socket has none');
      assert.equal(envelope.encrypted, false);
    });
  });
});

// ---- scheduler ----

/** A job the test ends by hand: `finish()` resolves `done`; `stops` records stop() calls. */
function controllable(): { job: RunningJob; finish(): void; stops: Array<{ status: string; error: JobError | null; reason: Error }> } {
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  const stops: Array<{ status: string; error: JobError | null; reason: Error }> = [];
  const job: RunningJob = {
    done,
    stop: async (status, error, reason) => {
      stops.push({ status, error, reason });
      finish();
    },
  };
  return { job, finish, stops };
}

interface Harness {
  scheduler: Scheduler;
  store: MemoryStore;
  errors: string[];
  /** Admits, records the job in the store (queued or running, as admitted) and places it. */
  add(key: string, opts?: { bodyBytes?: number }): Promise<Placed>;
  close(): Promise<void>;
}

interface Placed {
  id: string;
  admission: Admission & { ok: true };
  started: number;
  /** How the scheduler ended it without a start, each time it did (it must be once at most). */
  ended: Array<Parameters<EndQueued>[0]>;
  /** The running job, once started. */
  run?: ReturnType<typeof controllable>;
}

function harness(options: Partial<Options> = {}, store = new MemoryStore()): Harness {
  const errors: string[] = [];
  const config = parseOptions({ store, lease: 150, logger: { warn: () => undefined, error: (message) => errors.push(message) }, ...options });
  const scheduler = new Scheduler(config);
  return {
    scheduler,
    store,
    errors,
    async add(key, opts = {}) {
      const admission = scheduler.admit(key);
      assert.ok(admission.ok, `admitted ${key}`);
      if (opts.bodyBytes) assert.ok(scheduler.holdBody(admission, opts.bodyBytes));
      const id = randomUUID();
      await store.createJob(
        newJob({
          id,
          method: 'GET',
          url: `/${key}`,
          owner: null,
          status: admission.queued ? 'queued' : 'running',
          leaseUntil: new Date(Date.now() + 150).toISOString(),
        }),
      );
      const placed: Placed = { id, admission, started: 0, ended: [] };
      // The job's real end, as submit builds it: it records the ending and wakes subscribers.
      const end = new JobEnd(config, id, { notify: () => scheduler.notify(id) });
      scheduler.place(
        admission,
        id,
        () => {
          placed.started++;
          placed.run = controllable();
          return placed.run.job;
        },
        (ending) => {
          placed.ended.push(ending);
          return end.end(ending && { ...ending, response: null });
        },
      );
      return placed;
    },
    async close() {
      scheduler.dispose();
      await store.close();
    },
  };
}

/** Lets promise callbacks (store calls, done handlers) run. */
const settle = (): Promise<void> => sleep(15);

describe('scheduler', () => {
  describe('JobAbortError and leaseExpired', () => {
    it('JobAbortError is an AbortError (or the given name) with a code', () => {
      const err = new JobAbortError('BGRS_CANCELLED', 'the job was cancelled');
      assert.ok(err instanceof Error);
      assert.equal(err.name, 'AbortError');
      assert.equal(err.code, 'BGRS_CANCELLED');
      assert.equal(err.message, 'the job was cancelled');
      assert.equal(new JobAbortError('BGRS_TIMEOUT', 'late', 'TimeoutError').name, 'TimeoutError');
    });

    it('leaseExpired: only a queued or running job whose lease has passed', () => {
      const now = Date.now();
      const job = (status: Job['status'], leaseUntil: number | null): Job => ({
        ...newJob({ id: randomUUID(), method: 'GET', url: '/', owner: null, status }),
        leaseUntil: leaseUntil === null ? null : new Date(leaseUntil).toISOString(),
      });
      assert.equal(leaseExpired(job('running', now - 1), now), true);
      assert.equal(leaseExpired(job('queued', now - 1), now), true);
      assert.equal(leaseExpired(job('running', now + 1000), now), false);
      assert.equal(leaseExpired(job('running', null), now), false);
      for (const status of ['completed', 'failed', 'cancelled'] as const) assert.equal(leaseExpired(job(status, now - 1000), now), false, status);
    });
  });

  describe('admit', () => {
    it('runs up to concurrency, then queues up to maxQueued, then refuses queue-full', async () => {
      const h = harness({ concurrency: 2, maxQueued: 2 });
      const answers = Array.from({ length: 5 }, (_, i) => h.scheduler.admit(`ip:${i}`));
      assert.deepEqual(
        answers.map((a) => (a.ok ? (a.queued ? 'queued' : 'run') : a.reason)),
        ['run', 'run', 'queued', 'queued', 'queue-full'],
      );
      // An admission holds its place until used or given back.
      h.scheduler.cancel(answers[3]!);
      const again = h.scheduler.admit('ip:9');
      assert.ok(again.ok && again.queued);
      h.scheduler.cancel(answers[0]!);
      assert.deepEqual(h.scheduler.admit('ip:10'), { ok: false, reason: 'queue-full' }, 'a freed slot is not taken past a full queue');
      h.scheduler.cancel(answers[2]!);
      const behind = h.scheduler.admit('ip:11');
      assert.ok(behind.ok && behind.queued, 'nor past a waiting one');
      await h.close();
    });

    it('queues a new job behind waiting ones even when a slot is free', async () => {
      const h = harness({ concurrency: 1, maxQueued: 5 });
      const first = await h.add('a');
      const second = await h.add('b');
      assert.equal(second.admission.queued, true);
      first.run!.finish();
      await settle();
      assert.equal(second.started, 1);
      const third = h.scheduler.admit('c');
      assert.ok(third.ok && third.queued, 'the one slot is busy with the second job');
      h.scheduler.cancel(third);
      second.run!.finish();
      await settle();
      const fourth = h.scheduler.admit('d');
      assert.ok(fourth.ok && !fourth.queued);
      h.scheduler.cancel(fourth);
      await h.close();
    });

    it('limits each caller with maxPerOwner, before anything else', async () => {
      const h = harness({ concurrency: 1, maxQueued: 0, maxPerOwner: 2 });
      const a = h.scheduler.admit('owner:ann');
      assert.ok(a.ok && !a.queued);
      const queueFull = h.scheduler.admit('owner:ann');
      assert.deepEqual(queueFull, { ok: false, reason: 'queue-full' });
      const h2 = harness({ concurrency: 10, maxPerOwner: 2 });
      const ann = [h2.scheduler.admit('owner:ann'), h2.scheduler.admit('owner:ann')];
      assert.ok(ann.every((x) => x.ok));
      assert.deepEqual(h2.scheduler.admit('owner:ann'), { ok: false, reason: 'owner-limit' });
      assert.ok(h2.scheduler.admit('owner:bob').ok, 'other callers are not limited');
      h2.scheduler.cancel(ann[0]!);
      assert.ok(h2.scheduler.admit('owner:ann').ok, 'a place given back is free again');
      await h.close();
      await h2.close();
    });

    it('counts a placed job against its owner until it ends', async () => {
      const h = harness({ concurrency: 5, maxPerOwner: 1 });
      const placed = await h.add('owner:ann');
      assert.deepEqual(h.scheduler.admit('owner:ann'), { ok: false, reason: 'owner-limit' });
      placed.run!.finish();
      await settle();
      const next = h.scheduler.admit('owner:ann');
      assert.ok(next.ok);
      h.scheduler.cancel(next);
      await h.close();
    });

    it('cancel() of a refused admission is a no-op', async () => {
      const h = harness({ concurrency: 1, maxQueued: 0 });
      const a = h.scheduler.admit('x');
      const refused = h.scheduler.admit('y');
      assert.equal(refused.ok, false);
      h.scheduler.cancel(refused);
      assert.deepEqual(h.scheduler.admit('z'), { ok: false, reason: 'queue-full' }, 'nothing was given back');
      h.scheduler.cancel(a);
      await h.close();
    });
  });

  describe('holdBody', () => {
    it('counts body bytes up to maxHeldBodyBytes; a refusal counts nothing', async () => {
      const h = harness({ maxHeldBodyBytes: 100 });
      const a = h.scheduler.admit('a');
      const b = h.scheduler.admit('b');
      assert.ok(a.ok && b.ok);
      assert.equal(h.scheduler.holdBody(a, 60), true);
      assert.equal(h.scheduler.holdBody(b, 50), false);
      assert.equal(h.scheduler.heldBodyBytes, 60);
      assert.equal(h.scheduler.holdBody(b, 40), true);
      assert.equal(h.scheduler.heldBodyBytes, 100);
      assert.equal(h.scheduler.holdBody(b, 1), false);
      h.scheduler.cancel(a);
      assert.equal(h.scheduler.heldBodyBytes, 40, 'a given-back admission gives back its bytes');
      h.scheduler.cancel(b);
      assert.equal(h.scheduler.heldBodyBytes, 0);
      await h.close();
    });

    it("keeps a placed job's bytes until it ends, a queued one's until it leaves the queue", async () => {
      const h = harness({ concurrency: 1, maxHeldBodyBytes: 1000 });
      const running = await h.add('a', { bodyBytes: 300 });
      const queued = await h.add('b', { bodyBytes: 200 });
      const dropped = await h.add('c', { bodyBytes: 100 });
      assert.equal(h.scheduler.heldBodyBytes, 600);
      assert.equal(h.scheduler.dequeue(dropped.id, null), true);
      assert.equal(h.scheduler.heldBodyBytes, 500);
      running.run!.finish();
      await settle();
      assert.equal(h.scheduler.heldBodyBytes, 200, 'the started job still holds its body');
      assert.equal(queued.started, 1);
      queued.run!.finish();
      await settle();
      assert.equal(h.scheduler.heldBodyBytes, 0);
      await h.close();
    });
  });

  describe('place and the queue', () => {
    it('starts a job at once when it has a slot, queues the others in order with 1-based positions', async () => {
      const h = harness({ concurrency: 1 });
      const a = await h.add('a');
      assert.equal(a.started, 1, 'started synchronously by place()');
      assert.ok(h.scheduler.running.has(a.id));
      assert.equal(h.scheduler.position(a.id), undefined, 'a running job has no position');
      const b = await h.add('b');
      const c = await h.add('c');
      assert.deepEqual([b.started, c.started], [0, 0]);
      assert.deepEqual([h.scheduler.position(b.id), h.scheduler.position(c.id)], [1, 2]);
      assert.deepEqual(h.scheduler.held(), [a.id, b.id, c.id]);
      a.run!.finish();
      await settle();
      assert.equal(h.scheduler.running.has(a.id), false);
      assert.equal(b.started, 1);
      assert.equal((await h.store.getJob(b.id))?.status, 'running', 'started in the store');
      assert.equal(h.scheduler.position(c.id), 1);
      b.run!.finish();
      await settle();
      assert.equal(c.started, 1);
      c.run!.finish();
      await settle();
      assert.deepEqual(h.scheduler.held(), []);
      assert.deepEqual([a.ended, b.ended, c.ended], [[], [], []], 'started jobs are never ended by the queue');
      await h.close();
    });

    it('dequeue() removes a queued job and ends it once, as told; false for a job not queued here', async () => {
      const h = harness({ concurrency: 1, maxPerOwner: 3 });
      const a = await h.add('owner:ann');
      const b = await h.add('owner:ann');
      const c = await h.add('owner:ann');
      assert.deepEqual(h.scheduler.admit('owner:ann'), { ok: false, reason: 'owner-limit' });
      const cancelled = { status: 'cancelled' as const, error: { type: 'cancelled', message: 'by hand' } };
      assert.equal(h.scheduler.dequeue(b.id, cancelled), true);
      assert.deepEqual(b.ended, [cancelled]);
      assert.equal(h.scheduler.dequeue(b.id, cancelled), false, 'once');
      assert.deepEqual(b.ended, [cancelled]);
      assert.equal(h.scheduler.dequeue(a.id, cancelled), false, 'a running job is not dequeued');
      assert.equal(h.scheduler.dequeue(randomUUID(), cancelled), false);
      await settle();
      assert.equal((await h.store.getJob(b.id))?.status, 'cancelled', "the job's end recorded it");
      assert.equal(h.scheduler.position(c.id), 1);
      const next = h.scheduler.admit('owner:ann');
      assert.ok(next.ok, "the dequeued job's owner place is free");
      h.scheduler.cancel(next);
      a.run!.finish();
      await settle();
      assert.equal(b.started, 0, 'a dequeued job never starts');
      assert.equal(c.started, 1);
      c.run!.finish();
      await settle();
      await h.close();
    });

    it('skips a queued job the store no longer holds as queued (cancelled elsewhere) and starts the next', async () => {
      const h = harness({ concurrency: 1 });
      const a = await h.add('a');
      const b = await h.add('b');
      const c = await h.add('c');
      await h.store.finishJob(b.id, {
        status: 'cancelled',
        finishedAt: new Date().toISOString(),
        expiresAt: new Date(Date.now() + 60_000).toISOString(),
        response: null,
        error: { type: 'cancelled', message: 'elsewhere' },
      });
      a.run!.finish();
      await settle();
      assert.equal(b.started, 0);
      assert.deepEqual(b.ended, [null], 'ended as the store holds it');
      assert.equal(c.started, 1, 'the next one takes the slot');
      c.run!.finish();
      await settle();
      await h.close();
    });

    it('keeps a queued job whose start the store refused, and starts it on the next try', { timeout: 10_000 }, async () => {
      let failures = 1;
      class FlakyStart extends MemoryStore {
        override async startJob(id: string, start: { startedAt: string; leaseUntil: string }): Promise<boolean> {
          if (failures-- > 0) throw new Error('store away');
          return super.startJob(id, start);
        }
      }
      const h = harness({ concurrency: 1 }, new FlakyStart());
      const a = await h.add('a');
      const b = await h.add('b');
      a.run!.finish();
      await settle();
      assert.equal(b.started, 0);
      assert.equal(h.scheduler.position(b.id), 1, 'back at the head of the queue');
      assert.match(h.errors.join('\n'), /could not start queued job .*store away/);
      for (let i = 0; i < 100 && b.started === 0; i++) await sleep(20);
      assert.equal(b.started, 1, 'started about a second later');
      b.run!.finish();
      await settle();
      await h.close();
    });

    it('starts a job admitted as queued whose slot freed before it was placed', async () => {
      const h = harness({ concurrency: 1 });
      const a = await h.add('a');
      const admission = h.scheduler.admit('b');
      assert.ok(admission.ok && admission.queued, 'the only slot is busy');
      const id = randomUUID();
      // While the job is being written to the store, the running one ends.
      a.run!.finish();
      await settle();
      await h.store.createJob(newJob({ id, method: 'GET', url: '/b', owner: null, status: 'queued' }));
      let started = 0;
      const run = controllable();
      h.scheduler.place(
        admission,
        id,
        () => {
          started++;
          return run.job;
        },
        async () => assert.fail('it starts'),
      );
      await settle();
      try {
        assert.equal(started, 1, 'the free slot runs it');
      } finally {
        run.finish();
        h.scheduler.dequeue(id, null);
        await h.close();
      }
    });

    it('starts nothing from the queue once closing', async () => {
      const h = harness({ concurrency: 1 });
      const a = await h.add('a');
      const b = await h.add('b');
      h.scheduler.closing = true;
      a.run!.finish();
      await settle();
      assert.equal(b.started, 0);
      assert.equal(h.scheduler.position(b.id), 1);
      await h.close();
    });
  });

  describe('subscribe and notify', () => {
    it('tells the listeners of one job, until they unsubscribe', async () => {
      const h = harness();
      const calls: string[] = [];
      const off1 = h.scheduler.subscribe('j1', () => calls.push('1a'));
      h.scheduler.subscribe('j1', () => calls.push('1b'));
      h.scheduler.subscribe('j2', () => calls.push('2'));
      h.scheduler.notify('j1');
      assert.deepEqual(calls, ['1a', '1b']);
      off1();
      h.scheduler.notify('j1');
      h.scheduler.notify('nobody');
      assert.deepEqual(calls, ['1a', '1b', '1b']);
      // A listener that unsubscribes itself while being told does not disturb the others.
      const self: Array<() => void> = [];
      self.push(
        h.scheduler.subscribe('j3', () => {
          calls.push('3a');
          self[0]!();
        }),
      );
      h.scheduler.subscribe('j3', () => calls.push('3b'));
      h.scheduler.notify('j3');
      h.scheduler.notify('j3');
      assert.deepEqual(calls.slice(3), ['3a', '3b', '3b']);
      await h.close();
    });

    it("leaves a running job's end to the job: waiters are told once, by its end, not again by the scheduler", async () => {
      const h = harness();
      const a = await h.add('a');
      let told = 0;
      h.scheduler.subscribe(a.id, () => told++);
      // What a run's JobEnd does once the final state is stored: tell, then resolve done.
      h.scheduler.notify(a.id);
      a.run!.finish();
      await settle();
      assert.equal(told, 1);
      assert.deepEqual(h.scheduler.held(), []);
      await h.close();
    });
  });

  describe('stopAll', () => {
    it('stops the running jobs and ends the queued ones (recorded final in the store, waiters told)', async () => {
      const h = harness({ concurrency: 2 });
      const a = await h.add('a');
      const b = await h.add('b');
      const queued = [await h.add('c'), await h.add('d')];
      const told: string[] = [];
      for (const q of queued) h.scheduler.subscribe(q.id, () => told.push(q.id));
      const error: JobError = { type: 'shutdown', message: 'bye' };
      const reason = new JobAbortError('BGRS_SHUTDOWN', 'shutting down');
      h.scheduler.closing = true;
      await h.scheduler.stopAll('failed', error, reason);
      for (const run of [a.run!, b.run!]) assert.deepEqual(run.stops, [{ status: 'failed', error, reason }]);
      for (const q of queued) {
        const job = await h.store.getJob(q.id);
        assert.equal(job?.status, 'failed');
        assert.deepEqual(job?.error, error);
        assert.equal(job?.response, null);
        assert.deepEqual(q.ended, [{ status: 'failed', error }], 'ended once, as shut down');
        assert.equal(q.started, 0);
        assert.equal(h.scheduler.position(q.id), undefined);
      }
      assert.deepEqual(told.sort(), queued.map((q) => q.id).sort(), 'waiters of queued jobs are told');
      await settle();
      assert.deepEqual(h.scheduler.held(), []);
      await h.close();
    });

    it('logs, and still ends the queued job, when the store cannot record its end', async () => {
      class NoFinish extends MemoryStore {
        override async finishJob(): Promise<null> {
          throw new Error('store away');
        }
      }
      const h = harness({ concurrency: 1 }, new NoFinish());
      const a = await h.add('a');
      const b = await h.add('b');
      await h.scheduler.stopAll('failed', { type: 'shutdown', message: 'bye' }, new JobAbortError('BGRS_SHUTDOWN', 'bye'));
      assert.equal(b.ended.length, 1);
      assert.match(h.errors.join('\n'), new RegExp(`could not record the end of job ${b.id}: store away`));
      assert.equal(a.run!.stops.length, 1);
      await h.close();
    });

    it('also ends a queued job whose start was in flight when stopAll() was called', async () => {
      let releaseStart!: () => void;
      const startGate = new Promise<void>((resolve) => (releaseStart = resolve));
      class SlowStart extends MemoryStore {
        override async startJob(id: string, start: { startedAt: string; leaseUntil: string }): Promise<boolean> {
          await startGate;
          return super.startJob(id, start);
        }
      }
      const h = harness({ concurrency: 1 }, new SlowStart());
      const a = await h.add('a');
      const b = await h.add('b');
      a.run!.finish();
      await settle(); // b is now being started: off the queue, its startJob pending
      assert.equal(h.scheduler.position(b.id), undefined);
      h.scheduler.closing = true;
      const stopping = h.scheduler.stopAll('failed', { type: 'shutdown', message: 'bye' }, new JobAbortError('BGRS_SHUTDOWN', 'bye'));
      releaseStart();
      await stopping;
      await settle();
      try {
        assert.equal(b.started, 0, 'a job must not start after shutdown');
        assert.equal((await h.store.getJob(b.id))?.status, 'failed');
      } finally {
        b.run?.finish();
        await h.close();
      }
    });
  });

  describe('the lease heartbeat', () => {
    it('renews the leases of the jobs held here', async () => {
      const h = harness({ concurrency: 1 });
      const a = await h.add('a');
      const b = await h.add('b');
      const before = await Promise.all([a.id, b.id].map(async (id) => Date.parse((await h.store.getJob(id))!.leaseUntil!)));
      await sleep(200);
      const after = await Promise.all([a.id, b.id].map(async (id) => Date.parse((await h.store.getJob(id))!.leaseUntil!)));
      assert.ok(after[0]! > before[0]! && after[1]! > before[1]!, 'both leases moved on');
      a.run!.finish();
      b.run?.finish();
      await settle();
      b.run?.finish();
      await h.close();
    });

    it('stops a running job and dequeues a queued one that the store says are gone (cancelled elsewhere)', async () => {
      const h = harness({ concurrency: 1 });
      const a = await h.add('a');
      const b = await h.add('b');
      let told = 0;
      h.scheduler.subscribe(b.id, () => told++);
      const ending = {
        finishedAt: new Date().toISOString(),
        expiresAt: new Date(Date.now() + 60_000).toISOString(),
        response: null,
        error: { type: 'cancelled', message: 'elsewhere' },
      };
      await h.store.finishJob(a.id, { status: 'cancelled', ...ending });
      await h.store.finishJob(b.id, { status: 'cancelled', ...ending });
      for (let i = 0; i < 50 && (a.run!.stops.length === 0 || b.ended.length === 0); i++) await sleep(20);
      assert.equal(a.run!.stops.length, 1);
      assert.equal(a.run!.stops[0]!.status, 'cancelled');
      assert.equal((a.run!.stops[0]!.reason as JobAbortError).code, 'BGRS_CANCELLED');
      assert.deepEqual(b.ended, [null], 'ended as the store holds it');
      assert.equal(b.started, 0);
      assert.equal(told, 1, "the queued job's waiters are told once");
      await settle();
      assert.deepEqual(h.scheduler.held(), []);
      await h.close();
    });

    it('keeps jobs running while the store is away', async () => {
      class NoRenew extends MemoryStore {
        override async renewLeases(): Promise<string[]> {
          throw new Error('store away');
        }
      }
      const h = harness({ concurrency: 1 }, new NoRenew());
      const a = await h.add('a');
      await sleep(200);
      assert.equal(a.run!.stops.length, 0);
      assert.ok(h.scheduler.running.has(a.id));
      a.run!.finish();
      await settle();
      await h.close();
    });
  });
});
