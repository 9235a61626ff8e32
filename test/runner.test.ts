// The runner's end paths, without an HTTP server: every way a job ends records one final state and
// runs its end hook exactly once, with `answered` telling whether the handler had begun its response.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { parseOptions } from '../src/config/options.js';
import type { Dispatch, RunOptions } from '../src/jobs/runner.js';
import { runJob } from '../src/jobs/runner.js';
import { JobAbortError } from '../src/model/errors.js';
import type { Job, JobFinish, JobFinished } from '../src/model/job.js';
import { newJob } from '../src/model/job.js';
import { type Envelope, Replayer } from '../src/replay/capture.js';
import { MemoryStore } from '../src/stores/memory.js';

const envelope: Envelope = {
  method: 'GET',
  url: '/work',
  rawHeaders: ['Host', 'localhost'],
  body: null,
  bodyConsumed: false,
  contentLength: undefined,
  remoteAddress: '127.0.0.1',
  remotePort: 1234,
  remoteFamily: 'IPv4',
  encrypted: false,
};

interface Ended {
  job: Job | null;
  answered: boolean;
}

/** Records a running job in `store`, runs `dispatch` as its handler, and collects its end hook calls. */
async function run(dispatch: Dispatch, options: RunOptions = {}, store = new MemoryStore(), extra: Partial<Parameters<typeof parseOptions>[0]> = {}) {
  const config = parseOptions({ store, lease: 2000, ...extra });
  const id = randomUUID();
  await store.createJob(newJob({ id, method: 'GET', url: '/work', owner: null, status: 'running', leaseUntil: new Date(Date.now() + 2000).toISOString() }));
  const ends: Ended[] = [];
  const running = runJob(config, new Replayer(), id, envelope, dispatch, {
    ...options,
    onEnd: async (job, answered) => {
      ends.push({ job, answered });
    },
  });
  return { id, store, running, ends };
}

describe('the runner ends a job once, whatever ends it', () => {
  // The runner's own timers are unref'd (a server's socket keeps a real process alive): hold the loop open here.
  let alive: NodeJS.Timeout;
  before(() => {
    alive = setInterval(() => {}, 1000);
  });
  after(() => clearInterval(alive));

  it('the handler answered: completed, its response recorded, answered', async () => {
    const { id, store, running, ends } = await run((_req, res) => res.end('ok'));
    await running.done;
    const job = (await store.getJob(id))!;
    assert.equal(job.status, 'completed');
    assert.equal(job.response?.status, 200);
    assert.equal(ends.length, 1);
    assert.deepEqual([ends[0]!.job?.status, ends[0]!.answered], ['completed', true]);
  });

  it('a 5xx: failed server_error, the response still kept', async () => {
    const { id, store, running, ends } = await run((_req, res) => {
      res.statusCode = 503;
      res.end('busy');
    });
    await running.done;
    const job = (await store.getJob(id))!;
    assert.deepEqual([job.status, job.error?.type, job.response?.status], ['failed', 'server_error', 503]);
    assert.deepEqual([ends.length, ends[0]!.answered], [1, true]);
  });

  it('a timeout before any answer: failed timeout, the signal aborted, not answered', async () => {
    let reason: unknown;
    const { id, store, running, ends } = await run(
      (_req, _res, ctx) => {
        ctx.signal.addEventListener('abort', () => (reason = ctx.signal.reason));
      },
      { timeout: 50 },
    );
    await running.done;
    const job = (await store.getJob(id))!;
    assert.deepEqual([job.status, job.error?.type, job.error?.answered], ['failed', 'timeout', undefined]);
    assert.ok(reason instanceof JobAbortError && reason.code === 'BGRS_TIMEOUT');
    assert.deepEqual([ends.length, ends[0]!.answered], [1, false]);
  });

  it('a timeout after the head went out: failed timeout, recorded as answered', async () => {
    const { id, store, running, ends } = await run(
      (_req, res) => {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.write('part');
      },
      { timeout: 80 },
    );
    await running.done;
    const job = (await store.getJob(id))!;
    assert.deepEqual([job.status, job.error?.type, job.error?.answered], ['failed', 'timeout', true]);
    assert.equal(job.response, null, 'a cut-off body is never offered as the result');
    assert.deepEqual([ends.length, ends[0]!.answered], [1, true]);
  });

  it('stopped (cancel, shutdown): its status, the reason on the signal, one end even when stopped twice', async () => {
    let reason: unknown;
    const { id, store, running, ends } = await run((_req, _res, ctx) => {
      ctx.signal.addEventListener('abort', () => (reason = ctx.signal.reason));
    });
    await new Promise((r) => setTimeout(r, 20));
    const error = { type: 'cancelled', message: 'stop' };
    await Promise.all([
      running.stop('cancelled', error, new JobAbortError('BGRS_CANCELLED', 'stop')),
      running.stop('failed', { type: 'shutdown', message: 'bye' }, new JobAbortError('BGRS_SHUTDOWN', 'bye')),
    ]);
    await running.done;
    assert.equal((await store.getJob(id))!.status, 'cancelled');
    assert.ok(reason instanceof JobAbortError && reason.code === 'BGRS_CANCELLED');
    assert.equal(ends.length, 1);
  });

  it('ended elsewhere first (a cancel from another process, or a lost reply that had landed): the stored end is the one reported', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { id, store, running, ends } = await run(async (_req, res) => {
      await gate;
      res.end('late');
    });
    await store.finishJob(id, {
      status: 'cancelled',
      finishedAt: new Date().toISOString(),
      expiresAt: new Date(Date.now() + 60_000).toISOString(),
      response: null,
      error: { type: 'cancelled', message: 'elsewhere' },
    });
    release();
    await running.done;
    assert.equal((await store.getJob(id))!.status, 'cancelled');
    assert.deepEqual([ends.length, ends[0]!.job?.status, ends[0]!.job?.error?.message], [1, 'cancelled', 'elsewhere']);
  });

  it('the store fails the final write: retried until it lands, within the lease', async () => {
    class Flaky extends MemoryStore {
      failures = 2;
      override async finishJob(id: string, finish: JobFinish): Promise<JobFinished | null> {
        if (this.failures-- > 0) throw new Error('store away');
        return super.finishJob(id, finish);
      }
    }
    const store = new Flaky();
    const { id, running, ends } = await run((_req, res) => res.end('ok'), {}, store);
    await running.done;
    assert.equal((await store.getJob(id))!.status, 'completed');
    assert.deepEqual([ends.length, ends[0]!.job?.status], [1, 'completed']);
  });

  it('a result larger than maxResultBytes: failed result_too_large, answered, the signal aborted', async () => {
    let reason: unknown;
    const { id, store, running, ends } = await run(
      (_req, res, ctx) => {
        ctx.signal.addEventListener('abort', () => (reason = ctx.signal.reason));
        res.end(Buffer.alloc(4096));
      },
      {},
      new MemoryStore(),
      { maxResultBytes: 1024 },
    );
    await running.done;
    const job = (await store.getJob(id))!;
    assert.deepEqual([job.status, job.error?.type, job.error?.answered], ['failed', 'result_too_large', true]);
    assert.ok(reason instanceof JobAbortError && reason.code === 'BGRS_RESULT_TOO_LARGE');
    assert.deepEqual([ends.length, ends[0]!.answered], [1, true]);
  });

  it('a waiting client of a job that ended before any answer is handed to `unanswered`', async () => {
    const told: string[] = [];
    const live = { headersSent: false, destroyed: false, writableEnded: false, destroy() {} } as unknown as ServerResponse;
    const { running } = await run(() => {}, { timeout: 30, live, unanswered: (_res, ended) => told.push(ended.status) });
    await running.done;
    assert.deepEqual(told, ['failed']);
  });
});
