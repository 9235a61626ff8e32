// The in-process executor (the default): concurrency and queue limits, the lease heartbeat, local change notifications.

import { JobAbortError } from '../model/errors.js';
import type { JobError } from '../model/job.js';
import { oneAtATime } from '../util/one-at-a-time.js';
import type { Admission, EndQueued, Executor, ExecutorConfig, Held, RunningJob } from './executor.js';
import { Watchers } from './watchers.js';

interface Queued {
  id: string;
  held: Held;
  start(): RunningJob;
  /** Ends it when it leaves the queue without starting (cancelled, shut down, ended elsewhere). */
  end: EndQueued;
}

/**
 * Everything this process knows about its own jobs. The store remains the truth that every
 * process shares; this only decides what runs here, keeps the leases of what runs here alive,
 * and tells local waiters (SSE, `wait`) at once when one of these jobs changes.
 */
export class Scheduler implements Executor {
  readonly running = new Map<string, RunningJob>();
  readonly #owners = new Map<string, Held>();
  readonly #queue: Queued[] = [];
  readonly #perOwner = new Map<string, number>();
  /** Request body bytes held by admitted jobs, all together (`maxHeldBodyBytes`). */
  #bodyBytes = 0;
  readonly #watchers: Watchers;
  #reservedSlots = 0;
  #reservedPlaces = 0;
  #heartbeat: NodeJS.Timeout | undefined;
  /** Queued jobs whose start the store is recording now. */
  readonly #starting = new Set<Promise<void>>();
  /** Set by close(): queued jobs no longer start (they would only be aborted). */
  closing = false;

  constructor(private readonly config: ExecutorConfig) {
    this.#watchers = new Watchers(config.store, config.logger, config.storeTimeout);
  }

  /**
   * Decides whether a new job of one caller (`key`: see limitKey) may run now, queue, or is
   * refused; an accepted one holds its place. Asked before the request body is read, so a refused
   * request costs no body.
   */
  admit(key: string): Admission {
    const { concurrency, maxQueued, maxPerOwner } = this.config;
    if ((this.#perOwner.get(key) ?? 0) >= maxPerOwner) return { ok: false, reason: 'owner-limit' };
    const queued = this.#queue.length + this.#reservedPlaces;
    let admission: Admission;
    if (this.running.size + this.#reservedSlots < concurrency && queued === 0) admission = { ok: true, queued: false, held: { key, bodyBytes: 0 } };
    else if (queued >= maxQueued) return { ok: false, reason: 'queue-full' };
    else admission = { ok: true, queued: true, held: { key, bodyBytes: 0 } };
    this.#hold(admission, 1);
    return admission;
  }

  /** Counts `bytes` more of an admitted job's request body; `false` (counting nothing) when that would pass `maxHeldBodyBytes`. */
  holdBody(admission: Admission & { ok: true }, bytes: number): boolean {
    if (this.#bodyBytes + bytes > this.config.maxHeldBodyBytes) return false;
    this.#bodyBytes += bytes;
    admission.held.bodyBytes += bytes;
    return true;
  }

  /** Request body bytes held here now, all jobs together. */
  get heldBodyBytes(): number {
    return this.#bodyBytes;
  }

  /** Gives back an admission's place and body bytes (the job could not be recorded or was answered without running). */
  cancel(admission: Admission): void {
    if (!admission.ok) return;
    this.#hold(admission, -1);
    this.#releaseBody(admission.held);
  }

  /** Gives back an admission's body bytes only (queue mode holds no slot or place for it). */
  releaseBody(admission: Admission): void {
    if (admission.ok) this.#releaseBody(admission.held);
  }

  #releaseBody(held: Held): void {
    this.#bodyBytes -= held.bodyBytes;
    held.bodyBytes = 0;
  }

  /** Starts or queues a job, as its admission decided. `start` runs it (for a queued job, once a slot frees and the store agrees). */
  place(admission: Admission & { ok: true }, id: string, start: () => RunningJob, end: EndQueued): void {
    this.#hold(admission, -1);
    this.#count(admission.held.key, 1);
    this.#owners.set(id, admission.held);
    if (!admission.queued) {
      this.#track(id, start());
      return;
    }
    this.#queue.push({ id, held: admission.held, start, end });
    this.#ensureHeartbeat();
    // A slot may have freed while the job was being recorded: nothing else would start it then.
    this.#startNext();
  }

  /**
   * Keeps a job that runs here but was admitted elsewhere (taken from a queue by a worker, or a
   * synchronous guarded request in queue mode): no slot is counted, but its lease is renewed and
   * a cancel recorded by another process stops it, as for the jobs placed here.
   */
  adopt(id: string, job: RunningJob): void {
    this.#track(id, job);
  }

  #hold(admission: Admission & { ok: true }, delta: number): void {
    if (admission.queued) this.#reservedPlaces += delta;
    else this.#reservedSlots += delta;
    this.#count(admission.held.key, delta);
  }

  /** 1-based place of a job in this process's queue, or undefined when it is not queued here. */
  position(id: string): number | undefined {
    const index = this.#queue.findIndex((entry) => entry.id === id);
    return index === -1 ? undefined : index + 1;
  }

  /** Removes a queued job from this process's queue and ends it (see EndQueued); whether it was there. */
  dequeue(id: string, ending: Parameters<EndQueued>[0]): boolean {
    const index = this.#queue.findIndex((entry) => entry.id === id);
    if (index === -1) return false;
    const [entry] = this.#queue.splice(index, 1);
    this.#release(entry!.id, entry!.held);
    void entry!.end(ending);
    return true;
  }

  /** Every job id this process holds, running or queued. */
  held(): string[] {
    return [...this.running.keys(), ...this.#queue.map((entry) => entry.id)];
  }

  /**
   * Subscribes to changes of one job; returns the unsubscribe function. Changes made here always
   * reach it; those of other processes too while `hearsRemote` (the store notifies).
   */
  subscribe(id: string, listener: () => void): () => void {
    return this.#watchers.subscribe(id, listener);
  }

  /** Tells subscribers that a job changed here (progress, log line, status). */
  notify(id: string): void {
    this.#watchers.notify(id);
  }

  /** Whether changes made by other processes reach subscribers now, by the store's own notification. */
  get hearsRemote(): boolean {
    return this.#watchers.live;
  }

  /** Stops every job of this process with the same final status (shutdown). */
  async stopAll(status: 'failed' | 'cancelled', error: JobError, reason: Error): Promise<void> {
    // Starts in flight land first (back in the queue, since closing is set): ended here, never run after close.
    while (this.#starting.size > 0) await Promise.all([...this.#starting]);
    const queued = this.#queue.splice(0);
    for (const entry of queued) this.#release(entry.id, entry.held);
    await Promise.all([...queued.map((entry) => entry.end({ status, error })), ...[...this.running.values()].map((job) => job.stop(status, error, reason))]);
  }

  /** Stops the heartbeat and the store subscription (after close()). */
  async dispose(): Promise<void> {
    this.#stopHeartbeat();
    await this.#watchers.close();
  }

  #stopHeartbeat(): void {
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
  }

  #track(id: string, job: RunningJob): void {
    this.running.set(id, job);
    this.#ensureHeartbeat();
    void job.done.then(() => {
      this.running.delete(id);
      const held = this.#owners.get(id);
      if (held) this.#release(id, held);
      // Subscribers heard of the end from the job's end itself, once the final state was stored.
      this.#startNext();
    });
  }

  #release(id: string, held: Held): void {
    if (this.#owners.get(id) !== held) return;
    this.#owners.delete(id);
    this.#count(held.key, -1);
    this.#releaseBody(held);
  }

  #count(key: string, delta: number): void {
    const next = (this.#perOwner.get(key) ?? 0) + delta;
    if (next <= 0) this.#perOwner.delete(key);
    else this.#perOwner.set(key, next);
  }

  /** Starts queued jobs while there are free slots; a job cancelled while queued is skipped. */
  #startNext(): void {
    // Slots reserved by admissions whose jobs are still being recorded count as taken.
    while (!this.closing && this.running.size + this.#reservedSlots < this.config.concurrency && this.#queue.length > 0) {
      const entry = this.#queue.shift()!;
      const now = Date.now();
      // Reserve the slot at once, so that concurrent completions do not overfill it.
      const placeholder: RunningJob = { stop: async () => undefined, done: new Promise(() => undefined) };
      this.running.set(entry.id, placeholder);
      const starting: Promise<void> = this.config.store
        .startJob(entry.id, { startedAt: new Date(now).toISOString(), leaseUntil: new Date(now + this.config.lease).toISOString() })
        .then(
          (started) => {
            this.running.delete(entry.id);
            if (started && this.closing) {
              // close() came while the store started it: stopAll ends it with the queued ones.
              this.#queue.unshift(entry);
            } else if (started) {
              this.notify(entry.id);
              this.#track(entry.id, entry.start());
            } else {
              // Ended meanwhile (cancelled, or interrupted by another process): the store has its end.
              this.#release(entry.id, entry.held);
              void entry.end(null);
              this.#startNext();
            }
          },
          (err: unknown) => {
            this.running.delete(entry.id);
            this.config.logger.error(`express-bgrs: could not start queued job ${entry.id}: ${(err as Error).message}`);
            // Keep it for the next free slot rather than lose it.
            this.#queue.unshift(entry);
            setTimeout(() => this.#startNext(), 1000).unref();
          },
        );
      this.#starting.add(starting);
      void starting.finally(() => this.#starting.delete(starting));
    }
  }

  /**
   * One batched lease renewal per beat for every job held here. The store answers which of them
   * are no longer queued or running: cancelled (or ended) by another process, so stopped here.
   * The beat is at most a second apart so such a cancel reaches the handler within a second.
   */
  #ensureHeartbeat(): void {
    if (this.#heartbeat) return;
    const every = Math.max(50, Math.min(this.config.lease / 3, 1000));
    // A beat still waiting on a slow store is not joined by another: one renewal in flight at most.
    this.#heartbeat = setInterval(
      oneAtATime(() => this.#beat()),
      every,
    );
    this.#heartbeat.unref();
  }

  async #beat(): Promise<void> {
    const ids = this.held();
    if (ids.length === 0) {
      this.#stopHeartbeat();
      return;
    }
    let gone: string[];
    try {
      gone = await this.config.store.renewLeases(ids, new Date(Date.now() + this.config.lease).toISOString());
    } catch {
      // The store is away; jobs keep running and the next beat tries again.
      return;
    }
    for (const id of gone) {
      if (this.dequeue(id, null)) continue;
      const job = this.running.get(id);
      if (job) void job.stop('cancelled', null, new JobAbortError('BGRS_CANCELLED', 'the job was cancelled'));
    }
  }
}
