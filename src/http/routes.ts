// The job routes under the base path: list, status, details, result, cancel, delete and events.

import type { NextFunction, Request, Response } from 'express';
import type { JobAction } from '../config/options.js';
import { readJob, waitForFinal } from '../jobs/observe.js';
import type { Runtime } from '../jobs/runtime.js';
import { JobAbortError } from '../model/errors.js';
import type { Job, JobPage, JobResponse, JobStatus } from '../model/job.js';
import { endingNow, isFinal } from '../model/job.js';
import { InvalidCursorError } from '../stores/store.js';
import type { Rendered } from '../views/view.js';
import { streamEvents } from './events.js';
import { sendJson } from './json.js';
import { limitKey, resolveOwner } from './owner.js';
import { problemsFor } from './problem.js';
import { replayResult } from './result.js';
import { parsePrefer } from './trigger.js';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const DETAILS_DEFAULT_LIMIT = 100;
const DETAILS_MAX_LIMIT = 1000;
const LIST_DEFAULT_LIMIT = 20;
const LIST_MAX_LIMIT = 100;
const STATUSES: ReadonlySet<string> = new Set(['queued', 'running', 'completed', 'failed', 'cancelled']);

/** Which methods each job route answers (HEAD goes with GET). */
const ROUTES: Record<string, readonly string[]> = {
  list: ['GET', 'HEAD'],
  '': ['GET', 'HEAD', 'DELETE'],
  details: ['GET', 'HEAD'],
  result: ['GET', 'HEAD'],
  cancel: ['POST'],
  events: ['GET', 'HEAD'],
};

/** A store call that failed: answered as 503, unlike a failure in user code (owner, authorize), which goes to next(err). */
class StoreUnavailable extends Error {}

function fromStore<T>(promise: Promise<T>): Promise<T> {
  return promise.catch((err: unknown) => {
    if (err instanceof InvalidCursorError) throw err;
    throw new StoreUnavailable((err as Error)?.message ?? String(err));
  });
}

/** The largest integer a client may send (`after`, `limit`, `Last-Event-ID`): what every store's integer columns hold. */
const MAX_CLIENT_INTEGER = 2 ** 31 - 1;

/** A non-negative integer from the client, at most MAX_CLIENT_INTEGER; `null` when it is anything else. */
function clientInteger(text: string): number | null {
  if (!/^\d{1,10}$/.test(text)) return null;
  const value = Number(text);
  return value <= MAX_CLIENT_INTEGER ? value : null;
}

/** Parses a non-negative integer query value; `undefined` when absent, `null` when invalid. */
function integerParam(params: URLSearchParams, name: string): number | undefined | null {
  const values = params.getAll(name);
  if (values.length === 0) return undefined;
  if (values.length > 1) return null;
  return clientInteger(values[0]!);
}

/** Whether a URL falls under the job routes' base path (which is never detached). */
export function underBasePath(base: string, url: string): boolean {
  if (!url.startsWith(base)) return false;
  const next = url.charCodeAt(base.length);
  // end of string, '/', '?'
  return Number.isNaN(next) || next === 47 || next === 63;
}

/** Whether a middleware mounted at `mount` (Express's `req.baseUrl`, '' at the root) ever sees `base`. */
export function reachesBasePath(mount: string, base: string): boolean {
  return mount === '' || underBasePath(mount, base);
}

export function createRoutes(rt: Runtime): (req: Request, res: Response, next: NextFunction) => void {
  const { config } = rt;
  const { sendNotFound, sendProblem, sendStoreUnavailable } = problemsFor(config.view);
  const base = config.basePath;

  /**
   * The default rule: an owned job is its owner's alone; an anonymous job is a capability URL,
   * open to whoever holds its (unguessable) id, and never listed.
   */
  async function allowed(req: Request, job: Job, action: JobAction): Promise<boolean> {
    if (config.authorize) return Boolean(await config.authorize(req, job, action));
    return job.owner === null || (await resolveOwner(config.owner, req)) === job.owner;
  }

  /** `?wait=N` or `Prefer: wait=N`, in seconds, capped by `maxWait`; `null` when `?wait` is invalid. */
  function waitSeconds(req: Request, params: URLSearchParams): number | null {
    // A repeated parameter is ambiguous, answered 400 like a repeated `after` or `limit`.
    if (params.getAll('wait').length > 1) return null;
    const query = params.get('wait');
    if (query !== null) {
      if (!/^\d+(\.\d+)?$/.test(query)) return null;
      return Math.min(Number(query), config.maxWait);
    }
    return Math.min(parsePrefer(req.headers.prefer).wait ?? 0, config.maxWait);
  }

  /** Sends what the view rendered, its own headers over the route's. */
  function render(res: Response, status: number, rendered: Rendered, headers: Record<string, string> = {}): void {
    sendJson(res, status, rendered.body, { ...headers, ...rendered.headers });
  }

  function retryHeaders(job: Job): Record<string, string> {
    return isFinal(job.status) ? {} : { 'Retry-After': String(config.retryAfter) };
  }

  async function cancel(job: Job): Promise<Job> {
    const error = { type: 'cancelled', message: 'the job was cancelled through the API' };
    const local = rt.executor.running.get(job.id);
    if (local) await local.stop('cancelled', error, new JobAbortError('BGRS_CANCELLED', error.message));
    const now = await fromStore(config.store.getJob(job.id));
    if (now && !isFinal(now.status)) {
      // Queued here, starting, or running in another process: the store's final status is the
      // cancel; that process's next heartbeat (within a second) aborts the handler. Recorded here
      // first, so that a store outage answers 503 and leaves the job as it was; a job queued here
      // then ends through its own end, which reads it (one whose start races this finds it ended).
      await fromStore(config.store.finishJob(job.id, { status: 'cancelled', ...endingNow(config.ttl), response: null, error }));
      if (!rt.executor.dequeue(job.id, null)) rt.executor.notify(job.id);
    }
    return (await fromStore(config.store.getJob(job.id))) ?? job;
  }

  async function list(req: Request, res: Response, query: string): Promise<void> {
    const params = new URLSearchParams(query);
    const limit = integerParam(params, 'limit');
    if (limit === null || limit === 0 || (limit !== undefined && limit > LIST_MAX_LIMIT)) {
      return sendProblem(res, 'invalid-parameter', `\`limit\` must be an integer from 1 to ${LIST_MAX_LIMIT}.`);
    }
    const statuses = params
      .getAll('status')
      .flatMap((value) => value.split(','))
      .map((value) => value.trim())
      .filter(Boolean);
    const unknown = statuses.find((status) => !STATUSES.has(status));
    if (unknown !== undefined) return sendProblem(res, 'invalid-parameter', `Unknown status \`${unknown}\`; use ${[...STATUSES].join(', ')}.`);
    if (params.getAll('cursor').length > 1) return sendProblem(res, 'invalid-parameter', '`cursor` may be given once.');
    const cursor = params.get('cursor');
    const everyone = config.authorize ? Boolean(await config.authorize(req, null, 'list-all')) : false;
    const owner = everyone ? undefined : await resolveOwner(config.owner, req);
    // A caller without an identity has no jobs to list: anonymous jobs are reachable only by their id.
    if (owner === null) return render(res, 200, config.view.listPage([], null, base));
    const pageSize = limit ?? LIST_DEFAULT_LIMIT;
    let page: JobPage;
    try {
      page = await fromStore(config.store.listJobs({ owner, statuses: statuses as JobStatus[], limit: pageSize, cursor }));
    } catch (err) {
      if (err instanceof InvalidCursorError) return sendProblem(res, 'invalid-parameter', '`cursor` is not one this server handed out.');
      throw err;
    }
    // A job whose process died is recorded interrupted as it is read; it then leaves a status filter it no longer matches.
    const read = await Promise.all(page.jobs.map(async (job) => (isFinal(job.status) ? job : await fromStore(readJob(rt, job.id)))));
    const jobs = read.filter((job): job is Job => job !== null && (statuses.length === 0 || statuses.includes(job.status)));
    let next: string | null = null;
    if (page.next) {
      const nextParams = new URLSearchParams();
      if (statuses.length) nextParams.set('status', statuses.join(','));
      nextParams.set('limit', String(pageSize));
      nextParams.set('cursor', page.next);
      next = `${base}?${nextParams.toString()}`;
    }
    render(
      res,
      200,
      config.view.listPage(
        jobs.map((job) => ({ job, position: rt.executor.position(job.id) })),
        next,
        base,
      ),
    );
  }

  async function serve(req: Request, res: Response, id: string, sub: string, query: string): Promise<void> {
    if (!UUID_V4.test(id)) return sendNotFound(res);
    const action: JobAction = sub === '' ? (req.method === 'DELETE' ? 'delete' : 'read') : (sub as JobAction);
    let job = await fromStore(readJob(rt, id));
    if (!job || !(await allowed(req, job, action))) return sendNotFound(res);
    const params = new URLSearchParams(query);

    if (sub === 'cancel' || (sub === '' && req.method === 'DELETE')) {
      if (isFinal(job.status)) {
        if (sub === 'cancel') return sendProblem(res, 'already-final', `The job has already ended (${job.status}).`);
        await fromStore(config.store.deleteJob(id));
        res.statusCode = 204;
        res.setHeader('Cache-Control', 'no-store');
        res.end();
        return;
      }
      const cancelled = await cancel(job);
      return render(res, 202, config.view.job(cancelled, { base }), retryHeaders(cancelled));
    }

    if (sub === 'events' && req.method === 'HEAD') {
      // The head a GET would start with; a HEAD never holds a stream open.
      res.statusCode = 200;
      res.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
      res.setHeader('Cache-Control', 'no-store');
      res.end();
      return;
    }
    if (sub === 'events') {
      const header = req.headers['last-event-id'];
      const lastEventId = header === undefined || header === '' ? 0 : clientInteger(String(header).trim());
      if (lastEventId === null)
        return sendProblem(res, 'invalid-parameter', `\`Last-Event-ID\` must be an integer from 0 to ${MAX_CLIENT_INTEGER} (an event id this server sent).`);
      const key = limitKey(await resolveOwner(config.owner, req), req);
      const open = rt.streams.get(key) ?? 0;
      if (open >= config.maxEventStreams) {
        return sendProblem(res, 'too-many-streams', `You have ${config.maxEventStreams} event streams open here; close one first.`, {
          retryAfter: config.retryAfter,
        });
      }
      rt.streams.set(key, open + 1);
      res.once('close', () => {
        const left = (rt.streams.get(key) ?? 1) - 1;
        if (left <= 0) rt.streams.delete(key);
        else rt.streams.set(key, left);
      });
      return streamEvents(rt, res, job, lastEventId);
    }

    if (sub === '' || sub === 'result') {
      const wait = waitSeconds(req, params);
      if (wait === null) return sendProblem(res, 'invalid-parameter', '`wait` must be one number of seconds.');
      if (wait > 0 && !isFinal(job.status)) {
        const closed = new AbortController();
        res.once('close', () => closed.abort());
        job = (await fromStore(waitForFinal(rt, id, wait, closed.signal))) ?? job;
      }
    }

    if (sub === '') return render(res, 200, config.view.job(job, { base, position: rt.executor.position(id) }), retryHeaders(job));

    if (sub === 'details') {
      const after = integerParam(params, 'after');
      const limit = integerParam(params, 'limit');
      if (after === null) return sendProblem(res, 'invalid-parameter', `\`after\` must be an integer from 0 to ${MAX_CLIENT_INTEGER} (a log line seq).`);
      if (limit === null || limit === 0 || (limit !== undefined && limit > DETAILS_MAX_LIMIT)) {
        return sendProblem(res, 'invalid-parameter', `\`limit\` must be an integer from 1 to ${DETAILS_MAX_LIMIT}.`);
      }
      const pageSize = limit ?? DETAILS_DEFAULT_LIMIT;
      const items = await fromStore(config.store.readLogs(id, after ?? 0, pageSize));
      const last = items.at(-1)?.seq ?? after ?? 0;
      const next = items.length === pageSize ? `${base}/${id}/details?after=${last}&limit=${pageSize}` : null;
      return render(res, 200, config.view.logPage(job, items, next), retryHeaders(job));
    }

    // sub === 'result'
    if (!isFinal(job.status)) return render(res, 202, config.view.job(job, { base, position: rt.executor.position(id) }), retryHeaders(job));
    if (!job.response && job.error?.type === 'result_too_large') {
      return sendProblem(res, 'result-too-large', job.error.message, { extra: { job: config.view.job(job, { base }).body } });
    }
    if (!job.response) {
      return sendProblem(res, 'no-result', `The job ended ${job.status} before its handler answered.`, { extra: { job: config.view.job(job, { base }).body } });
    }
    const body = await fromStore(config.store.readResult(id));
    if (!body) return sendProblem(res, 'result-expired', 'The result of this job is no longer kept.');
    await replayResult(res, job as Job & { response: JobResponse }, body, config.replayCookies, config.view.resultHeaders(job));
  }

  return function bgrsRoutes(req: Request, res: Response, next: NextFunction): void {
    const full = req.originalUrl ?? req.url;
    if (!underBasePath(base, full)) return next();
    const q = full.indexOf('?');
    const path = q === -1 ? full : full.slice(0, q);
    const query = q === -1 ? '' : full.slice(q + 1);
    const [id = '', sub = '', ...extra] = path.slice(base.length + 1).split('/');
    const route = id === '' ? (sub === '' ? 'list' : undefined) : sub;
    const methods = route === undefined || extra.length > 0 ? undefined : ROUTES[route];
    if (!methods) return next();
    if (!methods.includes(req.method)) {
      res.setHeader('Allow', methods.join(', '));
      return sendProblem(res, 'method-not-allowed', `${req.method} is not allowed on this route.`);
    }
    const work = route === 'list' ? list(req, res, query) : serve(req, res, decodeURIComponentSafe(id), sub, query);
    work.catch((err: unknown) => {
      if (!(err instanceof StoreUnavailable)) return next(err);
      config.logger.error(`express-bgrs: job store failed: ${err.message}`);
      sendStoreUnavailable(res, config.retryAfter);
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
