// Load test: 10,000 detached jobs through one Express 5 app on loopback; none lost, none stuck, every result exact, heap back down.
import assert from 'node:assert/strict';
import { Agent, request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Request, Response } from 'express';
import express from 'express';
import { bgrs } from '../src/index.js';
import { type JobDoc, listen, type Running } from './helpers.js';

const JOBS = 10_000;
const WARM_UP = 200;
const IN_FLIGHT = 100;
// Generous: the run takes ~30-40 s on a busy 2-core machine; the deadline only exists so a stuck job fails the test instead of hanging it.
const POLL_DEADLINE_MS = 90_000;
const FINAL = new Set(['completed', 'failed', 'cancelled']);

// test/run.mjs starts node with fixed flags, so --expose-gc cannot be passed; setting the flag at run time
// and reading `gc` from a fresh context gives the same function.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Several full collections: one pass can leave garbage that only the next one finds (weak refs, finalizers). */
async function settledHeap(): Promise<number> {
  for (let i = 0; i < 4; i++) {
    gc();
    await sleep(20);
  }
  return process.memoryUsage().heapUsed;
}

/** What the route answers for `n`: the test knows every byte of every result in advance. */
function expectedBody(n: number): string {
  return JSON.stringify({ n, square: n * n, word: `job-${n.toString(36)}` });
}

// One keep-alive pool sized to the client concurrency: the server sees ~100 long-lived connections, not 40,000 new ones.
const agent = new Agent({ keepAlive: true, maxSockets: IN_FLIGHT });

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

function call(base: string, method: string, path: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Runs `work` for every item with at most `limit` in flight. */
async function pool<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}

describe('load: 10,000 detached jobs', () => {
  let server: Running;
  let polls = 0;
  before(async () => {
    const app = express();
    app.use(bgrs({ concurrency: 64, maxQueued: 20_000 }));
    app.get('/work', async (req: Request, res: Response) => {
      const n = Number(req.query.n);
      req.bgrs.progress(10, `started ${n}`);
      // A little real waiting, so jobs overlap and finish out of order.
      await sleep(Math.floor(Math.random() * 6));
      req.bgrs.progress(50, `working on ${n}`);
      res.type('application/json').send(expectedBody(n));
    });
    server = await listen(app);
  });
  after(async () => {
    agent.destroy();
    await server.close();
  });

  /** Submits jobs n = from … to-1 and returns their ids, index = n - from. */
  async function submit(from: number, to: number): Promise<string[]> {
    const ids: string[] = new Array(to - from);
    const numbers = Array.from({ length: to - from }, (_, i) => from + i);
    await pool(numbers, IN_FLIGHT, async (n) => {
      const ack = await call(server.url, 'GET', `/work?bgrs=yes&n=${n}`);
      assert.equal(ack.status, 202, `submit n=${n}: ${ack.status} ${ack.body.toString()}`);
      ids[n - from] = (JSON.parse(ack.body.toString()) as JobDoc).id;
    });
    return ids;
  }

  /**
   * Polls each job to its end, checks its result byte for byte and deletes it. Deleting is the honest way
   * to measure memory: the MemoryStore keeps finished jobs for `ttl` on purpose, and it drops expired ones
   * only when they are read again or pushed out of its LRU (no timer), so waiting out a short ttl would not
   * free anything that the test does not touch. DELETE → 204 is the API a client uses to say "I'm done".
   */
  async function drain(ids: readonly string[], from: number, deadline: number, stuck: Map<string, string>): Promise<number> {
    let checked = 0;
    await pool(
      ids.map((id, i) => ({ id, n: from + i })),
      IN_FLIGHT,
      async ({ id, n }) => {
        let doc: JobDoc;
        for (;;) {
          polls++;
          const res = await call(server.url, 'GET', `/bgrs/${id}`);
          assert.equal(res.status, 200, `GET /bgrs/${id} (n=${n}) answered ${res.status}: a lost job`);
          doc = JSON.parse(res.body.toString()) as JobDoc;
          if (FINAL.has(doc.status)) break;
          if (Date.now() > deadline) {
            stuck.set(id, doc.status);
            return;
          }
          await sleep(50);
        }
        assert.equal(doc.status, 'completed', `job n=${n} ended ${doc.status}: ${JSON.stringify(doc.error)}`);
        assert.equal(doc.progress, 100);
        // The handler's last progress write lands before the job finishes.
        assert.equal(doc.message, `working on ${n}`);

        const result = await call(server.url, 'GET', `/bgrs/${id}/result`);
        assert.equal(result.status, 200, `result of n=${n}`);
        assert.equal(result.headers['content-type'], 'application/json; charset=utf-8');
        assert.ok(result.body.equals(Buffer.from(expectedBody(n))), `result of n=${n}: ${result.body.toString()}`);

        const deleted = await call(server.url, 'DELETE', `/bgrs/${id}`);
        assert.equal(deleted.status, 204, `DELETE n=${n}`);
        checked++;
      },
    );
    return checked;
  }

  it('loses none, leaves none stuck, replays every result exactly, and gives the heap back', { timeout: 180_000 }, async () => {
    const started = Date.now();
    const stuck = new Map<string, string>();

    // Warm-up: JIT, connection pool, lazily built caches, so the baseline is not an empty process.
    const warmIds = await submit(0, WARM_UP);
    assert.equal(await drain(warmIds, 0, Date.now() + POLL_DEADLINE_MS, stuck), WARM_UP);
    const heapBefore = await settledHeap();

    const ids = await submit(WARM_UP, WARM_UP + JOBS);
    const submitted = Date.now();
    assert.equal(new Set(ids).size, JOBS, 'every job has its own id');
    const checked = await drain(ids, WARM_UP, Date.now() + POLL_DEADLINE_MS, stuck);
    const finished = Date.now();

    assert.deepEqual([...stuck.entries()].slice(0, 10), [], `${stuck.size} job(s) still queued or running after the deadline`);
    assert.equal(checked, JOBS, 'every job completed and was checked');

    // Deleted means gone: the store answers 404 for them.
    const probe = await call(server.url, 'GET', `/bgrs/${ids[0]}`);
    assert.equal(probe.status, 404);

    const heapAfter = await settledHeap();
    const mb = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
    console.log(
      `load: ${JOBS} jobs; submitted in ${submitted - started} ms, all checked and deleted after ${finished - started} ms; ` +
        `${polls} polls; heap ${mb(heapBefore)} before, ${mb(heapAfter)} after`,
    );
    assert.ok(heapAfter <= 2 * heapBefore, `heap grew from ${mb(heapBefore)} to ${mb(heapAfter)}`);
  });
});
