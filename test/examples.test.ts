// The examples are documentation: this keeps the example app and `npm run demo` working as the library changes.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createApp, curlExamples } from '../examples/basic/app.js';
import { detachAndWait, listen, type Running } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('examples/basic app', () => {
  let server: Running;
  before(async () => {
    server = await listen(createApp());
  });
  after(() => server.close());

  it('runs the CSV export in the background and replays the streamed CSV', async () => {
    // 122 rows: orders 61 and 122 have no email, so the warning is exercised too.
    const { ack, ackBody, job, result, location } = await detachAndWait(server.url, '/exports/orders.csv?rows=122&delayMs=0&bgrs=yes');
    assert.equal(ack.headers.get('retry-after'), '2');
    assert.equal(location, `/bgrs/${ackBody.id}`);
    assert.equal(job.status, 'completed');
    assert.equal(job.progress, 100);
    assert.equal(job.message, 'exported 122 of 122 orders');
    assert.equal(job.resultCount, 122);
    assert.equal(job.warnings, 1);
    assert.equal(job.response?.contentType, 'text/csv; charset=utf-8');

    assert.equal(result.status, 200);
    assert.equal(result.headers.get('content-type'), 'text/csv; charset=utf-8');
    assert.equal(result.headers.get('content-disposition'), 'attachment; filename="orders.csv"');
    const lines = (await result.text()).trimEnd().split('\n');
    assert.equal(lines.length, 123);
    assert.equal(lines[0], 'id,date,customer_email,amount');
    assert.equal(lines[1], '1,2025-03-02,grace@example.com,79.19');
    assert.match(lines[61]!, /^61,2025-03-\d\d,,\d+\.\d\d$/);

    const details = (await (await fetch(`${server.url}${job.links.details}`)).json()) as {
      items: Array<{ seq: number; level: string; message: string }>;
      next: string | null;
    };
    assert.deepEqual(
      details.items.map(({ level, message }) => [level, message]),
      [
        ['info', 'export started: 122 orders'],
        ['warning', '2 orders had no customer email'],
        ['info', 'export finished: 122 orders'],
      ],
    );
    assert.equal(details.next, null);
  });

  it('serves the same CSV directly without ?bgrs=yes', async () => {
    const res = await fetch(`${server.url}/exports/orders.csv?rows=3&delayMs=0`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/csv; charset=utf-8');
    assert.equal((await res.text()).trimEnd().split('\n').length, 4);
  });

  it('detaches the report with Prefer: respond-async and reports progress per month', async () => {
    const { ack, job, result } = await detachAndWait(server.url, '/reports/2025?delayMs=1', { headers: { prefer: 'respond-async' } });
    assert.equal(ack.headers.get('preference-applied'), 'respond-async');
    assert.equal(job.status, 'completed');
    assert.equal(job.message, 'month 12 done');
    const report = (await result.json()) as { year: number; months: unknown[]; total: number };
    assert.equal(report.year, 2025);
    assert.equal(report.months.length, 12);
  });

  it('keeps the JSON body of a detached POST', async () => {
    const { job, result } = await detachAndWait(server.url, '/orders?bgrs=yes', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ item: 'book', quantity: 2 }),
    });
    assert.equal(job.status, 'completed');
    assert.equal(result.status, 201);
    const order = (await result.json()) as { id: string; item: string; quantity: number };
    assert.equal(order.item, 'book');
    assert.equal(order.quantity, 2);
    assert.equal(result.headers.get('location'), `/orders/${order.id}`);
  });

  it('lists curl commands on GET /', async () => {
    const res = await fetch(`${server.url}/`);
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.ok(text.includes(`curl -i '${server.url}/exports/orders.csv?bgrs=yes'`), text);
    assert.ok(text.includes(`curl -N "${server.url}/bgrs/$ID/events"`), text);
    assert.ok(text.includes(`curl -X POST "${server.url}/bgrs/$ID/cancel"`), text);
    assert.ok(text.includes('/progress/?job=<id>'), text);
  });

  it('serves the progress page before bgrs, so ?bgrs=yes on it is not a job', async () => {
    const page = await fetch(`${server.url}/progress/?bgrs=yes`);
    assert.equal(page.status, 200);
    assert.equal(page.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.match(await page.text(), /<script src="progress\.js"><\/script>/);
    const script = await fetch(`${server.url}/progress/progress.js`);
    assert.equal(script.status, 200);
    assert.match(script.headers.get('content-type') ?? '', /^(text|application)\/javascript/);
    assert.match(await script.text(), /new EventSource\(/);
  });

  it('every curl command it prints works as printed', { timeout: 30_000 }, async (t) => {
    if (spawnSync('curl', ['--version']).status !== 0) return t.skip('curl is not installed');
    // One shell for all lines, as a user pasting them would have: $ID carries from line to line.
    const script = curlExamples(server.url)
      .filter((line) => !line.startsWith('#'))
      .join('\n');
    const child = spawn('bash', ['-e', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    // stdout only: curl's progress meter goes to stderr, which is kept for the failure message.
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', resolve);
    });
    assert.equal(code, 0, `${out}\n${err}`);
    // Bodies without a final newline run into the next command's output, so few patterns are anchored.
    assert.match(out, /^HTTP\/1\.1 202 Accepted\r$/m, 'detached export');
    assert.match(out, /\{"id":"[0-9a-f-]{36}","name":"GET \/exports\/orders\.csv\?bgrs=yes".*"status":"(queued|running)"/, 'job document');
    assert.match(out, /^event: log\ndata: \{"seq":1,.*"message":"export started: 200 orders"\}$/m, 'SSE log line');
    assert.match(out, /^event: end\ndata: \{.*"status":"completed"/m, 'SSE ends with the final job');
    assert.match(out, /\{"items":\[\{"seq":1,/, 'details');
    // The event stream lasted until the job ended, so /result already has the CSV.
    assert.match(out, /HTTP\/1\.1 200 OK\r\nX-Powered-By: Express\r\nContent-Type: text\/csv; charset=utf-8\r\n/, 'result');
    assert.match(out, /^Preference-Applied: respond-async\r$/m, 'Prefer');
    assert.match(out, /HTTP\/1\.1 201 Created\r\n/, 'Idempotency-Key POST');
    assert.match(out, /"status":"cancelled"/, 'cancel');
    assert.match(out, /^5,2025-03-06,grace@example\.com,395\.95$/m, 'plain export');
  });
});

describe('npm run demo', () => {
  it('follows the export over Server-Sent Events to its result and exits 0', { timeout: 30_000 }, async () => {
    // Piped stdout: the demo prints one line per progress change instead of redrawing with \r.
    const child = spawn(process.execPath, ['--import', 'tsx', 'examples/demo.ts'], {
      cwd: root,
      env: { ...process.env, DEMO_FAST: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', resolve);
    });

    assert.equal(code, 0, `demo exited ${code}\nstdout:\n${stdout}\nstderr:\n${stderr}`);
    assert.ok(!stdout.includes('\r'), 'no in-place redraws when stdout is not a terminal');
    assert.match(stdout, /202 Accepted {2}Location: \/bgrs\/[0-9a-f-]{36}/);
    assert.match(stdout, /^Following GET \/bgrs\/[0-9a-f-]{36}\/events \(Server-Sent Events/m);
    assert.match(stdout, /^\[#{30}\] 100% exported 40 of 40 orders$/m);
    // Log lines are printed as their `log` events arrive: between the bar lines, before the job's summary.
    const started = stdout.search(/^ +1 info +export started: 40 orders$/m);
    const half = stdout.search(/^\[#{15}\.{15}\] +50% /m);
    const finished = stdout.search(/^ +2 info +export finished: 40 orders$/m);
    const completed = stdout.search(/^job completed, 0 warning\(s\), 0 error\(s\)$/m);
    assert.ok(started !== -1 && half !== -1 && finished !== -1 && completed !== -1, stdout);
    assert.ok(started < half && half < finished && finished < completed, `log lines out of place:\n${stdout}`);
    assert.match(stdout, /Content-Type: text\/csv; charset=utf-8 {2}\d+ bytes/);
    assert.match(stdout, /^ {2}id,date,customer_email,amount$/m);
    assert.match(stdout, /^ {2}1,2025-03-02,grace@example\.com,79\.19$/m);
  });
});
