// One process of the queue-mode example: `web` (serves the routes and /bgrs, enqueues), `worker` (runs the
// jobs) or `both`. Every process builds the same app on the same store and BullMQ queue: Redis, or PostgreSQL
// alone when DATABASE_URL is set.
import { Redis } from 'ioredis';
import pg from 'pg';
import { bullmq } from '../../src/executors/bullmq.js';
import { bgrs } from '../../src/index.js';
import { PostgresStore } from '../../src/stores/postgres.js';
import { RedisStore } from '../../src/stores/redis.js';
import { createApp } from '../basic/app.js';

const role = process.argv[2] ?? 'both';
if (!['web', 'worker', 'both'].includes(role)) throw new Error(`examples/queue: the role is web, worker or both, not "${role}"`);
const port = Number(process.env.PORT || 3000);

// DATABASE_URL set: PostgreSQL alone (PostgresStore, and BullMQ on its PostgreSQL backend); else Redis.
const databaseUrl = process.env.DATABASE_URL;
const redisUrl = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const client = databaseUrl ? undefined : new Redis(redisUrl.href);
const pool = databaseUrl ? new pg.Pool({ connectionString: databaseUrl }) : undefined;
pool?.on('error', (err) => console.error(`postgres: ${err.message}`));
const background = bgrs(
  pool
    ? {
        store: new PostgresStore({ pool, table: 'bgrs_example' }),
        executor: bullmq({ name: 'bgrs-example', backend: 'postgres', connection: { connectionString: databaseUrl, migrate: true } }),
      }
    : {
        store: new RedisStore({ client: client!, prefix: 'bgrs-example:' }),
        executor: bullmq({ name: 'bgrs-example', connection: { host: redisUrl.hostname, port: Number(redisUrl.port || 6379) } }),
      },
);
const app = createApp(background);

const server =
  role === 'worker'
    ? undefined
    : app.listen(port, (error?: Error) => {
        if (error) {
          console.error(`web: could not listen on port ${port}: ${error.message}`);
          process.exit(1);
        }
        console.log(`web (pid ${process.pid}): http://localhost:${port}  (try: curl -i 'http://localhost:${port}/exports/orders.csv?bgrs=yes')`);
      });
const worker = role === 'web' ? undefined : background.work(app, { concurrency: 8 });
if (worker) console.log(`worker (pid ${process.pid}): taking jobs from the queue "bgrs-example"`);

// Ctrl-C: the worker finishes what it runs (up to 10 s), then the web side closes.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, async () => {
    await worker?.close({ grace: 10_000 });
    await background.close();
    server?.closeAllConnections();
    server?.close();
    await client?.quit();
    await pool?.end();
    process.exit(0);
  });
}
