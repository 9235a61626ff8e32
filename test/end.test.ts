// Unit tests of a job's one end (src/jobs/end.ts), on a real MemoryStore: whoever ends a job and however
// often, the final state is recorded once, each hook runs once, in order, and one waiting client is answered.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { MemoryStore } from '../src/index.js';
import { type EndConfig, JobEnd } from '../src/jobs/end.js';
import type { Job, JobFinish } from '../src/model/job.js';
import { newJob } from '../src/model/job.js';
import { sleep } from './helpers.js';

function setup(store = new MemoryStore(), lease = 200): { config: EndConfig; errors: string[]; store: MemoryStore } {
  const errors: string[] = [];
  return { config: { store, logger: { warn: () => undefined, error: (m) => errors.push(m) }, lease, ttl: 60_000 }, errors, store };
}

async function running(store: MemoryStore): Promise<string> {
  const id = randomUUID();
  await store.createJob(newJob({ id, method: 'POST', url: '/x', owner: null, status: 'running', leaseUntil: new Date(Date.now() + 60_000).toISOString() }));
  return id;
}

const completed = { status: 'completed' as const, response: { status: 200, contentType: null, size: 0, headers: [] }, error: null };
const cancelled = { status: 'cancelled' as const, response: null, error: { type: 'cancelled', message: 'stop' } };

describe('JobEnd', () => {
  it('records the end once and runs onEnd, notify, then the answer, once each, whoever calls and however often', async () => {
    const { config, store } = setup();
    const id = await running(store);
    const order: string[] = [];
    let finishes = 0;
    const finishJob = store.finishJob.bind(store);
    store.finishJob = (jobId: string, finish: JobFinish) => {
      finishes++;
      return finishJob(jobId, finish);
    };
    const end = new JobEnd(config, id, {
      onEnd: async (job, answered) => {
        order.push(`onEnd:${job?.status}:${answered}`);
      },
      notify: () => order.push('notify'),
    });
    assert.equal(end.ended, false);
    const results = await Promise.all([
      end.end(completed, { answered: true, answer: (job) => order.push(`answer1:${job?.status}`) }),
      end.end(cancelled, { answer: (job) => order.push(`answer2:${job?.status}`) }),
      end.end(null),
    ]);
    assert.equal(end.ended, true);
    assert.equal(finishes, 1, 'one finishJob');
    assert.deepEqual(order, ['onEnd:completed:true', 'notify', 'answer1:completed'], 'the first end wins; its client only');
    for (const job of results) assert.equal(job?.status, 'completed');
    assert.equal((await store.getJob(id))?.status, 'completed');
  });

  it('answers the client of a later call when the first had none to answer', async () => {
    const { config, store } = setup();
    const id = await running(store);
    const end = new JobEnd(config, id);
    await end.end(cancelled);
    const answers: Array<Job | null> = [];
    await end.end(completed, { answer: (job) => answers.push(job) });
    await end.end(completed, { answer: (job) => answers.push(job) });
    assert.equal(answers.length, 1, 'answered once');
    assert.equal(answers[0]?.status, 'cancelled', 'with the end that was recorded');
  });

  it('reports the stored end when another path ended the job first (the finish did not apply)', async () => {
    const { config, store } = setup();
    const id = await running(store);
    await store.finishJob(id, { ...cancelled, finishedAt: new Date().toISOString(), expiresAt: new Date(Date.now() + 60_000).toISOString() });
    let seen: Job | null | undefined;
    const final = await new JobEnd(config, id, { onEnd: async (job) => void (seen = job) }).end(completed);
    assert.equal(final?.status, 'cancelled');
    assert.equal(seen?.status, 'cancelled');
  });

  it('with no ending, reads the end the store holds (null for a job not final or gone)', async () => {
    const { config, store } = setup();
    const id = await running(store);
    assert.equal(await new JobEnd(config, id).end(null), null, 'still running: no final job');
    assert.equal(await new JobEnd(config, randomUUID()).end(null), null, 'gone');
    await store.finishJob(id, { ...cancelled, finishedAt: new Date().toISOString(), expiresAt: new Date(Date.now() + 60_000).toISOString() });
    assert.equal((await new JobEnd(config, id).end(null))?.status, 'cancelled');
  });

  it('retries the final state through a short store outage, telling onStoreError each time', async () => {
    const { config, store } = setup(new MemoryStore(), 2000);
    const id = await running(store);
    let failures = 2;
    const finishJob = store.finishJob.bind(store);
    store.finishJob = async (jobId: string, finish: JobFinish) => {
      if (failures-- > 0) throw new Error('store away');
      return finishJob(jobId, finish);
    };
    let told = 0;
    const final = await new JobEnd(config, id).end(completed, { onStoreError: () => told++ });
    assert.equal(final?.status, 'completed', 'recorded after the outage');
    assert.equal(told, 2);
  });

  it('gives up after one lease, logs, and still runs the hooks (with no final job) and the answer', async () => {
    const { config, store, errors } = setup(new MemoryStore(), 150);
    const id = await running(store);
    store.finishJob = async () => {
      throw new Error('store away');
    };
    const seen: Array<Job | null> = [];
    let answered = false;
    const started = Date.now();
    await new JobEnd(config, id, { onEnd: async (job) => void seen.push(job) }).end(completed, { answer: () => (answered = true) });
    assert.ok(Date.now() - started >= 140, 'retried for about a lease');
    assert.deepEqual(seen, [null]);
    assert.equal(answered, true);
    assert.match(errors.join('\n'), new RegExp(`could not record the end of job ${id}: store away`));
  });

  it('logs a hook or an answer that throws, and never rejects', async () => {
    const { config, store, errors } = setup();
    const id = await running(store);
    let notified = false;
    const end = new JobEnd(config, id, {
      onEnd: async () => {
        throw new Error('hook broke');
      },
      notify: () => (notified = true),
    });
    const final = await end.end(completed, {
      answer: () => {
        throw new Error('view broke');
      },
    });
    assert.equal(final?.status, 'completed');
    assert.equal(notified, true, 'a failed hook does not stop the next');
    assert.match(errors.join('\n'), /end hook failed: hook broke/);
    assert.match(errors.join('\n'), /could not answer the client of job .*: view broke/);
    await sleep(5);
  });

  it("keeps the finished job for the hooks' ttl when one is given", async () => {
    const { config, store } = setup();
    const id = await running(store);
    const before = Date.now();
    const final = await new JobEnd(config, id, { ttl: 3_600_000 }).end(completed);
    const kept = Date.parse(final!.expiresAt!) - before;
    assert.ok(kept > 3_500_000 && kept <= 3_600_000 + 1000, `kept ${kept} ms`);
  });
});
