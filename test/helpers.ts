// Shared test helpers: real servers on ephemeral ports, the Express 4/5 matrix, polling a job to its end.
import assert from 'node:assert/strict';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe } from 'node:test';
import express5 from 'express';
import express4 from 'express4';

export type ExpressModule = typeof express5;

/** Both supported Express majors; every behaviour test runs on each. */
const expressVersions: ReadonlyArray<{ name: string; express: ExpressModule }> = [
  { name: 'Express 5', express: express5 },
  { name: 'Express 4', express: express4 },
];

/** Declares the same tests once per Express major. */
export function forEachExpress(fn: (express: ExpressModule, name: string) => void): void {
  for (const { name, express } of expressVersions) describe(name, () => fn(express, name));
}

export interface Running {
  url: string;
  port: number;
  server: Server;
  close(): Promise<void>;
}

/** Starts `handler` on 127.0.0.1 on an ephemeral port. */
export async function listen(handler: Parameters<typeof import('node:http').createServer>[1]): Promise<Running> {
  const { createServer } = await import('node:http');
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface JobDoc {
  id: string;
  status: string;
  progress: number;
  message: string | null;
  url: string;
  name: string;
  warnings: number;
  errors: number;
  resultCount: number;
  response: { status: number; contentType: string | null; size: number } | null;
  error: { type: string; message: string } | null;
  links: { self: string; details: string; result: string; events: string; cancel: string };
  position?: number;
  [key: string]: unknown;
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `GET <location>` until the job is final (or `timeout` ms pass) and returns its document. */
export async function waitForJob(base: string, location: string, timeout = 10_000, init: RequestInit = {}): Promise<JobDoc> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const res = await fetch(base + location, init);
    assert.equal(res.status, 200, `GET ${location} answered ${res.status}`);
    const doc = (await res.json()) as JobDoc;
    if (['completed', 'failed', 'cancelled'].includes(doc.status)) return doc;
    if (Date.now() > deadline) throw new Error(`job ${location} still ${doc.status} after ${timeout} ms`);
    await sleep(20);
  }
}

/** Sends a detaching request, checks the 202, waits for the job and fetches its result. */
export async function detachAndWait(
  base: string,
  path: string,
  init: RequestInit = {},
  timeout = 10_000,
): Promise<{ ack: Response; ackBody: JobDoc; job: JobDoc; result: Response; location: string }> {
  const ack = await fetch(base + path, init);
  assert.equal(ack.status, 202, `expected 202 for ${path}, got ${ack.status}: ${await ack.clone().text()}`);
  const location = ack.headers.get('location');
  assert.ok(location, 'Location header');
  const ackBody = (await ack.json()) as JobDoc;
  const job = await waitForJob(base, location, timeout, { headers: pickAuth(init) });
  const result = await fetch(`${base}${location}/result`, { headers: pickAuth(init) });
  return { ack, ackBody, job, result, location };
}

function pickAuth(init: RequestInit): Record<string, string> {
  const headers = new Headers(init.headers);
  const out: Record<string, string> = {};
  for (const name of ['authorization', 'x-user']) {
    const value = headers.get(name);
    if (value) out[name] = value;
  }
  return out;
}

/** Adds `bgrs=yes` to a path that may already have a query. */
export function detached(path: string): string {
  return `${path + (path.includes('?') ? '&' : '?')}bgrs=yes`;
}

/** Polls `fn` every 20 ms until it gives a value (not undefined); fails after `ms`, naming `what`. */
export async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await fn();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: still waiting after ${ms} ms`);
    await sleep(20);
  }
}
