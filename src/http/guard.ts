// The Idempotency-Key guard: one key, one execution; retries replay the stored response or re-attach to the job.

import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { v4 as uuidv4 } from 'uuid';
import type { GuardConfig } from '../config/guard-options.js';
import { readJob } from '../jobs/observe.js';
import type { RunOptions } from '../jobs/runner.js';
import type { Runtime } from '../jobs/runtime.js';
import type { Job, JobResponse } from '../model/job.js';
import { isFinal } from '../model/job.js';
import type { IdempotencyClaimResult, IdempotencyStore, Store } from '../stores/store.js';
import { missingIdempotencyMethods, StoreFullError } from '../stores/store.js';
import { oneAtATime } from '../util/one-at-a-time.js';
import type { DispatchFactory } from './dispatch.js';
import { isReplay, throughApp } from './dispatch.js';
import { defaultFingerprint, parseIdempotencyKey, recordKey } from './idempotency-key.js';
import { sendJson } from './json.js';
import { credentialScope, entryOwner, resolveOwner } from './owner.js';
import { problemsFor } from './problem.js';
import { replayResult } from './result.js';
import type { Acknowledgement, Prepared } from './submit.js';
import { acknowledge, prepare, submit } from './submit.js';
import { decide } from './trigger.js';

const REPLAYED = { 'Idempotent-Replayed': 'true' };

export interface Guard {
  /** Route middleware: guards requests with a key, synchronous or detached. */
  middleware: RequestHandler;
  /** Whether this guard takes the request (its method is guarded). */
  applies(req: Request): boolean;
  /** Runs the guard for a request bgrs is about to detach (so the key is claimed before any 202). */
  handle(req: Request, res: Response, next: NextFunction, factory: DispatchFactory, route?: RunOptions): void;
}

export function createGuard(rt: Runtime, guard: GuardConfig, where: string): Guard {
  const { config } = rt;
  const { sendInvalidBgrs, sendProblem, sendStoreUnavailable } = problemsFor(config.view);
  const missing = missingIdempotencyMethods(config.store);
  if (missing.length > 0) {
    throw new TypeError(
      `${where}: the Idempotency-Key guard needs a store that keeps keys; this one lacks ${missing.map((method) => `\`${method}()\``).join(', ')} (README, "Writing a store").`,
    );
  }
  const store = config.store as Store & IdempotencyStore;
  const unavailable = (res: Response): void => sendStoreUnavailable(res, config.retryAfter);

  /** The first request with this key: it runs, as a job, and its response is stored with the key. */
  async function execute(
    res: Response,
    prepared: Prepared,
    method: string,
    id: string,
    name: string,
    ack: Acknowledgement | null,
    route: RunOptions,
  ): Promise<void> {
    // One renewal in flight at most: a slow store is not piled up with more of them.
    const renew = setInterval(
      oneAtATime(() => store.renewIdempotencyKey(name, id, Date.now() + guard.lease)),
      guard.lease / 3,
    );
    renew.unref();
    const started = await submit(rt, res, prepared, id, method, ack, {
      // The route's own run options (detachable({ timeout })) hold with a key too.
      ...route,
      live: ack ? undefined : res,
      // The stored response must outlive the key that replays it.
      ttl: Math.max(config.ttl, guard.ttl),
      // Queue mode: the worker that runs it completes the key.
      idempotency: { key: name, ttl: guard.ttl },
      onEnd: async (job: Job | null, answered: boolean) => {
        clearInterval(renew);
        const excluded = job?.response ? !guard.storeResponse(job.response.status) : false;
        // The handler answered: the key is done even if its response could not be kept (a retry
        // then gets 410, never a second run). Excluded by storeResponse: freed, as the app asked.
        if (answered && !excluded) await store.completeIdempotencyKey(name, id, Date.now() + guard.ttl);
        // Not known how it ended (the store is away): the key is left to its lease, and the next
        // claim looks at the job before anything runs again.
        else if (job !== null) await store.releaseIdempotencyKey(name, id);
      },
    });
    if (!started) {
      clearInterval(renew);
      await store.releaseIdempotencyKey(name, id).catch(() => false);
    } else if (rt.executor.remote && ack) {
      // Queued: its worker completes the key. Until then a retry finds the job and re-attaches to
      // it, whatever the key's lease says, so this process stops renewing it.
      clearInterval(renew);
    }
  }

  async function keyed(req: Request, res: Response, next: NextFunction, key: string, factory: DispatchFactory, route: RunOptions): Promise<void> {
    const decision = decide(config, req);
    // Prefer: respond-async, wait=N holds with a key as without one.
    const ack: Acknowledgement | null = decision.detach ? { byPrefer: decision.byPrefer, wait: decision.wait } : null;
    const prepared = await prepare(rt, req, res, next, factory);
    if (!prepared) return;
    let handedOver = false;
    try {
      handedOver = await claimAndAnswer(req, res, next, key, prepared, ack, route);
    } finally {
      // Answered from the record (a replay, 409, 422, 503): the place admission held is given back.
      if (!handedOver) rt.executor.cancel(prepared.admission);
    }
  }

  /** Claims the key and answers; resolves `true` when the request went on to run as the key's execution. */
  async function claimAndAnswer(
    req: Request,
    res: Response,
    next: NextFunction,
    key: string,
    prepared: Prepared,
    ack: Acknowledgement | null,
    route: RunOptions,
  ): Promise<boolean> {
    let fingerprint: string;
    let scope: string | null;
    try {
      fingerprint = guard.fingerprint
        ? String(await guard.fingerprint(req))
        : defaultFingerprint(req, prepared.body, prepared.parsedBody, prepared.preParsed, config.trigger !== undefined);
      scope = await keyScope(req, prepared.owner);
    } catch (err) {
      next(err);
      return false;
    }
    const name = recordKey(scope, req.method, prepared.clientUrl, key);
    // A record whose execution vanished (job expired or ended without a response) is freed and claimed again.
    for (let attempt = 0; attempt < 3; attempt++) {
      const id = uuidv4();
      const now = Date.now();
      let claim: IdempotencyClaimResult;
      try {
        claim = await store.claimIdempotencyKey(name, { fingerprint, jobId: id, state: 'running', leaseUntil: now + guard.lease, expiresAt: now + guard.ttl });
      } catch (err) {
        if (err instanceof StoreFullError) {
          sendProblem(res, 'server-busy', 'This server keeps as many Idempotency-Key records as it may; try again later.', { retryAfter: config.retryAfter });
          return false;
        }
        config.logger.error(`express-bgrs: idempotency claim failed: ${(err as Error).message}`);
        unavailable(res);
        return false;
      }
      if (claim.won) {
        await execute(res, prepared, req.method, id, name, ack, route);
        return true;
      }
      const { record } = claim;
      // Another request's key (422), unless its execution ended without an answer: then it is free.
      const reused = (): boolean => {
        if (record.fingerprint === fingerprint) return false;
        sendProblem(res, 'idempotency-key-reused', 'This Idempotency-Key was used with a different request (method, path, query or body).');
        return true;
      };
      let job: Job | null;
      let body: AsyncIterable<Uint8Array> | null = null;
      try {
        // readJob: a job whose process died is recorded interrupted here, so it reads as ended.
        job = await readJob(rt, record.jobId);
        if (job && isFinal(job.status) && job.response && !ack) body = await store.readResult(job.id);
      } catch {
        unavailable(res);
        return false;
      }
      const lapsed = record.state === 'running' && record.leaseUntil <= Date.now();
      // Its execution answered but its holder's completion may have been lost (a store fault, a crash): complete it now.
      const completeForHolder = async (): Promise<void> => {
        if (record.state === 'running') await store.completeIdempotencyKey(name, record.jobId, Date.now() + guard.ttl).catch(() => false);
      };
      if (job && isFinal(job.status) && job.response) {
        // Its execution answered. A response storeResponse excludes frees the key (the app's choice).
        if (!guard.storeResponse(job.response.status)) {
          await store.releaseIdempotencyKey(name, record.jobId).catch(() => false);
          continue;
        }
        if (reused()) return false;
        await completeForHolder();
        if (ack) sendJobDocument(res, job);
        else if (body) await replayResult(res, job as Job & { response: JobResponse }, body, config.replayCookies, REPLAYED);
        else sendResultGone(res);
        return false;
      }
      if (!job) {
        // A completed execution whose job was deleted or expired early: never run it again.
        if (record.state === 'done') {
          if (!reused()) sendResultGone(res);
          return false;
        }
        // Claimed, and its job not written yet (or refused): in use until its lease says otherwise.
        if (!lapsed) {
          if (!reused()) sendInUse(res);
          return false;
        }
        await store.releaseIdempotencyKey(name, record.jobId).catch(() => false);
        continue;
      }
      if (!isFinal(job.status)) {
        if (reused()) return false;
        // Re-attach: a client whose first call was cut off gets the job that tracks that execution.
        if (ack) acknowledge(config, res, job, ack.byPrefer);
        else sendInUse(res);
        return false;
      }
      // A completed key whose response was not kept (the store failed under it), or an execution
      // that began answering before it failed and whose key's completion was lost: never run again.
      if (record.state === 'done' || job.error?.answered) {
        await completeForHolder();
        if (!reused()) sendResultGone(res);
        return false;
      }
      // Its holder is alive (its lease runs): only it knows whether its handler began answering (a
      // cancel recorded by another process does not say), and it completes or releases the key as
      // its run ends. Until then the key is in use.
      if (record.state === 'running' && !lapsed) {
        if (!reused()) sendInUse(res);
        return false;
      }
      // Ended without a response (timeout, cancel, a crash before any answer): the key is new again.
      await store.releaseIdempotencyKey(name, record.jobId).catch(() => false);
    }
    sendInUse(res);
    return false;
  }

  function sendInUse(res: Response): void {
    sendProblem(res, 'idempotency-key-in-use', 'A request with this Idempotency-Key is still being processed.', { retryAfter: config.retryAfter });
  }

  function sendResultGone(res: Response): void {
    sendProblem(
      res,
      'idempotency-key-result-gone',
      'The request with this Idempotency-Key was processed, and its stored response is no longer kept; it is not run again.',
    );
  }

  /**
   * Whose keys these are: the `scope` option, else the owner, else (an anonymous caller) a digest
   * of its credentials. Each kind is tagged so that no owner name can collide with another kind.
   */
  async function keyScope(req: Request, owner: string | null): Promise<string | null> {
    if (guard.scope) {
      const scope = await resolveOwner(guard.scope, req);
      return scope === null ? null : `scope:${scope}`;
    }
    // Where app.use(bgrs()) met the request first, the owner it saw there decides, as it did for
    // a detached try of the same key (claimed before the route's auth ran).
    const entry = entryOwner(req);
    const who = entry !== undefined ? entry : owner;
    return who !== null ? `owner:${who}` : credentialScope(req);
  }

  /** A finished job, retried with a detach: its document, as the replayed answer. */
  function sendJobDocument(res: Response, job: Job): void {
    const rendered = config.view.job(job, { base: config.basePath });
    sendJson(res, 200, rendered.body, { Location: `${config.basePath}/${job.id}`, 'Idempotent-Replayed': 'true', ...rendered.headers });
  }

  function handle(req: Request, res: Response, next: NextFunction, factory: DispatchFactory, route: RunOptions = {}): void {
    const header = req.headers['idempotency-key'];
    if (header === undefined) {
      if (guard.required) return sendProblem(res, 'idempotency-key-missing', `${req.method} requests here need an Idempotency-Key header.`);
      return next();
    }
    const key = parseIdempotencyKey(header);
    if (key === null) {
      return sendProblem(
        res,
        'idempotency-key-invalid',
        'An Idempotency-Key is 1–255 visible ASCII characters, bare (no quotes or commas) or as a quoted string.',
      );
    }
    if (decide(config, req).invalid) {
      return sendInvalidBgrs(res);
    }
    void keyed(req, res, next, key, factory, route).catch(next);
  }

  const applies = (req: Request): boolean => guard.methods.has(req.method);

  return {
    applies,
    handle,
    middleware: function idempotencyGuard(req: Request, res: Response, next: NextFunction): void {
      if (!applies(req)) return next();
      if (isReplay(req)) {
        // A request detached before it reached this route skipped the check: its job answers the 400.
        if (guard.required && req.headers['idempotency-key'] === undefined) {
          return sendProblem(res, 'idempotency-key-missing', `${req.method} requests here need an Idempotency-Key header.`);
        }
        return next();
      }
      handle(req, res, next, throughApp);
    },
  };
}
