// The trigger: the default rule (?bgrs= and Prefer) function by function, then a custom `trigger` over real
// HTTP on Express 4 and 5: it is the one rule, and `?bgrs=` becomes an ordinary query parameter.
import assert from 'node:assert/strict';
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { ErrorRequestHandler, Request, RequestHandler } from 'express';
import { bgrsValues, defaultDecision, PARAM, parseBgrsValue, parsePrefer, stripParam } from '../src/http/trigger.js';
import { bgrs } from '../src/index.js';
import { stripRespondAsync } from '../src/replay/envelope.js';
import { forEachExpress, type JobDoc, listen, type Running, waitForJob } from './helpers.js';

type Problem = { type: string; status: number };
const problemCode = (body: unknown): string => (body as Problem).type.split(':').pop()!;

/** A real IncomingMessage with only a URL and headers, what the trigger reads. */
function message(url: string, headers: Record<string, string | string[]> = {}): IncomingMessage {
  const req = new IncomingMessage(new Socket());
  req.method = 'GET';
  req.url = url;
  req.headers = headers as IncomingMessage['headers'];
  return req;
}

describe('trigger functions', () => {
  it('names the parameter bgrs', () => {
    assert.equal(PARAM, 'bgrs');
  });

  describe('bgrsValues', () => {
    it('is undefined without the parameter, however often "bgrs" appears elsewhere', () => {
      for (const url of ['/x', '/x?', '/x?a=1', '/bgrs/x?a=1', '/x?a=bgrs', '/x?xbgrs=1', '/x?bgrsx=1', '/x?a=1&b=bgrs=yes']) {
        assert.equal(bgrsValues(url), undefined, url);
      }
    });
    it('lists every decoded value, in order; a bare name is the empty value', () => {
      assert.deepEqual(bgrsValues('/x?bgrs=yes'), ['yes']);
      assert.deepEqual(bgrsValues('/x?a=1&bgrs=YES&b=2'), ['YES']);
      assert.deepEqual(bgrsValues('/x?bgrs'), ['']);
      assert.deepEqual(bgrsValues('/x?bgrs='), ['']);
      assert.deepEqual(bgrsValues('/x?bgrs=yes&bgrs=no'), ['yes', 'no']);
      assert.deepEqual(bgrsValues('/x?bgrs=%20true%20'), [' true ']);
      assert.deepEqual(bgrsValues('/x?bgrs=a+b'), ['a b'], '+ is a space');
      assert.deepEqual(bgrsValues('/x?bgrs=%E0%A4%A'), ['%E0%A4%A'], 'a malformed escape is kept as written');
    });
    it('matches the name as written: an encoded name is an ordinary parameter, whatever else the URL holds', () => {
      assert.equal(bgrsValues('/x?%62grs=1'), undefined);
      assert.equal(bgrsValues('/x?%62grs=1&y=bgrs'), undefined);
      assert.deepEqual(bgrsValues('/x?%62grs=1&bgrs=yes'), ['yes']);
    });
  });

  describe('parseBgrsValue', () => {
    it('reads yes, 1, true as true and no, 0, false as false, in any case and with spaces', () => {
      for (const value of ['yes', '1', 'true', 'YES', 'True', ' yes ']) assert.equal(parseBgrsValue([value]), true, value);
      for (const value of ['no', '0', 'false', 'NO', 'False', '\tno']) assert.equal(parseBgrsValue([value]), false, value);
    });
    it('is null (a 400) for anything else, or for values that disagree', () => {
      for (const values of [['maybe'], [''], ['2'], ['on'], ['yes', 'no'], ['1', '0'], ['yes', 'maybe']]) {
        assert.equal(parseBgrsValue(values), null, JSON.stringify(values));
      }
    });
    it('accepts repeated values that agree', () => {
      assert.equal(parseBgrsValue(['yes', '1', 'TRUE']), true);
      assert.equal(parseBgrsValue(['no', 'false']), false);
    });
  });

  describe('stripParam', () => {
    it('removes every bgrs parameter and keeps the others exactly as written', () => {
      assert.equal(stripParam('/x?bgrs=yes'), '/x');
      assert.equal(stripParam('/x?bgrs'), '/x');
      assert.equal(stripParam('/x?a=1&bgrs=yes&b=2'), '/x?a=1&b=2');
      assert.equal(stripParam('/x?bgrs=1&a=%20x+y&bgrs=true&c=%2F'), '/x?a=%20x+y&c=%2F');
    });
    it('keeps an encoded name, which is not the parameter, whatever else the URL holds', () => {
      assert.equal(stripParam('/x?%62grs=1&a=bgrs'), '/x?%62grs=1&a=bgrs');
      assert.equal(stripParam('/x?%62grs=1&a=1'), '/x?%62grs=1&a=1');
      assert.equal(stripParam('/x?%62grs=1&bgrs=yes'), '/x?%62grs=1');
    });
    it('leaves a URL without the parameter alone, even when "bgrs" appears in it', () => {
      for (const url of ['/x', '/x?a=1', '/x?a=bgrs', '/bgrs/1', '/x?xbgrs=1&y=2']) assert.equal(stripParam(url), url);
    });
  });

  describe('parsePrefer', () => {
    it('finds respond-async and wait=N in one or several headers, any case, any order', () => {
      assert.deepEqual(parsePrefer(undefined), { respondAsync: false, wait: undefined });
      assert.deepEqual(parsePrefer('respond-async'), { respondAsync: true, wait: undefined });
      assert.deepEqual(parsePrefer('respond-async, wait=10'), { respondAsync: true, wait: 10 });
      assert.deepEqual(parsePrefer('wait=5,RESPOND-ASYNC'), { respondAsync: true, wait: 5 });
      assert.deepEqual(parsePrefer(['return=minimal', 'respond-async;foo=bar', 'wait=1.5']), { respondAsync: true, wait: 1.5 });
      assert.deepEqual(parsePrefer(' wait = 3 '), { respondAsync: false, wait: 3 });
      assert.deepEqual(parsePrefer('wait="7"'), { respondAsync: false, wait: 7 }, 'a quoted value');
      assert.deepEqual(parsePrefer('wait=0'), { respondAsync: false, wait: 0 });
    });
    it('ignores a wait that is not a number of seconds ≥ 0, and other preferences', () => {
      for (const header of ['wait=-1', 'wait=soon', 'wait', 'wait=', 'wait=Infinity', 'return=representation', 'respond-asynchronously']) {
        const parsed = parsePrefer(header);
        assert.equal(parsed.respondAsync, false, header);
        assert.equal(parsed.wait, header === 'wait=' ? 0 : undefined, header);
      }
    });
  });

  describe('stripRespondAsync', () => {
    it('removes respond-async and keeps the other preferences', () => {
      assert.equal(stripRespondAsync('respond-async'), undefined);
      assert.equal(stripRespondAsync('Respond-Async;x=1'), undefined);
      assert.equal(stripRespondAsync('respond-async, wait=5'), 'wait=5');
      assert.equal(stripRespondAsync('return=minimal,  respond-async , handling=lenient'), 'return=minimal, handling=lenient');
      assert.equal(stripRespondAsync('handling=lenient'), 'handling=lenient');
    });
  });

  describe('defaultDecision', () => {
    it('detaches on ?bgrs=yes|1|true and on Prefer: respond-async (with its wait)', () => {
      assert.deepEqual(defaultDecision(message('/x?bgrs=yes')), { detach: true, byPrefer: false, invalid: false });
      assert.deepEqual(defaultDecision(message('/x?a=1&bgrs=TRUE')), { detach: true, byPrefer: false, invalid: false });
      assert.deepEqual(defaultDecision(message('/x', { prefer: 'respond-async' })), { detach: true, byPrefer: true, invalid: false, wait: undefined });
      assert.deepEqual(defaultDecision(message('/x', { prefer: 'respond-async, wait=4' })), { detach: true, byPrefer: true, invalid: false, wait: 4 });
    });
    it('does not detach without either, on bgrs=no, or on another Prefer', () => {
      for (const [url, headers] of [
        ['/x', {}],
        ['/x?bgrs=no', {}],
        ['/x?bgrs=0', {}],
        ['/x', { prefer: 'wait=5' }],
        ['/x', { prefer: 'return=minimal' }],
      ] as const) {
        assert.deepEqual(defaultDecision(message(url, headers)), { detach: false, byPrefer: false, invalid: false }, url);
      }
    });
    it('lets the query parameter win over Prefer', () => {
      assert.deepEqual(defaultDecision(message('/x?bgrs=no', { prefer: 'respond-async' })), { detach: false, byPrefer: false, invalid: false });
      assert.deepEqual(defaultDecision(message('/x?bgrs=yes', { prefer: 'respond-async, wait=3' })), { detach: true, byPrefer: false, invalid: false });
    });
    it('marks an unknown or contradictory value invalid (a 400), even with Prefer', () => {
      for (const url of ['/x?bgrs=maybe', '/x?bgrs', '/x?bgrs=yes&bgrs=no']) {
        assert.deepEqual(defaultDecision(message(url, { prefer: 'respond-async' })), { detach: false, byPrefer: false, invalid: true }, url);
      }
    });
  });
});

// ---- a custom trigger over HTTP ----

type Seen = { query: Record<string, unknown>; url: string; originalUrl: string; detached: boolean; id: string | null };

const echo: RequestHandler = (req, res) => {
  res.json({ query: req.query, url: req.url, originalUrl: req.originalUrl, detached: req.bgrs.detached, id: req.bgrs.id } satisfies Seen);
};

const errors: ErrorRequestHandler = (err: Error, _req, res, _next) => {
  res.status(500).json({ handledBy: 'app', error: err.message });
};

/** The custom trigger of these tests: a header; a header value `boom` makes it throw. */
const trigger = (req: Request): boolean => {
  if (req.get('x-background') === 'boom') throw new Error('trigger failed');
  return req.get('x-background') === '1';
};

forEachExpress((express) => {
  const layouts = [
    { name: 'app.use(bgrs({ trigger }))', path: '/echo' },
    { name: 'app.use(bgrs({ trigger })) and a detachable() route', path: '/both' },
    { name: 'detachable() only, with background.router', path: '/route' },
  ] as const;

  for (const layout of layouts) {
    describe(layout.name, () => {
      let server: Running;
      before(async () => {
        const app = express();
        const background = bgrs({ trigger });
        if (layout.path === '/route') {
          app.use(background.router);
          app.get('/route', background.detachable(echo));
        } else {
          app.use(background);
          app.get('/echo', echo);
          app.get('/both', background.detachable(echo));
        }
        app.get('/alive', (_req, res) => res.send('alive'));
        app.use(errors);
        server = await listen(app);
      });
      after(() => server.close());

      const background1 = { headers: { 'x-background': '1' } };
      const inLine = async (res: Response): Promise<Seen> => {
        assert.equal(res.status, 200, await res.clone().text());
        assert.equal(res.headers.get('location'), null);
        const seen = (await res.json()) as Seen;
        assert.equal(seen.detached, false);
        assert.equal(seen.id, null);
        return seen;
      };
      const viaJob = async (res: Response): Promise<{ doc: JobDoc; seen: Seen }> => {
        assert.equal(res.status, 202, await res.clone().text());
        const location = res.headers.get('location')!;
        assert.match(location, /^\/bgrs\/[0-9a-f-]{36}$/);
        const job = await waitForJob(server.url, location);
        assert.equal(job.status, 'completed');
        const result = await fetch(`${server.url}${location}/result`);
        assert.equal(result.status, 200);
        const seen = (await result.json()) as Seen;
        assert.equal(seen.detached, true);
        assert.equal(seen.id, job.id);
        return { doc: job, seen };
      };

      it('detaches when the trigger says so: 202, then the job runs the route', async () => {
        const { doc, seen } = await viaJob(await fetch(`${server.url}${layout.path}?a=1`, background1));
        assert.deepEqual(seen.query, { a: '1' });
        assert.equal(seen.url, `${layout.path}?a=1`);
        assert.equal(doc.url, `${layout.path}?a=1`);
      });

      it('answers ?bgrs=yes without the header in line; the handler sees bgrs in req.query', async () => {
        const seen = await inLine(await fetch(`${server.url}${layout.path}?bgrs=yes&a=1`));
        assert.deepEqual(seen.query, { bgrs: 'yes', a: '1' });
        assert.equal(seen.url, `${layout.path}?bgrs=yes&a=1`);
        assert.equal(seen.originalUrl, `${layout.path}?bgrs=yes&a=1`);
      });

      it('passes any bgrs value to the handler, never a 400', async () => {
        for (const value of ['maybe', '', 'no', 'yes&bgrs=no']) {
          const seen = await inLine(await fetch(`${server.url}${layout.path}?bgrs=${value}`));
          assert.ok('bgrs' in seen.query, value);
        }
        assert.deepEqual((await inLine(await fetch(`${server.url}${layout.path}?bgrs=maybe`))).query, { bgrs: 'maybe' });
      });

      it('ignores Prefer: respond-async: the custom trigger is the one rule', async () => {
        const res = await fetch(`${server.url}${layout.path}?a=2`, { headers: { prefer: 'respond-async, wait=1' } });
        assert.equal(res.headers.get('preference-applied'), null);
        assert.deepEqual((await inLine(res)).query, { a: '2' });
      });

      it('keeps ?bgrs= as an ordinary parameter in a detached job too', async () => {
        const { doc, seen } = await viaJob(await fetch(`${server.url}${layout.path}?bgrs=no&a=3`, background1));
        assert.deepEqual(seen.query, { bgrs: 'no', a: '3' }, 'bgrs=no does not stop a detach the trigger asked for');
        assert.equal(seen.url, `${layout.path}?bgrs=no&a=3`);
        assert.equal(doc.url, `${layout.path}?bgrs=no&a=3`);
      });

      it('never detaches HEAD, even when the trigger says so', async () => {
        const res = await fetch(`${server.url}${layout.path}`, { method: 'HEAD', ...background1 });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('location'), null);
      });

      it('a trigger that throws reaches the app error handler; the process lives on', async () => {
        const res = await fetch(`${server.url}${layout.path}`, { headers: { 'x-background': 'boom' } });
        assert.equal(res.status, 500);
        assert.deepEqual(await res.json(), { handledBy: 'app', error: 'trigger failed' });
        assert.equal(await (await fetch(`${server.url}/alive`)).text(), 'alive');
      });

      it('still serves the job routes', async () => {
        const res = await fetch(`${server.url}/bgrs/00000000-0000-4000-8000-000000000000`);
        assert.equal(res.status, 404);
        assert.equal(problemCode(await res.json()), 'not-found');
      });
    });
  }

  describe('the default trigger, for contrast', () => {
    let server: Running;
    before(async () => {
      const app = express();
      const background = bgrs();
      app.use(background);
      app.get('/echo', echo);
      server = await listen(app);
    });
    after(() => server.close());

    it('hides bgrs from the handler and refuses an unknown value with 400', async () => {
      const ack = await fetch(`${server.url}/echo?bgrs=yes&a=1`);
      assert.equal(ack.status, 202);
      const location = ack.headers.get('location')!;
      await waitForJob(server.url, location);
      const seen = (await (await fetch(`${server.url}${location}/result`)).json()) as Seen;
      assert.deepEqual(seen.query, { a: '1' });
      assert.equal(seen.url, '/echo?a=1');
      const inline = (await (await fetch(`${server.url}/echo?bgrs=no&a=1`)).json()) as Seen;
      assert.deepEqual(inline.query, { a: '1' }, 'bgrs=no is stripped too');
      const bad = await fetch(`${server.url}/echo?bgrs=maybe`);
      assert.equal(bad.status, 400);
      assert.equal(problemCode(await bad.json()), 'invalid-bgrs-value');
    });

    // Promise: the trigger is the name as written; the rest of the URL never changes the decision.
    it('treats a percent-encoded bgrs name as an ordinary parameter, whatever else the URL holds', async () => {
      const plain = await fetch(`${server.url}/echo?%62grs=yes`);
      const spelled = await fetch(`${server.url}/echo?%62grs=yes&q=bgrs`);
      assert.equal(plain.status, 200);
      assert.equal(spelled.status, 200);
      assert.equal(((await plain.json()) as Seen).query.bgrs, 'yes', 'an ordinary parameter reaches the handler');
      await spelled.arrayBuffer();
    });
  });

  describe('a custom trigger and the Idempotency-Key guard', () => {
    let server: Running;
    let runs = 0;
    before(async () => {
      const app = express();
      const background = bgrs({ trigger });
      app.use(background);
      app.use(express.json());
      app.post('/orders', background.idempotency(), (req, res) => {
        runs++;
        res.status(201).json({ runs, query: req.query });
      });
      server = await listen(app);
    });
    after(() => server.close());

    const post = (path: string, key: string, headers: Record<string, string> = {}): Promise<Response> =>
      fetch(server.url + path, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': key, ...headers }, body: '{"v":1}' });

    it('a retry detached by the trigger gets the stored answer of the sync first try', async () => {
      const first = await post('/orders?a=1', 'trigger-1');
      assert.equal(first.status, 201);
      const retry = await post('/orders?a=1', 'trigger-1', { 'x-background': '1' });
      assert.equal(retry.status, 200, await retry.clone().text());
      assert.equal(retry.headers.get('idempotent-replayed'), 'true');
      const doc = (await retry.json()) as JobDoc;
      const result = await fetch(server.url + doc.links.result);
      assert.deepEqual(await result.json(), { runs: 1, query: { a: '1' } });
    });

    it('counts ?bgrs= as part of the request, like any other query parameter', async () => {
      const first = await post('/orders?bgrs=a', 'trigger-2');
      assert.equal(first.status, 201);
      const other = await post('/orders?bgrs=b', 'trigger-2');
      assert.equal(other.status, 422, 'another query is another request');
      assert.equal(problemCode(await other.json()), 'idempotency-key-reused');
    });
  });
});
