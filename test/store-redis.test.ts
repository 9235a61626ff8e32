// RedisStore passes the Store conformance suite against a real Redis, plus what only Redis has: TTLs, streaming, NOSCRIPT, its keys.
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { after, describe, it, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Redis } from 'ioredis';
import type { Job } from '../src/model/job.js';
import { newJob } from '../src/model/job.js';
import { RedisStore } from '../src/stores/redis.js';
import { APPEND_LOG, APPEND_RESULT, UPDATE_PROGRESS } from '../src/stores/redis-scripts.js';
import { storeConformanceSuite } from '../src/testing/index.js';
import { REDIS_URL, serviceAvailable } from './services.js';

const testPrefix = (): string => `bgrs-test-${randomUUID().slice(0, 8)}:`;

/** Deletes every key under the prefix (SCAN, not KEYS: the database may be shared). */
async function dropPrefix(client: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    if (keys.length > 0) await client.del(...keys);
    cursor = next;
  } while (cursor !== '0');
}

const inMs = (ms: number): string => new Date(Date.now() + ms).toISOString();
const running = (overrides: Partial<Job> = {}): Job => ({
  ...newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: 'ann', status: 'running', leaseUntil: inMs(30_000) }),
  ...overrides,
});
const finish = (expiresInMs: number) =>
  ({ status: 'completed', finishedAt: new Date().toISOString(), expiresAt: inMs(expiresInMs), response: null, error: null }) as const;

if (await serviceAvailable('Redis', REDIS_URL)) {
  const clients = new Map<RedisStore, { client: Redis; prefix: string }>();
  storeConformanceSuite('RedisStore', {
    create: () => {
      const client = new Redis(REDIS_URL);
      const prefix = testPrefix();
      const store = new RedisStore({ client, prefix });
      clients.set(store, { client, prefix });
      return store;
    },
    destroy: async (store) => {
      const { client, prefix } = clients.get(store as RedisStore)!;
      await store.close?.();
      await dropPrefix(client, prefix);
      await client.quit();
    },
    expiryGraceMs: 100,
  });

  describe('RedisStore on Redis', () => {
    const client = new Redis(REDIS_URL);
    const prefix = testPrefix();
    const store = new RedisStore({ client, prefix });
    const keysOf = (id: string): string[] => [`${prefix}job:{${id}}`, `${prefix}job:{${id}}:log`, `${prefix}job:{${id}}:result`];
    after(async () => {
      await dropPrefix(client, prefix);
      await client.quit();
    });

    it('refuses a missing client and a bad chunkBytes at construction', () => {
      assert.throws(() => new RedisStore({} as never), /`client` must be an ioredis client/);
      assert.throws(() => new RedisStore({ client, chunkBytes: 0 }), /`chunkBytes` must be a positive integer/);
    });

    it('gives every key of a job a TTL when it finishes, and none before', async () => {
      const j = running();
      await store.createJob(j);
      await store.appendLog(j.id, { at: new Date().toISOString(), level: 'info', message: 'x' });
      await store.appendResult(j.id, Buffer.from('body'));
      for (const key of keysOf(j.id)) assert.equal(await client.pttl(key), -1, `${key} lives while the job runs`);
      await store.finishJob(j.id, finish(60_000));
      for (const key of keysOf(j.id)) {
        const ttl = await client.pttl(key);
        assert.ok(ttl > 0 && ttl <= 60_000, `${key} expires with the job (PTTL ${ttl})`);
      }
    });

    it('drops the index entries of expired jobs when a listing meets them', async () => {
      const owner = `owner-${randomUUID()}`;
      const j = running({ owner });
      await store.createJob(j);
      await store.finishJob(j.id, finish(50));
      await new Promise((resolve) => setTimeout(resolve, 150));
      assert.deepEqual((await store.listJobs({ owner, limit: 10 })).jobs, []);
      const member = `${j.createdAt} ${j.id}`;
      assert.equal(await client.zscore(`${prefix}owner:${owner}`, member), null);
      assert.equal(await client.zscore(`${prefix}jobs`, member), null);
    });

    it('splits chunks larger than chunkBytes and reads them back whole', async () => {
      const small = new RedisStore({ client, prefix, chunkBytes: 1000 });
      const j = running();
      await small.createJob(j);
      const body = randomBytes(2500);
      await small.appendResult(j.id, new Uint8Array(body.buffer, body.byteOffset, body.byteLength));
      await small.finishJob(j.id, finish(60_000));
      assert.equal(await client.llen(keysOf(j.id)[2]!), 3);
      const chunks: Buffer[] = [];
      for await (const chunk of (await small.readResult(j.id))!) chunks.push(Buffer.from(chunk));
      assert.deepEqual(Buffer.concat(chunks), body);
    });

    it('stores only the missing pieces of a split chunk made again at its offset (a call that stored some pieces, then failed)', async () => {
      const small = new RedisStore({ client, prefix, chunkBytes: 1000 });
      const j = running();
      await small.createJob(j);
      const body = randomBytes(2500);
      // The first try stored two pieces of three before its reply was lost.
      await small.appendResult(j.id, body.subarray(0, 2000), undefined, 0);
      await small.appendResult(j.id, body, undefined, 0);
      await small.appendResult(j.id, body, undefined, 0);
      await small.finishJob(j.id, finish(60_000));
      assert.equal(await client.llen(keysOf(j.id)[2]!), 3, 'the third piece only was added');
      const chunks: Buffer[] = [];
      for await (const chunk of (await small.readResult(j.id))!) chunks.push(Buffer.from(chunk));
      assert.deepEqual(Buffer.concat(chunks), body);
    });

    it('streams a 50 MB result back without holding it in memory', { timeout: 120_000 }, async (t) => {
      // A real gc() lets the test measure live memory, not garbage the collector has yet to reach.
      setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc') as () => void;
      const j = running();
      await store.createJob(j);
      const written = createHash('sha256');
      const chunkSize = 64 * 1024;
      const total = 50 * 2 ** 20;
      for (let size = 0; size < total; size += chunkSize) {
        const chunk = randomBytes(chunkSize);
        written.update(chunk);
        await store.appendResult(j.id, chunk);
      }
      await store.finishJob(j.id, finish(60_000));
      const used = (): number => {
        const memory = process.memoryUsage();
        return memory.heapUsed + memory.arrayBuffers;
      };
      gc();
      const baseline = used();
      let peak = 0;
      let bytes = 0;
      let count = 0;
      const read = createHash('sha256');
      for await (const chunk of (await store.readResult(j.id))!) {
        read.update(chunk);
        bytes += chunk.byteLength;
        peak = Math.max(peak, used() - baseline);
        if (++count % 16 === 0) gc();
      }
      assert.equal(bytes, total);
      assert.equal(read.digest('hex'), written.digest('hex'));
      // Reading the whole body at once measures 50-55 MiB here; paged, 5-15 MiB (much of it ioredis's
      // reply-parser pool, which grows while large replies stream in and shrinks afterwards).
      t.diagnostic(`peak ${(peak / 2 ** 20).toFixed(1)} MiB above the baseline`);
      assert.ok(peak < 24 * 2 ** 20, `${(peak / 2 ** 20).toFixed(1)} MiB above the baseline while reading 50 MiB`);
    });

    it('reads a job hash without an attempt field (written before attempts) as attempt 1, and restarts it as 2', async () => {
      const owner = `owner-${randomUUID()}`;
      const j = running({ owner });
      await store.createJob(j);
      assert.equal(await client.hget(keysOf(j.id)[0]!, 'attempt'), '1');
      await client.hdel(keysOf(j.id)[0]!, 'attempt');
      assert.deepEqual(await store.getJob(j.id), j);
      assert.deepEqual((await store.listJobs({ owner, statuses: ['running'], limit: 5 })).jobs, [j]);
      await store.renewLeases([j.id], inMs(-1000));
      const now = new Date().toISOString();
      assert.equal(
        (await store.restartJob(j.id, { startedAt: now, leaseUntil: inMs(30_000), ifLeaseExpiredBy: now }))?.attempt,
        2,
        'its first, then its second',
      );
      assert.equal(await client.hget(keysOf(j.id)[0]!, 'attempt'), '2');
      assert.equal((await store.finishJob(j.id, finish(60_000)))?.job.attempt, 2);
    });

    it('reloads its scripts after SCRIPT FLUSH (NOSCRIPT)', async () => {
      const j = running();
      await store.createJob(j);
      await client.script('FLUSH');
      assert.equal(await store.updateProgress(j.id, { progress: 7 }), true);
      assert.equal((await store.getJob(j.id))!.progress, 7);
      await client.script('FLUSH');
      assert.equal(await store.appendLog(j.id, { at: new Date().toISOString(), level: 'warning', message: 'again' }), 1);
      assert.deepEqual(await client.script('EXISTS', UPDATE_PROGRESS.sha, APPEND_LOG.sha), [0, 1], 'EVAL cached the script again');
    });

    it('never quits the client it was given', async () => {
      await new RedisStore({ client, prefix }).close();
      assert.equal(await client.ping(), 'PONG');
    });
  });

  /** The names of the commands a client sends from now on. */
  const recordCommands = (client: Redis): string[] => {
    const names: string[] = [];
    const send = client.sendCommand.bind(client);
    client.sendCommand = (...args: Parameters<Redis['sendCommand']>) => {
      names.push(args[0].name);
      return send(...args);
    };
    return names;
  };

  // Queue mode's request key, outside a Cluster and on the code paths a Cluster takes (one node:
  // the scripts then get one job's keys only, as in a real Cluster).
  for (const cluster of [false, true]) {
    describe(`RedisStore requests (${cluster ? 'Cluster code paths, one node' : 'one server'})`, () => {
      const client = new Redis(REDIS_URL);
      client.isCluster = cluster;
      const prefix = testPrefix();
      const store = new RedisStore({ client, prefix });
      const requestKey = (id: string): string => `${prefix}job:{${id}}:request`;
      const queued = (): Job => running({ status: 'queued', startedAt: null });
      const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      after(async () => {
        await dropPrefix(client, prefix);
        await client.quit();
      });

      it('keeps a request in job:{id}:request beside the job, with no TTL, until the job finishes or is deleted', async () => {
        const plain = queued();
        await store.createJob(plain);
        assert.equal(await client.exists(requestKey(plain.id)), 0, 'no key for a job without a request');
        const j = queued();
        await store.createJob(j, bytes);
        assert.deepEqual(await client.getBuffer(requestKey(j.id)), bytes);
        assert.equal(await client.pttl(requestKey(j.id)), -1, 'it lives while the job does');
        await store.finishJob(j.id, finish(60_000));
        assert.equal(await client.exists(requestKey(j.id)), 0, 'deleted when the job finishes');
        assert.equal(await client.exists(`${prefix}job:{${j.id}}`), 1, 'the job itself stays until it expires');
        const deleted = queued();
        await store.createJob(deleted, bytes);
        await store.deleteJob(deleted.id);
        assert.equal(await client.exists(requestKey(deleted.id)), 0, 'deleted with the job');
      });

      it('creates a job with a request in the same commands as without one, and reads it in one', async () => {
        // Not counted: the store's once-per-store check of a fresh prefix, and the scripts' first
        // load (this file flushes them).
        await store.createJob(queued());
        await store.readRequest(randomUUID());
        const sent = recordCommands(client);
        await store.createJob(queued());
        const without = sent.splice(0);
        await store.createJob(queued(), bytes);
        const withRequest = sent.splice(0);
        assert.deepEqual(withRequest, without);
        if (!cluster) assert.deepEqual(without, ['evalsha'], 'one round trip outside a Cluster');
        const j = queued();
        await store.createJob(j, bytes);
        sent.splice(0);
        assert.deepEqual(await store.readRequest(j.id), bytes);
        assert.deepEqual(sent, ['evalsha']);
      });

      it('reads a request back byte for byte after SCRIPT FLUSH (NOSCRIPT)', async () => {
        const j = queued();
        await store.createJob(j, bytes);
        await client.script('FLUSH');
        assert.deepEqual(await store.readRequest(j.id), bytes);
        await client.script('FLUSH');
        const k = queued();
        await store.createJob(k, bytes);
        assert.deepEqual(await store.readRequest(k.id), bytes);
      });
    });
  }
  // Restarts, outside a Cluster and on the code paths a Cluster takes: the same one script either
  // way, on the job's own keys.
  for (const cluster of [false, true]) {
    describe(`RedisStore restarts (${cluster ? 'Cluster code paths, one node' : 'one server'})`, () => {
      const client = new Redis(REDIS_URL);
      client.isCluster = cluster;
      const prefix = testPrefix();
      const store = new RedisStore({ client, prefix, chunkBytes: 1000 });
      const key = (id: string, suffix: '' | ':log' | ':result' | ':request' = ''): string => `${prefix}job:{${id}}${suffix}`;
      const dead = (owner = 'ann'): Job => running({ owner, startedAt: inMs(-60_000), leaseUntil: inMs(-1000) });
      const restart = () => {
        const now = new Date().toISOString();
        return { startedAt: now, leaseUntil: inMs(30_000), ifLeaseExpiredBy: now };
      };
      const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      after(async () => {
        await dropPrefix(client, prefix);
        await client.quit();
      });

      it('restarts in one script: the result key goes; the request, the log and the running index entries stay; no key gains a TTL', async () => {
        const owner = `owner-${randomUUID()}`;
        const j = dead(owner);
        await store.createJob(j, bytes);
        await store.appendLog(j.id, { at: new Date().toISOString(), level: 'info', message: 'attempt 1' });
        await store.appendResult(j.id, randomBytes(2500));
        assert.equal(await client.llen(key(j.id, ':result')), 3, 'stored in three pieces');
        await store.restartJob(randomUUID(), restart()); // loads the script: not counted
        const sent = recordCommands(client);
        assert.equal((await store.restartJob(j.id, restart()))?.attempt, 2);
        assert.deepEqual(sent, ['evalsha'], 'one round trip');
        assert.equal(await client.exists(key(j.id, ':result')), 0, 'every piece of the result is gone');
        assert.deepEqual(await client.getBuffer(key(j.id, ':request')), bytes, 'the request is there to be replayed');
        assert.equal(await client.llen(key(j.id, ':log')), 1);
        for (const name of [key(j.id), key(j.id, ':log'), key(j.id, ':request')]) assert.equal(await client.pttl(name), -1, `${name} lives while the job runs`);
        const member = `${j.createdAt} ${j.id}`;
        for (const status of ['queued', 'running', 'completed', 'failed', 'cancelled']) {
          for (const index of [`${prefix}status:${status}`, `${prefix}status:${status}:${JSON.stringify(owner)}`]) {
            assert.equal((await client.zscore(index, member)) !== null, status === 'running', `${index}: ${status === 'running' ? 'listed' : 'not listed'}`);
          }
        }
      });

      it('gives a resent append of the dead worker (its token recorded) no place in the new attempt', async () => {
        const j = dead();
        await store.createJob(j);
        await store.appendResult(j.id, Buffer.from('last chunk of attempt 1'));
        const token = (await client.hget(key(j.id), 'chunkToken'))!;
        await store.restartJob(j.id, restart());
        // What ioredis sends again when the reply to that append was lost in a reconnect.
        const resent = await client.eval(APPEND_RESULT.lua, 2, key(j.id), key(j.id, ':result'), 'last chunk of attempt 1', token);
        assert.equal(resent, 0);
        assert.equal(await client.llen(key(j.id, ':result')), 0);
        await store.appendResult(j.id, Buffer.from('attempt 2'));
        assert.equal(await client.llen(key(j.id, ':result')), 1);
      });

      it('restarts after SCRIPT FLUSH (NOSCRIPT)', async () => {
        const j = dead();
        await store.createJob(j);
        await client.script('FLUSH');
        assert.equal((await store.restartJob(j.id, restart()))?.attempt, 2);
      });
    });
  }
} else {
  test.skip('RedisStore: Redis is not reachable');
}
