// bgrs(options): resolves the options once and wires the middleware, the job routes and the runner together.

import type { ErrorRequestHandler, NextFunction, Request, RequestHandler, Response } from 'express';
import type { IdempotencyOptions } from './config/guard-options.js';
import { parseIdempotencyOptions } from './config/guard-options.js';
import type { Options } from './config/options.js';
import { parseOptions } from './config/options.js';
import type { DispatchFactory } from './http/dispatch.js';
import { ensureDefaultContext, isReplay, passThrough, takeResume, throughApp, throughHandlers } from './http/dispatch.js';
import type { Guard } from './http/guard.js';
import { createGuard } from './http/guard.js';
import { rememberEntryOwner, resolveOwner } from './http/owner.js';
import { problemsFor } from './http/problem.js';
import { createRoutes, reachesBasePath, underBasePath } from './http/routes.js';
import { detach } from './http/submit.js';
import { decide, PARAM } from './http/trigger.js';
import type { BgrsWorker, ReplayTarget, WorkOptions } from './http/work.js';
import { startWorker } from './http/work.js';
import { JobContext } from './jobs/context.js';
import type { Runtime } from './jobs/runtime.js';
import { JobAbortError } from './model/errors.js';
import { Replayer } from './replay/capture.js';
import type { Handler } from './replay/compose.js';
import { runHandlers } from './replay/compose.js';
import type { Store } from './stores/store.js';
import { missingIdempotencyMethods } from './stores/store.js';
import { withTimeouts } from './stores/timed.js';
import { checkKnown } from './util/known-options.js';

/** Options of one detachable route. */
export interface RouteOptions {
  /** This route's job timeout in ms (`0`: never), instead of the `timeout` option. Defaults to the `timeout` option. */
  timeout?: number;
  /**
   * Queue mode: when the worker running this route's job dies, another worker may run it again
   * from the start, whatever the method (a `POST` whose handler is safe to repeat). Jobs of
   * idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS) always may. Defaults to `false`.
   */
  retry?: boolean;
}

export interface CloseOptions {
  /** How long running jobs may go on before they are aborted and recorded `failed: shutdown`, in ms. Defaults to `0`. */
  grace?: number;
}

/** The middleware `bgrs()` returns, with its extras. */
export interface BgrsMiddleware extends RequestHandler {
  /** The job routes alone (`<basePath>/:id`, …), for mounting behind other middleware. */
  readonly router: RequestHandler;
  /** Makes one route detachable without `app.use(bgrs())`: `app.get('/export', background.detachable(handler))`. */
  detachable(...handlers: RequestHandler[]): RequestHandler;
  /** The same, with options for this route: `background.detachable({ timeout: 600_000 }, handler)`. */
  detachable(options: RouteOptions, ...handlers: RequestHandler[]): RequestHandler;
  /** The same, with error handlers (four parameters) among the handlers. */
  detachable(...handlers: Array<RouteOptions | RequestHandler | ErrorRequestHandler>): RequestHandler;
  /** The Idempotency-Key guard as route middleware: `app.post('/orders', background.idempotency({ required: true }), handler)`. */
  idempotency(options?: Partial<IdempotencyOptions>): RequestHandler;
  /** The store this instance keeps its jobs in. */
  readonly store: Store;
  /** Stops accepting detaches (503), lets running jobs finish within `grace`, then aborts the rest. */
  close(options?: CloseOptions): Promise<void>;
  /**
   * Queue mode (`executor: bullmq(…)`): takes jobs from the queue in this process and replays each
   * through `app`, the same app the web processes serve. A process may be web and worker at once.
   */
  work(app: ReplayTarget, options?: WorkOptions): BgrsWorker;
}

/** Creates the bgrs middleware. `app.use(bgrs())` makes every later route detachable and serves the job routes. */
export function bgrs(options?: Partial<Options>): BgrsMiddleware {
  const parsed = parseOptions(options);
  // The core reaches the store only through timeouts; users get their own store back as `.store`.
  const config = { ...parsed, store: withTimeouts(parsed.store, parsed.storeTimeout) };
  const { sendInvalidBgrs, sendProblem } = problemsFor(config.view);
  const rt: Runtime = {
    config,
    replayer: new Replayer(),
    executor: config.executor(config),
    closing: false,
    submitting: new Set(),
    warned: new Set(),
    streams: new Map(),
  };
  const routes = createRoutes(rt);
  if (config.validations && parsed.store.local === true && process.env.NODE_ENV === 'production') {
    config.logger.warn(
      'express-bgrs [BGRS_MEMORY_STORE_PRODUCTION]: the MemoryStore keeps jobs in this process only; they are lost on restart and invisible to other instances. Use a shared store in production, or set validations: false.',
    );
  }

  const customTrigger = config.trigger !== undefined;
  const globalGuard = config.idempotency
    ? createGuard(rt, parseIdempotencyOptions(config.idempotency, 'bgrs({ idempotency })'), 'bgrs({ idempotency })')
    : null;
  // A detached request with a key claims it before its 202, so a retry gets the same job.
  // A store without the guard's methods keeps no keys: a keyed detach is then refused (501), never run unguarded.
  const detachGuard =
    globalGuard ?? (missingIdempotencyMethods(parsed.store).length === 0 ? createGuard(rt, parseIdempotencyOptions(undefined, 'bgrs()'), 'bgrs()') : null);

  /** The guard that takes this request, if any: the global one, or the keyed-detach one. */
  function guardFor(req: Request, detaching: boolean): Guard | null {
    const guard = globalGuard ?? (detaching ? detachGuard : null);
    if (!guard?.applies(req)) return null;
    return req.headers['idempotency-key'] !== undefined || (guard === globalGuard && config.idempotency?.required) ? guard : null;
  }

  /** A keyed detach on a store that keeps no keys: refused, since running it unguarded could run it twice. */
  function refuseKeyed(req: Request, res: Response): boolean {
    if (detachGuard !== null || req.headers['idempotency-key'] === undefined || (req.method !== 'POST' && req.method !== 'PATCH')) return false;
    sendProblem(
      res,
      'idempotency-unsupported',
      'This server keeps no Idempotency-Keys (its store lacks the methods), so a request with one is not detached; send it without the key, or synchronously.',
    );
    return true;
  }

  const middleware = function bgrsMiddleware(req: Request, res: Response, next: NextFunction): void {
    ensureDefaultContext(req);
    // The common request asks for nothing: no parameter, no Prefer header, no guard to apply. A
    // custom trigger is the one rule instead, so it is asked on every request.
    if (
      globalGuard === null &&
      config.trigger === undefined &&
      req.url.indexOf(PARAM) === -1 &&
      req.headers.prefer === undefined &&
      req.headers['idempotency-key'] === undefined
    ) {
      return underBasePath(config.basePath, req.originalUrl ?? req.url) ? routes(req, res, next) : next();
    }
    if (isReplay(req)) return next();
    if (underBasePath(config.basePath, req.originalUrl ?? req.url)) return routes(req, res, next);
    const decision = decide(config, req);
    if (decision.invalid) {
      return sendInvalidBgrs(res);
    }
    if (decision.detach && !reachesBasePath(req.baseUrl, config.basePath)) return refuseMount(req, res);
    if (decision.detach && refuseKeyed(req, res)) return;
    const guard = guardFor(req, decision.detach);
    if (guard) return guard.handle(req, res, next, throughApp);
    if (!decision.detach || req.method === 'HEAD' || req.method === 'OPTIONS') {
      passThrough(req, customTrigger);
      if (req.headers['idempotency-key'] === undefined) return next();
      // A keyed request going on to its route: its guard scopes the key by the owner seen here.
      return void resolveOwner(config.owner, req).then(
        (owner) => {
          rememberEntryOwner(req, owner);
          next();
        },
        () => next(),
      );
    }
    void detach(rt, req, res, next, decision, throughApp);
  } as BgrsMiddleware;

  /**
   * Mounted under a prefix `basePath` lacks, this middleware never sees `basePath`, so every link
   * it handed out would be a 404: a detach is refused rather than recorded unreachable.
   */
  function refuseMount(req: Request, res: Response): void {
    const fix = `Set basePath to "${req.baseUrl}${config.basePath}" or mount bgrs() at the root.`;
    if (!rt.warned.has('BGRS_BASEPATH_MOUNT')) {
      rt.warned.add('BGRS_BASEPATH_MOUNT');
      config.logger.error(
        `express-bgrs [BGRS_BASEPATH_MOUNT]: bgrs() is mounted under "${req.baseUrl}" but basePath is "${config.basePath}", so its job routes cannot be reached and detaching is refused. ${fix}`,
      );
    }
    sendProblem(res, 'misconfigured', `bgrs() is mounted under "${req.baseUrl}" and cannot serve "${config.basePath}". ${fix}`);
  }

  function detachable(...args: Array<RouteOptions | RequestHandler | ErrorRequestHandler>): RequestHandler {
    const routeOptions: RouteOptions = typeof args[0] === 'object' && args[0] !== null && !Array.isArray(args[0]) ? (args.shift() as RouteOptions) : {};
    checkKnown('detachable()', routeOptions, ['timeout', 'retry']);
    if (routeOptions.retry !== undefined && typeof routeOptions.retry !== 'boolean') {
      throw new TypeError(`detachable(): \`retry\` must be a boolean, received \`${String(routeOptions.retry)}\`.`);
    }
    if (
      routeOptions.timeout !== undefined &&
      !(typeof routeOptions.timeout === 'number' && routeOptions.timeout >= 0 && Number.isFinite(routeOptions.timeout))
    ) {
      throw new TypeError(`detachable(): \`timeout\` must be a number of milliseconds ≥ 0, received \`${String(routeOptions.timeout)}\`.`);
    }
    const run = { ...(routeOptions.timeout === undefined ? {} : { timeout: routeOptions.timeout }), ...(routeOptions.retry ? { retry: true } : {}) };
    const list = args.flat(Infinity as 1) as Handler[];
    for (const handler of list) {
      if (typeof handler !== 'function') throw new TypeError(`detachable(): every handler must be a function, received \`${String(handler)}\`.`);
    }
    const route = {};
    const factory: DispatchFactory = throughHandlers(list, route, customTrigger);
    return function bgrsDetachable(req: Request, res: Response, next: NextFunction): void {
      if (isReplay(req)) {
        const resume = takeResume(req, route);
        if (resume) return next(resume.err as Error | undefined);
        // Detached earlier by app.use(bgrs()), with the app-wide timeout: this route's applies.
        if (routeOptions.timeout !== undefined && req.bgrs instanceof JobContext) req.bgrs.retime(routeOptions.timeout);
        return runHandlers(list, req, res, next);
      }
      const decision = decide(config, req);
      if (decision.invalid) {
        return sendInvalidBgrs(res);
      }
      if (!decision.detach || req.method === 'HEAD' || req.method === 'OPTIONS') {
        passThrough(req, customTrigger);
        return runHandlers(list, req, res, next);
      }
      if (refuseKeyed(req, res)) return;
      const guard = req.headers['idempotency-key'] !== undefined && detachGuard?.applies(req) ? detachGuard : null;
      if (guard) return guard.handle(req, res, next, factory, run);
      void detach(rt, req, res, next, decision, factory, run);
    };
  }

  function idempotency(guardOptions?: Partial<IdempotencyOptions>): RequestHandler {
    return createGuard(rt, parseIdempotencyOptions(guardOptions, 'idempotency()'), 'idempotency()').middleware;
  }

  async function close(closeOptions: CloseOptions = {}): Promise<void> {
    rt.closing = true;
    rt.executor.closing = true;
    // A job recorded while close() began is handed over (and then shut down) before close() goes on.
    while (rt.submitting.size > 0) await Promise.allSettled([...rt.submitting]);
    const grace = closeOptions.grace ?? 0;
    const pending = [...rt.executor.running.values()].map((job) => job.done);
    if (grace > 0 && pending.length) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(pending), new Promise((resolve) => (timer = setTimeout(resolve, grace)))]);
      clearTimeout(timer);
    }
    await rt.executor.stopAll(
      'failed',
      { type: 'shutdown', message: 'the server shut down before the job finished' },
      new JobAbortError('BGRS_SHUTDOWN', 'the server is shutting down'),
    );
    await rt.executor.dispose();
    // The default MemoryStore is bgrs' own; a store the app passed is the app's to close.
    if (config.ownsStore) await parsed.store.close?.();
  }

  Object.defineProperties(middleware, {
    router: { value: routes, enumerable: true },
    store: { value: parsed.store, enumerable: true },
    detachable: { value: detachable, enumerable: true },
    idempotency: { value: idempotency, enumerable: true },
    close: { value: close, enumerable: true },
    work: { value: (app: ReplayTarget, workOptions?: WorkOptions) => startWorker(rt, app, workOptions), enumerable: true },
  });
  return middleware;
}
