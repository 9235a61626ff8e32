// Benchmark target: one Express app (plain, bgrs, or an idempotent POST route) per process, on 127.0.0.1, announcing itself on stdout.
//
// Usage: node --import tsx bench/server.ts <plain|bgrs|idem-bgrs|idem-lib> <5|4>
// Prints one JSON line `{"port":…,"location":…}` once ready; `location` is the job route of one
// finished job created at start-up (bgrs only), so GET /bgrs/:id can be measured on a real job.
//
// The idem-* modes serve the same POST /orders behind an Idempotency-Key guard: ours
// (`background.idempotency()`, idem-bgrs) or express-idempotency with its in-memory adapter
// (idem-lib). Both count how often the handler really ran (GET /stats), so the runner can check
// "one key, one execution" instead of trusting the status codes alone.
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { RequestHandler } from 'express';
import type expressModule from 'express';
import { bgrs, MemoryStore } from '../src/index.js';

const MODES = ['plain', 'bgrs', 'idem-bgrs', 'idem-lib'];

const [mode = 'plain', major = '5'] = process.argv.slice(2);
if (!MODES.includes(mode)) throw new Error(`bench/server: unknown mode "${mode}"`);
if (major !== '5' && major !== '4') throw new Error(`bench/server: unknown Express major "${major}"`);

// A variable specifier keeps this file independent of test/express4.d.ts (the alias has no own types).
const specifier = major === '4' ? 'express4' : 'express';
const express = ((await import(specifier)) as { default: typeof expressModule }).default;

/**
 * What the plain `res.json` baseline returns: the shape and size of a finished job document, so
 * that GET /bgrs/:id is compared with serialising the same amount of JSON, not with a tiny object.
 */
function sampleDocument(): Record<string, unknown> {
  const id = '3f2b8c1e-5d4a-4f6b-9c7d-1e2f3a4b5c6d';
  const self = `/bgrs/${id}`;
  const now = new Date().toISOString();
  return {
    id,
    name: null,
    method: 'GET',
    url: '/hello?bgrs=yes',
    status: 'completed',
    progress: 100,
    message: null,
    resultCount: null,
    warnings: [],
    errors: [],
    createdAt: now,
    startedAt: now,
    finishedAt: now,
    expiresAt: now,
    response: { status: 200, contentType: 'text/html; charset=utf-8', size: 5 },
    error: null,
    links: { self, details: `${self}/details`, result: `${self}/result` },
  };
}

const app = express();
const document = sampleDocument();

if (mode === 'bgrs') {
  // A large LRU so that the submission scenario measures bgrs, not eviction; jobs accumulate for the
  // whole run (a few tens of thousands), which is why every scenario gets a fresh process.
  // validations: false silences the one-time MemoryStore-in-production warning (NODE_ENV is production).
  // No queue limit: the submission scenario measures how fast jobs are taken, with a backlog by design.
  app.use(bgrs({ store: new MemoryStore({ max: 1_000_000, maxBytes: 2 ** 31 }), maxQueued: Number.POSITIVE_INFINITY, validations: false }));
}
app.get('/hello', (_req, res) => {
  res.send('hello');
});
app.get('/json', (_req, res) => {
  res.json(document);
});

/** How many times the POST /orders handler ran to completion: replays must not move it. */
let executions = 0;
if (mode === 'idem-bgrs' || mode === 'idem-lib') {
  app.use(express.json());
  let guard: RequestHandler;
  let replayed: (req: Parameters<RequestHandler>[0]) => boolean = () => false;
  if (mode === 'idem-bgrs') {
    // The default MemoryStore, as an application would configure the guard; validations: false
    // only silences the MemoryStore-in-production warning (NODE_ENV is production).
    guard = bgrs({ validations: false }).idempotency();
  } else {
    // Loaded only in this mode so that the other servers do not pay for it. Its middleware always
    // calls next(), even after sending a stored response: the handler must ask isHit() and stop.
    const lib = await import('express-idempotency');
    guard = lib.idempotency() as RequestHandler;
    const service = lib.getSharedIdempotencyService();
    replayed = (req) => service.isHit(req);
  }
  app.post('/orders', guard, (req, res) => {
    if (replayed(req)) return;
    executions += 1;
    res.status(201).json({ id: randomUUID(), ...(req.body as Record<string, unknown>) });
  });
  app.get('/stats', (_req, res) => {
    res.json({ executions });
  });
}

const server = app.listen(0, '127.0.0.1');
await new Promise<void>((resolve, reject) => {
  server.once('listening', resolve);
  server.once('error', reject);
});
const { port } = server.address() as AddressInfo;
const origin = `http://127.0.0.1:${port}`;

/** Submits one job and waits until it has finished, so the measured GET reads a final job document. */
async function finishedJob(): Promise<string> {
  const ack = await fetch(`${origin}/hello?bgrs=yes`);
  const location = ack.headers.get('location');
  await ack.arrayBuffer();
  if (ack.status !== 202 || !location) throw new Error(`bench/server: expected a 202 with Location, got ${ack.status}`);
  for (let attempt = 0; attempt < 200; attempt++) {
    const poll = await fetch(`${origin}${location}`);
    const job = (await poll.json()) as { status?: string };
    if (job.status === 'completed') return location;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error('bench/server: the start-up job did not complete within 2 s');
}

const location = mode === 'bgrs' ? await finishedJob() : null;
process.stdout.write(`${JSON.stringify({ port, location })}\n`);

// The runner ends this process with SIGTERM; close quietly so nothing is printed on the way out.
process.once('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
