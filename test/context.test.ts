// req.bgrs: progress clamped and monotonic, log levels counted, no-ops on requests that were not detached.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { bgrs } from '../src/index.js';
import { detachAndWait, forEachExpress, type JobDoc, listen, type Running, sleep, waitForJob } from './helpers.js';

forEachExpress((express) => {
  let server: Running;
  let step: () => void = () => undefined;
  const nextStep = (): Promise<void> => new Promise((resolve) => (step = resolve));

  before(async () => {
    const app = express();
    app.use(bgrs());
    app.get('/steps', async (req, res) => {
      req.bgrs.progress(40, 'forty');
      req.bgrs.progress(20, 'went back');
      req.bgrs.progress(Number.NaN);
      req.bgrs.resultCount(7);
      await nextStep();
      req.bgrs.progress(150, 'over the top');
      await nextStep();
      req.bgrs.progress(-5);
      req.bgrs.log('odd level', 'fatal' as 'error');
      res.json({ id: req.bgrs.id, detached: req.bgrs.detached });
    });
    const sub = express();
    sub.get('/inner', (req, res) => res.json({ detached: req.bgrs.detached, id: req.bgrs.id }));
    app.use('/sub', sub);
    app.get('/plain', (req, res) => {
      req.bgrs.progress(50);
      req.bgrs.log('ignored');
      req.bgrs.resultCount(3);
      res.json({ id: req.bgrs.id, detached: req.bgrs.detached, aborted: req.bgrs.signal.aborted });
    });
    server = await listen(app);
  });
  after(() => server.close());

  const statusOf = async (location: string): Promise<JobDoc> => (await (await fetch(server.url + location)).json()) as JobDoc;

  it('clamps progress to 0–100 and never moves it backwards', async () => {
    const ack = await fetch(`${server.url}/steps?bgrs=yes`);
    const location = ack.headers.get('location')!;
    await sleep(50);
    let doc = await statusOf(location);
    assert.equal(doc.progress, 40);
    assert.equal(doc.message, 'went back');
    assert.equal(doc.resultCount, 7);
    step();
    await sleep(50);
    doc = await statusOf(location);
    assert.equal(doc.progress, 100);
    assert.equal(doc.message, 'over the top');
    step();
    const done = await waitForJob(server.url, location);
    assert.equal(done.progress, 100);
    const result = (await (await fetch(`${server.url}${location}/result`)).json()) as { id: string; detached: boolean };
    assert.deepEqual(result, { id: done.id, detached: true });
    const details = (await (await fetch(`${server.url}${location}/details`)).json()) as { items: Array<{ level: string }> };
    assert.equal(details.items[0]!.level, 'info', 'an unknown level is logged as info');
  });

  it('gives requests that were not detached a context whose calls do nothing', async () => {
    const res = await fetch(`${server.url}/plain`);
    assert.deepEqual(await res.json(), { id: null, detached: false, aborted: false });
    const no = await fetch(`${server.url}/plain?bgrs=no&bgrs=0`);
    assert.equal(no.status, 200);
    assert.deepEqual(await no.json(), { id: null, detached: false, aborted: false });
    const inner = await fetch(`${server.url}/sub/inner`);
    assert.deepEqual(await inner.json(), { detached: false, id: null }, 'sub-apps see req.bgrs too');
    const { result } = await detachAndWait(server.url, '/sub/inner?bgrs=yes');
    assert.equal(((await result.json()) as { detached: boolean }).detached, true);
    const mixed = await fetch(`${server.url}/plain?bgrs=no&bgrs=yes`);
    assert.equal(mixed.status, 400, 'contradicting bgrs values are refused');
  });
});
