// Runs one detached job: replays its envelope, pipes the response into the store, records the final status.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Writable } from 'node:stream';
import { debuglog } from 'node:util';
import type { Configuration } from '../config/options.js';
import type { RunningJob } from '../executors/executor.js';
import { JobAbortError } from '../model/errors.js';
import type { Job, JobError, JobFinish, JobResponse } from '../model/job.js';
import type { Envelope } from '../replay/capture.js';
import { HOP_BY_HOP, type Replayer } from '../replay/capture.js';
import { applyHead } from '../replay/head.js';
import { JobContext } from './context.js';
import { JobEnd } from './end.js';

const debug = debuglog('bgrs');

/** Puts the replayed request on its way: through the root app, or through one route's handlers. */
export type Dispatch = (req: IncomingMessage, res: ServerResponse, ctx: JobContext) => void;

class JobFailure extends Error {
  constructor(
    readonly type: string,
    message: string,
  ) {
    super(message);
  }
}

/** Appends the response body to the store; each chunk is awaited, which is the backpressure. */
class ResultWriter extends Writable {
  size = 0;

  constructor(
    private readonly config: Configuration,
    private readonly id: string,
    private readonly onOverflow: (failure: JobFailure) => void,
    private readonly live: ServerResponse | undefined,
    /** Queue mode: the attempt this run is; the store refuses its chunks once another attempt began. */
    private readonly attempt: number | undefined,
  ) {
    super({ highWaterMark: 64 * 1024 });
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    const buffers = chunks.map(({ chunk }) => chunk);
    this.#append(buffers.length === 1 ? buffers[0]! : Buffer.concat(buffers), callback);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#append(chunk, callback);
  }

  /**
   * Set when the store refused a chunk of a response a client is waiting for: that client still
   * gets every byte as the handler sends it, nothing more is stored, and the job fails
   * `store_unavailable`.
   */
  storeFailed: JobFailure | null = null;

  #append(chunk: Buffer, callback: (error?: Error | null) => void): void {
    this.size += chunk.length;
    if (this.size > this.config.maxResultBytes) {
      const failure = new JobFailure('result_too_large', `the result is larger than maxResultBytes (${this.config.maxResultBytes} bytes)`);
      // The handler must hear the signal before its connection goes away (which failing the write causes).
      this.onOverflow(failure);
      callback(failure);
      return;
    }
    // Once the store refused a chunk, nothing more is stored (see storeFailed): no call is made.
    const stored = this.storeFailed
      ? undefined
      : this.#store(chunk, this.size - chunk.length).catch((err: unknown) => {
          // Another worker restarted the job (this run's lease had lapsed): this run must stop writing.
          if ((err as { code?: unknown })?.code === 'BGRS_STALE_ATTEMPT') throw new JobFailure('superseded', 'another worker runs this job now');
          const failure = new JobFailure('store_unavailable', `the result could not be stored: ${(err as Error)?.message ?? String(err)}`);
          if (!this.live) throw failure;
          this.storeFailed = failure;
        });
    Promise.all([stored, this.#toLive(chunk)]).then(() => callback(), callback);
  }

  /** Set by the run when it ends before the result does (cancel, timeout): a retry loop gives up. */
  stopped = false;

  /**
   * Stores one chunk. A store with `resumableResults` gets the chunk's offset and, for a job no
   * client waits on, a failed call is made again (backing off, for up to one lease): a store away
   * for a few seconds delays the result rather than failing the job, and the offset keeps a call
   * that had landed from being stored twice. A waiting client is never held up by it: there the
   * first failure stands (see storeFailed).
   */
  async #store(chunk: Buffer, offset: number): Promise<void> {
    const { store } = this.config;
    if (store.resumableResults !== true) {
      await (this.attempt === undefined ? store.appendResult(this.id, chunk) : store.appendResult(this.id, chunk, this.attempt));
      return;
    }
    const giveUpAt = Date.now() + this.config.lease;
    for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
      try {
        await store.appendResult(this.id, chunk, this.attempt, offset);
        return;
      } catch (err) {
        const left = giveUpAt - Date.now();
        if (this.live || this.stopped || left <= 0 || (err as { code?: unknown })?.code === 'BGRS_STALE_ATTEMPT') throw err;
        debug('job %s: a result write failed, retrying: %o', this.id, err);
        await new Promise((resolve) => setTimeout(resolve, Math.min(delay, left)));
      }
    }
  }

  /**
   * The newest chunk is held back from the waiting client until the next one arrives, or until
   * the job is recorded (`flushLive`): with a Content-Length, a client holds the whole body as
   * soon as its last byte arrives, and could retry before the Idempotency-Key is completed.
   */
  #held: Buffer | null = null;

  /** Mirrors a chunk to a waiting client, honouring its backpressure; a client that left is ignored. */
  #toLive(chunk: Buffer): Promise<void> | undefined {
    const previous = this.#held;
    this.#held = this.live ? chunk : null;
    return previous ? this.#write(previous) : undefined;
  }

  #write(chunk: Buffer): Promise<void> | undefined {
    const live = this.live;
    if (!live || live.destroyed || live.writableEnded || live.write(chunk)) return undefined;
    return new Promise((resolve) => {
      const settle = (): void => {
        live.off('drain', settle);
        live.off('close', settle);
        resolve();
      };
      live.on('drain', settle);
      live.on('close', settle);
    });
  }

  /** Ends the waiting client's response with the chunk held back, once the job is recorded. */
  flushLive(): void {
    const live = this.live;
    const held = this.#held;
    this.#held = null;
    if (!live || live.destroyed || live.writableEnded) return;
    if (held) live.end(held);
    else live.end();
  }
}

/** The response head as it will be replayed: raw pairs, minus what belongs to the private connection. */
function capturedHead(res: IncomingMessage, size: number): JobResponse {
  const headers: Array<[string, string]> = [];
  const raw = res.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (!HOP_BY_HOP.has(name.toLowerCase())) headers.push([name, raw[i + 1]!]);
  }
  return { status: res.statusCode ?? 500, contentType: res.headers['content-type'] ?? null, size, headers };
}

/** Starts the waiting client's response with the handler's status and headers, cookies included. */
function writeLiveHead(live: ServerResponse, res: IncomingMessage): void {
  if (live.headersSent || live.destroyed) return;
  live.statusCode = res.statusCode ?? 500;
  const pairs: Array<[string, string]> = [];
  for (let i = 0; i < res.rawHeaders.length; i += 2) pairs.push([res.rawHeaders[i]!, res.rawHeaders[i + 1]!]);
  applyHead(live, pairs, { replayCookies: true, keepLength: true });
}

/**
 * Pipes the response into the writer and settles when it is stored, or fails when either side
 * fails or the response is cut off. By hand rather than with pipeline(): that one builds an
 * AbortController and a DOMException per call, which shows in the per-job cost.
 */
function capture(res: IncomingMessage, writer: ResultWriter): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error): void => {
      res.destroy();
      writer.destroy();
      reject(err);
    };
    res.once('error', fail);
    res.once('close', () => {
      if (!res.complete) fail(new Error('aborted'));
    });
    writer.once('error', fail);
    writer.once('finish', resolve);
    res.pipe(writer);
  });
}

export interface RunOptions {
  /** A client waiting for this response: it is streamed to it as it is captured (the Idempotency-Key guard). */
  live?: ServerResponse;
  /** How long the finished job is kept, in ms, when it must outlive the `ttl` option. */
  ttl?: number;
  /**
   * Called with the final job (null when the store did not record it) before `done` resolves.
   * `answered`: the handler had begun its response (its head arrived), whether or not all of it was
   * captured or kept: its execution had an effect.
   */
  onEnd?: (job: Job | null, answered: boolean) => Promise<void>;
  /** This job's timeout in ms, instead of the `timeout` option (per-route timeouts). */
  timeout?: number;
  /** Answers the waiting client of a job that ended before its response began (its HTTP face renders the problem). */
  unanswered?: (live: ServerResponse, ended: { id: string; status: JobFinish['status']; error: JobError | null }) => void;
  /** Called after each progress or log write lands. */
  onChange?: () => void;
  /**
   * For a job recorded without an owner: asks the replayed request whose it is, once the route's
   * own middleware ran (the first `req.bgrs` call or the response head, whichever comes first), and
   * records a non-null answer before any of it is stored.
   */
  deriveOwner?: (replayed: IncomingMessage) => Promise<string | null>;
  /**
   * Queue mode: which run of the job this is (`req.bgrs.attempt`), from 1. Its writes are fenced:
   * once another worker restarted the job, the store refuses them and this run stops.
   */
  attempt?: number;
  /** The job's one end, when its submit made it (so that ending before the start shares it); else the run makes its own from `onEnd` and `ttl`. */
  end?: JobEnd;
}

export function runJob(config: Configuration, replayer: Replayer, id: string, envelope: Envelope, dispatch: Dispatch, options: RunOptions = {}): RunningJob {
  const { live } = options;
  const end = options.end ?? new JobEnd(config, id, { onEnd: options.onEnd, ttl: options.ttl });
  const startedAt = Date.now();
  let replayed: IncomingMessage | undefined;
  let owned: Promise<void> | undefined;
  /** Whether the owner is on record (or there is none to derive). */
  let ownerKnown = !options.deriveOwner;
  /**
   * Runs deriveOwner on the replayed request as the route's middleware left it: at the first
   * `req.bgrs` write, and once more at the response head when that gave no owner (a middleware
   * that logs before the route's auth ran must not leave the job anonymous).
   */
  const settleOwner = (): Promise<void> =>
    (owned ??= (async () => {
      if (!options.deriveOwner || !replayed) return;
      const owner = await options.deriveOwner(replayed);
      if (owner !== null) {
        await config.store.updateProgress(id, { owner });
        ownerKnown = true;
      }
    })().catch((err: unknown) => config.logger.error(`express-bgrs: could not record the owner of job ${id}: ${(err as Error)?.message ?? String(err)}`)));
  const ctx = new JobContext(id, config.store, options.onChange, (ms) => arm(ms), options.deriveOwner ? settleOwner : undefined, config);
  if (options.attempt !== undefined) ctx.fence(options.attempt);
  let timer: NodeJS.Timeout | undefined;
  let writer: ResultWriter | undefined;
  let liveStarted = false;
  const replay = replayer.replay(envelope, (req, res) => {
    replayed = req;
    dispatch(req, res, ctx);
  });
  let ended = false;
  let resolveDone!: () => void;
  const done = new Promise<void>((resolve) => (resolveDone = resolve));

  let flushed = false;
  /** The waiting client gets the handler's answer now, not after the store recovers. */
  const flushEarly = (): void => {
    if (flushed || !live || !writer || !answered) return;
    flushed = true;
    writer.flushLive();
  };
  let answered = false;
  /** The handler's response head arrived: from here on, its execution counts as having answered. */
  let began = false;
  const finish = async (status: JobFinish['status'], response: JobResponse | null, failure: JobError | null): Promise<void> => {
    if (ended) return;
    ended = true;
    // A failure after the response began is recorded as such, for the Idempotency-Key's sake.
    const error = failure && began && !response ? { ...failure, answered: true as const } : failure;
    if (timer) clearTimeout(timer);
    if (writer?.storeFailed) flushEarly();
    await ctx.end();
    await end.end({ status, response, error }, { answered: began, answer: live && (() => answerLive(status, error)), onStoreError: flushEarly });
    resolveDone();
  };

  /** The waiting client sees the end only now (see JobEnd): the rest of the handler's answer, or why there is none. */
  const answerLive = (status: JobFinish['status'], error: JobError | null): void => {
    if (flushed || !live || live.destroyed) return;
    if (answered && writer) writer.flushLive();
    // Started, then cut (timeout, cancel, overflow): the client must see a broken response, not a short one.
    else if (liveStarted || !options.unanswered) live.destroy();
    else {
      try {
        options.unanswered(live, { id, status, error });
      } catch (err) {
        live.destroy();
        throw err;
      }
    }
  };

  const stop = async (status: 'failed' | 'cancelled', error: JobError | null, reason: Error): Promise<void> => {
    if (ended) return done;
    if (writer) writer.stopped = true;
    // The handler hears it first (signal), then as a live client would (the connection goes away).
    ctx.abort(reason);
    replay.abort();
    await finish(status, null, error);
  };

  /** Tears the run down with no end recorded: the job is handed back to the queue to run again. */
  const abandon = async (reason: Error): Promise<void> => {
    if (ended) return done;
    ended = true;
    if (writer) writer.stopped = true;
    if (timer) clearTimeout(timer);
    ctx.abort(reason);
    replay.abort();
    await ctx.end();
    resolveDone();
  };

  /** (Re)starts the timeout, counted from the job's start; 0 means never. */
  function arm(ms: number): void {
    clearTimeout(timer);
    timer = undefined;
    if (ended || !(ms > 0)) return;
    timer = setTimeout(
      () => {
        const message = `the job did not finish within ${ms} ms`;
        void stop('failed', { type: 'timeout', message }, new JobAbortError('BGRS_TIMEOUT', message, 'TimeoutError'));
      },
      Math.max(0, startedAt + ms - Date.now()),
    );
    timer.unref();
  }
  arm(options.timeout ?? config.timeout);

  replay.response
    .then(async (res) => {
      began = true;
      // Whose result this is must be on record before any byte of it is.
      await settleOwner();
      if (!ownerKnown) {
        owned = undefined;
        await settleOwner();
      }
      writer = new ResultWriter(config, id, (failure) => ctx.abort(new JobAbortError('BGRS_RESULT_TOO_LARGE', failure.message)), live, options.attempt);
      if (live) {
        writeLiveHead(live, res);
        liveStarted = true;
      }
      await capture(res, writer);
      answered = true;
      if (writer.storeFailed) {
        const { type, message } = writer.storeFailed;
        await finish('failed', null, { type, message });
        return;
      }
      const head = capturedHead(res, writer.size);
      const failed = head.status >= 500;
      await finish(failed ? 'failed' : 'completed', head, failed ? { type: 'server_error', message: `the handler answered ${head.status}` } : null);
    })
    .catch(async (err: unknown) => {
      if (ended) return;
      if (err instanceof JobFailure && err.type === 'superseded') {
        // Not this run's job any more: stop, and record nothing (the other attempt will).
        await abandon(new JobAbortError('BGRS_INTERRUPTED', err.message));
        return;
      }
      if (err instanceof JobFailure) {
        const code = err.type === 'result_too_large' ? 'BGRS_RESULT_TOO_LARGE' : 'BGRS_STORE_UNAVAILABLE';
        await stop('failed', { type: err.type, message: err.message }, new JobAbortError(code, err.message));
        return;
      }
      debug('job %s: replay failed: %o', id, err);
      const message = (err as Error)?.message ?? String(err);
      await stop('failed', { type: 'connection_lost', message: `the response was cut off: ${message}` }, new JobAbortError('BGRS_CONNECTION_LOST', message));
    });

  return { stop, done, abandon };
}
