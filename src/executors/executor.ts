// What an executor holds for each job it runs: how to stop it, and when it is done.
import type { JobError } from '../model/job.js';

export interface RunningJob {
  /** Ends the job now with this status (cancel, shutdown); the handler's signal aborts with `reason`. */
  stop(status: 'failed' | 'cancelled', error: JobError | null, reason: Error): Promise<void>;
  /** Resolves when the final state is in the store. */
  readonly done: Promise<void>;
}
