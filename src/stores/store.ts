// The Store interface: the only way the core reaches state. Every backend keeps this contract.
import type { Job, JobFinish, JobFinished, JobPage, JobProgressUpdate, JobQuery, LogLevel, LogLine } from '../model/job.js';

/** What `listJobs` rejects with for a cursor it did not hand out; the job routes answer it with a 400. */
export class InvalidCursorError extends TypeError {
  readonly code = 'BGRS_INVALID_CURSOR';
  constructor() {
    super('invalid cursor');
  }
}

/**
 * What a store rejects with when it is full by its own limits (not broken): the core answers 503
 * `server-busy` with Retry-After instead of `store-unavailable`.
 */
export class StoreFullError extends Error {
  readonly code = 'BGRS_STORE_FULL';
}

/**
 * What `appendResult` rejects with when it is given an `attempt` the job is no longer on: another
 * worker restarted the job (queue mode) while this one was late, so the chunk was dropped. The
 * core stops the stale run instead of writing into the new attempt's result.
 */
export class StaleAttemptError extends Error {
  readonly code = 'BGRS_STALE_ATTEMPT';
  constructor(
    readonly jobId: string,
    readonly attempt: number,
  ) {
    super(`job ${jobId} is no longer on attempt ${attempt}: it was restarted`);
  }
}

/** What an Idempotency-Key claim records: which execution (job) owns the key, and for how long. */
export interface IdempotencyRecord {
  /** Digest of the request (method, path, query, body) that first used the key. */
  fingerprint: string;
  /** The job that runs, or ran, the one execution. */
  jobId: string;
  /** `running` while the execution holds the key; `done` once its response is stored. */
  state: 'running' | 'done';
  /** Epoch ms: a `running` claim not renewed by then is abandoned (its process died) and may be taken over. */
  leaseUntil: number;
  /** Epoch ms: after this the record is gone and the key is new again. */
  expiresAt: number;
}

export type IdempotencyClaimResult = { won: true } | { won: false; record: IdempotencyRecord };

/** What `takeJob` resolves: the job, its request, and whether this call started it. */
export interface TakenJob {
  job: Job;
  request: Buffer | null;
  started: boolean;
}

/** What `watchChanges` calls: with the id of a job that changed, or `null` when changes may have been missed. */
export type ChangeListener = (id: string | null) => void;

/**
 * The job methods every store has. Every method returns a Promise and must never share mutable objects with the caller:
 * a value passed in may be changed by the caller afterwards, a value handed out may be changed by
 * the caller, and neither may affect the store's copy.
 *
 * Jobs move `queued → running → completed | failed | cancelled`; once final, nothing about a job
 * changes again except its deletion or expiry. Stores enforce that themselves (atomically in shared
 * stores) so two processes racing to update one job can never undo a final status.
 */
export interface JobStore {
  /**
   * Required. Saves a new job. Rejects when a job with that id exists. With `request` (queue mode:
   * the request a worker in another process will replay), the store keeps those bytes with the job
   * in the same atomic step, until the job is final or deleted; a store that cannot keep them
   * leaves out `readRequest` (queue mode then refuses it at setup). The bytes are opaque: the core
   * serializes the request, the store never looks inside. A job created final keeps none.
   */
  createJob(job: Job, request?: Buffer): Promise<void>;

  /** Required. The job, or `null` when it is unknown or expired. */
  getJob(id: string): Promise<Job | null>;

  /**
   * Required. Applies progress fields to a job that is not final (and, with `update.ifAttempt`,
   * only if the job's `attempt` is that number). Resolves `false` (and changes nothing) when the
   * job is unknown or already final, or is on another attempt.
   */
  updateProgress(id: string, update: JobProgressUpdate): Promise<boolean>;

  /**
   * Required. Moves a `queued` job to `running` with this start time and lease. Resolves `false`
   * (changing nothing) when the job is not `queued` (cancelled meanwhile, or unknown).
   */
  startJob(id: string, start: { startedAt: string; leaseUntil: string }): Promise<boolean>;

  /**
   * Required. The heartbeat of one process: sets `leaseUntil` on each of these jobs that is still
   * queued or running, in one round trip where the backend allows. Resolves the ids that are not
   * (final, or unknown): their process must stop them (they were cancelled elsewhere).
   */
  renewLeases(ids: string[], leaseUntil: string): Promise<string[]>;

  /**
   * Required. Jobs newest first (by `createdAt`, then id), filtered by owner and status, one page
   * at a time. `next` is an opaque cursor; a page never repeats or skips a job that existed when
   * the first page was read. Rejects with `InvalidCursorError` for a cursor it did not hand out.
   */
  listJobs(query: JobQuery): Promise<JobPage>;

  /**
   * Required. The one final transition. Applies `finish` only if the job exists and is not final
   * (and, with `finish.ifLeaseExpiredBy`, only if its `leaseUntil` is at or before that instant;
   * with `finish.ifAttempt`, only if its `attempt` is that number). Resolves `{ applied: true, job }`
   * with the updated job, `{ applied: false, job }` with the job as it stands when nothing changed
   * (already final, a lease still alive, or another attempt), or `null` when the
   * job is unknown or expired: the caller never has to read it back to know how it ended.
   * `leaseUntil` becomes null and, for `completed`, `progress` 100. From then on the job and its
   * result expire at `finish.expiresAt`.
   */
  finishJob(id: string, finish: JobFinish): Promise<JobFinished | null>;

  /**
   * Required. Appends a log line and resolves its sequence number (1, 2, 3… per job). A `warning`
   * line increments the job's `warnings`, an `error` line its `errors`, in the same atomic step.
   * Resolves `null` when the job is unknown or final.
   */
  appendLog(id: string, line: { at: string; level: LogLevel; message: string }): Promise<number | null>;

  /** Required. Up to `limit` log lines with `seq > after`, oldest first. Unknown job: `[]`. */
  readLogs(id: string, after: number, limit: number): Promise<LogLine[]>;

  /**
   * Required. Appends one chunk to the job's result body. Chunks are appended in call order; the
   * core awaits each call before sending the next, which is how backpressure reaches the handler.
   * Rejects when the job is unknown or final. With `attempt` (queue mode: the attempt the calling
   * run is on), the chunk is appended only if the job's `attempt` is that number, in the same
   * atomic step; otherwise it is dropped and the call rejects with `StaleAttemptError`, so a worker
   * that came back late after another restarted the job never writes into the new attempt's
   * result. Without it, no attempt is checked (and none costs anything).
   *
   * `offset`, given only to a store with `resumableResults`: how many result bytes the calling run
   * had stored before this chunk. The store keeps only the part of the chunk past the bytes it holds
   * (none when it holds them all already) and rejects an offset past them (a gap). So a call whose
   * reply was lost (a timeout, a reset connection, a command resent on reconnect) can be made again
   * and nothing is stored twice: the core then retries a failed append through a short outage
   * instead of failing the job. A restart (`restartJob`) starts the count over at 0.
   */
  appendResult(id: string, chunk: Uint8Array, attempt?: number, offset?: number): Promise<void>;

  /**
   * Required. The result body, chunk by chunk, in order. Only called for finished jobs.
   * Resolves `null` when the body is gone (expired or deleted).
   */
  readResult(id: string): Promise<AsyncIterable<Uint8Array> | null>;

  /** Required. Forgets a job, its log, its result and its request. Resolves whether it existed. */
  deleteJob(id: string): Promise<boolean>;

  /**
   * Optional (queue mode needs it). The request bytes saved by createJob; `null` when none were
   * saved, the job is unknown, or it is final (the bytes are dropped when the job ends). A store
   * that keeps jobs in this process only (MemoryStore) leaves it out: no other process could read them.
   */
  readRequest?(id: string): Promise<Buffer | null>;

  /**
   * Optional (queue mode needs it). Starts a job again whose worker died mid-run (another worker
   * took it over, and the job is safe to run again): atomically, and only if the job is `running`
   * and its `leaseUntil` is at or before `restart.ifLeaseExpiredBy` (its worker stopped renewing
   * it; a null lease never passes), increments `attempt`, sets `startedAt` and `leaseUntil`, and
   * clears the result completely: every stored chunk, `response` null, `resultCount` 0, `progress`
   * 0, `message` null. The log lines and the `warnings`/`errors` counters stay (they tell what the
   * earlier attempts did), and so do the owner, `createdAt` and the request (readRequest still
   * reads it). Resolves the job as it is after the restart, or `null` when nothing changed (the job
   * is unknown, queued or final, or its lease is still alive): of two racing restarts with the same
   * `ifLeaseExpiredBy`, the second finds the lease the first set, and only one applies.
   */
  restartJob?(id: string, restart: { startedAt: string; leaseUntil: string; ifLeaseExpiredBy: string }): Promise<Job | null>;

  /**
   * Optional (queue mode uses it when present). A worker's take in one step, instead of getJob,
   * readRequest and startJob: atomically, a `queued` job is started (as startJob does: `running`,
   * `startedAt`, `leaseUntil`) and resolved as it is after the start, with its request and
   * `started: true`; a `running` job is resolved as it is, with its request and `started: false`
   * (the worker then applies its crash rule). Resolves `null` when the job is unknown or final.
   * `request` is null when the job was created without one.
   */
  takeJob?(id: string, start: { startedAt: string; leaseUntil: string }): Promise<TakenJob | null>;

  /**
   * Optional. Tells `listener` of changes to jobs made by any process sharing the store, by the
   * backend's own notification (Redis pub/sub, PostgreSQL LISTEN/NOTIFY), so watchers (`/events`,
   * `wait`) wake at once instead of polling. A change is any write a watcher shows: updateProgress,
   * startJob, finishJob (when applied), appendLog, restartJob, deleteJob; `listener(id)` comes after
   * the write is visible to reads. `listener(null)` means notifications may have been missed (the
   * store's subscription was lost and is back): every watcher should read its job again. Resolves,
   * once the subscription is live, the function that removes this listener. A store opens what it
   * needs for this (one connection per store, not per listener) on the first call, and releases it
   * in close(). Delivery is best effort: bgrs still re-reads now and then, but rarely.
   */
  watchChanges?(listener: ChangeListener): Promise<() => Promise<void>>;

  /**
   * Optional. `true` when `appendResult` honours its `offset` (see there): bgrs then sends it with
   * every chunk and retries an append that failed, for up to one lease, rather than failing the job.
   */
  readonly resumableResults?: boolean;

  /** Optional. Releases timers and resources the store created (never a client it was given). */
  close?(): Promise<void>;

  /**
   * Optional. `true` when the store keeps jobs in this process only (MemoryStore): bgrs then warns
   * in production, since other instances cannot see its jobs. Shared stores leave it unset.
   */
  readonly local?: boolean;
}

/**
 * What the Idempotency-Key guard needs of a store, besides the job methods: the four methods come
 * together or not at all. A store without them backs every job feature; the guard (and a keyed
 * detach) refuses to run on it.
 */
export interface IdempotencyStore {
  /**
   * Claims `key` atomically: of any number of concurrent
   * claims, across processes, exactly one wins. A claim wins when there is no record, or the record
   * has expired (`expiresAt`); the winner's `record` (state `running`) replaces it. Otherwise
   * resolves the current record, also a `running` one whose lease has passed: its execution may
   * have answered, so the guard looks at its job, then completes or releases it and claims again.
   */
  claimIdempotencyKey(key: string, record: IdempotencyRecord): Promise<IdempotencyClaimResult>;

  /** Extends a `running` claim held by `jobId`; `false` when it is no longer held. */
  renewIdempotencyKey(key: string, jobId: string, leaseUntil: number): Promise<boolean>;

  /** Marks the claim held by `jobId` `done`, kept until `expiresAt`; `false` when not held. */
  completeIdempotencyKey(key: string, jobId: string, expiresAt: number): Promise<boolean>;

  /** Deletes the record if `jobId` holds it, so the key is new again. */
  releaseIdempotencyKey(key: string, jobId: string): Promise<boolean>;
}

/** A store as bgrs takes it: the job methods, and the guard's methods when it backs the guard. */
export interface Store extends JobStore, Partial<IdempotencyStore> {}

/** The job methods every store has, in the order the errors name them. */
export const JOB_METHODS = [
  'createJob',
  'getJob',
  'updateProgress',
  'startJob',
  'renewLeases',
  'listJobs',
  'finishJob',
  'appendLog',
  'readLogs',
  'appendResult',
  'readResult',
  'deleteJob',
] as const satisfies ReadonlyArray<keyof JobStore>;

/**
 * The job methods a store may leave out, each on its own (the guard's come as a set, below): a
 * wrapper forwards one only when the store it wraps has it.
 */
export const OPTIONAL_JOB_METHODS = ['readRequest', 'restartJob', 'takeJob'] as const satisfies ReadonlyArray<keyof JobStore>;

/** The guard's methods, in the order the errors name them. */
export const IDEMPOTENCY_METHODS = ['claimIdempotencyKey', 'renewIdempotencyKey', 'completeIdempotencyKey', 'releaseIdempotencyKey'] as const;

/** The guard's methods this store lacks (none: it backs the guard). Decided from the store's methods, never its class. */
export function missingIdempotencyMethods(store: Store): string[] {
  return IDEMPOTENCY_METHODS.filter((method) => typeof store[method] !== 'function');
}
