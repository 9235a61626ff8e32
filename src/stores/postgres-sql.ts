// The SQL of PostgresStore: its schema and every statement, built once per table prefix from constant text.

/**
 * Table prefixes PostgresStore accepts. Identifiers cannot be bound as parameters, so the prefix is
 * written into the SQL; only plain names qualify, and 40 characters keep every derived name (index
 * and constraint names included) under Postgres's 63-byte limit, which would otherwise truncate
 * them silently.
 */
export const TABLE_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,39}$/;

/** How many chunks `readResult` fetches per round trip: about 1 MiB with the core's 64 KiB chunks. */
export const RESULT_PAGE_ROWS = 16;

/** How many expired jobs (with their logs and chunks) or keys one sweep statement deletes. */
export const SWEEP_BATCH = 100;

/** Statuses a job can still leave: every write but the final one is conditional on them. */
const LIVE = `('queued', 'running')`;

/** The database's clock in epoch ms, for idempotency records (which the contract keeps in epoch ms). */
const NOW_MS = `floor(extract(epoch FROM now()) * 1000)::bigint`;

/** A timestamptz as exactly the string `Date#toISOString()` gives, whatever the session's time zone. */
const iso = (column: string): string => `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/** Whether a job is still visible: rows past `expires_at` are treated as gone until the sweep deletes them. */
const visible = (alias: string): string => `(${alias}.expires_at IS NULL OR ${alias}.expires_at > now())`;

/**
 * Every column of a job as `rowToJob` reads it: dates as ISO strings, JSON as its original text.
 * Never `request`: a body may be megabytes, and only readRequest wants it.
 */
const JOB_COLUMNS = `j.id, j.name, j.method, j.url, j.owner, j.status, j.attempt, j.progress, j.message, j.result_count, j.warnings, j.errors,
  ${iso('j.created_at')} AS created_at, ${iso('j.started_at')} AS started_at, ${iso('j.finished_at')} AS finished_at,
  ${iso('j.expires_at')} AS expires_at, ${iso('j.lease_until')} AS lease_until, j.response::text AS response, j.error::text AS error`;

const quote = (name: string): string => `"${name}"`;

/** The statements of one store, for the tables named from `table` (already checked against TABLE_PATTERN). */
export function statements(table: string) {
  const jobs = quote(`${table}_jobs`);
  const logs = quote(`${table}_logs`);
  const chunks = quote(`${table}_chunks`);
  const keys = quote(`${table}_keys`);
  // One listing statement per owner filter: each stays index-friendly, and the status and cursor
  // conditions fold away when their parameter is null (unnamed statements are planned per call).
  const list = (ownerCondition: string): string => `SELECT ${JOB_COLUMNS} FROM ${jobs} j
    WHERE ${visible('j')} AND ${ownerCondition}
      AND ($1::text[] IS NULL OR j.status = ANY($1::text[]))
      AND ($2::timestamptz IS NULL OR (j.created_at, j.id) < ($2::timestamptz, $3::text))
    ORDER BY j.created_at DESC, j.id DESC LIMIT $4`;

  return {
    // One multi-statement string runs as one transaction; the advisory lock serialises processes that
    // migrate at once, because concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog.
    migrate: `SELECT pg_advisory_xact_lock(hashtext('express-bgrs migrate'));
      CREATE TABLE IF NOT EXISTS ${jobs} (
        id text COLLATE "C" PRIMARY KEY,
        owner text,
        status text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
        name text NOT NULL,
        method text NOT NULL,
        url text NOT NULL,
        progress double precision NOT NULL DEFAULT 0,
        message text,
        result_count bigint NOT NULL DEFAULT 0,
        warnings integer NOT NULL DEFAULT 0,
        errors integer NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL,
        started_at timestamptz,
        finished_at timestamptz,
        expires_at timestamptz,
        lease_until timestamptz,
        response json,
        error json,
        log_seq integer NOT NULL DEFAULT 0,
        chunk_seq integer NOT NULL DEFAULT 0,
        request bytea,
        attempt integer NOT NULL DEFAULT 1,
        result_bytes bigint NOT NULL DEFAULT 0
      );
      -- Tables created before queue mode lack the request column, those created before
      -- restarts the attempt column (their jobs are on their first: DEFAULT 1), and those created
      -- before resumable appends the result_bytes column. ALTER TABLE takes
      -- an ACCESS EXCLUSIVE lock even when IF NOT EXISTS finds the column, which waits for every
      -- open transaction on the table and holds up every query behind it: the catalog is asked
      -- first, so a process starting on an up-to-date table takes no such lock.
      DO $migrate$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '${jobs}'::regclass AND attname = 'request' AND NOT attisdropped) THEN
          ALTER TABLE ${jobs} ADD COLUMN IF NOT EXISTS request bytea;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '${jobs}'::regclass AND attname = 'attempt' AND NOT attisdropped) THEN
          ALTER TABLE ${jobs} ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 1;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '${jobs}'::regclass AND attname = 'result_bytes' AND NOT attisdropped) THEN
          ALTER TABLE ${jobs} ADD COLUMN IF NOT EXISTS result_bytes bigint NOT NULL DEFAULT 0;
        END IF;
      END $migrate$;
      CREATE INDEX IF NOT EXISTS ${quote(`${table}_jobs_list`)} ON ${jobs} (owner, created_at DESC, id DESC);
      CREATE INDEX IF NOT EXISTS ${quote(`${table}_jobs_expiry`)} ON ${jobs} (expires_at) WHERE expires_at IS NOT NULL;
      CREATE TABLE IF NOT EXISTS ${logs} (
        job_id text COLLATE "C" NOT NULL REFERENCES ${jobs} (id) ON DELETE CASCADE,
        seq integer NOT NULL,
        at timestamptz NOT NULL,
        level text NOT NULL,
        message text NOT NULL,
        PRIMARY KEY (job_id, seq)
      );
      CREATE TABLE IF NOT EXISTS ${chunks} (
        job_id text COLLATE "C" NOT NULL REFERENCES ${jobs} (id) ON DELETE CASCADE,
        seq integer NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (job_id, seq)
      );
      CREATE TABLE IF NOT EXISTS ${keys} (
        key text PRIMARY KEY,
        fingerprint text NOT NULL,
        job_id text NOT NULL,
        state text NOT NULL CHECK (state IN ('running', 'done')),
        lease_until bigint NOT NULL,
        expires_at bigint NOT NULL
      );
      CREATE INDEX IF NOT EXISTS ${quote(`${table}_keys_expiry`)} ON ${keys} (expires_at);`,

    /** $1 id … $19 attempt: every field of a Job, in the order of `jobValues`; $20 the request (queue mode) or null. */
    insertJob: `INSERT INTO ${jobs} (id, owner, status, name, method, url, progress, message, result_count, warnings, errors,
        created_at, started_at, finished_at, expires_at, lease_until, response, error, attempt, request)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::json, $18::json, $19, $20::bytea)`,

    /** $1 id. Clears an expired but not yet swept job, so that its id may be used again. */
    deleteExpiredJob: `DELETE FROM ${jobs} WHERE id = $1 AND expires_at <= now()`,

    /** $1 id → the job row, if visible. */
    getJob: `SELECT ${JOB_COLUMNS} FROM ${jobs} j WHERE j.id = $1 AND ${visible('j')}`,

    /** $1 id → the request of a job that is not final (null when it was created without one); no row otherwise. */
    readRequest: `SELECT j.request FROM ${jobs} j WHERE j.id = $1 AND j.status IN ${LIVE} AND ${visible('j')}`,

    /**
     * $1 id, then a (set?, value) pair each for progress, message, result_count, $8 the owner to
     * give, $9 ifAttempt or null (no check); rowCount 1 when applied.
     */
    updateProgress: `UPDATE ${jobs} SET
        progress = CASE WHEN $2::boolean THEN $3::double precision ELSE progress END,
        message = CASE WHEN $4::boolean THEN $5::text ELSE message END,
        result_count = CASE WHEN $6::boolean THEN $7::double precision ELSE result_count END,
        owner = COALESCE(owner, $8::text)
      WHERE id = $1 AND status IN ${LIVE} AND ($9::integer IS NULL OR attempt = $9::integer)`,

    /** $1 id, $2 startedAt, $3 leaseUntil; rowCount 1 when the job was queued. */
    startJob: `UPDATE ${jobs} SET status = 'running', started_at = $2, lease_until = $3 WHERE id = $1 AND status = 'queued'`,

    /**
     * $1 id, $2 startedAt, $3 leaseUntil → a queued job started, as it is after the start, with its
     * request and started true; a running job as it is, started false; no row when it is unknown or
     * final. (The second branch reads the statement's snapshot: a job the first branch started is
     * still queued there, so the two never both answer.)
     */
    takeJob: `WITH s AS (UPDATE ${jobs} j SET status = 'running', started_at = $2, lease_until = $3
        WHERE j.id = $1 AND j.status = 'queued' RETURNING ${JOB_COLUMNS}, j.request)
      SELECT true AS started, s.* FROM s
      UNION ALL
      SELECT false AS started, ${JOB_COLUMNS}, j.request FROM ${jobs} j WHERE j.id = $1 AND j.status = 'running' AND ${visible('j')}`,

    /** $1 ids, $2 leaseUntil → the ids still held (the caller computes the others). */
    renewLeases: `UPDATE ${jobs} SET lease_until = $2 WHERE id = ANY($1::text[]) AND status IN ${LIVE} RETURNING id`,

    /**
     * $1 id, $2 status, $3 finishedAt, $4 expiresAt, $5 response, $6 error, $7 ifLeaseExpiredBy or
     * null, $8 ifAttempt or null → one row: the finished job with applied = true, or the job as it
     * stands with applied = false (final already, a live lease, or another attempt); no row when it is unknown or expired. One statement: the
     * outer read sees the row as it was before the update, which is the row when nothing applied.
     * A null lease never counts as expired, as in MemoryStore. The request goes in the same update:
     * nothing replays a final job.
     */
    finishJob: `WITH upd AS (
        UPDATE ${jobs} j SET status = $2::text, finished_at = $3, expires_at = $4, response = $5::json, error = $6::json,
          lease_until = NULL, progress = CASE WHEN $2::text = 'completed' THEN 100 ELSE j.progress END, request = NULL
        WHERE j.id = $1 AND j.status IN ${LIVE} AND ($7::timestamptz IS NULL OR j.lease_until <= $7::timestamptz)
          AND ($8::integer IS NULL OR j.attempt = $8::integer)
        RETURNING ${JOB_COLUMNS})
      SELECT true AS applied, upd.* FROM upd
      UNION ALL
      SELECT false AS applied, ${JOB_COLUMNS} FROM ${jobs} j WHERE j.id = $1 AND ${visible('j')} AND NOT EXISTS (SELECT 1 FROM upd)`,

    /**
     * $1 id, $2 startedAt, $3 leaseUntil, $4 ifLeaseExpiredBy → the restarted job, or no row when
     * it is not running or its lease has not passed by $4 (a null lease never does). The result
     * starts over (chunk_seq 0, its chunks deleted by clearChunks in the same transaction); the log
     * (log_seq), counters, owner and request stay. The row lock this takes serialises it with
     * every append and with a second restart, which then finds the new lease.
     */
    restartJob: `UPDATE ${jobs} j SET attempt = j.attempt + 1, started_at = $2, lease_until = $3,
        progress = 0, message = NULL, result_count = 0, response = NULL, chunk_seq = 0, result_bytes = 0
      WHERE j.id = $1 AND j.status = 'running' AND j.lease_until <= $4::timestamptz
      RETURNING ${JOB_COLUMNS}`,

    /** $1 id. Every chunk of a job's result: restartJob's second statement. */
    clearChunks: `DELETE FROM ${chunks} WHERE job_id = $1`,

    /**
     * $1 id, $2 at, $3 level, $4 message → the line's seq, or no row. The counter update takes the
     * job's row lock, so concurrent appends get consecutive numbers and the counts move with them.
     */
    appendLog: `WITH s AS (
        UPDATE ${jobs} SET log_seq = log_seq + 1,
          warnings = warnings + CASE WHEN $3::text = 'warning' THEN 1 ELSE 0 END,
          errors = errors + CASE WHEN $3::text = 'error' THEN 1 ELSE 0 END
        WHERE id = $1 AND status IN ${LIVE} RETURNING id, log_seq)
      INSERT INTO ${logs} (job_id, seq, at, level, message) SELECT s.id, s.log_seq, $2, $3, $4 FROM s RETURNING seq`,

    /** $1 id, $2 after, $3 limit → log lines, oldest first; none for an unknown or expired job. */
    readLogs: `SELECT l.seq, ${iso('l.at')} AS at, l.level, l.message FROM ${logs} l
      WHERE l.job_id = $1 AND l.seq > $2 AND EXISTS (SELECT 1 FROM ${jobs} j WHERE j.id = $1 AND ${visible('j')})
      ORDER BY l.seq LIMIT $3`,

    /** $1 id, $2 chunk; rowCount 1 when stored. Numbered like log lines, by a counter on the job's row. */
    appendResult: `WITH s AS (UPDATE ${jobs} SET chunk_seq = chunk_seq + 1, result_bytes = result_bytes + length($2::bytea)
        WHERE id = $1 AND status IN ${LIVE} RETURNING id, chunk_seq)
      INSERT INTO ${chunks} (job_id, seq, data) SELECT s.id, s.chunk_seq, $2::bytea FROM s`,

    /**
     * $1 id, $2 chunk, $3 the attempt the appending run is on or null, $4 the result bytes it had
     * stored before this chunk or null; rowCount 1 when stored whole. The common case, at the cost
     * of the plain append: a row that fails a condition (final, stale, a retry of a call that had
     * landed, a gap) stores nothing, and appendResultChecked tells which.
     */
    appendResultIf: `WITH s AS (UPDATE ${jobs} SET chunk_seq = chunk_seq + 1, result_bytes = result_bytes + length($2::bytea)
        WHERE id = $1 AND status IN ${LIVE} AND ($3::integer IS NULL OR attempt = $3::integer) AND ($4::bigint IS NULL OR result_bytes = $4::bigint)
        RETURNING id, chunk_seq)
      INSERT INTO ${chunks} (job_id, seq, data) SELECT s.id, s.chunk_seq, $2::bytea FROM s`,

    /**
     * $1 id, $2 chunk, $3 the attempt the appending run is on or null, $4 the result bytes it had
     * stored before this chunk or null → one row (none for an unknown job): `live`, the job's
     * `attempt`, the result bytes it `held` before, and whether anything was `stored`. Only the part
     * of the chunk past the bytes held is stored, so a retried call stores nothing twice. FOR UPDATE
     * reads the row as it is once locked (under READ COMMITTED, the version a restart or an earlier
     * append that held it committed, not the statement's snapshot), so a refusal is told apart
     * exactly: stale attempt, final job, a gap, or bytes already held. The lock is the one the
     * UPDATE takes anyway; it holds from the check to the insert.
     */
    appendResultChecked: `WITH cur AS (SELECT id, status IN ${LIVE} AS live, attempt, result_bytes FROM ${jobs} WHERE id = $1 FOR UPDATE),
        ok AS (SELECT cur.id, CASE WHEN $4::bigint IS NULL OR cur.result_bytes <= $4::bigint THEN $2::bytea
              ELSE substring($2::bytea FROM (cur.result_bytes - $4::bigint + 1)::integer) END AS data
            FROM cur WHERE cur.live AND ($3::integer IS NULL OR cur.attempt = $3::integer)
              AND ($4::bigint IS NULL OR (cur.result_bytes >= $4::bigint AND cur.result_bytes < $4::bigint + length($2::bytea)))),
        s AS (UPDATE ${jobs} j SET chunk_seq = j.chunk_seq + 1, result_bytes = j.result_bytes + length(ok.data) FROM ok
          WHERE j.id = ok.id RETURNING j.id, j.chunk_seq),
        ins AS (INSERT INTO ${chunks} (job_id, seq, data) SELECT s.id, s.chunk_seq, ok.data FROM s, ok RETURNING 1)
      SELECT cur.live, cur.attempt, cur.result_bytes::text AS held, EXISTS (SELECT 1 FROM ins) AS stored FROM cur`,

    /** $1 id → how many chunks the visible job has. */
    countChunks: `SELECT j.chunk_seq FROM ${jobs} j WHERE j.id = $1 AND ${visible('j')}`,

    /** $1 id, $2 after, $3 limit → the next chunks by seq. */
    readChunks: `SELECT seq, data FROM ${chunks} WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`,

    /** $1 id → whether the deleted job was still visible; its logs and chunks go with it (ON DELETE CASCADE). */
    deleteJob: `DELETE FROM ${jobs} j WHERE j.id = $1 RETURNING ${visible('j')} AS live`,

    /**
     * $1 the channel, $2 the payload: a JSON array of the ids of jobs that changed. Sent by
     * PostgresStore after the writes (coalesced, one at a time), never inside them: PostgreSQL
     * serialises the commits of notifying transactions (one lock for the whole cluster, held
     * through the WAL flush), which measured ~4,600 → ~1,300 UPDATEs/s with 10 clients when every
     * write notified in its own statement, and ~3,200/s with one coalesced notify in flight.
     */
    notifyChanges: `SELECT pg_notify($1, $2)`,

    /** LISTEN on the channel of notifyChanges (watchChanges' own connection). */
    listen: `LISTEN ${quote(`${table}_changes`)}`,

    /** $1 statuses or null, $2 cursor createdAt or null, $3 cursor id, $4 limit. */
    listAll: list('true'),
    /** As listAll, for anonymous jobs. */
    listAnonymous: list('j.owner IS NULL'),
    /** As listAll, plus $5 owner. */
    listOwner: list('j.owner = $5'),

    /**
     * $1 key, $2 fingerprint, $3 jobId, $4 leaseUntil, $5 expiresAt → a row when the claim won. The
     * conflicting row is locked and re-checked at its latest version, so of concurrent claims
     * exactly one inserts or takes over, and the others see its claim and return nothing.
     */
    claimKey: `INSERT INTO ${keys} AS k (key, fingerprint, job_id, state, lease_until, expires_at)
      VALUES ($1, $2, $3, 'running', $4, $5)
      ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, job_id = EXCLUDED.job_id, state = 'running',
        lease_until = EXCLUDED.lease_until, expires_at = EXCLUDED.expires_at
      WHERE k.expires_at <= ${NOW_MS}
      RETURNING 1`,

    /** $1 key → the live record. */
    readKey: `SELECT fingerprint, job_id, state, lease_until, expires_at FROM ${keys} WHERE key = $1 AND expires_at > ${NOW_MS}`,

    /** $1 key, $2 jobId, $3 leaseUntil; rowCount 1 when held and running. */
    renewKey: `UPDATE ${keys} SET lease_until = $3 WHERE key = $1 AND job_id = $2 AND state = 'running' AND expires_at > ${NOW_MS}`,

    /** $1 key, $2 jobId, $3 expiresAt; rowCount 1 when held. */
    completeKey: `UPDATE ${keys} SET state = 'done', expires_at = $3 WHERE key = $1 AND job_id = $2 AND expires_at > ${NOW_MS}`,

    /** $1 key, $2 jobId; rowCount 1 when held. */
    releaseKey: `DELETE FROM ${keys} WHERE key = $1 AND job_id = $2`,

    // The sweep deletes in batches (short transactions) and skips rows another process is sweeping.
    /** $1 batch size; rowCount = jobs deleted with their logs and chunks. */
    sweepJobs: `DELETE FROM ${jobs} WHERE id IN (
        SELECT id FROM ${jobs} WHERE expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)`,
    /** $1 batch size; rowCount = keys deleted. */
    sweepKeys: `DELETE FROM ${keys} WHERE key IN (
        SELECT key FROM ${keys} WHERE expires_at <= ${NOW_MS} LIMIT $1 FOR UPDATE SKIP LOCKED)`,
  } as const;
}

export type Statements = ReturnType<typeof statements>;
