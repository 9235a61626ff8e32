// The public Options type and parseOptions(): validates once at setup into a fully-defaulted Configuration.

import type { Request } from 'express';
import type { ExecutorFactory } from '../executors/executor.js';
import { Scheduler } from '../executors/local.js';
import type { Job } from '../model/job.js';
import { MemoryStore } from '../stores/memory.js';
import { IDEMPOTENCY_METHODS, JOB_METHODS, missingIdempotencyMethods, type Store } from '../stores/store.js';
import { checkKnown } from '../util/known-options.js';
import type { Logger } from '../util/logger.js';
import { nativeView } from '../views/native.js';
import type { View } from '../views/view.js';
import type { IdempotencyOptions } from './guard-options.js';

/** What a caller wants to do with a job; `authorize` receives it. */
export type JobAction = 'read' | 'details' | 'result' | 'cancel' | 'delete' | 'events' | 'list-all';

export type { Logger };

export interface Options {
  /** Where jobs, log lines and results are kept. Defaults to `new MemoryStore()`. */
  store: Store;
  /**
   * Where recorded jobs run: a function that builds the executor from these options. Defaults to
   * the in-process executor (slots, a queue and the lease heartbeat in this process).
   */
  executor: ExecutorFactory;
  /** How jobs and their pages are rendered: the ack, the job document, log and list pages, event data, result headers. Defaults to the native view (express-bgrs' own documents). */
  view: View;
  /**
   * Where the job routes live: an absolute path, which the links bgrs hands out use as they are.
   * Mounting bgrs under a prefix (`app.use('/api', bgrs())`) needs the prefix here too
   * (`basePath: '/api/bgrs'`). Defaults to `'/bgrs'`.
   */
  basePath: string;
  /**
   * Who owns the job a request starts; only that owner may see it. `null`, `undefined` or `''`
   * mean anonymous: such jobs are reachable by whoever holds their (unguessable) id, and never
   * listed. It is asked again on the replayed request once the route's own middleware ran, so a
   * job detached before route-level auth still belongs to the user that auth established.
   * Defaults to `() => null`.
   */
  owner: (req: Request) => string | null | undefined | Promise<string | null | undefined>;
  /**
   * Decides instead of the default rule (the caller's owner equals `job.owner`). A refusal answers
   * exactly like a missing job (404). `job` is `null` for `list-all`. Defaults to the owner rule.
   */
  authorize: ((req: Request, job: Job | null, action: JobAction) => boolean | Promise<boolean>) | undefined;
  /**
   * Whether a request asks to be detached. Defaults to `?bgrs=yes|1|true` (any case) or
   * `Prefer: respond-async`; any other `bgrs` value is a 400.
   */
  trigger: ((req: Request) => boolean) | undefined;
  /** Seconds suggested in `Retry-After` while a job runs. Defaults to `2`. */
  retryAfter: number;
  /** How long a finished job and its result are kept, in ms. Defaults to 24 hours. */
  ttl: number;
  /** How long a job may run before it fails with `timeout` and its signal aborts, in ms; `0` for never. Defaults to 1 hour. */
  timeout: number;
  /**
   * How many detached jobs run at once in this process; more wait in a queue (status `queued`).
   * Defaults to `64`.
   */
  concurrency: number;
  /** How many jobs may wait in this process's queue; beyond it a detach gets 429 `queue-full`. Defaults to `1000`. */
  maxQueued: number;
  /**
   * How many jobs one owner (an anonymous caller: one client address) may have queued or running in
   * this process; beyond it, 429. Kept well below `maxQueued` so one caller cannot fill the queue
   * for everyone. Defaults to `100`.
   */
  maxPerOwner: number;
  /**
   * How many bytes of request bodies detached jobs may hold in this process, all together, from
   * the moment bgrs reads them until their job ends; beyond it a detach gets 503 `server-busy`
   * with `Retry-After`. Defaults to 256 MiB.
   */
  maxHeldBodyBytes: number;
  /** How many log lines one job keeps; later lines are dropped (one warning line says so). Defaults to `10000`. */
  maxLogLines: number;
  /** The longest progress message or log line kept, in characters; longer ones are cut (ending in `…`). Defaults to `2000`. */
  maxMessageLength: number;
  /** How many `/events` streams one owner (an anonymous caller: one client address) may have open in this process; beyond it, 429. Defaults to `16`. */
  maxEventStreams: number;
  /**
   * How long a process may stay silent about a job it runs before other processes record it
   * `failed: interrupted`, in ms. The process renews its leases every third of it (at least every second).
   * Defaults to `30000`.
   */
  lease: number;
  /** The longest `wait` (`?wait=N`, `Prefer: wait=N`) a request may ask for, in seconds. Defaults to `60`. */
  maxWait: number;
  /** How often `/events` streams send a heartbeat comment, in ms, so proxies keep them open. Defaults to `15000`. */
  eventsHeartbeat: number;
  /** How long any one store call may take before bgrs treats the store as unavailable (503), in ms. Defaults to `5000`. */
  storeTimeout: number;
  /** The largest result body kept, in bytes; a larger one fails the job with `result_too_large`. Defaults to 100 MiB. */
  maxResultBytes: number;
  /** The largest request body bgrs spools for a detached request it received unparsed, in bytes; larger is a 413. Defaults to 16 MiB. */
  maxBodyBytes: number;
  /** Whether `/result` replays the handler's `Set-Cookie` headers. Defaults to `false`. */
  replayCookies: boolean;
  /**
   * Guards every route past `app.use(bgrs())` with the Idempotency-Key guard, with these options.
   * Without it, only routes with `background.idempotency()` are guarded, and detached requests that
   * carry a key (with the guard's default options). Defaults to `undefined`.
   */
  idempotency: Partial<IdempotencyOptions> | undefined;
  /** Where configuration warnings go. Defaults to `console`. */
  logger: Logger;
  /** Set to `false` to silence the configuration warnings (codes are listed in the README). Defaults to `true`. */
  validations: boolean;
}

/** The internal, fully-defaulted form of `Options`. */
export interface Configuration extends Options {
  /** `basePath` without a trailing slash. */
  basePath: string;
  /** Whether bgrs made the store itself (the default MemoryStore), so `close()` closes it. */
  ownsStore: boolean;
}

const HOUR = 3_600_000;

/** Every option but `store`, whose default (a MemoryStore) is only built when no store is given. */
function defaults(): Omit<Options, 'store'> {
  return {
    basePath: '/bgrs',
    executor: (config) => new Scheduler(config),
    view: nativeView,
    owner: () => null,
    authorize: undefined,
    trigger: undefined,
    retryAfter: 2,
    ttl: 24 * HOUR,
    timeout: HOUR,
    concurrency: 64,
    maxQueued: 1000,
    maxPerOwner: 100,
    maxHeldBodyBytes: 256 * 2 ** 20,
    maxLogLines: 10_000,
    maxMessageLength: 2000,
    maxEventStreams: 16,
    lease: 30_000,
    maxWait: 60,
    eventsHeartbeat: 15_000,
    storeTimeout: 5000,
    maxResultBytes: 100 * 2 ** 20,
    maxBodyBytes: 16 * 2 ** 20,
    replayCookies: false,
    idempotency: undefined,
    logger: console,
    validations: true,
  };
}

const KNOWN = ['store', ...Object.keys(defaults())] as Array<keyof Options>;

function fail(option: string, value: unknown, expected: string): never {
  let shown: string;
  try {
    shown = typeof value === 'function' ? 'a function' : (JSON.stringify(value) ?? String(value));
  } catch {
    shown = String(value);
  }
  throw new TypeError(`bgrs(): \`${option}\` must be ${expected}, received \`${shown}\`.`);
}

function positive(option: string, value: unknown, allowZero = false): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    fail(option, value, allowZero ? 'a number ≥ 0' : 'a positive number');
  }
}

/** Resolves user options once, at setup, and fails loudly on anything misconfigured. */
export function parseOptions(input: Partial<Options> | undefined): Configuration {
  // `app.use(bgrs)` makes Express call bgrs(req, res, next): say what happened.
  if (input !== null && typeof input === 'object' && 'method' in input && 'url' in input && 'headers' in input) {
    throw new TypeError('bgrs() was used as middleware without being called: write `app.use(bgrs())`, not `app.use(bgrs)`.');
  }
  if (input !== undefined && (input === null || typeof input !== 'object' || Array.isArray(input))) {
    throw new TypeError(`bgrs(): options must be an object, received \`${String(input)}\`.`);
  }
  const options = input ?? {};
  checkKnown('bgrs()', options, KNOWN);
  const ownsStore = options.store === undefined;
  const config = { ...defaults(), store: options.store as Store, ownsStore } as Configuration;
  for (const name of KNOWN) {
    // `{ ttl: undefined }` means "not set", as in express-rate-limit.
    if (name !== 'store' && options[name] !== undefined) (config as unknown as Record<string, unknown>)[name] = options[name];
  }

  if (!ownsStore) {
    const store = config.store as Partial<Store> | null;
    const missing = JOB_METHODS.filter((method) => !store || typeof store[method] !== 'function');
    if (missing.length) {
      throw new TypeError(`bgrs(): \`store\` must be a Store; it lacks ${missing.map((method) => `\`${method}()\``).join(', ')} (README, "Writing a store").`);
    }
    // The guard's methods come together or not at all: half of them is a bug, not a choice.
    const guardMissing = missingIdempotencyMethods(store as Store);
    if (guardMissing.length > 0 && guardMissing.length < IDEMPOTENCY_METHODS.length) {
      throw new TypeError(
        `bgrs(): \`store\` has some of the Idempotency-Key methods but lacks ${guardMissing.map((method) => `\`${method}()\``).join(', ')}; a store has all four or none (README, "Writing a store").`,
      );
    }
  }
  if (typeof config.basePath !== 'string' || !config.basePath.startsWith('/') || /[?#\s]/.test(config.basePath)) {
    fail('basePath', config.basePath, "a path that starts with '/', such as '/bgrs'");
  }
  config.basePath = config.basePath.replace(/\/+$/, '');
  if (config.basePath === '') fail('basePath', '/', "a path below the root, such as '/bgrs'");
  if (typeof config.owner !== 'function') fail('owner', config.owner, 'a function (req) => string | null');
  if (config.authorize !== undefined && typeof config.authorize !== 'function') fail('authorize', config.authorize, 'a function (req, job, action) => boolean');
  if (config.trigger !== undefined && typeof config.trigger !== 'function') fail('trigger', config.trigger, 'a function (req) => boolean');
  if (typeof config.executor !== 'function') fail('executor', config.executor, 'a function (options) => Executor');
  const view = config.view as Partial<Record<keyof View, unknown>> | null;
  const viewMethods = ['ack', 'job', 'logPage', 'listPage', 'event', 'resultHeaders', 'problem'] as const;
  if (!view || typeof view !== 'object' || viewMethods.some((method) => typeof view[method] !== 'function')) {
    fail('view', config.view, `a View (an object with ${viewMethods.map((m) => `${m}()`).join(', ')})`);
  }
  positive('retryAfter', config.retryAfter, true);
  config.retryAfter = Math.ceil(config.retryAfter);
  positive('ttl', config.ttl);
  positive('timeout', config.timeout, true);
  positive('maxResultBytes', config.maxResultBytes);
  for (const name of ['concurrency', 'maxPerOwner', 'maxLogLines', 'maxMessageLength', 'maxEventStreams'] as const) {
    const value = config[name];
    if (!(value === Number.POSITIVE_INFINITY || (Number.isInteger(value) && value >= 1))) fail(name, value, 'a whole number ≥ 1 (or Infinity)');
  }
  if (!(config.maxQueued === Number.POSITIVE_INFINITY || (Number.isInteger(config.maxQueued) && config.maxQueued >= 0))) {
    fail('maxQueued', config.maxQueued, 'a whole number ≥ 0 (or Infinity)');
  }
  positive('lease', config.lease);
  if (config.lease < 150) fail('lease', config.lease, 'at least 150 ms');
  positive('maxWait', config.maxWait, true);
  positive('eventsHeartbeat', config.eventsHeartbeat);
  positive('storeTimeout', config.storeTimeout);
  positive('maxBodyBytes', config.maxBodyBytes);
  positive('maxHeldBodyBytes', config.maxHeldBodyBytes);
  if (typeof config.replayCookies !== 'boolean') fail('replayCookies', config.replayCookies, 'a boolean');
  if (typeof config.validations !== 'boolean') fail('validations', config.validations, 'a boolean');
  if (!config.logger || typeof config.logger.warn !== 'function' || typeof config.logger.error !== 'function') {
    fail('logger', config.logger, 'an object with warn() and error(), such as console');
  }
  // Built last, once everything else is valid: a refused configuration leaves no timer behind.
  if (ownsStore) config.store = new MemoryStore();
  return config;
}
