// MemoryStore: the embedded default store, on lru-cache. One process only; behaves like a remote store.
import { LRUCache } from 'lru-cache';
import type { Job, JobFinish, JobFinished, JobPage, JobProgressUpdate, JobQuery, LogLevel, LogLine } from '../model/job.js';
import { isFinal } from '../model/job.js';
import { checkKnown } from '../util/known-options.js';
import { JobIndex } from './memory-index.js';
import type { IdempotencyClaimResult, IdempotencyRecord, Store } from './store.js';
import { InvalidCursorError, StaleAttemptError, StoreFullError } from './store.js';

export interface MemoryStoreOptions {
  /** How many finished jobs are kept at most; the least recently used go first. Defaults to `10000`. */
  max?: number;
  /** How many bytes of finished results are kept at most, all jobs together. Defaults to 512 MiB. */
  maxBytes?: number;
  /** An upper bound on how long a finished job is kept (ms), on top of the expiry bgrs sets. Defaults to none. */
  ttl?: number;
  /**
   * How many Idempotency-Key records are kept at most; when they are all live, a new key is refused
   * (the guard answers 503 `server-busy`) rather than an old one dropped, which would let its request
   * run twice. Defaults to `50000`.
   */
  maxKeys?: number;
}

/** A deep copy of a job, field by field: its shape is known, and structuredClone costs several times more. */
function copyJob(job: Job): Job {
  return {
    ...job,
    response: job.response && { ...job.response, headers: job.response.headers.map(([name, value]) => [name, value] as [string, string]) },
    error: job.error && { ...job.error },
  };
}

/** The listing order, newest first: negative when `a` comes before `b` (newer; on a tie, the greater id). */
function encodeCursor(job: Job): string {
  return Buffer.from(JSON.stringify([job.createdAt, job.id])).toString('base64url');
}

function decodeCursor(cursor: string): { createdAt: string; id: string } | null {
  try {
    const [createdAt, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString()) as [unknown, unknown];
    return typeof createdAt === 'string' && typeof id === 'string' ? { createdAt, id } : null;
  } catch {
    return null;
  }
}

interface Entry {
  job: Job;
  logs: LogLine[];
  chunks: Buffer[];
  /** What the entry weighs against maxBytes: its result and its log lines. */
  size: number;
  /** The result's bytes alone (appendResult's offset counts them). */
  resultBytes: number;
}

/** Fixed per-entry weight so that jobs without results still count against `maxBytes`. */
const ENTRY_OVERHEAD = 1024;
/** What a log line weighs beyond its text (UTF-16 code units count as 2 bytes), for `maxBytes`. */
const LINE_OVERHEAD = 96;

/**
 * Keeps jobs in this process. Running jobs sit in a plain Map and are never evicted (evicting one
 * would lose work in progress); finished ones move into an LRU bounded by count and bytes, and
 * expire at their `expiresAt`. A finished job an Idempotency-Key record points to is kept outside
 * the LRU until it expires: evicting it would let the key's request run again.
 */
export class MemoryStore implements Store {
  /** Jobs live in this process only. */
  readonly local = true;
  /** appendResult honours its offset: a retried append stores nothing twice. */
  readonly resumableResults = true;

  private readonly active = new Map<string, Entry>();
  private readonly finished: LRUCache<string, Entry>;
  private readonly ttlCap: number | undefined;
  private readonly keys = new Map<string, IdempotencyRecord>();
  private readonly maxKeys: number;
  private claimsSincePurge = 0;
  private finishesSincePurge = 0;
  /** Drops expired jobs that nobody reads again; unref'd so it never keeps the process alive. */
  /** Finished jobs an Idempotency-Key record points to: never evicted, so a key keeps its answer (they expire at expiresAt). */
  private readonly pinned = new Map<string, Entry>();
  /** The jobs live key records point to. */
  private readonly keyedJobs = new Set<string>();
  private readonly sweeper = setInterval(() => this.sweep(), 60_000).unref();
  /** Every job held here, in listing order. */
  private readonly index = new JobIndex();

  constructor(options: MemoryStoreOptions = {}) {
    checkKnown('MemoryStore', options, ['max', 'maxBytes', 'ttl', 'maxKeys']);
    const max = options.max ?? 10_000;
    const maxBytes = options.maxBytes ?? 512 * 2 ** 20;
    const maxKeys = options.maxKeys ?? 50_000;
    this.maxKeys = maxKeys;
    for (const [name, value] of [
      ['max', max],
      ['maxBytes', maxBytes],
      ['maxKeys', maxKeys],
    ] as const) {
      if (!Number.isInteger(value) || value < 1) {
        throw new TypeError(`MemoryStore: \`${name}\` must be a positive integer, received \`${String(value)}\`.`);
      }
    }
    if (options.ttl !== undefined && !(Number.isFinite(options.ttl) && options.ttl > 0)) {
      throw new TypeError(`MemoryStore: \`ttl\` must be a positive number of milliseconds, received \`${String(options.ttl)}\`.`);
    }
    this.ttlCap = options.ttl;
    this.finished = new LRUCache<string, Entry>({
      max,
      maxSize: maxBytes,
      sizeCalculation: (entry) => entry.size + ENTRY_OVERHEAD,
      ttlAutopurge: false,
      // lru-cache's own timers would keep the process alive; expiry is checked on read instead.
      allowStale: false,
      ttlResolution: 1000,
      // Evicted, expired or deleted: out of the listing too.
      dispose: (entry, _id, reason) => {
        if (reason !== 'set') this.index.remove(entry.job);
      },
    });
  }

  private entry(id: string): Entry | undefined {
    const active = this.active.get(id);
    if (active) return active;
    const finished = this.pinned.get(id) ?? this.finished.get(id);
    // lru-cache's clock is coarse (ttlResolution); expiry is exact to the millisecond here.
    if (finished && finished.job.expiresAt !== null && Date.parse(finished.job.expiresAt) <= Date.now()) {
      this.forgetFinished(id);
      return undefined;
    }
    return finished;
  }

  /**
   * A request given with the job (queue mode's) is ignored: a worker in another process could never
   * read it here, so this store has no readRequest, and queue mode refuses it at setup.
   */
  async createJob(job: Job): Promise<void> {
    if (this.entry(job.id)) throw new Error(`MemoryStore: job ${job.id} exists already`);
    const copy = copyJob(job);
    // A job built by code that predates attempts has none: it is on its first, as in the shared stores.
    copy.attempt ??= 1;
    this.active.set(job.id, { job: copy, logs: [], chunks: [], size: 0, resultBytes: 0 });
    this.index.add(job, job.owner);
  }

  async getJob(id: string): Promise<Job | null> {
    const entry = this.entry(id);
    return entry ? copyJob(entry.job) : null;
  }

  async updateProgress(id: string, update: JobProgressUpdate): Promise<boolean> {
    const entry = this.active.get(id);
    if (!entry || isFinal(entry.job.status)) return false;
    if (update.ifAttempt !== undefined && entry.job.attempt !== update.ifAttempt) return false;
    if (update.progress !== undefined) entry.job.progress = update.progress;
    if (update.message !== undefined) entry.job.message = update.message;
    if (update.resultCount !== undefined) entry.job.resultCount = update.resultCount;
    if (update.owner != null && entry.job.owner === null) {
      this.index.move(entry.job, update.owner);
      entry.job.owner = update.owner;
    }
    return true;
  }

  async startJob(id: string, start: { startedAt: string; leaseUntil: string }): Promise<boolean> {
    const entry = this.active.get(id);
    if (entry?.job.status !== 'queued') return false;
    entry.job.status = 'running';
    entry.job.startedAt = start.startedAt;
    entry.job.leaseUntil = start.leaseUntil;
    return true;
  }

  async renewLeases(ids: string[], leaseUntil: string): Promise<string[]> {
    const gone: string[] = [];
    for (const id of ids) {
      const entry = this.active.get(id);
      if (entry && !isFinal(entry.job.status)) entry.job.leaseUntil = leaseUntil;
      else gone.push(id);
    }
    return gone;
  }

  async listJobs(query: JobQuery): Promise<JobPage> {
    const statuses = query.statuses?.length ? new Set(query.statuses) : null;
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    if (query.cursor && !after) throw new InvalidCursorError();
    const now = Date.now();
    const page: Job[] = [];
    let more = false;
    // Newest first from the index: a page reads about as many jobs as it holds (more only when a
    // status filter skips some), never a sort of every job.
    for (const key of this.index.newestFirst(query.owner, after)) {
      const job = this.listed(key.id, now);
      if (!job) {
        // Gone without telling the index (lru-cache drops a stale entry on read): forget it now.
        this.index.remove(key);
        continue;
      }
      if (statuses && !statuses.has(job.status)) continue;
      if (page.length === query.limit) {
        more = true;
        break;
      }
      page.push(job);
    }
    const last = page.at(-1);
    return { jobs: page.map(copyJob), next: more && last ? encodeCursor(last) : null };
  }

  /** A job as listing sees it, without touching the LRU order; an expired one is dropped as it is met. */
  private listed(id: string, now: number): Job | undefined {
    // peek: no LRU reordering; a stale entry (past its expiresAt or the ttl cap) reads as gone.
    const entry = this.active.get(id) ?? this.pinned.get(id) ?? this.finished.peek(id);
    if (!entry) {
      this.finished.delete(id);
      return undefined;
    }
    if (entry.job.expiresAt !== null && Date.parse(entry.job.expiresAt) <= now && !this.active.has(id)) {
      this.forgetFinished(id);
      return undefined;
    }
    return entry.job;
  }

  /** Drops a finished job from wherever it is kept, and from the listing. */
  private forgetFinished(id: string): void {
    const pinned = this.pinned.get(id);
    if (pinned) {
      this.pinned.delete(id);
      this.index.remove(pinned.job);
    }
    this.finished.delete(id);
  }

  async finishJob(id: string, finish: JobFinish): Promise<JobFinished | null> {
    const entry = this.active.get(id);
    if (!entry) {
      // entry(): a job past its expiry is unknown here as everywhere.
      const ended = this.entry(id);
      return ended ? { applied: false, job: copyJob(ended.job) } : null;
    }
    if (finish.ifLeaseExpiredBy !== undefined && !(entry.job.leaseUntil !== null && entry.job.leaseUntil <= finish.ifLeaseExpiredBy)) {
      return { applied: false, job: copyJob(entry.job) };
    }
    if (finish.ifAttempt !== undefined && entry.job.attempt !== finish.ifAttempt) return { applied: false, job: copyJob(entry.job) };
    // The conditions are not fields of the job: never stored.
    const { ifLeaseExpiredBy: _lease, ifAttempt: _attempt, ...fields } = finish;
    entry.job = copyJob({ ...entry.job, ...fields, leaseUntil: null });
    if (finish.status === 'completed') entry.job.progress = 100;
    this.active.delete(id);
    let ttl = Math.max(1, Date.parse(finish.expiresAt) - Date.now());
    if (this.ttlCap !== undefined) ttl = Math.min(ttl, this.ttlCap);
    if (this.keyedJobs.has(id)) this.pinned.set(id, entry);
    else {
      this.finished.set(id, entry, { ttl });
      // Larger than maxBytes on its own: lru-cache keeps nothing (its dispose says 'set'), so the job is gone.
      if (!this.finished.has(id, { updateAgeOnHas: false })) this.index.remove(entry.job);
    }
    // A busy server also sweeps every 256 finishes, so expired results never pile up between sweeps.
    if (++this.finishesSincePurge >= 256) {
      this.finishesSincePurge = 0;
      this.finished.purgeStale();
    }
    return { applied: true, job: copyJob(entry.job) };
  }

  /**
   * Queue mode refuses this store (no other process sees its jobs), but the method is cheap and
   * keeps the conformance suite's restart tests running on the reference store.
   */
  async restartJob(id: string, restart: { startedAt: string; leaseUntil: string; ifLeaseExpiredBy: string }): Promise<Job | null> {
    const entry = this.active.get(id);
    if (entry?.job.status !== 'running' || entry.job.leaseUntil === null || entry.job.leaseUntil > restart.ifLeaseExpiredBy) return null;
    const { job } = entry;
    Object.assign(job, {
      attempt: job.attempt + 1,
      startedAt: restart.startedAt,
      leaseUntil: restart.leaseUntil,
      progress: 0,
      message: null,
      resultCount: 0,
      response: null,
    } satisfies Partial<Job>);
    // The log lines stay, and so does their weight against maxBytes; the result's goes with it.
    for (const chunk of entry.chunks) entry.size -= chunk.byteLength;
    entry.chunks = [];
    entry.resultBytes = 0;
    return copyJob(job);
  }

  async appendLog(id: string, line: { at: string; level: LogLevel; message: string }): Promise<number | null> {
    const entry = this.active.get(id);
    if (!entry || isFinal(entry.job.status)) return null;
    const seq = entry.logs.length + 1;
    entry.logs.push({ seq, at: line.at, level: line.level, message: line.message });
    // Log lines count against maxBytes like result bytes do.
    entry.size += LINE_OVERHEAD + line.message.length * 2;
    if (line.level === 'warning') entry.job.warnings += 1;
    else if (line.level === 'error') entry.job.errors += 1;
    return seq;
  }

  async readLogs(id: string, after: number, limit: number): Promise<LogLine[]> {
    const entry = this.entry(id);
    if (!entry) return [];
    // seq n sits at index n - 1, so the page starts right after `after`.
    return entry.logs.slice(Math.max(0, after), Math.max(0, after) + limit).map((line) => ({ ...line }));
  }

  async appendResult(id: string, chunk: Uint8Array, attempt?: number, offset?: number): Promise<void> {
    const entry = this.active.get(id);
    if (!entry) throw new Error(`MemoryStore: job ${id} is not running`);
    if (attempt !== undefined && entry.job.attempt !== attempt) throw new StaleAttemptError(id, attempt);
    let bytes = chunk;
    if (offset !== undefined) {
      if (offset > entry.resultBytes) throw new Error(`MemoryStore: job ${id} holds ${entry.resultBytes} result bytes, not ${offset}`);
      bytes = chunk.subarray(Math.min(chunk.byteLength, entry.resultBytes - offset));
      if (bytes.byteLength === 0) return;
    }
    entry.chunks.push(Buffer.from(bytes));
    entry.size += bytes.byteLength;
    entry.resultBytes += bytes.byteLength;
  }

  async readResult(id: string): Promise<AsyncIterable<Uint8Array> | null> {
    const entry = this.entry(id);
    if (!entry) return null;
    const chunks = entry.chunks.slice();
    return (async function* copies() {
      for (const chunk of chunks) yield Buffer.from(chunk);
    })();
  }

  async deleteJob(id: string): Promise<boolean> {
    const running = this.active.get(id);
    if (running) {
      this.active.delete(id);
      this.index.remove(running.job);
      return true;
    }
    const known = this.pinned.has(id) || this.finished.has(id, { updateAgeOnHas: false });
    this.forgetFinished(id);
    return known;
  }

  /** A record that still counts, or undefined (expired ones are dropped as they are met). */
  private liveKey(key: string, now: number): IdempotencyRecord | undefined {
    const record = this.keys.get(key);
    if (record && record.expiresAt <= now) {
      this.dropKey(key, record);
      return undefined;
    }
    return record;
  }

  async claimIdempotencyKey(key: string, record: IdempotencyRecord): Promise<IdempotencyClaimResult> {
    const now = Date.now();
    // Expired records are dropped on touch; an occasional sweep bounds the rest without a timer.
    if (++this.claimsSincePurge >= 1000) {
      this.claimsSincePurge = 0;
      for (const [name, held] of this.keys) if (held.expiresAt <= now) this.dropKey(name, held);
    }
    const current = this.liveKey(key, now);
    if (current) return { won: false, record: { ...current } };
    if (!current && this.keys.size >= this.maxKeys) {
      for (const [name, held] of this.keys) if (held.expiresAt <= now) this.dropKey(name, held);
      if (this.keys.size >= this.maxKeys) throw new StoreFullError(`MemoryStore: ${this.maxKeys} Idempotency-Key records are live (option maxKeys)`);
    }
    this.keys.set(key, { ...record, state: 'running' });
    this.keyedJobs.add(record.jobId);
    return { won: true };
  }

  async renewIdempotencyKey(key: string, jobId: string, leaseUntil: number): Promise<boolean> {
    const current = this.liveKey(key, Date.now());
    if (!current || current.jobId !== jobId || current.state !== 'running') return false;
    current.leaseUntil = leaseUntil;
    return true;
  }

  async completeIdempotencyKey(key: string, jobId: string, expiresAt: number): Promise<boolean> {
    const current = this.liveKey(key, Date.now());
    if (!current || current.jobId !== jobId) return false;
    current.state = 'done';
    current.expiresAt = expiresAt;
    return true;
  }

  async releaseIdempotencyKey(key: string, jobId: string): Promise<boolean> {
    const current = this.keys.get(key);
    if (!current || current.jobId !== jobId) return false;
    this.dropKey(key, current);
    return true;
  }

  private dropKey(key: string, record: IdempotencyRecord): void {
    this.keys.delete(key);
    this.keyedJobs.delete(record.jobId);
  }

  /** Drops expired jobs that nobody reads again. */
  private sweep(): void {
    this.finished.purgeStale();
    const now = Date.now();
    for (const [id, entry] of this.pinned) if (entry.job.expiresAt !== null && Date.parse(entry.job.expiresAt) <= now) this.forgetFinished(id);
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.active.clear();
    this.finished.clear();
    this.pinned.clear();
    this.keys.clear();
    this.keyedJobs.clear();
    this.index.clear();
  }
}
