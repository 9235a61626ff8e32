// Smoke test: one route detached on Express 4 and 5, status, details and result over real HTTP.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { bgrs } from '../src/index.js';
import { detachAndWait, forEachExpress, listen, type Running } from './helpers.js';

forEachExpress((express) => {
  let server: Running;
  before(async () => {
    const app = express();
    app.use(bgrs());
    app.get('/hello', (req, res) => {
      req.bgrs.progress(50, 'half way');
      req.bgrs.log('said hello');
      res.json({ hello: 'world' });
    });
    server = await listen(app);
  });
  after(() => server.close());

  it('detaches a route and replays its response', async () => {
    const { job, result, location } = await detachAndWait(server.url, '/hello?bgrs=yes');
    assert.equal(job.status, 'completed');
    assert.equal(result.status, 200);
    assert.deepEqual(await result.json(), { hello: 'world' });
    const details = (await (await fetch(`${server.url}${location}/details`)).json()) as { items: Array<{ message: string }> };
    assert.deepEqual(
      details.items.map((line) => line.message),
      ['said hello'],
    );
  });
});
