// The executor seam: where recorded jobs run (in this process by default; a queue's workers next),
// and what an executor holds for each job it runs.

import type { JobError } from '../model/job.js';
import type { Store } from '../stores/store.js';
import type { Logger } from '../util/logger.js';

export interface RunningJob {
  /** Ends the job now with this status (cancel, shutdown); the handler's signal aborts with `reason`. */
  stop(status: 'failed' | 'cancelled', error: JobError | null, reason: Error): Promise<void>;
  /** Resolves when the final state is in the store. */
  readonly done: Promise<void>;
  /**
   * Queue mode: stops the handler (its signal aborts with `reason`) without recording an end, so
   * that the job runs again elsewhere; `done` resolves once the run is torn down.
   */
  abandon?(reason: Error): Promise<void>;
}

/**
 * How a job held here ends without having started: cancelled while queued, shut down, or found
 * ended by another process (`null`: the store holds its end already). The job's one end records it
 * and runs its end hooks; the executor only says why. Never rejects.
 */
export type EndQueued = (ending: { status: 'failed' | 'cancelled'; error: JobError | null } | null) => Promise<unknown>;

/** What one job holds here while queued or running: a place in its caller's limit, and body bytes. */
export interface Held {
  key: string;
  bodyBytes: number;
}

/**
 * The answer to "may this job start or queue here?". An accepted admission holds its place (a
 * slot or a queue place, and one of the owner's) until `run`, `enqueue` or `cancel` uses it, so
 * that requests admitted while their job is being written to the store cannot overfill anything.
 */
export type Admission = { ok: true; queued: boolean; held: Held } | { ok: false; reason: 'queue-full' | 'owner-limit' };

/**
 * Runs one job taken from a queue, in this process. Resolves `'done'` when it has ended (or was not
 * to run: cancelled while it waited), `'requeue'` to put it back for another worker (this one is
 * closing). Rejects on a failure of the store: the queue tries again later. `attempt` counts from 1.
 */
export type TakeJob = (id: string, attempt: number) => Promise<'done' | 'requeue'>;

/** A queue consumer (`background.work()`): takes jobs until closed. */
export interface Consumer {
  /** Stops taking jobs; resolves once the jobs it took have ended (end them first: see `stopAll`). */
  close(): Promise<void>;
}

/** What an executor reads of the bgrs options. */
export interface ExecutorConfig {
  store: Store;
  logger: Logger;
  concurrency: number;
  maxQueued: number;
  maxPerOwner: number;
  maxHeldBodyBytes: number;
  lease: number;
  ttl: number;
  /** How long a call to a backend may take, in ms (a queue's add as well as the store). */
  storeTimeout: number;
}

/**
 * Where recorded jobs run. bgrs records a job in the store, then hands it over here with `place`;
 * everything else an executor does is report what runs or waits here, and stop it. The in-process
 * `Scheduler` is the default; a queue-backed executor plugs in the same way.
 */
export interface Executor {
  /** Jobs running here, by id. */
  readonly running: ReadonlyMap<string, RunningJob>;
  /** Set by close(): queued jobs no longer start. */
  closing: boolean;
  /** Whether a new job of one caller (its limit key) may run or wait here; an accepted admission holds its place until `place` or `cancel`. Asked before the body is read. */
  admit(key: string): Admission;
  /** Counts `bytes` more of an admitted job's request body; `false` (counting nothing) beyond the budget. */
  holdBody(admission: Admission & { ok: true }, bytes: number): boolean;
  /** Request body bytes held by admitted jobs, all together. */
  readonly heldBodyBytes: number;
  /** Gives back an admission that will not be placed (the job could not be recorded, or was answered without running). */
  cancel(admission: Admission): void;
  /** Hands over a recorded job: `start` runs it (now or when its turn comes); `end` ends it if it never starts. */
  place(admission: Admission & { ok: true }, id: string, start: () => RunningJob, end: EndQueued): void;
  /** Takes a job that has not started out of the queue and ends it with `ending` (see EndQueued); whether it was waiting here. */
  dequeue(id: string, ending: Parameters<EndQueued>[0]): boolean;
  /** 1-based place of a job in this executor's queue, or undefined. */
  position(id: string): number | undefined;
  /** Every job id held here, running or waiting. */
  held(): string[];
  /** Ends every job held here with this final status (shutdown). */
  stopAll(status: 'failed' | 'cancelled', error: JobError, reason: Error): Promise<void>;
  /** Stops the executor's own timers and connections (after stopAll). */
  dispose(): void | Promise<void>;
  /**
   * Queue mode: jobs may run in another process. Such a job is recorded `queued` with its request
   * (the store keeps it for the worker) and handed over with `enqueue`; only a job a client waits
   * for on this connection (a synchronous guarded request) is still `place`d here.
   */
  readonly remote?: boolean;
  /** Queue mode: hands a recorded job to the queue. Rejects when the queue cannot take it (the caller ends the job failed). */
  enqueue?(admission: Admission & { ok: true }, id: string): Promise<void>;
  /** Queue mode: starts taking jobs from the queue in this process, each run by `take`. */
  consume?(take: TakeJob, options: { concurrency: number }): Consumer;
  /**
   * Queue mode: how long after a job's lease lapsed readers wait before they record it
   * `failed: interrupted`, in ms: the queue's stall detection hands it to another worker first,
   * which decides (run it again, or record the end). Defaults to 0.
   */
  readonly lapseGrace?: number;
  /** Queue mode: keeps a job this process runs for the queue (see Scheduler.adopt). */
  adopt?(id: string, job: RunningJob): void;
  /**
   * Subscribes to changes of one job made here (and, while `hearsRemote`, by other processes);
   * returns the unsubscribe function.
   */
  subscribe(id: string, listener: () => void): () => void;
  /** Tells subscribers that a job changed here. */
  notify(id: string): void;
  /**
   * Whether changes made by other processes reach subscribers now, through the store's own
   * notifications (`watchChanges`): watchers then re-read only as a safety net. Unset or false:
   * they poll. Defaults to `false`.
   */
  readonly hearsRemote?: boolean;
}

/** Builds the executor of one bgrs() instance from its options (the `executor` option). */
export type ExecutorFactory = (config: ExecutorConfig) => Executor;
