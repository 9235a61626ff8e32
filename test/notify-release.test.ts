// The connection a store opens for change notifications lives only while something watches: once
// background.close() has unwatched, the app can close its own Redis client or pg pool without
// closing the store first (pool.end() waits for every client it lent, so a LISTEN client kept
// would hang it forever).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import express from 'express';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Store } from '../src/index.js';
import { bgrs } from '../src/index.js';
import { newJob } from '../src/model/job.js';
import { PostgresStore } from '../src/stores/postgres.js';
import { RedisStore } from '../src/stores/redis.js';
import { detached, listen, sleep, waitForJob } from './helpers.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from './services.js';
import { dropPostgresTables, dropRedisPrefix } from './stores.js';

/** Runs one job and reads its events (so the instance watches the store), then closes the instance. */
async function watchOnce(store: Store): Promise<void> {
  const background = bgrs({ store, validations: false });
  const app = express();
  app.use(background);
  app.get('/slow', async (_req, res) => {
    await sleep(200);
    res.send('done');
  });
  const server = await listen(app);
  try {
    const ack = await fetch(`${server.url}${detached('/slow')}`);
    const location = ack.headers.get('location')!;
    const events = await fetch(`${server.url}${location}/events`);
    assert.match(await events.text(), /event: end/, 'the stream saw the job end');
    assert.equal((await waitForJob(server.url, location)).status, 'completed');
  } finally {
    await background.close();
    await server.close();
  }
}

/** Resolves `promise`, or fails after `ms`: a hang is the failure this file is about. */
async function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const redisOk = await serviceAvailable('Redis', REDIS_URL);
describe('RedisStore: the subscriber connection goes with the last watcher', { skip: !redisOk && 'Redis is not reachable' }, () => {
  it('leaves no connection of the store open after background.close(), the store itself not closed', async () => {
    const connectionName = `bgrs-release-${randomUUID()}`;
    const prefix = `bgrs-release-${randomUUID()}:`;
    const client = new Redis(REDIS_URL, { connectionName });
    const admin = new Redis(REDIS_URL);
    const named = async (): Promise<number> =>
      ((await admin.call('CLIENT', 'LIST')) as string).split('\n').filter((line) => line.includes(` name=${connectionName} `)).length;
    try {
      await watchOnce(new RedisStore({ client, prefix }));
      // duplicate() keeps the name: only the app's own client may be left.
      for (let i = 0; i < 50 && (await named()) > 1; i++) await sleep(20);
      assert.equal(await named(), 1, 'the subscriber connection was closed');
    } finally {
      await dropRedisPrefix(admin, prefix);
      await client.quit();
      await admin.quit();
    }
  });
});

describe('RedisStore: notifications with the client options BullMQ users and the README suggest', { skip: !redisOk && 'Redis is not reachable' }, () => {
  for (const [label, options] of [
    // Its own connection queues the subscribe: a client without an offline queue refused it at once.
    ['enableOfflineQueue: false', { enableOfflineQueue: false }],
    // The scripts publish on prefixed keys: the pattern must carry the client's keyPrefix too.
    ['a keyPrefix', { keyPrefix: `kp-${randomUUID()}:` }],
    ['maxRetriesPerRequest: null', { maxRetriesPerRequest: null }],
  ] as const) {
    it(`hears another store's writes with ${label}`, async () => {
      const prefix = `bgrs-release-${randomUUID()}:`;
      const [a, b] = [new Redis(REDIS_URL, options), new Redis(REDIS_URL, options)];
      await Promise.all([a, b].map((client) => new Promise((resolve) => client.once('ready', resolve))));
      const [watched, writer] = [new RedisStore({ client: a, prefix }), new RedisStore({ client: b, prefix })];
      const heard: Array<string | null> = [];
      try {
        const unwatch = await within(
          'watchChanges',
          3000,
          watched.watchChanges((id) => heard.push(id)),
        );
        const job = newJob({
          id: randomUUID(),
          method: 'GET',
          url: '/x',
          owner: null,
          status: 'running',
          leaseUntil: new Date(Date.now() + 60_000).toISOString(),
        });
        await writer.createJob(job);
        await writer.updateProgress(job.id, { progress: 50 });
        for (let i = 0; i < 100 && !heard.includes(job.id); i++) await sleep(20);
        assert.ok(heard.includes(job.id), `heard ${JSON.stringify(heard)}`);
        await unwatch();
      } finally {
        await Promise.all([watched.close(), writer.close()]);
        const keyPrefix = (options as { keyPrefix?: string }).keyPrefix ?? '';
        const admin = new Redis(REDIS_URL);
        await dropRedisPrefix(admin, keyPrefix + prefix);
        await Promise.all([a.quit(), b.quit(), admin.quit()]);
      }
    });
  }
});

const postgresOk = await serviceAvailable('PostgreSQL', POSTGRES_URL);
describe('PostgresStore: the LISTEN client goes back with the last watcher', { skip: !postgresOk && 'PostgreSQL is not reachable' }, () => {
  it('lets pool.end() resolve after background.close(), the store itself not closed', async () => {
    const table = `bgrs_release_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
    const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 4 });
    const store = new PostgresStore({ pool, table, sweepInterval: 0 });
    try {
      await store.migrate();
      await watchOnce(store);
      const admin = new pg.Pool({ connectionString: POSTGRES_URL, max: 1 });
      try {
        const { rows } = await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1', [`LISTEN "${table}_changes"`]);
        assert.equal(rows[0]!.n, 0, 'no backend still LISTENs for this store');
        await dropPostgresTables(admin, table);
      } finally {
        await admin.end();
      }
    } finally {
      await within('pool.end()', 3000, pool.end());
    }
  });
});
