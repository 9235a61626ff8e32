// background.work(app): this process takes jobs from the queue (queue mode) and replays each through
// the app, as the web process would have in-process: progress, log and the result go to the store.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Request } from 'express';
import type { RunningJob, TakeJob } from '../executors/executor.js';
import { JobEnd } from '../jobs/end.js';
import { interrupt } from '../jobs/observe.js';
import { runJob } from '../jobs/runner.js';
import type { Runtime } from '../jobs/runtime.js';
import { JobAbortError } from '../model/errors.js';
import type { Job, JobError } from '../model/job.js';
import { isFinal, leaseExpired } from '../model/job.js';
import { decodeRequest, type StoredRequest } from '../replay/stored.js';
import type { IdempotencyStore, Store, TakenJob } from '../stores/store.js';
import { missingIdempotencyMethods } from '../stores/store.js';
import { intoApp } from './dispatch.js';
import { resolveOwner } from './owner.js';

/** `background.work(app, options)`. */
export interface WorkOptions {
  /** How many jobs this process runs at once. Defaults to the `concurrency` option. */
  concurrency?: number;
}

export interface WorkCloseOptions {
  /** How long running jobs may go on before they are ended `failed: shutdown`, in ms. Defaults to `0`. */
  grace?: number;
}

/** A running queue worker. */
export interface BgrsWorker {
  /**
   * Stops taking jobs, lets running ones finish within `grace`, then ends the rest: a job that is
   * safe to run again goes back to the queue (another worker restarts it), any other fails `shutdown`.
   */
  close(options?: WorkCloseOptions): Promise<void>;
}

/** An Express app (or any `(req, res)` handler) the worker replays jobs through. */
export type ReplayTarget = (req: IncomingMessage, res: ServerResponse) => void;

/** The start a take records: when, and the lease it begins with. */
type Start = { startedAt: string; leaseUntil: string };

const SHUTDOWN: JobError = { type: 'shutdown', message: 'the worker shut down before the job finished' };

export function startWorker(rt: Runtime, app: ReplayTarget, options: WorkOptions = {}): BgrsWorker {
  const { executor, config } = rt;
  const { consume, adopt } = executor;
  if (!consume || !adopt) {
    throw new TypeError('express-bgrs: background.work() takes jobs from a queue: create the instance with bgrs({ store, executor: bullmq({ connection }) }).');
  }
  if (typeof app !== 'function') throw new TypeError('express-bgrs: background.work(app) needs the Express app to replay jobs through.');
  const concurrency = options.concurrency ?? config.concurrency;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new TypeError(`express-bgrs: background.work(): \`concurrency\` must be an integer ≥ 1, received \`${String(concurrency)}\`.`);
  }
  const { store } = config;
  /** The jobs this worker runs, and whether each may run again elsewhere. */
  const running = new Map<string, { run: RunningJob; rerun: boolean }>();
  /** Jobs torn down at close to run again elsewhere: their take hands them back to the queue. */
  const handedBack = new Set<string>();
  let closing = false;

  /** Ends a job this worker could not run, as failed, with the reason. */
  const fail = (id: string, type: string, message: string): Promise<unknown> =>
    new JobEnd(config, id, { notify: () => executor.notify(id) }).end({ status: 'failed', response: null, error: { type, message } });

  /**
   * The job and its request, and whether this take started it: one store call where the store has
   * takeJob, else getJob, readRequest and (for a queued job) startJob. `null`: nothing to run (the
   * job is unknown or final, or another worker started it in between). Throws while another
   * worker's lease on it runs.
   */
  async function read(id: string, lease: Start): Promise<{ job: Job; bytes: Buffer | null; started: boolean } | null> {
    if (store.takeJob) {
      // A take of this job whose call failed here may have started it all the same (its reply was
      // lost): this one sends the same start, so that it can tell that start for its own.
      const remembered = lostTakes.get(id);
      const lost = remembered && !lapsed(remembered) ? remembered : undefined;
      const start = lost ?? lease;
      let taken: TakenJob | null;
      try {
        taken = await store.takeJob(id, start);
      } catch (err) {
        rememberLost(id, start);
        throw err;
      }
      lostTakes.delete(id);
      if (!taken) return null;
      const ours = !taken.started && lost !== undefined && taken.job.status === 'running' && taken.job.startedAt === start.startedAt;
      if (!taken.started && !ours && !leaseExpired(taken.job)) throw new Error(`job ${id} is running elsewhere`);
      return { job: taken.job, bytes: taken.request, started: taken.started || ours };
    }
    const job = await store.getJob(id);
    // Cancelled while it waited, ended by a crash rule, expired or deleted: nothing to run.
    if (!job || isFinal(job.status)) return null;
    // Its lease still runs: another worker has it (the queue handed it out twice). Try later: by
    // then it has ended, or its lease lapsed and the crash rule applies.
    if (job.status === 'running' && !leaseExpired(job)) throw new Error(`job ${id} is running elsewhere`);
    const bytes = await store.readRequest!(id);
    if (closing || job.status === 'running') return { job, bytes, started: false };
    // Cancelled (or taken by another worker) between the read and now.
    if (!(await store.startJob(id, lease))) return null;
    return { job: { ...job, status: 'running', ...lease }, bytes, started: true };
  }

  /**
   * Takes whose takeJob call failed here, by job: the queue retries such a take (BullMQ, with
   * backoff), most often in this process. Kept while the start they sent is younger than a lease.
   */
  const lostTakes = new Map<string, Start>();
  /** Whether a start made by a lost take is a lease old: by now it has lapsed, and the crash rule is right. */
  const lapsed = (start: Start): boolean => Date.now() - Date.parse(start.startedAt) >= config.lease;
  function rememberLost(id: string, start: Start): void {
    for (const [other, old] of lostTakes) if (lapsed(old)) lostTakes.delete(other);
    lostTakes.set(id, start);
  }

  const take: TakeJob = async (id) => {
    if (closing) return 'requeue';
    const now = Date.now();
    const lease = { startedAt: new Date(now).toISOString(), leaseUntil: new Date(now + config.lease).toISOString() };
    const taken = await read(id, lease);
    if (!taken) return 'done';
    let { job } = taken;
    const { bytes, started } = taken;
    if (!bytes) {
      await fail(id, 'request_lost', 'the stored request of the job is gone');
      return 'done';
    }
    let request: StoredRequest;
    try {
      request = decodeRequest(bytes);
    } catch (err) {
      await fail(id, 'request_unreadable', (err as Error).message);
      return 'done';
    }
    if (closing) {
      // Not started yet: back to the queue, untouched.
      if (!started) return 'requeue';
      // Started by a take that was under way when close() began (close() has its list of running
      // jobs already): its rule applies here, before its handler runs.
      if (request.rerun && store.restartJob) {
        await store.renewLeases([id], new Date(Date.now() - 1).toISOString()).catch(() => undefined);
        return 'requeue';
      }
      await fail(id, SHUTDOWN.type, SHUTDOWN.message);
      return 'done';
    }
    if (!started) {
      // Running, its lease lapsed: the worker that ran it died. Run it again only when that is
      // safe; else readJob records it `failed: interrupted`, and its handler never runs a second time.
      if (!request.rerun || !store.restartJob) {
        await interrupt(rt, id, now);
        return 'done';
      }
      const restarted = await store.restartJob(id, { ...lease, ifLeaseExpiredBy: lease.startedAt });
      if (!restarted) {
        // Not applied: it ended meanwhile, or another worker restarted it first.
        const current = await store.getJob(id);
        if (current && !isFinal(current.status)) throw new Error(`job ${id} is running elsewhere`);
        return 'done';
      }
      job = restarted;
    }
    executor.notify(id);
    const run = runJob(config, rt.replayer, id, request.envelope, intoApp(app, request.parsed), {
      end: new JobEnd(config, id, {
        notify: () => executor.notify(id),
        attempt: job.attempt,
        ttl: request.run?.ttl,
        onEnd: request.idempotency && keyEnd(request.idempotency, id),
      }),
      attempt: job.attempt,
      timeout: request.run?.timeout,
      onChange: () => executor.notify(id),
      // A job detached before the route's own auth ran is anonymous so far: the replay tells whose it is.
      deriveOwner: job.owner === null ? (replayed) => resolveOwner(config.owner, replayed as Request) : undefined,
    });
    running.set(id, { run, rerun: request.rerun === true });
    adopt.call(executor, id, run);
    await run.done;
    running.delete(id);
    return handedBack.delete(id) ? 'requeue' : 'done';
  };

  /**
   * The end of a job that executes an Idempotency-Key (claimed by the web that accepted it): the
   * key is completed when the handler answered (a retry replays it, or gets 410), freed when it
   * ended without an answer. Not known how an unanswered job ended (the store is away): the key is
   * left to the next claim, which reads the job before anything runs again.
   */
  function keyEnd(idempotency: { key: string; ttl: number }, id: string): ((job: Job | null, answered: boolean) => Promise<void>) | undefined {
    if (missingIdempotencyMethods(store).length > 0) return undefined;
    const keys = store as Store & IdempotencyStore;
    return async (job, answered) => {
      // The handler answered: the key is done even when the end could not be recorded (a retry
      // then gets the job's answer or 410, never a second run), as the guard does in-process.
      if (answered) await keys.completeIdempotencyKey(idempotency.key, id, Date.now() + idempotency.ttl);
      else if (job !== null) await keys.releaseIdempotencyKey(idempotency.key, id);
    };
  }

  /**
   * Shutdown of a job that is safe to run again: torn down with no end recorded, its lease made
   * to lapse (so that the worker that takes it next restarts it at once), and handed back to the
   * queue by its take.
   */
  async function handBack(id: string, run: RunningJob, reason: Error): Promise<void> {
    handedBack.add(id);
    await run.abandon!(reason);
    await store.renewLeases([id], new Date(Date.now() - 1).toISOString()).catch(() => undefined);
  }

  const consumer = consume.call(executor, take, { concurrency });
  return {
    async close(closeOptions: WorkCloseOptions = {}): Promise<void> {
      closing = true;
      const closed = consumer.close();
      const grace = closeOptions.grace ?? 0;
      const pending = [...running.values()].map(({ run }) => run.done);
      if (grace > 0 && pending.length) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([Promise.all(pending), new Promise((resolve) => (timer = setTimeout(resolve, grace)))]);
        clearTimeout(timer);
      }
      const reason = new JobAbortError('BGRS_SHUTDOWN', 'the worker is shutting down');
      await Promise.all(
        [...running].map(([id, { run, rerun }]) =>
          rerun && run.abandon && store.restartJob ? handBack(id, run, reason) : run.stop('failed', SHUTDOWN, reason),
        ),
      );
      await closed;
    },
  };
}
