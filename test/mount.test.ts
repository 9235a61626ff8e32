// Mounting app.use(bgrs()) under a prefix: the links it hands out must reach its job routes, or nothing is recorded.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { bgrs, MemoryStore } from '../src/index.js';
import { forEachExpress, listen, type Running } from './helpers.js';

forEachExpress((express) => {
  let server: Running;
  let runs = 0;
  const errors: string[] = [];
  const store = new MemoryStore();
  before(async () => {
    const app = express();
    const logger = { warn: () => {}, error: (message: string) => errors.push(message) };
    app.use('/api', bgrs({ store, logger }));
    app.use('/v2', bgrs({ store, logger, basePath: '/v2/jobs' }));
    const handler = (_req: unknown, res: { json(body: unknown): void }) => {
      runs++;
      res.json({ ok: true });
    };
    app.get('/api/report', handler);
    app.get('/v2/report', handler);
    server = await listen(app);
  });
  after(() => server.close());

  // Promise: a job is never recorded where its links cannot reach it.
  it('refuses a detach through a mount that basePath misses, records nothing, and says how to fix it', async () => {
    const res = await fetch(`${server.url}/api/report?bgrs=yes`);
    assert.equal(res.status, 500);
    assert.equal(res.headers.get('content-type'), 'application/problem+json; charset=utf-8');
    const problem = (await res.json()) as { type: string; detail: string };
    assert.equal(problem.type, 'urn:express-bgrs:problem:misconfigured');
    assert.match(problem.detail, /basePath to "\/api\/bgrs"/);
    assert.equal(runs, 0);
    assert.equal((await store.listJobs({ limit: 10 })).jobs.length, 0);
    await fetch(`${server.url}/api/report?bgrs=yes`);
    assert.equal(errors.filter((e) => e.includes('BGRS_BASEPATH_MOUNT')).length, 1, 'logged once');
  });

  it('still answers the same route in line', async () => {
    const res = await fetch(`${server.url}/api/report`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { ok: true });
  });

  it('detaches under a prefix that basePath includes, and its Location is served', async () => {
    const res = await fetch(`${server.url}/v2/report?bgrs=yes`);
    assert.equal(res.status, 202);
    const location = res.headers.get('location')!;
    assert.match(location, /^\/v2\/jobs\/[0-9a-f-]{36}$/);
    const job = await fetch(`${server.url}${location}?wait=5`);
    assert.equal(job.status, 200);
    assert.equal(((await job.json()) as { status: string }).status, 'completed');
  });
});
