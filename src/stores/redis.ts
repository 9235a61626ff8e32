// RedisStore: jobs, logs, results and Idempotency-Key records in Redis, shared by many processes, over an ioredis client the user owns.
//
// Data layout (`p` is the prefix, `bgrs:` by default):
//
//   p + 'job:{<id>}'         hash: one field per Job field, each value JSON-encoded (a hash written
//                            before `attempt` existed has none: attempt 1), plus `leaseMs`
//                            (leaseUntil as epoch ms, '' when null) so Lua compares numbers, and
//                            `logToken`/`chunkToken` (the last append's token: a resent append is a no-op)
//   p + 'job:{<id>}:log'     list: log lines as JSON [at, level, message]; seq = position + 1
//   p + 'job:{<id>}:result'  list: the result body, in chunks of at most `chunkBytes` bytes; deleted
//                            when a restart (queue mode) starts the job over
//   p + 'job:{<id>}:request' string: the request bytes createJob was given (queue mode: a worker
//                            replays them), until the job is final or deleted; none without a request
//   p + 'jobs'               sorted set, every score 0: member `<createdAt> <id>`, so lexical order is
//                            (createdAt, id) order and a cursor is an exclusive lexical bound
//   p + 'owner:<owner>'      the same, one owner's jobs; p + 'anonymous' for owner null
//   p + 'status:<status>'    the same, every job in that status, so a status filter reads only matches
//   p + 'status:<status>:<owner as JSON>'  one owner's jobs in that status (`…:null` for anonymous)
//   p + 'version'            '2' once every job is in its status's indexes (see migrate()); a prefix
//                            written by 0.1 has none, and a status filter scans the jobs index instead
//   p + 'expiries'           sorted set: member JSON [owner, '<createdAt> <id>'] scored by expiresAt,
//                            to drop expired jobs from the indexes above
//   p + 'idem:<key>'         hash: an Idempotency-Key record (fingerprint, jobId, state, leaseUntil, expiresAt)
//
// TTLs: a running job's keys have none (it lives while its lease is renewed); finishing a job sets
// PEXPIREAT expiresAt on its hash, log and result and deletes its request, in the same script
// (nothing replays a final job, and a request may be megabytes). An Idempotency-Key record expires at
// its expiresAt. Index entries do not expire by themselves: deleteJob removes them, a listing drops
// the entries of jobs it finds gone, and finishJob sweeps the entries of jobs that expired.
//
// Statuses only move forward (queued → running → final), so a status index entry whose job has
// another status is stale for good: a listing skips and drops it. Such entries exist for a moment on
// a Cluster (the client moves entries after the script) and may be left by a 0.1 process.
//
// The `{<id>}` hash tag keeps the keys of one job in one Cluster slot. On a Cluster every script is
// given one job's (or one record's) keys only and the client writes the indexes after it, so the
// store also runs there; outside a Cluster the scripts write them in the same atomic step.
import { randomUUID } from 'node:crypto';
import { debuglog } from 'node:util';
import type { Cluster, Redis } from 'ioredis';
import type { Job, JobFinish, JobFinished, JobPage, JobProgressUpdate, JobQuery, JobStatus, LogLevel, LogLine } from '../model/job.js';
import { isFinal } from '../model/job.js';
import { checkKnown } from '../util/known-options.js';
import { FeedHolder } from './change-feed.js';
import { RedisChangeFeed } from './redis-changes.js';
import type { Script } from './redis-scripts.js';
import * as scripts from './redis-scripts.js';
import type { ChangeListener, IdempotencyClaimResult, IdempotencyRecord, Store, TakenJob } from './store.js';
import { InvalidCursorError, StaleAttemptError } from './store.js';

export interface RedisStoreOptions {
  /**
   * The ioredis client (`new Redis(...)` or `new Cluster(...)`) to run on. You own it: the store
   * never quits it, so one client can serve your app and the store. Required.
   */
  client: Redis | Cluster;
  /** Prepended to every key, so several apps or `bgrs()` instances can share one database. Defaults to `'bgrs:'`. */
  prefix?: string;
  /**
   * The largest piece a result is stored in (bytes); bigger chunks are split, and reading asks for
   * 1 MiB of pieces at a time, so memory stays flat however big the result. (ioredis's reply
   * parser keeps its own buffer pool on top, which grows with the piece size: measured at tens of
   * MiB while a result of hundreds of MB streams out.) Defaults to `262144` (256 KiB).
   */
  chunkBytes?: number;
}

const debug = debuglog('bgrs');

/** About how many bytes of a result `readResult` asks Redis for at a time. */
const READ_WINDOW_BYTES = 2 ** 20;
/** How many index members `listJobs` reads at a time while it filters the owner index by status (before migrate()). */
const LIST_WINDOW = 200;
/** How many jobs `migrate()` indexes at a time. */
const MIGRATE_BATCH = 500;
/** The value of the `version` key once every job is in its status's indexes. */
const LAYOUT_VERSION = '2';
const STATUSES: readonly JobStatus[] = ['queued', 'running', 'completed', 'failed', 'cancelled'];
/** The expiry sweep runs at most this often per store (ms), and handles this many jobs at a time. */
const SWEEP_INTERVAL_MS = 10_000;
const SWEEP_BATCH = 500;
/** Index entries are swept this long after their job's expiresAt (ms): processes' clocks differ from Redis's. */
const SWEEP_GRACE_MS = 60_000;

/** The fields of a job hash, in Job order; each value is JSON. */
const JOB_FIELDS = [
  'id',
  'name',
  'method',
  'url',
  'owner',
  'status',
  'attempt',
  'progress',
  'message',
  'resultCount',
  'warnings',
  'errors',
  'createdAt',
  'startedAt',
  'finishedAt',
  'expiresAt',
  'leaseUntil',
  'response',
  'error',
] as const satisfies ReadonlyArray<keyof Job>;

function leaseMs(leaseUntil: string | null): string {
  const ms = leaseUntil === null ? NaN : Date.parse(leaseUntil);
  return Number.isNaN(ms) ? '' : String(ms);
}

function epochMs(iso: string, name: string): number {
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) throw new TypeError(`RedisStore: \`${name}\` must be an ISO 8601 date, received \`${iso}\`.`);
  return ms;
}

/**
 * The fields a job may lack, and what their absence means: a hash written by a version that did
 * not have them yet, or a job given by code built against one.
 */
const FIELD_DEFAULTS: { readonly [F in keyof Job]?: Job[F] } = { attempt: 1 };

/** A job as HSET arguments. JSON out and back in is also what keeps the store's copy unshared. */
function jobArgs(job: Job): string[] {
  const args: string[] = [];
  for (const field of JOB_FIELDS) args.push(field, JSON.stringify(job[field] === undefined ? FIELD_DEFAULTS[field] : job[field]));
  args.push('leaseMs', leaseMs(job.leaseUntil));
  return args;
}

function jobFromHash(hash: Record<string, string>): Job {
  const job: Record<string, unknown> = {};
  for (const field of JOB_FIELDS) {
    const value = hash[field];
    if (value !== undefined) job[field] = JSON.parse(value);
    else if (field in FIELD_DEFAULTS) job[field] = FIELD_DEFAULTS[field];
    else throw new Error(`RedisStore: job ${String(hash.id)} has no \`${field}\` field`);
  }
  return job as unknown as Job;
}

/** A hash as a script returns HGETALL: field, value, field, value… */
function hashOf(flat: string[]): Record<string, string> {
  const hash: Record<string, string> = {};
  for (let i = 0; i < flat.length; i += 2) hash[flat[i]!] = flat[i + 1]!;
  return hash;
}

/** The index member of a job. ISO dates contain no space and sort by time, so `<createdAt> <id>` sorts as (createdAt, id). */
function indexMember(createdAt: string, id: string): string {
  return `${createdAt} ${id}`;
}

function encodeCursor(member: string): string {
  return Buffer.from(member).toString('base64url');
}

function decodeCursor(cursor: string): string | null {
  const member = Buffer.from(cursor, 'base64url').toString();
  // A cursor we handed out round-trips exactly and holds `<createdAt> <id>`.
  return encodeCursor(member) === cursor && /^\S+ ./s.test(member) ? member : null;
}

function idOf(member: string): string {
  return member.slice(member.indexOf(' ') + 1);
}

function addTo(lists: Map<string, string[]>, key: string, value: string): void {
  const list = lists.get(key);
  if (list) list.push(value);
  else lists.set(key, [value]);
}

/** Newest first, in Redis's lexical order: by bytes, which is not JavaScript's string order beyond the BMP. */
function newestFirst(a: string, b: string): number {
  return Buffer.compare(Buffer.from(b), Buffer.from(a));
}

/**
 * A Store in Redis, for apps that run in several processes: any process can answer for any job,
 * and every transition that could race runs as one Lua script. Tested on Redis 7.
 *
 * ```ts
 * import { Redis } from 'ioredis';
 * import { RedisStore } from 'express-bgrs/redis';
 * app.use(bgrs({ store: new RedisStore({ client: new Redis(process.env.REDIS_URL) }) }));
 * ```
 */
export class RedisStore implements Store {
  /** appendResult honours its offset: a retried append stores nothing twice. */
  readonly resumableResults = true;
  private readonly client: Redis | Cluster;
  private readonly prefix: string;
  private readonly chunkBytes: number;
  private readonly readWindow: number;
  private nextSweep = 0;
  /** Set once the `version` key says every job is in its status's indexes: it never goes back. */
  private statusIndexed = false;
  private freshChecked: Promise<void> | undefined;
  /** The pub/sub feed of watchChanges, open while anyone watches. */
  private readonly feed = new FeedHolder(
    () => new RedisChangeFeed(this.subscriber(), this.channelPrefix(), (err) => debug('redis change feed: %s', err.message)),
  );
  private closed = false;

  constructor(options: RedisStoreOptions) {
    checkKnown('RedisStore', options, ['client', 'prefix', 'chunkBytes']);
    const client = (options as Partial<RedisStoreOptions> | undefined)?.client;
    if (!client || typeof client.evalsha !== 'function' || typeof client.lrangeBuffer !== 'function') {
      throw new TypeError(`RedisStore: \`client\` must be an ioredis client (new Redis(...) or new Cluster(...)), received \`${String(client)}\`.`);
    }
    const prefix = options.prefix ?? 'bgrs:';
    if (typeof prefix !== 'string') throw new TypeError(`RedisStore: \`prefix\` must be a string, received \`${String(prefix)}\`.`);
    const chunkBytes = options.chunkBytes ?? 256 * 1024;
    if (!Number.isInteger(chunkBytes) || chunkBytes < 1) {
      throw new TypeError(`RedisStore: \`chunkBytes\` must be a positive integer, received \`${String(chunkBytes)}\`.`);
    }
    this.client = client;
    this.prefix = prefix;
    this.chunkBytes = chunkBytes;
    this.readWindow = Math.max(1, Math.floor(READ_WINDOW_BYTES / chunkBytes));
  }

  /** The keys of one job, all in one Cluster slot (the `{<id>}` hash tag), so one script may touch them all. */
  private jobKeys(id: string): [job: string, log: string, result: string, request: string] {
    const job = `${this.prefix}job:{${id}}`;
    return [job, `${job}:log`, `${job}:result`, `${job}:request`];
  }

  private ownerKey(owner: string | null): string {
    return owner === null ? `${this.prefix}anonymous` : `${this.prefix}owner:${owner}`;
  }

  /** Every job's index of a status, or (owner given) that owner's: named as the scripts name it (see redis-scripts.ts). */
  private statusKey(status: JobStatus, owner?: string | null): string {
    const key = `${this.prefix}status:${status}`;
    return owner === undefined ? key : `${key}:${JSON.stringify(owner)}`;
  }

  /** For each status, every job's index of it and this owner's: where a job of `owner` in that status is listed. */
  private statusKeys(owner: string | null, ...statuses: JobStatus[]): string[] {
    return statuses.flatMap((status) => [this.statusKey(status), this.statusKey(status, owner)]);
  }

  /** Every index a job of this owner may be listed in. */
  private indexesOf(owner: string | null): string[] {
    return [`${this.prefix}jobs`, this.ownerKey(owner), ...this.statusKeys(owner, ...STATUSES)];
  }

  /** EVALSHA, and EVAL (which caches the script again) when Redis answers NOSCRIPT after a restart or SCRIPT FLUSH. */
  private async run(script: Script, keys: string[], args: Array<string | Buffer>): Promise<unknown> {
    try {
      return await this.client.evalsha(script.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      return this.client.eval(script.lua, keys.length, ...keys, ...args);
    }
  }

  /**
   * As run(), with bulk replies as Buffers: evalsha decodes them as UTF-8, which would corrupt bytes
   * that are not text. (ioredis has evalshaBuffer, but its types do not; callBuffer is typed.)
   */
  private async runBuffer(script: Script, keys: string[], args: string[]): Promise<unknown> {
    try {
      return await this.client.callBuffer('evalsha', script.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      return this.client.callBuffer('eval', script.lua, keys.length, ...keys, ...args);
    }
  }

  async createJob(job: Job, request?: Buffer): Promise<void> {
    const expireAt = isFinal(job.status) && job.expiresAt !== null ? String(epochMs(job.expiresAt, 'expiresAt')) : '';
    const member = indexMember(job.createdAt, job.id);
    const entry = JSON.stringify([job.owner, member]);
    const indexes = [`${this.prefix}jobs`, this.ownerKey(job.owner), ...this.statusKeys(job.owner, job.status)];
    // A job created final has ended: no worker will replay it, so its request is not kept. Copied
    // now: ioredis reads the buffer only when it writes the command, and the caller may reuse it meanwhile.
    const bytes = request === undefined || isFinal(job.status) ? null : Buffer.from(request);
    // Read before the first await, as the index entries above are: the caller may change the job
    // once this call has returned, and the hash must hold the job it was given.
    const fields = jobArgs(job);
    await this.markIfFresh();
    // One round trip, atomic, with or without a request: the script writes the request beside the
    // hash (same slot) and lists the job too, unless the indexes are in other slots.
    const [hash, , , requestKey] = this.jobKeys(job.id);
    const keys = this.client.isCluster ? [hash, requestKey] : [hash, requestKey, ...indexes, `${this.prefix}expiries`];
    // ioredis sends a Buffer argument as it is: any bytes reach Redis unchanged.
    const created = await this.run(scripts.CREATE_JOB, keys, [expireAt, member, entry, bytes ? '1' : '', bytes ?? '', ...fields]);
    if (created !== 1) throw new Error(`RedisStore: job ${job.id} exists already`);
    if (!this.client.isCluster) return;
    // On a Cluster the indexes live in other slots, so they are written after the script: a crash in
    // between leaves a job that exists but is not listed, never a listed job that does not exist.
    await Promise.all([...indexes.map((index) => this.client.zadd(index, 0, member)), expireAt && this.client.zadd(`${this.prefix}expiries`, expireAt, entry)]);
  }

  /**
   * A prefix without jobs holds nothing for migrate() to index: it is marked indexed before this
   * store lists its first job there. Checked once per store; a failed check is retried by the next create.
   */
  private markIfFresh(): Promise<void> {
    this.freshChecked ??= (async () => {
      if ((await this.client.zcard(`${this.prefix}jobs`)) === 0) await this.client.set(`${this.prefix}version`, LAYOUT_VERSION);
    })().catch((error: unknown) => {
      this.freshChecked = undefined;
      throw error;
    });
    return this.freshChecked;
  }

  async getJob(id: string): Promise<Job | null> {
    const hash = await this.client.hgetall(this.jobKeys(id)[0]);
    return hash.id === undefined ? null : jobFromHash(hash);
  }

  /** The request bytes, read with the job's status in one script: none once the job is final. */
  async readRequest(id: string): Promise<Buffer | null> {
    const [job, , , request] = this.jobKeys(id);
    const bytes = await this.runBuffer(scripts.READ_REQUEST, [job, request], []);
    return Buffer.isBuffer(bytes) ? bytes : null;
  }

  async updateProgress(id: string, update: JobProgressUpdate): Promise<boolean> {
    const args: string[] = [];
    for (const field of ['progress', 'message', 'resultCount'] as const) {
      if (update[field] !== undefined) args.push(field, JSON.stringify(update[field]));
    }
    const owner = update.owner ?? null;
    const keys = [this.jobKeys(id)[0]];
    // A job that is anonymous leaves the anonymous indexes for its owner's: in the script, outside a Cluster.
    if (owner !== null && !this.client.isCluster) {
      keys.push(this.ownerKey(null), this.ownerKey(owner));
      for (const who of [null, owner]) keys.push(this.statusKey('queued', who), this.statusKey('running', who));
    }
    const ifAttempt = update.ifAttempt === undefined ? '' : String(update.ifAttempt);
    const answer = await this.run(scripts.UPDATE_PROGRESS, keys, [owner === null ? '' : JSON.stringify(owner), ifAttempt, ...args]);
    if (Array.isArray(answer) && owner !== null && this.client.isCluster) {
      const [createdAt, status] = (answer as [string, string]).map((value) => JSON.parse(value) as string) as [string, JobStatus];
      const indexes = (who: string | null): string[] => [this.ownerKey(who), this.statusKey(status, who)];
      await this.relist(indexMember(createdAt, id), indexes(owner), indexes(null));
    }
    return answer !== 0;
  }

  /**
   * A Cluster's index move after a script: adds before it removes, so a listing never misses the
   * job; in between it is in both, and a listing counts it once and checks its status in its hash.
   */
  private async relist(member: string, to: string[], from: string[]): Promise<void> {
    await Promise.all(to.map((key) => this.client.zadd(key, 0, member)));
    await Promise.all(from.map((key) => this.client.zrem(key, member)));
  }

  async startJob(id: string, start: { startedAt: string; leaseUntil: string }): Promise<boolean> {
    const args = [JSON.stringify(start.startedAt), JSON.stringify(start.leaseUntil), leaseMs(start.leaseUntil)];
    const keys = this.client.isCluster ? [this.jobKeys(id)[0]] : [this.jobKeys(id)[0], this.statusKey('queued'), this.statusKey('running')];
    const started = (await this.run(scripts.START_JOB, keys, args)) as [string, string] | null;
    if (!started) return false;
    if (this.client.isCluster) {
      const [createdAt, owner] = [JSON.parse(started[0]) as string, JSON.parse(started[1]) as string | null];
      await this.relist(indexMember(createdAt, id), this.statusKeys(owner, 'running'), this.statusKeys(owner, 'queued'));
    }
    return true;
  }

  async takeJob(id: string, start: { startedAt: string; leaseUntil: string }): Promise<TakenJob | null> {
    const [hash, , , request] = this.jobKeys(id);
    const args = [JSON.stringify(start.startedAt), JSON.stringify(start.leaseUntil), leaseMs(start.leaseUntil)];
    const keys = this.client.isCluster ? [hash, request] : [hash, request, this.statusKey('queued'), this.statusKey('running')];
    // Buffers: the request is bytes; the hash's fields are turned back into text below.
    const taken = (await this.runBuffer(scripts.TAKE_JOB, keys, args)) as [number, Buffer[], Buffer | null] | null;
    if (!taken) return null;
    const [started, flat, bytes] = taken;
    const job = jobFromHash(hashOf(flat.map((field) => field.toString())));
    if (started === 1 && this.client.isCluster) {
      const member = indexMember(job.createdAt, id);
      await this.relist(member, this.statusKeys(job.owner, 'running'), this.statusKeys(job.owner, 'queued'));
    }
    return { job, request: Buffer.isBuffer(bytes) ? bytes : null, started: started === 1 };
  }

  async renewLeases(ids: string[], leaseUntil: string): Promise<string[]> {
    if (ids.length === 0) return [];
    const args = [JSON.stringify(leaseUntil), leaseMs(leaseUntil)];
    if (this.client.isCluster) {
      // Jobs hash to different slots, and a Cluster script may only touch one: one call per job.
      const gone = await Promise.all(ids.map((id) => this.run(scripts.RENEW_LEASES, [this.jobKeys(id)[0]], args)));
      return ids.filter((_, i) => (gone[i] as number[]).length > 0);
    }
    const gone = (await this.run(
      scripts.RENEW_LEASES,
      ids.map((id) => this.jobKeys(id)[0]),
      args,
    )) as number[];
    return gone.map((position) => ids[position - 1]!);
  }

  async listJobs(query: JobQuery): Promise<JobPage> {
    let bound = '+';
    if (query.cursor) {
      const after = decodeCursor(query.cursor);
      if (after === null) throw new InvalidCursorError();
      bound = `(${after}`;
    }
    const index = query.owner === undefined ? `${this.prefix}jobs` : this.ownerKey(query.owner);
    const statuses = query.statuses?.length ? new Set(query.statuses) : null;
    // A status filter reads the indexes of those statuses, once every job is in them; until then
    // (a prefix written by 0.1, before migrate()) it scans the owner's (or every) job, as 0.1 did.
    const byStatus = statuses !== null && (await this.isStatusIndexed());
    const keys = byStatus ? [...statuses].map((status) => this.statusKey(status, query.owner)) : [index];
    const jobs: Job[] = [];
    const members: string[] = [];
    let more = false;
    // Newest first through the indexes, a window at a time, until the page is full and one more
    // match shows there is a next page (or the indexes end). Each window asks for as many matches
    // as are still wanted, unless most entries are expected not to match (the scan).
    while (!more) {
      const want = statuses && !byStatus ? LIST_WINDOW : query.limit + 1 - jobs.length;
      const windows = await Promise.all(keys.map((key) => this.client.zrevrangebylex(key, bound, '-', 'LIMIT', 0, want)));
      // The newest `want` members of the windows are the newest `want` of the indexes together (each
      // window holds its index's newest `want`), so the merge costs O(want) per index. A member
      // found in two indexes (mid-move) counts once.
      const window = [...new Set(windows.flat())].sort(newestFirst).slice(0, want);
      const hashes = await Promise.all(window.map((member) => this.client.hgetall(this.jobKeys(idOf(member))[0])));
      const gone: string[] = [];
      const stale: string[] = [];
      for (const [i, hash] of hashes.entries()) {
        if (hash.id === undefined) {
          gone.push(window[i]!);
          continue;
        }
        const job = jobFromHash(hash);
        if (statuses && !statuses.has(job.status)) {
          if (byStatus) stale.push(window[i]!);
          continue;
        }
        if (jobs.length === query.limit) {
          more = true;
          break;
        }
        jobs.push(job);
        members.push(window[i]!);
      }
      // Expired jobs met on the way leave the indexes now rather than at the next sweep, and so do
      // status entries their job has left for good.
      await Promise.all([
        ...(gone.length > 0 ? [...new Set([...keys, index, `${this.prefix}jobs`])].map((key) => this.client.zrem(key, ...gone)) : []),
        ...(stale.length > 0 ? keys.map((key) => this.client.zrem(key, ...stale)) : []),
      ]);
      if (window.length < want) break;
      bound = `(${window.at(-1)!}`;
    }
    return { jobs, next: more ? encodeCursor(members.at(-1)!) : null };
  }

  private async isStatusIndexed(): Promise<boolean> {
    this.statusIndexed ||= (await this.client.get(`${this.prefix}version`)) === LAYOUT_VERSION;
    return this.statusIndexed;
  }

  /**
   * Lists every job in the indexes of its status, for a prefix that holds jobs written by 0.1 (which
   * kept none), then sets the `version` key so status filters read those indexes instead of scanning.
   * Run it once every process runs this version: a 0.1 process still writing jobs afterwards would
   * leave them out. Batched, idempotent, and safe from several processes at once (it only adds
   * entries; one that is stale by then is skipped and dropped by listings and the sweep). A prefix
   * that had no jobs when this version first wrote to it is marked at once and needs none of this.
   */
  async migrate(): Promise<void> {
    if (await this.isStatusIndexed()) return;
    let bound = '-';
    for (;;) {
      const batch = await this.client.zrangebylex(`${this.prefix}jobs`, bound, '+', 'LIMIT', 0, MIGRATE_BATCH);
      const fields = await Promise.all(batch.map((member) => this.client.hmget(this.jobKeys(idOf(member))[0], 'status', 'owner')));
      const adds = new Map<string, string[]>();
      for (const [i, [status, owner]] of fields.entries()) {
        if (!status || !owner) continue; // expired: the sweep or a listing drops its entries
        const [s, o] = [JSON.parse(status) as JobStatus, JSON.parse(owner) as string | null];
        for (const key of this.statusKeys(o, s)) addTo(adds, key, batch[i]!);
      }
      await Promise.all([...adds].map(([key, members]) => this.client.zadd(key, ...members.flatMap((member) => [0, member]))));
      if (batch.length < MIGRATE_BATCH) break;
      bound = `(${batch.at(-1)!}`;
    }
    await this.client.set(`${this.prefix}version`, LAYOUT_VERSION);
    this.statusIndexed = true;
  }

  async finishJob(id: string, finish: JobFinish): Promise<JobFinished | null> {
    const expiresAt = epochMs(finish.expiresAt, 'expiresAt');
    const condition = finish.ifLeaseExpiredBy === undefined ? '' : String(epochMs(finish.ifLeaseExpiredBy, 'ifLeaseExpiredBy'));
    const fields: Partial<Job> = {
      status: finish.status,
      finishedAt: finish.finishedAt,
      expiresAt: finish.expiresAt,
      response: finish.response,
      error: finish.error,
      leaseUntil: null,
    };
    if (finish.status === 'completed') fields.progress = 100;
    const ifAttempt = finish.ifAttempt === undefined ? '' : String(finish.ifAttempt);
    const args = [String(expiresAt), condition, ifAttempt, ...Object.entries(fields).flatMap(([field, value]) => [field, JSON.stringify(value)])];
    // The job's four keys (its request dropped in the same step), then outside a Cluster the indexes.
    const keys = this.client.isCluster
      ? this.jobKeys(id)
      : [...this.jobKeys(id), `${this.prefix}expiries`, this.statusKey('queued'), this.statusKey('running'), this.statusKey(finish.status)];
    const reply = (await this.run(scripts.FINISH_JOB, keys, args)) as [number, string[]] | null;
    if (!reply) return null;
    const [applied, flat] = reply;
    const job = jobFromHash(hashOf(flat));
    if (applied !== 1) return { applied: false, job };
    if (this.client.isCluster) {
      const member = indexMember(job.createdAt, job.id);
      await this.client.zadd(`${this.prefix}expiries`, expiresAt, JSON.stringify([job.owner, member]));
      // The reply does not say whether the job was queued or running: it leaves both.
      await this.relist(member, this.statusKeys(job.owner, job.status), this.statusKeys(job.owner, 'queued', 'running'));
    }
    // Rate-limited housekeeping (at most every SWEEP_INTERVAL_MS): not a round trip of every finish.
    await this.sweep();
    return { applied: true, job };
  }

  /**
   * Drops the index entries of jobs that expired (Redis deleted their keys, but not the sorted-set
   * members that point to them), a batch at a time and at most every SWEEP_INTERVAL_MS.
   */
  private async sweep(): Promise<void> {
    const now = Date.now();
    if (now < this.nextSweep) return;
    this.nextSweep = now + SWEEP_INTERVAL_MS;
    try {
      const due = await this.client.zrangebyscore(`${this.prefix}expiries`, '-inf', now - SWEEP_GRACE_MS, 'LIMIT', 0, SWEEP_BATCH);
      if (due.length === 0) return;
      const byIndex = new Map<string, string[]>();
      for (const entry of due) {
        const [owner, member] = JSON.parse(entry) as [string | null, string];
        // Every status, not only the final one: an entry a move left behind goes too.
        for (const key of this.indexesOf(owner)) addTo(byIndex, key, member);
      }
      await Promise.all([...byIndex].map(([key, members]) => this.client.zrem(key, ...members)));
      await this.client.zrem(`${this.prefix}expiries`, ...due);
    } catch {
      // Housekeeping only: the job was finished, and the next sweep picks up where this one failed.
    }
  }

  /** One script on the job's own keys (one slot): the job stays running, so no index moves, on a Cluster or not. */
  async restartJob(id: string, restart: { startedAt: string; leaseUntil: string; ifLeaseExpiredBy: string }): Promise<Job | null> {
    const args = [
      JSON.stringify(restart.startedAt),
      JSON.stringify(restart.leaseUntil),
      String(epochMs(restart.leaseUntil, 'leaseUntil')),
      String(epochMs(restart.ifLeaseExpiredBy, 'ifLeaseExpiredBy')),
    ];
    const [job, , result] = this.jobKeys(id);
    const flat = (await this.run(scripts.RESTART_JOB, [job, result], args)) as string[] | null;
    return flat ? jobFromHash(hashOf(flat)) : null;
  }

  async appendLog(id: string, line: { at: string; level: LogLevel; message: string }): Promise<number | null> {
    const counter = line.level === 'warning' ? 'warnings' : line.level === 'error' ? 'errors' : '';
    const [job, log] = this.jobKeys(id);
    const seq = await this.run(scripts.APPEND_LOG, [job, log], [JSON.stringify([line.at, line.level, line.message]), counter, randomUUID()]);
    return typeof seq === 'number' ? seq : null;
  }

  async readLogs(id: string, after: number, limit: number): Promise<LogLine[]> {
    if (limit < 1) return [];
    // seq n sits at index n - 1, so the page starts right after `after`.
    const start = Math.max(0, after);
    const lines = await this.client.lrange(this.jobKeys(id)[1], start, start + limit - 1);
    return lines.map((text, i) => {
      const [at, level, message] = JSON.parse(text) as [string, LogLevel, string];
      return { seq: start + i + 1, at, level, message };
    });
  }

  async appendResult(id: string, chunk: Uint8Array, attempt?: number, offset?: number): Promise<void> {
    // A view, not a copy: each piece is sent before this resolves, and the caller only reuses the
    // buffer after that.
    const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const [job, , result] = this.jobKeys(id);
    // Without an attempt or an offset the script gets its two arguments as before: no check, nothing more sent.
    const checks = offset !== undefined ? [attempt === undefined ? '' : String(attempt)] : attempt === undefined ? [] : [String(attempt)];
    for (let start = 0; start < bytes.length; start += this.chunkBytes) {
      // Each piece carries its own offset: a retry after a call that stored some pieces only stores the rest.
      const at = offset === undefined ? [] : [String(offset + start)];
      const stored = await this.run(scripts.APPEND_RESULT, [job, result], [bytes.subarray(start, start + this.chunkBytes), randomUUID(), ...checks, ...at]);
      if (stored === 0) throw new Error(`RedisStore: job ${id} is not running`);
      // Each piece is checked on its own: a restart between two pieces stops the rest (the pieces
      // before it went with the result the restart cleared).
      if (stored === -1) throw new StaleAttemptError(id, attempt!);
      if (stored === -2) throw new Error(`RedisStore: job ${id} holds fewer result bytes than offset ${offset! + start}`);
    }
  }

  async readResult(id: string): Promise<AsyncIterable<Uint8Array> | null> {
    const [job, , result] = this.jobKeys(id);
    const length = (await this.run(scripts.RESULT_LENGTH, [job, result], [])) as number;
    if (length < 0) return null;
    const { client, readWindow } = this;
    // Pages of `readWindow` chunks, so only one page of the body is in memory at a time. A page
    // that comes back short means the job expired or was deleted mid-read: fail rather than
    // hand out a truncated body.
    return (async function* resultPages() {
      for (let start = 0; start < length; start += readWindow) {
        const want = Math.min(readWindow, length - start);
        const page = await client.lrangeBuffer(result, start, start + want - 1);
        if (page.length !== want) throw new Error(`RedisStore: the result of job ${id} was deleted while it was read`);
        yield* page;
      }
    })();
  }

  async deleteJob(id: string): Promise<boolean> {
    const fields = (await this.run(scripts.DELETE_JOB, this.jobKeys(id), [])) as [string, string] | null;
    if (!fields) return false;
    const createdAt = JSON.parse(fields[0]) as string;
    const owner = JSON.parse(fields[1]) as string | null;
    const member = indexMember(createdAt, id);
    await Promise.all([
      ...this.indexesOf(owner).map((key) => this.client.zrem(key, member)),
      this.client.zrem(`${this.prefix}expiries`, JSON.stringify([owner, member])),
    ]);
    return true;
  }

  private idemKey(key: string): string {
    return `${this.prefix}idem:${key}`;
  }

  async claimIdempotencyKey(key: string, record: IdempotencyRecord): Promise<IdempotencyClaimResult> {
    const args = [
      String(Date.now()),
      record.fingerprint,
      record.jobId,
      String(record.leaseUntil),
      String(record.expiresAt),
      String(Math.ceil(record.expiresAt)),
    ];
    const reply = (await this.run(scripts.CLAIM_KEY, [this.idemKey(key)], args)) as [number, ...string[]];
    if (reply[0] === 1) return { won: true };
    const [, fingerprint, jobId, state, leaseUntil, expiresAt] = reply as [number, string, string, 'running' | 'done', string, string];
    return { won: false, record: { fingerprint, jobId, state, leaseUntil: Number(leaseUntil), expiresAt: Number(expiresAt) } };
  }

  async renewIdempotencyKey(key: string, jobId: string, leaseUntil: number): Promise<boolean> {
    return (await this.run(scripts.RENEW_KEY, [this.idemKey(key)], [jobId, String(leaseUntil), String(Date.now())])) === 1;
  }

  async completeIdempotencyKey(key: string, jobId: string, expiresAt: number): Promise<boolean> {
    const args = [jobId, String(expiresAt), String(Math.ceil(expiresAt)), String(Date.now())];
    return (await this.run(scripts.COMPLETE_KEY, [this.idemKey(key)], args)) === 1;
  }

  async releaseIdempotencyKey(key: string, jobId: string): Promise<boolean> {
    return (await this.run(scripts.RELEASE_KEY, [this.idemKey(key)], [jobId])) === 1;
  }

  /**
   * Changes under this prefix, from any process: the scripts that change a job PUBLISH on its hash
   * key, and one connection per store (`client.duplicate()`, opened by the first call, closed with the last unwatch or close()) hears them.
   */
  async watchChanges(listener: ChangeListener): Promise<() => Promise<void>> {
    if (this.closed) throw new Error('RedisStore: closed');
    return this.feed.watch(listener);
  }

  /**
   * The connection of the change feed: a duplicate of the user's client that queues its subscribe
   * while it connects (a client made with `enableOfflineQueue: false` would refuse it at once) and
   * gives up on it after a few reconnects (with `maxRetriesPerRequest: null`, as BullMQ users set,
   * it would wait forever, and its reconnects would keep the process alive): the feed then closes
   * and the watchers poll until a later subscribe works.
   */
  private subscriber(): Redis | Cluster {
    if (this.client.isCluster) return this.client.duplicate();
    return (this.client as Redis).duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: 2 });
  }

  /** What the scripts' PUBLISH channels start with: ioredis puts the client's own keyPrefix before every key, channels too. */
  private channelPrefix(): string {
    const { keyPrefix } = this.client.options as { keyPrefix?: string };
    return `${keyPrefix ?? ''}${this.prefix}`;
  }

  /** Closes the connection watchChanges opened, if any; never quits the client it was given. */
  async close(): Promise<void> {
    this.closed = true;
    this.feed.close();
  }
}
