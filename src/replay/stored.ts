// The request a worker in another process replays (queue mode): an envelope and, when a parser read
// the body first, its parsed value, as the bytes the store keeps with the job.

import type { Envelope } from './capture.js';

/** What a worker needs to replay a job: the envelope, and the body a parser had parsed before bgrs saw it. */
export interface StoredRequest {
  envelope: Envelope;
  /** Present when the body was parsed before bgrs (`req.body`); the replay carries it as that value. */
  parsed?: { value: unknown };
  /** Whether another worker may run it again when the one running it dies (see `mayRerun`). */
  rerun?: boolean;
  /** What the route asked of its run (`detachable({ timeout })`, the guard's longer result ttl), in ms. */
  run?: { timeout?: number; ttl?: number };
  /** The Idempotency-Key this job executes: the worker completes it (or frees it) as the job ends. */
  idempotency?: { key: string; ttl: number };
}

/** Methods RFC 9110 calls idempotent: running one twice has the effect of running it once. */
const IDEMPOTENT: ReadonlySet<string> = new Set(['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS']);

/** Whether a job may run again after its worker died: an idempotent method, or a route that opted in (`retry: true`). */
export function mayRerun(method: string, optedIn: boolean): boolean {
  return optedIn || IDEMPOTENT.has(method.toUpperCase());
}

const VERSION = 1;

type Parsed = { kind: 'json'; value: unknown } | { kind: 'string'; value: string } | { kind: 'bytes'; value: string };

/**
 * Layout: a 4-byte big-endian length, a JSON header of that length, then the raw body bytes (kept
 * as they are: no base64 for the common case of a large raw body). A parsed body travels as JSON,
 * or as a string or bytes for `express.text()` and `express.raw()`.
 */
export function encodeRequest(request: StoredRequest): Buffer {
  const { body, ...envelope } = request.envelope;
  const header = JSON.stringify({
    v: VERSION,
    envelope,
    hasBody: body !== null,
    parsed: request.parsed && parsedOf(request.parsed.value),
    rerun: request.rerun === true,
    run: request.run,
    idempotency: request.idempotency,
  });
  const headerBytes = Buffer.from(header);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(headerBytes.length);
  return Buffer.concat(body ? [length, headerBytes, body] : [length, headerBytes]);
}

function parsedOf(value: unknown): Parsed {
  if (Buffer.isBuffer(value)) return { kind: 'bytes', value: value.toString('base64') };
  if (typeof value === 'string') return { kind: 'string', value };
  return { kind: 'json', value };
}

/** The request back from its bytes; throws a TypeError on bytes this version did not write. */
export function decodeRequest(bytes: Buffer): StoredRequest {
  if (bytes.length < 4) throw new TypeError('express-bgrs: a stored request is too short');
  const length = bytes.readUInt32BE(0);
  if (4 + length > bytes.length) throw new TypeError('express-bgrs: a stored request is cut short');
  const header = JSON.parse(bytes.subarray(4, 4 + length).toString()) as {
    v: number;
    envelope: Omit<Envelope, 'body'>;
    hasBody: boolean;
    parsed?: Parsed;
    rerun?: boolean;
    run?: StoredRequest['run'];
    idempotency?: StoredRequest['idempotency'];
  };
  if (header.v !== VERSION) throw new TypeError(`express-bgrs: a stored request of version ${String(header.v)} (this version reads ${VERSION})`);
  const envelope: Envelope = { ...header.envelope, body: header.hasBody ? Buffer.from(bytes.subarray(4 + length)) : null };
  const request: StoredRequest = { envelope, rerun: header.rerun === true };
  if (header.run) request.run = header.run;
  if (header.idempotency) request.idempotency = header.idempotency;
  if (!header.parsed) return request;
  const { kind, value } = header.parsed;
  return { ...request, parsed: { value: kind === 'bytes' ? Buffer.from(value, 'base64') : value } };
}
