// One process of the `worker-rate` group (bench/worker-rate.ts): a bgrs web side that fills the queue,
// a bgrs queue worker, or a plain BullMQ Worker running the same trivial handler.
//
// Usage: node --import tsx bench/worker-rate-proc.ts <web|bgrs|bullmq>
// Environment (set by bench/worker-rate.ts): BENCH_NS (names the keys: `bgrs-bench-<ns>…`), BENCH_REDIS,
// WR_N (jobs to wait for), WR_CONCURRENCY, WR_COUNT=1 to count Redis round trips and store calls.
//
// web: queue mode (RedisStore + bullmq()), GET /item?n= answers `{"ok":true,"n":<n>}`; prints
// `{"port":…}` and serves until SIGTERM. bgrs / bullmq: take jobs until WR_N have completed (bgrs:
// finishJob resolved `completed` in the store; bullmq: the Worker's `completed` event, its return value
// stored by BullMQ), then print one JSON line (timings on process.hrtime, which on Linux is the
// clock of --cpu-prof's timestamps, so the runner can cut the profile to the measured window) and exit.
import type { AddressInfo } from 'node:net';
import express from 'express';
import { Redis } from 'ioredis';
import { bullmq } from '../src/executors/bullmq.js';
import { bgrs } from '../src/index.js';
import { RedisStore } from '../src/stores/redis.js';
import * as scripts from '../src/stores/redis-scripts.js';
import { countCommands } from './worker-rate-count.js';

const role = process.argv[2];
if (role !== 'web' && role !== 'bgrs' && role !== 'bullmq') throw new Error(`bench/worker-rate-proc: unknown role "${role}"`);
const NS = process.env.BENCH_NS ?? 'wr-manual';
const REDIS_URL = process.env.BENCH_REDIS ?? 'redis://127.0.0.1:6379';
const N = Number(process.env.WR_N ?? 1000);
const CONCURRENCY = Number(process.env.WR_CONCURRENCY ?? 1);
const { hostname, port } = new URL(REDIS_URL);
const connection = { host: hostname, port: Number(port), maxRetriesPerRequest: null };
const BULL_PREFIX = `bgrs-bench-${NS}-bull`;
const QUEUE = 'wr';

/** The trivial work, the same on both sides: a small JSON built from the job's number. */
const item = (n: number): { ok: true; n: number } => ({ ok: true, n });

// Installed before any client exists, so every connection (the store's and BullMQ's) is counted.
const counter = process.env.WR_COUNT === '1' ? countCommands() : undefined;

let firstTake: bigint | undefined;
let cpuAtTake: NodeJS.CpuUsage | undefined;
let completed = 0;
let failed = 0;
const take = (): void => {
  if (firstTake !== undefined) return;
  firstTake = process.hrtime.bigint();
  cpuAtTake = process.cpuUsage();
};

function report(extra: Record<string, unknown>, close: () => Promise<unknown>): void {
  const done = process.hrtime.bigint();
  const start = firstTake ?? done;
  // CPU time (user + system) of the window: unlike the profile's samples, not inflated when the core is shared.
  const cpu = process.cpuUsage(cpuAtTake);
  const line = {
    pid: process.pid,
    seconds: Number(done - start) / 1e9,
    firstTake: String(start),
    done: String(done),
    cpuMs: (cpu.user + cpu.system) / 1000,
    completed,
    failed,
    ...extra,
    counts: counter?.report(),
  };
  process.stdout.write(`${JSON.stringify(line)}\n`);
  // process.exit (not a signal) so that --cpu-prof writes its profile.
  void close().finally(() => process.exit(0));
}

if (role === 'bullmq') {
  const { Worker } = await import('bullmq');
  const worker = new Worker<{ n: number }>(
    QUEUE,
    async (job) => {
      take();
      return item(job.data.n);
    },
    { connection, prefix: BULL_PREFIX, concurrency: CONCURRENCY },
  );
  worker.on('failed', () => (failed += 1));
  worker.on('completed', () => {
    completed += 1;
    if (completed === N) report({}, () => worker.close());
  });
  worker.on('error', (err) => process.stderr.write(`bullmq worker error: ${err.message}\n`));
} else {
  const client = new Redis(REDIS_URL);
  client.on('error', () => {});
  counter?.tag(client, 'store', Object.values(scripts));
  const store = new RedisStore({ client, prefix: `bgrs-bench-${NS}:` });
  // The first call of a take is takeJob (getJob on a store without it); the end of a job in the store is finishJob.
  const getJob = store.getJob.bind(store);
  store.getJob = (id) => {
    take();
    return getJob(id);
  };
  const takeJob = store.takeJob.bind(store);
  store.takeJob = (id, start) => {
    take();
    return takeJob(id, start);
  };
  const finishJob = store.finishJob.bind(store);
  store.finishJob = async (id, finish) => {
    const job = await finishJob(id, finish);
    if (job && finish.status === 'completed') completed += 1;
    else failed += 1;
    if (completed + failed === N) report({}, shutdown);
    return job;
  };
  if (counter) counter.wrapStore(store);
  const background = bgrs({
    store,
    // The sweep would hand the queued jobs over again while the queue is being filled: off, as in bench/server.ts's web-only mode.
    executor: bullmq({ name: QUEUE, connection, prefix: BULL_PREFIX, recoverInterval: 0 }),
    maxQueued: Number.POSITIVE_INFINITY,
    maxPerOwner: Number.POSITIVE_INFINITY,
    validations: false,
  });
  const app = express();
  app.use(background);
  app.get('/item', (req, res) => {
    res.json(item(Number(req.query.n)));
  });
  let shutdown = async (): Promise<void> => {
    await background.close();
    await client.quit();
  };
  if (role === 'bgrs') {
    const worker = background.work(app, { concurrency: CONCURRENCY });
    const closeRest = shutdown;
    shutdown = async () => {
      await worker.close();
      await closeRest();
    };
  } else {
    const server = app.listen(0, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
    process.once('SIGTERM', () => {
      server.closeAllConnections();
      server.close(() => void shutdown().finally(() => process.exit(0)));
    });
  }
}
