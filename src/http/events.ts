// GET <base>/:id/events: Server-Sent Events with a job's status, progress and log lines, live until it ends.
import type { ServerResponse } from 'node:http';
import type { Wake } from '../jobs/observe.js';
import { readJob, watchJob } from '../jobs/observe.js';
import type { Runtime } from '../jobs/runtime.js';
import type { Job, LogLine } from '../model/job.js';
import { isFinal } from '../model/job.js';

const LOG_PAGE = 1000;

/** What a stream has shown of a job, to tell a re-read that found something new. */
interface Shown {
  status: string;
  attempt: number;
  progress: number;
  message: string | null;
  resultCount: number;
  warnings: number;
  errors: number;
}

function snapshot(job: Job): Shown {
  const { status, attempt, progress, message, resultCount, warnings, errors } = job;
  return { status, attempt, progress, message, resultCount, warnings, errors };
}

function same(a: Shown | null, b: Shown): boolean {
  return a !== null && (Object.keys(b) as Array<keyof Shown>).every((key) => a[key] === b[key]);
}

/**
 * Streams events until the job is final: `status` (job document) when the status changes,
 * `progress` (`{ progress, message, resultCount }`) when those change, `log` for each log line,
 * then `end` (the final job document) and the stream closes. A job that disappears meanwhile
 * (deleted, expired or evicted from its store) gets `gone` (`{ id }`) instead of `end`, so a client
 * knows to stop rather than reconnect (an `EventSource` reconnects after any close).
 *
 * Every event's `id:` is the seq of the last log line sent so far. Log lines are the only events
 * that are deltas; status and progress are snapshots. So a client that reconnects with
 * `Last-Event-ID` gets the lines after that seq (no gap, no repeat) and fresh snapshots.
 */
export async function streamEvents(rt: Runtime, res: ServerResponse, first: Job, lastEventId: number): Promise<void> {
  const { config } = rt;
  let cursor = lastEventId;
  const closed = new AbortController();
  res.once('close', () => closed.abort());

  res.statusCode = 200;
  res.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('X-Accel-Buffering', 'no');
  res.flushHeaders();
  res.write('retry: 2000\n\n');

  // A comment line now and then keeps proxies from closing an idle stream.
  const heartbeat = setInterval(() => {
    if (!res.writableEnded) res.write(': heartbeat\n\n');
  }, config.eventsHeartbeat);
  heartbeat.unref();

  const send = async (event: string, data: unknown): Promise<void> => {
    if (closed.signal.aborted) return;
    if (!res.write(`id: ${cursor}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          res.off('drain', done);
          closed.signal.removeEventListener('abort', done);
          resolve();
        };
        res.on('drain', done);
        closed.signal.addEventListener('abort', done, { once: true });
      });
    }
  };

  let shown: Shown | null = null;
  let job: Job | null = first;
  let woke: Wake = 'change';
  // `first` was read before this subscription: the first wait re-reads at once.
  const watch = watchJob(rt, first.id, { stale: true });
  try {
    while (!closed.signal.aborted) {
      if (!job) {
        await send('gone', { id: first.id });
        break;
      }
      if (!shown || shown.status !== job.status) {
        await send('status', config.view.event(job, { base: config.basePath, position: rt.executor.position(job.id) }));
      }
      if (shown && (shown.progress !== job.progress || shown.message !== job.message || shown.resultCount !== job.resultCount)) {
        await send('progress', { progress: job.progress, message: job.message, resultCount: job.resultCount });
      }
      const before = shown;
      shown = snapshot(job);
      // A safety re-read that finds the job as it was skips the log: a new line would have been
      // announced (and changes the counters when it is a warning or an error), so 1,000 idle
      // streams cost one read each per safety interval, not two.
      if (woke !== 'safety' || !same(before, shown) || isFinal(job.status)) {
        // A final job's log is complete (the runner lands every line before the final status).
        let lines: LogLine[];
        do {
          lines = await config.store.readLogs(job.id, cursor, LOG_PAGE);
          for (const line of lines) {
            cursor = line.seq;
            await send('log', line);
          }
        } while (lines.length === LOG_PAGE && !closed.signal.aborted);
      }
      if (isFinal(job.status)) {
        await send('end', config.view.event(job, { base: config.basePath }));
        break;
      }
      woke = await watch.next(job, closed.signal);
      if (closed.signal.aborted) break;
      job = await readJob(rt, job.id);
    }
  } catch (err) {
    config.logger.error(`express-bgrs: event stream of job ${first.id} failed: ${(err as Error).message}`);
  } finally {
    watch.close();
    clearInterval(heartbeat);
    if (!res.writableEnded) res.end();
  }
}
