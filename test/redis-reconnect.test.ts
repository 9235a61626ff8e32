// RedisStore through dropped connections: the store's Redis connection is cut while a job streams
// its result and writes log lines; ioredis reconnects and resends the commands that had no reply.
// A resent append whose first run had landed must append nothing (the scripts' tokens), and one
// whose first run never reached Redis must append once: the stored result is byte for byte what
// the handler wrote, and every log line is there exactly once, in order.
//
// The store's traffic does not depend on Express (the capture runs through bgrs' private server),
// but the replay does go through each major's router and response, and a run is cheap, so both
// are covered. Real Redis at 127.0.0.1:6379; only this file's own connection is ever cut.
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { type BgrsMiddleware, bgrs } from '../src/index.js';
import { RedisStore } from '../src/stores/redis.js';
import { forEachExpress, type JobDoc, listen, type Running, sleep, waitForJob } from './helpers.js';
import { REDIS_URL, serviceAvailable } from './services.js';
import { dropRedisPrefix } from './stores.js';

/** The result: this many chunks of distinct random bytes, a log line with each. */
const CHUNKS = 200;
const CHUNK_BYTES = 8 * 1024;
/** RedisStore `chunkBytes`: each chunk becomes several appends, so more commands are in flight. */
const PIECE_BYTES = 3000;
/** After these chunks the connection is dropped (the kill runs while the handler goes on). */
const KILL_AFTER = [20, 55, 90, 125, 160];
const RUNS = 3;

type Kill = 'CLIENT KILL' | 'stream.destroy()';

interface Drop {
  how: Kill;
  /** Commands ioredis had sent without a reply yet, when the connection went. */
  inFlight: number;
  names: string[];
}

interface Written {
  sha256: string;
  size: number;
  lines: string[];
  drops: Array<Promise<Drop>>;
}

const redisUp = await serviceAvailable('Redis', REDIS_URL);

describe('RedisStore: connection dropped mid-capture', { skip: redisUp ? false : `Redis is not reachable at ${REDIS_URL}` }, () =>
  forEachExpress((express) => {
    let client: Redis;
    let admin: Redis;
    let prefix: string;
    let background: BgrsMiddleware;
    let server: Running;
    let closes = 0;
    const written = new Map<string, Written>();

    /** Cuts the store's connection: from the server side (CLIENT KILL by id) or from ours (its socket destroyed). */
    async function drop(how: Kill): Promise<Drop> {
      if (how === 'CLIENT KILL') {
        // CLIENT ID runs on the store's own connection (after any command queued before it).
        const id = await client.client('ID');
        const inFlight = client.commandQueue.length;
        const names = client.commandQueue.toArray().map((item) => item.command.name);
        await admin.client('KILL', 'ID', String(id));
        return { how, inFlight, names };
      }
      // Wait (briefly) for a command sent and not yet answered, so that it is the one cut off.
      for (let i = 0; i < 500 && client.commandQueue.length === 0; i++) await new Promise((resolve) => setImmediate(resolve));
      const inFlight = client.commandQueue.length;
      const names = client.commandQueue.toArray().map((item) => item.command.name);
      client.stream.destroy();
      return { how, inFlight, names };
    }

    before(async () => {
      client = new Redis(REDIS_URL);
      admin = new Redis(REDIS_URL);
      // A dropped connection is reported as an error too: expected here, and listened to (as the README says to).
      client.on('error', () => undefined);
      client.on('close', () => closes++);
      await Promise.all([once(client, 'ready'), once(admin, 'ready')]);
      prefix = `bgrs-reconnect-${randomUUID()}:`;
      background = bgrs({ store: new RedisStore({ client, prefix, chunkBytes: PIECE_BYTES }), validations: false });
      const app = express();
      app.use(background);
      app.get('/big', async (req, res) => {
        const tag = String(req.query.tag);
        const hash = createHash('sha256');
        const record: Written = { sha256: '', size: 0, lines: [], drops: [] };
        written.set(tag, record);
        res.type('application/octet-stream');
        for (let i = 0; i < CHUNKS; i++) {
          const chunk = Buffer.concat([Buffer.from(`chunk ${i} of ${tag}\n`), randomBytes(CHUNK_BYTES)]);
          hash.update(chunk);
          record.size += chunk.length;
          const line = `line ${i} of ${tag}`;
          record.lines.push(line);
          req.bgrs.log(line);
          req.bgrs.progress((i * 100) / CHUNKS);
          if (!res.write(chunk)) await once(res, 'drain');
          const k = KILL_AFTER.indexOf(i);
          if (k !== -1) {
            const how: Kill = k % 2 === 0 ? 'CLIENT KILL' : 'stream.destroy()';
            // Not awaited: the handler writes on while the connection goes. A failed kill is reported, not thrown.
            record.drops.push(drop(how).catch((err: unknown) => ({ how, inFlight: -1, names: [`kill failed: ${(err as Error).message}`] })));
          }
          await sleep(2);
        }
        record.sha256 = hash.digest('hex');
        res.end();
      });
      server = await listen(app);
    });

    after(async () => {
      await background.close();
      await server.close();
      await dropRedisPrefix(admin, prefix);
      await Promise.all([client.quit(), admin.quit()]);
    });

    it(`stores the result byte for byte and every log line exactly once, through ${RUNS} × ${KILL_AFTER.length} dropped connections`, async (t) => {
      const drops: Drop[] = [];
      for (let run = 0; run < RUNS; run++) {
        const tag = `run${run}-${randomUUID().slice(0, 8)}`;
        const closesBefore = closes;
        const ack = await fetch(`${server.url}/big?bgrs=yes&tag=${tag}`);
        assert.equal(ack.status, 202, await ack.clone().text());
        const { id } = (await ack.json()) as JobDoc;
        const job = await waitForJob(server.url, `/bgrs/${id}`, 30_000);
        const record = written.get(tag);
        assert.ok(record, 'the handler ran');
        const done = await Promise.all(record.drops);
        assert.deepEqual(
          done.filter((d) => d.inFlight < 0),
          [],
          'every kill went through',
        );
        drops.push(...done);
        assert.ok(closes - closesBefore >= KILL_AFTER.length, `the connection was dropped ${closes - closesBefore} times, expected ${KILL_AFTER.length}`);

        assert.equal(job.status, 'completed', `run ${run}: ${JSON.stringify(job.error)}`);
        assert.equal(job.response?.size, record.size, `run ${run}: the recorded size`);

        const result = await fetch(`${server.url}/bgrs/${id}/result`);
        assert.equal(result.status, 200);
        const body = Buffer.from(await result.arrayBuffer());
        assert.equal(body.length, record.size, `run ${run}: result length`);
        assert.equal(createHash('sha256').update(body).digest('hex'), record.sha256, `run ${run}: the result is byte for byte what the handler wrote`);

        const details = await fetch(`${server.url}/bgrs/${id}/details?limit=1000`);
        assert.equal(details.status, 200);
        const page = (await details.json()) as { items: Array<{ seq: number; message: string }>; next: string | null };
        assert.deepEqual(
          page.items.map((line) => line.message),
          record.lines,
          `run ${run}: every log line exactly once, in order`,
        );
        assert.deepEqual(
          page.items.map((line) => line.seq),
          record.lines.map((_, i) => i + 1),
          `run ${run}: seq 1, 2, 3… without a gap`,
        );
      }
      // The test must have cut commands in flight, or it proved nothing about resending.
      const cut = drops.filter((d) => d.inFlight > 0);
      t.diagnostic(`${drops.length} drops, ${cut.length} with commands in flight: ${cut.map((d) => `${d.how} [${d.names.join(',')}]`).join('; ')}`);
      assert.ok(cut.length > 0, 'no drop cut a command in flight');
    });
  }),
);
