// MemoryStore passes the Store conformance suite, plus what only it has: its byte budget.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { MemoryStore } from '../src/index.js';
import { newJob } from '../src/model/job.js';
import { storeConformanceSuite } from '../src/testing/index.js';

storeConformanceSuite('MemoryStore', { create: () => new MemoryStore(), destroy: (store) => store.close?.(), expiryGraceMs: 100 });

// Promise: the bytes of an attempt that was thrown away do not count against maxBytes.
it('MemoryStore: a restart gives back the weight of the result it clears', async () => {
  const store = new MemoryStore({ maxBytes: 4096 });
  const at = (ms: number): string => new Date(Date.now() + ms).toISOString();
  const job = newJob({ id: 'j1', method: 'GET', url: '/x', owner: null, status: 'running', leaseUntil: at(-1000) });
  await store.createJob(job);
  await store.appendResult(job.id, Buffer.alloc(8192));
  assert.equal((await store.restartJob(job.id, { startedAt: at(0), leaseUntil: at(30_000), ifLeaseExpiredBy: at(0) }))?.attempt, 2);
  await store.appendResult(job.id, Buffer.from('small'));
  await store.finishJob(job.id, { status: 'completed', finishedAt: at(0), expiresAt: at(60_000), response: null, error: null });
  assert.equal((await store.getJob(job.id))?.status, 'completed', 'kept: 5 bytes are within maxBytes');
  await store.close();
});
