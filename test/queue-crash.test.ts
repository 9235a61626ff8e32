// Queue mode across OS processes, killed with SIGKILL: web and worker processes on a shared store (Redis, then
// PostgreSQL) and one BullMQ queue on Redis. Promises: an acked job is never lost when its web process dies;
// a POST whose worker dies mid-run is never run a second time. On Express 5 and 4.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { type JobDoc, sleep, waitForJob } from './helpers.js';
import { killAll, type Proc, runsOf, startQueueApp } from './processes.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from './services.js';
import { dropPostgresTables, dropRedisPrefix } from './stores.js';

const LEASE_MS = 1000;

const starter =
  (major: 4 | 5) =>
  (role: 'web' | 'worker', kind: 'redis' | 'postgres', namespace: string, queue: string): Promise<Proc> =>
    startQueueApp({ role, store: kind, namespace, queue, lease: LEASE_MS, express: major });

after(killAll);

const kinds: Array<'redis' | 'postgres'> = [];
if (await serviceAvailable('Redis', REDIS_URL)) kinds.push('redis');
if (kinds.length && (await serviceAvailable('PostgreSQL', POSTGRES_URL))) kinds.push('postgres');

for (const major of [5, 4] as const)
  for (const kind of kinds) {
    const start = starter(major);
    describe(`queue mode, processes killed with SIGKILL (${kind} store, BullMQ on Redis, Express ${major})`, () => {
      const namespace = kind === 'redis' ? `bgrs-qcrash-${randomUUID()}:` : `bgrs_qcrash_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
      const queue = `qcrash-${randomUUID()}`;

      after(async () => {
        await killAll();
        const { Redis } = await import('ioredis');
        const redis = new Redis(REDIS_URL);
        await dropRedisPrefix(redis, namespace);
        await redis.quit();
        if (kind === 'postgres') {
          const { default: pg } = await import('pg');
          const pool = new pg.Pool({ connectionString: POSTGRES_URL });
          await dropPostgresTables(pool, namespace);
          await pool.end();
        }
      });

      it('the web killed after its acks, before any worker ran: every acked job completes once, on a worker started later', async () => {
        const web = await start('web', kind, namespace, queue);
        const acks = await Promise.all(Array.from({ length: 6 }, (_, n) => fetch(`${web.url}/work?bgrs=yes&n=${n}`)));
        const locations = acks.map((ack) => {
          assert.equal(ack.status, 202);
          return ack.headers.get('location')!;
        });
        await web.kill('SIGKILL');
        const worker = await start('worker', kind, namespace, queue);
        const reader = await start('web', kind, namespace, queue);
        for (const [n, location] of locations.entries()) {
          const job = await waitForJob(reader.url, location, 20_000);
          assert.equal(job.status, 'completed', JSON.stringify(job.error));
          assert.equal(await (await fetch(`${reader.url}${location}/result`)).text(), `n\n${n}\n`);
          assert.equal(runsOf([worker], job.id), 1, 'ran once');
        }
        await Promise.all([worker.kill(), reader.kill()]);
      });

      it('a worker killed mid-run: its GET runs again on another worker, as attempt 2, from a clean result', async () => {
        const web = await start('web', kind, namespace, queue);
        const first = await start('worker', kind, namespace, queue);
        const ack = await fetch(`${web.url}/flaky?bgrs=yes`);
        assert.equal(ack.status, 202);
        const location = ack.headers.get('location')!;
        const { id } = (await ack.json()) as JobDoc;
        await first.next((e) => e.event === 'run' && e.id === id);
        const second = await start('worker', kind, namespace, queue);
        await first.kill('SIGKILL');
        const job = await waitForJob(web.url, location, 20_000);
        assert.equal(job.status, 'completed', JSON.stringify(job.error));
        assert.equal(job.attempt, 2);
        assert.equal(runsOf([second], id), 1, 'run again once, on the other worker');
        assert.equal(await (await fetch(`${web.url}${location}/result`)).text(), 'attempt 2\ndone\n', 'no byte of the first attempt');
        await Promise.all([web.kill(), second.kill()]);
      });

      it('a cancel on a web process aborts the handler in the worker process within a second', async () => {
        const web = await start('web', kind, namespace, queue);
        const worker = await start('worker', kind, namespace, queue);
        const ack = await fetch(`${web.url}/charge?bgrs=yes`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-hang': '1' }, body: '{}' });
        const location = ack.headers.get('location')!;
        const { id } = (await ack.json()) as JobDoc;
        await worker.next((e) => e.event === 'run' && e.id === id);
        const sent = Date.now();
        assert.equal((await fetch(`${web.url}${location}/cancel`, { method: 'POST' })).status, 202);
        const aborted = await worker.next((e) => e.event === 'aborted' && e.id === id, 5000);
        assert.equal(aborted.code, 'BGRS_CANCELLED');
        assert.ok(Number(aborted.at) - sent < 1500, `aborted ${Number(aborted.at) - sent} ms after the cancel`);
        assert.equal((await waitForJob(web.url, location)).status, 'cancelled');
        await Promise.all([web.kill(), worker.kill()]);
      });

      it('a worker killed mid-run: its POST fails interrupted, and no other worker runs the handler again', async () => {
        const web = await start('web', kind, namespace, queue);
        const first = await start('worker', kind, namespace, queue);
        const ack = await fetch(`${web.url}/charge?bgrs=yes`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-hang': '1' },
          body: '{"cents":100}',
        });
        assert.equal(ack.status, 202);
        const location = ack.headers.get('location')!;
        const { id } = (await ack.json()) as JobDoc;
        await first.next((e) => e.event === 'run' && e.id === id);
        const second = await start('worker', kind, namespace, queue);
        await first.kill('SIGKILL');
        const job = await waitForJob(web.url, location, 20_000);
        assert.equal(job.status, 'failed');
        assert.equal(job.error?.type, 'interrupted');
        // Past the queue's stall detection (lockDuration 1 s, checked every 0.5 s): the second worker was handed the job.
        await sleep(3000);
        assert.equal(runsOf([second], id), 0, 'the POST handler never ran a second time');
        assert.equal(((await (await fetch(`${web.url}${location}`)).json()) as JobDoc).status, 'failed');
        // The second worker still takes new work.
        const next = await fetch(`${web.url}/work?bgrs=yes&n=5`);
        assert.equal((await waitForJob(web.url, next.headers.get('location')!, 20_000)).status, 'completed');
        await Promise.all([web.kill(), second.kill()]);
      });
    });
  }
