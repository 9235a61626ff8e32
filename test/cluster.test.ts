// Two app processes sharing one store (Redis, then PostgreSQL): any instance serves, steers and watches any job.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { type JobDoc, sleep, waitForJob } from './helpers.js';
import { killAll, type Proc, startProcess } from './processes.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from './services.js';
import { dropPostgresTables, dropRedisPrefix } from './stores.js';

const LEASE_MS = 1500;

type Instance = Proc;

function startInstance(kind: string, namespace: string): Promise<Instance> {
  return startProcess('test/fixtures/cluster-app.ts', [kind, namespace, String(LEASE_MS)], {
    name: 'instance',
    ready: 'listening',
    readyTimeout: 20_000,
    timeout: 10_000,
  });
}

/** Reads a text/event-stream until `end` (or the timeout), returning the events in order. */
async function readEvents(url: string, timeout = 10_000): Promise<Array<{ event: string; data: unknown; at: number }>> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeout);
  const res = await fetch(url, { signal: controller.signal });
  assert.equal(res.headers.get('content-type'), 'text/event-stream; charset=utf-8');
  const out: Array<{ event: string; data: unknown; at: number }> = [];
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let cut: number;
      while ((cut = buffer.indexOf('\n\n')) !== -1) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event && data) out.push({ event, data: JSON.parse(data), at: Date.now() });
        if (event === 'end') return out;
      }
    }
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
  return out;
}

async function cleanup(kind: string, namespace: string): Promise<void> {
  if (kind === 'redis') {
    const { Redis } = await import('ioredis');
    const client = new Redis(REDIS_URL);
    await dropRedisPrefix(client, namespace);
    await client.quit();
  } else {
    const { default: pg } = await import('pg');
    const client = new pg.Client({ connectionString: POSTGRES_URL });
    await client.connect();
    await dropPostgresTables(client, namespace);
    await client.end();
  }
}

for (const [kind, label, url] of [
  ['redis', 'Redis', REDIS_URL],
  ['postgres', 'PostgreSQL', POSTGRES_URL],
] as const) {
  const available = await serviceAvailable(label, url);
  describe(`two instances sharing a ${label} store`, { skip: !available && `${label} is not reachable` }, () => {
    const namespace = kind === 'redis' ? `bgrs-cluster-${randomUUID()}:` : `bgrs_cluster_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
    let a: Instance;
    let b: Instance;

    before(async () => {
      a = await startInstance(kind, namespace);
      b = await startInstance(kind, namespace);
    });
    after(async () => {
      await killAll();
      await cleanup(kind, namespace);
    });

    it('detaches on A; B reports the job, its log and its result', async () => {
      const ann = { headers: { 'x-user': 'ann' } };
      const ack = await fetch(`${a.url}/work?bgrs=yes&steps=4&ms=50`, ann);
      assert.equal(ack.status, 202);
      const location = ack.headers.get('location')!;
      const job = await waitForJob(b.url, location, 10_000, ann);
      assert.equal(job.status, 'completed');
      assert.equal(job.progress, 100);
      const details = (await (await fetch(`${b.url}${location}/details`, ann)).json()) as { items: Array<{ message: string }> };
      assert.deepEqual(
        details.items.map((l) => l.message),
        ['step 1 of 4', 'step 2 of 4', 'step 3 of 4', 'step 4 of 4'],
      );
      const result = await fetch(`${b.url}${location}/result`, ann);
      assert.equal(result.status, 200);
      assert.equal(result.headers.get('content-type'), 'text/csv; charset=utf-8');
      assert.equal(await result.text(), 'n,square\n1,1\n2,4\n3,9\n4,16\n');
      assert.equal((await fetch(`${b.url}${location}/result`)).status, 404, 'not to a caller without the owner');
      const listed = (await (await fetch(`${b.url}/bgrs?limit=100`, ann)).json()) as { items: JobDoc[] };
      assert.ok(
        listed.items.some((item) => item.id === job.id),
        'B lists the job A started',
      );
    });

    it("streams A's progress live on B, and B's wait returns when A finishes", async () => {
      const ack = await fetch(`${a.url}/work?bgrs=yes&steps=5&ms=200`);
      const location = ack.headers.get('location')!;
      const started = Date.now();
      const [events, waited] = await Promise.all([
        readEvents(`${b.url}${location}/events`),
        fetch(`${b.url}${location}?wait=10`).then(async (res) => ({ doc: (await res.json()) as JobDoc, at: Date.now() })),
      ]);
      const names = events.map((e) => e.event);
      assert.equal(names[0], 'status');
      assert.equal(names.at(-1), 'end');
      assert.equal(names.filter((n) => n === 'log').length, 5);
      const progress = events.filter((e) => e.event === 'progress').map((e) => (e.data as { progress: number }).progress);
      assert.ok(progress.length >= 2, `progress arrived live, in several events: ${JSON.stringify(progress)}`);
      assert.deepEqual(
        [...progress].sort((x, y) => x - y),
        progress,
        'never backwards',
      );
      const firstLog = events.find((e) => e.event === 'log')!;
      assert.ok(firstLog.at - started < 900, 'the first line arrived while the job ran (not at the end)');
      assert.equal(waited.doc.status, 'completed');
      assert.ok(waited.at - started >= 900, 'wait held the request until A finished');
    });

    it("cancels on B, and A's handler hears it within a second", async () => {
      const ack = await fetch(`${a.url}/hang?bgrs=yes`);
      const id = ((await ack.json()) as JobDoc).id;
      await a.next((e) => e.event === 'started' && e.id === id);
      const sent = Date.now();
      const cancel = await fetch(`${b.url}/bgrs/${id}/cancel`, { method: 'POST' });
      assert.equal(cancel.status, 202);
      assert.equal(((await cancel.json()) as JobDoc).status, 'cancelled');
      const aborted = await a.next((e) => e.event === 'aborted' && e.id === id, 5000);
      assert.equal(aborted.code, 'BGRS_CANCELLED');
      assert.ok((aborted.at as number) - sent <= 1000, `aborted ${(aborted.at as number) - sent} ms after the cancel`);
    });

    it('after kill -9 of A holding an Idempotency-Key, B takes the key over once its lease passes', async () => {
      const key = `pay-${randomUUID()}`;
      const pay = (instance: Instance, hang: boolean): Promise<Response> =>
        fetch(`${instance.url}/pay`, { method: 'POST', headers: { 'idempotency-key': key, ...(hang ? { 'x-hang': '1' } : {}) } });
      void pay(a, true).catch(() => undefined);
      await a.next((e) => e.event === 'pay' && e.key === key);
      const held = await pay(b, false);
      assert.equal(held.status, 409, 'A still holds the key');
      await held.arrayBuffer();
      await a.kill('SIGKILL');
      // A restarted here later is a new process; this test ends A's life.
      const deadline = Date.now() + LEASE_MS + 3000;
      let answer: Response | undefined;
      while (Date.now() < deadline) {
        answer = await pay(b, false);
        if (answer.status !== 409) break;
        await answer.arrayBuffer();
        await sleep(200);
      }
      assert.equal(answer?.status, 201, 'the key was freed by the lease');
      assert.deepEqual(await answer!.json(), { paidBy: b.pid });
      const replay = await pay(b, false);
      assert.equal(replay.headers.get('idempotent-replayed'), 'true', 'and is held by B now: one execution');
      a = await startInstance(kind, namespace);
    });

    it('after kill -9 of A, B reports every job A ran failed: interrupted within the lease', async () => {
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const ack = await fetch(`${a.url}/hang?bgrs=yes`);
        const id = ((await ack.json()) as JobDoc).id;
        ids.push(id);
        await a.next((e) => e.event === 'started' && e.id === id);
      }
      await a.kill('SIGKILL');
      const killedAt = Date.now();
      const deadline = killedAt + LEASE_MS + 3000;
      const final = new Map<string, JobDoc>();
      while (final.size < ids.length && Date.now() < deadline) {
        for (const id of ids) {
          if (final.has(id)) continue;
          const doc = (await (await fetch(`${b.url}/bgrs/${id}`)).json()) as JobDoc;
          if (doc.status !== 'running' && doc.status !== 'queued') final.set(id, doc);
        }
        await sleep(100);
      }
      assert.equal(final.size, ids.length, 'none stays running');
      for (const doc of final.values()) {
        assert.equal(doc.status, 'failed');
        assert.equal(doc.error?.type, 'interrupted');
      }
      assert.ok(Date.now() - killedAt <= LEASE_MS + 2000, `reported within the lease (${Date.now() - killedAt} ms)`);
      const running = (await (await fetch(`${b.url}/bgrs?status=running,queued&limit=100`)).json()) as { items: JobDoc[] };
      assert.equal(running.items.length, 0, 'the list shows none running either');
    });
  });
}
