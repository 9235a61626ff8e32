// `npm run bench:idle`: store reads per second while 1,000 idle /events streams are open, on RedisStore and PostgresStore; writes its section of bench/RESULTS.md.
//
// Two bgrs instances in this process, each with its own store instance (its own client or pool) on
// one namespace, as two processes would be: A runs STREAMS jobs whose handlers wait (running,
// silent), B serves one `GET /bgrs/:id/events` stream per job. Every store method of B is wrapped
// to count calls; after a warm-up (the streams' opening reads, and the first safety re-reads, are
// not idle), the reads B makes in the measured window are divided by its length. A's own calls
// (its heartbeat) are not counted: they do not grow with the streams.
//
// Each store is measured twice: as it is (with watchChanges: the streams wait for notifications
// and re-read only as a safety net) and with watchChanges hidden (a store that cannot notify: the
// streams poll every 250 ms, which is what every store did before notifications).
//
// Environment:
//   IDLE_STREAMS   streams (and jobs) per run (default 1000)
//   IDLE_WARMUP    seconds between the last stream opening and the measured window (default 35)
//   IDLE_SECONDS   seconds measured with notifications (default 60); polling runs measure 10 s
//   IDLE_ONLY      "redis" or "postgres" to measure one store
//   BENCH_REDIS, BENCH_POSTGRES  as for bench/run.ts

import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import express from 'express';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Store } from '../src/index.js';
import { bgrs } from '../src/index.js';
import { PostgresStore } from '../src/stores/postgres.js';
import { RedisStore } from '../src/stores/redis.js';

const STREAMS = Number(process.env.IDLE_STREAMS ?? 1000);
const WARMUP_S = Number(process.env.IDLE_WARMUP ?? 35);
const MEASURE_S = Number(process.env.IDLE_SECONDS ?? 60);
const POLL_MEASURE_S = 10;
const REDIS_URL = process.env.BENCH_REDIS ?? 'redis://127.0.0.1:6379';
const POSTGRES_URL = process.env.BENCH_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';
const READS = ['getJob', 'readLogs', 'listJobs', 'readResult', 'readRequest'];

/** B's store, every method counted; `notify: false` hides watchChanges, as a store without it. */
function counted(store: Store, notify: boolean): { store: Store; counts: Map<string, number> } {
  const counts = new Map<string, number>();
  const wrapped: Record<string, unknown> = {};
  const target = store as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (let proto: object | null = store; proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto) as object | null) {
    for (const name of Object.getOwnPropertyNames(proto)) {
      if (name === 'constructor' || name in wrapped || typeof target[name] !== 'function') continue;
      if (name === 'watchChanges' && !notify) continue;
      wrapped[name] = (...args: unknown[]) => {
        counts.set(name, (counts.get(name) ?? 0) + 1);
        return target[name]!.apply(store, args);
      };
    }
  }
  return { store: wrapped as unknown as Store, counts };
}

const reads = (counts: Map<string, number>): number => READS.reduce((sum, name) => sum + (counts.get(name) ?? 0), 0);

interface Backend {
  name: string;
  /** Two stores on one fresh namespace; `drop` removes it and closes the clients. */
  pair(): Promise<{ a: Store; b: Store; drop(): Promise<void> }>;
}

const redis: Backend = {
  name: 'RedisStore',
  async pair() {
    const prefix = `bgrs-bench-idle-${randomUUID()}:`;
    const clients = [new Redis(REDIS_URL), new Redis(REDIS_URL)];
    const [a, b] = clients.map((client) => new RedisStore({ client, prefix })) as [RedisStore, RedisStore];
    return {
      a,
      b,
      async drop() {
        await Promise.all([a.close(), b.close()]);
        let cursor = '0';
        do {
          const [next, keys] = await clients[0]!.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
          cursor = next;
          if (keys.length) await clients[0]!.del(...keys);
        } while (cursor !== '0');
        await Promise.all(clients.map((client) => client.quit()));
      },
    };
  },
};

const postgres: Backend = {
  name: 'PostgresStore',
  async pair() {
    const table = `bgrs_bench_idle_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
    const pools = [new pg.Pool({ connectionString: POSTGRES_URL }), new pg.Pool({ connectionString: POSTGRES_URL })];
    const [a, b] = pools.map((pool) => new PostgresStore({ pool, table, sweepInterval: 0 })) as [PostgresStore, PostgresStore];
    await a.migrate();
    return {
      a,
      b,
      async drop() {
        await Promise.all([a.close(), b.close()]);
        for (const suffix of ['logs', 'chunks', 'keys', 'jobs']) await pools[0]!.query(`DROP TABLE IF EXISTS "${table}_${suffix}" CASCADE`);
        await Promise.all(pools.map((pool) => pool.end()));
      },
    };
  },
};

async function serve(app: express.Express): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

interface Row {
  store: string;
  mode: string;
  streams: number;
  seconds: number;
  reads: number;
  perSecond: number;
  byMethod: string;
}

async function measure(backend: Backend, notify: boolean): Promise<Row> {
  const { a: storeA, b: storeB, drop } = await backend.pair();
  const release: Array<() => void> = [];
  const A = bgrs({ store: storeA, validations: false, concurrency: STREAMS, maxPerOwner: STREAMS, maxQueued: STREAMS });
  const appA = express();
  appA.use(A);
  appA.get('/idle', async (req, res) => {
    await new Promise<void>((resolve) => {
      release.push(resolve);
      req.bgrs.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    res.send('done');
  });
  const B = counted(storeB, notify);
  const background = bgrs({ store: B.store, validations: false, maxEventStreams: STREAMS });
  const appB = express();
  appB.use(background);
  const [serverA, serverB] = await Promise.all([serve(appA), serve(appB)]);
  // One socket per stream, none shared or limited.
  const agent = new http.Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
  const streams: http.ClientRequest[] = [];
  let opened = 0;
  let ended = 0;
  try {
    const ids: string[] = [];
    for (let i = 0; i < STREAMS; i++) {
      const ack = await fetch(`${serverA.url}/idle?bgrs=yes`);
      if (ack.status !== 202) throw new Error(`submission ${i} answered ${ack.status}`);
      ids.push(((await ack.json()) as { id: string }).id);
    }
    await Promise.all(
      ids.map(
        (id) =>
          new Promise<void>((resolve, reject) => {
            const req = http.get(`${serverB.url}/bgrs/${id}/events`, { agent }, (res) => {
              if (res.statusCode !== 200) reject(new Error(`events of ${id} answered ${res.statusCode}`));
              res.once('data', () => {
                opened++;
                resolve();
              });
              res.on('data', (chunk: Buffer) => {
                if (chunk.includes('event: end')) ended++;
              });
              res.on('error', () => undefined);
            });
            req.on('error', reject);
            streams.push(req);
          }),
      ),
    );
    const warmup = notify ? WARMUP_S : 3;
    const seconds = notify ? MEASURE_S : POLL_MEASURE_S;
    console.log(`${backend.name} ${notify ? 'notify' : 'poll'}: ${opened} streams open; warm-up ${warmup} s, then ${seconds} s measured`);
    await sleep(warmup * 1000);
    const before = new Map(B.counts);
    const readsBefore = reads(before);
    const t0 = Date.now();
    await sleep(seconds * 1000);
    const elapsed = (Date.now() - t0) / 1000;
    const total = reads(B.counts) - readsBefore;
    if (ended > 0) throw new Error(`${ended} streams ended during the measurement: the jobs were not idle`);
    const byMethod = READS.map((name) => [name, (B.counts.get(name) ?? 0) - (before.get(name) ?? 0)] as const)
      .filter(([, n]) => n > 0)
      .map(([name, n]) => `${name} ${(n / elapsed).toFixed(1)}/s`)
      .join(', ');
    return {
      store: backend.name,
      mode: notify ? 'watchChanges (notifications + safety poll)' : 'without watchChanges (250 ms poll)',
      streams: opened,
      seconds: elapsed,
      reads: total,
      perSecond: total / elapsed,
      byMethod,
    };
  } finally {
    for (const req of streams) req.destroy();
    for (const done of release) done();
    await A.close({ grace: 2000 });
    await background.close();
    await Promise.all([serverA.close(), serverB.close()]);
    agent.destroy();
    await drop();
  }
}

const backends = [redis, postgres].filter((backend) => !process.env.IDLE_ONLY || backend.name.toLowerCase().startsWith(process.env.IDLE_ONLY));
const rows: Row[] = [];
for (const backend of backends) {
  for (const notify of [true, false]) {
    const row = await measure(backend, notify);
    console.log(`  ${row.reads} reads in ${row.seconds.toFixed(1)} s = ${row.perSecond.toFixed(1)} reads/s (${row.byMethod})`);
    rows.push(row);
  }
}

const fmt = (n: number): string => n.toLocaleString('en-US', { maximumFractionDigits: 1 });
const section = `## Idle event streams: store reads per second

- Date: ${new Date().toISOString()}
- CPU: ${os.cpus()[0]?.model ?? 'unknown'}, ${os.cpus().length} cores (${os.platform()} ${os.release()})
- Node: ${process.version}
- Streams: ${STREAMS} open \`GET /bgrs/:id/events\` on instance B, one per job running (silent) on instance A; warm-up ${WARMUP_S} s

| Store | Mode | Streams | Seconds measured | Reads by B | Reads/s | Goal | Result | By method |
|---|---|---:|---:|---:|---:|---:|---|---|
${rows
  .map((r) => {
    const goal = r.mode.startsWith('watchChanges') ? '< 50' : '—';
    const result = goal === '—' ? '—' : r.perSecond < 50 ? 'PASS' : 'MISS';
    return `| ${r.store} | ${r.mode} | ${r.streams} | ${r.seconds.toFixed(1)} | ${fmt(r.reads)} | ${fmt(r.perSecond)} | ${goal} | ${result} | ${r.byMethod || '—'} |`;
  })
  .join('\n')}

- Written by \`npm run bench:idle\` (bench/idle-streams.ts). A and B are two bgrs instances in one
  process, each with its own store instance (client or pool) on one namespace, as two processes
  would be; the streams are read by plain \`http.get\` clients in the same process.
- Reads: B's calls of ${READS.map((m) => `\`${m}\``).join(', ')}, counted by a wrapper around B's store.
- *watchChanges*: the streams wait for the store's notifications and re-read only as a safety net:
  every 30 s ±25 % (jitter), or when the job's lease would lapse if sooner (A renews it every
  second, so about 30 s ahead), reading the job only (the log too when the job changed).
- *without watchChanges*: the same store with \`watchChanges\` hidden, as every store was before
  notifications existed (and as a third-party store without it still is): each stream re-reads
  its job and its log every 250 ms. Its rate is bound by how fast the store answers, not by the
  streams.
- Before notifications existed (commit 90e25ed, this script run on that tree): RedisStore 7,874
  reads/s, PostgresStore 7,717 reads/s with 1,000 streams, as the rows without watchChanges show.`;

const path = fileURLToPath(new URL('./RESULTS.md', import.meta.url));
const previous = existsSync(path) ? readFileSync(path, 'utf8') : '';
const block = `<!-- bench:idle-streams -->\n${section}\n<!-- /bench:idle-streams -->`;
const pattern = /<!-- bench:idle-streams -->\n[\s\S]*?\n<!-- \/bench:idle-streams -->/;
writeFileSync(path, pattern.test(previous) ? previous.replace(pattern, block) : `${previous.trimEnd()}\n\n${block}\n`);
console.log(`Wrote ${path}`);
