// req.bgrs: the handler's view of its job (progress, log lines, signal); no-ops on requests that were not detached.
import { debuglog } from 'node:util';
import type { JobProgressUpdate, LogLevel } from '../model/job.js';
import type { Store } from '../stores/store.js';

const debug = debuglog('bgrs');

/** What every request past bgrs carries as `req.bgrs`. */
export interface BgrsContext {
  /** The job id, or `null` when the request was not detached. */
  readonly id: string | null;
  /** Whether this request runs as a background job. */
  readonly detached: boolean;
  /** Which run of its job this is, from 1: queue mode runs a job again when its worker died and a re-run is safe. `0` when not detached. */
  readonly attempt: number;
  /** Aborts on cancel, timeout, result overflow and shutdown; never aborts on a request that was not detached. */
  readonly signal: AbortSignal;
  /** Reports progress: clamped to 0–100, never moves backwards. */
  progress(percent: number, message?: string): void;
  /** Adds a log line; `warning` and `error` lines are counted on the job. Defaults to `info`. */
  log(message: string, level?: LogLevel): void;
  /** Reports how many results the job has produced so far. */
  resultCount(count: number): void;
}

const LEVELS: ReadonlySet<string> = new Set(['info', 'warning', 'error']);

/** The caps a running job's writes keep to (from the bgrs options). */
export interface ContextLimits {
  maxLogLines: number;
  maxMessageLength: number;
}

const NO_LIMITS: ContextLimits = { maxLogLines: Number.POSITIVE_INFINITY, maxMessageLength: Number.POSITIVE_INFINITY };

/**
 * Text as every store can keep it: PostgreSQL's text type cannot hold NUL, so it becomes U+FFFD
 * everywhere; longer than `max` characters, it is cut and ends in `…`.
 */
function storable(text: unknown, max: number): string {
  let value = String(text);
  if (value.length > max) value = `${value.slice(0, Math.max(0, max - 1))}…`;
  // biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is exactly what PostgreSQL's text refuses.
  return value.replace(/\u0000/g, '\uFFFD');
}

/** One shared, frozen context for every request that was not detached: calls cost nothing. */
export const DETACHED_NOT: BgrsContext = Object.freeze({
  id: null,
  detached: false,
  attempt: 0,
  signal: new AbortController().signal,
  progress() {},
  log() {},
  resultCount() {},
});

/**
 * The context of a running job. Store writes never block the handler: progress updates coalesce
 * (at most one write in flight, the newest values win) and log lines are written in order.
 * A failing store is logged through `NODE_DEBUG=bgrs` and never reaches the handler.
 */
export class JobContext implements BgrsContext {
  readonly detached = true;
  attempt = 1;
  /** Queue mode: progress writes apply only while the job is still at this attempt. */
  #fence: number | undefined;

  /** Makes this the context of attempt `attempt`, and fences its writes to it (see RunOptions.attempt). */
  fence(attempt: number): void {
    this.attempt = attempt;
    this.#fence = attempt;
  }
  #percent = 0;
  #pending: JobProgressUpdate | null = null;
  #writing: Promise<void> | null = null;
  #logs: Promise<unknown> = Promise.resolve();
  #ended = false;
  #controller: AbortController | undefined;
  #lines = 0;

  constructor(
    readonly id: string,
    private readonly store: Store,
    /** Called after each write lands, so local watchers (SSE, wait) hear of it at once. */
    private readonly onChange: () => void = () => undefined,
    /** Replaces the job's timeout, counted from its start (a route's own `timeout`). */
    readonly retime: (ms: number) => void = () => undefined,
    /** Awaited before the first write: records whose job this is (see RunOptions.deriveOwner). */
    private readonly beforeWrites: (() => Promise<void>) | undefined = undefined,
    private readonly limits: ContextLimits = NO_LIMITS,
  ) {}

  /** The first write waits for beforeWrites; later ones chain behind it. */
  #ready: Promise<void> | undefined;
  #first(): Promise<void> {
    return (this.#ready ??= this.beforeWrites ? this.beforeWrites() : Promise.resolve());
  }

  /** Created on first use: most handlers never look, and an AbortController per job is measurable. */
  get signal(): AbortSignal {
    return (this.#controller ??= new AbortController()).signal;
  }

  /** Aborts the signal, whether or not the handler has looked at it yet. */
  abort(reason: Error): void {
    (this.#controller ??= new AbortController()).abort(reason);
  }

  progress(percent: number, message?: string): void {
    if (this.#ended || typeof percent !== 'number' || Number.isNaN(percent)) return;
    this.#percent = Math.max(this.#percent, Math.min(100, Math.max(0, percent)));
    const update: JobProgressUpdate = { progress: this.#percent };
    if (message !== undefined) update.message = storable(message, this.limits.maxMessageLength);
    this.#queue(update);
  }

  resultCount(count: number): void {
    if (this.#ended || !Number.isFinite(count) || count < 0) return;
    this.#queue({ resultCount: Math.floor(count) });
  }

  log(message: string, level: LogLevel = 'info'): void {
    if (this.#ended || this.#lines >= this.limits.maxLogLines) return;
    let line = { at: new Date().toISOString(), level: LEVELS.has(level) ? level : 'info', message: storable(message, this.limits.maxMessageLength) };
    if (++this.#lines === this.limits.maxLogLines && this.limits.maxLogLines > 1) {
      line = {
        at: line.at,
        level: 'warning',
        message: `log truncated: this job keeps at most ${this.limits.maxLogLines} lines (option maxLogLines); later lines are dropped`,
      };
    }
    // A line waits for the progress write already under way, so the store sees them in call order.
    const writing = this.#writing;
    this.#logs = this.#logs
      .then(() => this.#first())
      .then(() => writing)
      .then(() => this.store.appendLog(this.id, line))
      .then(() => this.onChange())
      .catch((err: unknown) => debug('job %s: log write failed: %o', this.id, err));
  }

  /** Stops accepting calls and resolves once every write already started has landed. */
  async end(): Promise<void> {
    this.#ended = true;
    await Promise.all([this.#logs, this.#writing]);
  }

  #queue(update: JobProgressUpdate): void {
    this.#pending = { ...this.#pending, ...update };
    this.#writing ??= this.#drain();
  }

  async #drain(): Promise<void> {
    await this.#first();
    while (this.#pending) {
      const update = this.#pending;
      this.#pending = null;
      try {
        await this.store.updateProgress(this.id, this.#fence === undefined ? update : { ...update, ifAttempt: this.#fence });
        this.onChange();
      } catch (err) {
        debug('job %s: progress write failed: %o', this.id, err);
      }
    }
    this.#writing = null;
  }
}

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /** The background-request context bgrs gives every request that passed it. */
      bgrs: BgrsContext;
    }
  }
}
