// `npm run demo`: detaches the slow CSV export of the example app and follows its Server-Sent Events to the result, as a client would.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { createApp } from './basic/app.js';

// DEMO_FAST=1 shrinks the export so the tests can run the whole demo in well under a second.
const FAST = process.env.DEMO_FAST === '1';
const EXPORT_PATH = FAST ? '/exports/orders.csv?rows=40&delayMs=5' : '/exports/orders.csv';
// How long to wait before resuming an event stream that dropped (the server suggests 2 s with `retry:`).
const RETRY_MS = FAST ? 50 : 2000;
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
  links: { self: string; details: string; result: string; events: string };
}

interface LogLine {
  seq: number;
  at: string;
  level: 'info' | 'warning' | 'error';
  message: string;
}

interface ServerSentEvent {
  event: string;
  data: string;
  id: string | null;
}

function progressBar(progress: number, text: string, width = 30): string {
  const filled = Math.round((progress / 100) * width);
  const bar = '#'.repeat(filled) + '.'.repeat(width - filled);
  const percent = `${Math.floor(progress)}%`.padStart(4);
  return `[${bar}] ${percent} ${text}`;
}

/**
 * Parses a text/event-stream body as it arrives (https://html.spec.whatwg.org/multipage/server-sent-events.html):
 * lines end in \n, \r\n or \r; a blank line dispatches the event; `:` lines are comments (heartbeats).
 * A chunk may end mid-line or mid-character, so both the bytes and the last partial line carry over.
 */
async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const decoder = new TextDecoder();
  let pending = '';
  let event = '';
  let data: string[] = [];
  let id: string | null = null;
  const lineOf = (line: string): ServerSentEvent | undefined => {
    if (line === '') {
      const ready = data.length > 0 ? { event: event || 'message', data: data.join('\n'), id } : undefined;
      event = '';
      data = [];
      return ready;
    }
    if (line.startsWith(':')) return undefined;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id' && !value.includes('\0')) id = value;
    // `retry` and unknown fields change nothing for a client that follows one stream to its end.
    return undefined;
  };
  for await (const chunk of body) {
    pending += decoder.decode(chunk, { stream: true });
    // A trailing \r may be the first half of \r\n: keep it until the next chunk says.
    const lines = pending.split(/\r\n|\r(?!$)|\n/);
    pending = lines.pop() ?? '';
    for (const line of lines) {
      const ready = lineOf(line);
      if (ready) yield ready;
    }
  }
  // A stream that ends mid-event drops that event, as EventSource does.
}

/** Prints lines above the bar: on a terminal the bar is cleared first and redrawn after. */
class Screen {
  #bar = '';

  bar(line: string): void {
    if (line === this.#bar) return;
    this.#bar = line;
    // On a terminal the bar is redrawn in place; in a pipe or a log file each change gets its own line.
    if (tty) process.stdout.write(`\r\x1b[2K${line}`);
    else console.log(line);
  }

  print(line: string): void {
    if (tty && this.#bar) process.stdout.write(`\r\x1b[2K${line}\n${this.#bar}`);
    else console.log(line);
  }

  done(): void {
    if (tty && this.#bar) process.stdout.write('\n');
    this.#bar = '';
  }
}

/**
 * Follows GET /bgrs/:id/events until the `end` event: the bar moves on `status` and `progress`, and log
 * lines are printed as `log` events arrive. A stream cut short is resumed with Last-Event-ID (the seq of
 * the last log line seen), so no log line is lost or printed twice.
 */
async function follow(base: string, events: string, screen: Screen): Promise<JobDocument> {
  let lastEventId: string | null = null;
  for (let attempt = 1; ; attempt++) {
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (lastEventId !== null) headers['last-event-id'] = lastEventId;
    const res = await fetch(base + events, { headers });
    const type = res.headers.get('content-type') ?? '';
    if (res.status !== 200 || !type.startsWith('text/event-stream') || !res.body) {
      throw new Error(`GET ${events} answered ${res.status} ${type}: ${await res.text()}`);
    }
    for await (const { event, data, id } of readEvents(res.body)) {
      if (id !== null) lastEventId = id;
      if (event === 'status' || event === 'end') {
        const doc = JSON.parse(data) as JobDocument;
        screen.bar(progressBar(doc.progress, doc.message ?? doc.status));
        if (event === 'end') {
          screen.done();
          return doc;
        }
      } else if (event === 'progress') {
        const { progress, message } = JSON.parse(data) as { progress: number; message: string | null };
        screen.bar(progressBar(progress, message ?? 'running'));
      } else if (event === 'log') {
        const line = JSON.parse(data) as LogLine;
        screen.print(`  ${String(line.seq).padStart(3)} ${LEVEL_COLOUR[line.level](line.level.padEnd(7))} ${line.message}`);
      }
    }
    // The server closes the stream only after `end`; anything else is a dropped connection.
    if (attempt === 5) throw new Error(`GET ${events} closed ${attempt} times before the job ended`);
    screen.print(dim(`  (event stream closed early; resuming after event ${lastEventId ?? 'none'})`));
    await sleep(RETRY_MS);
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
  console.log(`${dim(`job ${accepted.id} is ${accepted.status}; the export keeps running on the server`)}\n`);

  console.log(bold(`Following GET ${accepted.links.events} (Server-Sent Events: status, progress, log, end)`));
  const job = await follow(base, accepted.links.events, new Screen());
  if (job.status !== 'completed') {
    throw new Error(`job ended ${job.status}${job.error ? `: ${job.error.type}: ${job.error.message}` : ''}`);
  }
  console.log(`job ${green(job.status)}, ${job.warnings} warning(s), ${job.errors} error(s)\n`);

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
