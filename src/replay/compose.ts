// Runs a list of Express handlers in order, the way a router would: next(err) skips to error handlers.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { STATUS_CODES } from 'node:http';

/** A request handler or an error handler (four parameters), as `app.get()` takes them. */
export type Handler = (...args: never[]) => unknown;

type Next = (err?: unknown) => void;

/**
 * Calls `handlers` like a route would. A returned promise that rejects counts as `next(err)` (the
 * Express 5 rule, applied on Express 4 too). `done` gets whatever falls off the end.
 */
export function runHandlers(handlers: readonly Handler[], req: unknown, res: unknown, done: Next): void {
  let index = 0;
  const next: Next = (err) => {
    if (err === 'route' || err === 'router') {
      done();
      return;
    }
    const handler = handlers[index++] as ((...args: unknown[]) => unknown) | undefined;
    if (!handler) {
      done(err);
      return;
    }
    const failing = err !== undefined && err !== null;
    if (failing !== (handler.length === 4)) {
      next(err);
      return;
    }
    try {
      const result = failing ? handler(err, req, res, next) : handler(req, res, next);
      if (result && typeof (result as Promise<unknown>).then === 'function') {
        (result as Promise<unknown>).then(undefined, (reason: unknown) => next(reason ?? new Error('Rejected promise')));
      }
    } catch (thrown) {
      next(thrown);
    }
  };
  next();
}

/**
 * What a detached per-route run answers when its handlers pass the request on: there is no rest
 * of the app to reach, so it answers like Express's final handler would (404, or the error's status).
 */
export function finalResponder(req: IncomingMessage, res: ServerResponse): Next {
  return (err) => {
    if (res.headersSent) {
      // An error after the head was sent: cut the response, so the job is recorded as failed.
      if (err !== undefined) res.destroy();
      else if (!res.writableEnded) res.end();
      return;
    }
    let status = 404;
    let message = `Cannot ${req.method} ${(req.url ?? '/').split('?')[0]}`;
    if (err !== undefined && err !== null) {
      const declared = Number((err as { status?: unknown; statusCode?: unknown }).status ?? (err as { statusCode?: unknown }).statusCode);
      status = Number.isInteger(declared) && declared >= 400 && declared <= 599 ? declared : 500;
      message = STATUS_CODES[status] ?? 'Internal Server Error';
    }
    const body = `${message}\n`;
    res.statusCode = status;
    res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.setHeader('Content-Length', Buffer.byteLength(body));
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.end(body);
  };
}
