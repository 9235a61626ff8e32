// Store faults injected with withFaults() (src/testing/faults.ts) under the Idempotency-Key guard: a
// call that commits and then loses its reply, and outage windows, for each store write the guard
// depends on, on Express 4 and 5 and every store of the matrix.
//
// Every scenario builds its own bgrs instance over its own withFaults() wrapper of the store (the
// stores themselves are real: the MemoryStore, Redis on 6379, PostgreSQL on 5432), so scenarios
// run side by side without one's fault reaching another.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Request, Response } from 'express';
import { bgrs, type Store } from '../src/index.js';
import type { FaultOptions, FaultyStore, StoreMethod } from '../src/testing/faults.js';
import { withFaults } from '../src/testing/faults.js';
import { type ExpressModule, forEachExpress, type JobDoc, listen, sleep } from './helpers.js';
import { storeKinds } from './stores.js';

/** How long one store call may take (storeTimeout): short, so nothing in here waits long on a store. */
const STORE_TIMEOUT = 2000;
/** bgrs' lease: how long a final state is retried through an outage (renewed every ~667 ms). */
const LEASE = 2000;
/** The guard's lease on a claimed key. */
const KEY_LEASE = 2000;
/** The outage windows of the matrix. */
const OUTAGE = 300;
/** A client retries this many times, pausing between attempts, until it gets an answer that is not a 5xx or a 409. */
const RETRIES = 5;
const PAUSE = 250;
/** A job must be final within this, whatever the fault: never left `running`. */
const FINAL_WITHIN = 8000;
const CLIENT_TIMEOUT = 10_000;

/** The problems a retried client may see meanwhile, with their statuses; anything else is a failure. */
const PROBLEMS: Record<string, number> = {
  'store-unavailable': 503,
  'idempotency-key-in-use': 409,
  'idempotency-key-result-gone': 410,
};

interface Run {
  /** The job the execution ran as (`req.bgrs.id`). */
  jobId: string;
  /** The exact bytes the handler answered. */
  body: Buffer;
}

interface App {
  base: string;
  faulty: FaultyStore;
  /** Every execution of the handler, per Idempotency-Key. */
  runs: Map<string, Run[]>;
  /** Called by the handlers as they start, before they write anything. */
  onRun: ((key: string) => void) | undefined;
  /** Jobs whose key the guard has completed or released (that call settled, whatever its outcome). */
  recorded: Set<string>;
  close(): Promise<void>;
}

interface Answer {
  status: number;
  headers: Headers;
  body: Buffer;
  ms: number;
}

interface AppOptions {
  lease?: number;
  keyLease?: number;
  /** Holds every completeIdempotencyKey() this long before it reaches the store (a slow round trip). */
  completeDelay?: number;
}

/**
 * Over withFaults(), a thin layer that sees when the guard's last write of an execution (the key's
 * completion or release) has settled, so a test knows when the execution is fully recorded; it
 * can also make the completion slow. The calls still reach the real store.
 */
function observe(inner: Store, recorded: Set<string>, completeDelay: number): Store {
  const observed = Object.create(inner) as Store;
  observed.completeIdempotencyKey = async (key, jobId, expiresAt) => {
    try {
      if (completeDelay > 0) await sleep(completeDelay);
      return await inner.completeIdempotencyKey!(key, jobId, expiresAt);
    } finally {
      recorded.add(jobId);
    }
  };
  observed.releaseIdempotencyKey = async (key, jobId) => {
    try {
      return await inner.releaseIdempotencyKey!(key, jobId);
    } finally {
      recorded.add(jobId);
    }
  };
  return observed;
}

/** One bgrs instance over a fresh withFaults() wrapper of `store`, with the guarded routes. */
async function startApp(express: ExpressModule, store: Store, options: AppOptions = {}): Promise<App> {
  const faulty = withFaults(store);
  const runs = new Map<string, Run[]>();
  const recorded = new Set<string>();
  const background = bgrs({
    store: observe(faulty.store, recorded, options.completeDelay ?? 0),
    storeTimeout: STORE_TIMEOUT,
    lease: options.lease ?? LEASE,
    retryAfter: 1,
    validations: false,
    // The store errors these faults cause are expected; keep them out of the test output.
    logger: { warn: () => undefined, error: () => undefined },
  });
  const guard = background.idempotency({ lease: options.keyLease ?? KEY_LEASE });
  const app = express();
  const harness: App = { base: '', faulty, runs, onRun: undefined, recorded, close: async () => undefined };
  const record = (req: Request, body: Buffer): void => {
    const key = String(req.headers['idempotency-key']);
    runs.get(key)!.find((run) => run.jobId === req.bgrs.id)!.body = body;
  };
  const start = (req: Request): { key: string; n: number } => {
    const key = String(req.headers['idempotency-key']);
    const list = runs.get(key) ?? [];
    runs.set(key, list);
    list.push({ jobId: req.bgrs.id ?? '', body: Buffer.alloc(0) });
    harness.onRun?.(key);
    return { key, n: list.length };
  };
  app.use(express.json());
  app.use(background);
  // The guarded handler: counts its runs per key, logs, and answers 201 with a JSON body that
  // differs from run to run (a second run can never pass for a replay of the first).
  app.post('/orders', guard, async (req: Request, res: Response) => {
    const { key, n } = start(req);
    req.bgrs.log(`run ${n} of ${key}`);
    req.bgrs.progress(50, 'half way');
    await sleep(10);
    req.bgrs.log(`answering ${key}`);
    const body = Buffer.from(JSON.stringify({ key, n, item: (req.body as { item?: unknown }).item ?? null, nonce: randomUUID() }));
    record(req, body);
    res.status(201).type('application/json').send(body);
  });
  // The same, streamed in several chunks with no Content-Length.
  app.post('/stream', guard, async (req: Request, res: Response) => {
    const { key, n } = start(req);
    res.status(201).type('application/json');
    const parts = ['['];
    res.write('[');
    for (let i = 0; i < 8; i++) {
      const part = `${i === 0 ? '' : ','}${JSON.stringify({ i, key, n, pad: randomBytes(4096).toString('hex') })}`;
      parts.push(part);
      res.write(part);
      await sleep(5);
    }
    parts.push(']');
    record(req, Buffer.from(parts.join('')));
    res.end(']');
  });
  const running = await listen(app);
  harness.base = running.url;
  harness.close = async () => {
    await background.close();
    await running.close();
  };
  return harness;
}

async function call(base: string, path: string, init: RequestInit = {}): Promise<Answer> {
  const started = performance.now();
  const res = await fetch(base + path, { ...init, signal: AbortSignal.timeout(CLIENT_TIMEOUT) });
  const body = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, body, ms: Math.round(performance.now() - started) };
}

function post(app: App, path: string, key: string, payload: unknown): Promise<Answer> {
  return call(app.base, path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
    body: JSON.stringify(payload),
  });
}

const show = (answer: Answer): string => `${answer.status} ${answer.body.toString('utf8').slice(0, 200)}`;

/** The problem code of a problem+json answer, checked to be one of PROBLEMS with its status. */
function problemOf(what: string, answer: Answer): string {
  assert.match(answer.headers.get('content-type') ?? '', /^application\/problem\+json/, `${what}: a ${answer.status} must be problem+json: ${show(answer)}`);
  const problem = JSON.parse(answer.body.toString('utf8')) as { type: string; status: number };
  const code = problem.type.replace('urn:express-bgrs:problem:', '');
  assert.equal(PROBLEMS[code], answer.status, `${what}: unexpected problem ${show(answer)}`);
  assert.equal(problem.status, answer.status);
  return code;
}

/** The handler's 201, byte for byte: the live answer, or its replay. */
function assertExact(what: string, answer: Answer, run: Run): void {
  assert.equal(answer.status, 201, `${what}: ${show(answer)}`);
  assert.equal(answer.headers.get('content-type'), 'application/json; charset=utf-8', what);
  assert.ok(answer.body.equals(run.body), `${what}: not byte-exact: got ${show(answer)}, the handler wrote ${run.body.toString('utf8').slice(0, 200)}`);
}

/** Polls GET /bgrs/:id until the job is final; failing after `ms` (a job left running is a failure). */
async function finalJob(base: string, id: string, ms = FINAL_WITHIN): Promise<JobDoc> {
  const deadline = Date.now() + ms;
  let last = '';
  for (;;) {
    const answer = await call(base, `/bgrs/${id}`);
    last = show(answer);
    if (answer.status === 200) {
      const doc = JSON.parse(answer.body.toString('utf8')) as JobDoc;
      if (['completed', 'failed', 'cancelled'].includes(doc.status)) return doc;
    }
    if (Date.now() > deadline) throw new Error(`job ${id} not final within ${ms} ms: ${last}`);
    await sleep(50);
  }
}

/** Waits until the guard has completed or released the key of job `id`: the execution is fully recorded. */
async function recordedEnd(app: App, id: string, ms = FINAL_WITHIN): Promise<void> {
  const deadline = Date.now() + ms;
  while (!app.recorded.has(id)) {
    if (Date.now() > deadline) throw new Error(`the key of job ${id} was neither completed nor released within ${ms} ms`);
    await sleep(20);
  }
}

/** One client: the first attempt and up to RETRIES retries, until an answer that is neither a 5xx nor a 409. */
async function retried(send: () => Promise<Answer>, done: (answer: Answer) => boolean): Promise<Answer[]> {
  const answers: Answer[] = [];
  for (let attempt = 0; attempt <= RETRIES; attempt++) {
    if (attempt > 0) await sleep(PAUSE);
    const answer = await send();
    answers.push(answer);
    if (done(answer)) break;
  }
  return answers;
}

const decisive = (answer: Answer): boolean => answer.status < 500 && answer.status !== 409;

/** One fault of the matrix; what bgrs promises under it is per method (METHODS). */
interface Case {
  label: string;
  fault: FaultOptions;
}

const CASES: readonly Case[] = [
  // The reply of one call is lost after the write landed (a reset connection, a timeout): bgrs
  // must not act as if nothing happened (no second run, no lost answer).
  { label: 'commits, then fails once', fault: { times: 1, commit: true } },
  // An outage during which writes still land but every reply is lost. It opens at the method's
  // first call: a call that comes late (a key's completion, after the handler and the job's end)
  // would otherwise miss a window opened by the request on a slow machine.
  { label: `fails for ${OUTAGE} ms, each call committed`, fault: { forMs: OUTAGE, commit: true, fromFirstCall: true } },
  // An outage during which nothing lands: bgrs retries, or reports what it could not keep.
  { label: `fails for ${OUTAGE} ms, nothing committed`, fault: { forMs: OUTAGE, commit: false, fromFirstCall: true } },
];

/**
 * The methods faulted, each with the promise the guard keeps, whichever of the faults of CASES hits it.
 * Common to all: the handler runs exactly once per key; every 201 a client gets (live or replayed)
 * is byte for byte what the handler wrote; any other answer is a problem+json among PROBLEMS
 * (503 while the store fails, 409 while the execution is being recorded, 410 when its response
 * could not be kept); no job is left `running`.
 */
const METHODS: ReadonlyArray<{ method: StoreMethod; promise: string; gone: boolean; detachedGone?: boolean }> = [
  {
    method: 'createJob',
    // The create is the execution's first write: refused (or its reply lost), the client gets 503
    // before the handler runs, the key is released, and a retry runs it (once).
    promise: 'a refused create answers 503 before the handler runs; a retry runs it once and is replayed after',
    gone: false,
  },
  {
    method: 'finishJob',
    // The final state is retried through the outage (for up to one lease); a lost reply is read
    // back. The live client has the whole answer at once; a retry meanwhile gets 409, then the replay.
    promise: 'the final state is retried or read back; the live answer is whole and later retries replay it',
    gone: false,
  },
  {
    method: 'completeIdempotencyKey',
    // The key may stay `running` with its job completed: a retry completes it from the job and replays.
    promise: 'a key whose completion was lost is completed from its job on the next claim, and replayed',
    gone: false,
  },
  {
    method: 'appendResult',
    // Synchronous: the response could not be kept: the live client still gets all of it (never
    // held up by the store), the job fails `store_unavailable`, and the key is done anyway: a retry
    // gets 410 result-gone, never a second run. Detached (no client waits): every store of the
    // matrix has resumableResults, so the failed write is made again at its offset until it lands,
    // and the job completes with its whole result, stored once.
    promise:
      'sync: the live client gets the whole answer, the job fails store_unavailable, retries get 410; detached: the write is retried and the job completes; never a second run',
    gone: true,
    detachedGone: false,
  },
  {
    method: 'appendLog',
    // Log writes never reach the handler or the response: everything goes on as without a fault.
    promise: 'a failing log write changes nothing: the answer is stored and replayed',
    gone: false,
  },
];

/** A synchronous guarded POST under the fault, retried like a client would. */
async function syncScenario(app: App, method: StoreMethod, c: Case, promise: string, gone: boolean): Promise<void> {
  const what = `sync, ${method} ${c.label} (${promise})`;
  const key = `sync-${method}-${randomUUID()}`;
  const payload = { item: `${method} ${c.label}` };
  app.faulty.fail(method, c.fault);
  const answers = await retried(() => post(app, '/orders', key, payload), decisive);
  const last = answers.at(-1)!;
  assert.ok(decisive(last), `${what}: still ${show(last)} after ${RETRIES} retries`);
  const runs = app.runs.get(key) ?? [];
  assert.equal(runs.length, 1, `${what}: the handler ran ${runs.length} times`);
  const run = runs[0]!;

  // The execution ends final, whatever failed.
  const job = await finalJob(app.base, run.jobId);
  if (gone) {
    assert.equal(job.status, 'failed', `${what}: ${JSON.stringify(job)}`);
    assert.equal(job.error?.type, 'store_unavailable');
  } else {
    assert.equal(job.status, 'completed', `${what}: ${JSON.stringify(job)}`);
  }
  // Retries once the fault is over and the execution fully recorded (its key completed): stable,
  // the stored answer or the 410, and still one run. (A retry that comes while the key is still
  // being completed is the race test below.)
  await recordedEnd(app, run.jobId);
  // The window opened at the method's first call, which came before the execution was recorded.
  await sleep((c.fault.forMs ?? 0) + 50);
  const later = [await post(app, '/orders', key, payload), await post(app, '/orders', key, payload)];
  assert.equal((app.runs.get(key) ?? []).length, 1, `${what}: a retry ran the handler again`);
  assert.ok((app.faulty.injected[method] ?? 0) >= 1, `${what}: the fault never hit`);

  // The first 201 is the live answer of the one execution, whole.
  const firstOk = answers.findIndex((answer) => answer.status === 201);
  assert.ok(firstOk >= 0, `${what}: no client got the handler's answer: ${answers.map(show).join(' | ')}`);
  assert.equal(answers[firstOk]!.headers.get('idempotent-replayed'), null, `${what}: the first 201 is the live answer`);
  for (const [i, answer] of [...answers, ...later].entries()) {
    if (answer.status === 201) assertExact(`${what}: answer ${i}`, answer, run);
    else problemOf(`${what}: answer ${i}`, answer);
  }
  for (const answer of later) {
    if (gone) assert.equal(problemOf(`${what}: a retry after the fault`, answer), 'idempotency-key-result-gone');
    else {
      assertExact(`${what}: a retry after the fault`, answer, run);
      assert.equal(answer.headers.get('idempotent-replayed'), 'true');
    }
  }
}

/** A keyed detach (?bgrs=yes + Idempotency-Key) under the fault. */
async function detachScenario(app: App, method: StoreMethod, c: Case, promise: string, gone: boolean): Promise<void> {
  const what = `detached, ${method} ${c.label} (${promise})`;
  const key = `detach-${method}-${randomUUID()}`;
  const payload = { item: `${method} ${c.label}` };
  app.faulty.fail(method, c.fault);
  const answers = await retried(
    () => post(app, '/orders?bgrs=yes', key, payload),
    (answer) => answer.status === 202 || decisive(answer),
  );
  const ack = answers.at(-1)!;
  assert.equal(ack.status, 202, `${what}: not detached after ${RETRIES} retries: ${answers.map(show).join(' | ')}`);
  for (const [i, answer] of answers.slice(0, -1).entries()) problemOf(`${what}: attempt ${i}`, answer);
  const { id } = JSON.parse(ack.body.toString('utf8')) as JobDoc;

  // Never stuck `running`: final within the deadline.
  const job = await finalJob(app.base, id);
  await recordedEnd(app, id);
  const runs = app.runs.get(key) ?? [];
  assert.equal(runs.length, 1, `${what}: the handler ran ${runs.length} times`);
  const run = runs[0]!;
  assert.equal(run.jobId, id, `${what}: the execution is the acknowledged job`);
  if (gone) {
    // The result could not be kept: the job says so.
    assert.equal(job.status, 'failed', `${what}: ${JSON.stringify(job)}`);
    assert.equal(job.error?.type, 'store_unavailable', what);
  } else {
    // The result, byte for byte.
    assert.equal(job.status, 'completed', `${what}: ${JSON.stringify(job)}`);
    const result = await call(app.base, `/bgrs/${id}/result`);
    assertExact(`${what}: /result`, result, run);
  }
  // Log lines are written at most once each (a lost reply is not written twice).
  const details = await call(app.base, `/bgrs/${id}/details?limit=1000`);
  assert.equal(details.status, 200);
  const messages = (JSON.parse(details.body.toString('utf8')) as { items: Array<{ message: string }> }).items.map((line) => line.message);
  assert.equal(new Set(messages).size, messages.length, `${what}: a log line was written twice: ${JSON.stringify(messages)}`);

  // Retries of the same key after the fault, detached and not, never run it again.
  // The window opened at the method's first call, which came before the execution was recorded.
  await sleep((c.fault.forMs ?? 0) + 50);
  const again = await post(app, '/orders?bgrs=yes', key, payload);
  if (again.status === 202) {
    // A new job would be a second execution; let it end before failing, so nothing outlives the test.
    const other = (JSON.parse(again.body.toString('utf8')) as JobDoc).id;
    if (other !== id) await finalJob(app.base, other).catch(() => undefined);
  }
  const sync = await post(app, '/orders', key, payload);
  assert.ok((app.faulty.injected[method] ?? 0) >= 1, `${what}: the fault never hit`);
  assert.equal((app.runs.get(key) ?? []).length, 1, `${what}: a retry after the job ended ran the handler again (detached retry: ${show(again)})`);
  if (gone) {
    assert.equal(problemOf(`${what}: a detached retry`, again), 'idempotency-key-result-gone');
    assert.equal(problemOf(`${what}: a synchronous retry`, sync), 'idempotency-key-result-gone');
  } else {
    // The finished job's document, replayed; a synchronous retry gets its stored result.
    assert.equal(again.status, 200, `${what}: detached retry ${show(again)}`);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal((JSON.parse(again.body.toString('utf8')) as JobDoc).id, id);
    assertExact(`${what}: a synchronous retry`, sync, run);
    assert.equal(sync.headers.get('idempotent-replayed'), 'true');
  }
}

/**
 * The live-answer promise: when the store fails from the moment the handler starts (result
 * writes, the final state, the key's completion), the waiting client still gets the handler's
 * whole answer at once, not after the store comes back nor after the lease.
 */
const LIVE_OUTAGE = 3000;
/** Well before the outage ends, and far before the lease: an answer held until either would miss this. */
const LIVE_WITHIN = 2000;
const LIVE_LEASE = 10_000;
const LIVE_FAULTS: ReadonlyArray<readonly StoreMethod[]> = [
  ['appendResult'],
  ['finishJob'],
  ['completeIdempotencyKey'],
  ['appendResult', 'completeIdempotencyKey'],
  ['appendResult', 'finishJob', 'completeIdempotencyKey'],
];

async function liveScenario(express: ExpressModule, store: Store, methods: readonly StoreMethod[], path: string): Promise<void> {
  const what = `${path} with ${methods.join(' + ')} failing from the handler's start`;
  const app = await startApp(express, store, { lease: LIVE_LEASE, keyLease: LIVE_LEASE });
  try {
    const key = `live-${randomUUID()}`;
    let outageEnds = 0;
    app.onRun = () => {
      outageEnds = Date.now() + LIVE_OUTAGE;
      for (const method of methods) app.faulty.fail(method, { forMs: LIVE_OUTAGE, commit: false });
    };
    const first = await post(app, path, key, { item: 'live' });
    const answeredAt = Date.now();
    const run = app.runs.get(key)?.[0];
    assert.ok(run, `${what}: the handler ran`);
    assertExact(`${what}: the live answer`, first, run);
    assert.ok(first.ms < LIVE_WITHIN, `${what}: answered after ${first.ms} ms (store outage ${LIVE_OUTAGE} ms, lease ${LIVE_LEASE} ms)`);
    assert.ok(answeredAt < outageEnds, `${what}: the answer came only once the store was back`);

    // Once the store is back, the job ends final and a retry never runs the handler again: it
    // gets the stored answer, a 409 while the key's lease runs, or the 410 (README).
    await finalJob(app.base, run.jobId, LIVE_OUTAGE + FINAL_WITHIN);
    await recordedEnd(app, run.jobId);
    await sleep(Math.max(0, outageEnds + 50 - Date.now()));
    const retry = await post(app, path, key, { item: 'live' });
    // The faults did hit: a result write and the final state at once; the key's completion comes
    // after the final state, so within the outage only when finishJob was not failing too.
    for (const method of methods) {
      if (method === 'completeIdempotencyKey' && methods.includes('finishJob')) continue;
      assert.ok((app.faulty.injected[method] ?? 0) >= 1, `${what}: ${method} was never called under the fault`);
    }
    assert.equal(app.runs.get(key)!.length, 1, `${what}: the retry ran the handler again: ${show(retry)}`);
    if (retry.status === 201) {
      assertExact(`${what}: the retry`, retry, run);
      assert.equal(retry.headers.get('idempotent-replayed'), 'true');
    } else {
      problemOf(`${what}: the retry`, retry);
    }
  } finally {
    await app.close();
  }
}

/**
 * A retry that comes while the execution is still being recorded. The live client of a guarded
 * request whose result could not be stored gets its answer early (runner.ts flushes it as soon as
 * the store failed), before the job's final state and the key's completion are written. A client
 * that retries at once (a double submit) must then get a 409 while the key is held, or the 410
 * once it is completed, never a second run. The key's completion is made slow (a slow round trip,
 * 300 ms) so that the retry lands in that window every time.
 */
const RACE_DELAY = 300;

async function raceScenario(express: ExpressModule, store: Store): Promise<void> {
  const app = await startApp(express, store, { completeDelay: RACE_DELAY });
  try {
    const key = `race-${randomUUID()}`;
    app.faulty.fail('appendResult', { times: 1, commit: false });
    const first = await post(app, '/orders', key, { item: 'race' });
    const run = app.runs.get(key)?.[0];
    assert.ok(run, 'the handler ran');
    assertExact('the live answer', first, run);
    // The job is recorded failed (store_unavailable); its key's completion is still under way.
    await finalJob(app.base, run.jobId);
    assert.equal(app.recorded.has(run.jobId), false, 'the retry must come before the key is completed');
    const retry = await post(app, '/orders', key, { item: 'race' });
    await recordedEnd(app, run.jobId);
    assert.equal(app.runs.get(key)?.length, 1, `a retry while the key was being completed ran the handler again: ${show(retry)}`);
    const code = problemOf('the retry', retry);
    assert.ok(code === 'idempotency-key-in-use' || code === 'idempotency-key-result-gone', show(retry));
    const later = await post(app, '/orders', key, { item: 'race' });
    assert.equal(problemOf('a retry once the key is completed', later), 'idempotency-key-result-gone');
    assert.equal(app.runs.get(key)?.length, 1);
  } finally {
    await app.close();
  }
}

const kinds = await storeKinds();

// Store kinds run side by side (each scenario has its own app and fault wrapper); within one
// Express version, the three faults of a method run side by side too.
describe('withFaults under the Idempotency-Key guard', { concurrency: true }, () => {
  for (const kind of kinds) {
    // One Express version and one method at a time within a store (concurrency 1 is inherited),
    // so that the event loop stays responsive enough for the 300 ms windows to mean something.
    describe(kind.name, { concurrency: 1 }, () =>
      forEachExpress((express) => {
        let store: Store;
        before(async () => {
          store = await kind.create();
          // Cold paths (a PostgresStore's migration, Redis script loading, code run for the first time)
          // are paid here, once, not inside a scenario's 300 ms fault window.
          const warm = await startApp(express, store);
          try {
            assert.equal((await post(warm, '/orders', `warm-${randomUUID()}`, {})).status, 201);
            const ack = await post(warm, '/orders?bgrs=yes', `warm-${randomUUID()}`, {});
            assert.equal(ack.status, 202);
            await finalJob(warm.base, (JSON.parse(ack.body.toString('utf8')) as { id: string }).id);
          } finally {
            await warm.close();
          }
        });
        after(async () => {
          await kind.destroy(store);
        });

        for (const { method, promise, gone, detachedGone } of METHODS) {
          describe(`${method}: ${promise}`, { concurrency: true }, () => {
            for (const c of CASES) {
              for (const [mode, scenario] of [
                ['synchronous', syncScenario],
                ['detached', detachScenario],
              ] as const) {
                it(`${mode}: ${method} ${c.label}`, async () => {
                  // Its own app: a count-limited fault must hit the scenario it was meant for.
                  const app = await startApp(express, store);
                  try {
                    await scenario(app, method, c, promise, mode === 'detached' ? (detachedGone ?? gone) : gone);
                  } finally {
                    await app.close();
                  }
                });
              }
            }
          });
        }

        it('a retry while the key of an execution whose result was lost is being completed does not run it again', () => raceScenario(express, store));

        describe('the live client gets the whole answer at once while the store fails', { concurrency: true }, () => {
          for (const methods of LIVE_FAULTS) {
            for (const path of ['/orders', '/stream']) {
              it(`${path}: ${methods.join(' + ')} failing for ${LIVE_OUTAGE} ms from the handler's start`, () => liveScenario(express, store, methods, path));
            }
          }
        });
      }),
    );
  }
});
