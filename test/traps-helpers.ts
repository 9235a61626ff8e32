// Helpers for the traps tests: a raw keep-alive HTTP/1.1 client on node:net, and a node:http GET that does not decompress.
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import type { Express, RequestHandler } from 'express';
import type { BgrsMiddleware } from '../src/index.js';
import { type JobDoc, waitForJob } from './helpers.js';

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** One keep-alive connection; requests are written by hand and responses parsed one at a time. */
export class RawClient {
  #buffer = Buffer.alloc(0);
  #closed = false;
  #wake: (() => void) | null = null;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake?.();
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#wake?.();
    });
    socket.on('error', () => undefined);
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  send(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** `GET path HTTP/1.1` with keep-alive, plus any extra header lines. */
  get(path: string, extra: Record<string, string> = {}): void {
    const lines = [`GET ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: keep-alive'];
    for (const [name, value] of Object.entries(extra)) lines.push(`${name}: ${value}`);
    this.send(`${lines.join('\r\n')}\r\n\r\n`);
  }

  /** Reads the next whole response (Content-Length or chunked framing). */
  async read(timeout = 5000, head = false): Promise<RawResponse> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const parsed = this.#tryParse(head);
      if (parsed) return parsed;
      if (this.#closed) throw new Error(`connection closed before a whole response arrived (${this.#buffer.length} bytes buffered)`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no whole response within ${timeout} ms (${this.#buffer.length} bytes buffered)`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          this.#wake = null;
          resolve();
        };
      });
    }
  }

  #tryParse(head: boolean): RawResponse | null {
    const end = this.#buffer.indexOf('\r\n\r\n');
    if (end === -1) return null;
    const lines = this.#buffer.subarray(0, end).toString('latin1').split('\r\n');
    const status = Number(lines[0]!.split(' ')[1]);
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    let rest = this.#buffer.subarray(end + 4);
    let body: Buffer;
    if (head || status === 204 || status === 304 || (status >= 100 && status < 200)) {
      body = Buffer.alloc(0);
    } else if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
      const parts: Buffer[] = [];
      let offset = 0;
      for (;;) {
        const lineEnd = rest.indexOf('\r\n', offset);
        if (lineEnd === -1) return null;
        const size = parseInt(rest.subarray(offset, lineEnd).toString('latin1'), 16);
        if (rest.length < lineEnd + 2 + size + 2) return null;
        if (size === 0) {
          offset = lineEnd + 4;
          break;
        }
        parts.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size));
        offset = lineEnd + 2 + size + 2;
      }
      body = Buffer.concat(parts);
      rest = rest.subarray(offset);
      this.#buffer = Buffer.from(rest);
      return { status, headers, body };
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      if (rest.length < length) return null;
      body = Buffer.from(rest.subarray(0, length));
      rest = rest.subarray(length);
    } else {
      // Read-until-close framing.
      if (!this.#closed) return null;
      body = Buffer.from(rest);
      rest = Buffer.alloc(0);
    }
    this.#buffer = Buffer.from(rest);
    return { status, headers, body };
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A GET through node:http that keeps the raw (possibly compressed) body and headers. */
export function rawGet(url: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const flat: Record<string, string> = {};
        for (const [name, value] of Object.entries(res.headers)) {
          if (value !== undefined) flat[name] = Array.isArray(value) ? value.join(', ') : value;
        }
        resolve({ status: res.statusCode ?? 0, headers: flat, body: Buffer.concat(chunks) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

/**
 * Like detachAndWait, but the detaching request goes through node:http: fetch adds `Cache-Control:
 * no-cache` to conditional requests, which would make a 304 impossible whatever bgrs does.
 */
export async function detachRaw(
  base: string,
  path: string,
  headers: Record<string, string>,
): Promise<{ ack: RawResponse; job: JobDoc; result: Response; location: string }> {
  const ack = await rawGet(base + path, headers);
  assert.equal(ack.status, 202, `expected 202 for ${path}, got ${ack.status}: ${ack.body.toString()}`);
  const location = ack.headers.location;
  assert.ok(location, 'Location header');
  const job = await waitForJob(base, location);
  const result = await fetch(`${base}${location}/result`);
  return { ack, job, result, location };
}

/** The two ways in: `app.use(bgrs())` (every later route), or `detachable(...)` on one route without app.use. */
export type Mode = 'app.use' | 'detachable';
export const MODES: readonly Mode[] = ['app.use', 'detachable'];

/** Mounts bgrs the way `mode` says: the middleware itself, or only its job routes. */
export function mountBgrs(app: Express, background: BgrsMiddleware, mode: Mode): void {
  app.use(mode === 'app.use' ? background : background.router);
}

/** The route's handlers as `mode` needs them: as they are, or wrapped in `background.detachable`. */
export function routeHandlers(background: BgrsMiddleware, mode: Mode, ...handlers: RequestHandler[]): RequestHandler[] {
  return mode === 'app.use' ? handlers : [background.detachable(...handlers)];
}
