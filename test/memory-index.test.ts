// The MemoryStore's listing index: order, cursors, owners given late, and jobs that leave.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { MemoryStore } from '../src/index.js';
import { newJob } from '../src/model/job.js';
import { JobIndex } from '../src/stores/memory-index.js';

const key = (createdAt: string, id: string) => ({ createdAt, id });

describe('JobIndex', () => {
  it('walks newest first by createdAt then id, whatever the insertion order', () => {
    const index = new JobIndex();
    for (const k of [key('2026-01-02', 'b'), key('2026-01-01', 'z'), key('2026-01-02', 'a'), key('2026-01-03', 'c')]) index.add(k, null);
    assert.deepEqual(
      [...index.newestFirst(undefined, null)].map((k) => k.id),
      ['c', 'b', 'a', 'z'],
    );
    assert.deepEqual(
      [...index.newestFirst(undefined, key('2026-01-02', 'b'))].map((k) => k.id),
      ['a', 'z'],
      'strictly after the cursor',
    );
  });

  it('keeps a list per owner, moves a job given its owner late, and forgets removed jobs', () => {
    const index = new JobIndex();
    index.add(key('1', 'x'), 'alice');
    index.add(key('2', 'y'), null);
    index.add(key('3', 'z'), 'bob');
    index.move(key('2', 'y'), 'alice');
    assert.deepEqual(
      [...index.newestFirst('alice', null)].map((k) => k.id),
      ['y', 'x'],
    );
    assert.deepEqual([...index.newestFirst(null, null)], []);
    index.remove(key('1', 'x'));
    index.remove(key('1', 'x'));
    assert.deepEqual(
      [...index.newestFirst('alice', null)].map((k) => k.id),
      ['y'],
    );
    assert.deepEqual(
      [...index.newestFirst(undefined, null)].map((k) => k.id),
      ['z', 'y'],
    );
    assert.deepEqual([...index.newestFirst('nobody', null)], []);
  });
});

describe('MemoryStore listing through its index', () => {
  const job = (owner: string | null, at: number) => {
    const j = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner, status: 'running' });
    j.createdAt = new Date(at).toISOString();
    return j;
  };
  const finish = (expiresInMs = 60_000) => ({
    status: 'completed' as const,
    finishedAt: new Date().toISOString(),
    expiresAt: new Date(Date.now() + expiresInMs).toISOString(),
    response: null,
    error: null,
  });

  // Promise: a job evicted, deleted or expired never shows in a list; one given its owner late shows under that owner.
  it('lists what the store holds: not what it evicted, deleted or let expire', async () => {
    const store = new MemoryStore({ max: 2 });
    const t = Date.now() - 10_000;
    const [a, b, c, d] = [job('o', t), job('o', t + 1), job('o', t + 2), job('o', t + 3)];
    for (const j of [a!, b!, c!, d!]) await store.createJob(j);
    for (const j of [a!, b!, c!]) await store.finishJob(j.id, finish());
    // max 2 finished: a was evicted when c finished.
    assert.deepEqual(
      (await store.listJobs({ owner: 'o', limit: 10 })).jobs.map((j) => j.id),
      [d!.id, c!.id, b!.id],
    );
    await store.deleteJob(c!.id);
    await store.deleteJob(d!.id);
    assert.deepEqual(
      (await store.listJobs({ limit: 10 })).jobs.map((j) => j.id),
      [b!.id],
    );
    const late = job(null, t + 4);
    await store.createJob(late);
    await store.updateProgress(late.id, { owner: 'p' });
    assert.deepEqual(
      (await store.listJobs({ owner: 'p', limit: 10 })).jobs.map((j) => j.id),
      [late.id],
    );
    assert.deepEqual((await store.listJobs({ owner: null, limit: 10 })).jobs, []);
    const brief = job('q', t + 5);
    await store.createJob(brief);
    await store.finishJob(brief.id, finish(30));
    await new Promise((r) => setTimeout(r, 60));
    assert.deepEqual((await store.listJobs({ owner: 'q', limit: 10 })).jobs, []);
    await store.close();
  });

  it('pages 5,000 jobs of one owner without gaps or repeats', async () => {
    const store = new MemoryStore({ max: 10_000 });
    const t = Date.now() - 100_000;
    const ids: string[] = [];
    for (let i = 0; i < 5000; i++) {
      const j = job(i % 2 ? 'odd' : 'even', t + Math.floor(i / 3));
      await store.createJob(j);
      if (i % 2) ids.push(j.id);
    }
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page = await store.listJobs({ owner: 'odd', limit: 100, cursor });
      seen.push(...page.jobs.map((j) => j.id));
      cursor = page.next;
    } while (cursor);
    assert.equal(seen.length, 2500);
    assert.equal(new Set(seen).size, 2500);
    assert.deepEqual([...seen].sort(), [...ids].sort());
    await store.close();
  });
});
