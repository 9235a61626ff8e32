// Builds the request envelope of a detached request: filtered headers, the body taken before the ack.
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Envelope } from './capture.js';
import { HOP_BY_HOP } from './capture.js';

/**
 * Dropped from the replay: a stored 304/206 is useless (conditional and range headers), results are
 * stored as identity and compressed when served (Accept-Encoding), and the replay sends its body at
 * once (Expect).
 */
const NOT_REPLAYED = new Set([
  ...HOP_BY_HOP,
  'expect',
  'accept-encoding',
  'range',
  'if-match',
  'if-none-match',
  'if-modified-since',
  'if-unmodified-since',
  'if-range',
  'content-length',
]);

export class BodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`request body is larger than ${limit} bytes`);
  }
}

type ParsedRequest = IncomingMessage & { _body?: boolean; body?: unknown };

/** Whether the request announces a body (RFC 9112 §6.3). */
export function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** Whether a parser mounted earlier already consumed the body. */
export function bodyConsumed(req: ParsedRequest): boolean {
  return req._body === true || req.readableEnded;
}

/** The server holds as many request bodies as `maxHeldBodyBytes` allows. */
export class BodyBudgetError extends Error {
  constructor() {
    super('the request bodies held for background requests reached maxHeldBodyBytes');
  }
}

/**
 * Reads the raw body into memory, refusing more than `limit` bytes. `hold(bytes)` is asked before
 * each piece is kept (a declared length at once): `false` refuses the body with BodyBudgetError.
 */
export function readBody(req: IncomingMessage, limit: number, hold: (bytes: number) => boolean = () => true): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    req.resume();
    return Promise.reject(new BodyTooLargeError(limit));
  }
  // A declared length is held in full before the first byte is read; a chunked body piece by piece.
  const upfront = Number.isFinite(declared) && declared > 0 ? declared : 0;
  if (upfront > 0 && !hold(upfront)) {
    req.resume();
    return Promise.reject(new BodyBudgetError());
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        req.resume();
        reject(new BodyTooLargeError(limit));
        return;
      }
      if (size > upfront && !hold(Math.min(chunk.length, size - upfront))) {
        cleanup();
        req.resume();
        reject(new BodyBudgetError());
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    const onClose = (): void => {
      if (!req.complete) onError(new Error('client closed the connection before sending the whole body'));
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
}

/** The headers the background run receives, as a flat raw list in the client's order and case. */
function replayHeaders(req: IncomingMessage, bodyLength: number | null): string[] {
  const connectionTokens = new Set(
    String(req.headers.connection ?? '')
      .split(',')
      .map((token) => token.trim().toLowerCase())
      .filter(Boolean),
  );
  const raw = req.rawHeaders;
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (NOT_REPLAYED.has(lower) || connectionTokens.has(lower)) continue;
    let value = raw[i + 1]!;
    if (lower === 'prefer') {
      const kept = stripRespondAsync(value);
      if (kept === undefined) continue;
      value = kept;
    }
    out.push(name, value);
  }
  if (bodyLength !== null) out.push('Content-Length', String(bodyLength));
  return out;
}

/**
 * Builds the envelope. `body` is the spooled raw body (or null); when a parser consumed the body
 * earlier, the parsed `req.body` travels separately (see detach.ts) and the wire carries none.
 */
export function buildEnvelope(req: IncomingMessage, url: string, body: Buffer | null, consumed: boolean): Envelope {
  const socket = req.socket as Partial<TLSSocket> | null;
  const bodyLength = body ? body.length : consumed ? 0 : hasBody(req) ? 0 : null;
  return {
    method: req.method ?? 'GET',
    url,
    rawHeaders: replayHeaders(req, bodyLength),
    body,
    bodyConsumed: consumed,
    contentLength: req.headers['content-length'],
    remoteAddress: socket?.remoteAddress,
    remotePort: socket?.remotePort,
    remoteFamily: socket?.remoteFamily,
    encrypted: Boolean(socket?.encrypted),
  };
}

/** Removes the `respond-async` preference from a Prefer header, keeping any others. */
export function stripRespondAsync(header: string): string | undefined {
  const kept = header
    .split(',')
    .filter((item) => (item.split(';')[0] ?? '').trim().toLowerCase() !== 'respond-async')
    .map((item) => item.trim())
    .filter(Boolean);
  return kept.length ? kept.join(', ') : undefined;
}
