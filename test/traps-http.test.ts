// Traps, HTTP semantics: conditional and range headers, compression mounted before bgrs, mounted routers,
// trust proxy, a missing sendFile, an unknown route. Express 4 and 5, real HTTP.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gunzipSync } from 'node:zlib';
import compression from 'compression';
import type { ErrorRequestHandler, Request, RequestHandler } from 'express';
import { bgrs } from '../src/index.js';
import { detachAndWait, detached, forEachExpress, listen, type Running } from './helpers.js';
import { detachRaw, MODES, mountBgrs, rawGet, routeHandlers } from './traps-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'bgrs-traps-'));
const fileText = Array.from({ length: 400 }, (_, i) => `line ${i}: the quick brown fox jumps over the lazy dog`).join('\n');
writeFileSync(join(dir, 'file.txt'), fileText);
after(() => rmSync(dir, { recursive: true, force: true }));

/** The app's own error handler: answers the error's status as JSON. */
const jsonErrors: ErrorRequestHandler = (err: { status?: number; code?: string }, _req, res, _next) => {
  res.status(err.status ?? 500).json({ status: err.status ?? null, code: err.code ?? null });
};

forEachExpress((express) => {
  describe('conditional and range headers never produce a stored 304/206', () => {
    let server: Running;
    before(async () => {
      const app = express();
      app.use(bgrs());
      app.get('/etag', (_req, res) => {
        res.send('hello etag world');
      });
      app.get('/send-file', (_req, res) => {
        res.sendFile(join(dir, 'file.txt'));
      });
      app.use('/static', express.static(dir));
      server = await listen(app);
    });
    after(() => server.close());

    it('If-None-Match on a res.send route: the result is the full 200', async () => {
      const first = await fetch(`${server.url}/etag`);
      const etag = first.headers.get('etag');
      assert.ok(etag, 'Express set an ETag');
      const conditional = await rawGet(`${server.url}/etag`, { 'if-none-match': etag });
      assert.equal(conditional.status, 304, 'without bgrs the same request is a 304');

      const { job, result } = await detachRaw(server.url, detached('/etag'), { 'if-none-match': etag });
      assert.equal(job.status, 'completed');
      assert.equal(job.response?.status, 200);
      assert.equal(job.response?.size, Buffer.byteLength('hello etag world'));
      assert.equal(result.status, 200);
      assert.equal(result.headers.get('etag'), etag);
      assert.equal(await result.text(), 'hello etag world');
    });

    for (const path of ['/static/file.txt', '/send-file']) {
      it(`Range on ${path}: the result is the full 200`, async () => {
        const ranged = await rawGet(`${server.url}${path}`, { range: 'bytes=0-9' });
        assert.equal(ranged.status, 206, 'without bgrs the same request is a 206');
        assert.equal(ranged.body.length, 10);

        const { job, result } = await detachRaw(server.url, detached(path), { range: 'bytes=0-9' });
        assert.equal(job.status, 'completed');
        assert.equal(job.response?.status, 200);
        assert.equal(job.response?.size, Buffer.byteLength(fileText));
        assert.equal(result.status, 200);
        assert.equal(result.headers.get('content-range'), null);
        assert.equal(await result.text(), fileText);
      });

      it(`If-Modified-Since and If-None-Match on ${path}: the result is the full 200`, async () => {
        const first = await fetch(`${server.url}${path}`);
        const etag = first.headers.get('etag')!;
        const lastModified = first.headers.get('last-modified')!;
        await first.arrayBuffer();
        const conditional = await rawGet(`${server.url}${path}`, { 'if-modified-since': lastModified });
        assert.equal(conditional.status, 304, 'without bgrs the same request is a 304');

        const { job, result } = await detachRaw(server.url, detached(path), {
          'if-modified-since': lastModified,
          'if-none-match': etag,
          'if-range': etag,
          range: 'bytes=5-',
        });
        assert.equal(job.response?.status, 200);
        assert.equal(result.status, 200);
        assert.equal(await result.text(), fileText);
      });
    }
  });

  for (const mode of MODES) {
    describe(`${mode}: compression() mounted before bgrs`, () => {
      let server: Running;
      before(async () => {
        const app = express();
        app.use(compression());
        const background = bgrs();
        mountBgrs(app, background, mode);
        app.get(
          '/big',
          ...routeHandlers(background, mode, (_req, res) => {
            res.type('text').send(fileText);
          }),
        );
        server = await listen(app);
      });
      after(() => server.close());

      it('stores identity and serves /result compressed or not, as the reader asks', async () => {
        const plain = await rawGet(`${server.url}/big`, { 'accept-encoding': 'gzip' });
        assert.equal(plain.headers['content-encoding'], 'gzip', 'without bgrs compression() compresses');

        const { job, result, location } = await detachAndWait(server.url, detached('/big'), { headers: { 'accept-encoding': 'gzip' } });
        assert.equal(job.status, 'completed');
        assert.equal(job.response?.size, Buffer.byteLength(fileText));
        assert.equal(job.response?.contentType, 'text/plain; charset=utf-8');
        assert.equal(await result.text(), fileText);

        const gz = await rawGet(`${server.url}${location}/result`, { 'accept-encoding': 'gzip' });
        assert.equal(gz.status, 200);
        assert.equal(gz.headers['content-encoding'], 'gzip');
        assert.equal(gunzipSync(gz.body).toString('utf8'), fileText);

        const identity = await rawGet(`${server.url}${location}/result`, { 'accept-encoding': 'identity' });
        assert.equal(identity.status, 200);
        assert.equal(identity.headers['content-encoding'], undefined);
        assert.equal(identity.headers['content-length'], String(Buffer.byteLength(fileText)));
        assert.equal(identity.body.toString('utf8'), fileText);
      });
    });
  }

  for (const mode of MODES) {
    describe(`${mode}: a Router mounted at /api/:tenant with mergeParams`, () => {
      let server: Running;
      before(async () => {
        const app = express();
        const background = bgrs();
        mountBgrs(app, background, mode);
        const router = express.Router({ mergeParams: true });
        const look: RequestHandler = (req, res) => {
          res.json({ baseUrl: req.baseUrl, params: req.params, url: req.url, originalUrl: req.originalUrl, path: req.path, query: req.query });
        };
        router.get('/items/:item', ...routeHandlers(background, mode, look));
        app.use('/api/:tenant', router);
        server = await listen(app);
      });
      after(() => server.close());

      it('req.baseUrl and req.params as without bgrs', async () => {
        const plain = (await (await fetch(`${server.url}/api/acme/items/42?q=1`)).json()) as { params: unknown; baseUrl: string };
        assert.deepEqual(plain.params, { tenant: 'acme', item: '42' });
        assert.equal(plain.baseUrl, '/api/acme');
        const { job, result } = await detachAndWait(server.url, '/api/acme/items/42?q=1&bgrs=yes');
        assert.equal(job.status, 'completed');
        assert.deepEqual(await result.json(), plain);
      });
    });

    for (const trust of [true, false]) {
      describe(`${mode}: trust proxy ${trust}`, () => {
        let server: Running;
        before(async () => {
          const app = express();
          app.set('trust proxy', trust);
          const background = bgrs();
          mountBgrs(app, background, mode);
          const who: RequestHandler = (req: Request, res) => {
            res.json({ ip: req.ip, ips: req.ips, protocol: req.protocol, secure: req.secure, hostname: req.hostname });
          };
          app.get('/who', ...routeHandlers(background, mode, who));
          server = await listen(app);
        });
        after(() => server.close());

        it('req.ip, req.ips, req.protocol, req.secure as without bgrs', async () => {
          const headers = { 'x-forwarded-for': '203.0.113.7, 198.51.100.2', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'example.org' };
          const plain = (await (await fetch(`${server.url}/who`, { headers })).json()) as Record<string, unknown>;
          if (trust) {
            assert.equal(plain.ip, '203.0.113.7');
            assert.equal(plain.secure, true);
          } else {
            assert.match(String(plain.ip), /127\.0\.0\.1$/);
            assert.equal(plain.protocol, 'http');
          }
          const { job, result } = await detachAndWait(server.url, detached('/who'), { headers });
          assert.equal(job.status, 'completed');
          assert.deepEqual(await result.json(), plain);
        });
      });
    }
  }

  describe('res.sendFile of a missing file', () => {
    let server: Running;
    before(async () => {
      const app = express();
      app.set('env', 'test'); // keeps finalhandler from logging the ENOENT
      app.use(bgrs());
      app.get('/missing', (_req, res) => {
        res.sendFile(join(dir, 'does-not-exist.txt'));
      });
      const sub = express.Router();
      sub.get('/missing', (_req, res) => {
        res.sendFile(join(dir, 'does-not-exist.txt'));
      });
      app.use('/handled', sub);
      app.use('/handled', jsonErrors);
      server = await listen(app);
    });
    after(() => server.close());

    it("completes (not hung) with the app's error handler's 404", async () => {
      const plain = await fetch(`${server.url}/handled/missing`);
      assert.equal(plain.status, 404);
      const expected = await plain.json();
      const { job, result } = await detachAndWait(server.url, detached('/handled/missing'), {}, 5000);
      assert.equal(job.status, 'completed');
      assert.equal(job.response?.status, 404);
      assert.equal(result.status, 404);
      assert.deepEqual(await result.json(), expected);
    });

    it("completes with Express's default 404 when no error handler is set", async () => {
      const plain = await fetch(`${server.url}/missing`);
      assert.equal(plain.status, 404);
      const { job, result } = await detachAndWait(server.url, detached('/missing'), {}, 5000);
      assert.equal(job.status, 'completed');
      assert.equal(result.status, 404);
      assert.equal(result.headers.get('content-type'), plain.headers.get('content-type'));
      await result.arrayBuffer();
      await plain.arrayBuffer();
    });
  });

  describe('?bgrs=yes on a route that does not exist', () => {
    let server: Running;
    before(async () => {
      const app = express();
      app.use(bgrs());
      app.get('/exists', (_req, res) => {
        res.send('ok');
      });
      server = await listen(app);
    });
    after(() => server.close());

    it("completes, and /result is Express's 404", async () => {
      const plain = await fetch(`${server.url}/nope?x=1`);
      assert.equal(plain.status, 404);
      const expected = await plain.text();
      assert.match(expected, /Cannot GET \/nope/);
      const { job, result } = await detachAndWait(server.url, '/nope?x=1&bgrs=yes');
      assert.equal(job.status, 'completed');
      assert.equal(job.response?.status, 404);
      assert.equal(result.status, 404);
      assert.equal(await result.text(), expected);
    });
  });
});
