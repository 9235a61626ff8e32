// Traps, connections: errors after partial streaming, keep-alive clients reusing the socket after the 202,
// the 202 never looking like a disconnect to the background run, AsyncLocalStorage. Express 4 and 5, real HTTP.
import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { after, before, describe, it } from 'node:test';
import type { ErrorRequestHandler, Request, RequestHandler, Response } from 'express';
import { bgrs } from '../src/index.js';
import { detachAndWait, detached, forEachExpress, type JobDoc, listen, type Running, sleep, waitForJob } from './helpers.js';
import { MODES, mountBgrs, RawClient, routeHandlers } from './traps-helpers.js';

const json = (body: Buffer): JobDoc => JSON.parse(body.toString('utf8')) as JobDoc;

forEachExpress((express, name) => {
  for (const mode of MODES) {
    describe(`${mode}: an error after partial streaming`, () => {
      let server: Running;
      before(async () => {
        const app = express();
        app.set('env', 'test'); // keeps finalhandler from logging the error
        app.use(express.json());
        const background = bgrs();
        mountBgrs(app, background, mode);
        app.get(
          '/partial-next',
          ...routeHandlers(background, mode, (_req, res, next) => {
            res.type('text').write('chunk 1\n');
            setTimeout(() => {
              res.write('chunk 2\n');
              setTimeout(() => next(new Error('failed mid-stream')), 20);
            }, 20);
          }),
        );
        app.get(
          '/partial-destroy',
          ...routeHandlers(background, mode, (req, res) => {
            res.type('text').write('chunk 1\n');
            setTimeout(() => {
              res.write('chunk 2\n');
              setTimeout(() => req.socket.destroy(), 20);
            }, 20);
          }),
        );
        app.get(
          '/partial-reject',
          ...routeHandlers(background, mode, (async (_req: Request, res: Response) => {
            res.type('text').write('chunk 1\n');
            await sleep(20);
            throw new Error('failed mid-stream');
          }) as RequestHandler),
        );
        app.get('/ping', (_req, res) => {
          res.send('pong');
        });
        // The documented Express pattern: delegate to the default handler once headers are sent.
        app.use(((err, _req, res, next) => {
          if (res.headersSent) return next(err);
          res.status(500).json({ error: (err as Error).message });
        }) as ErrorRequestHandler);
        server = await listen(app);
      });
      after(() => server.close());

      const paths = ['/partial-next', '/partial-destroy'];
      if (mode === 'detachable' || name === 'Express 5') paths.push('/partial-reject');
      for (const path of paths) {
        it(`${path}: the job fails with connection_lost and the client's keep-alive socket still works`, async () => {
          const client = await RawClient.connect(server.port);
          try {
            client.get(detached(path));
            const ack = await client.read();
            assert.equal(ack.status, 202);
            const location = ack.headers.location!;
            const job = await waitForJob(server.url, location, 5000);
            assert.equal(job.status, 'failed');
            assert.equal(job.error?.type, 'connection_lost');

            assert.equal(client.closed, false, 'the client socket was closed');
            client.get(location);
            const again = await client.read();
            assert.equal(again.status, 200);
            assert.equal(json(again.body).status, 'failed');
            client.get('/ping');
            const ping = await client.read();
            assert.equal(ping.status, 200);
            assert.equal(ping.body.toString(), 'pong');
          } finally {
            client.close();
          }
        });
      }
    });
  }

  for (const mode of MODES) {
    describe(`${mode}: a keep-alive client reusing its socket right after the 202`, () => {
      let server: Running;
      before(async () => {
        const app = express();
        const background = bgrs();
        mountBgrs(app, background, mode);
        app.use(express.json());
        app.all(
          '/slow',
          ...routeHandlers(background, mode, (async (req: Request, res: Response) => {
            await sleep(100);
            res.json({ body: req.body ?? null, method: req.method });
          }) as RequestHandler),
        );
        app.get('/plain', (_req, res) => {
          res.send('plain answer');
        });
        server = await listen(app);
      });
      after(() => server.close());

      it('GET: the next request on the same socket gets its own answer', async () => {
        const client = await RawClient.connect(server.port);
        try {
          client.get(detached('/slow'));
          const ack = await client.read();
          assert.equal(ack.status, 202);
          client.get('/plain');
          const plain = await client.read();
          assert.equal(plain.status, 200);
          assert.equal(plain.body.toString(), 'plain answer');
          const location = ack.headers.location!;
          client.get(location);
          const status = await client.read();
          assert.equal(status.status, 200);
          assert.equal(json(status.body).id, json(ack.body).id);
          const job = await waitForJob(server.url, location);
          assert.equal(job.status, 'completed');
          client.get(`${location}/result`);
          const result = await client.read();
          assert.equal(result.status, 200);
          assert.equal((JSON.parse(result.body.toString()) as { method: string }).method, 'GET');
        } finally {
          client.close();
        }
      });

      it('POST with an unparsed body, then the next request on the same socket', async () => {
        const client = await RawClient.connect(server.port);
        try {
          const body = JSON.stringify({ hello: 'world', list: [1, 2, 3] });
          client.send(
            `POST ${detached('/slow')} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n` +
              `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
          );
          const ack = await client.read();
          assert.equal(ack.status, 202);
          client.get('/plain');
          const plain = await client.read();
          assert.equal(plain.status, 200);
          assert.equal(plain.body.toString(), 'plain answer');
          const location = ack.headers.location!;
          const job = await waitForJob(server.url, location);
          assert.equal(job.status, 'completed');
          const result = await fetch(`${server.url}${location}/result`);
          assert.deepEqual(await result.json(), { body: { hello: 'world', list: [1, 2, 3] }, method: 'POST' });
        } finally {
          client.close();
        }
      });

      it('two pipelined requests: the 202, then the second answer', async () => {
        const client = await RawClient.connect(server.port);
        try {
          client.send(`GET ${detached('/slow')} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
          const ack = await client.read();
          assert.equal(ack.status, 202);
          const plain = await client.read();
          assert.equal(plain.status, 200);
          assert.equal(plain.body.toString(), 'plain answer');
        } finally {
          client.close();
        }
      });
    });

    describe(`${mode}: the 202 on the client socket does not look like a disconnect`, () => {
      let server: Running;
      const watch: RequestHandler = async (req, res) => {
        const fired: string[] = [];
        req.on('close', () => fired.push('req close'));
        req.on('aborted', () => fired.push('req aborted'));
        res.on('close', () => fired.push('res close'));
        req.bgrs.signal.addEventListener('abort', () => fired.push('signal abort'));
        await sleep(200);
        res.json({
          fired: [...fired],
          aborted: req.aborted,
          signalAborted: req.bgrs.signal.aborted,
          socketDestroyed: req.socket.destroyed,
          writable: res.writable,
          body: req.body ?? null,
        });
      };
      before(async () => {
        const app = express();
        app.use(express.json());
        const background = bgrs();
        mountBgrs(app, background, mode);
        app.all('/watch', ...routeHandlers(background, mode, watch));
        server = await listen(app);
      });
      after(() => server.close());

      for (const method of ['GET', 'POST'] as const) {
        const body = method === 'POST' ? '{"a":1}' : '';
        const init: RequestInit = method === 'POST' ? { method, headers: { 'content-type': 'application/json' }, body } : { method };
        // Without bgrs: Node 20 emits req 'close' once a body has been read (express.json), never before for a GET.
        const plainFired = method === 'POST' ? ['req close'] : [];

        it(`${method}: nothing fires while the handler works, as without bgrs (fetch client)`, async () => {
          const plain = (await (await fetch(`${server.url}/watch`, init)).json()) as Record<string, unknown>;
          assert.deepEqual(plain, { fired: plainFired, aborted: false, signalAborted: false, socketDestroyed: false, writable: true, body: plain.body });
          const { job, result } = await detachAndWait(server.url, detached('/watch'), init);
          assert.equal(job.status, 'completed');
          assert.deepEqual(await result.json(), plain);
        });

        it(`${method}: nothing fires even when the client closes its socket right after the 202`, async () => {
          const client = await RawClient.connect(server.port);
          client.send(
            `${method} ${detached('/watch')} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
              `Content-Length: ${body.length}\r\n\r\n${body}`,
          );
          const ack = await client.read();
          assert.equal(ack.status, 202);
          client.close();
          const location = ack.headers.location!;
          const job = await waitForJob(server.url, location);
          assert.equal(job.status, 'completed');
          const seen = (await (await fetch(`${server.url}${location}/result`)).json()) as Record<string, unknown>;
          assert.deepEqual(seen, {
            fired: plainFired,
            aborted: false,
            signalAborted: false,
            socketDestroyed: false,
            writable: true,
            body: method === 'POST' ? { a: 1 } : seen.body,
          });
        });
      }
    });
  }

  for (const mode of MODES) {
    describe(`${mode}: AsyncLocalStorage set up before bgrs`, () => {
      let server: Running;
      const als = new AsyncLocalStorage<{ traceId: string }>();
      let counter = 0;
      before(async () => {
        const app = express();
        app.use((_req, res, next) => {
          const traceId = `trace-${++counter}`;
          res.setHeader('X-Trace-Id', traceId);
          als.run({ traceId }, next);
        });
        const background = bgrs();
        mountBgrs(app, background, mode);
        const read: RequestHandler = async (req, res) => {
          const first = als.getStore() ?? null;
          await sleep(5);
          res.json({ first, store: als.getStore() ?? null, detached: req.bgrs.detached });
        };
        app.get('/trace', ...routeHandlers(background, mode, read));
        server = await listen(app);
      });
      after(() => server.close());

      it(mode === 'app.use' ? 'the background run has a store' : "the background run has the original request's store", async () => {
        const { ack, result } = await detachAndWait(server.url, detached('/trace'));
        const traceId = ack.headers.get('x-trace-id');
        assert.match(traceId ?? '', /^trace-\d+$/);
        const seen = (await result.json()) as { first: { traceId: string } | null; store: { traceId: string } | null; detached: boolean };
        assert.equal(seen.detached, true);
        assert.ok(seen.store, 'als.getStore() is undefined in the background run');
        assert.deepEqual(seen.first, seen.store);
        // app.use: middleware before bgrs runs again for the replay and opens its own context.
        if (mode === 'detachable') assert.equal(seen.store.traceId, traceId);
        else assert.match(seen.store.traceId, /^trace-\d+$/);
      });
    });
  }
});
