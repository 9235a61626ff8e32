// Response-side fidelity, part two: big streamed results, maxResultBytes, and the per-route detachable() form.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Request, Response } from 'express';
import { bgrs } from '../src/index.js';
import { assertSameResponse, FIXTURES, liveAndDetached, useTemplateEngine } from './capture-helpers.js';
import { detachAndWait, detached, forEachExpress, listen, type Running, sleep } from './helpers.js';

const CHUNK = 64 * 1024;
const CHUNKS = 800; // 52,428,800 bytes
const BIG_SIZE = CHUNK * CHUNKS;

const CSV_BASE = (() => {
  let text = '';
  for (let row = 0; text.length < CHUNK; row++) text += `${row},${(row * 7919) % 10007},"item ${row}"\n`;
  return Buffer.from(text.slice(0, CHUNK), 'latin1');
})();

/** Chunk `i` of the big CSV: the shared rows, the chunk number in its first bytes, so every chunk differs. */
function chunkAt(i: number): Buffer {
  const chunk = Buffer.from(CSV_BASE);
  chunk.write(String(i).padStart(8, '0'), 0, 'latin1');
  return chunk;
}

const EXPECTED_SHA256 = (() => {
  const hash = createHash('sha256');
  for (let i = 0; i < CHUNKS; i++) hash.update(chunkAt(i));
  return hash.digest('hex');
})();

/** Resolves on 'drain', or on 'close' if the connection goes away first. */
function drainOrClose(res: Response): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

async function digest(res: globalThis.Response): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    hash.update(chunk);
    size += chunk.byteLength;
  }
  return { sha256: hash.digest('hex'), size };
}

interface TooBigRun {
  /** Whether the signal had aborted when the handler saw its connection go (drain/close) and stopped. */
  abortedWhenStopped: boolean;
  /** Set by an 'abort' listener: whether and why the signal aborted at all. */
  aborted: boolean;
  reason: unknown;
  written: number;
  finished: boolean;
}

forEachExpress((express) => {
  describe('large results', () => {
    let server: Running;
    const drainWaits = new Map<string, number>();
    const tooBig = new Map<string, TooBigRun>();

    before(async () => {
      const app = express();
      app.use(bgrs({ maxResultBytes: 128 * 2 ** 20 }));
      app.get('/big', async (req: Request, res: Response) => {
        res.type('csv');
        res.setHeader('Content-Disposition', 'attachment; filename="big.csv"');
        let waits = 0;
        for (let i = 0; i < CHUNKS; i++) {
          if (res.destroyed) return;
          if (!res.write(chunkAt(i))) {
            waits++;
            await drainOrClose(res);
          }
        }
        res.end();
        drainWaits.set(req.bgrs.detached ? 'detached' : 'live', waits);
      });
      server = await listen(app);
    });
    after(() => server.close());

    it('a 50 MB CSV written in 64 KiB chunks with backpressure replays byte for byte', { timeout: 120_000 }, async () => {
      const live = await fetch(`${server.url}/big`);
      assert.equal(live.status, 200);
      const liveDigest = await digest(live);
      assert.deepEqual(liveDigest, { sha256: EXPECTED_SHA256, size: BIG_SIZE });

      const { job, result } = await detachAndWait(server.url, detached('/big'), {}, 120_000);
      assert.equal(job.status, 'completed');
      assert.deepEqual(job.response, { status: 200, contentType: live.headers.get('content-type'), size: BIG_SIZE });
      assert.equal(result.status, 200);
      assert.equal(result.headers.get('content-length'), String(BIG_SIZE));
      assert.equal(result.headers.get('content-type'), live.headers.get('content-type'));
      assert.equal(result.headers.get('content-disposition'), 'attachment; filename="big.csv"');
      assert.deepEqual(await digest(result), liveDigest);
      // The detached handler saw real backpressure from its private connection, and got its drains.
      assert.ok((drainWaits.get('detached') ?? 0) > 0, `detached run waited for drain ${drainWaits.get('detached')} times`);
    });

    describe('maxResultBytes', () => {
      let small: Running;
      before(async () => {
        const app = express();
        app.use(bgrs({ maxResultBytes: 200_000 }));
        app.get('/too-big', async (req: Request, res: Response) => {
          const run: TooBigRun = { abortedWhenStopped: false, aborted: false, reason: undefined, written: 0, finished: false };
          tooBig.set(req.bgrs.id ?? 'live', run);
          req.bgrs.signal.addEventListener('abort', () => {
            run.aborted = true;
            run.reason = req.bgrs.signal.reason;
          });
          res.type('text/plain');
          for (let i = 0; i < 200; i++) {
            if (req.bgrs.signal.aborted || res.destroyed) break;
            run.written++;
            if (!res.write(chunkAt(i))) await drainOrClose(res);
          }
          if (!res.destroyed) res.end();
          run.abortedWhenStopped = req.bgrs.signal.aborted;
          run.finished = true;
        });
        small = await listen(app);
      });
      after(() => small.close());

      it('a result over the limit fails the job with result_too_large and aborts the handler', { timeout: 30_000 }, async () => {
        const { job, result } = await detachAndWait(small.url, detached('/too-big'), {}, 20_000);
        assert.equal(job.status, 'failed');
        assert.equal(job.error?.type, 'result_too_large');
        assert.equal(result.status, 507, 'no partial result is served as a success');
        assert.equal(((await result.json()) as { type: string }).type, 'urn:express-bgrs:problem:result-too-large');
        const run = tooBig.get(job.id);
        assert.ok(run, 'the handler ran');
        for (let i = 0; i < 100 && !(run.finished && run.aborted); i++) await sleep(20);
        assert.equal(run.finished, true, 'the handler stopped');
        assert.equal(run.aborted, true, 'req.bgrs.signal aborted');
        assert.ok(run.reason instanceof Error, 'the signal carries an Error reason');
        assert.match((run.reason as Error).message, /maxResultBytes/);
        assert.ok(run.written < 200, `the handler stopped early (wrote ${run.written} of 200 chunks)`);
      });

      it('result_too_large: the signal has aborted by the time the handler sees its connection close', { timeout: 30_000 }, async () => {
        const { job } = await detachAndWait(small.url, detached('/too-big'), {}, 20_000);
        assert.equal(job.error?.type, 'result_too_large');
        const run = tooBig.get(job.id);
        for (let i = 0; i < 100 && !run?.finished; i++) await sleep(20);
        assert.ok(run?.finished, 'the handler stopped');
        // runner.ts stop(): "The handler hears it first (signal), then as a live client would (the connection goes away)."
        assert.equal(run.abortedWhenStopped, true, 'req.bgrs.signal.aborted when res emitted close');
      });

      it('the same route answered live is not limited', { timeout: 30_000 }, async () => {
        const live = await fetch(`${small.url}/too-big`);
        assert.equal(live.status, 200);
        assert.equal((await digest(live)).size, 200 * CHUNK);
      });
    });
  });

  describe('per-route background.detachable() without app.use', () => {
    let server: Running;
    before(async () => {
      const app = express();
      useTemplateEngine(app);
      const background = bgrs();
      app.use(background.router);
      app.get(
        '/pr/json',
        background.detachable((_req: Request, res: Response) => void res.status(201).json({ per: 'route', n: [1, 2] })),
      );
      app.get(
        '/pr/two',
        background.detachable(
          (_req: Request, res: Response, next: () => void) => {
            res.set('X-First', 'ran');
            res.locals.who = 'second';
            next();
          },
          (_req: Request, res: Response) => void res.type('text').send(`from ${String(res.locals.who)}`),
        ),
      );
      app.get(
        '/pr/download',
        background.detachable((_req: Request, res: Response) => res.download(join(FIXTURES, 'data.csv'), 'export.csv')),
      );
      app.get(
        '/pr/render',
        background.detachable((_req: Request, res: Response) => res.render('hello', { name: 'route', count: 1 })),
      );
      app.get(
        '/pr/redirect',
        background.detachable((_req: Request, res: Response) => res.redirect(303, '/pr/json')),
      );
      app.get(
        '/pr/stream',
        background.detachable((_req: Request, res: Response) => {
          res.writeHead(200, { 'Content-Type': 'text/plain', 'X-Stream': 'yes' });
          for (let i = 0; i < 50; i++) res.write(`line ${i}\n`);
          res.end();
        }),
      );
      app.get(
        '/pr/cookie',
        background.detachable((_req: Request, res: Response) => {
          res.cookie('a', '1');
          res.cookie('b', '2', { httpOnly: true });
          res.send('cookies set');
        }),
      );
      app.get(
        '/pr/fail',
        background.detachable((_req: Request, res: Response) => void res.status(503).send('try later')),
      );
      server = await listen(app);
    });
    after(() => server.close());

    for (const path of ['/pr/json', '/pr/two', '/pr/download', '/pr/render', '/pr/redirect', '/pr/stream', '/pr/cookie', '/pr/fail']) {
      it(`${path}: /result equals the live answer`, async () => {
        const { live, replay, job } = await liveAndDetached(server.url, path);
        assertSameResponse(live, replay, job);
      });
    }

    it('exact values of the per-route replays', async () => {
      let r = await liveAndDetached(server.url, '/pr/json');
      assert.equal(r.replay.status, 201);
      assert.deepEqual(JSON.parse(r.replay.body.toString('utf8')), { per: 'route', n: [1, 2] });
      r = await liveAndDetached(server.url, '/pr/two');
      assert.equal(r.replay.body.toString('utf8'), 'from second');
      assert.equal(r.replay.headers.get('x-first'), 'ran');
      r = await liveAndDetached(server.url, '/pr/download');
      assert.match(r.replay.headers.get('content-disposition') ?? '', /^attachment; filename="?export\.csv"?$/);
      assert.equal(r.replay.headers.get('content-disposition'), r.live.headers.get('content-disposition'));
      assert.equal(r.replay.body.toString('utf8'), 'id,name,amount\n1,alpha,10.50\n2,"beta, gamma",-3\n3,délta,0\n');
      r = await liveAndDetached(server.url, '/pr/render');
      assert.equal(r.replay.body.toString('utf8'), '<!doctype html><h1>Hello route</h1><p>1 items</p>\n');
      r = await liveAndDetached(server.url, '/pr/redirect');
      assert.equal(r.replay.status, 303);
      assert.equal(r.replay.headers.get('location'), '/pr/json');
      r = await liveAndDetached(server.url, '/pr/cookie');
      assert.equal(r.live.headers.getSetCookie().length, 2);
      assert.deepEqual(r.replay.headers.getSetCookie(), []);
      r = await liveAndDetached(server.url, '/pr/fail');
      assert.equal(r.job.status, 'failed');
      assert.equal(r.job.error?.type, 'server_error');
      assert.equal(r.replay.status, 503);
      assert.equal(r.replay.body.toString('utf8'), 'try later');
    });
  });
});
