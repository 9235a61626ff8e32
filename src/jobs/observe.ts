// Reading jobs as clients see them (a lapsed lease becomes `failed: interrupted`), and waiting for them to change.
import type { Job } from '../model/job.js';
import { endingNow, isFinal, leaseExpired } from '../model/job.js';
import type { Runtime } from './runtime.js';

/**
 * How often a watcher re-reads a job when changes made by other processes cannot reach it (the
 * store does not notify, or its subscription is not live): polling is then the only way to see them.
 */
const POLL_MS = 250;

/**
 * How often, on average, a watcher re-reads its job although nothing woke it, while the store's
 * notifications are live: only a safety net, for a notification that went missing without a
 * reconnect, and for a job whose process died (readJob records it interrupted, which no process
 * would announce). 30 s: a dead process's job cannot be declared interrupted before its lease
 * (30 s by default) passes anyway, so polling faster buys little, while 1,000 idle streams cost
 * about 33 reads/s. Each wait is jittered (±25 %) so that streams opened together (a reconnect
 * storm after a deploy) do not re-read together.
 */
const SAFETY_POLL_MS = 30_000;

/**
 * The job, as every process must report it: one whose process died (its lease passed) is recorded
 * `failed: interrupted` by whoever reads it first. The store makes that conditional on the lease,
 * so a live process that just renewed it wins.
 */
export async function readJob(rt: Runtime, id: string): Promise<Job | null> {
  const job = await rt.config.store.getJob(id);
  // In queue mode the queue hands a job whose worker died to another worker first (which may run
  // it again): readers wait that long more before they record it interrupted.
  const by = Date.now() - (rt.executor.lapseGrace ?? 0);
  if (!job || !leaseExpired(job, by)) return job;
  return interrupt(rt, id, by);
}

/** Records a job whose lease lapsed by `by` (epoch ms) `failed: interrupted`; resolves the job as stored, or null. */
export async function interrupt(rt: Runtime, id: string, by = Date.now()): Promise<Job | null> {
  const finished = await rt.config.store.finishJob(id, {
    status: 'failed',
    ...endingNow(rt.config.ttl),
    response: null,
    error: { type: 'interrupted', message: 'the process running the job stopped renewing its lease (it crashed or lost the store)' },
    ifLeaseExpiredBy: new Date(by).toISOString(),
  });
  // Not applied: the lease was renewed meanwhile, or another reader recorded the end first.
  return finished?.job ?? null;
}

/**
 * Why a watcher woke: `change` (a change was announced, locally or by the store, or changes may
 * have been missed), `poll` (the short poll of a store that cannot notify), `safety` (the rare
 * re-read while notifications are live: nothing is known to have changed).
 */
export type Wake = 'change' | 'poll' | 'safety';

/** One watcher of one job: subscribed from creation to close, so no change between two waits goes unheard. */
export interface JobWatch {
  /**
   * Resolves at the job's next change, at once when one came since the last call, or when the
   * poll interval passes (short or safety, see Wake), or on abort. `job` is the job as last read:
   * a wait never outlasts the moment its lease lapses (plus the queue's grace), so that a dead
   * process's job is declared interrupted on time. `maxMs` caps the wait.
   */
  next(job: Job | null, signal?: AbortSignal, maxMs?: number): Promise<Wake>;
  close(): void;
}

/** The ms until the next safety re-read of `job`: jittered SAFETY_POLL_MS, or less when its lease lapses sooner. */
function safetyMs(rt: Runtime, job: Job | null): number {
  const jittered = SAFETY_POLL_MS * (0.75 + Math.random() * 0.5);
  const lease = job?.leaseUntil ? Date.parse(job.leaseUntil) : Number.NaN;
  if (Number.isNaN(lease)) return jittered;
  // Just past the lapse (50 ms for clocks and the reader's own latency), never a busy loop.
  const lapse = lease + (rt.executor.lapseGrace ?? 0) + 50 - Date.now();
  return Math.min(jittered, Math.max(POLL_MS, lapse));
}

/**
 * Watches one job. `stale: true` when the caller's copy of the job was read before this call: the
 * first `next` then resolves at once (`change`), since a change in between would go unheard.
 */
export function watchJob(rt: Runtime, id: string, options: { stale?: boolean } = {}): JobWatch {
  let changed = options.stale === true;
  let wake: (() => void) | undefined;
  const unsubscribe = rt.executor.subscribe(id, () => {
    changed = true;
    wake?.();
  });
  return {
    next(job, signal, maxMs = Number.POSITIVE_INFINITY) {
      if (changed || signal?.aborted) {
        changed = false;
        return Promise.resolve('change');
      }
      const hears = rt.executor.hearsRemote === true;
      const interval = hears ? safetyMs(rt, job) : POLL_MS;
      return new Promise<Wake>((resolve) => {
        const done = (why: Wake): void => {
          clearTimeout(timer);
          wake = undefined;
          signal?.removeEventListener('abort', aborted);
          changed = false;
          resolve(why);
        };
        const aborted = (): void => done('change');
        const timer = setTimeout(() => done(hears ? 'safety' : 'poll'), Math.max(0, Math.min(interval, maxMs)));
        wake = () => done('change');
        signal?.addEventListener('abort', aborted, { once: true });
      });
    },
    close() {
      wake = undefined;
      unsubscribe();
    },
  };
}

/** Waits until the job is final or `seconds` pass; resolves the job as last read (null when gone). */
export async function waitForFinal(rt: Runtime, id: string, seconds: number, signal?: AbortSignal): Promise<Job | null> {
  const deadline = Date.now() + seconds * 1000;
  // Subscribed before the first read: a change between that read and the first wait is not missed.
  const watch = watchJob(rt, id);
  try {
    for (;;) {
      const job = await readJob(rt, id);
      const left = deadline - Date.now();
      if (!job || isFinal(job.status) || left <= 0 || signal?.aborted) return job;
      await watch.next(job, signal, left);
    }
  } finally {
    watch.close();
  }
}
