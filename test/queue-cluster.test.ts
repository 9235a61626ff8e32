// Queue mode as a cluster of OS processes: two web processes and two worker processes on one shared store and one
// BullMQ queue, on each backend pair (RedisStore + BullMQ on Redis; PostgresStore + BullMQ on PostgreSQL, no Redis).
// Promises (issue 13): a job accepted by one web runs on a worker and is read from the other web, its 10 MB result
// byte-exact; jobs submitted at once spread over both workers, and each runs exactly once.
import assert from 'node:assert/strict';
import { createCipheriv, createHash, randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { type JobDoc, sleep, waitForJob } from './helpers.js';
import { killAll, type Proc, runsOf, startQueueApp } from './processes.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from './services.js';
import { dropPostgresTables, dropRedisPrefix } from './stores.js';

const SIZE = 10 * 2 ** 20;
/** No worker dies here: locks and leases long enough that a loaded machine never makes a live worker's job look stalled. */
const LEASE_MS = 5000;
const LOCK_MS = 5000;
const STALLED_MS = 1000;

/** The bytes test/fixtures/queue-app.ts's /blob produces for `seed`. */
function blob(seed: string, size: number): Buffer {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

interface Pair {
  name: string;
  store: 'redis' | 'postgres';
  queueBackend: 'redis' | 'postgres';
}

const pairs: Pair[] = [];
if (await serviceAvailable('Redis', REDIS_URL)) pairs.push({ name: 'RedisStore + BullMQ on Redis', store: 'redis', queueBackend: 'redis' });
if (await serviceAvailable('PostgreSQL', POSTGRES_URL)) {
  pairs.push({ name: 'PostgresStore + BullMQ on PostgreSQL', store: 'postgres', queueBackend: 'postgres' });
}

after(killAll);

for (const pair of pairs) {
  for (const major of [5, 4] as const) {
    describe(`queue mode, 2 web + 2 worker processes (${pair.name}, Express ${major})`, () => {
      const tag = randomUUID().replace(/-/g, '').slice(0, 12);
      const namespace = pair.store === 'redis' ? `bgrs-qcluster-${tag}:` : `bgrs_qcluster_${tag}`;
      const schema = `bgrs_qcluster_bull_${tag}`;
      const queue = `qcluster-${tag}`;
      const base = {
        store: pair.store,
        queueBackend: pair.queueBackend,
        schema,
        namespace,
        queue,
        express: major,
        lease: LEASE_MS,
        lockDuration: LOCK_MS,
        stalledInterval: STALLED_MS,
      };
      let webs: Proc[] = [];
      let workers: Proc[] = [];

      before(async () => {
        // All four at once, as a deployment starts them (on PostgreSQL, BullMQ's schema is created on the way).
        const procs = await Promise.all((['web', 'web', 'worker', 'worker'] as const).map((role) => startQueueApp({ ...base, role })));
        webs = procs.slice(0, 2);
        workers = procs.slice(2);
      });

      after(async () => {
        await killAll();
        if (pair.store === 'redis' || pair.queueBackend === 'redis') {
          const { Redis } = await import('ioredis');
          const redis = new Redis(REDIS_URL);
          // The store's keys and BullMQ's (`<namespace>bull`).
          await dropRedisPrefix(redis, namespace);
          await redis.quit();
        }
        if (pair.store === 'postgres' || pair.queueBackend === 'postgres') {
          const { default: pg } = await import('pg');
          const pool = new pg.Pool({ connectionString: POSTGRES_URL });
          await dropPostgresTables(pool, namespace);
          await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
          await pool.end();
        }
      });

      it('a job accepted by web 1 runs on one worker and is read from web 2: its status, and its 10 MB result byte-exact', async () => {
        const [web1, web2] = webs as [Proc, Proc];
        const seed = randomUUID();
        const ack = await fetch(`${web1.url}/blob?bgrs=yes&seed=${seed}&size=${SIZE}`);
        assert.equal(ack.status, 202);
        const location = ack.headers.get('location')!;
        const { id } = (await ack.json()) as JobDoc;

        // Promise: web 2 reports the job web 1 accepted, to its end.
        const job = await waitForJob(web2.url, location, 45_000);
        assert.equal(job.status, 'completed', JSON.stringify(job.error));
        assert.equal(job.response?.status, 200);
        assert.equal(job.response?.size, SIZE);

        // Promise: it ran on a worker, once (the web processes run no handler).
        const ranOn = workers.filter((worker) => runsOf([worker], id) > 0);
        assert.equal(ranOn.length, 1, 'ran on one worker');
        assert.equal(runsOf(workers, id), 1, 'ran once');
        assert.equal(runsOf(webs, id), 0, 'not on a web process');
        const produced = await ranOn[0]!.next((e) => e.event === 'produced' && e.id === id);
        assert.equal(produced.bytes, SIZE);
        assert.equal(produced.sha256, sha256(blob(seed, SIZE)), 'the handler produced the bytes of its seed');

        // Promise: web 2 serves exactly the bytes the handler produced on the worker.
        const result = await fetch(`${web2.url}${location}/result`);
        assert.equal(result.status, 200);
        assert.equal(result.headers.get('content-type'), 'application/octet-stream');
        const bytes = new Uint8Array(await result.arrayBuffer());
        assert.equal(bytes.length, SIZE);
        assert.equal(sha256(bytes), produced.sha256, 'byte-exact');
      });

      it('jobs submitted at once to both webs spread over both workers, and each runs exactly once', async () => {
        const count = 16;
        const markers: string[] = Array.from({ length: count }, () => randomUUID());
        // Half GET, half POST, alternately on web 1 and web 2; each read back from the other web.
        const acks = await Promise.all(
          markers.map(async (marker, n) => {
            const web = webs[n % 2]!;
            const ack = await fetch(`${web.url}/work?bgrs=yes&n=${n}&ms=400&marker=${marker}`, { method: n % 4 < 2 ? 'GET' : 'POST' });
            assert.equal(ack.status, 202, await ack.clone().text());
            return { n, marker, location: ack.headers.get('location')!, id: ((await ack.json()) as JobDoc).id, reader: webs[(n + 1) % 2]! };
          }),
        );
        for (const { n, location, reader } of acks) {
          const job = await waitForJob(reader.url, location, 30_000);
          assert.equal(job.status, 'completed', JSON.stringify(job.error));
          assert.equal(await (await fetch(`${reader.url}${location}/result`)).text(), `n\n${n}\n`);
        }
        // A duplicate would come from a job handed out again: give the queue's stall check time to do it, twice over.
        await sleep(2 * STALLED_MS);

        // Promise: each job ran exactly once, over all workers; no handler ran for anything else.
        const runs = workers.flatMap((worker) => worker.events.filter((e) => e.event === 'run' && markers.includes(e.marker as string)));
        for (const { id, marker } of acks) {
          assert.equal(runsOf(workers, id), 1, `job ${id} ran once`);
          assert.equal(runs.filter((e) => e.marker === marker).length, 1, `submission ${marker} ran once`);
        }
        assert.equal(runs.length, count);

        // Promise: both workers took part.
        for (const worker of workers) {
          const mine = runs.filter((e) => e.pid === worker.pid).length;
          assert.ok(
            mine > 0,
            `worker ${worker.pid} ran none of the ${count} jobs (runs per worker: ${workers.map((w) => runs.filter((e) => e.pid === w.pid).length).join(', ')})`,
          );
        }
      });
    });
  }
}
