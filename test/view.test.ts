// The view seam: every document the job routes and the ack send goes through the instance's view.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { bgrs, nativeView, type View } from '../src/index.js';
import { newJob } from '../src/model/job.js';
import { forEachExpress, listen, type Running } from './helpers.js';

/** The native documents wrapped in `{ view, data }`, with a header of its own on every answer. */
const wrapped: View = {
  ack: (job, at) => ({ body: { view: 'ack', data: nativeView.ack(job, at).body }, headers: { 'X-View': 'ack' } }),
  job: (job, at) => ({ body: { view: 'job', data: nativeView.job(job, at).body }, headers: { 'X-View': 'job' } }),
  logPage: (job, lines, next) => ({
    body: { view: 'log', count: lines.length, data: nativeView.logPage(job, lines, next).body },
    headers: { 'X-View': 'log' },
  }),
  listPage: (jobs, next, base) => ({ body: { view: 'list', count: jobs.length, data: nativeView.listPage(jobs, next, base).body } }),
  event: (job, at) => ({ view: 'event', status: (nativeView.event(job, at) as { status: string }).status }),
  resultHeaders: (job) => ({ 'X-Job': job.id }),
  // A Mastodon-style error: { error }, as plain JSON.
  problem: (problem) => ({ body: { error: problem.title, code: problem.type }, headers: { 'Content-Type': 'application/json; charset=utf-8' } }),
};

// The job document's fields are the native view's API: clients parse them, so their set and order are pinned.
it('renders the native job document with its fields in order, the attempt right after the status', () => {
  const job = { ...newJob({ id: 'j1', method: 'GET', url: '/x', owner: 'ann', status: 'running', leaseUntil: new Date().toISOString() }), attempt: 2 };
  const doc = nativeView.job(job, { base: '/bgrs' }).body as Record<string, unknown>;
  assert.deepEqual(Object.keys(doc), [
    'id',
    'name',
    'method',
    'url',
    'status',
    'attempt',
    'progress',
    'message',
    'resultCount',
    'warnings',
    'errors',
    'createdAt',
    'startedAt',
    'finishedAt',
    'expiresAt',
    'response',
    'error',
    'links',
  ]);
  assert.equal(doc.attempt, 2);
  const queued = nativeView.job({ ...job, status: 'queued' }, { base: '/bgrs', position: 1 }).body as Record<string, unknown>;
  assert.deepEqual(Object.keys(queued).slice(-2), ['position', 'links'], "a queued job's position comes before the links");
});

it('refuses a view without its methods', () => {
  assert.throws(() => bgrs({ view: { ack: () => ({ body: null }) } as unknown as View }), /`view`/);
});

forEachExpress((express) => {
  let server: Running;
  let background: ReturnType<typeof bgrs>;
  before(async () => {
    const app = express();
    background = bgrs({ view: wrapped, owner: (req) => req.get('x-user') ?? null });
    app.use(background);
    app.get('/work', (req, res) => {
      req.bgrs.log('one line');
      res.type('text/plain').send('done');
    });
    server = await listen(app);
  });
  after(async () => {
    await background.close();
    await server.close();
  });

  // Promise: a view decides what goes on the wire for every document, and the native view is only the default.
  it('renders the ack, the job, the log page, the list page, the events and the result headers through the view', async () => {
    const headers = { 'x-user': 'u1' };
    const ack = await fetch(`${server.url}/work?bgrs=yes`, { headers });
    assert.equal(ack.status, 202);
    assert.equal(ack.headers.get('x-view'), 'ack');
    assert.match(ack.headers.get('location')!, /^\/bgrs\//, "bgrs' own headers stay");
    const acked = (await ack.json()) as { view: string; data: { id: string } };
    assert.equal(acked.view, 'ack');
    const id = acked.data.id;

    const doc = await fetch(`${server.url}/bgrs/${id}?wait=5`, { headers });
    assert.equal(doc.headers.get('x-view'), 'job');
    const job = (await doc.json()) as { view: string; data: { status: string } };
    assert.deepEqual([job.view, job.data.status], ['job', 'completed']);

    const log = await fetch(`${server.url}/bgrs/${id}/details`, { headers });
    assert.equal(log.headers.get('x-view'), 'log');
    assert.deepEqual(((await log.json()) as { view: string; count: number }).count, 1);

    const list = (await (await fetch(`${server.url}/bgrs`, { headers })).json()) as { view: string; count: number };
    assert.deepEqual([list.view, list.count], ['list', 1]);

    const events = await (await fetch(`${server.url}/bgrs/${id}/events`, { headers })).text();
    assert.match(events, /event: end\ndata: \{"view":"event","status":"completed"\}/);

    const result = await fetch(`${server.url}/bgrs/${id}/result`, { headers });
    assert.equal(result.headers.get('x-job'), id);
    assert.equal(await result.text(), 'done');

    // Errors too: a job route's 404, a bad parameter, a bad bgrs value on any route.
    for (const [path, status] of [
      [`/bgrs/${id}`, 404],
      [`/bgrs/${id}/details?after=-1`, 400],
      ['/work?bgrs=maybe', 400],
    ] as const) {
      const res = await fetch(`${server.url}${path}`, { headers: path.startsWith(`/bgrs/${id}`) && status === 404 ? {} : headers });
      assert.equal(res.status, status, path);
      assert.equal(res.headers.get('content-type'), 'application/json; charset=utf-8', path);
      const body = (await res.json()) as { error: string; code: string };
      assert.match(body.code, /^urn:express-bgrs:problem:/, path);
      assert.equal(typeof body.error, 'string');
    }
  });
});
