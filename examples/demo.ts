// `npm run demo`: detaches the slow CSV export of the example app and follows it to its result, as a client would.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { createApp } from './basic/app.js';

// DEMO_FAST=1 shrinks the export so the tests can run the whole demo in well under a second.
const FAST = process.env.DEMO_FAST === '1';
const EXPORT_PATH = FAST ? '/exports/orders.csv?rows=40&delayMs=5' : '/exports/orders.csv';
const POLL_MS = FAST ? 50 : 200;
const OVERALL_TIMEOUT_MS = 30_000;

const tty = Boolean(process.stdout.isTTY);
// Colours only on a terminal, and never when the user opted out (https://no-color.org).
const colour = tty && !process.env.NO_COLOR;
const paint = (code: number) => (text: string) => (colour ? `\x1b[${code}m${text}\x1b[0m` : text);
const bold = paint(1);
const dim = paint(2);
const green = paint(32);
const yellow = paint(33);
const red = paint(31);
const LEVEL_COLOUR = { info: dim, warning: yellow, error: red };

interface JobDocument {
  id: string;
  status: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';
  progress: number;
  message: string | null;
  warnings: number;
  errors: number;
  error: { type: string; message: string } | null;
  links: { self: string; details: string; result: string };
}

interface LogPage {
  items: Array<{ seq: number; at: string; level: 'info' | 'warning' | 'error'; message: string }>;
  next: string | null;
}

function progressBar(doc: JobDocument, width = 30): string {
  const filled = Math.round((doc.progress / 100) * width);
  const bar = '#'.repeat(filled) + '.'.repeat(width - filled);
  const percent = `${Math.floor(doc.progress)}%`.padStart(4);
  return `[${bar}] ${percent} ${doc.message ?? doc.status}`;
}

async function getJson<T>(url: string, expected = 200): Promise<T> {
  const res = await fetch(url);
  if (res.status !== expected) throw new Error(`GET ${url} answered ${res.status}: ${await res.text()}`);
  return (await res.json()) as T;
}

/** Polls the job document and redraws the bar until the job is final. */
async function follow(base: string, location: string): Promise<JobDocument> {
  let last = '';
  for (;;) {
    const doc = await getJson<JobDocument>(base + location);
    const line = progressBar(doc);
    if (line !== last) {
      // On a terminal the bar is redrawn in place; in a pipe or a log file each change gets its own line.
      if (tty) process.stdout.write(`\r\x1b[2K${line}`);
      else console.log(line);
      last = line;
    }
    if (doc.status !== 'queued' && doc.status !== 'running') {
      if (tty) process.stdout.write('\n');
      return doc;
    }
    await sleep(POLL_MS);
  }
}

async function main(base: string): Promise<void> {
  const path = `${EXPORT_PATH}${EXPORT_PATH.includes('?') ? '&' : '?'}bgrs=yes`;
  console.log(bold(`GET ${path}`));
  const ack = await fetch(base + path);
  const location = ack.headers.get('location');
  if (ack.status !== 202 || !location) throw new Error(`expected 202 with a Location header, got ${ack.status}: ${await ack.text()}`);
  const accepted = (await ack.json()) as JobDocument;
  console.log(`${green(`${ack.status} ${ack.statusText}`)}  Location: ${location}  Retry-After: ${ack.headers.get('retry-after')}`);
  console.log(dim(`job ${accepted.id} is ${accepted.status}; the export keeps running on the server`) + '\n');

  console.log(bold(`Polling GET ${location} every ${POLL_MS} ms`));
  const job = await follow(base, location);
  if (job.status !== 'completed') {
    throw new Error(`job ended ${job.status}${job.error ? `: ${job.error.type}: ${job.error.message}` : ''}`);
  }
  console.log(`job ${green(job.status)}, ${job.warnings} warning(s), ${job.errors} error(s)\n`);

  console.log(bold(`Log lines from GET ${job.links.details}`));
  // The details are paginated; `next` is null on the last page.
  for (let page: string | null = job.links.details; page; ) {
    const { items, next }: LogPage = await getJson<LogPage>(base + page);
    for (const item of items) {
      const level = LEVEL_COLOUR[item.level](item.level.padEnd(7));
      console.log(`  ${String(item.seq).padStart(3)} ${level} ${item.message}`);
    }
    page = next;
  }
  console.log('');

  console.log(bold(`Result from GET ${job.links.result}`));
  const result = await fetch(base + job.links.result);
  if (result.status !== 200) throw new Error(`GET ${job.links.result} answered ${result.status}: ${await result.text()}`);
  const body = Buffer.from(await result.arrayBuffer());
  console.log(`${green(`${result.status} ${result.statusText}`)}  Content-Type: ${result.headers.get('content-type')}  ${body.length} bytes`);
  console.log(dim(`Content-Disposition: ${result.headers.get('content-disposition')}`));
  const lines = body.toString('utf8').split('\n');
  for (const line of lines.slice(0, 5)) console.log(`  ${line}`);
  const more = lines.filter(Boolean).length - 5;
  if (more > 0) console.log(dim(`  … ${more} more lines`));
}

const app = createApp();
const server = createServer(app);
// A hung server or job must not leave the demo (or a CI run) waiting forever.
const watchdog = setTimeout(() => fail(new Error(`timed out after ${OVERALL_TIMEOUT_MS / 1000} s`)), OVERALL_TIMEOUT_MS);

function fail(err: unknown): never {
  if (tty) process.stdout.write('\n');
  console.error(red(`demo failed: ${err instanceof Error ? err.message : String(err)}`));
  process.exit(1);
}

server.on('error', fail);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  main(`http://127.0.0.1:${port}`)
    .then(() => {
      clearTimeout(watchdog);
      server.closeAllConnections();
      server.close(() => process.exit(0));
    })
    .catch(fail);
});
