// Helpers for the capture tests: one request answered live and detached, and the comparison of both.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Express } from 'express';
import { privateCacheControl } from '../src/http/result.js';
import { detachAndWait, detached, type JobDoc } from './helpers.js';

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');

/** A tiny `{{name}}` template engine for res.render, with the views in test/fixtures/views. */
export function useTemplateEngine(app: { engine: Express['engine']; set: Express['set'] }): void {
  app.engine('tpl', (file: string, options: object, callback: (err: unknown, html?: string) => void) => {
    readFile(file, 'utf8', (err, text) => {
      if (err) return callback(err);
      callback(
        null,
        text.replace(/\{\{(\w+)\}\}/g, (_m, key: string) => String((options as Record<string, unknown>)[key])),
      );
    });
  });
  app.set('views', join(FIXTURES, 'views'));
  app.set('view engine', 'tpl');
}

/** Headers that differ between a live answer and its replay by design (PROTOCOL.md, "Replayed result headers"). */
const BY_DESIGN = new Set(['date', 'connection', 'keep-alive', 'transfer-encoding', 'content-length', 'set-cookie', 'cache-control', 'expires']);

export interface Captured {
  status: number;
  headers: Headers;
  body: Buffer;
}

async function capture(res: globalThis.Response): Promise<Captured> {
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

function comparable(headers: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  headers.forEach((value, name) => {
    if (!BY_DESIGN.has(name)) out[name] = value;
  });
  return out;
}

/** Sends `path` once live and once detached; returns both answers (the result fetched without following redirects). */
export async function liveAndDetached(base: string, path: string, init: RequestInit = {}): Promise<{ live: Captured; replay: Captured; job: JobDoc }> {
  const live = await capture(await fetch(base + path, { ...init, redirect: 'manual' }));
  const { job, result, location } = await detachAndWait(base, detached(path), init);
  let replay = await capture(result);
  if (result.redirected) replay = await capture(await fetch(`${base}${location}/result`, { redirect: 'manual' }));
  return { live, replay, job };
}

/** The replay equals the live answer: status, body bytes, every header but the ones the protocol rewrites. */
export function assertSameResponse(live: Captured, replay: Captured, job: JobDoc): void {
  assert.equal(replay.status, live.status, 'status');
  assert.deepEqual(replay.body, live.body, 'body bytes');
  assert.deepEqual(comparable(replay.headers), comparable(live.headers), 'headers');
  // A result is never shared-cacheable: `public` is served as `private` (the security model).
  const liveCache = live.headers.get('cache-control');
  assert.equal(replay.headers.get('cache-control'), liveCache === null ? 'no-store' : privateCacheControl(liveCache), 'cache-control');
  const bodyless = live.status === 204 || live.status === 304;
  assert.equal(replay.headers.get('content-length'), bodyless ? null : String(live.body.length), 'content-length is the stored size');
  if (live.headers.has('content-length')) assert.equal(replay.headers.get('content-length'), live.headers.get('content-length'));
  assert.deepEqual(replay.headers.getSetCookie(), [], 'Set-Cookie is not replayed by default');
  assert.ok(replay.headers.get('expires'), 'Expires says when the result is forgotten');
  assert.equal(job.status, live.status >= 500 ? 'failed' : 'completed');
  assert.deepEqual(job.response, { status: live.status, contentType: live.headers.get('content-type'), size: live.body.length });
}
