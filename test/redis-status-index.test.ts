// RedisStore's listing indexes against a real Redis, beyond the conformance suite.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, it, test } from 'node:test';
import { Redis } from 'ioredis';
import type { JobFinish } from '../src/model/job.js';
import { newJob } from '../src/model/job.js';
import { RedisStore } from '../src/stores/redis.js';
import { REDIS_URL, serviceAvailable } from './services.js';
import { dropRedisPrefix } from './stores.js';

const inMs = (ms: number): string => new Date(Date.now() + ms).toISOString();
const finish = (status: JobFinish['status'], expiresInMs = 3_600_000): JobFinish => ({
  status,
  finishedAt: new Date().toISOString(),
  expiresAt: inMs(expiresInMs),
  response: null,
  error: null,
});

if (await serviceAvailable('Redis', REDIS_URL)) {
  describe('RedisStore listing indexes', () => {
    const client = new Redis(REDIS_URL);
    const prefix = `bgrs-test-${randomUUID().slice(0, 8)}:`;
    const store = new RedisStore({ client, prefix });
    after(async () => {
      await dropRedisPrefix(client, prefix);
      await client.quit();
    });

    it('finishes a job whose expiresAt has already passed: Redis deletes it at once, and the finish still applies', async () => {
      const j = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: 'ann', status: 'running', leaseUntil: inMs(60_000) });
      await store.createJob(j);
      const finished = await store.finishJob(j.id, finish('completed', -1000));
      assert.equal(finished?.applied, true);
      assert.equal(finished?.job.status, 'completed');
      assert.equal(await store.getJob(j.id), null);
    });
  });
} else {
  test.skip('RedisStore listing indexes: Redis is not reachable');
}
