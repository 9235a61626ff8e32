// Response-side fidelity: every Express response method, detached, replays at /result exactly as it answers live.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import type { Request, Response } from 'express';
import { bgrs } from '../src/index.js';
import { assertSameResponse, FIXTURES, liveAndDetached, useTemplateEngine } from './capture-helpers.js';
import { detachAndWait, forEachExpress, listen, type Running } from './helpers.js';

const CSV = 'id,name,amount\n1,alpha,10.50\n2,"beta, gamma",-3\n3,délta,0\n';
const BINARY = Buffer.from(Array.from({ length: 1024 }, (_, i) => (i * 7 + (i >> 8)) & 0xff));

forEachExpress((express) => {
  let server: Running;
  const endCallbacks = new Set<string>();

  before(async () => {
    const app = express();
    useTemplateEngine(app);
    app.use(bgrs());

    app.get('/json', (_req, res) => void res.json({ name: 'bgrs', list: [1, 2, 3], nested: { ok: true, none: null }, text: 'é✓' }));
    app.get('/string', (_req, res) => void res.send('<p>plain string</p>'));
    app.get('/buffer', (_req, res) => void res.send(BINARY));
    app.get('/no-content', (_req, res) => void res.status(204).end());
    app.get('/teapot', (_req, res) => void res.status(418).end());
    app.get('/headers', (_req, res) => {
      res.set('X-Custom', 'custom value');
      res.set({ 'X-Other': 'other', 'X-List': ['one', 'two'] });
      res.type('csv');
      res.attachment('report final.csv');
      res.send(CSV);
    });
    app.get('/redirect', (_req, res) => res.redirect('/target?x=1'));
    app.get('/redirect-301', (_req, res) => res.redirect(301, '/moved/for-good'));
    app.get('/file', (_req, res) => res.sendFile(join(FIXTURES, 'data.csv')));
    app.get('/image', (_req, res) => res.sendFile(join(FIXTURES, 'pixel.png')));
    app.get('/download', (_req, res) => res.download(join(FIXTURES, 'pixel.png'), 'picture 1.png'));
    app.get('/download-csv', (_req, res) => res.download(join(FIXTURES, 'data.csv')));
    app.get('/render', (_req, res) => res.render('hello', { name: 'World', count: 3 }));
    app.get('/format', (_req, res) => {
      res.format({
        'text/plain': () => res.send('as text'),
        'text/html': () => res.send('<b>as html</b>'),
        'application/json': () => res.json({ as: 'json' }),
      });
    });
    app.get('/chunks', (_req, res) => {
      res.type('text/plain');
      res.setHeader('X-Chunked', 'yes');
      for (let i = 0; i < 200; i++) res.write(`chunk ${i};`);
      res.write(Buffer.from([0, 1, 2, 255]));
      res.end('last');
    });
    app.get('/piped', (_req, res) => {
      res.type('application/x-ndjson');
      Readable.from(
        (function* () {
          for (let i = 0; i < 100; i++) yield `${JSON.stringify({ i, square: i * i })}\n`;
        })(),
      ).pipe(res);
    });
    app.get('/write-head-object', (_req, res) => {
      res.writeHead(201, { 'Content-Type': 'text/plain; charset=utf-8', 'X-One': '1', 'X-Many': ['a', 'b'], Location: '/things/7' });
      res.end('created from object');
    });
    app.get('/write-head-array', (_req, res) => {
      res.writeHead(201, ['Content-Type', 'text/plain', 'X-One', '1', 'X-Two', 'two', 'X-Dup', 'a', 'X-Dup', 'b']);
      res.end('created from array');
    });
    app.get('/end-callback', (req, res) => {
      const token = String(req.query.token);
      res.type('text');
      res.write('before end');
      res.end(() => endCallbacks.add(token));
    });
    app.get('/server-error', (_req, res) => void res.status(500).json({ error: 'kaboom', code: 42 }));
    server = await listen(app);
  });
  after(() => server.close());

  const cases: Array<[string, string, RequestInit?]> = [
    ['res.json', '/json'],
    ['res.send(string)', '/string'],
    ['res.send(Buffer)', '/buffer'],
    ['res.status(204).end()', '/no-content'],
    ['res.status(418).end()', '/teapot'],
    ['res.set / res.type / res.attachment', '/headers'],
    ['res.redirect (302)', '/redirect'],
    ['res.redirect(301, path)', '/redirect-301'],
    ['res.sendFile (CSV)', '/file'],
    ['res.sendFile (PNG)', '/image'],
    ['res.download with a file name', '/download'],
    ['res.download (CSV)', '/download-csv'],
    ['res.render with a custom engine', '/render'],
    ['res.format, Accept: application/json', '/format', { headers: { accept: 'application/json' } }],
    ['res.format, Accept: text/html', '/format', { headers: { accept: 'text/html;q=0.9, text/plain;q=0.5' } }],
    ['res.write of many chunks, then res.end', '/chunks'],
    ['a Readable piped into res', '/piped'],
    ['res.writeHead(201, object)', '/write-head-object'],
    ['res.writeHead(201, raw array)', '/write-head-array'],
  ];
  for (const [name, path, init] of cases) {
    it(`${name}: /result equals the live answer`, async () => {
      const { live, replay, job } = await liveAndDetached(server.url, path, init);
      assertSameResponse(live, replay, job);
    });
  }

  it('exact values: res.json, 204, 418, redirect, attachment', async () => {
    let r = await liveAndDetached(server.url, '/json');
    assert.equal(r.replay.headers.get('content-type'), 'application/json; charset=utf-8');
    assert.deepEqual(JSON.parse(r.replay.body.toString('utf8')), { name: 'bgrs', list: [1, 2, 3], nested: { ok: true, none: null }, text: 'é✓' });
    r = await liveAndDetached(server.url, '/no-content');
    assert.equal(r.replay.status, 204);
    assert.equal(r.replay.body.length, 0);
    r = await liveAndDetached(server.url, '/teapot');
    assert.equal(r.replay.status, 418);
    assert.equal(r.replay.headers.get('content-length'), '0');
    r = await liveAndDetached(server.url, '/redirect');
    assert.equal(r.replay.status, 302);
    assert.equal(r.replay.headers.get('location'), '/target?x=1');
    r = await liveAndDetached(server.url, '/headers');
    assert.equal(r.replay.headers.get('content-type'), 'text/csv; charset=utf-8');
    assert.equal(r.replay.headers.get('content-disposition'), 'attachment; filename="report final.csv"');
    assert.equal(r.replay.headers.get('x-custom'), 'custom value');
    assert.equal(r.replay.headers.get('x-list'), 'one, two');
    assert.equal(r.replay.body.toString('utf8'), CSV);
  });

  it('exact values: sendFile / download bytes and headers', async () => {
    const png = await import('node:fs/promises').then((fs) => fs.readFile(join(FIXTURES, 'pixel.png')));
    let r = await liveAndDetached(server.url, '/download');
    assert.deepEqual(r.replay.body, png);
    assert.equal(r.replay.headers.get('content-type'), 'image/png');
    assert.equal(r.replay.headers.get('content-disposition'), 'attachment; filename="picture 1.png"');
    assert.equal(r.replay.headers.get('content-length'), String(png.length));
    r = await liveAndDetached(server.url, '/file');
    assert.equal(r.replay.body.toString('utf8'), CSV);
    assert.match(r.replay.headers.get('content-type') ?? '', /^text\/csv; charset=utf-8$/i);
    assert.ok(r.replay.headers.get('last-modified'), 'Last-Modified kept');
    assert.ok(r.replay.headers.get('etag'), 'ETag kept');
  });

  it('exact values: render, format, chunks, pipe', async () => {
    let r = await liveAndDetached(server.url, '/render');
    assert.equal(r.replay.body.toString('utf8'), '<!doctype html><h1>Hello World</h1><p>3 items</p>\n');
    assert.equal(r.replay.headers.get('content-type'), 'text/html; charset=utf-8');
    r = await liveAndDetached(server.url, '/format', { headers: { accept: 'application/json' } });
    assert.equal(r.replay.body.toString('utf8'), '{"as":"json"}');
    assert.equal(r.replay.headers.get('vary'), 'Accept');
    r = await liveAndDetached(server.url, '/format', { headers: { accept: 'text/plain' } });
    assert.equal(r.replay.body.toString('utf8'), 'as text');
    r = await liveAndDetached(server.url, '/chunks');
    const expected = Array.from({ length: 200 }, (_, i) => `chunk ${i};`).join('');
    assert.deepEqual(r.replay.body, Buffer.concat([Buffer.from(expected), Buffer.from([0, 1, 2, 255]), Buffer.from('last')]));
    assert.equal(r.replay.headers.get('x-chunked'), 'yes');
    r = await liveAndDetached(server.url, '/piped');
    const lines = r.replay.body.toString('utf8').trimEnd().split('\n');
    assert.equal(lines.length, 100);
    assert.deepEqual(JSON.parse(lines[99]!), { i: 99, square: 9801 });
  });

  it('exact values: res.writeHead object and raw array forms', async () => {
    let r = await liveAndDetached(server.url, '/write-head-object');
    assert.equal(r.replay.status, 201);
    assert.equal(r.replay.headers.get('x-one'), '1');
    assert.equal(r.replay.headers.get('x-many'), 'a, b');
    assert.equal(r.replay.headers.get('location'), '/things/7');
    assert.equal(r.replay.headers.get('content-type'), 'text/plain; charset=utf-8');
    assert.equal(r.replay.body.toString('utf8'), 'created from object');
    r = await liveAndDetached(server.url, '/write-head-array');
    assert.equal(r.replay.status, 201);
    assert.equal(r.replay.headers.get('x-one'), '1');
    assert.equal(r.replay.headers.get('x-two'), 'two');
    // Whatever Node does with duplicate names in the raw form, the replay must say the same thing.
    assert.equal(r.replay.headers.get('x-dup'), r.live.headers.get('x-dup'));
    assert.equal(r.replay.headers.get('content-type'), 'text/plain');
    assert.equal(r.replay.body.toString('utf8'), 'created from array');
  });

  it('res.end(cb): the callback runs in the detached run', async () => {
    const token = `t${Math.random().toString(36).slice(2)}`;
    const { live, replay, job } = await liveAndDetached(server.url, `/end-callback?token=live-${token}`);
    assert.equal(replay.body.toString('utf8'), 'before end');
    assertSameResponse(live, replay, job);
    const { job: job2 } = await detachAndWait(server.url, `/end-callback?token=${token}&bgrs=yes`);
    assert.equal(job2.status, 'completed');
    for (let i = 0; i < 50 && !endCallbacks.has(token); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(endCallbacks.has(token), 'res.end callback ran for the detached request');
    assert.ok(endCallbacks.has(`live-${token}`), 'and for the live one');
  });

  it('status 500: the job fails with server_error and /result still replays the 500', async () => {
    const { live, replay, job } = await liveAndDetached(server.url, '/server-error');
    assert.equal(live.status, 500);
    assert.equal(job.status, 'failed');
    assert.equal(job.error?.type, 'server_error');
    assert.equal(replay.status, 500);
    assert.deepEqual(JSON.parse(replay.body.toString('utf8')), { error: 'kaboom', code: 42 });
    assertSameResponse(live, replay, job);
  });

  describe('cookies', () => {
    let plain: Running;
    let replaying: Running;
    const setCookies = (_req: Request, res: Response): void => {
      res.cookie('session', 'abc123', { httpOnly: true, path: '/' });
      res.cookie('theme', 'dark', { maxAge: 60_000 });
      res.cookie('prefs', { lang: 'fr', size: 2 }, { sameSite: 'strict', path: '/account' });
      res.clearCookie('old');
      res.json({ cookies: 4 });
    };
    before(async () => {
      const a = express();
      a.use(bgrs());
      a.get('/cookies', setCookies);
      plain = await listen(a);
      const b = express();
      b.use(bgrs({ replayCookies: true }));
      b.get('/cookies', setCookies);
      replaying = await listen(b);
    });
    after(async () => {
      await plain.close();
      await replaying.close();
    });

    it('Set-Cookie values are dropped from /result by default', async () => {
      const { live, replay, job } = await liveAndDetached(plain.url, '/cookies');
      assert.equal(live.headers.getSetCookie().length, 4);
      assertSameResponse(live, replay, job);
      assert.deepEqual(replay.headers.getSetCookie(), []);
    });

    it('with replayCookies: true, every Set-Cookie value is replayed, in order', async () => {
      const { live, replay, job } = await liveAndDetached(replaying.url, '/cookies');
      const liveCookies = live.headers.getSetCookie();
      assert.equal(liveCookies.length, 4);
      assert.match(liveCookies[0]!, /^session=abc123; Path=\/; HttpOnly$/);
      assert.match(liveCookies[2]!, /^prefs=j%3A%7B%22lang%22%3A%22fr%22%2C%22size%22%3A2%7D; Path=\/account; SameSite=Strict$/);
      // The expiry dates (theme, old) are computed per run; compare them without the dates.
      const undated = (list: string[]): string[] => list.map((c) => c.replace(/; Expires=[^;]+/, ''));
      assert.deepEqual(undated(replay.headers.getSetCookie()), undated(liveCookies));
      assert.equal(replay.status, 200);
      assert.deepEqual(replay.body, live.body);
      assert.equal(job.status, 'completed');
    });
  });
});
