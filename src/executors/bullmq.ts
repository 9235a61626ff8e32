// The queue executor (queue mode): jobs wait in a BullMQ queue, on Redis or PostgreSQL, and any process
// running background.work() takes them. What runs in this process is kept by an in-process Scheduler.

import type { BackoffOptions, Job as BullJob, ConnectionOptions, PostgresConnectionOptions, Queue, RateLimiterOptions, Worker } from 'bullmq';
import type { JobError, JobPage } from '../model/job.js';
import { oneAtATime } from '../util/one-at-a-time.js';
import type { Admission, Consumer, EndQueued, Executor, ExecutorConfig, ExecutorFactory, RunningJob, TakeJob } from './executor.js';
import { Scheduler } from './local.js';

type BullModule = typeof import('bullmq');

/** `bullmq(options)`: which queue, on which backend, tuned how. */
export interface BullmqOptions {
  /** The BullMQ queue name. Defaults to `'bgrs'`. */
  name?: string;
  /** `'redis'` (the default) or `'postgres'` (BullMQ 6's PostgreSQL backend: no Redis at all). */
  backend?: 'redis' | 'postgres';
  /**
   * What BullMQ connects with. Redis: ioredis options or an ioredis instance (BullMQ requires
   * `maxRetriesPerRequest: null` of a worker's connection; options are given it). PostgreSQL: a
   * connection string, a pool config (with BullMQ's `schema` and `migrate`), or a `pg.Pool`.
   */
  connection: ConnectionOptions | PostgresConnectionOptions;
  /** BullMQ's key prefix (Redis). Defaults to BullMQ's (`'bull'`). */
  prefix?: string;
  /** How long a worker's lock on a job lasts, in ms, before it counts as stalled (BullMQ default 30 000). */
  lockDuration?: number;
  /** How often stalled jobs are looked for, in ms (BullMQ default 30 000). */
  stalledInterval?: number;
  /** How often a job may stall before it fails (BullMQ default 1). */
  maxStalledCount?: number;
  /** BullMQ's rate limiter for the workers (`{ max, duration }`). */
  limiter?: RateLimiterOptions;
  /** How often BullMQ tries to take a job through a failure of its own (a store outage at the take). Defaults to 5. */
  attempts?: number;
  /** Backoff between those attempts. Defaults to exponential from 1 s. */
  backoff?: number | BackoffOptions;
  /**
   * How often, in ms, this process hands the queue again the jobs the store holds `queued` whose
   * hand-over may have been lost (a web process killed between recording a job and enqueueing it).
   * Harmless when it was not lost: BullMQ keeps one job per id. `0` turns it off. Defaults to 30 000.
   */
  recoverInterval?: number;
}

/** Stale queued jobs one sweep looks at, at most (pages of 1000, oldest pages last). */
const SWEEP_PAGES = 10;

/** The BullMQ job of a bgrs job: its data names the bgrs id only; the request waits in the bgrs store. */
interface JobData {
  id: string;
}

/** BullMQ ids may not be all digits or hold ':'; a bgrs id (a UUID) under a prefix is neither. */
export function queueJobId(id: string): string {
  return `bgrs_${id}`;
}

let loading: Promise<BullModule> | undefined;

/** bullmq is an optional peer: loaded on first use, with an error that says how to install it. */
function loadBullmq(): Promise<BullModule> {
  loading ??= import('bullmq').catch((err: unknown) => {
    loading = undefined;
    throw new Error(
      `express-bgrs: queue mode needs the bullmq package (6.x), an optional peer dependency: npm install bullmq (${(err as Error)?.message ?? String(err)})`,
    );
  });
  return loading;
}

class BullmqExecutor implements Executor {
  readonly remote = true;
  /** What runs here: jobs taken by this process's worker, and synchronous guarded requests. */
  readonly #local: Scheduler;
  #queue: Promise<Queue<JobData>> | undefined;
  readonly #consumers = new Set<Worker<JobData>>();
  #sweeper: NodeJS.Timeout | undefined;

  constructor(
    private readonly config: ExecutorConfig,
    private readonly options: BullmqOptions,
  ) {
    if (config.store.local === true || typeof config.store.readRequest !== 'function') {
      throw new TypeError(
        'express-bgrs: queue mode needs a store that every web and worker process shares and that keeps requests (readRequest): use RedisStore or PostgresStore, not the MemoryStore.',
      );
    }
    this.#local = new Scheduler(config);
    const every = options.recoverInterval ?? 30_000;
    if (every > 0) {
      this.#sweeper = setInterval(
        oneAtATime(() => this.#sweep()),
        every,
      );
      this.#sweeper.unref();
    }
  }

  /**
   * Hands over again every job recorded `queued` for queue mode (no lease) longer ago than a
   * hand-over can take. The worker that takes a duplicate finds the job no longer queued and skips it.
   */
  async #sweep(): Promise<void> {
    const before = Date.now() - 2 * this.config.storeTimeout;
    const stale: string[] = [];
    let cursor: string | null = null;
    try {
      for (let page = 0; page < SWEEP_PAGES; page++) {
        const { jobs, next }: JobPage = await this.config.store.listJobs({ statuses: ['queued'], limit: 1000, cursor });
        for (const job of jobs) if (job.status === 'queued' && job.leaseUntil === null && Date.parse(job.createdAt) < before) stale.push(job.id);
        if (!next) break;
        cursor = next;
      }
      if (stale.length === 0) return;
      const queue = await this.#queueOf();
      await queue.addBulk(stale.map((id) => ({ name: 'bgrs', data: { id }, opts: this.#jobOptions(id) })));
    } catch (err) {
      this.config.logger.error(`express-bgrs: could not hand queued jobs to the queue again: ${(err as Error)?.message ?? String(err)}`);
    }
  }

  #jobOptions(id: string): { jobId: string; attempts: number; backoff: number | BackoffOptions; removeOnComplete: true; removeOnFail: true } {
    const { attempts = 5, backoff = { type: 'exponential', delay: 1000 } } = this.options;
    // The same jobId for the same bgrs job: a hand-over repeated after a lost reply stores one job.
    // Removed when done or failed, so that a later sweep can hand a job over again.
    return { jobId: queueJobId(id), attempts, backoff, removeOnComplete: true, removeOnFail: true };
  }

  /** BullMQ finds a stalled job within lockDuration + stalledInterval (30 s + 30 s by default). */
  get lapseGrace(): number {
    return (this.options.lockDuration ?? 30_000) + (this.options.stalledInterval ?? 30_000);
  }

  get running(): ReadonlyMap<string, RunningJob> {
    return this.#local.running;
  }

  get closing(): boolean {
    return this.#local.closing;
  }

  set closing(value: boolean) {
    this.#local.closing = value;
  }

  get heldBodyBytes(): number {
    return this.#local.heldBodyBytes;
  }

  #base(): { connection: ConnectionOptions; prefix?: string } {
    const base: { connection: ConnectionOptions; prefix?: string } = { connection: this.options.connection as ConnectionOptions };
    if (this.options.prefix !== undefined) base.prefix = this.options.prefix;
    return base;
  }

  #queueOf(): Promise<Queue<JobData>> {
    this.#queue ??= loadBullmq().then((mod) => {
      const name = this.options.name ?? 'bgrs';
      // Fail fast when the backend is away: the client gets a 503 to retry, not a hung request.
      const options = { ...this.#base(), skipWaitingForReady: true };
      const queue =
        this.options.backend === 'postgres'
          ? (new mod.Queue(name, options as never, mod.createPostgresBackend) as unknown as Queue<JobData>)
          : new mod.Queue<JobData>(name, options);
      // A producer must not hang on an unreachable backend: a failed add becomes a 503.
      queue.on('error', (err) => this.config.logger.error(`express-bgrs: queue error: ${err.message}`));
      return queue;
    });
    return this.#queue;
  }

  /** Every job placed here is admitted: the queue, not this process, bounds what waits. */
  admit(key: string): Admission {
    return { ok: true, queued: false, held: { key, bodyBytes: 0 } };
  }

  holdBody(admission: Admission & { ok: true }, bytes: number): boolean {
    return this.#local.holdBody(admission, bytes);
  }

  cancel(admission: Admission): void {
    // Only body bytes were held for it (admit takes no slot here): hold them back.
    this.#local.releaseBody(admission);
  }

  /** A job a client waits for on this connection runs here at once (it is recorded running). */
  place(admission: Admission & { ok: true }, id: string, start: () => RunningJob, _end: EndQueued): void {
    this.cancel(admission);
    this.#local.adopt(id, start());
  }

  async enqueue(_admission: Admission & { ok: true }, id: string): Promise<void> {
    const queue = await this.#queueOf();
    const added = queue.add('bgrs', { id }, this.#jobOptions(id));
    let timer: NodeJS.Timeout | undefined;
    try {
      // An add that times out may still land: the worker that takes it finds the job failed and skips it.
      await Promise.race([
        added,
        new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${this.config.storeTimeout} ms`)), this.config.storeTimeout);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      added.catch(() => undefined);
    }
  }

  /** A job that waits in the queue is taken out (the store's cancel is what counts; a worker that takes it anyway skips it). */
  dequeue(id: string, _ending: Parameters<EndQueued>[0]): boolean {
    void this.#queueOf()
      .then((queue) => queue.remove(queueJobId(id)))
      .catch(() => undefined);
    return false;
  }

  position(): number | undefined {
    return undefined;
  }

  held(): string[] {
    return this.#local.held();
  }

  adopt(id: string, job: RunningJob): void {
    this.#local.adopt(id, job);
  }

  stopAll(status: 'failed' | 'cancelled', error: JobError, reason: Error): Promise<void> {
    return this.#local.stopAll(status, error, reason);
  }

  async dispose(): Promise<void> {
    clearInterval(this.#sweeper);
    await this.#local.dispose();
    await Promise.all([...this.#consumers].map((worker) => worker.close()));
    const queue = this.#queue;
    this.#queue = undefined;
    if (queue) await queue.then((q) => q.close()).catch(() => undefined);
  }

  subscribe(id: string, listener: () => void): () => void {
    return this.#local.subscribe(id, listener);
  }

  notify(id: string): void {
    this.#local.notify(id);
  }

  get hearsRemote(): boolean {
    return this.#local.hearsRemote;
  }

  consume(take: TakeJob, options: { concurrency: number }): Consumer {
    let worker: Worker<JobData> | undefined;
    let closed = false;
    const ready = loadBullmq().then((mod) => {
      if (closed) return;
      const { lockDuration, stalledInterval, maxStalledCount, limiter } = this.options;
      const tuning = Object.fromEntries(Object.entries({ lockDuration, stalledInterval, maxStalledCount, limiter }).filter(([, value]) => value !== undefined));
      const name = this.options.name ?? 'bgrs';
      const processor = async (job: BullJob<JobData>, token?: string): Promise<void> => {
        const verdict = await take(job.data.id, job.attemptsStarted);
        if (verdict === 'requeue') {
          // Back to waiting, for this or another worker: not a failure.
          await job.moveToWait(token);
          throw new mod.WaitingError();
        }
      };
      const workerOptions = { ...this.#base(), ...tuning, concurrency: options.concurrency };
      worker =
        this.options.backend === 'postgres'
          ? (new mod.Worker(name, processor as never, workerOptions as never, mod.createPostgresBackend) as unknown as Worker<JobData>)
          : new mod.Worker<JobData>(name, processor, workerOptions);
      worker.on('error', (err) => this.config.logger.error(`express-bgrs: queue worker error: ${err.message}`));
      this.#consumers.add(worker);
    });
    ready.catch((err: unknown) => this.config.logger.error((err as Error)?.message ?? String(err)));
    return {
      close: async () => {
        closed = true;
        await ready.catch(() => undefined);
        if (!worker) return;
        this.#consumers.delete(worker);
        await worker.close();
      },
    };
  }
}

/** The queue executor: `bgrs({ store, executor: bullmq({ name, connection }) })`. */
export function bullmq(options: BullmqOptions): ExecutorFactory {
  if (!options || typeof options !== 'object' || options.connection === undefined) {
    throw new TypeError('express-bgrs: bullmq() needs `connection`: ioredis options or instance, or for backend "postgres" a URL, pool config or pg.Pool.');
  }
  if (options.recoverInterval !== undefined && !(Number.isFinite(options.recoverInterval) && options.recoverInterval >= 0)) {
    throw new TypeError(`express-bgrs: bullmq(): \`recoverInterval\` must be a number of milliseconds ≥ 0, received \`${String(options.recoverInterval)}\`.`);
  }
  if (options.backend !== undefined && options.backend !== 'redis' && options.backend !== 'postgres') {
    throw new TypeError(`express-bgrs: bullmq(): \`backend\` must be "redis" or "postgres", received \`${String(options.backend)}\`.`);
  }
  return (config: ExecutorConfig) => new BullmqExecutor(config, options);
}
