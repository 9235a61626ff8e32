// Traps, request side: body parsers before and after bgrs, a 5 MB body, the bgrs parameter hidden from the
// handler, trigger values, Prefer, HEAD and OPTIONS. Express 4 and 5, real HTTP.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { after, before, describe, it } from 'node:test';
import type { Express, Request, RequestHandler } from 'express';
import { bgrs } from '../src/index.js';
import { detachAndWait, detached, forEachExpress, listen, type Running } from './helpers.js';
import { MODES, type Mode, mountBgrs, routeHandlers } from './traps-helpers.js';

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

type ParserName = 'json' | 'urlencoded' | 'text';

const payloads: Record<ParserName, { type: string; body: string }> = {
  json: { type: 'application/json', body: JSON.stringify({ a: 1, list: [1, 'two', { three: 3 }], nested: { é: 'ünïcode' } }) },
  urlencoded: { type: 'application/x-www-form-urlencoded', body: 'a=1&b=two&b=three&c%5Bd%5D=e&u=%C3%BC' },
  text: { type: 'text/plain; charset=utf-8', body: 'plain text body\nwith two lines and ünïcode' },
};

forEachExpress((express) => {
  const parser = (name: ParserName): RequestHandler =>
    name === 'json' ? express.json() : name === 'urlencoded' ? express.urlencoded({ extended: true }) : express.text();

  for (const name of ['json', 'urlencoded', 'text'] as const) {
    for (const position of ['before', 'after', 'before detachable()'] as const) {
      describe(`express.${name}() mounted ${position} bgrs`, () => {
        let server: Running;
        before(async () => {
          const app = express();
          const background = bgrs();
          const mode: Mode = position === 'before detachable()' ? 'detachable' : 'app.use';
          if (position !== 'after') app.use(parser(name));
          mountBgrs(app, background, mode);
          if (position === 'after') app.use(parser(name));
          const echo: RequestHandler = (req, res) => {
            res.json({ body: req.body ?? null, detached: req.bgrs.detached });
          };
          app.post('/echo', ...routeHandlers(background, mode, echo));
          server = await listen(app);
        });
        after(() => server.close());

        it('the handler sees the same req.body as without bgrs', async () => {
          const init = { method: 'POST', headers: { 'content-type': payloads[name].type }, body: payloads[name].body };
          const plain = await fetch(`${server.url}/echo`, init);
          assert.equal(plain.status, 200);
          const expected = (await plain.json()) as { body: unknown; detached: boolean };
          assert.equal(expected.detached, false);
          assert.notEqual(expected.body, null, 'the parser parsed the plain request');

          const { job, result } = await detachAndWait(server.url, detached('/echo'), init);
          assert.equal(job.status, 'completed');
          assert.equal(result.status, 200);
          assert.deepEqual(await result.json(), { body: expected.body, detached: true });
        });
      });
    }
  }

  describe('a 5 MB JSON body, bgrs mounted before the parser', () => {
    let server: Running;
    before(async () => {
      const app = express();
      app.use(bgrs());
      app.use(
        express.json({
          limit: '10mb',
          verify: (req: IncomingMessage, _res, buf: Buffer) => {
            (req as IncomingMessage & { rawSha?: string }).rawSha = sha256(buf);
          },
        }),
      );
      app.post('/hash', (req, res) => {
        const body = req.body as { items: string[] };
        res.json({
          raw: (req as Request & { rawSha?: string }).rawSha ?? null,
          parsed: sha256(JSON.stringify(req.body)),
          items: body.items.length,
        });
      });
      server = await listen(app);
    });
    after(() => server.close());

    it('arrives intact', async () => {
      const items = Array.from({ length: 50_000 }, (_, i) => `item-${i}-${'x'.repeat(90)}`);
      const text = JSON.stringify({ items });
      assert.ok(Buffer.byteLength(text) > 5_000_000, 'the body is over 5 MB');
      const { job, result } = await detachAndWait(server.url, detached('/hash'), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: text,
      });
      assert.equal(job.status, 'completed');
      assert.equal(result.status, 200);
      assert.deepEqual(await result.json(), { raw: sha256(text), parsed: sha256(text), items: items.length });
    });
  });

  for (const mode of MODES) {
    describe(`${mode}: the handler sees the request as if bgrs was never sent`, () => {
      let server: Running;
      let app: Express;
      const background = bgrs();
      before(async () => {
        app = express();
        mountBgrs(app, background, mode);
        const look = (req: Request): unknown => ({
          url: req.url,
          originalUrl: req.originalUrl,
          query: req.query,
          path: req.path,
          prefer: req.headers.prefer ?? null,
          detached: req.bgrs.detached,
        });
        const handler: RequestHandler = (req, res) => {
          res.json(look(req));
        };
        app.get('/look', ...routeHandlers(background, mode, handler));
        const router = express.Router();
        router.get('/look', ...routeHandlers(background, mode, handler));
        app.use('/sub', router);
        server = await listen(app);
      });
      after(() => server.close());

      for (const path of ['/look', '/sub/look']) {
        it(`${path}: req.url, req.originalUrl, req.query have no bgrs parameter; the job keeps what the client sent`, async () => {
          const plain = (await (await fetch(`${server.url}${path}?a=1&b=x%20y`)).json()) as Record<string, unknown>;
          assert.equal(plain.detached, false);
          const sent = `${path}?a=1&bgrs=yes&b=x%20y`;
          const { ackBody, job, result } = await detachAndWait(server.url, sent);
          assert.equal(ackBody.url, sent);
          assert.equal(ackBody.name, `GET ${sent}`);
          assert.equal(job.url, sent);
          assert.equal(job.name, `GET ${sent}`);
          assert.equal(result.status, 200);
          assert.deepEqual(await result.json(), { ...plain, detached: true });
          assert.deepEqual(plain.query, { a: '1', b: 'x y' });
        });
      }

      it('bgrs as the only parameter leaves no "?" behind', async () => {
        const { result } = await detachAndWait(server.url, '/look?bgrs=yes');
        const seen = (await result.json()) as Record<string, unknown>;
        assert.equal(seen.url, '/look');
        assert.equal(seen.originalUrl, '/look');
        assert.deepEqual(seen.query, {});
      });

      for (const value of ['no', '0', 'false', 'NO', 'False']) {
        it(`bgrs=${value} runs normally and the handler sees no bgrs parameter`, async () => {
          const res = await fetch(`${server.url}/look?a=1&bgrs=${value}`);
          assert.equal(res.status, 200);
          assert.deepEqual(await res.json(), { url: '/look?a=1', originalUrl: '/look?a=1', query: { a: '1' }, path: '/look', prefer: null, detached: false });
        });
      }

      for (const value of ['maybe', '', '2', 'yes&bgrs=no']) {
        it(`bgrs=${value} is a 400 problem invalid-bgrs-value`, async () => {
          const res = await fetch(`${server.url}/look?bgrs=${value}`);
          assert.equal(res.status, 400);
          assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
          const problem = (await res.json()) as { type: string; status: number };
          assert.ok(problem.type.endsWith('invalid-bgrs-value'), `type ${problem.type}`);
          assert.equal(problem.status, 400);
        });
      }

      it('Prefer: respond-async detaches with Preference-Applied, and the handler does not see the preference', async () => {
        const { ack, job, result } = await detachAndWait(server.url, '/look?a=1', { headers: { prefer: 'respond-async' } });
        assert.equal(ack.headers.get('preference-applied'), 'respond-async');
        assert.equal(job.url, '/look?a=1');
        assert.equal(job.status, 'completed');
        assert.deepEqual(await result.json(), { url: '/look?a=1', originalUrl: '/look?a=1', query: { a: '1' }, path: '/look', prefer: null, detached: true });
      });

      it('Prefer with other preferences keeps them for the handler', async () => {
        const { ack, result } = await detachAndWait(server.url, '/look', { headers: { prefer: 'return=minimal, respond-async' } });
        assert.equal(ack.headers.get('preference-applied'), 'respond-async');
        const seen = (await result.json()) as Record<string, unknown>;
        assert.equal(seen.prefer, 'return=minimal');
      });

      it('?bgrs=yes does not set Preference-Applied', async () => {
        const { ack } = await detachAndWait(server.url, '/look?bgrs=yes');
        assert.equal(ack.headers.get('preference-applied'), null);
      });
    });
  }

  for (const mode of MODES) {
    describe(`${mode}: HEAD and OPTIONS are never detached`, () => {
      let server: Running;
      before(async () => {
        const app = express();
        const background = bgrs();
        mountBgrs(app, background, mode);
        app.get(
          '/thing',
          ...routeHandlers(background, mode, (req, res) => {
            res.set('X-Detached', String(req.bgrs.detached)).send('thing body');
          }),
        );
        app.options(
          '/custom',
          ...routeHandlers(background, mode, (req, res) => {
            res.set('X-Detached', String(req.bgrs.detached)).set('Allow', 'GET, OPTIONS').status(204).end();
          }),
        );
        server = await listen(app);
      });
      after(() => server.close());

      it('HEAD ?bgrs=yes answers the route normally', async () => {
        const res = await fetch(`${server.url}/thing?bgrs=yes`, { method: 'HEAD' });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('x-detached'), 'false');
        assert.equal(res.headers.get('location'), null);
        assert.equal(res.headers.get('content-length'), String(Buffer.byteLength('thing body')));
      });

      it('HEAD with Prefer: respond-async answers the route normally', async () => {
        const res = await fetch(`${server.url}/thing`, { method: 'HEAD', headers: { prefer: 'respond-async' } });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('x-detached'), 'false');
      });

      it('OPTIONS ?bgrs=yes answers the route normally', async () => {
        const res = await fetch(`${server.url}/custom?bgrs=yes`, { method: 'OPTIONS' });
        assert.equal(res.status, 204);
        assert.equal(res.headers.get('x-detached'), 'false');
        assert.equal(res.headers.get('allow'), 'GET, OPTIONS');
      });

      it("OPTIONS ?bgrs=yes on a GET route gets Express's automatic answer", async () => {
        const plain = await fetch(`${server.url}/thing`, { method: 'OPTIONS' });
        const res = await fetch(`${server.url}/thing?bgrs=yes`, { method: 'OPTIONS' });
        assert.equal(res.status, plain.status);
        assert.equal(res.headers.get('allow'), plain.headers.get('allow'));
        assert.equal(await res.text(), await plain.text());
      });
    });
  }
});
