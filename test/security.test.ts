// The Security model, tried as an attacker would: listing, ownership, idempotency scope, private results, connection state, floods, huge numbers.
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, describe, it } from 'node:test';
import type { Response as ExpressResponse, NextFunction, Request } from 'express';
import { bgrs, type Options, type Store } from '../src/index.js';
import { detached, type ExpressModule, forEachExpress, type JobDoc, listen, type Running, waitForJob } from './helpers.js';
import { type StoreKind, storeKinds } from './stores.js';

type App = ReturnType<ExpressModule>;
type Authed = Request & { user?: { id: string } };
type Page = { items: JobDoc[]; next: string | null };
type Problem = { type: string; status: number; detail?: string };
type LogLine = { seq: number; level: string; message: string };

const PROBLEM = 'urn:express-bgrs:problem:';
const as = (user: string): { headers: Record<string, string> } => ({ headers: { 'x-user': user } });
const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

/** A promise the test resolves itself: handlers wait on it so jobs stay queued or running. */
function gate(): { wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

async function expectProblem(res: Response, status: number, code: string): Promise<Problem> {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status}: ${text}`);
  assert.equal(res.headers.get('content-type'), 'application/problem+json; charset=utf-8');
  const doc = JSON.parse(text) as Problem;
  assert.equal(doc.type, PROBLEM + code);
  return doc;
}

for (const kind of await storeKinds())
  describe(kind.name, () =>
    forEachExpress((express) => {
      const cleanups: Array<() => Promise<void>> = [];
      after(async () => {
        for (const cleanup of cleanups.reverse()) await cleanup();
      });

      /** A fresh store, a bgrs instance with `options` and an app built by `routes`, served on an ephemeral port; torn down in `after`. */
      async function start(
        options: Partial<Options>,
        routes: (app: App, background: ReturnType<typeof bgrs>) => void,
        before?: (app: App) => void,
      ): Promise<Running & { background: ReturnType<typeof bgrs> }> {
        const store: Store = await (kind as StoreKind).create();
        const background = bgrs({ store, ...options });
        const app = express();
        before?.(app);
        app.use(background);
        routes(app, background);
        const server = await listen(app);
        cleanups.push(async () => {
          await server.close();
          await background.close();
          await kind.destroy(store);
        });
        return { ...server, background };
      }

      /** Detaches `path`, checks the 202 and returns the job's Location. */
      async function detach(base: string, path: string, init: RequestInit = {}): Promise<string> {
        const ack = await fetch(base + detached(path), init);
        assert.equal(ack.status, 202, `detach ${path}: ${ack.status} ${await ack.clone().text()}`);
        await ack.body?.cancel();
        return ack.headers.get('location')!;
      }

      async function list(base: string, init: RequestInit = {}, query = ''): Promise<Page> {
        const res = await fetch(`${base}/bgrs${query}`, init);
        assert.equal(res.status, 200);
        return (await res.json()) as Page;
      }

      describe('anonymous jobs are capability URLs', () => {
        // Promise: without `owner`, GET /bgrs never lists a job id, whoever asks and however; the job stays readable by its id.
        it('GET /bgrs answers an empty page to every client; the id alone reads the job and its result', async () => {
          const server = await start({}, (app) => app.get('/report', (_req, res) => res.json({ secret: 'quarterly numbers' })));
          const location = await detach(server.url, '/report');
          await waitForJob(server.url, location);
          const attempts: Array<[RequestInit, string]> = [
            [{}, ''],
            [{ headers: bearer('attacker') }, ''],
            [as('admin'), '?limit=100'],
            [{ headers: { cookie: 'sid=stolen', 'x-user': '' } }, '?status=completed,running,queued,failed,cancelled'],
          ];
          for (const [init, query] of attempts) assert.deepEqual(await list(server.url, init, query), { items: [], next: null });
          const stranger = { headers: { ...bearer('someone-else'), 'x-forwarded-for': '10.9.9.9' } };
          assert.equal((await fetch(server.url + location, stranger)).status, 200);
          const result = await fetch(`${server.url}${location}/result`, stranger);
          assert.equal(result.status, 200);
          assert.deepEqual(await result.json(), { secret: 'quarterly numbers' });
        });

        // Promise: `authorize(req, null, 'list-all')` returning true lets an admin list every job, anonymous ones included; others still get nothing.
        it("an admin allowed 'list-all' lists anonymous jobs; a non-admin still gets an empty page", async () => {
          const server = await start(
            { authorize: (req, job, action) => (action === 'list-all' ? req.headers['x-admin'] === 'yes' : job !== null && job.owner === null) },
            (app) => app.get('/report', (_req, res) => res.json({ ok: true })),
          );
          const location = await detach(server.url, '/report');
          const { id } = await waitForJob(server.url, location);
          assert.deepEqual(await list(server.url, { headers: { 'x-admin': 'no' } }), { items: [], next: null });
          const page = await list(server.url, { headers: { 'x-admin': 'yes' } });
          assert.ok(
            page.items.some((job) => job.id === id),
            'the admin sees the anonymous job',
          );
        });
      });

      describe('owner from route-level auth', () => {
        const authenticate = (req: Authed, _res: ExpressResponse, next: NextFunction): void => {
          const id = req.get('x-user');
          if (id) req.user = { id };
          next();
        };
        const requireAuth = (req: Authed, res: ExpressResponse, next: NextFunction): void => {
          authenticate(req, res, () => undefined);
          if (!req.user) {
            res.status(401).json({ error: 'login first' });
            return;
          }
          next();
        };

        // Promise: a job detached before `requireAuth` ran belongs to the user requireAuth established on the replay; nobody else can reach it.
        it('the job is A’s: A lists and reads it, B and an anonymous caller get the not-found 404 everywhere', async () => {
          const server = await start(
            { owner: (req: Authed) => req.user?.id ?? null },
            (app) => app.get('/me/statement', requireAuth, (req: Authed, res) => res.json({ statementOf: req.user!.id })),
            (app) => app.use('/bgrs', authenticate),
          );
          const location = await detach(server.url, '/me/statement', as('a'));
          const job = await waitForJob(server.url, location, 10_000, as('a'));
          assert.equal(job.status, 'completed');
          assert.ok(
            (await list(server.url, as('a'))).items.some((item) => item.id === job.id),
            'A lists it',
          );
          const mine = await fetch(`${server.url}${location}/result`, as('a'));
          assert.equal(mine.status, 200);
          assert.deepEqual(await mine.json(), { statementOf: 'a' });

          const unknown = await (await fetch(`${server.url}/bgrs/00000000-0000-4000-8000-000000000000`)).text();
          for (const init of [as('b'), {}, { headers: bearer('a') }]) {
            for (const sub of ['', '/result', '/details', '/events']) {
              const res = await fetch(server.url + location + sub, init);
              assert.equal(res.status, 404, `${sub || '/'} as ${JSON.stringify(init)}`);
              assert.equal(await res.text(), unknown, 'the same bytes as an unknown id');
            }
            for (const [method, sub] of [
              ['POST', '/cancel'],
              ['DELETE', ''],
            ] as const) {
              assert.equal((await fetch(server.url + location + sub, { ...init, method })).status, 404);
            }
          }
          assert.ok(!(await list(server.url, as('b'))).items.some((item) => item.id === job.id), 'B does not list it');
          assert.deepEqual(await list(server.url), { items: [], next: null });
          assert.equal((await fetch(server.url + location, as('a'))).status, 200, 'still there for A');
        });
      });

      describe('owner returning undefined', () => {
        // Promise: `owner` returning undefined (no header) is anonymous, never "everyone": GET /bgrs lists nobody's jobs.
        it('a caller without the header lists nothing of other owners’ jobs, nor reads them', async () => {
          const server = await start({ owner: (req) => req.get('x-user') }, (app) => app.get('/doc', (_req, res) => res.json({ private: true })));
          const location = await detach(server.url, '/doc', as('a'));
          const { id } = await waitForJob(server.url, location, 10_000, as('a'));
          await waitForJob(server.url, await detach(server.url, '/doc', as('b')), 10_000, as('b'));
          assert.deepEqual(await list(server.url), { items: [], next: null });
          assert.deepEqual(await list(server.url, as('')), { items: [], next: null });
          assert.deepEqual(await list(server.url, {}, '?status=completed&limit=100'), { items: [], next: null });
          assert.ok(!(await list(server.url, as('b'))).items.some((job) => job.id === id), 'B does not see A’s job');
          assert.deepEqual(
            (await list(server.url, as('a'))).items.map((job) => job.id),
            [id],
          );
          assert.equal((await fetch(server.url + location)).status, 404);
        });
      });

      describe('Idempotency-Key without owner', () => {
        // Promise: records are scoped by a digest of Authorization/Cookie: one caller never gets another's stored answer, nor a 422 for its key.
        it('B reusing A’s key runs its own execution; a different body from B is not a 422', async () => {
          let runs = 0;
          const server = await start(
            {},
            (app, background) =>
              app.post('/exports', background.idempotency(), (req, res) => {
                runs += 1;
                res.status(201).json({ run: runs, caller: req.get('authorization') ?? null, body: req.body });
              }),
            (app) => app.use(express.json()),
          );
          const post = (key: string, headers: Record<string, string>, body: unknown): Promise<Response> =>
            fetch(`${server.url}/exports`, {
              method: 'POST',
              headers: { 'content-type': 'application/json', 'idempotency-key': key, ...headers },
              body: JSON.stringify(body),
            });

          const a = await post('export-1', bearer('a'), { format: 'csv' });
          assert.equal(a.status, 201);
          assert.equal(((await a.json()) as { run: number }).run, 1);
          const retry = await post('export-1', bearer('a'), { format: 'csv' });
          assert.equal(retry.headers.get('idempotent-replayed'), 'true', 'the guard is on: A’s retry is replayed');
          assert.equal(((await retry.json()) as { run: number }).run, 1);

          const b = await post('export-1', bearer('b'), { format: 'csv' });
          assert.equal(b.status, 201);
          assert.equal(b.headers.get('idempotent-replayed'), null);
          assert.deepEqual(await b.json(), { run: 2, caller: 'Bearer b', body: { format: 'csv' } });

          assert.equal((await post('export-2', bearer('a'), { format: 'csv' })).status, 201);
          const other = await post('export-2', bearer('b'), { format: 'xlsx', everything: true });
          assert.notEqual(other.status, 422, 'no hint about A’s key');
          assert.equal(other.status, 201);
          assert.equal(other.headers.get('idempotent-replayed'), null);
          assert.deepEqual(await other.json(), { run: 4, caller: 'Bearer b', body: { format: 'xlsx', everything: true } });

          const cookie = await post('export-1', { cookie: 'sid=a' }, { format: 'csv' });
          assert.equal(cookie.headers.get('idempotent-replayed'), null, 'a cookie-only caller is its own scope too');
          assert.equal(((await cookie.json()) as { run: number }).run, 5);
        });
      });

      describe('results are private', () => {
        const routes = (app: App, background: ReturnType<typeof bgrs>): void => {
          app.get('/cached', (_req, res) => {
            res.set('Cache-Control', 'public, max-age=3600, s-maxage=3600, proxy-revalidate').set('Vary', 'Accept').json({ cached: true });
          });
          app.get('/plain', (_req, res) => res.json({ plain: true }));
          app.post('/cached', background.idempotency(), (_req, res) => {
            res.set('Cache-Control', 'public, s-maxage=600').status(201).json({ created: true });
          });
        };
        const assertPrivate = (value: string | null): void => {
          assert.ok(value, 'a Cache-Control');
          assert.doesNotMatch(value, /public|s-maxage|proxy-revalidate/i);
          assert.match(value, /(^|, )private(,|$)/);
        };

        // Promise: /result never carries a shared-cacheable Cache-Control; an owned job's result varies on Authorization and Cookie.
        it('public/s-maxage become private on /result; an owned job adds Vary: Authorization, Cookie', async () => {
          const server = await start({ owner: (req) => req.get('x-user') ?? null }, routes);
          const anonymous = await detach(server.url, '/cached');
          await waitForJob(server.url, anonymous);
          const anonResult = await fetch(`${server.url}${anonymous}/result`);
          assert.equal(anonResult.status, 200);
          assertPrivate(anonResult.headers.get('cache-control'));
          assert.match(anonResult.headers.get('cache-control')!, /max-age=3600/);

          const owned = await detach(server.url, '/cached', as('a'));
          await waitForJob(server.url, owned, 10_000, as('a'));
          const ownedResult = await fetch(`${server.url}${owned}/result`, as('a'));
          assert.equal(ownedResult.status, 200);
          assertPrivate(ownedResult.headers.get('cache-control'));
          const vary = (ownedResult.headers.get('vary') ?? '').split(',').map((name) => name.trim().toLowerCase());
          for (const name of ['accept', 'authorization', 'cookie']) assert.ok(vary.includes(name), `Vary has ${name}: ${vary.join(', ')}`);

          const plain = await detach(server.url, '/plain');
          await waitForJob(server.url, plain);
          assert.equal((await fetch(`${server.url}${plain}/result`)).headers.get('cache-control'), 'no-store', 'none set: no-store');
        });

        // Promise: an idempotent replay is made private the same way.
        it('an Idempotency-Key replay never says public or s-maxage', async () => {
          const server = await start({ owner: (req) => req.get('x-user') ?? null }, routes);
          const init = { method: 'POST', headers: { 'x-user': 'a', 'idempotency-key': 'cache-1' } };
          assert.equal((await fetch(`${server.url}/cached`, init)).status, 201);
          const replay = await fetch(`${server.url}/cached`, init);
          assert.equal(replay.headers.get('idempotent-replayed'), 'true');
          assertPrivate(replay.headers.get('cache-control'));
        });
      });

      describe('nothing crosses jobs', () => {
        // Promise: what middleware caches on req.socket in one job is never seen by another (each run has a fresh connection).
        it('an identity cached on req.socket by A’s job is not seen by the next anonymous job (3 rounds)', async () => {
          const server = await start(
            {},
            (app) => app.get('/whoami', (req, res) => res.json({ user: (req.socket as Socket & { user?: string }).user ?? null })),
            (app) =>
              app.use((req, _res, next) => {
                const socket = req.socket as Socket & { user?: string };
                if (!socket.user) socket.user = req.get('x-user');
                next();
              }),
          );
          const seen = async (init: RequestInit): Promise<unknown> => {
            const location = await detach(server.url, '/whoami', init);
            await waitForJob(server.url, location);
            return ((await (await fetch(`${server.url}${location}/result`)).json()) as { user: unknown }).user;
          };
          for (let round = 1; round <= 3; round++) {
            assert.equal(await seen(as('a')), 'a', `round ${round}: A's job`);
            assert.equal(await seen({}), null, `round ${round}: the anonymous job sees no user`);
          }
        });
      });

      describe('floods', () => {
        // Promise: one owner cannot hold more than maxPerOwner jobs (429 queue-full with Retry-After); another owner still gets its 202.
        it('beyond maxPerOwner: 429 with Retry-After for the flooder, 202 for someone else', async () => {
          const hold = gate();
          const server = await start({ owner: (req) => req.get('x-user') ?? null, concurrency: 1, maxQueued: 10, maxPerOwner: 3, retryAfter: 7 }, (app) =>
            app.get('/work', async (_req, res) => {
              await hold.wait;
              res.json({ done: true });
            }),
          );
          try {
            const accepted: string[] = [];
            for (let i = 0; i < 3; i++) accepted.push(await detach(server.url, `/work?i=${i}`, as('flooder')));
            for (let i = 0; i < 5; i++) {
              const res = await fetch(`${server.url}/work?bgrs=yes&i=more${i}`, as('flooder'));
              await expectProblem(res, 429, 'queue-full');
              assert.equal(res.headers.get('retry-after'), '7');
            }
            const other = await fetch(`${server.url}/work?bgrs=yes`, as('victim'));
            assert.equal(other.status, 202, 'another owner is still served');
            accepted.push(other.headers.get('location')!);
            hold.open();
            for (const location of accepted) {
              const user = location === accepted.at(-1) ? 'victim' : 'flooder';
              assert.equal((await waitForJob(server.url, location, 10_000, as(user))).status, 'completed');
            }
            assert.equal((await fetch(`${server.url}/work?bgrs=yes&after=drain`, as('flooder'))).status, 202, 'slots come back once jobs end');
          } finally {
            hold.open();
          }
        });

        // Promise: one owner cannot open more than maxEventStreams /events streams (429 too-many-streams); another owner still gets one.
        it('beyond maxEventStreams: 429 too-many-streams for the flooder, a stream for someone else', async () => {
          const hold = gate();
          const server = await start({ owner: (req) => req.get('x-user') ?? null, maxEventStreams: 2 }, (app) =>
            app.get('/work', async (_req, res) => {
              await hold.wait;
              res.json({ done: true });
            }),
          );
          const open: Response[] = [];
          try {
            const mine = await detach(server.url, '/work', as('flooder'));
            const theirs = await detach(server.url, '/work', as('victim'));
            for (let i = 0; i < 2; i++) {
              const res = await fetch(`${server.url}${mine}/events`, as('flooder'));
              assert.equal(res.status, 200);
              open.push(res);
            }
            const refused = await fetch(`${server.url}${mine}/events`, as('flooder'));
            await expectProblem(refused, 429, 'too-many-streams');
            assert.ok(refused.headers.get('retry-after'), 'Retry-After');
            const other = await fetch(`${server.url}${theirs}/events`, as('victim'));
            assert.equal(other.status, 200);
            assert.equal(other.headers.get('content-type'), 'text/event-stream; charset=utf-8');
            open.push(other);
          } finally {
            for (const res of open) await res.body?.cancel().catch(() => undefined);
            hold.open();
          }
        });

        // Promise: maxLogLines caps a job's log (the last kept line says so) and maxMessageLength cuts long messages, ending in '…'.
        it('a handler logging past maxLogLines keeps maxLogLines lines; a long progress message is cut', async () => {
          const server = await start({ maxLogLines: 5, maxMessageLength: 40 }, (app) =>
            app.get('/chatty', (req, res) => {
              req.bgrs.log('L'.repeat(10_000));
              for (let i = 1; i <= 200; i++) req.bgrs.log(`line ${i}`);
              req.bgrs.progress(50, 'P'.repeat(100_000));
              res.json({ ok: true });
            }),
          );
          const location = await detach(server.url, '/chatty');
          const job = await waitForJob(server.url, location);
          assert.equal(job.status, 'completed');
          assert.equal(job.message!.length, 40);
          assert.ok(job.message!.endsWith('…'));
          const details = await fetch(`${server.url}${location}/details?limit=1000`);
          const { items } = (await details.json()) as { items: LogLine[] };
          assert.equal(items.length, 5, `kept ${items.length} lines`);
          assert.equal(items[0]!.message, `${'L'.repeat(39)}…`);
          assert.equal(items.at(-1)!.level, 'warning');
          assert.match(items.at(-1)!.message, /log truncated/);
          assert.ok(items.every((line) => line.message.length <= 40 || /log truncated/.test(line.message)));
        });
      });

      describe('large numbers', () => {
        // Promise: integers beyond 2^31-1 (or not integers) in after, limit and Last-Event-ID are a 400 invalid-parameter, never a store error or a dropped stream.
        it('after, limit and Last-Event-ID out of range answer 400 problem+json invalid-parameter', async () => {
          const hold = gate();
          const server = await start({}, (app) =>
            app.get('/job', async (req, res) => {
              req.bgrs.log('one line');
              await hold.wait;
              res.json({ ok: true });
            }),
          );
          try {
            const location = await detach(server.url, '/job');
            for (const query of [
              'after=999999999999999',
              'after=2147483648',
              'after=1e300',
              'after=-1',
              'after=1.5',
              'limit=1e300',
              'limit=99999999999999999999',
              'limit=0',
              'limit=1001',
            ]) {
              await expectProblem(await fetch(`${server.url}${location}/details?${query}`), 400, 'invalid-parameter');
            }
            const edge = await fetch(`${server.url}${location}/details?after=2147483647&limit=1000`);
            assert.equal(edge.status, 200, 'the largest allowed value still works');
            assert.deepEqual(((await edge.json()) as { items: unknown[] }).items, []);
            for (const query of ['limit=1e300', 'limit=999999999999999', 'limit=101']) {
              await expectProblem(await fetch(`${server.url}/bgrs?${query}`), 400, 'invalid-parameter');
            }
            for (const lastEventId of ['1e300', '999999999999999', '2147483648', '-1']) {
              const res = await fetch(`${server.url}${location}/events`, { headers: { 'last-event-id': lastEventId } });
              await expectProblem(res, 400, 'invalid-parameter');
            }
            await expectProblem(await fetch(`${server.url}${location}?wait=1e300`), 400, 'invalid-parameter');
          } finally {
            hold.open();
          }
        });
      });
    }),
  );
