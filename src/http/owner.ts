// Who a request is: the one place the `owner` option's answer is normalised, and the key that limits count against.
import { createHash } from 'node:crypto';
import type { Request } from 'express';

/**
 * The caller's owner as every part of bgrs must see it: a non-empty string, or `null` (anonymous).
 * `undefined` and `''` mean anonymous too (a header that is absent, a user without an id): never
 * "everyone", which is how `listJobs` reads `undefined`. A number is taken as its decimal text.
 */
export async function resolveOwner(owner: (req: Request) => unknown, req: Request): Promise<string | null> {
  const value: unknown = await owner(req);
  if (value === undefined || value === null || value === '') return null;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'bigint') return String(value);
  throw new TypeError(`bgrs(): \`owner(req)\` must return a string or null, returned a ${typeof value}.`);
}

/**
 * Whom per-caller limits (`maxPerOwner`, `maxEventStreams`) count against: the owner, or for an
 * anonymous caller its address, so that one anonymous client cannot use up every anonymous slot.
 */
export function limitKey(owner: string | null, req: Request): string {
  return owner !== null ? `owner:${owner}` : `ip:${req.ip ?? req.socket?.remoteAddress ?? ''}`;
}

/**
 * The Idempotency-Key scope of an anonymous caller: a digest of the credentials it sent, so two
 * callers with different `Authorization` or `Cookie` never share a record, and the credentials
 * themselves are never stored. `null` when it sent none (truly anonymous callers share one scope).
 */
export function credentialScope(req: Request): string | null {
  const authorization = req.headers.authorization;
  const cookie = req.headers.cookie;
  if (authorization === undefined && cookie === undefined) return null;
  return `credentials:${createHash('sha256')
    .update(JSON.stringify([authorization ?? null, cookie ?? null]))
    .digest('base64url')}`;
}

/** The owner `app.use(bgrs())` saw when a request with an Idempotency-Key passed it. */
const kEntryOwner = Symbol('express-bgrs.entryOwner');

/**
 * Remembers who owned a keyed request where `app.use(bgrs())` met it, before the route's own
 * auth: a route guard scopes the key by that same owner, so a detached try (claimed there) and a
 * synchronous retry (claimed at the route) share one record whatever the auth layout.
 */
export function rememberEntryOwner(req: Request, owner: string | null): void {
  (req as Request & { [kEntryOwner]?: string | null })[kEntryOwner] = owner;
}

/** The owner remembered at `app.use(bgrs())`, or `undefined` when the request did not pass one. */
export function entryOwner(req: Request): string | null | undefined {
  return (req as Request & { [kEntryOwner]?: string | null })[kEntryOwner];
}
