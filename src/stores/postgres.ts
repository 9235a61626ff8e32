// PostgresStore: jobs, logs, results and idempotency keys in PostgreSQL, shared by every process that uses the database.
import { debuglog } from 'node:util';
import type { Pool } from 'pg';
import type { Job, JobFinish, JobFinished, JobPage, JobProgressUpdate, JobQuery, JobStatus, LogLevel, LogLine } from '../model/job.js';
import { isFinal } from '../model/job.js';
import { checkKnown } from '../util/known-options.js';
import { FeedHolder } from './change-feed.js';
import { ChangeNotifier, PostgresChangeFeed } from './postgres-changes.js';
import type { Statements } from './postgres-sql.js';
import { RESULT_PAGE_ROWS, SWEEP_BATCH, statements, TABLE_PATTERN } from './postgres-sql.js';
import type { ChangeListener, IdempotencyClaimResult, IdempotencyRecord, Store, TakenJob } from './store.js';
import { InvalidCursorError, StaleAttemptError } from './store.js';

const debug = debuglog('bgrs');

export interface PostgresStoreOptions {
  /**
   * The `pg` Pool to query through. You own it: the store never ends it, and `close()` leaves it
   * open. Required.
   */
  pool: Pool;
  /**
   * Prefix of the store's tables (`<table>_jobs`, `<table>_logs`, `<table>_chunks`, `<table>_keys`):
   * a plain identifier of letters, digits and underscores, at most 40 characters. Two apps sharing
   * a database keep apart by using different prefixes. Defaults to `'bgrs'`.
   */
  table?: string;
  /**
   * How often (ms) this process deletes expired jobs, their logs and results, and expired
   * idempotency keys. Expired rows are invisible from the moment they expire either way; the sweep
   * only reclaims space. `0` turns it off (call `sweep()` yourself, e.g. from a cron job). Defaults to `60000`.
   */
  sweepInterval?: number;
}

/** A jobs row as the statements in postgres-sql.ts select it. */
interface JobRow {
  id: string;
  name: string;
  method: string;
  url: string;
  owner: string | null;
  status: JobStatus;
  attempt: number | string;
  progress: number | string;
  message: string | null;
  result_count: number | string;
  warnings: number | string;
  errors: number | string;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  expires_at: string | null;
  lease_until: string | null;
  response: string | null;
  error: string | null;
}

interface KeyRow {
  fingerprint: string;
  job_id: string;
  state: 'running' | 'done';
  lease_until: number | string;
  expires_at: number | string;
}

// Numbers go through Number() and JSON through JSON.parse from text, so the store reads the same
// whatever type parsers the owner of the pool has installed (bigint as string, json left raw, …).
function rowToJob(row: JobRow): Job {
  return {
    id: row.id,
    name: row.name,
    method: row.method,
    url: row.url,
    owner: row.owner,
    status: row.status,
    attempt: Number(row.attempt),
    progress: Number(row.progress),
    message: row.message,
    resultCount: Number(row.result_count),
    warnings: Number(row.warnings),
    errors: Number(row.errors),
    createdAt: row.created_at,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    expiresAt: row.expires_at,
    leaseUntil: row.lease_until,
    response: row.response === null ? null : (JSON.parse(row.response) as Job['response']),
    error: row.error === null ? null : (JSON.parse(row.error) as Job['error']),
  };
}

/** The insertJob parameters, in order: the job's fields, then its request or null. */
function jobValues(job: Job, request: Buffer | null): unknown[] {
  return [
    job.id,
    job.owner,
    job.status,
    job.name,
    job.method,
    job.url,
    job.progress,
    job.message,
    job.resultCount,
    job.warnings,
    job.errors,
    job.createdAt,
    job.startedAt,
    job.finishedAt,
    job.expiresAt,
    job.leaseUntil,
    // Stringified here: pg would turn a top-level array into a Postgres array, not JSON.
    job.response === null ? null : JSON.stringify(job.response),
    job.error === null ? null : JSON.stringify(job.error),
    // A job built by code that predates attempts has none: it is on its first.
    job.attempt ?? 1,
    // pg sends a Buffer as binary (bytea), whatever its bytes.
    request,
  ];
}

/** Exactly what `toISOString()` prints: the only createdAt a cursor handed out by this store can hold. */
const ISO_INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

function encodeCursor(job: Job): string {
  return Buffer.from(JSON.stringify([job.createdAt, job.id])).toString('base64url');
}

/** The position a cursor names, or null when it is not one of ours (so no malformed value reaches SQL). */
function decodeCursor(cursor: string): { createdAt: string; id: string } | null {
  try {
    const [createdAt, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString()) as [unknown, unknown];
    if (typeof createdAt !== 'string' || typeof id !== 'string' || !ISO_INSTANT.test(createdAt)) return null;
    return new Date(createdAt).toISOString() === createdAt ? { createdAt, id } : null;
  } catch {
    return null;
  }
}

/** pg reports a unique violation with this SQLSTATE. */
const UNIQUE_VIOLATION = '23505';

/**
 * A Store in PostgreSQL, for several processes (or restarts) sharing jobs durably. Creates its
 * tables on first use, or when you call `migrate()` (e.g. at deploy time). Every transition is one
 * conditional statement (a restart deletes its chunks after it, in the same transaction), so
 * processes racing on a job can never undo a final status; log lines and result chunks are
 * numbered under the job's row lock; an Idempotency-Key claim is one `INSERT … ON CONFLICT`.
 * Expiry is judged by the database's clock, one clock for all processes.
 */
export class PostgresStore implements Store {
  /** appendResult honours its offset: a retried append stores nothing twice. */
  readonly resumableResults = true;
  private readonly pool: Pool;
  private readonly sql: Statements;
  private schema: Promise<void> | undefined;
  private readonly timer: NodeJS.Timeout | undefined;
  private sweeping: Promise<number> | undefined;
  private readonly table: string;
  /** The LISTEN connection of watchChanges, opened by its first call. */
  /** The LISTEN feed of watchChanges, open while anyone watches. */
  private readonly feed = new FeedHolder(
    () => new PostgresChangeFeed(this.pool, `${this.table}_changes`, this.sql.listen, (err) => debug('postgres change feed: %s', err.message)),
  );
  /** Announces the changes of this store's writes to every process's feed. */
  private readonly changes: ChangeNotifier;
  private closed = false;

  constructor(options: PostgresStoreOptions) {
    checkKnown('PostgresStore', options, ['pool', 'table', 'sweepInterval']);
    const { pool, table = 'bgrs', sweepInterval = 60_000 } = options ?? ({} as PostgresStoreOptions);
    if (!pool || typeof (pool as { query?: unknown }).query !== 'function') {
      throw new TypeError('PostgresStore: `pool` must be a pg Pool, e.g. `new PostgresStore({ pool: new Pool({ connectionString }) })`.');
    }
    if (typeof table !== 'string' || !TABLE_PATTERN.test(table)) {
      throw new TypeError(
        `PostgresStore: \`table\` must be a plain SQL identifier (a letter or _, then letters, digits or _; at most 40 characters), received \`${String(table)}\`.`,
      );
    }
    if (typeof sweepInterval !== 'number' || !Number.isFinite(sweepInterval) || sweepInterval < 0) {
      throw new TypeError(`PostgresStore: \`sweepInterval\` must be a number of milliseconds (0 turns the sweep off), received \`${String(sweepInterval)}\`.`);
    }
    this.pool = pool;
    this.table = table;
    this.sql = statements(table);
    this.changes = new ChangeNotifier(
      (payload) => this.pool.query(this.sql.notifyChanges, [`${table}_changes`, payload]),
      (err) => debug('postgres change notify failed: %s', err.message),
    );
    if (sweepInterval > 0) {
      this.timer = setInterval(() => {
        this.sweep().catch((err: unknown) => debug('postgres sweep failed: %o', err));
      }, sweepInterval);
      // The sweep only reclaims space; it must not keep the process alive.
      this.timer.unref();
    }
  }

  /** Creates the tables and indexes if they do not exist. Safe to call any number of times, from any number of processes. */
  async migrate(): Promise<void> {
    await this.pool.query(this.sql.migrate);
    this.schema ??= Promise.resolve();
  }

  /** The first call migrates; every later one shares that promise. A failed migration is retried by the next call. */
  private ready(): Promise<void> {
    this.schema ??= this.migrate().catch((err: unknown) => {
      this.schema = undefined;
      throw err;
    });
    return this.schema;
  }

  private async query<Row extends object>(text: string, values: unknown[]): Promise<{ rows: Row[]; rowCount: number }> {
    await this.ready();
    const result = await this.pool.query(text, values);
    return { rows: result.rows as Row[], rowCount: result.rowCount ?? 0 };
  }

  async createJob(job: Job, request?: Buffer): Promise<void> {
    // A job created final has ended: no worker will replay it, so its request is not kept. Copied
    // now: pg reads the buffer only when it sends the query, and the caller may reuse it meanwhile.
    const values = jobValues(job, request === undefined || isFinal(job.status) ? null : Buffer.from(request));
    try {
      await this.query(this.sql.insertJob, values);
    } catch (err) {
      // An expired job that the sweep has not reached yet does not count as existing.
      if ((err as { code?: string }).code !== UNIQUE_VIOLATION) throw err;
      if ((await this.query(this.sql.deleteExpiredJob, [job.id])).rowCount === 0) throw err;
      await this.query(this.sql.insertJob, values);
    }
  }

  async getJob(id: string): Promise<Job | null> {
    const { rows } = await this.query<JobRow>(this.sql.getJob, [id]);
    return rows[0] ? rowToJob(rows[0]) : null;
  }

  /** The request of a job that is not final: its own statement, since getJob never reads the column. */
  async readRequest(id: string): Promise<Buffer | null> {
    const { rows } = await this.query<{ request: Buffer | null }>(this.sql.readRequest, [id]);
    return rows[0]?.request ?? null;
  }

  async updateProgress(id: string, update: JobProgressUpdate): Promise<boolean> {
    const { progress, message, resultCount, owner } = update;
    const values = [
      id,
      progress !== undefined,
      progress ?? null,
      message !== undefined,
      message ?? null,
      resultCount !== undefined,
      resultCount ?? null,
      owner ?? null,
      update.ifAttempt ?? null,
    ];
    const applied = (await this.query(this.sql.updateProgress, values)).rowCount > 0;
    if (applied) this.changes.changed(id);
    return applied;
  }

  async startJob(id: string, start: { startedAt: string; leaseUntil: string }): Promise<boolean> {
    const started = (await this.query(this.sql.startJob, [id, start.startedAt, start.leaseUntil])).rowCount > 0;
    if (started) this.changes.changed(id);
    return started;
  }

  async takeJob(id: string, start: { startedAt: string; leaseUntil: string }): Promise<TakenJob | null> {
    const { rows } = await this.query<JobRow & { started: boolean; request: Buffer | null }>(this.sql.takeJob, [id, start.startedAt, start.leaseUntil]);
    const row = rows[0];
    if (!row) return null;
    if (row.started) this.changes.changed(id);
    return { job: rowToJob(row), request: row.request ?? null, started: row.started };
  }

  async renewLeases(ids: string[], leaseUntil: string): Promise<string[]> {
    if (ids.length === 0) return [];
    const { rows } = await this.query<{ id: string }>(this.sql.renewLeases, [ids, leaseUntil]);
    const held = new Set(rows.map((row) => row.id));
    return ids.filter((id) => !held.has(id));
  }

  async listJobs(query: JobQuery): Promise<JobPage> {
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    if (query.cursor && !after) throw new InvalidCursorError();
    // One row more than the page tells whether there is a next page.
    const values: unknown[] = [query.statuses?.length ? query.statuses : null, after?.createdAt ?? null, after?.id ?? null, query.limit + 1];
    let text: string = this.sql.listAll;
    if (query.owner === null) text = this.sql.listAnonymous;
    else if (query.owner !== undefined) {
      text = this.sql.listOwner;
      values.push(query.owner);
    }
    const { rows } = await this.query<JobRow>(text, values);
    const jobs = rows.slice(0, query.limit).map(rowToJob);
    const last = jobs.at(-1);
    return { jobs, next: rows.length > query.limit && last ? encodeCursor(last) : null };
  }

  async finishJob(id: string, finish: JobFinish): Promise<JobFinished | null> {
    const values = [
      id,
      finish.status,
      finish.finishedAt,
      finish.expiresAt,
      finish.response === null ? null : JSON.stringify(finish.response),
      finish.error === null ? null : JSON.stringify(finish.error),
      finish.ifLeaseExpiredBy ?? null,
      finish.ifAttempt ?? null,
    ];
    const { rows } = await this.query<JobRow & { applied: boolean }>(this.sql.finishJob, values);
    if (!rows[0]) return null;
    const job = rowToJob(rows[0]);
    if (rows[0].applied) this.changes.changed(id);
    // Not applied and not final: a concurrent finish committed while this statement waited for the
    // row, and the statement's snapshot still shows the row before it. Read the end it recorded.
    if (!rows[0].applied && !isFinal(job.status)) {
      const now = await this.getJob(id);
      return now ? { applied: false, job: now } : null;
    }
    return { applied: rows[0].applied, job };
  }

  /**
   * Two statements in one transaction, not one statement: a statement reads the chunks as of its
   * start, so a DELETE beside the UPDATE would miss a chunk whose append held the job's row while
   * the UPDATE waited for it (left behind at a seq the new attempt then collides with). Under READ
   * COMMITTED, named here whatever the pool's default, the DELETE takes its own snapshot after the
   * UPDATE holds the row, and appends that come later wait for the COMMIT.
   */
  async restartJob(id: string, restart: { startedAt: string; leaseUntil: string; ifLeaseExpiredBy: string }): Promise<Job | null> {
    await this.ready();
    const client = await this.pool.connect();
    let reusable = true;
    try {
      await client.query('BEGIN ISOLATION LEVEL READ COMMITTED');
      const { rows } = await client.query<JobRow>(this.sql.restartJob, [id, restart.startedAt, restart.leaseUntil, restart.ifLeaseExpiredBy]);
      if (rows[0]) await client.query(this.sql.clearChunks, [id]);
      await client.query('COMMIT');
      if (!rows[0]) return null;
      this.changes.changed(id);
      return rowToJob(rows[0]);
    } catch (err) {
      // A connection whose transaction could not be rolled back must not serve the pool's next query.
      reusable = await client.query('ROLLBACK').then(
        () => true,
        () => false,
      );
      throw err;
    } finally {
      client.release(!reusable);
    }
  }

  async appendLog(id: string, line: { at: string; level: LogLevel; message: string }): Promise<number | null> {
    const { rows } = await this.query<{ seq: number }>(this.sql.appendLog, [id, line.at, line.level, line.message]);
    if (!rows[0]) return null;
    this.changes.changed(id);
    return Number(rows[0].seq);
  }

  async readLogs(id: string, after: number, limit: number): Promise<LogLine[]> {
    if (limit <= 0) return [];
    const { rows } = await this.query<{ seq: number; at: string; level: LogLevel; message: string }>(this.sql.readLogs, [id, after, limit]);
    return rows.map((row) => ({ seq: Number(row.seq), at: row.at, level: row.level, message: row.message }));
  }

  async appendResult(id: string, chunk: Uint8Array, attempt?: number, offset?: number): Promise<void> {
    // pg sends a Buffer as binary; a view over the caller's memory is fine, it is copied onto the wire now.
    const data = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (attempt === undefined && offset === undefined) {
      const { rowCount } = await this.query(this.sql.appendResult, [id, data]);
      if (rowCount === 0) throw new Error(`PostgresStore: job ${id} is not running`);
      return;
    }
    const fenced = [id, data, attempt ?? null, offset ?? null];
    if ((await this.query(this.sql.appendResultIf, fenced)).rowCount === 1) return;
    // Refused, or a retry: one statement tells a stale attempt, a final job, a gap and bytes already held apart.
    const { rows } = await this.query<{ live: boolean; attempt: number; held: string; stored: boolean }>(this.sql.appendResultChecked, [
      id,
      data,
      attempt ?? null,
      offset ?? null,
    ]);
    const row = rows[0];
    if (!row?.live) throw new Error(`PostgresStore: job ${id} is not running`);
    if (row.stored) return;
    if (attempt !== undefined && row.attempt !== attempt) throw new StaleAttemptError(id, attempt);
    if (offset !== undefined && Number(row.held) < offset)
      throw new Error(`PostgresStore: job ${id} holds ${row.held} result bytes, fewer than offset ${offset}`);
    // Every byte of the chunk was held already: a retry of a call that had landed.
  }

  async readResult(id: string): Promise<AsyncIterable<Uint8Array> | null> {
    const { rows } = await this.query<{ chunk_seq: number | string }>(this.sql.countChunks, [id]);
    if (!rows[0]) return null;
    const total = Number(rows[0].chunk_seq);
    const { pool, sql } = this;
    // A page at a time, each its own short query: nothing holds a connection between pages, and at
    // most one page of the body is in memory however large the result is.
    return (async function* chunksOf() {
      let after = 0;
      while (after < total) {
        const page = await pool.query(sql.readChunks, [id, after, RESULT_PAGE_ROWS]);
        // Deleted or swept while being read: fail rather than end as if the body were complete.
        if (page.rows.length === 0) throw new Error(`PostgresStore: the result of job ${id} is gone`);
        for (const row of page.rows as Array<{ seq: number; data: Buffer }>) {
          after = Number(row.seq);
          yield row.data;
        }
      }
    })();
  }

  async deleteJob(id: string): Promise<boolean> {
    const { rows } = await this.query<{ live: boolean }>(this.sql.deleteJob, [id]);
    if (rows[0]) this.changes.changed(id);
    return rows[0]?.live === true;
  }

  async claimIdempotencyKey(key: string, record: IdempotencyRecord): Promise<IdempotencyClaimResult> {
    const values = [key, record.fingerprint, record.jobId, Math.round(record.leaseUntil), Math.round(record.expiresAt)];
    // The record that beat this claim can be released or expire before it is read; then claim again.
    for (let attempt = 0; attempt < 5; attempt++) {
      if ((await this.query(this.sql.claimKey, values)).rowCount > 0) return { won: true };
      const { rows } = await this.query<KeyRow>(this.sql.readKey, [key]);
      const row = rows[0];
      if (row) {
        return {
          won: false,
          record: { fingerprint: row.fingerprint, jobId: row.job_id, state: row.state, leaseUntil: Number(row.lease_until), expiresAt: Number(row.expires_at) },
        };
      }
    }
    throw new Error(`PostgresStore: the claim on idempotency key ${key} kept changing hands`);
  }

  async renewIdempotencyKey(key: string, jobId: string, leaseUntil: number): Promise<boolean> {
    return (await this.query(this.sql.renewKey, [key, jobId, Math.round(leaseUntil)])).rowCount > 0;
  }

  async completeIdempotencyKey(key: string, jobId: string, expiresAt: number): Promise<boolean> {
    return (await this.query(this.sql.completeKey, [key, jobId, Math.round(expiresAt)])).rowCount > 0;
  }

  async releaseIdempotencyKey(key: string, jobId: string): Promise<boolean> {
    return (await this.query(this.sql.releaseKey, [key, jobId])).rowCount > 0;
  }

  /**
   * Deletes expired jobs (with their logs and results) and expired idempotency keys now, and
   * resolves how many rows went. The timer calls it every `sweepInterval`; overlapping calls share one run.
   */
  sweep(): Promise<number> {
    this.sweeping ??= (async () => {
      let deleted = 0;
      try {
        for (const text of [this.sql.sweepJobs, this.sql.sweepKeys]) {
          let count: number;
          do {
            count = (await this.query(text, [SWEEP_BATCH])).rowCount;
            deleted += count;
          } while (count === SWEEP_BATCH);
        }
        return deleted;
      } finally {
        this.sweeping = undefined;
      }
    })();
    return this.sweeping;
  }

  /**
   * Changes to jobs in these tables, from any process: after each write that changes a job, the
   * store NOTIFYs its id (coalesced, see ChangeNotifier), and one client of the pool per store
   * (taken by the first call, given back with the last unwatch or close()) LISTENs.
   */
  async watchChanges(listener: ChangeListener): Promise<() => Promise<void>> {
    if (this.closed) throw new Error('PostgresStore: closed');
    return this.feed.watch(listener);
  }

  /** Stops the sweep timer and gives back the LISTEN client, if any. The pool stays open: it belongs to the caller. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.feed.close();
  }
}
