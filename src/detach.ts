// Decides whether a request is detached, takes its body, acks with 202 and starts the background run.
import type { NextFunction, Request, Response } from 'express';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { v4 as uuidv4 } from 'uuid';
import type { Replayer } from './capture.js';
import type { Handler } from './compose.js';
import { finalResponder, runHandlers } from './compose.js';
import { DETACHED_NOT } from './context.js';
import type { JobContext } from './context.js';
import { BodyTooLargeError, bodyConsumed, buildEnvelope, hasBody, readBody } from './envelope.js';
import { jobDocument, newJob } from './job.js';
import type { Configuration } from './options.js';
import { sendProblem } from './problem.js';
import type { Dispatch, RunningJob } from './runner.js';
import { runJob } from './runner.js';
import { bgrsValues, defaultDecision, stripParam } from './trigger.js';
import type { TriggerDecision } from './trigger.js';

/** Marks a replayed request so that bgrs lets it through instead of detaching it again. */
const kReplay = Symbol.for('express-bgrs.replay');

/** Shared by every part of one bgrs() instance. */
export interface Runtime {
  config: Configuration;
  replayer: Replayer;
  running: Map<string, RunningJob>;
  closing: boolean;
  warned: Set<string>;
}

type AnyRequest = Request & { [kReplay]?: true; _body?: boolean };

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
  const own = Object.getOwnPropertyDescriptor(req, 'query');
  if (own && 'value' in own && own.value && typeof own.value === 'object') {
    const { bgrs: _dropped, ...rest } = own.value as Record<string, unknown>;
    req.query = rest as Request['query'];
  }
}

/** Passes a request through without detaching it: strip the parameter, give it the no-op context. */
export function passThrough(req: Request): void {
  stripInPlace(req);
  req.bgrs = DETACHED_NOT;
}

function warnOnce(rt: Runtime, code: string, message: string): void {
  if (!rt.config.validations || rt.warned.has(code)) return;
  rt.warned.add(code);
  rt.config.logger.warn(`express-bgrs [${code}]: ${message}`);
}

/** Builds how the replay reaches the handler, from what the original request looks like now. */
export type DispatchFactory = (req: Request, res: Response, preParsed: boolean) => Dispatch;

/** `app.use(bgrs())`: the replay goes through the root app again, from its first middleware. */
export const throughApp: DispatchFactory = (req, _res, preParsed) => {
  let app = req.app as (Request['app'] & { parent?: Request['app'] }) | undefined;
  while (app?.parent) app = app.parent;
  if (typeof app !== 'function') throw new TypeError('express-bgrs: bgrs() must be mounted in an Express app (req.app is missing).');
  const root = app as unknown as (req: IncomingMessage, res: ServerResponse) => void;
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

/** `detachable(...handlers)`: the replay runs only these handlers, on a copy of the original request. */
export function throughHandlers(handlers: readonly Handler[]): DispatchFactory {
  return (req, res) => {
    const reqProto = Object.getPrototypeOf(req) as object;
    const resProto = Object.getPrototypeOf(res) as object;
    const props = Reflect.ownKeys(req)
      .filter((key) => !NOT_COPIED.has(key))
      .map((key) => [key, Object.getOwnPropertyDescriptor(req, key)!] as const);
    const url = stripParam(req.url);
    const originalUrl = stripParam(req.originalUrl ?? req.url);
    const query = Object.getOwnPropertyDescriptor(req, 'query');
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
      if (query && 'value' in query && query.value && typeof query.value === 'object') {
        const { bgrs: _dropped, ...rest } = query.value as Record<string, unknown>;
        replayed.query = rest as Request['query'];
      }
      replayed.res = rres as Response;
      (rres as Response).locals = { ...(locals as object) } as Response['locals'];
      replayed[kReplay] = true;
      replayed.bgrs = ctx;
      runHandlers(handlers, rreq, rres, finalResponder(rreq, rres));
    };
  };
}

/** Answers the client at once: 202, Location, Retry-After, the job document. */
function acknowledge(config: Configuration, res: Response, body: string, id: string, byPrefer: boolean): void {
  res.statusCode = 202;
  res.setHeader('Location', `${config.basePath}/${id}`);
  res.setHeader('Retry-After', String(config.retryAfter));
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Vary', 'Prefer');
  if (byPrefer) res.setHeader('Preference-Applied', 'respond-async');
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}

/** Detaches one request. Never throws: every failure becomes a problem response or `next(err)`. */
export async function detach(
  rt: Runtime,
  req: Request,
  res: Response,
  next: NextFunction,
  decision: TriggerDecision,
  factory: DispatchFactory,
): Promise<void> {
  const { config } = rt;
  if (rt.closing) {
    sendProblem(res, 'shutting-down', 'The server is shutting down and accepts no new background requests.', { retryAfter: config.retryAfter });
    return;
  }
  if (req.baseUrl && !config.basePath.startsWith(req.baseUrl)) {
    warnOnce(rt, 'BGRS_BASEPATH_MOUNT', `bgrs is mounted under "${req.baseUrl}" but basePath is "${config.basePath}"; job links will not reach the job routes. Set basePath to "${req.baseUrl}/bgrs".`);
  }
  let owner: string | null;
  let body: Buffer | null = null;
  let dispatch: Dispatch;
  // A parser mounted before bgrs already read the body: carry the parsed value, send no bytes.
  const preParsed = bodyConsumed(req) && hasBody(req);
  try {
    owner = await config.owner(req);
    if (!preParsed && hasBody(req)) body = await readBody(req, config.maxBodyBytes);
    dispatch = factory(req, res, preParsed);
  } catch (err) {
    if (err instanceof BodyTooLargeError) {
      sendProblem(res, 'body-too-large', `A detached request body may be at most ${err.limit} bytes (option maxBodyBytes).`);
      return;
    }
    next(err);
    return;
  }
  const clientUrl = req.originalUrl ?? req.url;
  const envelope = buildEnvelope(req, stripParam(clientUrl), body, preParsed);
  const id = uuidv4();
  const job = newJob({ id, method: req.method, url: clientUrl, owner: owner ?? null, status: 'running' });
  try {
    await config.store.createJob(job);
  } catch (err) {
    config.logger.error(`express-bgrs: the store refused a new job: ${(err as Error).message}`);
    sendProblem(res, 'store-unavailable', 'The job store is unavailable; try again later.', { retryAfter: config.retryAfter });
    return;
  }
  acknowledge(config, res, JSON.stringify(jobDocument(job, config.basePath)), id, decision.byPrefer);
  const running = runJob(config, rt.replayer, id, envelope, dispatch);
  rt.running.set(id, running);
  void running.done.then(() => rt.running.delete(id));
}
