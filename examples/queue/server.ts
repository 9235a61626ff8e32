// One process of the queue-mode example: `web` (serves the routes and /bgrs, enqueues), `worker` (runs the
// jobs) or `both`. Every process builds the same app on the same RedisStore and BullMQ queue.
import { Redis } from 'ioredis';
import { bullmq } from '../../src/executors/bullmq.js';
import { bgrs } from '../../src/index.js';
import { RedisStore } from '../../src/stores/redis.js';
import { createApp } from '../basic/app.js';

const role = process.argv[2] ?? 'both';
if (!['web', 'worker', 'both'].includes(role)) throw new Error(`examples/queue: the role is web, worker or both, not "${role}"`);
const redisUrl = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const port = Number(process.env.PORT || 3000);

const client = new Redis(redisUrl.href);
const background = bgrs({
  store: new RedisStore({ client, prefix: 'bgrs-example:' }),
  executor: bullmq({ name: 'bgrs-example', connection: { host: redisUrl.hostname, port: Number(redisUrl.port || 6379) } }),
});
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
    await client.quit();
    process.exit(0);
  });
}
