// The Store conformance suite: every store (ours and third parties') must pass it. Runs under node:test.
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { Job, JobFinish, JobStatus } from '../model/job.js';
import { newJob } from '../model/job.js';
import type { IdempotencyRecord, IdempotencyStore, Store } from '../stores/store.js';
import { InvalidCursorError, missingIdempotencyMethods, StaleAttemptError } from '../stores/store.js';

export interface StoreSuiteOptions {
  /** Creates the store under test (once for the whole suite). */
  create(): Store | Promise<Store>;
  /** Releases it after the suite (close clients you created). */
  destroy?(store: Store): void | Promise<void>;
  /** How long the expiry tests wait past an `expiresAt`, in ms, for stores that expire lazily or by a sweep. Defaults to `1200`. */
  expiryGraceMs?: number;
  /** `false` for a store without the Idempotency-Key methods (it backs every job feature but the guard): their tests are skipped. Defaults to `true`. */
  idempotency?: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const inMs = (ms: number): string => new Date(Date.now() + ms).toISOString();

/** Every test uses fresh random ids and owners, so one store (and one database) serves the whole suite. */
function job(overrides: Partial<Job> = {}): Job {
  return { ...newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: null, status: 'running', leaseUntil: inMs(30_000) }), ...overrides };
}

function finish(status: JobFinish['status'], overrides: Partial<JobFinish> = {}): JobFinish {
  return { status, finishedAt: new Date().toISOString(), expiresAt: inMs(60_000), response: null, error: null, ...overrides };
}

async function collect(body: AsyncIterable<Uint8Array> | null): Promise<Buffer | null> {
  if (!body) return null;
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

/**
 * Declares the conformance tests for a store. Call it at the top level of a test file:
 *
 * ```ts
 * import { storeConformanceSuite } from 'express-bgrs/testing';
 * storeConformanceSuite('MyStore', { create: () => new MyStore(...), destroy: (s) => s.close?.() });
 * ```
 */
export function storeConformanceSuite(name: string, options: StoreSuiteOptions): void {
  describe(`Store conformance: ${name}`, () => {
    let store: Store;
    const grace = options.expiryGraceMs ?? 1200;
    before(async () => {
      store = await options.create();
    });
    after(async () => {
      await options.destroy?.(store);
    });

    describe('jobs', () => {
      it('creates and reads a job; unknown ids are null; a duplicate id is refused', async () => {
        const j = job({ owner: 'ann', name: 'GET /x?bgrs=yes' });
        await store.createJob(j);
        assert.deepEqual(await store.getJob(j.id), j);
        assert.equal(await store.getJob(randomUUID()), null);
        await assert.rejects(store.createJob(job({ id: j.id })));
      });

      it('shares no objects with its caller', async () => {
        const j = job();
        await store.createJob(j);
        j.message = 'changed by the caller';
        const read = (await store.getJob(j.id))!;
        assert.equal(read.message, null);
        read.status = 'failed';
        assert.equal((await store.getJob(j.id))!.status, 'running');
      });

      it('keeps the job as it was at the call, even when the caller changes it before the create resolves', async () => {
        const j = job({ message: 'as given' });
        const given = { ...j };
        const created = store.createJob(j);
        j.message = 'changed by the caller';
        j.url = '/changed';
        await created;
        assert.deepEqual(await store.getJob(j.id), given);
      });

      it('keeps the attempt a job is created with, and reads a job created without one as attempt 1', async () => {
        const owner = `owner-${randomUUID()}`;
        const third = job({ owner, attempt: 3 });
        await store.createJob(third);
        // A job as code built before attempts existed gives it (a third-party caller, an older process).
        const { attempt: _none, ...older } = job({ owner, createdAt: new Date(Date.now() - 1000).toISOString() });
        await store.createJob(older as Job);
        assert.equal((await store.getJob(third.id))?.attempt, 3);
        assert.equal((await store.getJob(older.id))?.attempt, 1);
        assert.deepEqual(
          (await store.listJobs({ owner, limit: 5 })).jobs.map((j) => [j.id, j.attempt]),
          [
            [third.id, 3],
            [older.id, 1],
          ],
        );
        const finished = await store.finishJob(older.id, finish('completed'));
        assert.equal(finished?.job.attempt, 1, 'the finished job too');
      });

      it('applies progress to a running job, and nothing to an unknown one', async () => {
        const j = job();
        await store.createJob(j);
        assert.equal(await store.updateProgress(j.id, { progress: 42, message: 'half', resultCount: 3 }), true);
        const read = (await store.getJob(j.id))!;
        assert.deepEqual([read.progress, read.message, read.resultCount], [42, 'half', 3]);
        assert.equal(await store.updateProgress(j.id, { message: null }), true);
        assert.equal((await store.getJob(j.id))!.progress, 42, 'fields not given are kept');
        assert.equal(await store.updateProgress(randomUUID(), { progress: 1 }), false);
      });

      it('finishes a job exactly once, and nothing changes it afterwards', async () => {
        const j = job({ progress: 10 });
        await store.createJob(j);
        const response = {
          status: 201,
          contentType: 'text/csv',
          size: 3,
          headers: [
            ['Content-Type', 'text/csv'],
            ['Set-Cookie', 'a=1'],
            ['Set-Cookie', 'b=2'],
          ] as Array<[string, string]>,
        };
        const finished = await store.finishJob(j.id, finish('completed', { response }));
        assert.ok(finished);
        assert.equal(finished.applied, true);
        const done = finished.job;
        assert.equal(done.status, 'completed');
        assert.equal(done.progress, 100);
        assert.equal(done.leaseUntil, null);
        assert.deepEqual(done.response, response);
        // A second end changes nothing, and says so with the job as it stands.
        const again = await store.finishJob(j.id, finish('failed', { error: { type: 'timeout', message: 'late' } }));
        assert.equal(again?.applied, false);
        assert.equal(again?.job.status, 'completed');
        assert.deepEqual(again?.job.response, response);
        assert.equal(await store.updateProgress(j.id, { progress: 5, message: 'late' }), false);
        assert.equal(await store.appendLog(j.id, { at: new Date().toISOString(), level: 'info', message: 'late' }), null);
        assert.equal(await store.startJob(j.id, { startedAt: new Date().toISOString(), leaseUntil: inMs(1000) }), false);
        const read = (await store.getJob(j.id))!;
        assert.deepEqual([read.status, read.progress, read.message, read.error], ['completed', 100, null, null]);
        assert.equal(await store.finishJob(randomUUID(), finish('failed')), null);
      });

      it('applies exactly one of many racing finishes, and every other one reports the end that won', async () => {
        for (let round = 0; round < 5; round++) {
          const j = job();
          await store.createJob(j);
          const statuses = ['completed', 'failed', 'cancelled'] as const;
          const results = await Promise.all(
            Array.from({ length: 9 }, (_, i) => store.finishJob(j.id, finish(statuses[i % 3]!, { error: { type: `t${i}`, message: `m${i}` } }))),
          );
          const applied = results.filter((r) => r?.applied);
          assert.equal(applied.length, 1, 'one finish wins');
          const winner = applied[0]!.job;
          for (const result of results) {
            assert.ok(result, 'the job exists');
            assert.equal(result.job.status, winner.status, 'a finish that lost reports the final status that won');
            assert.deepEqual(result.job.error, winner.error);
          }
        }
      });

      it('loses no final status when progress and finish race', async () => {
        for (let round = 0; round < 20; round++) {
          const j = job();
          await store.createJob(j);
          const writes: Array<Promise<unknown>> = [];
          for (let i = 0; i < 10; i++) writes.push(store.updateProgress(j.id, { progress: i * 10, message: `step ${i}` }));
          writes.splice(5, 0, store.finishJob(j.id, finish('cancelled', { error: { type: 'cancelled', message: 'stop' } })));
          await Promise.all(writes);
          const read = (await store.getJob(j.id))!;
          assert.equal(read.status, 'cancelled');
          assert.deepEqual(read.error, { type: 'cancelled', message: 'stop' });
        }
      });

      it('treats writes given the current attempt (1) as writes without one', async () => {
        const j = job();
        await store.createJob(j);
        await store.appendResult(j.id, Buffer.from('with '), 1);
        await store.appendResult(j.id, Buffer.from('and without'));
        assert.equal(await store.updateProgress(j.id, { progress: 20, message: 'one', ifAttempt: 1 }), true);
        assert.equal(await store.updateProgress(j.id, { resultCount: 3 }), true);
        const read = await store.getJob(j.id);
        assert.deepEqual([read?.progress, read?.message, read?.resultCount], [20, 'one', 3]);
        assert.equal(Object.hasOwn(read!, 'ifAttempt'), false, 'the condition is never stored');
        const done = await store.finishJob(j.id, finish('completed', { ifAttempt: 1 }));
        assert.equal(done?.applied, true);
        assert.equal(Object.hasOwn(done.job, 'ifAttempt'), false);
        assert.deepEqual(await store.getJob(j.id), done.job);
        assert.equal((await collect(await store.readResult(j.id)))?.toString(), 'with and without');
        assert.equal(await store.updateProgress(j.id, { progress: 5, ifAttempt: 1 }), false, 'final: refused as without ifAttempt');
        assert.equal((await store.finishJob(j.id, finish('failed', { ifAttempt: 1 })))?.applied, false);
        assert.equal(await store.finishJob(randomUUID(), finish('failed', { ifAttempt: 1 })), null, 'unknown: null as without ifAttempt');
        assert.equal(await store.updateProgress(randomUUID(), { progress: 5, ifAttempt: 1 }), false);
        await assert.rejects(store.appendResult(randomUUID(), Buffer.from('x'), 1), (error: unknown) => !(error instanceof StaleAttemptError));
      });

      it('refuses writes given an attempt the job is not on, without a restart too', async () => {
        const j = job();
        await store.createJob(j);
        await store.appendResult(j.id, Buffer.from('kept'));
        await assert.rejects(store.appendResult(j.id, Buffer.from('dropped'), 2), StaleAttemptError);
        assert.equal(await store.updateProgress(j.id, { progress: 70, ifAttempt: 2 }), false);
        assert.equal((await store.finishJob(j.id, finish('completed', { ifAttempt: 2 })))?.applied, false);
        assert.deepEqual(await store.getJob(j.id), j);
        assert.equal((await store.finishJob(j.id, finish('completed')))?.applied, true, 'without ifAttempt: as today');
        assert.equal((await collect(await store.readResult(j.id)))?.toString(), 'kept');
      });

      it('starts a queued job once', async () => {
        const j = job({ status: 'queued', startedAt: null });
        await store.createJob(j);
        const startedAt = new Date().toISOString();
        assert.equal(await store.startJob(j.id, { startedAt, leaseUntil: inMs(5000) }), true);
        const read = (await store.getJob(j.id))!;
        assert.equal(read.status, 'running');
        assert.equal(read.startedAt, startedAt);
        assert.equal(await store.startJob(j.id, { startedAt, leaseUntil: inMs(5000) }), false);
        assert.equal(await store.startJob(randomUUID(), { startedAt, leaseUntil: inMs(5000) }), false);
      });

      it('renews leases and reports the jobs that are no longer held', async () => {
        const running = job();
        const queued = job({ status: 'queued' });
        const done = job();
        for (const j of [running, queued, done]) await store.createJob(j);
        await store.finishJob(done.id, finish('cancelled'));
        const unknown = randomUUID();
        const until = inMs(90_000);
        const gone = await store.renewLeases([running.id, queued.id, done.id, unknown], until);
        assert.deepEqual([...gone].sort(), [done.id, unknown].sort());
        assert.equal((await store.getJob(running.id))!.leaseUntil, until);
        assert.equal((await store.getJob(queued.id))!.leaseUntil, until);
        assert.deepEqual(await store.renewLeases([], until), []);
      });

      it('records interrupted only when the lease has really expired', async () => {
        const j = job({ leaseUntil: inMs(60_000) });
        await store.createJob(j);
        const now = new Date().toISOString();
        const kept = await store.finishJob(j.id, finish('failed', { ifLeaseExpiredBy: now }));
        assert.equal(kept?.applied, false, 'a live lease wins');
        assert.equal(kept?.job.status, 'running');
        await store.renewLeases([j.id], new Date(Date.now() - 1000).toISOString());
        const interrupted = await store.finishJob(
          j.id,
          finish('failed', { ifLeaseExpiredBy: new Date().toISOString(), error: { type: 'interrupted', message: 'gone' } }),
        );
        assert.equal(interrupted?.applied, true);
        assert.equal(interrupted?.job.error?.type, 'interrupted');
      });

      it('forgets a deleted job, its log and its result', async () => {
        const j = job();
        await store.createJob(j);
        await store.appendLog(j.id, { at: new Date().toISOString(), level: 'info', message: 'x' });
        await store.appendResult(j.id, Buffer.from('body'));
        await store.finishJob(j.id, finish('completed'));
        assert.equal(await store.deleteJob(j.id), true);
        assert.equal(await store.getJob(j.id), null);
        assert.deepEqual(await store.readLogs(j.id, 0, 10), []);
        assert.equal(await collect(await store.readResult(j.id)), null);
        assert.equal(await store.deleteJob(j.id), false);
      });

      it('expires a finished job and its result at expiresAt', async () => {
        const j = job();
        await store.createJob(j);
        await store.appendResult(j.id, Buffer.from('soon gone'));
        await store.appendLog(j.id, { at: new Date().toISOString(), level: 'info', message: 'x' });
        await store.finishJob(j.id, finish('completed', { expiresAt: inMs(300) }));
        assert.equal((await store.getJob(j.id))?.status, 'completed');
        await sleep(300 + grace);
        assert.equal(await store.getJob(j.id), null);
        assert.equal(await collect(await store.readResult(j.id)), null);
        assert.deepEqual(await store.readLogs(j.id, 0, 10), []);
      });
    });

    // Queue mode keeps the request a worker replays. Every store must take createJob's second
    // argument; the rest runs only on a store with readRequest (a process-local one has none).
    describe('requests (queue mode)', () => {
      /** Every byte value, then a megabyte of noise: no encoding may touch them. */
      const everyByte = (): Buffer => Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      /** readRequest of the store under test, or a skip when the store keeps no requests. */
      const reader = (t: TestContext): ((id: string) => Promise<Buffer | null>) | null => {
        if (typeof store.readRequest === 'function') return store.readRequest.bind(store);
        t.skip('the store has no readRequest (it keeps no requests)');
        return null;
      };

      it('takes a request with a new job and never shows it in getJob or listJobs', async () => {
        const owner = `owner-${randomUUID()}`;
        const j = job({ owner, status: 'queued', startedAt: null });
        await store.createJob(j, Buffer.from('POST /orders HTTP/1.1\r\n\r\n{"a":1}'));
        assert.deepEqual(await store.getJob(j.id), j, 'the job as given, with no request field');
        assert.deepEqual((await store.listJobs({ owner, limit: 5 })).jobs, [j]);
        assert.deepEqual((await store.listJobs({ owner, statuses: ['queued'], limit: 5 })).jobs, [j]);
      });

      it('keeps the request bytes exactly, queued and running, however large', async (t) => {
        const read = reader(t);
        if (!read) return;
        const bodies = [everyByte(), randomBytes(2 ** 20), Buffer.alloc(0), Buffer.concat([everyByte(), Buffer.from('€ \u0000 \ud83d\ude00')])];
        for (const body of bodies) {
          const j = job({ status: 'queued', startedAt: null });
          await store.createJob(j, body);
          const stored = await read(j.id);
          assert.ok(Buffer.isBuffer(stored), `a Buffer for a request of ${body.length} bytes`);
          assert.ok(stored.equals(body), `${body.length} bytes come back byte for byte`);
          assert.equal(await store.startJob(j.id, { startedAt: new Date().toISOString(), leaseUntil: inMs(5000) }), true);
          await store.updateProgress(j.id, { progress: 50, message: 'half' });
          await store.appendLog(j.id, { at: new Date().toISOString(), level: 'info', message: 'x' });
          assert.ok((await read(j.id))?.equals(body), 'still there while the job runs');
        }
      });

      it('shares no buffer with its caller', async (t) => {
        const read = reader(t);
        if (!read) return;
        const j = job({ status: 'queued', startedAt: null });
        const request = everyByte();
        // Changed before the create has resolved: the store keeps what it was given at the call.
        const created = store.createJob(j, request);
        request.fill(0);
        await created;
        const first = (await read(j.id))!;
        assert.ok(first.equals(everyByte()));
        first.fill(1);
        assert.ok((await read(j.id))?.equals(everyByte()), "a buffer handed out is the caller's to change");
      });

      it('has none for a job created without one, or for an unknown id', async (t) => {
        const read = reader(t);
        if (!read) return;
        const j = job({ status: 'queued', startedAt: null });
        await store.createJob(j);
        assert.equal(await read(j.id), null);
        assert.equal(await read(randomUUID()), null);
      });

      it('drops the request when the job becomes final, whichever its status, and not before', async (t) => {
        const read = reader(t);
        if (!read) return;
        for (const [from, status] of [
          ['running', 'completed'],
          ['running', 'failed'],
          ['queued', 'cancelled'],
          ['running', 'cancelled'],
        ] as const) {
          const j = job({ status: from, startedAt: from === 'queued' ? null : new Date().toISOString(), leaseUntil: inMs(60_000) });
          await store.createJob(j, everyByte());
          // A finish that does not apply (a live lease) keeps it: the job may still be replayed.
          const kept = await store.finishJob(j.id, finish(status, { ifLeaseExpiredBy: new Date().toISOString() }));
          assert.equal(kept?.applied, false);
          assert.ok((await read(j.id))?.equals(everyByte()), `kept while ${from}`);
          assert.equal((await store.finishJob(j.id, finish(status)))?.applied, true);
          assert.equal(await read(j.id), null, `none once ${status}`);
        }
      });

      it('keeps none for a job created final', async (t) => {
        const read = reader(t);
        if (!read) return;
        const now = new Date().toISOString();
        const j = job({ status: 'completed', finishedAt: now, expiresAt: inMs(60_000), leaseUntil: null, progress: 100 });
        await store.createJob(j, everyByte());
        assert.equal(await read(j.id), null);
      });

      it('forgets the request of a deleted job', async (t) => {
        const read = reader(t);
        if (!read) return;
        const j = job({ status: 'queued', startedAt: null });
        await store.createJob(j, everyByte());
        assert.equal(await store.deleteJob(j.id), true);
        assert.equal(await read(j.id), null);
        assert.equal(await store.getJob(j.id), null);
      });

      it('refuses a duplicate id and leaves the first request as it was', async (t) => {
        const read = reader(t);
        if (!read) return;
        const j = job({ status: 'queued', startedAt: null });
        await store.createJob(j, everyByte());
        await assert.rejects(store.createJob(job({ id: j.id, status: 'queued' }), Buffer.from('another request')));
        await assert.rejects(store.createJob(job({ id: j.id, status: 'queued' })), 'nor does a duplicate without a request clear it');
        assert.ok((await read(j.id))?.equals(everyByte()));
        assert.deepEqual(await store.getJob(j.id), j);
      });
    });

    // Queue mode restarts a job whose worker died, when it is safe to run again. Runs only on a
    // store with restartJob.
    describe('takeJob (queue mode)', () => {
      type Take = NonNullable<Store['takeJob']>;
      /** takeJob of the store under test, or a skip when the store has none. */
      const taker = (t: TestContext): Take | null => {
        if (typeof store.takeJob === 'function') return store.takeJob.bind(store);
        t.skip('the store has no takeJob');
        return null;
      };
      const start = () => ({ startedAt: new Date().toISOString(), leaseUntil: inMs(30_000) });

      it('starts a queued job and gives it back as started, with its request byte for byte', async (t) => {
        const take = taker(t);
        if (!take) return;
        const request = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(4096)]);
        const j = job({ status: 'queued', startedAt: null, leaseUntil: null });
        await store.createJob(j, request);
        const at = start();
        const taken = await take(j.id, at);
        assert.ok(taken);
        assert.equal(taken.started, true);
        assert.deepEqual(taken.job, { ...j, status: 'running', startedAt: at.startedAt, leaseUntil: at.leaseUntil });
        assert.ok(taken.request?.equals(request), 'the request, byte for byte');
        assert.deepEqual(await store.getJob(j.id), taken.job, 'the start is stored');
        assert.deepEqual((await store.listJobs({ owner: j.owner, statuses: ['running'], limit: 100 })).jobs.map((x) => x.id).includes(j.id), true);
      });

      it('gives a running job back as it is, not started again; null for a final or unknown job', async (t) => {
        const take = taker(t);
        if (!take) return;
        const j = job({ startedAt: new Date(Date.now() - 60_000).toISOString(), leaseUntil: new Date(Date.now() - 1000).toISOString() });
        await store.createJob(j, Buffer.from('GET / HTTP/1.1'));
        const taken = await take(j.id, start());
        assert.equal(taken?.started, false);
        assert.deepEqual(taken?.job, j, 'unchanged: the worker applies its crash rule');
        assert.equal(taken?.request?.toString(), 'GET / HTTP/1.1');
        await store.finishJob(j.id, finish('cancelled'));
        assert.equal(await take(j.id, start()), null);
        assert.equal(await take(randomUUID(), start()), null);
      });

      it('gives a job created without a request back with request null', async (t) => {
        const take = taker(t);
        if (!take) return;
        const j = job({ status: 'queued', startedAt: null, leaseUntil: null });
        await store.createJob(j);
        const taken = await take(j.id, start());
        assert.equal(taken?.started, true);
        assert.equal(taken?.request, null);
      });

      it('starts a queued job once, of two racing takes', async (t) => {
        const take = taker(t);
        if (!take) return;
        const j = job({ status: 'queued', startedAt: null, leaseUntil: null });
        await store.createJob(j, Buffer.from('x'));
        const both = await Promise.all([take(j.id, start()), take(j.id, start())]);
        assert.equal(both.filter((taken) => taken?.started).length, 1, JSON.stringify(both.map((taken) => taken?.started)));
      });
    });

    describe('restarts (queue mode)', () => {
      type Restart = Parameters<NonNullable<Store['restartJob']>>[1];
      /** restartJob of the store under test, or a skip when the store has none. */
      const restarter = (t: TestContext): ((id: string, restart: Restart) => Promise<Job | null>) | null => {
        if (typeof store.restartJob === 'function') return store.restartJob.bind(store);
        t.skip('the store has no restartJob');
        return null;
      };
      const ago = (ms: number): string => new Date(Date.now() - ms).toISOString();
      /** A restart now: a fresh start and lease, for a job whose lease passed by now. */
      const now = (overrides: Partial<Restart> = {}): Restart => ({
        startedAt: new Date().toISOString(),
        leaseUntil: inMs(30_000),
        ifLeaseExpiredBy: new Date().toISOString(),
        ...overrides,
      });
      /** A running job whose worker stopped renewing its lease a second ago. */
      const dead = (overrides: Partial<Job> = {}): Job => job({ startedAt: ago(60_000), leaseUntil: ago(1000), ...overrides });
      const line = (level: 'info' | 'warning' | 'error', message: string) => ({ at: new Date().toISOString(), level, message });
      const response = { status: 200, contentType: 'text/plain', size: 5, headers: [['Content-Type', 'text/plain']] as Array<[string, string]> };

      it('restarts a running job whose lease has passed: the next attempt, the new start and lease, a clean result, the log and request kept', async (t) => {
        const restart = restarter(t);
        if (!restart) return;
        const owner = `owner-${randomUUID()}`;
        const request = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
        const j = dead({ owner, response });
        await store.createJob(j, request);
        await store.updateProgress(j.id, { progress: 40, message: 'half', resultCount: 7 });
        for (const [level, message] of [
          ['info', 'attempt 1 began'],
          ['warning', 'slow'],
          ['error', 'lost a row'],
        ] as const)
          await store.appendLog(j.id, line(level, message));
        // Bigger than a store's piece size (RedisStore's 256 KiB): every piece must go.
        await store.appendResult(j.id, randomBytes(300 * 1024));
        await store.appendResult(j.id, Buffer.from('attempt 1'));
        const given = now();
        const restarted = await restart(j.id, given);
        const expected: Job = {
          ...j,
          attempt: 2,
          startedAt: given.startedAt,
          leaseUntil: given.leaseUntil,
          progress: 0,
          message: null,
          resultCount: 0,
          response: null,
          warnings: 1,
          errors: 1,
        };
        assert.deepEqual(restarted, expected, 'the job after the restart');
        assert.deepEqual(await store.getJob(j.id), expected);
        assert.deepEqual(
          (await store.readLogs(j.id, 0, 10)).map((l) => [l.seq, l.level, l.message]),
          [
            [1, 'info', 'attempt 1 began'],
            [2, 'warning', 'slow'],
            [3, 'error', 'lost a row'],
          ],
          'the log tells what attempt 1 did',
        );
        assert.equal((await collect(await store.readResult(j.id)))?.length, 0, 'no byte of attempt 1 is left');
        if (typeof store.readRequest === 'function') assert.ok((await store.readRequest(j.id))?.equals(request), 'the request is kept, to be replayed');
      });

      it('applies at a lease that passed exactly at ifLeaseExpiredBy, and not a millisecond before', async (t) => {
        const restart = restarter(t);
        if (!restart) return;
        const lease = ago(5000);
        const j = dead({ leaseUntil: lease });
        await store.createJob(j);
        const earlier = new Date(Date.parse(lease) - 1).toISOString();
        assert.equal(await restart(j.id, now({ ifLeaseExpiredBy: earlier })), null);
        assert.deepEqual(await store.getJob(j.id), j);
        assert.equal((await restart(j.id, now({ ifLeaseExpiredBy: lease })))?.attempt, 2);
      });

      it('refuses a running job whose lease is alive or null, and changes nothing', async (t) => {
        const restart = restarter(t);
        if (!restart) return;
        for (const leaseUntil of [inMs(60_000), null]) {
          const j = job({ leaseUntil });
          await store.createJob(j);
          await store.updateProgress(j.id, { progress: 30, message: 'busy' });
          await store.appendLog(j.id, line('warning', 'still here'));
          await store.appendResult(j.id, Buffer.from('attempt 1'));
          const before = await store.getJob(j.id);
          assert.equal(await restart(j.id, now()), null, `a lease ${leaseUntil === null ? 'that is null' : 'still alive'} keeps its worker`);
          assert.deepEqual(await store.getJob(j.id), before);
          assert.equal((await store.readLogs(j.id, 0, 10)).length, 1);
          assert.equal((await store.finishJob(j.id, finish('completed')))?.applied, true);
          assert.equal((await collect(await store.readResult(j.id)))?.toString(), 'attempt 1', 'its result is whole');
        }
      });

      it('refuses a queued job, a final one whatever its status, and an unknown id', async (t) => {
        const restart = restarter(t);
        if (!restart) return;
        const queued = dead({ status: 'queued', startedAt: null });
        await store.createJob(queued);
        assert.equal(await restart(queued.id, now()), null, 'a queued job is started, not restarted');
        assert.deepEqual(await store.getJob(queued.id), queued);
        for (const status of ['completed', 'failed', 'cancelled'] as const) {
          const j = dead();
          await store.createJob(j);
          await store.appendResult(j.id, Buffer.from(`ended ${status}`));
          const ended = await store.finishJob(j.id, finish(status, { response }));
          assert.equal(ended?.applied, true);
          assert.equal(await restart(j.id, now()), null, `a ${status} job stays ${status}`);
          assert.deepEqual(await store.getJob(j.id), ended.job);
          assert.equal((await collect(await store.readResult(j.id)))?.toString(), `ended ${status}`);
        }
        assert.equal(await restart(randomUUID(), now()), null);
      });

      it('applies exactly one of racing restarts with the same ifLeaseExpiredBy', async (t) => {
        const restart = restarter(t);
        if (!restart) return;
        for (let round = 0; round < 5; round++) {
          const j = dead();
          await store.createJob(j);
          const at = new Date().toISOString();
          const restarts = Array.from({ length: 5 }, (_, i) => now({ ifLeaseExpiredBy: at, leaseUntil: inMs(30_000 + i) }));
          const results: Array<Job | null> = await Promise.all(restarts.map((r) => restart(j.id, r)));
          const applied = results.flatMap((result, i) => (result ? [i] : []));
          assert.equal(applied.length, 1, 'one restart wins; the others find its lease');
          const read = await store.getJob(j.id);
          assert.deepEqual([read?.attempt, read?.leaseUntil], [2, restarts[applied[0]!]!.leaseUntil]);
        }
      });

      it('runs on normally after a restart, and the final result holds only the new bytes', async (t) => {
        const restart = restarter(t);
        if (!restart) return;
        const j = dead();
        await store.createJob(j);
        await store.appendLog(j.id, line('info', 'attempt 1'));
        await store.appendResult(j.id, randomBytes(300 * 1024));
        await store.appendResult(j.id, Buffer.from('old tail'));
        assert.ok(await restart(j.id, now()));
        assert.equal(await store.appendLog(j.id, line('info', 'attempt 2')), 2, 'the log goes on numbering');
        assert.equal(await store.updateProgress(j.id, { progress: 50, message: 'again', resultCount: 1 }), true);
        assert.deepEqual(await store.renewLeases([j.id], inMs(60_000)), [], 'the new worker holds it');
        const fresh = randomBytes(70 * 1024);
        await store.appendResult(j.id, fresh);
        await store.appendResult(j.id, Buffer.from('new tail'));
        const done = await store.finishJob(j.id, finish('completed', { response }));
        assert.equal(done?.applied, true);
        assert.deepEqual([done.job.attempt, done.job.progress, done.job.resultCount, done.job.response], [2, 100, 1, response]);
        assert.ok(
          (await collect(await store.readResult(j.id)))?.equals(Buffer.concat([fresh, Buffer.from('new tail')])),
          'only the second attempt is replayed',
        );
        assert.equal(await restart(j.id, now()), null, 'a finished job is never restarted');
      });

      it('keeps the attempt through getJob and listJobs, in the running listing, restart after restart', async (t) => {
        const restart = restarter(t);
        if (!restart) return;
        const owner = `owner-${randomUUID()}`;
        const j = dead({ owner });
        await store.createJob(j);
        assert.equal((await restart(j.id, now()))?.attempt, 2);
        await store.renewLeases([j.id], ago(1000));
        assert.equal((await restart(j.id, now()))?.attempt, 3, 'a second worker death, a third attempt');
        const attempts = async (statuses?: JobStatus[]): Promise<Array<[string, JobStatus, number]>> =>
          (await store.listJobs({ owner, limit: 5, ...(statuses ? { statuses } : {}) })).jobs.map((l) => [l.id, l.status, l.attempt]);
        assert.equal((await store.getJob(j.id))?.attempt, 3);
        assert.deepEqual(await attempts(), [[j.id, 'running', 3]]);
        assert.deepEqual(await attempts(['running']), [[j.id, 'running', 3]], 'still listed as running');
        assert.deepEqual(await attempts(['queued']), []);
        await store.finishJob(j.id, finish('failed', { error: { type: 'interrupted', message: 'gone again' } }));
        assert.deepEqual(await attempts(['failed']), [[j.id, 'failed', 3]]);
        assert.deepEqual(await attempts(['running']), []);
      });

      // A worker that was alive but late (its event loop blocked past its lease) comes back after
      // another worker restarted the job: every write it makes with its attempt must be dropped.
      it('fences the writes of an earlier attempt after a restart, and lets the new attempt write', async (t) => {
        const restart = restarter(t);
        if (!restart) return;
        const j = dead();
        await store.createJob(j);
        await store.appendResult(j.id, Buffer.from('attempt 1 before'), 1);
        assert.equal((await restart(j.id, now()))?.attempt, 2);
        // Bigger than a store's piece size (RedisStore's 256 KiB): no piece of it may land.
        await assert.rejects(store.appendResult(j.id, randomBytes(300 * 1024), 1), StaleAttemptError);
        await assert.rejects(store.appendResult(j.id, Buffer.from('attempt 1 late'), 1), (error: unknown) => {
          assert.ok(error instanceof StaleAttemptError);
          assert.equal(error.code, 'BGRS_STALE_ATTEMPT');
          return true;
        });
        await store.appendResult(j.id, Buffer.from('attempt 2'), 2);
        const before = await store.getJob(j.id);
        assert.equal(await store.updateProgress(j.id, { progress: 90, message: 'stale', resultCount: 9, ifAttempt: 1 }), false);
        assert.deepEqual(await store.getJob(j.id), before, 'a stale progress update changes nothing');
        assert.equal(await store.updateProgress(j.id, { progress: 50, message: 'fresh', ifAttempt: 2 }), true);
        const stale = await store.finishJob(j.id, finish('completed', { response, ifAttempt: 1 }));
        assert.equal(stale?.applied, false, 'the earlier attempt cannot end the job');
        assert.deepEqual(
          [stale.job.status, stale.job.attempt, stale.job.response, stale.job.progress, stale.job.message],
          ['running', 2, null, 50, 'fresh'],
          'the job as stored: still running its second attempt',
        );
        assert.deepEqual(await store.getJob(j.id), stale.job);
        const done = await store.finishJob(j.id, finish('completed', { response, ifAttempt: 2 }));
        assert.equal(done?.applied, true);
        assert.deepEqual([done.job.status, done.job.attempt, done.job.response], ['completed', 2, response]);
        assert.equal((await collect(await store.readResult(j.id)))?.toString(), 'attempt 2', 'only the new attempt is in the result');
        await assert.rejects(store.appendResult(j.id, Buffer.from('after the end'), 2), 'a final job takes no chunk, whichever attempt');
      });

      it('restarts a job created without attempt info as its attempt 2', async (t) => {
        const restart = restarter(t);
        if (!restart) return;
        const { attempt: _none, ...older } = dead();
        await store.createJob(older as Job);
        assert.equal((await store.getJob(older.id))?.attempt, 1);
        assert.equal((await restart(older.id, now()))?.attempt, 2);
        assert.equal((await store.getJob(older.id))?.attempt, 2);
      });
    });

    describe('change notifications (watchChanges, optional)', () => {
      type Watch = NonNullable<Store['watchChanges']>;
      /** watchChanges of the store under test, or a skip when the store cannot notify. */
      const watcher = (t: TestContext): Watch | null => {
        if (typeof store.watchChanges === 'function') return store.watchChanges.bind(store);
        t.skip('the store has no watchChanges (it cannot notify)');
        return null;
      };
      /** Resolves once `check` holds, polling it; rejects after `ms`. */
      const until = async (what: string, ms: number, check: () => boolean): Promise<void> => {
        const deadline = Date.now() + ms;
        while (!check()) {
          if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms`);
          await sleep(5);
        }
      };

      it('tells every listener of a start, progress, a log line, the finish and a delete, each visible when told', async (t) => {
        const watch = watcher(t);
        if (!watch) return;
        // For each notification, what a read made at that moment sees: a change is told once visible.
        const seen: Array<{ id: string | null; job: Promise<Job | null> }> = [];
        const second: Array<string | null> = [];
        const unwatch = await watch((id) => seen.push({ id, job: id === null ? Promise.resolve(null) : store.getJob(id) }));
        const unwatchSecond = await watch((id) => second.push(id));
        try {
          const j = job({ status: 'queued', leaseUntil: inMs(30_000) });
          await store.createJob(j);
          const heard = (predicate: (job: Job | null) => boolean) => async (): Promise<void> => {
            const deadline = Date.now() + 2000;
            for (;;) {
              const mine = await Promise.all(seen.filter((n) => n.id === j.id).map((n) => n.job));
              if (mine.some(predicate)) return;
              if (Date.now() > deadline) throw new Error(`no notification of job ${j.id} showing the change within 2000 ms`);
              await sleep(5);
            }
          };
          assert.equal(await store.startJob(j.id, { startedAt: new Date().toISOString(), leaseUntil: inMs(30_000) }), true);
          await heard((read) => read?.status === 'running')();
          await store.updateProgress(j.id, { progress: 42, message: 'half' });
          await heard((read) => read?.progress === 42)();
          const before = seen.filter((n) => n.id === j.id).length;
          assert.equal(await store.appendLog(j.id, { at: new Date().toISOString(), level: 'info', message: 'a line' }), 1);
          await until('notification of the log line', 2000, () => seen.filter((n) => n.id === j.id).length > before);
          assert.equal((await store.finishJob(j.id, finish('completed')))?.applied, true);
          await heard((read) => read?.status === 'completed')();
          await until('notification to the second listener', 2000, () => second.includes(j.id));
          assert.equal(await store.deleteJob(j.id), true);
          await heard((read) => read === null)();
        } finally {
          await unwatch();
          await unwatchSecond();
        }
      });

      it('stops telling a listener once its unwatch resolved, and keeps telling the others', async (t) => {
        const watch = watcher(t);
        if (!watch) return;
        const kept: Array<string | null> = [];
        const dropped: Array<string | null> = [];
        const unwatchKept = await watch((id) => kept.push(id));
        const unwatchDropped = await watch((id) => dropped.push(id));
        try {
          await unwatchDropped();
          const j = job();
          await store.createJob(j);
          await store.updateProgress(j.id, { progress: 7 });
          await until('notification to the remaining listener', 2000, () => kept.includes(j.id));
          // As long again for a late one: none comes.
          await sleep(100);
          assert.equal(dropped.includes(j.id), false, 'the removed listener heard nothing');
        } finally {
          await unwatchKept();
        }
      });
    });

    describe('log lines', () => {
      it('numbers lines from 1 in order, counts warnings and errors, and pages them', async () => {
        const j = job();
        await store.createJob(j);
        const levels = ['info', 'warning', 'info', 'error', 'warning'] as const;
        for (const [i, level] of levels.entries()) {
          assert.equal(await store.appendLog(j.id, { at: new Date().toISOString(), level, message: `line ${i + 1}` }), i + 1);
        }
        const read = (await store.getJob(j.id))!;
        assert.deepEqual([read.warnings, read.errors], [2, 1]);
        const all = await store.readLogs(j.id, 0, 100);
        assert.deepEqual(
          all.map((l) => [l.seq, l.level, l.message]),
          levels.map((level, i) => [i + 1, level, `line ${i + 1}`]),
        );
        assert.deepEqual(
          (await store.readLogs(j.id, 2, 2)).map((l) => l.seq),
          [3, 4],
        );
        assert.deepEqual(await store.readLogs(j.id, 5, 10), []);
        assert.deepEqual(await store.readLogs(randomUUID(), 0, 10), []);
        assert.equal(await store.appendLog(randomUUID(), { at: new Date().toISOString(), level: 'info', message: 'x' }), null);
      });

      it('gives concurrent appends distinct consecutive numbers', async () => {
        const j = job();
        await store.createJob(j);
        const seqs = await Promise.all(
          Array.from({ length: 50 }, (_, i) =>
            store.appendLog(j.id, { at: new Date().toISOString(), level: i % 5 === 0 ? 'warning' : 'info', message: `m${i}` }),
          ),
        );
        assert.deepEqual(
          [...seqs].sort((a, b) => a! - b!),
          Array.from({ length: 50 }, (_, i) => i + 1),
        );
        assert.equal((await store.getJob(j.id))!.warnings, 10);
        const lines = await store.readLogs(j.id, 0, 1000);
        assert.deepEqual(
          lines.map((l) => l.seq),
          Array.from({ length: 50 }, (_, i) => i + 1),
        );
      });
    });

    describe('results', () => {
      it('streams chunks back in order, byte for byte', async () => {
        const j = job();
        await store.createJob(j);
        const hash = createHash('sha256');
        let size = 0;
        for (let i = 0; i < 80; i++) {
          const chunk = randomBytes(i === 79 ? 1234 : 64 * 1024);
          hash.update(chunk);
          size += chunk.length;
          await store.appendResult(j.id, chunk);
        }
        await store.finishJob(j.id, finish('completed'));
        const body = (await collect(await store.readResult(j.id)))!;
        assert.equal(body.length, size);
        assert.equal(createHash('sha256').update(body).digest('hex'), hash.digest('hex'));
      });

      it('keeps an empty body, and has none for an unknown job', async () => {
        const j = job();
        await store.createJob(j);
        await store.finishJob(j.id, finish('completed'));
        assert.equal((await collect(await store.readResult(j.id)))?.length, 0);
        assert.equal(await collect(await store.readResult(randomUUID())), null);
      });

      it('copies chunks in: a buffer reused by the caller does not change the stored body', async () => {
        const j = job();
        await store.createJob(j);
        const buffer = Buffer.from('first');
        await store.appendResult(j.id, buffer);
        buffer.write('XXXXX');
        await store.finishJob(j.id, finish('completed'));
        assert.equal((await collect(await store.readResult(j.id)))!.toString(), 'first');
      });

      /** The store under test when it honours appendResult's offset, or a skip. */
      const resumable = (t: TestContext): boolean => {
        if (store.resumableResults === true) return true;
        t.skip('the store does not declare resumableResults');
        return false;
      };

      it('with resumableResults: a call made again at the same offset stores nothing twice, a partly held chunk only its rest', async (t) => {
        if (!resumable(t)) return;
        const j = job();
        await store.createJob(j);
        await store.appendResult(j.id, Buffer.from('abc'), undefined, 0);
        await store.appendResult(j.id, Buffer.from('abc'), undefined, 0);
        // 'abc' is held: of 'bcdef' at offset 1, only 'def' is new.
        await store.appendResult(j.id, Buffer.from('bcdef'), undefined, 1);
        await store.appendResult(j.id, Buffer.from('ghi'), undefined, 6);
        await store.appendResult(j.id, Buffer.from('ghi'), undefined, 6);
        await store.appendResult(j.id, Buffer.alloc(0), undefined, 9);
        await store.finishJob(j.id, finish('completed'));
        assert.equal((await collect(await store.readResult(j.id)))!.toString(), 'abcdefghi');
      });

      it('with resumableResults: refuses an offset past the bytes held, storing nothing', async (t) => {
        if (!resumable(t)) return;
        const j = job();
        await store.createJob(j);
        await store.appendResult(j.id, Buffer.from('abc'), undefined, 0);
        await assert.rejects(store.appendResult(j.id, Buffer.from('xyz'), undefined, 4));
        await store.appendResult(j.id, Buffer.from('def'), undefined, 3);
        await store.finishJob(j.id, finish('completed'));
        assert.equal((await collect(await store.readResult(j.id)))!.toString(), 'abcdef');
      });

      it('with resumableResults: checks the attempt before the offset, and counts from 0 again after a restart', async (t) => {
        if (!resumable(t) || typeof store.restartJob !== 'function') return t.skip('the store has no restartJob');
        const j = job({ startedAt: new Date(Date.now() - 60_000).toISOString(), leaseUntil: new Date(Date.now() - 1000).toISOString() });
        await store.createJob(j);
        await store.appendResult(j.id, Buffer.from('first run'), 1, 0);
        const restarted = await store.restartJob(j.id, {
          startedAt: new Date().toISOString(),
          leaseUntil: inMs(30_000),
          ifLeaseExpiredBy: new Date().toISOString(),
        });
        assert.equal(restarted?.attempt, 2);
        await assert.rejects(store.appendResult(j.id, Buffer.from(' late'), 1, 9), (err: unknown) => (err as { code?: string }).code === 'BGRS_STALE_ATTEMPT');
        await store.appendResult(j.id, Buffer.from('second'), 2, 0);
        await store.appendResult(j.id, Buffer.from('second'), 2, 0);
        await store.finishJob(j.id, finish('completed'));
        assert.equal((await collect(await store.readResult(j.id)))!.toString(), 'second');
      });

      it('with resumableResults: refuses an offset append to a final or unknown job', async (t) => {
        if (!resumable(t)) return;
        const j = job();
        await store.createJob(j);
        await store.appendResult(j.id, Buffer.from('abc'), undefined, 0);
        await store.finishJob(j.id, finish('completed'));
        await assert.rejects(store.appendResult(j.id, Buffer.from('abc'), undefined, 0));
        await assert.rejects(store.appendResult(randomUUID(), Buffer.from('abc'), undefined, 0));
      });
    });

    describe('listing', () => {
      it('lists newest first, filtered by owner and status, page by page without gaps or repeats', async () => {
        const owner = `owner-${randomUUID()}`;
        const created: Job[] = [];
        for (let i = 0; i < 12; i++) {
          // Distinct, increasing creation times (two share one, to exercise the id tie-break).
          const at = new Date(Date.UTC(2030, 0, 1, 0, 0, i === 5 ? 4 : i)).toISOString();
          const j = job({ owner, createdAt: at, status: i % 3 === 0 ? 'queued' : 'running' });
          await store.createJob(j);
          created.push(j);
        }
        await store.finishJob(created[1]!.id, finish('failed'));
        await store.finishJob(created[2]!.id, finish('completed'));
        await store.createJob(job({ owner: `someone-else-${randomUUID()}` }));
        const expected = [...created]
          .sort((a, b) => (a.createdAt === b.createdAt ? (a.id < b.id ? 1 : -1) : a.createdAt < b.createdAt ? 1 : -1))
          .map((j) => j.id);
        const seen: string[] = [];
        let cursor: string | null = null;
        let pages = 0;
        do {
          const page = await store.listJobs({ owner, limit: 5, cursor });
          assert.ok(page.jobs.length <= 5);
          seen.push(...page.jobs.map((j) => j.id));
          cursor = page.next;
          pages++;
        } while (cursor && pages < 10);
        assert.deepEqual(seen, expected);
        assert.equal(pages, 3);
        const failedOrDone = await store.listJobs({ owner, statuses: ['failed', 'completed'], limit: 10 });
        assert.deepEqual(
          failedOrDone.jobs.map((j) => j.id),
          [created[2]!.id, created[1]!.id],
        );
        assert.equal(failedOrDone.next, null);
        const queued = await store.listJobs({ owner, statuses: ['queued'] as JobStatus[], limit: 100 });
        assert.equal(queued.jobs.length, 4);
        const everyone = await store.listJobs({ limit: 1000 });
        assert.ok(
          everyone.jobs.some((j) => j.owner !== owner),
          'owner undefined lists every owner',
        );
        await assert.rejects(store.listJobs({ owner, limit: 5, cursor: 'not-a-cursor' }), InvalidCursorError);
      });

      it('lists anonymous jobs for owner null only', async () => {
        const anonymous = job({ owner: null, createdAt: '2031-01-01T00:00:00.000Z' });
        await store.createJob(anonymous);
        const page = await store.listJobs({ owner: null, limit: 1 });
        assert.equal(page.jobs[0]?.id, anonymous.id);
        assert.equal(page.jobs[0]?.owner, null);
      });

      it('gives an anonymous job the owner its replay established, once, and lists it under that owner only', async () => {
        const owner = `owner-${randomUUID()}`;
        const anonymous = job({ owner: null, createdAt: '2032-01-01T00:00:00.000Z' });
        await store.createJob(anonymous);
        assert.equal(await store.updateProgress(anonymous.id, { progress: 5, owner }), true);
        const read = await store.getJob(anonymous.id);
        assert.equal(read?.owner, owner);
        assert.equal(read?.progress, 5);
        assert.deepEqual(
          (await store.listJobs({ owner, limit: 5 })).jobs.map((j) => j.id),
          [anonymous.id],
        );
        assert.ok(!(await store.listJobs({ owner: null, limit: 50 })).jobs.some((j) => j.id === anonymous.id), 'no longer listed as anonymous');
        // An owned job keeps its owner.
        await store.updateProgress(anonymous.id, { owner: 'someone-else' });
        assert.equal((await store.getJob(anonymous.id))?.owner, owner);
        assert.equal((await store.listJobs({ owner: 'someone-else', limit: 5 })).jobs.length, 0);
        // And it finishes, expires and is listed under that owner.
        await store.finishJob(anonymous.id, finish('completed'));
        assert.equal((await store.listJobs({ owner, limit: 5 })).jobs[0]?.status, 'completed');
      });
    });

    // Optional: a store without the four key methods backs every job feature but the guard.
    describe('idempotency keys', { skip: options.idempotency === false ? 'the store keeps no Idempotency-Keys (idempotency: false)' : false }, () => {
      let keys: Store & IdempotencyStore;
      before(() => {
        const missing = missingIdempotencyMethods(store);
        assert.deepEqual(missing, [], 'a store for the guard has all four key methods (or pass idempotency: false)');
        keys = store as Store & IdempotencyStore;
      });
      const record = (overrides: Partial<IdempotencyRecord> = {}): IdempotencyRecord => ({
        fingerprint: 'fp',
        jobId: randomUUID(),
        state: 'running',
        leaseUntil: Date.now() + 30_000,
        expiresAt: Date.now() + 60_000,
        ...overrides,
      });

      it('lets exactly one of many concurrent claims win', async () => {
        const key = `key-${randomUUID()}`;
        const claims = Array.from({ length: 50 }, (_, i) => record({ fingerprint: `fp-${i}` }));
        const results = await Promise.all(claims.map((r) => keys.claimIdempotencyKey(key, r)));
        const winners = results.flatMap((r, i) => (r.won ? [i] : []));
        assert.equal(winners.length, 1);
        const winner = claims[winners[0]!]!;
        for (const r of results)
          if (!r.won) assert.deepEqual([r.record.jobId, r.record.fingerprint, r.record.state], [winner.jobId, winner.fingerprint, 'running']);
      });

      it('renews, completes and releases only for the holder', async () => {
        const key = `key-${randomUUID()}`;
        const mine = record();
        assert.equal((await keys.claimIdempotencyKey(key, mine)).won, true);
        assert.equal(await keys.renewIdempotencyKey(key, randomUUID(), Date.now() + 60_000), false);
        assert.equal(await keys.renewIdempotencyKey(key, mine.jobId, Date.now() + 60_000), true);
        assert.equal(await keys.completeIdempotencyKey(key, randomUUID(), Date.now() + 60_000), false);
        assert.equal(await keys.completeIdempotencyKey(key, mine.jobId, Date.now() + 60_000), true);
        const again = await keys.claimIdempotencyKey(key, record());
        assert.equal(again.won, false);
        assert.equal(again.won === false && again.record.state, 'done');
        assert.equal(await keys.releaseIdempotencyKey(key, randomUUID()), false);
        assert.equal(await keys.releaseIdempotencyKey(key, mine.jobId), true);
        assert.equal((await keys.claimIdempotencyKey(key, record())).won, true, 'a released key is new again');
      });

      it('never hands over a claim by itself: a lapsed one is returned, and only its release frees the key', async () => {
        const key = `key-${randomUUID()}`;
        const dead = record({ leaseUntil: Date.now() + 200 });
        assert.equal((await keys.claimIdempotencyKey(key, dead)).won, true);
        assert.equal((await keys.claimIdempotencyKey(key, record())).won, false);
        await sleep(300);
        const lapsed = await keys.claimIdempotencyKey(key, record());
        assert.equal(lapsed.won, false, 'a lapsed claim is returned, for the guard to look at its job');
        assert.equal(lapsed.won === false && lapsed.record.jobId, dead.jobId);
        assert.ok(lapsed.won === false && lapsed.record.leaseUntil <= Date.now());
        assert.equal(await keys.releaseIdempotencyKey(key, dead.jobId), true);
        const taker = record();
        assert.equal((await keys.claimIdempotencyKey(key, taker)).won, true);
        assert.equal(await keys.renewIdempotencyKey(key, dead.jobId, Date.now() + 60_000), false, 'the dead holder lost it');
        await keys.completeIdempotencyKey(key, taker.jobId, Date.now() + 60_000);
        await sleep(300);
        assert.equal((await keys.claimIdempotencyKey(key, record({ leaseUntil: Date.now() }))).won, false);
      });

      it('forgets a record at expiresAt', async () => {
        const key = `key-${randomUUID()}`;
        const mine = record();
        await keys.claimIdempotencyKey(key, mine);
        await keys.completeIdempotencyKey(key, mine.jobId, Date.now() + 300);
        assert.equal((await keys.claimIdempotencyKey(key, record())).won, false);
        await sleep(300 + grace);
        assert.equal((await keys.claimIdempotencyKey(key, record())).won, true);
      });
    });
  });
}
