// Reading jobs as clients see them (a lapsed lease becomes `failed: interrupted`), and waiting for them to change.
import type { Job } from '../model/job.js';
import { endingNow, isFinal, leaseExpired } from '../model/job.js';
import type { Runtime } from './runtime.js';

/** How often a watcher re-reads a job run by another process; local jobs wake their watchers at once. */
export const POLL_MS = 250;

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

/** Resolves after the next local change of the job, or after `ms`, whichever comes first. */
export function nextChange(rt: Runtime, id: string, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      unsubscribe();
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    const unsubscribe = rt.executor.subscribe(id, done);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Waits until the job is final or `seconds` pass; resolves the job as last read (null when gone). */
export async function waitForFinal(rt: Runtime, id: string, seconds: number, signal?: AbortSignal): Promise<Job | null> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const job = await readJob(rt, id);
    const left = deadline - Date.now();
    if (!job || isFinal(job.status) || left <= 0 || signal?.aborted) return job;
    await nextChange(rt, id, Math.min(left, POLL_MS), signal);
  }
}
