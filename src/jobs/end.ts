// The one end of a job, whatever ends it (its handler, a timeout, a cancel while queued or running,
// shutdown, a lost lease): the final state recorded, then every end hook run exactly once.

import type { Job, JobError, JobFinish, JobResponse } from '../model/job.js';
import { endingNow, isFinal } from '../model/job.js';
import type { Store } from '../stores/store.js';
import type { Logger } from '../util/logger.js';

/** What a job's end records: how it ended and, when the handler answered in full, the response head. */
export interface Ending {
  status: JobFinish['status'];
  response: JobResponse | null;
  error: JobError | null;
}

/** The hooks of one job's end, each run once, in this order, after the final state is recorded. */
export interface EndHooks {
  /**
   * The guard's hook: the final job (null when the store did not record it), and whether the
   * handler's response had begun (its execution had an effect).
   */
  onEnd?: (job: Job | null, answered: boolean) => Promise<void>;
  /** Wakes local subscribers (SSE, `wait`). */
  notify?: () => void;
  /** How long the finished job is kept, in ms, when it must outlive the `ttl` option. */
  ttl?: number;
  /** Queue mode: the end applies only while the job is still at this attempt (a restarted job is another attempt's to end). */
  attempt?: number;
}

/** What the end reads of the bgrs options. */
export interface EndConfig {
  store: Store;
  logger: Logger;
  lease: number;
  ttl: number;
}

export interface EndCall {
  /** The handler's response had begun. */
  answered?: boolean;
  /**
   * Answers a client waiting for this job's response, after the hooks (so an immediate retry finds
   * the Idempotency-Key settled). Only the first call that brings one answers.
   */
  answer?: (final: Job | null) => void;
  /** Told each time the store refuses the final state (it is retried for up to one lease). */
  onStoreError?: () => void;
}

export class JobEnd {
  #ended: Promise<Job | null> | undefined;
  #answered = false;

  constructor(
    private readonly config: EndConfig,
    readonly id: string,
    private readonly hooks: EndHooks = {},
  ) {}

  /** Whether the end has begun. */
  get ended(): boolean {
    return this.#ended !== undefined;
  }

  /**
   * Ends the job, once: records `ending` (null: it is recorded already, by another process or the
   * cancel route; read what the store holds), runs the hooks, then `call.answer`. A later call does
   * not record or run hooks again; it resolves with the same final job, answering its client only
   * if nobody has.
   */
  async end(ending: Ending | null, call: EndCall = {}): Promise<Job | null> {
    const first = this.#ended === undefined;
    this.#ended ??= this.#run(ending, call);
    const final = await this.#ended;
    if (!first) this.#answer(call, final);
    return final;
  }

  async #run(ending: Ending | null, call: EndCall): Promise<Job | null> {
    const final = ending ? await this.#record(ending, call) : await this.config.store.getJob(this.id).then(finalOrNull, () => null);
    try {
      await this.hooks.onEnd?.(final, call.answered ?? false);
    } catch (err) {
      this.config.logger.error(`express-bgrs: job ${this.id} end hook failed: ${message(err)}`);
    }
    this.hooks.notify?.();
    this.#answer(call, final);
    return final;
  }

  #answer(call: EndCall, final: Job | null): void {
    if (this.#answered || !call.answer) return;
    this.#answered = true;
    try {
      call.answer(final);
    } catch (err) {
      // A view that throws must not keep the job's slot forever.
      this.config.logger.error(`express-bgrs: could not answer the client of job ${this.id}: ${message(err)}`);
    }
  }

  /**
   * The final state, retried through a store outage for up to one lease: after that, other
   * instances have recorded the job interrupted anyway. Resolves the job as stored (the end of
   * another path when this one did not apply: an earlier attempt whose reply was lost, a cancel).
   */
  async #record(ending: Ending, call: EndCall): Promise<Job | null> {
    const finish = {
      ...ending,
      ...endingNow(this.hooks.ttl ?? this.config.ttl),
      ...(this.hooks.attempt === undefined ? {} : { ifAttempt: this.hooks.attempt }),
    };
    const giveUpAt = Date.now() + this.config.lease;
    for (let delay = 100; ; delay = Math.min(delay * 2, 5000)) {
      try {
        const finished = await this.config.store.finishJob(this.id, finish);
        return finalOrNull(finished?.job ?? null);
      } catch (err) {
        call.onStoreError?.();
        const left = giveUpAt - Date.now();
        if (left <= 0) {
          this.config.logger.error(`express-bgrs: could not record the end of job ${this.id}: ${message(err)}`);
          return null;
        }
        await new Promise((resolve) => setTimeout(resolve, Math.min(delay, left)));
      }
    }
  }
}

function finalOrNull(job: Job | null): Job | null {
  return job && isFinal(job.status) ? job : null;
}

function message(err: unknown): string {
  return (err as Error)?.message ?? String(err);
}
