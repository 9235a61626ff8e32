// The one way a job is accepted: take what the run needs from the request (prepare), record the job,
// hand it to the executor and answer the client (submit: ack, wait, or live).

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { NextFunction, Request, Response } from 'express';
import { v4 as uuidv4 } from 'uuid';
import type { Configuration } from '../config/options.js';
import type { Admission, EndQueued } from '../executors/executor.js';
import { JobEnd } from '../jobs/end.js';
import { waitForFinal } from '../jobs/observe.js';
import type { Dispatch, RunOptions } from '../jobs/runner.js';
import { runJob } from '../jobs/runner.js';
import type { Runtime } from '../jobs/runtime.js';
import type { Job, JobError, JobResponse } from '../model/job.js';
import { isFinal, newJob } from '../model/job.js';
import type { Envelope } from '../replay/capture.js';
import { BodyBudgetError, BodyTooLargeError, bodyConsumed, buildEnvelope, hasBody, readBody } from '../replay/envelope.js';
import { encodeRequest, mayRerun } from '../replay/stored.js';
import type { DispatchFactory } from './dispatch.js';
import { sendJson } from './json.js';
import { limitKey, resolveOwner } from './owner.js';
import { problemsFor } from './problem.js';
import { replayResult } from './result.js';
import type { TriggerDecision } from './trigger.js';
import { stripParam } from './trigger.js';

/** The URL the background run sees: without the `bgrs` parameter, unless a custom trigger makes it an ordinary one. */
function jobUrl(config: Configuration, url: string): string {
  return config.trigger ? url : stripParam(url);
}

/** Answers the client at once: 202, Location, Retry-After, the job document. */
export function acknowledge(config: Configuration, res: ServerResponse, job: Job, byPrefer: boolean, position?: number): void {
  const headers: Record<string, string> = { Location: `${config.basePath}/${job.id}`, 'Retry-After': String(config.retryAfter), Vary: 'Prefer' };
  if (byPrefer) headers['Preference-Applied'] = 'respond-async';
  const rendered = config.view.ack(job, { base: config.basePath, position });
  sendJson(res, 202, rendered.body, { ...headers, ...rendered.headers });
}

/** A request made ready to run in the background: who owns it, what to replay, how to dispatch it. */
export interface Prepared {
  owner: string | null;
  /** The place this job holds in the executor (a slot or a queue place, and its body bytes): used by submit, or given back. */
  admission: Admission & { ok: true };
  preParsed: boolean;
  /** The raw body when bgrs read it; `null` when a parser had read it first (see `parsedBody`) or there was none. */
  body: Buffer | null;
  parsedBody: unknown;
  clientUrl: string;
  envelope: Envelope;
  dispatch: Dispatch;
}

/**
 * Takes everything the background run needs from the original request, before it is acked:
 * the body above all (after the ack it would be gone). Sends the problem itself and resolves
 * `null` when the request cannot be taken; user-code errors go to `next`.
 */
export async function prepare(rt: Runtime, req: Request, res: Response, next: NextFunction, factory: DispatchFactory): Promise<Prepared | null> {
  const { config } = rt;
  const { sendProblem } = problemsFor(config.view);
  if (rt.closing) {
    sendProblem(res, 'shutting-down', 'The server is shutting down and accepts no new background requests.', { retryAfter: config.retryAfter });
    return null;
  }
  // A parser mounted before bgrs already read the body: carry the parsed value, send no bytes.
  const preParsed = bodyConsumed(req) && hasBody(req);
  let owner: string | null;
  try {
    owner = await resolveOwner(config.owner, req);
  } catch (err) {
    next(err);
    return null;
  }
  // Admission comes before the body: a refused request costs no memory.
  const admission = rt.executor.admit(limitKey(owner, req));
  if (!admission.ok) {
    sendQueueFull(config, res, admission.reason);
    return null;
  }
  try {
    const hold = (bytes: number): boolean => rt.executor.holdBody(admission, bytes);
    if (preParsed && !hold(Number(req.headers['content-length']) || 0)) throw new BodyBudgetError();
    const body = !preParsed && hasBody(req) ? await readBody(req, config.maxBodyBytes, hold) : null;
    const dispatch = factory(req, res, preParsed);
    const clientUrl = req.originalUrl ?? req.url;
    const envelope = buildEnvelope(req, jobUrl(config, clientUrl), body, preParsed);
    return { owner, admission, preParsed, body, parsedBody: preParsed ? req.body : undefined, clientUrl, envelope, dispatch };
  } catch (err) {
    rt.executor.cancel(admission);
    if (err instanceof BodyTooLargeError) {
      sendProblem(res, 'body-too-large', `A detached request body may be at most ${err.limit} bytes (option maxBodyBytes).`);
      return null;
    }
    if (err instanceof BodyBudgetError) {
      sendProblem(
        res,
        'server-busy',
        'This server holds as many request bodies for background requests as it may (option maxHeldBodyBytes); try again later.',
        {
          retryAfter: config.retryAfter,
        },
      );
      return null;
    }
    next(err);
    return null;
  }
}

function sendQueueFull(config: Configuration, res: Response, reason: 'queue-full' | 'owner-limit'): void {
  const { sendProblem } = problemsFor(config.view);
  const detail =
    reason === 'queue-full'
      ? `This server runs ${config.concurrency} background requests at once and has ${config.maxQueued} waiting; try again later.`
      : `You have ${config.maxPerOwner} background requests queued or running here; wait for one to finish.`;
  sendProblem(res, 'queue-full', detail, { retryAfter: config.retryAfter });
}

/** What a route adds to a job's run when it submits it. */
export interface SubmitOptions extends RunOptions {
  /** Queue mode: another worker may run the job again when the one running it died, whatever its method (`detachable({ retry: true })`). */
  retry?: boolean;
  /**
   * Queue mode: the Idempotency-Key this job executes (its record's name, and how long a completed
   * key is kept), so that the worker that runs it completes the key.
   */
  idempotency?: { key: string; ttl: number };
}

/** How the client of a new job is answered: at once with 202, or after up to `wait` seconds with the real response. */
export interface Acknowledgement {
  byPrefer: boolean;
  /** `Prefer: respond-async, wait=N`: the real response if the job ends within N seconds, else the 202. */
  wait?: number;
}

/**
 * The one submit of every job (a plain detach, a keyed detach, a synchronous guarded request):
 * records it, hands it to the executor (which starts or queues it) and answers. With `ack`, answers
 * 202 (or, with `ack.wait`, the real response if it comes in time); with `run.live`, the response
 * is streamed to that client as it is captured. Resolves `false` (after answering 503) when the
 * store refused the job.
 */
export async function submit(
  rt: Runtime,
  res: Response,
  prepared: Prepared,
  id: string,
  method: string,
  ack: Acknowledgement | null,
  run: SubmitOptions = {},
): Promise<boolean> {
  const { config, executor } = rt;
  const { sendStoreUnavailable } = problemsFor(config.view);
  const { admission } = prepared;
  // Queue mode: a worker anywhere runs it, from the request kept with the job. It waits in the
  // queue without a lease (the queue holds it durably); the worker that takes it starts one. A
  // client waiting on this connection (a synchronous guarded request) is still served here.
  const remote = executor.remote === true && !run.live;
  const job = newJob({
    id,
    method,
    url: prepared.clientUrl,
    owner: prepared.owner,
    status: remote || admission.queued ? 'queued' : 'running',
    leaseUntil: remote ? null : new Date(Date.now() + config.lease).toISOString(),
  });
  // close() waits for this hand-over: a job recorded as close() begins still reaches the executor,
  // which then shuts it down with the others, rather than starting after close() resolved.
  const handing = handOver();
  rt.submitting.add(handing);
  const placed = await handing.finally(() => rt.submitting.delete(handing));
  if (!placed) return false;
  if (ack) await answer(rt, res, job, ack);
  return true;

  async function handOver(): Promise<boolean> {
    try {
      const request = remote
        ? encodeRequest({
            envelope: prepared.envelope,
            parsed: prepared.preParsed ? { value: prepared.parsedBody } : undefined,
            rerun: mayRerun(method, run.retry === true),
            run: runOptionsOf(run),
            idempotency: run.idempotency,
          })
        : undefined;
      await config.store.createJob(job, request);
    } catch (err) {
      executor.cancel(admission);
      config.logger.error(`express-bgrs: the store refused a new job: ${(err as Error).message}`);
      forgetRefused(config, id);
      sendStoreUnavailable(res, config.retryAfter);
      return false;
    }
    // A job detached before the route's own auth ran is anonymous so far: the replay tells whose it is.
    const deriveOwner = prepared.owner === null ? (replayed: IncomingMessage) => resolveOwner(config.owner, replayed as Request) : undefined;
    // One end per job, whichever path ends it (its run, or the queue before it started): the end
    // hooks (the guard's key, subscribers, the waiting client) run exactly once.
    const end = new JobEnd(config, id, { onEnd: run.onEnd, ttl: run.ttl, notify: () => executor.notify(id) });
    const start = () =>
      runJob(config, rt.replayer, id, prepared.envelope, prepared.dispatch, {
        onChange: () => executor.notify(id),
        deriveOwner,
        unanswered: (live, ended) => sendUnanswered(config, live, ended),
        ...run,
        end,
      });
    // Ended before it started (cancelled while queued, shut down): a client waiting for its response gets an answer.
    const { live } = run;
    const endQueued: EndQueued = (ending) =>
      end
        .end(ending && { ...ending, response: null }, {
          answer: live && ((final) => sendUnanswered(config, live, { id, status: final?.status ?? null, error: final?.error ?? null })),
        })
        .catch((err: unknown) => config.logger.error(`express-bgrs: could not end job ${id}: ${(err as Error)?.message ?? String(err)}`));
    if (remote) return enqueue(end);
    // The admission held its place while the job was written, so it is still valid.
    executor.place(admission, id, start, endQueued);
    return true;
  }

  /** Queue mode: the queue takes the job, or it ends failed and the client is told 503 to retry. */
  async function enqueue(end: JobEnd): Promise<boolean> {
    try {
      await executor.enqueue!(admission, id);
      return true;
    } catch (err) {
      const message = (err as Error)?.message ?? String(err);
      config.logger.error(`express-bgrs: the queue refused job ${id}: ${message}`);
      await end.end({ status: 'failed', response: null, error: { type: 'queue_unavailable', message: `the queue could not take the job: ${message}` } });
      problemsFor(config.view).sendProblem(res, 'queue-unavailable', 'The job queue is unavailable; try again later.', { retryAfter: config.retryAfter });
      return false;
    } finally {
      executor.cancel(admission);
    }
  }
}

/** The options of a run that travel with a queued job to its worker; undefined when there are none. */
function runOptionsOf(run: SubmitOptions): { timeout?: number; ttl?: number } | undefined {
  if (run.timeout === undefined && run.ttl === undefined) return undefined;
  return { ...(run.timeout === undefined ? {} : { timeout: run.timeout }), ...(run.ttl === undefined ? {} : { ttl: run.ttl }) };
}

/** The waiting client of a job that ended before its response began: a problem naming how it ended. */
function sendUnanswered(config: Configuration, live: ServerResponse, ended: { id: string; status: string | null; error: JobError | null }): void {
  const { sendProblem } = problemsFor(config.view);
  const error = ended.error && { type: ended.error.type, message: ended.error.message };
  const detail = ended.error?.message ?? (ended.status ? `the job ended ${ended.status}` : 'the job ended before it started');
  sendProblem(live, 'job-failed', detail, { extra: { job: { id: ended.id, status: ended.status, error } } });
}

/**
 * A create that timed out may still land later (a command queued while disconnected and sent on
 * reconnect, a slow link). The client was told 503 and will retry, so that job must not linger:
 * delete it, retrying every second for one lease (a delete can overtake a create resent late).
 */
function forgetRefused(config: Configuration, id: string): void {
  const giveUpAt = Date.now() + config.lease;
  const again = (): void => {
    if (Date.now() < giveUpAt) setTimeout(attempt, 1000).unref();
  };
  function attempt(): void {
    config.store.deleteJob(id).then((existed) => {
      if (!existed) again();
    }, again);
  }
  attempt();
}

/** The client's answer for a new job: the 202, or the real response when it came within `wait`. */
async function answer(rt: Runtime, res: Response, job: Job, ack: Acknowledgement): Promise<void> {
  if (ack.wait && ack.wait > 0) {
    const seconds = Math.min(ack.wait, rt.config.maxWait);
    const ended = await waitForFinal(rt, job.id, seconds).catch(() => null);
    if (ended && isFinal(ended.status) && ended.response && !res.destroyed) {
      const body = await rt.config.store.readResult(ended.id).catch(() => null);
      if (body) return replayResult(res, ended as Job & { response: JobResponse }, body, rt.config.replayCookies);
    }
    if (ended) job = ended;
  }
  acknowledge(rt.config, res, job, ack.byPrefer, rt.executor.position(job.id));
}

/** Detaches one request. Never throws: every failure becomes a problem response or `next(err)`. */
export async function detach(
  rt: Runtime,
  req: Request,
  res: Response,
  next: NextFunction,
  decision: TriggerDecision,
  factory: DispatchFactory,
  run: SubmitOptions = {},
): Promise<void> {
  const prepared = await prepare(rt, req, res, next, factory);
  if (prepared) await submit(rt, res, prepared, uuidv4(), req.method, { byPrefer: decision.byPrefer, wait: decision.wait }, run);
}
