// Traps, failures: handlers that throw, call next(err) or reject, error handlers answering 5xx and 4xx, a
// handler that never answers (timeout). Both the app.use form and detachable(), Express 4 and 5, real HTTP.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ErrorRequestHandler, RequestHandler } from 'express';
import { bgrs } from '../src/index.js';
import { detachAndWait, detached, forEachExpress, listen, type Running, sleep, waitForJob } from './helpers.js';
import { MODES, mountBgrs, routeHandlers } from './traps-helpers.js';

type Failing = Error & { status?: number };

const failing = (message: string, status?: number): Failing => Object.assign(new Error(message), status === undefined ? {} : { status });

/** The app's error handler: the error's status (default 500) as JSON. */
const appErrors: ErrorRequestHandler = (err: Failing, _req, res, _next) => {
  res.status(err.status ?? 500).json({ handledBy: 'app', error: err.message });
};

/** An error handler passed to detachable() itself. */
const routeErrors: ErrorRequestHandler = (err: Failing, _req, res, _next) => {
  res.status(err.status ?? 500).json({ handledBy: 'route', error: err.message });
};

const throwing: RequestHandler = () => {
  throw failing('thrown');
};
const nexting: RequestHandler = (_req, _res, next) => {
  setTimeout(() => next(failing('passed to next')), 10);
};
const rejecting = (async () => {
  await sleep(10);
  throw failing('rejected');
}) as RequestHandler;
const unprocessable: RequestHandler = (_req, _res, next) => {
  next(failing('unprocessable', 422));
};
const rejecting4xx = (async () => {
  await sleep(10);
  throw failing('conflict', 409);
}) as RequestHandler;

forEachExpress((express, name) => {
  const express5 = name === 'Express 5';

  describe('app.use(bgrs()): errors reach the app error handler; 5xx fails the job, 4xx completes it', () => {
    let server: Running;
    before(async () => {
      const app = express();
      app.use(bgrs());
      app.get('/throw', throwing);
      app.get('/next', nexting);
      if (express5) app.get('/reject', rejecting);
      app.get('/unprocessable', unprocessable);
      if (express5) app.get('/reject-4xx', rejecting4xx);
      app.use(appErrors);
      server = await listen(app);
    });
    after(() => server.close());

    const cases: Array<[string, number, string]> = [
      ['/throw', 500, 'thrown'],
      ['/next', 500, 'passed to next'],
      ['/unprocessable', 422, 'unprocessable'],
    ];
    if (express5) cases.push(['/reject', 500, 'rejected'], ['/reject-4xx', 409, 'conflict']);
    for (const [path, status, message] of cases) {
      it(`${path}: the app's ${status} is captured and the job is ${status >= 500 ? 'failed' : 'completed'}`, async () => {
        const plain = await fetch(server.url + path);
        assert.equal(plain.status, status);
        const expected = await plain.json();
        assert.deepEqual(expected, { handledBy: 'app', error: message });

        const { job, result } = await detachAndWait(server.url, detached(path));
        if (status >= 500) {
          assert.equal(job.status, 'failed');
          assert.equal(job.error?.type, 'server_error');
        } else {
          assert.equal(job.status, 'completed');
          assert.equal(job.error, null);
        }
        assert.equal(job.response?.status, status);
        assert.equal(result.status, status);
        assert.deepEqual(await result.json(), expected);
      });
    }
  });

  describe('detachable(): errors', () => {
    let server: Running;
    before(async () => {
      const app = express();
      const background = bgrs();
      app.use(background.router);
      app.get('/own/throw', background.detachable(throwing, routeErrors));
      app.get('/own/next', background.detachable(nexting, routeErrors));
      app.get('/own/reject', background.detachable(rejecting, routeErrors));
      app.get('/own/reject-4xx', background.detachable(rejecting4xx, routeErrors));
      app.get('/app/throw', background.detachable(throwing));
      app.get('/app/next', background.detachable(nexting));
      app.get('/app/reject', background.detachable(rejecting));
      app.get('/app/unprocessable', background.detachable(unprocessable));
      app.use(appErrors);
      server = await listen(app);
    });
    after(() => server.close());

    const own: Array<[string, number, string]> = [
      ['/own/throw', 500, 'thrown'],
      ['/own/next', 500, 'passed to next'],
      ['/own/reject', 500, 'rejected'],
      ['/own/reject-4xx', 409, 'conflict'],
    ];
    for (const [path, status, message] of own) {
      it(`${path}: the route's own error handler answers ${status}; the job is ${status >= 500 ? 'failed' : 'completed'}`, async () => {
        const { job, result } = await detachAndWait(server.url, detached(path));
        assert.equal(job.status, status >= 500 ? 'failed' : 'completed');
        assert.equal(job.error?.type ?? null, status >= 500 ? 'server_error' : null);
        assert.equal(result.status, status);
        assert.deepEqual(await result.json(), { handledBy: 'route', error: message });
      });
    }

    const viaApp: Array<[string, number, string]> = [
      ['/app/throw', 500, 'thrown'],
      ['/app/next', 500, 'passed to next'],
      ['/app/reject', 500, 'rejected'],
      ['/app/unprocessable', 422, 'unprocessable'],
    ];
    for (const [path, status, message] of viaApp) {
      it(`${path}: the app's error handler answers ${status}, as without bgrs; the job is ${status >= 500 ? 'failed' : 'completed'}`, async () => {
        const plain = await fetch(server.url + path);
        assert.equal(plain.status, status);
        assert.deepEqual(await plain.json(), { handledBy: 'app', error: message });

        const { job, result } = await detachAndWait(server.url, detached(path));
        assert.equal(job.status, status >= 500 ? 'failed' : 'completed');
        assert.equal(job.error?.type ?? null, status >= 500 ? 'server_error' : null);
        assert.equal(job.response?.status, status);
        assert.equal(result.status, status);
        assert.equal(
          await result.text(),
          JSON.stringify({ handledBy: 'app', error: message }),
          `${path}: the detached run did not reach the app's error handler`,
        );
      });
    }
  });

  for (const mode of MODES) {
    describe(`${mode}: a handler that never answers, bgrs({ timeout: 300 })`, () => {
      let server: Running;
      let record: { ran: boolean; aborted: boolean; reason: string | null } = { ran: false, aborted: false, reason: null };
      const hang: RequestHandler = (req) => {
        record = { ran: true, aborted: false, reason: null };
        req.bgrs.signal.addEventListener('abort', () => {
          record = { ran: true, aborted: true, reason: (req.bgrs.signal.reason as Error | undefined)?.name ?? null };
        });
      };
      before(async () => {
        const app = express();
        const background = bgrs({ timeout: 300 });
        mountBgrs(app, background, mode);
        app.get('/hang', ...routeHandlers(background, mode, hang));
        server = await listen(app);
      });
      after(() => server.close());

      it('the job fails with timeout and req.bgrs.signal aborts', async () => {
        const started = Date.now();
        const ack = await fetch(server.url + detached('/hang'));
        assert.equal(ack.status, 202);
        const location = ack.headers.get('location')!;
        const job = await waitForJob(server.url, location, 3000);
        const elapsed = Date.now() - started;
        assert.equal(job.status, 'failed');
        assert.equal(job.error?.type, 'timeout');
        assert.equal(job.response, null);
        assert.ok(elapsed >= 280, `the job ended after ${elapsed} ms, before the 300 ms timeout`);
        assert.equal(record.ran, true, 'the handler ran');
        assert.equal(record.aborted, true, "the handler's signal did not abort");
        assert.equal(record.reason, 'TimeoutError');
      });
    });
  }
});
