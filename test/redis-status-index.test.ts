// RedisStore's per-status indexes against a real Redis: status-filtered pages equal a brute-force listing, cost O(page) commands, survive an upgrade from 0.1, and leave with the job.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, it, test } from 'node:test';
import { Redis } from 'ioredis';
import type { Job, JobFinish, JobQuery, JobStatus } from '../src/model/job.js';
import { newJob } from '../src/model/job.js';
import { RedisStore } from '../src/stores/redis.js';
import { storeConformanceSuite } from '../src/testing/index.js';
import { REDIS_URL, serviceAvailable } from './services.js';
import { dropRedisPrefix } from './stores.js';

const STATUSES: JobStatus[] = ['queued', 'running', 'completed', 'failed', 'cancelled'];
// A quote, the `:status:` separator and a lone surrogate (which Redis's cjson cannot decode) in owner names.
const OWNERS = ['ann', 'bob', 'c"x:status:queued', 'd\ud800', null];

const inMs = (ms: number): string => new Date(Date.now() + ms).toISOString();
const finish = (status: JobFinish['status'], expiresInMs = 3_600_000): JobFinish => ({
  status,
  finishedAt: new Date().toISOString(),
  expiresAt: inMs(expiresInMs),
  response: null,
  error: null,
});
const member = (job: Pick<Job, 'createdAt' | 'id'>): string => `${job.createdAt} ${job.id}`;

/** A small seeded generator, so a failing run can be replayed. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** The names of the commands a client sends from now on (once connected: its handshake is not the store's). */
async function recordCommands(client: Redis): Promise<string[]> {
  await client.ping();
  const names: string[] = [];
  const send = client.sendCommand.bind(client);
  client.sendCommand = (...args: Parameters<Redis['sendCommand']>) => {
    names.push(args[0].name);
    return send(...args);
  };
  return names;
}

/** A store on its own prefix and client. `cluster` takes the Cluster code paths (indexes written after each script) on this one server. */
function open(cluster: boolean, prefix = `bgrs-test-${randomUUID().slice(0, 8)}:`) {
  const client = new Redis(REDIS_URL);
  client.isCluster = cluster;
  return { client, prefix, store: new RedisStore({ client, prefix }) };
}

/** Every key matching a pattern (SCAN, not KEYS: the database may be shared). */
async function keysUnder(client: Redis, pattern: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    keys.push(...found);
    cursor = next;
  } while (cursor !== '0');
  return keys;
}

/** What a 0.1 store left behind: no per-status indexes and no version key. */
async function forgetStatusIndexes(client: Redis, prefix: string): Promise<void> {
  const keys = [...(await keysUnder(client, `${prefix}status:*`)), `${prefix}version`];
  await client.del(...keys);
}

/** The jobs a query should list, newest first by (createdAt, id) in bytes, as Redis orders them. */
function expected(jobs: Iterable<Job>, query: Omit<JobQuery, 'limit'>): string[] {
  return [...jobs]
    .filter((j) => query.owner === undefined || j.owner === query.owner)
    .filter((j) => !query.statuses?.length || query.statuses.includes(j.status))
    .map(member)
    .sort((a, b) => Buffer.compare(Buffer.from(b), Buffer.from(a)))
    .map((m) => m.slice(m.indexOf(' ') + 1));
}

/** Walks a query's pages and checks each against the expected list: same jobs, same page cuts, `next` only when more remain. */
async function assertPages(store: RedisStore, jobs: Map<string, Job>, query: Omit<JobQuery, 'limit' | 'cursor'>, limit: number): Promise<void> {
  const want = expected(jobs.values(), query);
  let cursor: string | null = null;
  for (let start = 0; ; start += limit) {
    const page = await store.listJobs({ ...query, limit, cursor });
    const label = `${JSON.stringify(query)} limit ${limit} from ${start}`;
    assert.deepEqual(
      page.jobs.map((j) => j.id),
      want.slice(start, start + limit),
      label,
    );
    for (const j of page.jobs) assert.deepEqual(j, jobs.get(j.id), label);
    assert.equal(page.next !== null, start + limit < want.length, `${label}: next`);
    if (!page.next) return;
    cursor = page.next;
  }
}

const QUERIES: Array<JobStatus[]> = [
  ...STATUSES.map((s) => [s]),
  ['queued', 'running'],
  ['completed', 'failed', 'cancelled'],
  ['cancelled', 'queued'],
  ['running', 'running'],
  STATUSES,
];

async function assertAllPages(store: RedisStore, jobs: Map<string, Job>, limits: number[]): Promise<void> {
  for (const owner of [undefined, ...OWNERS]) {
    for (const statuses of QUERIES) for (const limit of limits) await assertPages(store, jobs, { owner, statuses }, limit);
  }
}

/**
 * Creates `count` jobs across owners and statuses (some sharing a createdAt, some created final),
 * then starts, finishes, moves (anonymous → owner) and deletes some. Returns them as they now stand.
 */
async function populate(store: RedisStore, count: number, seed: number): Promise<Map<string, Job>> {
  const next = random(seed);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(next() * list.length)]!;
  const jobs = new Map<string, Job>();
  for (let i = 0; i < count; i++) {
    const status = pick<JobStatus>(['queued', 'queued', 'running', 'running', 'completed']);
    const j: Job = {
      ...newJob({ id: randomUUID(), method: 'GET', url: `/x/${i}`, owner: pick(OWNERS), status, leaseUntil: inMs(60_000) }),
      createdAt: new Date(Date.UTC(2030, 0, 1) + Math.floor(next() * count) * 1000).toISOString(),
    };
    if (status === 'completed') Object.assign(j, { finishedAt: j.createdAt, expiresAt: inMs(3_600_000), leaseUntil: null });
    await store.createJob(j);
    jobs.set(j.id, j);
  }
  const refresh = async (id: string): Promise<void> => {
    const j = await store.getJob(id);
    if (j) jobs.set(id, j);
    else jobs.delete(id);
  };
  for (const id of [...jobs.keys()]) {
    const roll = next();
    if (roll < 0.3) await store.startJob(id, { startedAt: new Date().toISOString(), leaseUntil: inMs(60_000) });
    else if (roll < 0.6) await store.finishJob(id, finish(pick(['completed', 'failed', 'cancelled'] as const)));
    else if (roll < 0.7) await store.updateProgress(id, { owner: pick(['ann', 'eve']), progress: 3 });
    else if (roll < 0.75) await store.deleteJob(id);
    await refresh(id);
  }
  return jobs;
}

if (await serviceAvailable('Redis', REDIS_URL)) {
  // The whole contract again, on the code paths a Cluster takes.
  const opened = new Map<RedisStore, { client: Redis; prefix: string }>();
  storeConformanceSuite('RedisStore (Cluster code paths, one node)', {
    create: () => {
      const { client, prefix, store } = open(true);
      opened.set(store, { client, prefix });
      return store;
    },
    destroy: async (store) => {
      const { client, prefix } = opened.get(store as RedisStore)!;
      await store.close?.();
      await dropRedisPrefix(client, prefix);
      await client.quit();
    },
    expiryGraceMs: 100,
  });

  for (const cluster of [false, true]) {
    describe(`RedisStore per-status indexes (${cluster ? 'Cluster code paths, one node' : 'one server'})`, () => {
      const cleanups: Array<() => Promise<void>> = [];
      const fresh = (prefix?: string) => {
        const opened = open(cluster, prefix);
        cleanups.push(async () => {
          await dropRedisPrefix(opened.client, opened.prefix);
          await opened.client.quit();
        });
        return opened;
      };
      after(async () => {
        for (const cleanup of cleanups) await cleanup();
      });

      it('lists every status filter page by page exactly as a brute-force listing does', async (t) => {
        const seed = Math.floor(Math.random() * 2 ** 31);
        t.diagnostic(`seed ${seed}`);
        const { store, client, prefix } = fresh();
        const jobs = await populate(store, 300, seed);
        assert.equal(await client.get(`${prefix}version`), '2', 'a fresh prefix is indexed from its first job');
        await assertAllPages(store, jobs, [1, 7, 1000]);
      });

      it('lists running jobs among 20,000 finished ones in a few commands', { timeout: 120_000 }, async (t) => {
        const { store, client, prefix } = fresh();
        // The running jobs are the oldest, so a scan of the owner index would meet them last.
        const runningJobs: Job[] = [];
        for (const [i, owner] of ['ann', 'ann', null].entries()) {
          const j = {
            ...newJob({ id: randomUUID(), method: 'GET', url: '/x', owner, status: 'running', leaseUntil: inMs(60_000) }),
            createdAt: `2020-01-01T00:00:0${i}.000Z`,
          };
          await store.createJob(j);
          runningJobs.push(j);
        }
        for (let batch = 0; batch < 40; batch++) {
          await Promise.all(
            Array.from({ length: 500 }, () => {
              const j = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: 'ann', status: 'completed' });
              return store.createJob({ ...j, finishedAt: j.createdAt, expiresAt: inMs(3_600_000) });
            }),
          );
        }
        const sent = await recordCommands(client);
        const page = await store.listJobs({ statuses: ['running'], limit: 20 });
        assert.deepEqual(
          page.jobs.map((j) => j.id),
          runningJobs.map((j) => j.id).reverse(),
        );
        assert.equal(page.next, null);
        t.diagnostic(`indexed, first listing: ${sent.length} commands (${sent.join(' ')})`);
        assert.deepEqual(sent, ['get', 'zrevrangebylex', 'hgetall', 'hgetall', 'hgetall'], 'the version key once, one window, one hash per job');
        sent.length = 0;
        const owned = await store.listJobs({ owner: 'ann', statuses: ['queued', 'running'], limit: 1 });
        assert.deepEqual(
          owned.jobs.map((j) => j.id),
          [runningJobs[1]!.id],
        );
        assert.ok(owned.next);
        assert.deepEqual(sent, ['zrevrangebylex', 'zrevrangebylex', 'hgetall', 'hgetall'], 'one window per status, limit + 1 hashes');

        // The same listing before migrate(), as 0.1 did it: a scan of all 20,003 jobs.
        await forgetStatusIndexes(client, prefix);
        const scanning = fresh(prefix);
        const scanned = await recordCommands(scanning.client);
        assert.deepEqual(await scanning.store.listJobs({ statuses: ['running'], limit: 20 }), page);
        t.diagnostic(`before migrate(): ${scanned.length} commands`);
        assert.ok(scanned.length > 20_000);

        // migrate() indexes them in batches; the next listing reads the index again.
        await scanning.store.migrate();
        scanned.length = 0;
        assert.deepEqual(await scanning.store.listJobs({ statuses: ['running'], limit: 20 }), page);
        assert.deepEqual(scanned, ['zrevrangebylex', 'hgetall', 'hgetall', 'hgetall'], 'the store that migrated knows without asking');
        assert.equal(await client.zcard(`${prefix}status:completed:"ann"`), 20_000);
      });

      it('lists right before and after migrate() on a prefix written by 0.1, and migrate() is safe to run concurrently', async (t) => {
        const seed = Math.floor(Math.random() * 2 ** 31);
        t.diagnostic(`seed ${seed}`);
        const { store, client, prefix } = fresh();
        const jobs = await populate(store, 150, seed);
        await forgetStatusIndexes(client, prefix);

        const upgraded = fresh(prefix).store;
        await assertAllPages(upgraded, jobs, [4, 1000]);
        // Jobs this version writes before migrate() are listed too (and indexed, but the scan does not rely on it).
        const later = await populate(upgraded, 40, seed + 1);
        for (const [id, j] of later) jobs.set(id, j);
        assert.equal(await client.get(`${prefix}version`), null, 'a prefix holding 0.1 jobs is not taken for fresh');
        await assertAllPages(upgraded, jobs, [4, 1000]);

        // Three processes migrate at once while jobs keep moving.
        const racing = [...jobs.values()].filter((j) => j.status === 'queued' || j.status === 'running').slice(0, 20);
        await Promise.all([
          fresh(prefix).store.migrate(),
          fresh(prefix).store.migrate(),
          upgraded.migrate(),
          ...racing.map(async (j) => {
            await upgraded.finishJob(j.id, finish('failed'));
            jobs.set(j.id, (await upgraded.getJob(j.id))!);
          }),
        ]);
        assert.equal(await client.get(`${prefix}version`), '2');
        await upgraded.migrate(); // again: nothing to do
        for (const s of [upgraded, fresh(prefix).store]) await assertAllPages(s, jobs, [4, 1000]);

        // The listings read the indexes now: a handful of commands, not one per job.
        const reader = fresh(prefix);
        const sent = await recordCommands(reader.client);
        await reader.store.listJobs({ statuses: ['running'], limit: 2 });
        assert.ok(sent.length <= 5, `${sent.length} commands: ${sent.join(' ')}`);
      });

      it('skips and drops a status entry whose job has moved on, as a 0.1 process leaves it', async () => {
        const { store, client, prefix } = fresh();
        const j = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: 'ann', status: 'running', leaseUntil: inMs(60_000) });
        await store.createJob(j);
        // 0.1's finish: the hash changes, the status indexes do not.
        await client.hset(`${prefix}job:{${j.id}}`, 'status', '"completed"');
        assert.deepEqual((await store.listJobs({ statuses: ['running'], limit: 5 })).jobs, []);
        assert.deepEqual((await store.listJobs({ owner: 'ann', statuses: ['running'], limit: 5 })).jobs, []);
        assert.equal(await client.zscore(`${prefix}status:running`, member(j)), null);
        assert.equal(await client.zscore(`${prefix}status:running:"ann"`, member(j)), null);
      });

      it('drops a job from every status index when it is deleted, and when the sweep meets it expired', async () => {
        const { store, client, prefix } = fresh();
        const owner = 'ann';
        const everywhere = (m: string) =>
          Promise.all(
            [`${prefix}jobs`, `${prefix}owner:${owner}`, ...STATUSES.flatMap((s) => [`${prefix}status:${s}`, `${prefix}status:${s}:"${owner}"`])].map(
              async (key) => ((await client.zscore(key, m)) === null ? null : key),
            ),
          ).then((keys) => keys.filter((key) => key !== null));

        const deleted = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner, status: 'queued' });
        await store.createJob(deleted);
        await store.startJob(deleted.id, { startedAt: new Date().toISOString(), leaseUntil: inMs(60_000) });
        assert.deepEqual(await everywhere(member(deleted)), [
          `${prefix}jobs`,
          `${prefix}owner:ann`,
          `${prefix}status:running`,
          `${prefix}status:running:"ann"`,
        ]);
        assert.equal(await store.deleteJob(deleted.id), true);
        assert.deepEqual(await everywhere(member(deleted)), []);

        // Expired past the sweep's grace already: its keys go at once, and this store's first finish sweeps.
        const expired = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner, status: 'running', leaseUntil: inMs(60_000) });
        await store.createJob(expired);
        // An entry a Cluster move left behind goes too.
        await client.zadd(`${prefix}status:queued:"ann"`, 0, member(expired));
        const finished = await store.finishJob(expired.id, finish('completed', -120_000));
        assert.equal(finished?.applied, true);
        assert.deepEqual(await everywhere(member(expired)), []);
        assert.equal(await client.zcard(`${prefix}expiries`), 0);
      });

      it('finishes a job whose expiresAt has already passed: Redis deletes it at once, and the finish still applies', async () => {
        const { store } = fresh();
        const j = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: 'ann', status: 'running', leaseUntil: inMs(60_000) });
        await store.createJob(j);
        const finished = await store.finishJob(j.id, finish('completed', -1000));
        assert.equal(finished?.applied, true);
        assert.equal(finished?.job.status, 'completed');
        assert.equal(await store.getJob(j.id), null);
      });

      it('moves an anonymous job to the status indexes of the owner its replay established', async () => {
        const { store, client, prefix } = fresh();
        const queued = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: null, status: 'queued' });
        const running = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: null, status: 'running', leaseUntil: inMs(60_000) });
        for (const j of [queued, running]) await store.createJob(j);
        const ids = async (query: Omit<JobQuery, 'limit'>) => (await store.listJobs({ ...query, limit: 10 })).jobs.map((j) => j.id);
        assert.deepEqual(await ids({ owner: null, statuses: ['queued'] }), [queued.id]);

        for (const j of [queued, running]) assert.equal(await store.updateProgress(j.id, { owner: 'ann' }), true);
        assert.deepEqual(await ids({ owner: null, statuses: ['queued', 'running'] }), []);
        assert.deepEqual(await ids({ owner: 'ann', statuses: ['queued'] }), [queued.id]);
        assert.deepEqual(await ids({ owner: 'ann', statuses: ['running'] }), [running.id]);
        assert.deepEqual(await ids({ statuses: ['queued'] }), [queued.id], 'every job’s index is unchanged');
        for (const s of ['queued', 'running']) assert.equal(await client.zcard(`${prefix}status:${s}:null`), 0, `no ${s} entry is left as anonymous`);

        await store.startJob(queued.id, { startedAt: new Date().toISOString(), leaseUntil: inMs(60_000) });
        await store.finishJob(running.id, finish('cancelled'));
        assert.deepEqual(await ids({ owner: 'ann', statuses: ['running'] }), [queued.id]);
        assert.deepEqual(await ids({ owner: 'ann', statuses: ['cancelled'] }), [running.id]);
        assert.deepEqual(await ids({ owner: 'ann', statuses: ['queued'] }), []);
      });
    });
  }
} else {
  test.skip('RedisStore per-status indexes: Redis is not reachable');
}
