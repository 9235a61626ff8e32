// What every part of one bgrs() instance shares: the configuration, the replayer, the executor.
import type { Configuration } from '../config/options.js';
import type { Executor } from '../executors/executor.js';
import type { Replayer } from '../replay/capture.js';
/** Shared by every part of one bgrs() instance. */
export interface Runtime {
  config: Configuration;
  replayer: Replayer;
  executor: Executor;
  closing: boolean;
  /** Submits between their store write and their hand-over to the executor: close() waits for them. */
  submitting: Set<Promise<unknown>>;
  warned: Set<string>;
  /** Open `/events` streams per caller (limitKey), for `maxEventStreams`. */
  streams: Map<string, number>;
}
