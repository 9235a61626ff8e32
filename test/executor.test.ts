// The executor seam: bgrs({ executor }) hands every recorded job to the executor it builds, and the
// default is the in-process one.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { Scheduler } from '../src/executors/local.js';
import { bgrs, type Executor, type ExecutorConfig } from '../src/index.js';
import { forEachExpress, listen, type Running, waitForJob } from './helpers.js';

it('refuses an executor that is not a factory', () => {
  assert.throws(() => bgrs({ executor: 'local' as unknown as () => Executor }), /`executor`/);
});

forEachExpress((express) => {
  let server: Running;
  const placed: string[] = [];
  let seen: ExecutorConfig | undefined;
  let background: ReturnType<typeof bgrs>;
  before(async () => {
    const app = express();
    background = bgrs({
      concurrency: 3,
      executor: (config) => {
        seen = config;
        const local = new Scheduler(config);
        const place = local.place.bind(local);
        local.place = (admission, id, start, end) => {
          placed.push(id);
          place(admission, id, start, end);
        };
        return local;
      },
    });
    app.use(background);
    app.get('/work', (_req, res) => res.json({ ok: true }));
    server = await listen(app);
  });
  after(async () => {
    await background.close();
    await server.close();
  });

  // Promise: every detached job goes through the executor the app chose, built from its options.
  it('builds the executor from the options and places every detached job there', async () => {
    assert.equal(seen?.concurrency, 3);
    const ack = await fetch(`${server.url}/work?bgrs=yes`);
    assert.equal(ack.status, 202);
    const { id } = (await ack.json()) as { id: string };
    const job = await waitForJob(server.url, `/bgrs/${id}`);
    assert.equal(job.status, 'completed');
    assert.deepEqual(placed, [id]);
  });
});
