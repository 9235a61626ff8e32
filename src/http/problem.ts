// problem+json (RFC 9457) errors: one stable `type` per cause, sent the same way everywhere.
import type { ServerResponse } from 'node:http';
import { nativeView } from '../views/native.js';
import type { ProblemDocument, View } from '../views/view.js';

/** Every cause of an error the library produces, with its status and title. The README lists them. */
export const problems = {
  'not-found': { status: 404, title: 'Not Found' },
  'invalid-bgrs-value': { status: 400, title: 'Invalid bgrs value' },
  'invalid-parameter': { status: 400, title: 'Invalid parameter' },
  'method-not-allowed': { status: 405, title: 'Method Not Allowed' },
  'body-too-large': { status: 413, title: 'Request body too large' },
  'no-result': { status: 409, title: 'The job ended without a response' },
  'result-expired': { status: 410, title: 'The result has expired' },
  'result-too-large': { status: 507, title: 'The result was too large to keep' },
  'already-final': { status: 409, title: 'The job has already ended' },
  'job-failed': { status: 500, title: 'The request failed before it answered' },
  misconfigured: { status: 500, title: 'express-bgrs is mounted where its job routes cannot be reached' },
  'store-unavailable': { status: 503, title: 'Job store unavailable' },
  'queue-unavailable': { status: 503, title: 'Job queue unavailable' },
  'shutting-down': { status: 503, title: 'Shutting down' },
  'queue-full': { status: 429, title: 'Too many background requests' },
  'too-many-streams': { status: 429, title: 'Too many event streams' },
  'server-busy': { status: 503, title: 'Server busy' },
  'idempotency-key-missing': { status: 400, title: 'Idempotency-Key header missing' },
  'idempotency-key-invalid': { status: 400, title: 'Idempotency-Key header invalid' },
  'idempotency-key-in-use': { status: 409, title: 'A request with this Idempotency-Key is in progress' },
  'idempotency-key-reused': { status: 422, title: 'Idempotency-Key reused with another request' },
  'idempotency-key-result-gone': { status: 410, title: 'The stored response of this Idempotency-Key is gone' },
  'idempotency-unsupported': { status: 501, title: 'This server does not keep Idempotency-Keys' },
} as const satisfies Record<string, { status: number; title: string }>;

export type ProblemCode = keyof typeof problems;

/** The base of every problem `type` URI: `urn:express-bgrs:problem:<code>`. */
export const PROBLEM_TYPE_PREFIX = 'urn:express-bgrs:problem:';

export type { ProblemDocument };

function problemDocument(code: ProblemCode, detail?: string, extra?: Record<string, unknown>): ProblemDocument {
  const { status, title } = problems[code];
  const doc: ProblemDocument = { type: PROBLEM_TYPE_PREFIX + code, title, status, error: title };
  if (detail !== undefined) doc.detail = detail;
  return extra ? { ...doc, ...extra } : doc;
}

/** Precomputed once: every unknown, malformed, expired or foreign id gets exactly these bytes. */
const notFoundBody = JSON.stringify(problemDocument('not-found', 'No such job.'));

interface ProblemOptions {
  retryAfter?: number;
  extra?: Record<string, unknown>;
}

/** The problem answers of one view: every error bgrs sends goes through that view's `problem`. */
export interface ProblemSender {
  /** Sends a problem on a plain Node response (Express 4, 5 and the raw router alike); `retryAfter` in seconds. */
  sendProblem(res: ServerResponse, code: ProblemCode, detail?: string, options?: ProblemOptions): void;
  /** The store failed or timed out: 503 with Retry-After, the same wherever it happens. */
  sendStoreUnavailable(res: ServerResponse, retryAfter: number): void;
  /** A `bgrs` query value other than yes, 1, true, no, 0 or false. */
  sendInvalidBgrs(res: ServerResponse): void;
  /** The 404 every job route answers for any id it will not reveal. */
  sendNotFound(res: ServerResponse): void;
}

const senders = new WeakMap<View, ProblemSender>();

export function problemsFor(view: View): ProblemSender {
  const known = senders.get(view);
  if (known) return known;
  const sendProblem = (res: ServerResponse, code: ProblemCode, detail?: string, options: ProblemOptions = {}): void => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    let body = notFoundBody;
    let headers: Record<string, string> | undefined;
    if (view !== nativeView || code !== 'not-found' || detail !== undefined || options.extra) {
      const rendered = view.problem(problemDocument(code, detail, options.extra));
      body = JSON.stringify(rendered.body);
      headers = rendered.headers;
    }
    res.statusCode = problems[code].status;
    res.setHeader('Content-Type', 'application/problem+json; charset=utf-8');
    res.setHeader('Cache-Control', 'no-store');
    res.setHeader('Content-Length', Buffer.byteLength(body));
    if (options.retryAfter !== undefined) res.setHeader('Retry-After', String(options.retryAfter));
    if (headers) for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
    res.end(body);
  };
  const sender: ProblemSender = {
    sendProblem,
    sendStoreUnavailable: (res, retryAfter) => sendProblem(res, 'store-unavailable', 'The job store is unavailable; try again later.', { retryAfter }),
    sendInvalidBgrs: (res) => sendProblem(res, 'invalid-bgrs-value', 'The `bgrs` query parameter must be yes, 1, true, no, 0 or false.'),
    sendNotFound: (res) => sendProblem(res, 'not-found'),
  };
  senders.set(view, sender);
  return sender;
}
