// The Job record, its status vocabulary and transitions: the model every layer shares.

export type JobStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';
export type LogLevel = 'info' | 'warning' | 'error';

const FINAL_STATUSES: ReadonlySet<JobStatus> = new Set(['completed', 'failed', 'cancelled']);

export function isFinal(status: JobStatus): boolean {
  return FINAL_STATUSES.has(status);
}

/** The captured response of a finished job: enough to replay it byte for byte. */
export interface JobResponse {
  status: number;
  contentType: string | null;
  /** Body size in bytes, as stored. */
  size: number;
  /** Header name/value pairs in the order the handler sent them (raw case, duplicates kept). */
  headers: Array<[string, string]>;
}

/** Why a job failed: `type` is stable (`timeout`, `result_too_large`, `server_error`, `connection_lost`, …). */
export interface JobError {
  type: string;
  message: string;
  /**
   * Set when the handler had begun its response before the job failed (the result could not be
   * stored, was too large or was cut off): its execution had an effect, so the Idempotency-Key it
   * held is never freed for a second run. Kept in the store, never shown to clients.
   */
  answered?: true;
}

/** The internal job record every store keeps. Dates are ISO 8601 strings so records serialize as they are. */
export interface Job {
  id: string;
  name: string;
  method: string;
  url: string;
  owner: string | null;
  status: JobStatus;
  /**
   * Which run of the job this is: 1, and one more each time a worker restarts it from a clean
   * result after the worker running it died (queue mode, a job safe to run again). A job stored by
   * a version without attempts reads 1.
   */
  attempt: number;
  progress: number;
  message: string | null;
  resultCount: number;
  warnings: number;
  errors: number;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  /** When a finished job and its result will be forgotten; null while it runs. */
  expiresAt: string | null;
  /**
   * While queued or running: until when the process that holds the job has promised to renew it.
   * A job whose lease has passed belongs to a dead process and is recorded `failed: interrupted`.
   */
  leaseUntil: string | null;
  response: JobResponse | null;
  error: JobError | null;
}

/** One log line of a job, numbered by the store from 1 upwards. */
export interface LogLine {
  seq: number;
  at: string;
  level: LogLevel;
  message: string;
}

/** The fields a running job may change; the store applies them only while the job is not final. */
export interface JobProgressUpdate {
  progress?: number;
  message?: string | null;
  resultCount?: number;
  /**
   * The owner the app's own auth established on the replayed request (see `owner`): given to a job
   * that has none yet (`owner` null); ignored when the job already has an owner.
   */
  owner?: string;
  /**
   * Apply only if the job's `attempt` is this number: how a run fences its writes in queue mode, so
   * a worker that came back late after another restarted the job changes nothing of the new
   * attempt (the update resolves `false`). Never stored.
   */
  ifAttempt?: number;
}

/** The final transition of a job: applied once, only from a non-final status. */
export interface JobFinish {
  status: 'completed' | 'failed' | 'cancelled';
  /**
   * Apply only if the job's lease has passed by this instant (ISO): how a process records
   * `interrupted` for a dead process's job without racing a live one that just renewed.
   */
  ifLeaseExpiredBy?: string;
  /**
   * Apply only if the job's `attempt` is this number: how a run ends its own attempt only, so a
   * worker that came back late after another restarted the job cannot end it with the earlier
   * attempt's response (the finish reports `applied: false`). Never stored.
   */
  ifAttempt?: number;
  finishedAt: string;
  expiresAt: string;
  response: JobResponse | null;
  error: JobError | null;
}

export function newJob(fields: {
  id: string;
  method: string;
  url: string;
  owner: string | null;
  status: JobStatus;
  leaseUntil?: string | null;
  attempt?: number;
}): Job {
  const now = new Date().toISOString();
  return {
    id: fields.id,
    name: `${fields.method} ${fields.url}`,
    method: fields.method,
    url: fields.url,
    owner: fields.owner,
    status: fields.status,
    attempt: fields.attempt ?? 1,
    progress: 0,
    message: null,
    resultCount: 0,
    warnings: 0,
    errors: 0,
    createdAt: now,
    startedAt: fields.status === 'running' ? now : null,
    finishedAt: null,
    expiresAt: null,
    leaseUntil: fields.leaseUntil ?? null,
    response: null,
    error: null,
  };
}

/** `finishedAt` now and `expiresAt` `ttl` ms later: the timestamps of a final transition. */
export function endingNow(ttl: number): { finishedAt: string; expiresAt: string } {
  const now = Date.now();
  return { finishedAt: new Date(now).toISOString(), expiresAt: new Date(now + ttl).toISOString() };
}

/** A page of jobs, newest first; `next` is an opaque cursor for the following page, or null. */
/**
 * What `finishJob` reports: the job as it is stored now, and whether this call ended it (`false`:
 * it was already final, its lease had not passed `ifLeaseExpiredBy`, or it was not on attempt
 * `ifAttempt`).
 */
export interface JobFinished {
  applied: boolean;
  job: Job;
}

export interface JobPage {
  jobs: Job[];
  next: string | null;
}

/** Which jobs `listJobs` returns. */
export interface JobQuery {
  /** Only this owner's jobs (`null`: anonymous jobs); `undefined`: everyone's. */
  owner?: string | null;
  /** Only jobs in these statuses; `undefined` or empty: all. */
  statuses?: JobStatus[];
  /** At most this many (1–1000). */
  limit: number;
  /** A `next` value from a previous page. */
  cursor?: string | null;
}

/** Whether a job that is not final has outlived its lease (its process died). */
export function leaseExpired(job: Job, now = Date.now()): boolean {
  return (job.status === 'running' || job.status === 'queued') && job.leaseUntil !== null && Date.parse(job.leaseUntil) < now;
}
