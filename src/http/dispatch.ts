// How a replay reaches the handler (through the root app, or one route's handlers), and the marks that tell a replay apart.

import type { ServerResponse } from 'node:http';
import { IncomingMessage } from 'node:http';
import type { Request, Response } from 'express';
import { DETACHED_NOT, type JobContext } from '../jobs/context.js';
import type { Dispatch } from '../jobs/runner.js';
import type { Handler } from '../replay/compose.js';
import { finalResponder, runHandlers } from '../replay/compose.js';
import { bgrsValues, stripParam } from './trigger.js';

/** Marks a replayed request so that bgrs lets it through instead of detaching it again. */
const kReplay = Symbol.for('express-bgrs.replay');
/** Marks a per-route replay whose handlers passed the request on: the route resumes it with next(err). */
const kResume = Symbol('express-bgrs.resume');

type AnyRequest = Request & { [kReplay]?: true; [kResume]?: { route: object; err: unknown }; _body?: boolean };

/** Whether a request is a background replay made by bgrs. Loggers and rate limiters may skip those. */
export function isReplay(req: IncomingMessage): boolean {
  return (req as AnyRequest)[kReplay] === true;
}

/** The handler sees the request as if `bgrs` had never been sent. */
function stripInPlace(req: Request): void {
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

export const throughApp: DispatchFactory = (req, _res, preParsed) => intoApp(rootApp(req), preParsed ? { value: req.body as unknown } : undefined);

/**
 * The replay goes through `app` from its first middleware, marked as a replay, with the body a
 * parser had parsed before bgrs (`parsed`): the in-process path, and a queue worker's.
 */
export function intoApp(app: (req: IncomingMessage, res: ServerResponse) => void, parsed?: { value: unknown }): Dispatch {
  return (rreq, rres, ctx) => {
    const replayed = rreq as AnyRequest;
    replayed[kReplay] = true;
    replayed.bgrs = ctx;
    if (parsed) {
      replayed.body = parsed.value;
      replayed._body = true;
    }
    app(rreq, rres);
  };
}

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
        if (!Object.hasOwn(rreq, key)) Object.defineProperty(rreq, key, descriptor);
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
