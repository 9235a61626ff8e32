// The Idempotency-Key guard, rule by rule (PROTOCOL.md), on Express 4 and 5 with the MemoryStore.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Request } from 'express';
import { parseIdempotencyKey, recordKey } from '../src/http/idempotency-key.js';
import { bgrs, MemoryStore, type Store } from '../src/index.js';
import { forEachExpress, type JobDoc, listen, type Running, sleep, waitForJob } from './helpers.js';
import { storeKinds } from './stores.js';

type Json = Record<string, unknown>;

describe('Idempotency-Key syntax', () => {
  it('accepts sf-strings and bare tokens of 1–255 visible ASCII characters', () => {
    assert.equal(parseIdempotencyKey('"8e03978e-40d5-43e8-bc93-6894a57f9324"'), '8e03978e-40d5-43e8-bc93-6894a57f9324');
    assert.equal(parseIdempotencyKey('abc'), 'abc');
    assert.equal(parseIdempotencyKey('"a\\"b\\\\c"'), 'a"b\\c');
    assert.equal(parseIdempotencyKey('x'.repeat(255)), 'x'.repeat(255));
    assert.equal(parseIdempotencyKey(`"${'x'.repeat(255)}"`), 'x'.repeat(255));
  });
  it('refuses anything else', () => {
    for (const bad of ['', '""', 'x'.repeat(256), `"${'x'.repeat(256)}"`, 'a b', 'a,b', 'a"b', '"abc', '"a"b"', '"a\\nb"', 'é', '"a b"', 'a\tb']) {
      assert.equal(parseIdempotencyKey(bad), null, JSON.stringify(bad));
    }
    assert.equal(parseIdempotencyKey(['a', 'b']), null);
    assert.equal(parseIdempotencyKey(undefined), null);
  });
});

for (const kind of await storeKinds())
  describe(kind.name, () =>
    forEachExpress((express) => {
      let server: Running;
      let store: Store;
      const runs = new Map<string, number>();
      const gate: Promise<void> = Promise.resolve();
      const count = (name: string): number => {
        const n = (runs.get(name) ?? 0) + 1;
        runs.set(name, n);
        return n;
      };

      before(async () => {
        store = await kind.create();
        const background = bgrs({ store, owner: (req: Request) => (req.headers['x-user'] as string | undefined) ?? null });
        const app = express();
        app.use(express.json());
        app.use(background);
        app.post('/orders', background.idempotency({ required: true }), async (req, res) => {
          const n = count('orders');
          await gate;
          res.cookie('session', 'abc');
          res.status(201).set('X-Order', String(n)).json({ n, body: req.body, query: req.query });
        });
        app.post('/slow', background.idempotency(), async (req, res) => {
          const n = count('slow');
          await sleep(Number(req.query.ms ?? 1000));
          res.status(201).json({ n, body: req.body });
        });
        app.post('/boom', background.idempotency(), (_req, _res, next) => {
          count('boom');
          next(new Error('database went away'));
        });
        app.post('/flaky', background.idempotency({ storeResponse: (status) => status < 500 }), (_req, res) => {
          const n = count('flaky');
          res.status(n === 1 ? 503 : 200).json({ n });
        });
        app.post('/stream', background.idempotency(), (_req, res) => {
          const n = count('stream');
          res.type('text/plain');
          res.write(`chunk-1 of run ${n}\n`);
          setTimeout(() => res.end('chunk-2\n'), 20);
        });
        app.post('/redirect', background.idempotency(), (_req, res) => {
          count('redirect');
          res.redirect(303, '/orders/42');
        });
        app.put('/put', background.idempotency(), (_req, res) => res.json({ n: count('put') }));
        app.post('/reuse-other', background.idempotency(), (_req, res) => res.json({ n: count('reuse-other') }));
        app.use((err: Error, _req: Request, res: import('express').Response, _next: import('express').NextFunction) => {
          res.status(500).json({ error: err.message });
        });
        server = await listen(app);
      });
      after(async () => {
        await server.close();
        await kind.destroy(store);
      });

      const post = (path: string, key: string | null, body: unknown = {}, headers: Record<string, string> = {}): Promise<Response> =>
        fetch(server.url + path, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(key === null ? {} : { 'idempotency-key': key }), ...headers },
          body: JSON.stringify(body),
        });
      const problemType = async (res: Response): Promise<string> => ((await res.json()) as { type: string }).type.split(':').pop()!;

      it('400 idempotency-key-missing when required and absent, on a detached request too', async () => {
        const res = await post('/orders', null);
        assert.equal(res.status, 400);
        assert.equal(res.headers.get('content-type'), 'application/problem+json; charset=utf-8');
        assert.equal(await problemType(res), 'idempotency-key-missing');
        const before = runs.get('orders') ?? 0;
        const ack = await post('/orders?bgrs=yes', null);
        assert.equal(ack.status, 202);
        const job = await waitForJob(server.url, ack.headers.get('location')!);
        const result = await fetch(server.url + job.links.result);
        assert.equal(result.status, 400, 'the background run refused it');
        assert.equal(runs.get('orders') ?? 0, before, 'the handler did not run');
      });

      it('400 idempotency-key-invalid for a malformed key', async () => {
        for (const key of ['a,b', '"unterminated', 'x'.repeat(256), 'a b']) {
          const res = await post('/orders', key);
          assert.equal(res.status, 400, key);
          assert.equal(await problemType(res), 'idempotency-key-invalid');
        }
      });

      it('runs once and replays status, headers and body with Idempotent-Replayed: true', async () => {
        const first = await post('/orders?x=1', 'replay-1', { item: 'book', qty: 2 });
        assert.equal(first.status, 201);
        assert.equal(first.headers.get('idempotent-replayed'), null);
        assert.match(first.headers.get('set-cookie') ?? '', /session=abc/, 'the live client gets its cookie');
        const firstBody = (await first.json()) as Json;
        const retry = await post('/orders?x=1', 'replay-1', { qty: 2, item: 'book' });
        assert.equal(retry.status, 201);
        assert.equal(retry.headers.get('idempotent-replayed'), 'true');
        assert.equal(retry.headers.get('x-order'), first.headers.get('x-order'));
        assert.equal(retry.headers.get('content-type'), first.headers.get('content-type'));
        assert.equal(retry.headers.get('set-cookie'), null, 'Set-Cookie is not replayed by default');
        assert.deepEqual(await retry.json(), firstBody, 'same body, key order of the payload does not matter');
      });

      it('ignores the bgrs parameter and Prefer in the fingerprint', async () => {
        const first = await post('/orders?a=1&b=2', 'fp-1', { v: 1 });
        assert.equal(first.status, 201);
        const retry = await post('/orders?b=2&a=1&bgrs=no', 'fp-1', { v: 1 }, { prefer: 'return=minimal' });
        assert.equal(retry.status, 201);
        assert.equal(retry.headers.get('idempotent-replayed'), 'true');
      });

      it('422 idempotency-key-reused for the same key with another payload, path or query', async () => {
        assert.equal((await post('/orders', 'reuse-1', { v: 1 })).status, 201);
        for (const [path, body] of [
          ['/orders', { v: 2 }],
          ['/orders?page=2', { v: 1 }],
        ] as const) {
          const res = await post(path, 'reuse-1', body);
          assert.equal(res.status, 422, path);
          assert.equal(await problemType(res), 'idempotency-key-reused');
        }
        const otherRoute = await post('/reuse-other', 'reuse-1', { v: 1 });
        assert.equal(otherRoute.status, 200, 'a key is scoped to its route');
      });

      it('scopes keys per owner', async () => {
        const ann = await post('/orders', 'scope-1', { v: 1 }, { 'x-user': 'ann' });
        const bob = await post('/orders', 'scope-1', { v: 1 }, { 'x-user': 'bob' });
        assert.equal(ann.status, 201);
        assert.equal(bob.status, 201);
        assert.equal(bob.headers.get('idempotent-replayed'), null, 'two owners never share a record');
        assert.notEqual(bob.headers.get('x-order'), ann.headers.get('x-order'));
      });

      it('409 idempotency-key-in-use with Retry-After while the first is in flight', async () => {
        const first = post('/slow?ms=300', 'inflight-1', { v: 1 });
        await sleep(80);
        const retry = await post('/slow?ms=300', 'inflight-1', { v: 1 });
        assert.equal(retry.status, 409);
        assert.equal(retry.headers.get('retry-after'), '2');
        assert.equal(await problemType(retry), 'idempotency-key-in-use');
        assert.equal((await first).status, 201);
      });

      it('runs the handler once for 100 concurrent requests with one key', async () => {
        const before = runs.get('slow') ?? 0;
        const answers = await Promise.all(Array.from({ length: 100 }, () => post('/slow?ms=200', 'herd-1', { v: 1 })));
        assert.equal((runs.get('slow') ?? 0) - before, 1, 'exactly one execution');
        const statuses = answers.map((res) => res.status);
        assert.equal(statuses.filter((s) => s === 201).length >= 1, true);
        for (const res of answers) {
          assert.ok(res.status === 409 || res.status === 201, `status ${res.status}`);
          if (res.status === 201) {
            const replayed = res.headers.get('idempotent-replayed') === 'true';
            const body = (await res.json()) as { n: number };
            assert.equal(body.n, runs.get('slow') ?? 0, replayed ? 'replay of the one execution' : 'the one execution');
          } else await res.arrayBuffer();
        }
        assert.equal(statuses.filter((s) => s === 201).length + statuses.filter((s) => s === 409).length, 100);
      });

      it('stores a 500 from a handler that failed after the claim, and replays it', async () => {
        const first = await post('/boom', 'boom-1');
        assert.equal(first.status, 500);
        assert.deepEqual(await first.json(), { error: 'database went away' });
        const retry = await post('/boom', 'boom-1');
        assert.equal(retry.status, 500);
        assert.equal(retry.headers.get('idempotent-replayed'), 'true');
        assert.deepEqual(await retry.json(), { error: 'database went away' });
        assert.equal(runs.get('boom'), 1);
      });

      it('frees the key when storeResponse excludes the status', async () => {
        const first = await post('/flaky', 'flaky-1');
        assert.equal(first.status, 503);
        const retry = await post('/flaky', 'flaky-1');
        assert.equal(retry.status, 200);
        assert.equal(retry.headers.get('idempotent-replayed'), null, 'the retry ran again');
        assert.deepEqual(await retry.json(), { n: 2 });
        const third = await post('/flaky', 'flaky-1');
        assert.equal(third.headers.get('idempotent-replayed'), 'true');
      });

      it('replays streamed and redirect responses', async () => {
        const first = await post('/stream', 'stream-1');
        const text = await first.text();
        assert.equal(text, 'chunk-1 of run 1\nchunk-2\n');
        const retry = await post('/stream', 'stream-1');
        assert.equal(await retry.text(), text);
        assert.equal(retry.headers.get('idempotent-replayed'), 'true');
        const redirect = await fetch(`${server.url}/redirect`, { method: 'POST', headers: { 'idempotency-key': 'redir-1' }, redirect: 'manual' });
        assert.equal(redirect.status, 303);
        const again = await fetch(`${server.url}/redirect`, { method: 'POST', headers: { 'idempotency-key': 'redir-1' }, redirect: 'manual' });
        assert.equal(again.status, 303);
        assert.equal(again.headers.get('location'), '/orders/42');
        assert.equal(again.headers.get('idempotent-replayed'), 'true');
        assert.equal(runs.get('redirect'), 1);
      });

      it('leaves methods outside `methods` alone', async () => {
        const a = await fetch(`${server.url}/put`, { method: 'PUT', headers: { 'idempotency-key': 'put-1' } });
        const b = await fetch(`${server.url}/put`, { method: 'PUT', headers: { 'idempotency-key': 'put-1' } });
        assert.deepEqual([(await a.json()) as Json, (await b.json()) as Json], [{ n: 1 }, { n: 2 }]);
      });

      it('gives a detached retry the same job, never a second one', async () => {
        const before = runs.get('slow') ?? 0;
        const first = await post('/slow?ms=200&bgrs=yes', 'detach-1', { v: 1 });
        assert.equal(first.status, 202);
        const retry = await post('/slow?ms=200&bgrs=yes', 'detach-1', { v: 1 });
        assert.equal(retry.status, 202);
        assert.equal(retry.headers.get('location'), first.headers.get('location'));
        const job = await waitForJob(server.url, first.headers.get('location')!);
        const done = await post('/slow?ms=200&bgrs=yes', 'detach-1', { v: 1 });
        assert.equal(done.status, 200);
        assert.equal(done.headers.get('idempotent-replayed'), 'true');
        assert.equal(((await done.json()) as JobDoc).id, job.id);
        const sync = await post('/slow?ms=200', 'detach-1', { v: 1 });
        assert.equal(sync.status, 201, 'a synchronous retry gets the stored response');
        assert.equal(sync.headers.get('idempotent-replayed'), 'true');
        assert.equal((runs.get('slow') ?? 0) - before, 1);
      });

      it('re-attaches a retry with ?bgrs=yes to a synchronous first request cut off by its client', async () => {
        const before = runs.get('slow') ?? 0;
        const controller = new AbortController();
        const cutOff = post('/slow?ms=1000', 'reattach-1', { v: 7 }, {}).catch(() => undefined);
        void cutOff;
        const first = fetch(`${server.url}/slow?ms=1000`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'idempotency-key': 'reattach-2' },
          body: JSON.stringify({ v: 7 }),
          signal: controller.signal,
        }).catch((err: Error) => err);
        setTimeout(() => controller.abort(), 100);
        assert.ok((await first) instanceof Error, 'the client gave up after 100 ms');
        const retry = await post('/slow?ms=1000&bgrs=yes', 'reattach-2', { v: 7 });
        assert.equal(retry.status, 202);
        const location = retry.headers.get('location')!;
        const job = await waitForJob(server.url, location, 5000);
        assert.equal(job.status, 'completed');
        const result = await fetch(`${server.url}${location}/result`);
        assert.equal(result.status, 201);
        const body = (await result.json()) as { n: number; body: unknown };
        assert.deepEqual(body.body, { v: 7 });
        await cutOff;
        assert.equal((runs.get('slow') ?? 0) - before, 2, 'one execution per key: reattach-1 and reattach-2');
      });

      it('never stores Authorization or Cookie', async () => {
        const secret = 'Bearer s3cr3t-token-for-test';
        const res = await post('/orders', 'secret-1', { v: 1 }, { authorization: secret, cookie: 'sid=s3cr3t-cookie' });
        assert.equal(res.status, 201);
        const ack = await post('/orders?bgrs=yes', 'secret-2', { v: 1 }, { authorization: secret, cookie: 'sid=s3cr3t-cookie' });
        const job = await waitForJob(server.url, ack.headers.get('location')!);
        const stored = JSON.stringify(await store.getJob(job.id)) + JSON.stringify(await store.readLogs(job.id, 0, 1000));
        const chunks: Buffer[] = [];
        for await (const chunk of (await store.readResult(job.id))!) chunks.push(Buffer.from(chunk));
        const everything = stored + Buffer.concat(chunks).toString();
        assert.equal(everything.includes('s3cr3t'), false);
      });
    }),
  );

describe('a claim whose process died', () => {
  it('is taken over once its lease expires (in-process lease clock)', async () => {
    const store = new MemoryStore();
    const background = bgrs({ store });
    const { default: express } = await import('express');
    const app = express();
    app.use(background);
    let runs = 0;
    app.post('/pay', background.idempotency({ lease: 200 }), (_req, res) => res.json({ runs: ++runs }));
    const server = await listen(app);
    try {
      // A "dead process" claimed the key and will never renew it.
      const key = recordKey(null, 'POST', '/pay', 'dead-1');
      const now = Date.now();
      const claim = await store.claimIdempotencyKey(key, {
        fingerprint: 'f',
        jobId: 'dead-job',
        state: 'running',
        leaseUntil: now + 200,
        expiresAt: now + 60_000,
      });
      assert.equal(claim.won, true);
      const blocked = await fetch(`${server.url}/pay`, { method: 'POST', headers: { 'idempotency-key': 'dead-1' } });
      assert.equal(blocked.status, 422, 'held by another request (other fingerprint)');
      await sleep(250);
      const taken = await fetch(`${server.url}/pay`, { method: 'POST', headers: { 'idempotency-key': 'dead-1' } });
      assert.equal(taken.status, 200);
      assert.deepEqual(await taken.json(), { runs: 1 });
    } finally {
      await server.close();
    }
  });

  it('expires after ttl, and the key is new again', async () => {
    const background = bgrs();
    const { default: express } = await import('express');
    const app = express();
    app.use(background);
    let runs = 0;
    app.post('/pay', background.idempotency({ ttl: 150 }), (_req, res) => res.json({ runs: ++runs }));
    const server = await listen(app);
    try {
      const send = () => fetch(`${server.url}/pay`, { method: 'POST', headers: { 'idempotency-key': 'ttl-1' } });
      assert.deepEqual(await (await send()).json(), { runs: 1 });
      assert.deepEqual(await (await send()).json(), { runs: 1 });
      await sleep(200);
      assert.deepEqual(await (await send()).json(), { runs: 2 });
    } finally {
      await server.close();
    }
  });
});
