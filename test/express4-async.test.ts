// The README's Express 4 caveat: an async handler whose promise rejects is invisible to Express 4. The three
// remedies it documents (background.detachable(handler), try/catch + next(err), and its `wrap` helper) each
// turn the rejection into a 500 (or the error's 4xx) through app.use(bgrs()), in line and detached, with the
// process alive. A child process shows the caveat itself: without a remedy, Node ends the process.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, afterEach, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { ErrorRequestHandler, NextFunction, Request, RequestHandler, Response } from 'express';
import express5 from 'express';
import express4 from 'express4';
import { bgrs } from '../src/index.js';
import { detachAndWait, detached, listen, type Running, sleep } from './helpers.js';

type Failing = Error & { status?: number };
const failing = (message: string, status?: number): Failing => Object.assign(new Error(message), status === undefined ? {} : { status });

/** The work of every route: it rejects after an await, the way a database call fails. */
async function work(req: Request): Promise<never> {
  await sleep(10);
  const status = req.query.status === undefined ? undefined : Number(req.query.status);
  throw failing(`rejected ${String(req.query.tag ?? '')}`.trim(), status);
}

/** The README's wrapper, exactly: `const wrap = (fn) => (req, res, next) => fn(req, res, next).catch(next)`. */
const wrap =
  (fn: (req: Request, res: Response, next: NextFunction) => Promise<unknown>): RequestHandler =>
  (req, res, next) =>
    fn(req, res, next).catch(next);

const rejecting = async (req: Request): Promise<void> => {
  await work(req);
};

const appErrors: ErrorRequestHandler = (err: Failing, req, res, _next) => {
  res.status(err.status ?? 500).json({ handledBy: 'app', error: err.message, detached: req.bgrs.detached });
};

// Any rejection that escapes a test is a failure here (fail-on-unhandled.mjs also fails the run).
const escaped: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  escaped.push(reason);
};

const child = process.env.BGRS_EXPRESS4_CHILD;
if (child) {
  // No remedy at all: a bare async handler on Express 4 that rejects.
  const app = express4();
  app.use(bgrs());
  app.get('/bare', async () => {
    await sleep(10);
    throw new Error('bare rejection');
  });
  const server = await listen(app);
  const res = await fetch(server.url + (child === 'detached' ? '/bare?bgrs=yes' : '/bare')).catch((err: Error) => err);
  console.log(`CHILD-ANSWER ${res instanceof Error ? 'none' : res.status}`);
  // Give Node the time to end the process; if it does not, say so and leave.
  await sleep(2000);
  console.log('CHILD-SURVIVED');
  await server.close();
} else {
  process.on('unhandledRejection', onUnhandled);
  after(() => void process.off('unhandledRejection', onUnhandled));
  afterEach(() => assert.deepEqual(escaped.splice(0), [], 'no rejection escaped'));
  tests();
}

function tests(): void {
  const remedies: Array<{ name: string; mount: (background: ReturnType<typeof bgrs>) => RequestHandler }> = [
    { name: 'background.detachable(handler)', mount: (background) => background.detachable(rejecting) },
    {
      name: 'try { … } catch (err) { next(err) }',
      mount: () => async (req, _res, next) => {
        try {
          await work(req);
        } catch (err) {
          next(err);
        }
      },
    },
    { name: 'wrap(fn) from the README', mount: () => wrap(rejecting) },
  ];

  describe('Express 4, app.use(bgrs()) and an app error handler', () => {
    let server: Running;
    before(async () => {
      const app = express4();
      const background = bgrs();
      app.use(background);
      for (const [i, remedy] of remedies.entries()) app.get(`/r${i}`, remedy.mount(background));
      app.get('/alive', (_req, res) => res.send('alive'));
      app.use(appErrors);
      server = await listen(app);
    });
    after(() => server.close());

    remedies.forEach((remedy, i) => {
      describe(remedy.name, () => {
        it('in line: the rejection reaches the error handler, 500', async () => {
          const res = await fetch(`${server.url}/r${i}?tag=inline`);
          assert.equal(res.status, 500);
          assert.deepEqual(await res.json(), { handledBy: 'app', error: 'rejected inline', detached: false });
          assert.equal(await (await fetch(`${server.url}/alive`)).text(), 'alive');
        });

        it('detached (?bgrs=yes): the job fails with server_error, its result is the 500', async () => {
          const { job, result } = await detachAndWait(server.url, detached(`/r${i}?tag=bg`));
          assert.equal(job.status, 'failed');
          assert.equal(job.error?.type, 'server_error');
          assert.equal(job.response?.status, 500);
          assert.equal(result.status, 500);
          assert.deepEqual(await result.json(), { handledBy: 'app', error: 'rejected bg', detached: true });
          assert.equal(await (await fetch(`${server.url}/alive`)).text(), 'alive');
        });

        it('detached with Prefer: respond-async: the same', async () => {
          const { job, result } = await detachAndWait(server.url, `/r${i}?tag=prefer`, { headers: { prefer: 'respond-async' } });
          assert.equal(job.status, 'failed');
          assert.equal(result.status, 500);
          assert.deepEqual(await result.json(), { handledBy: 'app', error: 'rejected prefer', detached: true });
        });

        it('a rejection with a 4xx status answers that status; the detached job completes', async () => {
          const inline = await fetch(`${server.url}/r${i}?tag=conflict&status=409`);
          assert.equal(inline.status, 409);
          assert.deepEqual(await inline.json(), { handledBy: 'app', error: 'rejected conflict', detached: false });
          const { job, result } = await detachAndWait(server.url, detached(`/r${i}?tag=conflict&status=409`));
          assert.equal(job.status, 'completed');
          assert.equal(job.error, null);
          assert.equal(result.status, 409);
          assert.deepEqual(await result.json(), { handledBy: 'app', error: 'rejected conflict', detached: true });
        });

        it('many rejections at once, in line and detached, leave the process serving', async () => {
          const answers = await Promise.all(Array.from({ length: 20 }, (_, n) => fetch(`${server.url}/r${i}${n % 2 ? '?bgrs=yes&' : '?'}tag=n${n}`)));
          assert.deepEqual(
            answers.map((res) => res.status),
            Array.from({ length: 20 }, (_, n) => (n % 2 ? 202 : 500)),
          );
          await Promise.all(answers.map((res) => res.arrayBuffer()));
          assert.equal(await (await fetch(`${server.url}/alive`)).text(), 'alive');
        });
      });
    });
  });

  describe("Express 4, app.use(bgrs()) and no error handler (Express's final handler)", () => {
    let server: Running;
    before(async () => {
      const app = express4();
      const background = bgrs();
      app.use(background);
      for (const [i, remedy] of remedies.entries()) app.get(`/r${i}`, remedy.mount(background));
      server = await listen(app);
    });
    after(() => server.close());

    remedies.forEach((remedy, i) => {
      it(`${remedy.name}: 500 in line, a failed job detached`, async () => {
        const inline = await fetch(`${server.url}/r${i}`);
        assert.equal(inline.status, 500);
        assert.match(inline.headers.get('content-type') ?? '', /^text\/html/);
        await inline.arrayBuffer();
        const { job, result } = await detachAndWait(server.url, detached(`/r${i}`));
        assert.equal(job.status, 'failed');
        assert.equal(job.error?.type, 'server_error');
        assert.equal(result.status, 500);
        assert.match(result.headers.get('content-type') ?? '', /^text\/html/);
        await result.arrayBuffer();
      });
    });
  });

  describe('Express 4, background.detachable() without app.use(bgrs())', () => {
    let server: Running;
    before(async () => {
      const app = express4();
      const background = bgrs();
      app.use(background.router);
      app.get('/own', background.detachable(rejecting));
      app.get(
        '/undefined',
        background.detachable(async () => {
          await sleep(5);
          throw undefined;
        }),
      );
      app.use(appErrors);
      server = await listen(app);
    });
    after(() => server.close());

    it('catches the rejection in line and detached', async () => {
      const inline = await fetch(`${server.url}/own?tag=own`);
      assert.equal(inline.status, 500);
      assert.deepEqual(await inline.json(), { handledBy: 'app', error: 'rejected own', detached: false });
      const { job, result } = await detachAndWait(server.url, detached('/own?tag=own'));
      assert.equal(job.status, 'failed');
      assert.equal(result.status, 500);
      assert.deepEqual(await result.json(), { handledBy: 'app', error: 'rejected own', detached: true });
    });

    it('turns a rejection without a reason into an error too (not a fall-through to 404)', async () => {
      const inline = await fetch(`${server.url}/undefined`);
      assert.equal(inline.status, 500);
      assert.deepEqual(await inline.json(), { handledBy: 'app', error: 'Rejected promise', detached: false });
      const { job, result } = await detachAndWait(server.url, detached('/undefined'));
      assert.equal(job.status, 'failed');
      assert.equal(result.status, 500);
    });
  });

  describe('Express 5, for contrast: a bare async handler needs no remedy', () => {
    let server: Running;
    before(async () => {
      const app = express5();
      app.use(bgrs());
      app.get('/bare', rejecting);
      app.use(appErrors);
      server = await listen(app);
    });
    after(() => server.close());

    it('500 in line, a failed job detached', async () => {
      const inline = await fetch(`${server.url}/bare?tag=five`);
      assert.equal(inline.status, 500);
      assert.deepEqual(await inline.json(), { handledBy: 'app', error: 'rejected five', detached: false });
      const { job, result } = await detachAndWait(server.url, detached('/bare?tag=five'));
      assert.equal(job.status, 'failed');
      assert.deepEqual(await result.json(), { handledBy: 'app', error: 'rejected five', detached: true });
    });
  });

  describe('the caveat itself: Express 4, no remedy', () => {
    for (const mode of ['in line', 'detached'] as const) {
      it(`${mode}: the rejection ends the process, as the README warns`, { timeout: 30_000 }, async () => {
        // Without fail-on-unhandled.mjs: Node's default for an unhandled rejection applies.
        const proc = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], {
          cwd: fileURLToPath(new URL('..', import.meta.url)),
          env: { ...process.env, BGRS_EXPRESS4_CHILD: mode === 'detached' ? 'detached' : 'inline' },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stdout = '';
        let stderr = '';
        proc.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
        proc.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
        const killer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
        const code = await new Promise<number | null>((resolve) => proc.on('exit', resolve));
        clearTimeout(killer);
        assert.notEqual(code, 0, `the child survived\nstdout: ${stdout}\nstderr: ${stderr}`);
        assert.doesNotMatch(stdout, /CHILD-SURVIVED/);
        assert.match(stderr, /bare rejection/);
        if (mode === 'detached') assert.match(stdout, /CHILD-ANSWER 202/, 'the client had its 202 before the replay crashed the process');
      });
    }
  });
}
