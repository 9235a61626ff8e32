// Example app: ordinary Express 5 routes that any client can turn into background jobs with `?bgrs=yes`.
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { Express, Request, Response } from 'express';
import express from 'express';
import { type BgrsMiddleware, bgrs } from '../../src/index.js';

/** Reads a non-negative integer from the query string, clamped so a typo cannot tie up the server for hours. */
function intParam(req: Request, name: string, fallback: number, max: number): number {
  const raw = req.query[name];
  const value = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : fallback;
  return Math.min(value, max);
}

/** Resolves when `res` can take more data, or has closed: a client that hangs up never drains. */
function drained(res: Response): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done).off('close', done);
      resolve();
    };
    res.on('drain', done).on('close', done);
  });
}

/** The curl commands the help page and the server banner print, so both stay in step with the routes. */
export function curlExamples(base: string): string[] {
  return [
    '# Start the slow CSV export in the background: 202 Accepted, Location and the job document',
    `curl -i '${base}/exports/orders.csv?bgrs=yes'`,
    '# Same, keeping the job id in a shell variable for the next commands',
    `ID=$(curl -s '${base}/exports/orders.csv?bgrs=yes' | sed -E 's/.*"id":"([^"]+)".*/\\1/')`,
    '# Job document: status, progress, message, warnings',
    `curl "${base}/bgrs/$ID"`,
    '# Live Server-Sent Events until the job ends: status, progress, log lines, then end (-N: print each as it comes)',
    `curl -N "${base}/bgrs/$ID/events"`,
    '# Log lines, oldest first, 10 at a time',
    `curl "${base}/bgrs/$ID/details?after=0&limit=10"`,
    '# The CSV itself: 202 while the job runs (~3 s), then the captured response replayed',
    `curl -si "${base}/bgrs/$ID/result" | head -n 15`,
    '# A slow JSON report, detached with the Prefer header instead of the query parameter',
    `curl -i -H 'Prefer: respond-async' '${base}/reports/2025'`,
    '# POST bodies are kept for the background run too',
    `curl -i -X POST -H 'Content-Type: application/json' -d '{"item":"book","quantity":2}' '${base}/orders?bgrs=yes'`,
    '# A retry with the same Idempotency-Key replays the first answer (Idempotent-Replayed: true)',
    `curl -i -X POST -H 'Idempotency-Key: order-7f3a' -H 'Content-Type: application/json' -d '{"item":"book","quantity":2}' '${base}/orders'`,
    '# Cancel a running job: start another export, then cancel it (a finished job answers 409 already-final)',
    `ID=$(curl -s '${base}/exports/orders.csv?bgrs=yes' | sed -E 's/.*"id":"([^"]+)".*/\\1/')`,
    `curl -X POST "${base}/bgrs/$ID/cancel"`,
    '# Without ?bgrs=yes every route answers as usual',
    `curl '${base}/exports/orders.csv?rows=5&delayMs=0'`,
  ];
}

const CUSTOMERS = ['ada@example.com', 'grace@example.com', 'linus@example.com', 'barbara@example.com'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** The example app; `background` is the bgrs instance to use (queue mode passes its own: examples/queue). */
export function createApp(background: BgrsMiddleware = bgrs()): Express {
  const app = express();
  // The progress page (static HTML + JS) goes before bgrs: a page is nothing to run in the background, so
  // `?bgrs=yes` on it stays meaningless and its requests never pass through the detach check.
  app.use('/progress', express.static(fileURLToPath(new URL('../progress/', import.meta.url))));
  app.use(express.json());
  // Everything registered after this line can be detached; the /bgrs/:id routes come with it.
  app.use(background);
  // server.ts closes it on SIGTERM: running jobs get time to finish, and none is left `running`.
  app.locals.background = background;

  app.get('/', (req, res) => {
    const base = `${req.protocol}://${req.get('host') ?? 'localhost'}`;
    res
      .type('text/plain')
      .send(
        [
          'express-bgrs example. Add ?bgrs=yes to any route to run it in the background.',
          '',
          'Routes:',
          '  GET  /exports/orders.csv?rows=200&delayMs=15   slow CSV export, streamed with res.write',
          '  GET  /reports/:year?delayMs=170                 slow JSON report, one step per month',
          '  POST /orders                                    JSON echo with a new id',
          '  GET  /progress/?job=<id>                        page that follows a job live (Server-Sent Events)',
          '',
          'Try:',
          ...curlExamples(base).map((line) => `  ${line}`),
          '',
        ].join('\n'),
      );
  });

  // A slow export: the rows are written as they are produced, exactly as they would be to a live client.
  app.get('/exports/orders.csv', async (req: Request, res: Response) => {
    const rows = intParam(req, 'rows', 200, 100_000);
    const delayMs = intParam(req, 'delayMs', 15, 1_000);
    const { bgrs: job } = req;

    res.setHeader('Content-Type', 'text/csv; charset=utf-8');
    res.setHeader('Content-Disposition', 'attachment; filename="orders.csv"');
    res.write('id,date,customer_email,amount\n');
    job.log(`export started: ${rows} orders`);
    job.progress(0, 'export started');

    let missingEmail = 0;
    let lastStep = 0;
    for (let i = 1; i <= rows; i++) {
      // Cancel (or shutdown) aborts the signal; a client that hung up on a plain request closes res.
      if (job.signal.aborted || res.destroyed) {
        job.log(`export stopped after ${i - 1} orders`, 'warning');
        res.end();
        return;
      }
      await sleep(delayMs);

      // Every 61st order lacks an email, so the default export has something to warn about.
      const email = i % 61 === 0 ? '' : (CUSTOMERS[i % CUSTOMERS.length] ?? '');
      if (!email) missingEmail++;
      const day = String((i % 28) + 1).padStart(2, '0');
      const amount = ((i * 7919) % 50_000) / 100;
      // write() returning false means the reader is behind: wait instead of buffering the whole export.
      if (!res.write(`${i},2025-03-${day},${email},${amount.toFixed(2)}\n`)) await drained(res);

      // One progress update per 5% keeps the job document meaningful without a store write per row.
      const step = Math.floor((i / rows) * 20);
      if (step !== lastStep) {
        lastStep = step;
        job.progress((i / rows) * 100, `exported ${i} of ${rows} orders`);
        job.resultCount(i);
      }
    }

    if (missingEmail > 0) job.log(`${missingEmail} orders had no customer email`, 'warning');
    job.log(`export finished: ${rows} orders`);
    res.end();
  });

  // A slow JSON report: Express 5 forwards a rejected promise to the error handler, so no try/catch is needed.
  app.get('/reports/:year', async (req: Request<{ year: string }>, res: Response) => {
    const { year } = req.params;
    if (!/^\d{4}$/.test(year)) {
      res.status(400).json({ error: 'year must have four digits, e.g. /reports/2025' });
      return;
    }
    const delayMs = intParam(req, 'delayMs', 170, 5_000);

    const months = [];
    for (const [i, name] of MONTHS.entries()) {
      if (req.bgrs.signal.aborted) return;
      await sleep(delayMs);
      const orders = 100 + ((Number(year) * (i + 3)) % 250);
      months.push({ month: name, orders, revenue: orders * 42.5 });
      req.bgrs.progress(((i + 1) / MONTHS.length) * 100, `month ${i + 1} done`);
    }
    const total = months.reduce((sum, month) => sum + month.revenue, 0);
    req.bgrs.log(`report ${year}: ${months.length} months, revenue ${total}`);
    res.json({ year: Number(year), months, total });
  });

  // A POST: with ?bgrs=yes the parsed body is carried over to the background run.
  // Retries with the same Idempotency-Key get the stored answer instead of a second order.
  app.post('/orders', background.idempotency(), (req: Request, res: Response) => {
    if (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body)) {
      res.status(400).json({ error: 'send a JSON object, e.g. {"item":"book","quantity":2}' });
      return;
    }
    const order = { id: randomUUID(), ...req.body, createdAt: new Date().toISOString() };
    req.bgrs.log(`order ${order.id} created`);
    res.status(201).location(`/orders/${order.id}`).json(order);
  });

  return app;
}
