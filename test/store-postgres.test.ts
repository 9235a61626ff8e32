// PostgresStore passes the Store conformance suite, plus its own checks: migration, sweep, streaming, options.
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import pg from 'pg';
import { newJob } from '../src/model/job.js';
import { PostgresStore } from '../src/stores/postgres.js';
import { statements } from '../src/stores/postgres-sql.js';
import { StaleAttemptError } from '../src/stores/store.js';
import { storeConformanceSuite } from '../src/testing/index.js';
import { POSTGRES_URL, serviceAvailable } from './services.js';

const available = await serviceAvailable('PostgreSQL', POSTGRES_URL);
// One table prefix per run, so runs (and a developer's own data) never meet.
const table = `bgrs_test_${randomBytes(4).toString('hex')}`;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const inMs = (ms: number): string => new Date(Date.now() + ms).toISOString();

async function dropTables(pool: pg.Pool, prefix: string): Promise<void> {
  await pool.query(`DROP TABLE IF EXISTS "${prefix}_chunks", "${prefix}_logs", "${prefix}_jobs", "${prefix}_keys"`);
}

if (available) {
  storeConformanceSuite('PostgresStore', {
    create: () => new PostgresStore({ pool: new pg.Pool({ connectionString: POSTGRES_URL }), table }),
    destroy: async (store) => {
      const pool = (store as unknown as { pool: pg.Pool }).pool;
      await store.close?.();
      await dropTables(pool, table);
      await pool.end();
    },
    // Reads filter on expires_at exactly; no waiting for the sweep.
    expiryGraceMs: 100,
  });

  describe('PostgresStore', () => {
    const prefix = `${table}_own`;
    let pool: pg.Pool;
    let store: PostgresStore;
    before(() => {
      pool = new pg.Pool({ connectionString: POSTGRES_URL });
      store = new PostgresStore({ pool, table: prefix, sweepInterval: 0 });
    });
    after(async () => {
      await store.close();
      await dropTables(pool, prefix);
      await pool.end();
    });

    it('migrates any number of times, also from several stores at once', async () => {
      await store.migrate();
      await store.migrate();
      const others = Array.from({ length: 4 }, () => new PostgresStore({ pool, table: `${prefix}_m`, sweepInterval: 0 }));
      await Promise.all(others.map((other) => other.migrate()));
      const { rows } = await pool.query<{ name: string }>(`SELECT tablename AS name FROM pg_tables WHERE tablename LIKE $1 ORDER BY 1`, [`${prefix}_m_%`]);
      assert.deepEqual(
        rows.map((row) => row.name),
        ['chunks', 'jobs', 'keys', 'logs'].map((name) => `${prefix}_m_${name}`),
      );
      await dropTables(pool, `${prefix}_m`);
    });

    it('sweeps expired jobs with their logs and chunks, and expired keys, on its timer', async () => {
      const sweeper = new PostgresStore({ pool, table: prefix, sweepInterval: 100 });
      try {
        const expiring = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: null, status: 'running' });
        const kept = newJob({ id: randomUUID(), method: 'GET', url: '/y', owner: null, status: 'running' });
        for (const j of [expiring, kept]) {
          await sweeper.createJob(j);
          await sweeper.appendLog(j.id, { at: new Date().toISOString(), level: 'info', message: 'x' });
          await sweeper.appendResult(j.id, Buffer.from('body'));
        }
        await sweeper.finishJob(expiring.id, { status: 'completed', finishedAt: new Date().toISOString(), expiresAt: inMs(50), response: null, error: null });
        await sweeper.finishJob(kept.id, { status: 'completed', finishedAt: new Date().toISOString(), expiresAt: inMs(60_000), response: null, error: null });
        const key = `key-${randomUUID()}`;
        await sweeper.claimIdempotencyKey(key, {
          fingerprint: 'fp',
          jobId: expiring.id,
          state: 'running',
          leaseUntil: Date.now() + 50,
          expiresAt: Date.now() + 50,
        });
        await sleep(500);
        const count = async (name: string, column: string, value: string): Promise<number> =>
          (await pool.query(`SELECT count(*)::int AS n FROM "${prefix}_${name}" WHERE ${column} = $1`, [value])).rows[0].n as number;
        assert.deepEqual(
          [
            await count('jobs', 'id', expiring.id),
            await count('logs', 'job_id', expiring.id),
            await count('chunks', 'job_id', expiring.id),
            await count('keys', 'key', key),
          ],
          [0, 0, 0, 0],
        );
        assert.deepEqual([await count('jobs', 'id', kept.id), await count('logs', 'job_id', kept.id), await count('chunks', 'job_id', kept.id)], [1, 1, 1]);
      } finally {
        await sweeper.close();
      }
    });

    it('streams a 50 MB result back page by page, without holding it in memory', async () => {
      const j = newJob({ id: randomUUID(), method: 'GET', url: '/big', owner: null, status: 'running' });
      await store.createJob(j);
      const written = createHash('sha256');
      for (let i = 0; i < 800; i++) {
        const chunk = randomBytes(64 * 1024);
        written.update(chunk);
        await store.appendResult(j.id, chunk);
      }
      await store.finishJob(j.id, { status: 'completed', finishedAt: new Date().toISOString(), expiresAt: inMs(60_000), response: null, error: null });
      // A collected heap is the only honest measure of what the reader retains.
      setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc') as () => void;
      // Backing stores of freed buffers are released by a background sweeper, hence a turn and a second gc.
      const used = async (): Promise<number> => {
        gc();
        await new Promise((resolve) => setTimeout(resolve, 10));
        gc();
        const memory = process.memoryUsage();
        return memory.heapUsed + memory.arrayBuffers;
      };
      const baseline = await used();
      let peak = 0;
      let size = 0;
      let chunks = 0;
      const read = createHash('sha256');
      for await (const chunk of (await store.readResult(j.id))!) {
        read.update(chunk);
        size += chunk.byteLength;
        if (++chunks % 50 === 0) peak = Math.max(peak, (await used()) - baseline);
      }
      assert.equal(size, 50 * 2 ** 20);
      assert.equal(read.digest('hex'), written.digest('hex'));
      assert.ok(peak < 8 * 2 ** 20, `the heap grew by ${(peak / 2 ** 20).toFixed(1)} MiB while reading`);
    });

    it('adds the request column to a table created without it; the jobs it holds keep working', async () => {
      const older = `${prefix}_r`;
      const before = new PostgresStore({ pool, table: older, sweepInterval: 0 });
      const old = newJob({ id: randomUUID(), method: 'GET', url: '/old', owner: null, status: 'queued' });
      await before.createJob(old);
      // The table as a version without queue mode left it.
      await pool.query(`ALTER TABLE "${older}_jobs" DROP COLUMN request`);
      const after = new PostgresStore({ pool, table: older, sweepInterval: 0 });
      const request = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      const j = newJob({ id: randomUUID(), method: 'POST', url: '/new', owner: null, status: 'queued' });
      await after.createJob(j, request);
      assert.deepEqual(await after.readRequest(j.id), request);
      assert.equal(await after.readRequest(old.id), null);
      assert.deepEqual(await after.getJob(old.id), old);
      await after.migrate();
      const { rows } = await pool.query(
        `SELECT count(*)::int AS n FROM pg_attribute WHERE attrelid = '"${older}_jobs"'::regclass AND attname = 'request' AND NOT attisdropped`,
      );
      assert.equal(rows[0].n, 1);
      await Promise.all([before.close(), after.close()]);
      await dropTables(pool, older);
    });

    it('adds the attempt column to a table created without it; the jobs it holds read attempt 1', async () => {
      const older = `${prefix}_a`;
      const before = new PostgresStore({ pool, table: older, sweepInterval: 0 });
      const old = newJob({ id: randomUUID(), method: 'GET', url: '/old', owner: null, status: 'running', leaseUntil: inMs(60_000) });
      await before.createJob(old);
      // The table as a version without restarts left it.
      await pool.query(`ALTER TABLE "${older}_jobs" DROP COLUMN attempt`);
      const after = new PostgresStore({ pool, table: older, sweepInterval: 0 });
      assert.deepEqual(await after.getJob(old.id), old);
      const j = newJob({ id: randomUUID(), method: 'GET', url: '/new', owner: null, status: 'running', attempt: 2 });
      await after.createJob(j);
      assert.equal((await after.getJob(j.id))?.attempt, 2);
      await after.migrate();
      const { rows } = await pool.query(
        `SELECT count(*)::int AS n FROM pg_attribute WHERE attrelid = '"${older}_jobs"'::regclass AND attname = 'attempt' AND NOT attisdropped`,
      );
      assert.equal(rows[0].n, 1);
      await Promise.all([before.close(), after.close()]);
      await dropTables(pool, older);
    });

    it('migrates a table that has the request and attempt columns without waiting for open transactions on it', async () => {
      await store.migrate();
      // ALTER TABLE … ADD COLUMN IF NOT EXISTS would take an ACCESS EXCLUSIVE lock and wait for this reader.
      const reader = await pool.connect();
      const impatient = new pg.Pool({ connectionString: POSTGRES_URL, options: '-c lock_timeout=1000' });
      try {
        await reader.query('BEGIN');
        await reader.query(`SELECT 1 FROM "${prefix}_jobs" LIMIT 1`);
        await new PostgresStore({ pool: impatient, table: prefix, sweepInterval: 0 }).migrate();
      } finally {
        await reader.query('ROLLBACK');
        reader.release();
        await impatient.end();
      }
    });

    it('migrates without waiting for an open write transaction on the jobs table', {
      todo: 'CREATE INDEX IF NOT EXISTS takes its SHARE lock before it finds the index: a first migrate() waits for open writes (and holds up writes behind it)',
    }, async () => {
      await store.migrate();
      const writer = await pool.connect();
      const impatient = new pg.Pool({ connectionString: POSTGRES_URL, options: '-c lock_timeout=1000' });
      try {
        await writer.query('BEGIN');
        await writer.query(`UPDATE "${prefix}_jobs" SET progress = progress WHERE id = $1`, [randomUUID()]);
        await new PostgresStore({ pool: impatient, table: prefix, sweepInterval: 0 }).migrate();
      } finally {
        await writer.query('ROLLBACK');
        writer.release();
        await impatient.end();
      }
    });

    it('writes the request in the one INSERT, clears it in the finish statement, and never reads it with a job', async () => {
      let queries = 0;
      const counting = {
        query: (...args: Parameters<pg.Pool['query']>) => {
          // The change notification goes after the write, on its own (coalesced): not a statement of the write.
          if (args[0] !== statements(prefix).notifyChanges) queries++;
          return pool.query(...args);
        },
      } as unknown as pg.Pool;
      const counted = new PostgresStore({ pool: counting, table: prefix, sweepInterval: 0 });
      await counted.migrate();
      const stored = async (id: string): Promise<boolean> =>
        (await pool.query(`SELECT request IS NOT NULL AS stored FROM "${prefix}_jobs" WHERE id = $1`, [id])).rows[0].stored as boolean;
      const plain = newJob({ id: randomUUID(), method: 'GET', url: '/plain', owner: null, status: 'queued' });
      const j = newJob({ id: randomUUID(), method: 'POST', url: '/queued', owner: null, status: 'queued' });
      queries = 0;
      await counted.createJob(plain);
      await counted.createJob(j, randomBytes(1000));
      assert.equal(queries, 2, 'one statement per create, with a request or without');
      assert.deepEqual([await stored(plain.id), await stored(j.id)], [false, true]);
      queries = 0;
      await counted.finishJob(j.id, { status: 'cancelled', finishedAt: new Date().toISOString(), expiresAt: inMs(60_000), response: null, error: null });
      assert.equal(queries, 1);
      assert.equal(await stored(j.id), false, 'the bytes go with the finish');
      const sql = statements('t');
      for (const name of ['getJob', 'listAll', 'listAnonymous', 'listOwner'] as const) assert.doesNotMatch(sql[name], /request/, `${name} does not read it`);
      await counted.close();
    });

    it('restarts a job clean of a chunk whose append held the row while the restart waited for it', async () => {
      const j = newJob({ id: randomUUID(), method: 'GET', url: '/late', owner: null, status: 'running', leaseUntil: inMs(-1000) });
      await store.createJob(j);
      await store.appendResult(j.id, Buffer.from('attempt 1, '));
      // The dead worker's last append, still in flight: it holds the job's row until it commits.
      const late = await pool.connect();
      try {
        await late.query('BEGIN');
        await late.query(statements(prefix).appendResult, [j.id, Buffer.from('late chunk')]);
        const now = new Date().toISOString();
        const restarting = store.restartJob(j.id, { startedAt: now, leaseUntil: inMs(30_000), ifLeaseExpiredBy: now });
        await sleep(300);
        await late.query('COMMIT');
        assert.equal((await restarting)?.attempt, 2);
      } finally {
        late.release();
      }
      const { rows } = await pool.query(`SELECT count(*)::int AS n FROM "${prefix}_chunks" WHERE job_id = $1`, [j.id]);
      assert.equal(rows[0].n, 0, 'no chunk of attempt 1 is left');
      await store.appendResult(j.id, Buffer.from('attempt 2'));
      await store.appendResult(j.id, Buffer.from(', whole'));
      await store.finishJob(j.id, { status: 'completed', finishedAt: new Date().toISOString(), expiresAt: inMs(60_000), response: null, error: null });
      const body: Buffer[] = [];
      for await (const chunk of (await store.readResult(j.id))!) body.push(Buffer.from(chunk));
      assert.equal(Buffer.concat(body).toString(), 'attempt 2, whole');
    });

    // The fenced append reads the row once it holds its lock, not as of its snapshot: one that waited
    // for a restart (or a finish) to commit must see what committed, and say which it was.
    it('fences an append that waited for a restart to commit as stale, and one that waited for a finish as not running', async () => {
      const sql = statements(prefix);
      const now = new Date().toISOString();
      for (const ending of ['restart', 'finish'] as const) {
        const j = newJob({ id: randomUUID(), method: 'GET', url: '/late', owner: null, status: 'running', leaseUntil: inMs(-1000) });
        await store.createJob(j);
        const holder = await pool.connect();
        let appending: Promise<unknown>;
        try {
          await holder.query('BEGIN');
          if (ending === 'restart') {
            await holder.query(sql.restartJob, [j.id, now, inMs(30_000), now]);
            await holder.query(sql.clearChunks, [j.id]);
          } else {
            await holder.query(sql.finishJob, [j.id, 'completed', now, inMs(60_000), null, null, null, null]);
          }
          // The late worker's append, with the attempt it is on: it waits for the holder's row lock.
          appending = store.appendResult(j.id, Buffer.from('late chunk of attempt 1'), 1).then(
            () => 'stored',
            (error: unknown) => error,
          );
          await sleep(300);
          await holder.query('COMMIT');
        } finally {
          holder.release();
        }
        const outcome = await appending;
        if (ending === 'restart') assert.ok(outcome instanceof StaleAttemptError, `stale after a restart, got ${String(outcome)}`);
        else assert.ok(outcome instanceof Error && !(outcome instanceof StaleAttemptError), `not running after a finish, got ${String(outcome)}`);
        const { rows } = await pool.query(`SELECT count(*)::int AS n FROM "${prefix}_chunks" WHERE job_id = $1`, [j.id]);
        assert.equal(rows[0].n, 0, `no chunk of attempt 1 after the ${ending}`);
      }
    });

    it('restarts in one transaction: the UPDATE, then the DELETE of the chunks only when it applied', async () => {
      const sent: string[] = [];
      const recording = {
        // A view of the pooled client that records what it sends: the client itself is left as it is.
        connect: async () => {
          const client = await pool.connect();
          return new Proxy(client, {
            get: (target, name) =>
              name === 'query'
                ? (text: string, values?: unknown[]) => {
                    sent.push(text.trimStart().split(/\s+/)[0]!);
                    return target.query(text, values);
                  }
                : Reflect.get(target, name, target),
          });
        },
        query: pool.query.bind(pool),
      } as unknown as pg.Pool;
      const recorded = new PostgresStore({ pool: recording, table: prefix, sweepInterval: 0 });
      const j = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: null, status: 'running', leaseUntil: inMs(-1000) });
      await recorded.createJob(j);
      const now = new Date().toISOString();
      assert.equal((await recorded.restartJob(j.id, { startedAt: now, leaseUntil: inMs(30_000), ifLeaseExpiredBy: now }))?.attempt, 2);
      assert.deepEqual(sent.splice(0), ['BEGIN', 'UPDATE', 'DELETE', 'COMMIT']);
      assert.equal(await recorded.restartJob(j.id, { startedAt: now, leaseUntil: inMs(30_000), ifLeaseExpiredBy: now }), null, 'the lease is alive now');
      assert.deepEqual(sent.splice(0), ['BEGIN', 'UPDATE', 'COMMIT']);
      await recorded.close();
    });

    it('rolls back a restart that fails and gives its connection back, on a pool of one', async () => {
      const one = new pg.Pool({ connectionString: POSTGRES_URL, max: 1 });
      const lone = new PostgresStore({ pool: one, table: prefix, sweepInterval: 0 });
      try {
        const j = newJob({ id: randomUUID(), method: 'GET', url: '/x', owner: null, status: 'running', leaseUntil: inMs(-1000) });
        await lone.createJob(j);
        const now = new Date().toISOString();
        await assert.rejects(lone.restartJob(j.id, { startedAt: 'not a date', leaseUntil: inMs(30_000), ifLeaseExpiredBy: now }));
        assert.deepEqual(await lone.getJob(j.id), j, 'nothing changed, and the one connection serves again');
        assert.equal((await lone.restartJob(j.id, { startedAt: now, leaseUntil: inMs(30_000), ifLeaseExpiredBy: now }))?.attempt, 2);
      } finally {
        await lone.close();
        await one.end();
      }
    });

    it('refuses a table name that is not a plain identifier, and a missing pool', () => {
      for (const bad of ['', '1bgrs', 'bgrs-jobs', 'bgrs; DROP TABLE x', 'public.bgrs', '"bgrs"', 'a'.repeat(41)]) {
        assert.throws(() => new PostgresStore({ pool, table: bad }), TypeError, bad);
      }
      assert.throws(() => new PostgresStore({ pool, sweepInterval: -1 }), TypeError);
      assert.throws(() => new PostgresStore({} as never), TypeError);
      new PostgresStore({ pool, table: `B_${'a'.repeat(38)}`, sweepInterval: 0 });
    });

    it('lets the id of an expired job that is not swept yet be used again, without its old log or result', async () => {
      const old = newJob({ id: randomUUID(), method: 'GET', url: '/old', owner: 'ann', status: 'running' });
      await store.createJob(old);
      await store.appendLog(old.id, { at: new Date().toISOString(), level: 'warning', message: 'old' });
      await store.appendResult(old.id, Buffer.from('old'));
      await store.finishJob(old.id, { status: 'completed', finishedAt: new Date().toISOString(), expiresAt: inMs(50), response: null, error: null });
      await assert.rejects(store.createJob({ ...old, url: '/new' }), 'a live job keeps its id');
      await sleep(100);
      const fresh = newJob({ id: old.id, method: 'GET', url: '/new', owner: 'bob', status: 'running' });
      await store.createJob(fresh);
      assert.deepEqual(await store.getJob(old.id), fresh);
      assert.deepEqual(await store.readLogs(old.id, 0, 10), []);
      await store.finishJob(old.id, { status: 'completed', finishedAt: new Date().toISOString(), expiresAt: inMs(60_000), response: null, error: null });
      let size = 0;
      for await (const chunk of (await store.readResult(old.id))!) size += chunk.byteLength;
      assert.equal(size, 0);
    });

    it('reports a result deleted while it is read as an error, not a short body', async () => {
      const j = newJob({ id: randomUUID(), method: 'GET', url: '/gone', owner: null, status: 'running' });
      await store.createJob(j);
      for (let i = 0; i < 40; i++) await store.appendResult(j.id, Buffer.alloc(10, i));
      await store.finishJob(j.id, { status: 'completed', finishedAt: new Date().toISOString(), expiresAt: inMs(60_000), response: null, error: null });
      const body = (await store.readResult(j.id))!;
      await assert.rejects(async () => {
        for await (const _chunk of body) await store.deleteJob(j.id);
      }, /is gone/);
    });
  });
}
