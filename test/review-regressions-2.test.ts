// Regressions a second review found (the README's layouts, keyed requests, fingerprints): each test states its promise.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { NextFunction, Request, Response } from 'express';
import { defaultFingerprint } from '../src/http/idempotency-key.js';
import { bgrs } from '../src/index.js';
import { forEachExpress, listen, type Running } from './helpers.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
type Authed = Request & { user?: { id: string } };

forEachExpress((express) => {
  describe('README layout 2 (auth on the route) with a route guard', () => {
    let server: Running;
    let runs = 0;
    let background: ReturnType<typeof bgrs>;
    before(async () => {
      background = bgrs({ owner: (req) => (req as Authed).user?.id ?? null });
      const app = express();
      app.use(express.json());
      app.use('/bgrs', (req: Request, _res: Response, next: NextFunction) => {
        if (req.headers.authorization === 'Bearer alice') (req as Authed).user = { id: 'alice' };
        next();
      });
      app.use(background);
      // A middleware that logs before the route's auth ran must not leave the job anonymous.
      app.use((req: Request, _res: Response, next: NextFunction) => {
        req.bgrs.log(`received ${req.method} ${req.path}`);
        next();
      });
      const requireAuth = async (req: Request, res: Response, next: NextFunction) => {
        await sleep(10);
        if (req.headers.authorization !== 'Bearer alice') return void res.sendStatus(401);
        (req as Authed).user = { id: 'alice' };
        next();
      };
      app.post('/orders', requireAuth, background.idempotency(), (_req: Request, res: Response) => {
        runs++;
        res.status(201).json({ order: runs });
      });
      app.get('/me/statement', requireAuth, (_req: Request, res: Response) => res.json({ secret: 'alice-statement' }));
      server = await listen(app);
    });
    after(async () => {
      await background.close();
      await server.close();
    });

    // Promise: one key, one execution, when the detached try is claimed before the route's auth and the retry after it.
    it('a synchronous retry of a detached request gets the stored answer', async () => {
      const headers = { 'content-type': 'application/json', authorization: 'Bearer alice', 'idempotency-key': `k-${Date.now()}` };
      const first = await fetch(`${server.url}/orders?bgrs=yes`, { method: 'POST', headers, body: '{"item":"book"}' });
      assert.equal(first.status, 202);
      const { id } = (await first.json()) as { id: string };
      await (await fetch(`${server.url}/bgrs/${id}?wait=5`, { headers })).arrayBuffer();
      const retry = await fetch(`${server.url}/orders`, { method: 'POST', headers, body: '{"item":"book"}' });
      assert.equal(retry.status, 201);
      assert.equal(retry.headers.get('idempotent-replayed'), 'true');
      assert.deepEqual(await retry.json(), { order: 1 });
      assert.equal(runs, 1);
    });

    // Promise: the owner is who the route's auth established, even when something calls req.bgrs before it ran.
    it('records the owner the route established, not an early anonymous guess', async () => {
      const auth = { authorization: 'Bearer alice' };
      const ack = await fetch(`${server.url}/me/statement?bgrs=yes`, { headers: auth });
      const { id } = (await ack.json()) as { id: string };
      await (await fetch(`${server.url}/bgrs/${id}?wait=5`, { headers: auth })).arrayBuffer();
      const list = (await (await fetch(`${server.url}/bgrs`, { headers: auth })).json()) as { items: Array<{ id: string }> };
      assert.ok(
        list.items.some((job) => job.id === id),
        "in alice's list",
      );
      assert.equal((await fetch(`${server.url}/bgrs/${id}/result`)).status, 404, 'not readable without her credentials');
    });
  });

  describe('keyed requests keep the options of an unkeyed one', () => {
    let server: Running;
    let background: ReturnType<typeof bgrs>;
    before(async () => {
      background = bgrs();
      const app = express();
      app.use(background);
      app.post('/quick', (_req: Request, res: Response) => res.status(201).json({ ok: 1 }));
      app.post(
        '/slow',
        background.detachable({ timeout: 200 }, async (_req: Request, res: Response) => {
          await sleep(1000);
          res.json({ late: true });
        }),
      );
      server = await listen(app);
    });
    after(async () => {
      await background.close();
      await server.close();
    });

    // Promise: Prefer: respond-async, wait=N returns the real response in time, with a key as without.
    it('answers Prefer wait=N with the real response', async () => {
      const res = await fetch(`${server.url}/quick`, { method: 'POST', headers: { prefer: 'respond-async, wait=5', 'idempotency-key': `w-${Date.now()}` } });
      assert.equal(res.status, 201);
      assert.deepEqual(await res.json(), { ok: 1 });
    });

    // Promise: a route's own timeout holds with a key as without.
    it('applies detachable({ timeout }) to a keyed detach', async () => {
      const ack = await fetch(`${server.url}/slow?bgrs=yes`, { method: 'POST', headers: { 'idempotency-key': `t-${Date.now()}` } });
      const { id } = (await ack.json()) as { id: string };
      const job = (await (await fetch(`${server.url}/bgrs/${id}?wait=5`)).json()) as { status: string; error: { type: string } | null };
      assert.deepEqual([job.status, job.error?.type], ['failed', 'timeout']);
    });
  });
});

describe('fingerprints', () => {
  const req = (contentType: string) => ({ method: 'POST', url: '/o', headers: { 'content-type': contentType } }) as never;
  // Promise: two different requests never share a fingerprint (a retry of one would replay the other).
  it('orders explicitly indexed form items as qs does', () => {
    const a = defaultFingerprint(req('application/x-www-form-urlencoded'), Buffer.from('a[0]=x&a[1]=y'), undefined, false);
    const b = defaultFingerprint(req('application/x-www-form-urlencoded'), Buffer.from('a[1]=x&a[0]=y'), undefined, false);
    const parsed = defaultFingerprint(req('application/x-www-form-urlencoded'), null, { a: ['y', 'x'] }, true);
    assert.notEqual(a, b);
    assert.equal(b, parsed, 'a[1]=x&a[0]=y is ["y", "x"]');
  });

  it('never lets raw bytes pass for a canonical JSON or form body', () => {
    const raw = defaultFingerprint(req('text/plain'), Buffer.from('json:1'), undefined, false);
    const json = defaultFingerprint(req('application/json'), Buffer.from('1'), undefined, false);
    assert.notEqual(raw, json);
  });
});

forEachExpress((express) => {
  describe('repeated query parameters on the job routes', () => {
    let server: Running;
    let background: ReturnType<typeof bgrs>;
    before(async () => {
      background = bgrs({ owner: () => 'alice' });
      const app = express();
      app.use(background);
      app.get('/work', (_req: Request, res: Response) => res.json({ ok: true }));
      server = await listen(app);
    });
    after(async () => {
      await background.close();
      await server.close();
    });

    // Promise: an ambiguous client value is a 400 problem, never read one way or the other.
    it('answers a repeated wait or cursor with 400 invalid-parameter, as a repeated after or limit', async () => {
      const ack = await fetch(`${server.url}/work?bgrs=yes`);
      const { id } = (await ack.json()) as { id: string };
      for (const path of [`/bgrs/${id}?wait=1&wait=2`, `/bgrs/${id}/result?wait=0&wait=3`, '/bgrs?cursor=a&cursor=b']) {
        const res = await fetch(`${server.url}${path}`);
        assert.equal(res.status, 400, path);
        assert.equal(((await res.json()) as { type: string }).type, 'urn:express-bgrs:problem:invalid-parameter', path);
      }
    });
  });
});
