// Events by notification: two bgrs instances (two "processes") on one Redis / PostgreSQL namespace; B hears A's changes at once, not by polling.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Store } from '../src/index.js';
import { bgrs } from '../src/index.js';
import { PostgresStore } from '../src/stores/postgres.js';
import { RedisStore } from '../src/stores/redis.js';
import type { ExpressModule, JobDoc, Running } from './helpers.js';
import { forEachExpress, listen, sleep } from './helpers.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from './services.js';
import { dropPostgresTables, dropRedisPrefix } from './stores.js';

/** How late an event may reach B after A's write landed: far below the 30 s safety poll, and below the 250 ms poll. */
const LAG_MS = 200;

interface Call {
  method: string;
  args: unknown[];
  /** When the call resolved: the write is visible from then on. */
  at: number;
}

/** Wraps every method of a store to record its calls; watchChanges is forwarded only when the store has it. */
function recorded(store: Store): { store: Store; calls: Call[]; count(method: string): number } {
  const calls: Call[] = [];
  const wrapped: Record<string, unknown> = {};
  const target = store as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
  for (let proto: object | null = store; proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto) as object | null) {
    for (const name of Object.getOwnPropertyNames(proto)) {
      if (name === 'constructor' || name in wrapped || typeof target[name] !== 'function') continue;
      wrapped[name] = async (...args: unknown[]) => {
        const result = await target[name]!.apply(store, args);
        calls.push({ method: name, args, at: Date.now() });
        return result;
      };
    }
  }
  return { store: wrapped as unknown as Store, calls, count: (method) => calls.filter((c) => c.method === method).length };
}

interface Backend {
  name: string;
  /** Two stores (A's and B's) on one namespace, each over its own client. */
  pair(): Promise<{ a: Store; b: Store }>;
  /** Cuts B's subscriber connection from the server side; resolves how many connections were cut. */
  killSubscriber(b: Store): Promise<number>;
  destroy(): Promise<void>;
}

async function redisBackend(): Promise<Backend> {
  const prefix = `bgrs-notify-${randomUUID()}:`;
  // Named, so the test cuts only its own subscriber (duplicate() keeps the name), never another test's.
  const names = new Map<Store, string>();
  const clients: Redis[] = [];
  const admin = new Redis(REDIS_URL);
  return {
    name: 'RedisStore',
    async pair() {
      const make = (): Store => {
        const connectionName = `bgrs-notify-${randomUUID()}`;
        const client = new Redis(REDIS_URL, { connectionName });
        clients.push(client);
        const store = new RedisStore({ client, prefix });
        names.set(store, connectionName);
        return store;
      };
      return { a: make(), b: make() };
    },
    async killSubscriber(b) {
      const list = (await admin.call('CLIENT', 'LIST', 'TYPE', 'pubsub')) as string;
      const ids = list
        .split('\n')
        .filter((line) => line.includes(` name=${names.get(b)} `))
        .map((line) => /(?:^|\s)id=(\d+)/.exec(line)![1]!);
      let killed = 0;
      for (const id of ids) killed += Number(await admin.call('CLIENT', 'KILL', 'ID', id));
      return killed;
    },
    async destroy() {
      for (const store of names.keys()) await store.close?.();
      await dropRedisPrefix(admin, prefix);
      await Promise.all([...clients, admin].map((client) => client.quit()));
    },
  };
}

async function postgresBackend(): Promise<Backend> {
  const table = `bgrs_notify_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
  const pools: pg.Pool[] = [];
  const stores: Store[] = [];
  const admin = new pg.Pool({ connectionString: POSTGRES_URL, max: 2 });
  return {
    name: 'PostgresStore',
    async pair() {
      const make = (): Store => {
        const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 10 });
        // A connection the server terminates errors on an idle pooled client: the pool drops it.
        pool.on('error', () => undefined);
        pools.push(pool);
        const store = new PostgresStore({ pool, table });
        stores.push(store);
        return store;
      };
      const pair = { a: make(), b: make() };
      await (pair.a as PostgresStore).migrate();
      return pair;
    },
    async killSubscriber() {
      // Only B's store has watchers, so the one backend LISTENing on this table's channel is B's.
      const { rows } = await admin.query<{ done: boolean }>(
        `SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()`,
        [`LISTEN "${table}_changes"`],
      );
      return rows.filter((row) => row.done).length;
    },
    async destroy() {
      for (const store of stores) await store.close?.();
      await dropPostgresTables(admin, table);
      await Promise.all([...pools, admin].map((pool) => pool.end()));
    },
  };
}

interface Sse {
  event: string;
  data: unknown;
  at: number;
}

/** Reads an SSE stream into `into` as events arrive; resolves when the server closes it. */
async function readEvents(url: string, into: Sse[], timeout = 20_000): Promise<void> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeout) });
  assert.equal(res.status, 200);
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body!) {
    buffer += decoder.decode(chunk as Uint8Array, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (event) into.push({ event, data: data ? JSON.parse(data) : null, at: Date.now() });
    }
  }
}

async function until(what: string, ms: number, check: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** A gate the test opens: the handler on A waits at it between steps. */
function gates(): { wait(name: string): Promise<void>; open(name: string): void } {
  const opened = new Map<string, () => void>();
  const waiting = new Map<string, Promise<void>>();
  const get = (name: string): Promise<void> => {
    let promise = waiting.get(name);
    if (!promise) {
      promise = new Promise<void>((resolve) => opened.set(name, resolve));
      waiting.set(name, promise);
    }
    return promise;
  };
  return {
    wait: get,
    open(name) {
      void get(name);
      opened.get(name)!();
    },
  };
}

function suite(backendOf: () => Promise<Backend>, backendName: string): void {
  forEachExpress((express: ExpressModule) => {
    describe(`${backendName}: B hears A's changes by notification`, () => {
      let backend: Backend;
      let a: { server: Running; close(): Promise<void>; store: ReturnType<typeof recorded> };
      let b: { server: Running; close(): Promise<void>; store: ReturnType<typeof recorded> };
      /** B's store itself (not the recording wrapper around it), whose subscriber the test cuts. */
      let bStore: Store;
      const gate = gates();

      before(async () => {
        backend = await backendOf();
        const pair = await backend.pair();
        const start = async (store: Store) => {
          const rec = recorded(store);
          const background = bgrs({ store: rec.store, validations: false, maxEventStreams: 100 });
          const app = express();
          app.use(background);
          app.get('/steps/:run', async (req, res) => {
            const run = req.params.run!;
            for (let i = 1; i <= 3; i++) {
              await gate.wait(`${run}:${i}`);
              req.bgrs.progress(i * 30, `step ${i}`);
              req.bgrs.log(`line ${i}`);
            }
            await gate.wait(`${run}:end`);
            res.send('done');
          });
          const server = await listen(app);
          return {
            server,
            store: rec,
            close: async () => {
              await background.close();
              await server.close();
            },
          };
        };
        bStore = pair.b;
        a = await start(pair.a);
        b = await start(pair.b);
      });

      after(async () => {
        await a?.close();
        await b?.close();
        await backend?.destroy();
      });

      /** Submits a gated job on A; resolves its id. */
      async function submit(run: string): Promise<string> {
        const ack = await fetch(`${a.server.url}/steps/${run}?bgrs=yes`);
        assert.equal(ack.status, 202);
        return ((await ack.json()) as JobDoc).id;
      }

      /**
       * When A's store call of `method` matching `match` resolved. The write was visible a little
       * earlier: PostgreSQL may deliver the notification (and B answer) before A reads its reply.
       */
      async function landed(method: string, match: (args: unknown[]) => boolean): Promise<number> {
        const find = () => a.store.calls.find((c) => c.method === method && match(c.args));
        await until(`A's ${method}`, 5000, () => find() !== undefined);
        return find()!.at;
      }

      it('streams every progress, log and end event of a job run on A to B within ~200 ms, without polling meanwhile', async () => {
        const run = randomUUID();
        const id = await submit(run);
        const events: Sse[] = [];
        const stream = readEvents(`${b.server.url}/bgrs/${id}/events`, events);
        await until('the first status event', 5000, () => events.some((e) => e.event === 'status'));
        // Subscribed and idle: nothing happens for a while, and B does not read the store meanwhile.
        await sleep(300);
        const readsBefore = b.store.count('getJob') + b.store.count('readLogs');
        await sleep(1000);
        const idleReads = b.store.count('getJob') + b.store.count('readLogs') - readsBefore;
        assert.ok(idleReads <= 1, `B read the store ${idleReads} times in 1 s of an idle job (a 250 ms poll would read 8 times)`);

        for (let i = 1; i <= 3; i++) {
          gate.open(`${run}:${i}`);
          await until(`log line ${i}`, 5000, () => events.some((e) => e.event === 'log' && (e.data as { message: string }).message === `line ${i}`));
          const progress = events.find((e) => e.event === 'progress' && (e.data as { progress: number }).progress === i * 30);
          assert.ok(progress, `progress ${i * 30} was streamed`);
          const log = events.find((e) => e.event === 'log' && (e.data as { message: string }).message === `line ${i}`)!;
          const wroteProgress = await landed('updateProgress', (args) => args[0] === id && (args[1] as { progress?: number }).progress === i * 30);
          const wroteLog = await landed('appendLog', (args) => args[0] === id && (args[1] as { message: string }).message === `line ${i}`);
          assert.ok(progress.at - wroteProgress <= LAG_MS, `progress ${i * 30} reached B ${progress.at - wroteProgress} ms after A wrote it`);
          assert.ok(log.at - wroteLog <= LAG_MS, `line ${i} reached B ${log.at - wroteLog} ms after A wrote it`);
        }
        gate.open(`${run}:end`);
        await stream;
        const end = events.at(-1)!;
        assert.equal(end.event, 'end');
        assert.equal((end.data as JobDoc).status, 'completed');
        const finished = await landed('finishJob', (args) => args[0] === id);
        assert.ok(end.at - finished <= LAG_MS, `end reached B ${end.at - finished} ms after A finished the job`);
      });

      it('answers a wait=N on B as soon as A finishes the job', async () => {
        const run = randomUUID();
        const id = await submit(run);
        for (let i = 1; i <= 3; i++) gate.open(`${run}:${i}`);
        const waited = fetch(`${b.server.url}/bgrs/${id}?wait=20`).then(async (res) => ({ doc: (await res.json()) as JobDoc, at: Date.now() }));
        await sleep(500);
        gate.open(`${run}:end`);
        const { doc, at } = await waited;
        assert.equal(doc.status, 'completed');
        const finished = await landed('finishJob', (args) => args[0] === id);
        assert.ok(at - finished <= LAG_MS, `B answered ${at - finished} ms after A finished the job`);
      });

      it("wakes B's watchers after its subscriber connection is cut, and no stream hangs", async () => {
        const runs = [randomUUID(), randomUUID(), randomUUID()];
        const ids = await Promise.all(runs.map((run) => submit(run)));
        const events = ids.map((): Sse[] => []);
        const streams = ids.map((id, i) => readEvents(`${b.server.url}/bgrs/${id}/events`, events[i]!));
        await until('every first status event', 5000, () => events.every((list) => list.some((e) => e.event === 'status')));
        await sleep(200);
        assert.ok((await backend.killSubscriber(bStore)) >= 1, "B's subscriber connection was found and cut");
        // Written while B's subscription is down (or coming back): heard by the wake after the reconnect.
        for (const run of runs) gate.open(`${run}:1`);
        for (const list of events) {
          await until('step 1 after the reconnect', 5000, () => list.some((e) => e.event === 'log' && (e.data as { message: string }).message === 'line 1'));
        }
        // The subscription is live again: later changes arrive by notification.
        await sleep(500);
        for (const run of runs) {
          gate.open(`${run}:2`);
          gate.open(`${run}:3`);
          gate.open(`${run}:end`);
        }
        await Promise.all(streams);
        for (const [i, list] of events.entries()) {
          assert.equal(list.at(-1)?.event, 'end', 'every stream ended');
          const finished = await landed('finishJob', (args) => args[0] === ids[i]);
          assert.ok(list.at(-1)!.at - finished <= LAG_MS, `end reached B ${list.at(-1)!.at - finished} ms after A finished, after the reconnect`);
        }
      });
    });
  });
}

if (await serviceAvailable('Redis', REDIS_URL)) suite(redisBackend, 'RedisStore');
if (await serviceAvailable('PostgreSQL', POSTGRES_URL)) suite(postgresBackend, 'PostgresStore');
