// The job routes: GET <base>/:id, /:id/details and /:id/result, matched on the absolute path.
import type { NextFunction, Request, Response } from 'express';
import type { ServerResponse } from 'node:http';
import type { Runtime } from './detach.js';
import { isFinal, jobDocument } from './job.js';
import type { Job, JobResponse } from './job.js';
import type { JobAction } from './options.js';
import { sendNotFound, sendProblem } from './problem.js';
import { replayResult } from './result.js';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const SUBROUTES = new Set(['', 'details', 'result']);
export const DETAILS_DEFAULT_LIMIT = 100;
export const DETAILS_MAX_LIMIT = 1000;

/** A store call that failed: answered as 503, unlike a failure in user code (owner, authorize), which goes to next(err). */
class StoreUnavailable extends Error {}

function fromStore<T>(promise: Promise<T>): Promise<T> {
  return promise.catch((err: unknown) => {
    throw new StoreUnavailable((err as Error)?.message ?? String(err));
  });
}

function sendJson(res: ServerResponse, status: number, value: unknown, retryAfter?: number): void {
  const body = JSON.stringify(value);
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  if (retryAfter !== undefined) res.setHeader('Retry-After', String(retryAfter));
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}

/** Parses a non-negative integer query value; `undefined` when absent, `null` when invalid. */
function integerParam(params: URLSearchParams, name: string): number | undefined | null {
  const values = params.getAll(name);
  if (values.length === 0) return undefined;
  if (values.length > 1 || !/^\d{1,15}$/.test(values[0]!)) return null;
  return Number(values[0]);
}

/** Whether a URL falls under the job routes' base path (which is never detached). */
export function underBasePath(base: string, url: string): boolean {
  if (!url.startsWith(base)) return false;
  const next = url.charCodeAt(base.length);
  // end of string, '/', '?'
  return Number.isNaN(next) || next === 47 || next === 63;
}

export function createRoutes(rt: Runtime): (req: Request, res: Response, next: NextFunction) => void {
  const { config } = rt;
  const base = config.basePath;

  async function allowed(req: Request, job: Job, action: JobAction): Promise<boolean> {
    if (config.authorize) return Boolean(await config.authorize(req, job, action));
    return (await config.owner(req)) === job.owner;
  }

  async function serve(req: Request, res: Response, id: string, sub: string, query: string): Promise<void> {
    if (!UUID_V4.test(id)) return sendNotFound(res);
    const action: JobAction = sub === '' ? 'read' : (sub as JobAction);
    const job = await fromStore(config.store.getJob(id));
    if (!job || !(await allowed(req, job, action))) return sendNotFound(res);
    const retryAfter = isFinal(job.status) ? undefined : config.retryAfter;

    if (sub === '') return sendJson(res, 200, jobDocument(job, base), retryAfter);

    if (sub === 'details') {
      const params = new URLSearchParams(query);
      const after = integerParam(params, 'after');
      const limit = integerParam(params, 'limit');
      if (after === null) return sendProblem(res, 'invalid-parameter', '`after` must be a non-negative integer (a log line seq).');
      if (limit === null || limit === 0 || (limit !== undefined && limit > DETAILS_MAX_LIMIT)) {
        return sendProblem(res, 'invalid-parameter', `\`limit\` must be an integer from 1 to ${DETAILS_MAX_LIMIT}.`);
      }
      const pageSize = limit ?? DETAILS_DEFAULT_LIMIT;
      const items = await fromStore(config.store.readLogs(id, after ?? 0, pageSize));
      const last = items.at(-1)?.seq ?? after ?? 0;
      const next = items.length === pageSize ? `${base}/${id}/details?after=${last}&limit=${pageSize}` : null;
      return sendJson(res, 200, { items, next }, retryAfter);
    }

    // sub === 'result'
    if (!isFinal(job.status)) return sendJson(res, 202, jobDocument(job, base), config.retryAfter);
    if (!job.response && job.error?.type === 'result_too_large') {
      return sendProblem(res, 'result-too-large', job.error.message, { extra: { job: jobDocument(job, base) } });
    }
    if (!job.response) {
      return sendProblem(res, 'no-result', `The job ended ${job.status} before its handler answered.`, {
        extra: { job: jobDocument(job, base) },
      });
    }
    const body = await fromStore(config.store.readResult(id));
    if (!body) return sendProblem(res, 'result-expired', 'The result of this job is no longer kept.');
    await replayResult(res, job as Job & { response: JobResponse }, body, config.replayCookies);
  }

  return function bgrsRoutes(req: Request, res: Response, next: NextFunction): void {
    const full = req.originalUrl ?? req.url;
    if (!underBasePath(base, full)) return next();
    const q = full.indexOf('?');
    const path = q === -1 ? full : full.slice(0, q);
    const [id = '', sub = '', ...extra] = path.slice(base.length + 1).split('/');
    if (id === '' || extra.length > 0 || !SUBROUTES.has(sub)) return next();
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return sendProblem(res, 'method-not-allowed', `${req.method} is not allowed on this job route.`);
    }
    serve(req, res, decodeURIComponentSafe(id), sub, q === -1 ? '' : full.slice(q + 1)).catch((err: unknown) => {
      if (!(err instanceof StoreUnavailable)) return next(err);
      config.logger.error(`express-bgrs: job store failed: ${err.message}`);
      sendProblem(res, 'store-unavailable', 'The job store is unavailable; try again later.', { retryAfter: config.retryAfter });
    });
  };
}

function decodeURIComponentSafe(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return '';
  }
}
