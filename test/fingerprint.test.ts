// One fingerprint wherever the guard sits: app.use(bgrs()) before or after the body parser, a synchronous try
// and a detached retry (or the other way round) of one request never collide into a 422. Express 4 and 5, real HTTP.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Request, RequestHandler } from 'express';
import { defaultFingerprint, parseIdempotencyKey, recordKey } from '../src/http/idempotency-key.js';
import { bgrs } from '../src/index.js';
import { type ExpressModule, forEachExpress, type JobDoc, listen, type Running, sleep, waitForJob } from './helpers.js';

type Problem = { type: string; status: number };
const problemCode = (body: unknown): string => (body as Problem).type.split(':').pop()!;

/** A real IncomingMessage carrying only what the fingerprint reads: method, URL and headers. */
function message(method: string, url: string, headers: Record<string, string> = {}, originalUrl?: string): IncomingMessage & { originalUrl?: string } {
  const req = new IncomingMessage(new Socket()) as IncomingMessage & { originalUrl?: string };
  req.method = method;
  req.url = url;
  req.headers = headers;
  if (originalUrl !== undefined) req.originalUrl = originalUrl;
  return req;
}

describe('defaultFingerprint', () => {
  const json = { 'content-type': 'application/json' };
  const form = { 'content-type': 'application/x-www-form-urlencoded' };
  const fp = (req: IncomingMessage, raw: Buffer | string | null, parsed?: unknown, preParsed = false): string =>
    defaultFingerprint(req, typeof raw === 'string' ? Buffer.from(raw) : raw, parsed, preParsed);

  it('is a base64url SHA-256 digest, stable for the same request', () => {
    const a = fp(message('POST', '/orders', json), '{"a":1}');
    assert.match(a, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(fp(message('POST', '/orders', json), '{"a":1}'), a);
  });

  it('reads a JSON body as canonical JSON: raw bytes and a parsed body agree, key order and whitespace do not count', () => {
    const req = message('POST', '/orders', json);
    const raw = '{"item":"book","qty":2,"tags":["a","b"],"nested":{"y":1,"x":[{"b":1,"a":2}]}}';
    const reference = fp(req, raw);
    assert.equal(fp(req, null, JSON.parse(raw), true), reference, 'a parser ran before the guard');
    assert.equal(fp(req, '{ "nested": { "x": [ { "a": 2, "b": 1 } ], "y": 1 },\n  "tags": ["a", "b"], "qty": 2, "item": "book" }'), reference);
    assert.equal(fp(req, null, { tags: ['a', 'b'], qty: 2, nested: { x: [{ a: 2, b: 1 }], y: 1 }, item: 'book' }, true), reference);
    assert.notEqual(fp(req, '{"item":"book","qty":2,"tags":["b","a"],"nested":{"y":1,"x":[{"b":1,"a":2}]}}'), reference, 'array order counts');
    assert.notEqual(fp(req, '{"item":"book","qty":3,"tags":["a","b"],"nested":{"y":1,"x":[{"b":1,"a":2}]}}'), reference);
  });

  it('treats application/*+json and media type parameters or case alike', () => {
    const raw = '{"b":1,"a":2}';
    const parsed = { a: 2, b: 1 };
    for (const type of ['application/json; charset=utf-8', 'Application/JSON', 'application/vnd.api+json', 'application/problem+json;q=1']) {
      const req = message('POST', '/x', { 'content-type': type });
      assert.equal(fp(req, raw), fp(req, null, parsed, true), type);
    }
  });

  it('keeps the raw bytes of a body that is not valid JSON', () => {
    const req = message('POST', '/x', json);
    assert.notEqual(fp(req, '{"a":'), fp(req, '{"a": '), 'invalid JSON is hashed byte for byte');
    assert.equal(fp(req, '{"a":'), fp(message('POST', '/x', { 'content-type': 'application/octet-stream' }), '{"a":'));
  });

  it('reads a form as its sorted pairs: raw, parsed by querystring (extended: false) or by qs (extended: true) agree', () => {
    const req = message('POST', '/orders', form);
    const raw = 'qty=2&item=a+book&tag=x&tag=y';
    const reference = fp(req, raw);
    assert.equal(fp(req, 'item=a%20book&tag=x&qty=2&tag=y'), reference, 'pair order and encoding do not count');
    assert.equal(fp(req, null, { qty: '2', item: 'a book', tag: ['x', 'y'] }, true), reference, 'extended: false');
    assert.equal(fp(req, 'qty=2&item=a+book&tag[]=x&tag[]=y'), reference, 'a[] and a read alike');
    assert.equal(fp(req, 'qty=2&item=a+book&tag[0]=x&tag[1]=y'), reference, 'a[0] and a read alike');
    assert.notEqual(fp(req, 'qty=2&item=a+book&tag=y&tag=x'), reference, 'the order of repeated names (array items) counts');
    assert.notEqual(fp(req, 'qty=3&item=a+book&tag=x&tag=y'), reference);
    const nested = 'user[name]=ann&user[langs][]=en&user[langs][]=fr&z=1';
    assert.equal(fp(req, null, { z: '1', user: { langs: ['en', 'fr'], name: 'ann' } }, true), fp(req, nested), 'qs nesting');
  });

  it('hashes other bodies byte for byte, a parser that kept bytes or text giving those bytes back', () => {
    const bin = message('POST', '/upload', { 'content-type': 'application/octet-stream' });
    const bytes = Buffer.from([0, 1, 2, 0xfe, 0xff]);
    assert.equal(fp(bin, bytes), fp(bin, null, Buffer.from(bytes), true), 'express.raw');
    assert.notEqual(fp(bin, bytes), fp(bin, Buffer.from([0, 1, 2, 0xfe])));
    const text = message('POST', '/note', { 'content-type': 'text/plain; charset=utf-8' });
    assert.equal(fp(text, 'héllo wörld'), fp(text, null, 'héllo wörld', true), 'express.text');
    assert.notEqual(fp(text, 'héllo wörld'), fp(text, 'hello world'));
  });

  it('fingerprints JSON that a parser kept as bytes or text like the same JSON read raw', () => {
    const req = message('POST', '/hook', json);
    const raw = '{"event":"paid","id":7}';
    assert.equal(fp(req, null, Buffer.from(raw), true), fp(req, raw), 'express.raw({ type: "application/json" })');
    assert.equal(fp(req, null, raw, true), fp(req, raw), 'express.text({ type: "application/json" })');
  });

  it('fingerprints a body a parser read as JSON under another type like the same body read raw', () => {
    const req = message('POST', '/hook', { 'content-type': 'text/plain' });
    const raw = '{"event":"paid","id":7}';
    assert.equal(fp(req, null, JSON.parse(raw), true), fp(req, raw), 'express.json({ type: "text/plain" })');
  });

  it('fingerprints text a parser decoded from another charset like its raw bytes', () => {
    const req = message('POST', '/note', { 'content-type': 'text/plain; charset=iso-8859-1' });
    const raw = Buffer.from([0x63, 0x61, 0x66, 0xe9]);
    assert.equal(fp(req, null, raw.toString('latin1'), true), fp(req, raw), 'express.text() decoded "café" from latin-1');
  });

  it('takes method, path and the canonical query without bgrs; not Prefer', () => {
    const base = fp(message('POST', '/orders?a=1&b=2', json), '{}');
    assert.equal(fp(message('POST', '/orders?b=2&a=1', json), '{}'), base, 'query order');
    assert.equal(fp(message('POST', '/orders?a=1&bgrs=yes&b=2', json), '{}'), base, 'bgrs is not part of it');
    assert.equal(fp(message('POST', '/orders?bgrs=no&b=2&a=1', json), '{}'), base);
    assert.equal(fp(message('POST', '/orders?a=1&b=2', { ...json, prefer: 'respond-async, wait=5' }), '{}'), base, 'Prefer is not part of it');
    assert.notEqual(fp(message('PATCH', '/orders?a=1&b=2', json), '{}'), base, 'method');
    assert.notEqual(fp(message('POST', '/orders/1?a=1&b=2', json), '{}'), base, 'path');
    assert.notEqual(fp(message('POST', '/orders?a=1&b=3', json), '{}'), base, 'query value');
    assert.notEqual(fp(message('POST', '/orders?a=1', json), '{}'), base, 'query pair');
  });

  it('prefers originalUrl (a mounted app) over url', () => {
    const mounted = message('POST', '/orders', json, '/api/orders');
    assert.equal(fp(mounted, '{}'), fp(message('POST', '/api/orders', json), '{}'));
    assert.notEqual(fp(mounted, '{}'), fp(message('POST', '/orders', json), '{}'));
  });

  it('tells a request without a body from one with an empty JSON object', () => {
    const req = message('POST', '/x', json);
    assert.equal(fp(req, null), fp(message('POST', '/x'), null));
    assert.notEqual(fp(req, null), fp(req, '{}'));
  });
});

describe('recordKey and parseIdempotencyKey', () => {
  it('keys a record by scope, method, path and key, not by the query', () => {
    const key = recordKey('owner:ann', 'POST', '/orders?page=1', 'k-1');
    assert.match(key, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(recordKey('owner:ann', 'POST', '/orders?page=2&bgrs=yes', 'k-1'), key);
    assert.equal(recordKey('owner:ann', 'POST', '/orders', 'k-1'), key);
    for (const other of [
      recordKey('owner:bob', 'POST', '/orders', 'k-1'),
      recordKey(null, 'POST', '/orders', 'k-1'),
      recordKey('owner:ann', 'PATCH', '/orders', 'k-1'),
      recordKey('owner:ann', 'POST', '/orders/1', 'k-1'),
      recordKey('owner:ann', 'POST', '/orders', 'k-2'),
    ])
      assert.notEqual(other, key);
    // The parts cannot run into each other.
    assert.notEqual(recordKey('s', 'POST', '/p', 'k'), recordKey('s', 'POST', '/p","k', ''));
    assert.notEqual(recordKey('s","POST', 'GET', '/p', 'k'), recordKey('s', 'POST","GET', '/p', 'k'));
  });

  it('parses sf-strings and bare keys, trimming spaces around them', () => {
    assert.equal(parseIdempotencyKey('  abc  '), 'abc');
    assert.equal(parseIdempotencyKey(' "a b" '), null, 'a space is not a visible character');
    assert.equal(parseIdempotencyKey('"a,b"'), 'a,b', 'an sf-string may hold a comma');
    assert.equal(parseIdempotencyKey('"a\\x"'), null, 'only \\" and \\\\ escapes');
  });
});

// ---- HTTP: both layouts × body kinds × Express 4 and 5 ----

interface BodyKind {
  name: string;
  contentType: string;
  parser: (express: ExpressModule) => RequestHandler;
  body: Buffer | string;
  /** The same request written another way (key order, whitespace, pair order), when the type allows it. */
  equivalent?: Buffer | string;
  different: Buffer | string;
}

const KINDS: BodyKind[] = [
  {
    name: 'JSON (express.json)',
    contentType: 'application/json',
    parser: (express) => express.json(),
    body: '{"item":"book","qty":2,"tags":["a","b"],"ship":{"to":"Paris","by":"rail"}}',
    equivalent: '{\n  "ship": { "by": "rail", "to": "Paris" },\n  "tags": [ "a", "b" ],\n  "qty": 2,\n  "item": "book"\n}\n',
    different: '{"item":"book","qty":3,"tags":["a","b"],"ship":{"to":"Paris","by":"rail"}}',
  },
  {
    name: 'urlencoded (express.urlencoded extended: false)',
    contentType: 'application/x-www-form-urlencoded',
    parser: (express) => express.urlencoded({ extended: false }),
    body: 'item=a+book&qty=2&tag=x&tag=y',
    equivalent: 'tag=x&qty=2&item=a%20book&tag=y',
    different: 'item=a+book&qty=3&tag=x&tag=y',
  },
  {
    name: 'urlencoded (express.urlencoded extended: true)',
    contentType: 'application/x-www-form-urlencoded; charset=utf-8',
    parser: (express) => express.urlencoded({ extended: true }),
    body: 'item=book&qty=2&tags[]=a&tags[]=b&ship[to]=Paris&ship[by]=rail',
    equivalent: 'ship[by]=rail&tags[]=a&ship[to]=Paris&qty=2&tags[]=b&item=book',
    different: 'item=book&qty=2&tags[]=b&tags[]=a&ship[to]=Paris&ship[by]=rail',
  },
  {
    name: 'raw bytes (express.raw)',
    contentType: 'application/octet-stream',
    parser: (express) => express.raw(),
    body: Buffer.from([0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x0a]),
    different: Buffer.from([0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x0b]),
  },
  {
    name: 'text (express.text)',
    contentType: 'text/plain; charset=utf-8',
    parser: (express) => express.text(),
    body: 'héllo wörld\n  two spaces, one line',
    different: 'héllo wörld\n  two spaces, one line!',
  },
];

/**
 * Parsers that keep JSON or a form as bytes or text (webhook signature checks do), or read another
 * type as JSON. The README promises one fingerprint "whether a body parser ran before the guard or
 * not": with app.use(bgrs()) first, a detached retry is fingerprinted from the raw bytes.
 */
const ODD_PARSERS: BodyKind[] = [
  {
    name: 'JSON kept as bytes (express.raw({ type: "application/json" }), a webhook)',
    contentType: 'application/json',
    parser: (express) => express.raw({ type: 'application/json' }),
    body: '{"event":"paid","id":7}',
    different: '{"event":"paid","id":8}',
  },
  {
    name: 'JSON kept as text (express.text({ type: "application/json" }))',
    contentType: 'application/json',
    parser: (express) => express.text({ type: 'application/json' }),
    body: '{"event":"paid","id":7}',
    different: '{"event":"paid","id":8}',
  },
  {
    name: 'JSON sent as text/plain, read by express.json({ type: "text/plain" })',
    contentType: 'text/plain',
    parser: (express) => express.json({ type: 'text/plain' }),
    body: '{"event":"paid","id":7}',
    different: '{"event":"paid","id":8}',
  },
  {
    name: 'latin-1 text (express.text, charset=iso-8859-1)',
    contentType: 'text/plain; charset=iso-8859-1',
    parser: (express) => express.text(),
    body: Buffer.from([0x63, 0x61, 0x66, 0xe9]), // "café" in latin-1
    different: Buffer.from([0x63, 0x61, 0x66, 0x65]),
  },
];

const LAYOUTS = ['bgrs first (README)', 'parser first'] as const;
type Layout = (typeof LAYOUTS)[number];

/** What the handler saw of the body, comparable across parsers. */
function seenBody(body: unknown): unknown {
  if (Buffer.isBuffer(body)) return { bytes: body.toString('hex') };
  return body;
}

function scenarios(express: ExpressModule, layout: Layout, kind: BodyKind): void {
  describe(`${layout}: ${kind.name}`, () => {
    let server: Running;
    const runs = new Map<string, number>();
    const gates = new Map<string, () => void>();
    const entered = new Set<string>();

    before(async () => {
      const app = express();
      const background = bgrs();
      if (layout === 'bgrs first (README)') {
        app.use(background);
        app.use(kind.parser(express));
      } else {
        app.use(kind.parser(express));
        app.use(background);
      }
      app.post('/orders', background.idempotency(), async (req: Request, res) => {
        const key = String(req.get('idempotency-key'));
        runs.set(key, (runs.get(key) ?? 0) + 1);
        if (key.startsWith('hold-')) {
          entered.add(key);
          await new Promise<void>((resolve) => gates.set(key, resolve));
        }
        res
          .status(201)
          .set('X-Run', String(runs.get(key)))
          .json({ key, body: seenBody(req.body), query: req.query });
      });
      server = await listen(app);
    });
    after(() => server.close());

    const post = (path: string, key: string, body: Buffer | string): Promise<Response> =>
      fetch(server.url + path, { method: 'POST', headers: { 'content-type': kind.contentType, 'idempotency-key': key }, body });
    const until = async (key: string): Promise<void> => {
      for (let i = 0; i < 500 && !entered.has(key); i++) await sleep(10);
      assert.ok(entered.has(key), `the handler of ${key} started`);
    };
    const newKey = (prefix = 'k'): string => `${prefix}-${randomUUID()}`;
    // With the parser first, both tries are fingerprinted from the parsed body and agree.

    it('sync first (201), then a detached retry with the same key and body: the stored answer, not 422', async () => {
      const key = newKey();
      const first = await post('/orders?x=1', key, kind.body);
      assert.equal(first.status, 201);
      const firstBody = await first.json();
      const retry = await post('/orders?x=1&bgrs=yes', key, kind.body);
      const retryText = await retry.text();
      assert.notEqual(retry.status, 422, retryText);
      assert.equal(retry.status, 200, retryText);
      assert.equal(retry.headers.get('idempotent-replayed'), 'true');
      const doc = JSON.parse(retryText) as JobDoc;
      assert.equal(doc.status, 'completed');
      const result = await fetch(server.url + doc.links.result);
      assert.equal(result.status, 201);
      assert.deepEqual(await result.json(), firstBody, "the job's result is the first execution's answer");
      const sync = await post('/orders?x=1', key, kind.body);
      assert.equal(sync.status, 201);
      assert.equal(sync.headers.get('idempotent-replayed'), 'true');
      assert.deepEqual(await sync.json(), firstBody);
      assert.equal(runs.get(key), 1, 'one execution');
    });

    it('a detached retry re-attaches to a sync first try still running (202, same execution)', async () => {
      const key = newKey('hold');
      const first = post('/orders', key, kind.body);
      first.catch(() => undefined);
      await until(key);
      let retry: Response;
      try {
        retry = await post('/orders?bgrs=yes', key, kind.body);
      } finally {
        gates.get(key)!();
      }
      const retryText = await retry.text();
      assert.equal(retry.status, 202, retryText);
      const location = retry.headers.get('location')!;
      const answered = await first;
      assert.equal(answered.status, 201);
      const firstBody = await answered.json();
      const job = await waitForJob(server.url, location);
      assert.equal(job.status, 'completed');
      const result = await fetch(`${server.url}${location}/result`);
      assert.equal(result.status, 201);
      assert.deepEqual(await result.json(), firstBody);
      assert.equal(runs.get(key), 1);
    });

    it('detached first (202), then a sync retry with the same key and body: the stored answer, not 422', async () => {
      const key = newKey();
      const ack = await post('/orders?bgrs=yes', key, kind.body);
      assert.equal(ack.status, 202);
      const job = await waitForJob(server.url, ack.headers.get('location')!);
      assert.equal(job.status, 'completed');
      const result = await fetch(server.url + job.links.result);
      assert.equal(result.status, 201);
      const stored = (await result.json()) as { body: unknown };
      const sync = await post('/orders', key, kind.body);
      const syncText = await sync.text();
      assert.notEqual(sync.status, 422, syncText);
      assert.equal(sync.status, 201, syncText);
      assert.equal(sync.headers.get('idempotent-replayed'), 'true');
      assert.deepEqual(JSON.parse(syncText), stored);
      assert.equal(runs.get(key), 1);
    });

    it('a sync retry of a detached first try still running is 409 in use, not 422', async () => {
      const key = newKey('hold');
      const ack = await post('/orders?bgrs=yes', key, kind.body);
      assert.equal(ack.status, 202);
      await until(key);
      let sync: Response;
      try {
        sync = await post('/orders', key, kind.body);
      } finally {
        gates.get(key)!();
      }
      const body = await sync.json();
      assert.equal(sync.status, 409, JSON.stringify(body));
      assert.equal(problemCode(body), 'idempotency-key-in-use');
      await waitForJob(server.url, ack.headers.get('location')!);
      const replay = await post('/orders', key, kind.body);
      assert.equal(replay.status, 201);
      assert.equal(replay.headers.get('idempotent-replayed'), 'true');
      assert.equal(runs.get(key), 1);
    });

    if (kind.equivalent !== undefined) {
      const equivalent = kind.equivalent;
      it('the same body written another way (key or pair order, whitespace) is the same request', async () => {
        const key = newKey();
        const first = await post('/orders', key, kind.body);
        assert.equal(first.status, 201);
        const firstBody = await first.json();
        const sync = await post('/orders', key, equivalent);
        assert.equal(sync.status, 201);
        assert.equal(sync.headers.get('idempotent-replayed'), 'true');
        assert.deepEqual(await sync.json(), firstBody);
        const detachedRetry = await post('/orders?bgrs=yes', key, equivalent);
        assert.equal(detachedRetry.status, 200, await detachedRetry.clone().text());
        assert.equal(detachedRetry.headers.get('idempotent-replayed'), 'true');
        // And the other way round: detached with one writing, sync with the other.
        const other = newKey();
        const ack = await post('/orders?bgrs=yes', other, equivalent);
        assert.equal(ack.status, 202);
        await waitForJob(server.url, ack.headers.get('location')!);
        const syncRetry = await post('/orders', other, kind.body);
        assert.equal(syncRetry.status, 201, await syncRetry.clone().text());
        assert.equal(syncRetry.headers.get('idempotent-replayed'), 'true');
        assert.equal(runs.get(key), 1);
        assert.equal(runs.get(other), 1);
      });
    }

    it('another body with the same key is 422 idempotency-key-reused, sync or detached', async () => {
      const key = newKey();
      assert.equal((await post('/orders', key, kind.body)).status, 201);
      for (const path of ['/orders', '/orders?bgrs=yes']) {
        const res = await post(path, key, kind.different);
        const body = await res.json();
        assert.equal(res.status, 422, `${path}: ${JSON.stringify(body)}`);
        assert.equal(problemCode(body), 'idempotency-key-reused');
      }
      const other = newKey();
      const ack = await post('/orders?bgrs=yes', other, kind.body);
      assert.equal(ack.status, 202);
      await waitForJob(server.url, ack.headers.get('location')!);
      const res = await post('/orders', other, kind.different);
      assert.equal(res.status, 422);
      assert.equal(problemCode(await res.json()), 'idempotency-key-reused');
      assert.equal(runs.get(key), 1);
      assert.equal(runs.get(other), 1);
    });
  });
}

forEachExpress((express) => {
  for (const layout of LAYOUTS) for (const kind of KINDS) scenarios(express, layout, kind);
  describe('parsers that keep or read bodies unlike their type', () => {
    for (const layout of LAYOUTS) for (const kind of ODD_PARSERS) scenarios(express, layout, kind);
  });
});
