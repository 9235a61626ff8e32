// Decides whether a request is detached, takes its body, acks with 202 and starts the background run.
import type { NextFunction, Request, Response } from 'express';
import { IncomingMessage } from 'node:http';
import type { ServerResponse } from 'node:http';
import { v4 as uuidv4 } from 'uuid';
import type { Envelope, Replayer } from './capture.js';
import type { Handler } from './compose.js';
import { finalResponder, runHandlers } from './compose.js';
import { DETACHED_NOT } from './context.js';
import type { JobContext } from './context.js';
import { BodyBudgetError, BodyTooLargeError, bodyConsumed, buildEnvelope, hasBody, readBody } from './envelope.js';
import { limitKey, resolveOwner } from './owner.js';
import { jobDocument, newJob } from './job.js';
import type { Job } from './job.js';
import type { Configuration } from './options.js';
import { sendJson } from './json.js';
import { sendProblem, sendStoreUnavailable } from './problem.js';
import type { Dispatch, RunOptions } from './runner.js';
import type { Admission, Scheduler } from './scheduler.js';
import { waitForFinal } from './observe.js';
import { replayResult } from './result.js';
import { isFinal } from './job.js';
import type { JobResponse } from './job.js';
import { runJob } from './runner.js';
import { bgrsValues, defaultDecision, stripParam } from './trigger.js';
import type { TriggerDecision } from './trigger.js';

/** Marks a replayed request so that bgrs lets it through instead of detaching it again. */
const kReplay = Symbol.for('express-bgrs.replay');
/** Marks a per-route replay whose handlers passed the request on: the route resumes it with next(err). */
const kResume = Symbol('express-bgrs.resume');

/** Shared by every part of one bgrs() instance. */
export interface Runtime {
  config: Configuration;
  replayer: Replayer;
  scheduler: Scheduler;
  closing: boolean;
  warned: Set<string>;
  /** Open `/events` streams per caller (limitKey), for `maxEventStreams`. */
  streams: Map<string, number>;
}

type AnyRequest = Request & { [kReplay]?: true; [kResume]?: { route: object; err: unknown }; _body?: boolean };

/** Whether a request is a background replay made by bgrs. Loggers and rate limiters may skip those. */
export function isReplay(req: IncomingMessage): boolean {
  return (req as AnyRequest)[kReplay] === true;
}

export function decide(config: Configuration, req: Request): TriggerDecision {
  if (config.trigger) return { detach: Boolean(config.trigger(req)), byPrefer: false, invalid: false };
  return defaultDecision(req);
}

/** The handler sees the request as if `bgrs` had never been sent. */
export function stripInPlace(req: Request): void {
  if (bgrsValues(req.url) === undefined) return;
  req.url = stripParam(req.url);
  if (req.originalUrl) req.originalUrl = stripParam(req.originalUrl);
  // Express 4 parsed the query into an own property already; Express 5 re-parses req.url on access.
  const query = queryWithoutBgrs(Object.getOwnPropertyDescriptor(req, 'query'));
  if (query) req.query = query;
}

/** Express 4's already-parsed `req.query` (an own property) without `bgrs`; undefined on Express 5. */
function queryWithoutBgrs(own: PropertyDescriptor | undefined): Request['query'] | undefined {
  if (!own || !('value' in own) || !own.value || typeof own.value !== 'object') return undefined;
  const { bgrs: _dropped, ...rest } = own.value as Record<string, unknown>;
  return rest as Request['query'];
}

/**
 * Gives every request the no-op `req.bgrs` without adding a property to each one: installed once
 * on Express's base `request` object, the prototype every app's (and sub-app's) request prototype
 * inherits from. Requests that are not Express's (a bare `http` server) get their own property.
 */
export function ensureDefaultContext(req: Request): void {
  if (req.bgrs !== undefined) return;
  let proto = Object.getPrototypeOf(req) as object | null;
  while (proto) {
    const parent = Object.getPrototypeOf(proto) as object | null;
    if (parent === IncomingMessage.prototype || parent === null) break;
    proto = parent;
  }
  if (proto && proto !== IncomingMessage.prototype && Object.isExtensible(proto)) {
    Object.defineProperty(proto, 'bgrs', { value: DETACHED_NOT, writable: true, configurable: true, enumerable: false });
  } else {
    req.bgrs = DETACHED_NOT;
  }
}

/**
 * Passes a request through without detaching it: the handler sees no `bgrs` parameter. With a
 * custom `trigger`, `bgrs` is just a query parameter like any other, and is left alone.
 */
export function passThrough(req: Request, keepParam = false): void {
  if (!keepParam) stripInPlace(req);
  ensureDefaultContext(req);
}

/** The URL the background run sees: without the `bgrs` parameter, unless a custom trigger makes it an ordinary one. */
function jobUrl(config: Configuration, url: string): string {
  return config.trigger ? url : stripParam(url);
}

/** Builds how the replay reaches the handler, from what the original request looks like now. */
export type DispatchFactory = (req: Request, res: Response, preParsed: boolean) => Dispatch;

/** `app.use(bgrs())`: the replay goes through the root app again, from its first middleware. */
function rootApp(req: Request): (req: IncomingMessage, res: ServerResponse) => void {
  let app = req.app as (Request['app'] & { parent?: Request['app'] }) | undefined;
  while (app?.parent) app = app.parent;
  if (typeof app !== 'function') throw new TypeError('express-bgrs: bgrs must be used in an Express app (req.app is missing).');
  return app as unknown as (req: IncomingMessage, res: ServerResponse) => void;
}

/** The error (or plain `next()`) a per-route replay passed on, when `req` is that replay resumed at `route`. */
export function takeResume(req: Request, route: object): { err: unknown } | undefined {
  const resume = (req as AnyRequest)[kResume];
  if (!resume || resume.route !== route) return undefined;
  delete (req as AnyRequest)[kResume];
  return resume;
}

export const throughApp: DispatchFactory = (req, _res, preParsed) => {
  const root = rootApp(req);
  const parsed: unknown = req.body;
  return (rreq, rres, ctx) => {
    const replayed = rreq as AnyRequest;
    replayed[kReplay] = true;
    replayed.bgrs = ctx;
    if (preParsed) {
      replayed.body = parsed;
      replayed._body = true;
    }
    root(rreq, rres);
  };
};

/** Own properties of the original request that must not be carried to the replay. */
const NOT_COPIED = new Set<PropertyKey>(['res', 'next', 'bgrs', 'route', 'url', 'originalUrl', '_parsedUrl', '_parsedOriginalUrl', '__onFinished']);

/**
 * `detachable(...handlers)`: the replay runs only these handlers, on a copy of the original request.
 * If they pass it on (`next(err)` or `next()`), it continues in the app as the live request would:
 * dispatched through the root app again, and resumed at this route (`route`) to reach the app's
 * later routes and error handlers.
 */
export function throughHandlers(handlers: readonly Handler[], route: object, keepParam = false): DispatchFactory {
  return (req, res) => {
    const root = rootApp(req);
    const reqProto = Object.getPrototypeOf(req) as object;
    const resProto = Object.getPrototypeOf(res) as object;
    const props = Reflect.ownKeys(req)
      .filter((key) => !NOT_COPIED.has(key))
      .map((key) => [key, Object.getOwnPropertyDescriptor(req, key)!] as const);
    const url = keepParam ? req.url : stripParam(req.url);
    const originalUrl = keepParam ? (req.originalUrl ?? req.url) : stripParam(req.originalUrl ?? req.url);
    const query = keepParam ? undefined : queryWithoutBgrs(Object.getOwnPropertyDescriptor(req, 'query'));
    const locals: unknown = res.locals;
    return (rreq, rres, ctx: JobContext) => {
      Object.setPrototypeOf(rreq, reqProto);
      Object.setPrototypeOf(rres, resProto);
      for (const [key, descriptor] of props) {
        if (!Object.prototype.hasOwnProperty.call(rreq, key)) Object.defineProperty(rreq, key, descriptor);
      }
      const replayed = rreq as AnyRequest;
      replayed.url = url;
      replayed.originalUrl = originalUrl;
      if (query) replayed.query = query;
      replayed.res = rres as Response;
      (rres as Response).locals = { ...(locals as object) } as Response['locals'];
      replayed[kReplay] = true;
      replayed.bgrs = ctx;
      runHandlers(handlers, rreq, rres, (err) => {
        if (rres.headersSent) return finalResponder(rreq, rres)(err);
        // The root app sees the full URL; the copied mount baseUrl would confuse its router.
        replayed.url = originalUrl;
        delete (replayed as { baseUrl?: string }).baseUrl;
        replayed[kResume] = { route, err };
        root(rreq, rres);
      });
    };
  };
}

/** Answers the client at once: 202, Location, Retry-After, the job document. */
export function acknowledge(config: Configuration, res: ServerResponse, job: Job, byPrefer: boolean, position?: number): void {
  const headers: Record<string, string> = { Location: `${config.basePath}/${job.id}`, 'Retry-After': String(config.retryAfter), Vary: 'Prefer' };
  if (byPrefer) headers['Preference-Applied'] = 'respond-async';
  sendJson(res, 202, jobDocument(job, config.basePath, position), headers);
}

/** A request made ready to run in the background: who owns it, what to replay, how to dispatch it. */
export interface Prepared {
  owner: string | null;
  /** The place this job holds in the scheduler (a slot or a queue place, and its body bytes): used by launch, or given back. */
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
  const admission = rt.scheduler.admit(limitKey(owner, req));
  if (!admission.ok) {
    sendQueueFull(config, res, admission.reason);
    return null;
  }
  try {
    const hold = (bytes: number): boolean => rt.scheduler.holdBody(admission, bytes);
    if (preParsed && !hold(Number(req.headers['content-length']) || 0)) throw new BodyBudgetError();
    const body = !preParsed && hasBody(req) ? await readBody(req, config.maxBodyBytes, hold) : null;
    const dispatch = factory(req, res, preParsed);
    const clientUrl = req.originalUrl ?? req.url;
    const envelope = buildEnvelope(req, jobUrl(config, clientUrl), body, preParsed);
    return { owner, admission, preParsed, body, parsedBody: preParsed ? req.body : undefined, clientUrl, envelope, dispatch };
  } catch (err) {
    rt.scheduler.cancel(admission);
    if (err instanceof BodyTooLargeError) {
      sendProblem(res, 'body-too-large', `A detached request body may be at most ${err.limit} bytes (option maxBodyBytes).`);
      return null;
    }
    if (err instanceof BodyBudgetError) {
      sendProblem(res, 'server-busy', 'This server holds as many request bodies for background requests as it may (option maxHeldBodyBytes); try again later.', {
        retryAfter: config.retryAfter,
      });
      return null;
    }
    next(err);
    return null;
  }
}

function sendQueueFull(config: Configuration, res: Response, reason: 'queue-full' | 'owner-limit'): void {
  const detail =
    reason === 'queue-full'
      ? `This server runs ${config.concurrency} background requests at once and has ${config.maxQueued} waiting; try again later.`
      : `You have ${config.maxPerOwner} background requests queued or running here; wait for one to finish.`;
  sendProblem(res, 'queue-full', detail, { retryAfter: config.retryAfter });
}

/** How the client of a new job is answered: at once with 202, or after up to `wait` seconds with the real response. */
export interface Acknowledgement {
  byPrefer: boolean;
  /** `Prefer: respond-async, wait=N`: the real response if the job ends within N seconds, else the 202. */
  wait?: number;
}

/**
 * Records the job and starts it, or queues it when `concurrency` jobs already run here. With
 * `ack`, answers 202 (or, with `ack.wait`, the real response if it comes in time); with
 * `run.live`, the response is streamed to that client as it is captured. Resolves `false` (after
 * answering 429 or 503) when the job could not be taken.
 */
export async function launch(
  rt: Runtime,
  res: Response,
  prepared: Prepared,
  id: string,
  method: string,
  ack: Acknowledgement | null,
  run: RunOptions = {},
): Promise<boolean> {
  const { config, scheduler } = rt;
  const { admission } = prepared;
  const job = newJob({
    id,
    method,
    url: prepared.clientUrl,
    owner: prepared.owner,
    status: admission.queued ? 'queued' : 'running',
    leaseUntil: new Date(Date.now() + config.lease).toISOString(),
  });
  try {
    await config.store.createJob(job);
  } catch (err) {
    scheduler.cancel(admission);
    config.logger.error(`express-bgrs: the store refused a new job: ${(err as Error).message}`);
    forgetRefused(config, id);
    sendStoreUnavailable(res, config.retryAfter);
    return false;
  }
  // A job detached before the route's own auth ran is anonymous so far: the replay tells whose it is.
  const deriveOwner = prepared.owner === null ? (replayed: IncomingMessage) => resolveOwner(config.owner, replayed as Request) : undefined;
  const start = () => runJob(config, rt.replayer, id, prepared.envelope, prepared.dispatch, { onChange: () => scheduler.notify(id), deriveOwner, ...run });
  // Ended before it started (cancelled while queued, shut down): the run's end hooks still run,
  // and a client waiting for its response gets an answer.
  const skipped = (): void => {
    void (async () => {
      const ended = await config.store.getJob(id).catch(() => null);
      const final = ended && isFinal(ended.status) ? ended : null;
      await run.onEnd?.(final, false);
      if (run.live) sendProblem(run.live, 'job-failed', `the job ended ${final?.status ?? 'before it started'}`, { extra: { job: { id, status: final?.status ?? null, error: final?.error ?? null } } });
    })().catch((err: unknown) => config.logger.error(`express-bgrs: job ${id} end hook failed: ${(err as Error)?.message ?? String(err)}`));
  };
  // The admission held its place while the job was written, so it is still valid.
  scheduler.place(admission, id, start, skipped);
  if (ack) await answer(rt, res, job, ack);
  return true;
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
  acknowledge(rt.config, res, job, ack.byPrefer, rt.scheduler.position(job.id));
}

/** Detaches one request. Never throws: every failure becomes a problem response or `next(err)`. */
export async function detach(
  rt: Runtime,
  req: Request,
  res: Response,
  next: NextFunction,
  decision: TriggerDecision,
  factory: DispatchFactory,
  run: RunOptions = {},
): Promise<void> {
  const prepared = await prepare(rt, req, res, next, factory);
  if (prepared) await launch(rt, res, prepared, uuidv4(), req.method, { byPrefer: decision.byPrefer, wait: decision.wait }, run);
}
