// Serves a finished job's captured response: status, headers and body bytes, streamed from the store.
import type { ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { HOP_BY_HOP } from './capture.js';
import type { Job, JobResponse } from './job.js';

/** Never replayed: connection headers, a stale Date, and a length that the store states itself. */
const NOT_SERVED = new Set([...HOP_BY_HOP, 'date', 'content-length']);

/**
 * Sets captured headers on `res`, grouped by name so multi-value headers (Set-Cookie, Link) are
 * set as arrays: `writeHead` with a raw array would keep only the last Set-Cookie on an Express res.
 * Returns the lower-case names it set.
 */
export function applyHead(
  res: ServerResponse,
  pairs: ReadonlyArray<readonly [string, string]>,
  options: { replayCookies: boolean; keepLength?: boolean },
): Set<string> {
  const groups = new Map<string, { name: string; values: string[] }>();
  for (const [name, value] of pairs) {
    const lower = name.toLowerCase();
    if ((NOT_SERVED.has(lower) && !(options.keepLength && lower === 'content-length')) || (lower === 'set-cookie' && !options.replayCookies)) continue;
    const group = groups.get(lower);
    if (group) group.values.push(value);
    else groups.set(lower, { name, values: [value] });
  }
  for (const { name, values } of groups.values()) res.setHeader(name, values.length === 1 ? values[0]! : values);
  return new Set(groups.keys());
}

function bodyless(status: number): boolean {
  return status === 204 || status === 304 || (status >= 100 && status < 200);
}

/** Replays the captured response on `res`. The caller checked that the job is final with a response. */
export async function replayResult(
  res: ServerResponse,
  job: Job & { response: JobResponse },
  body: AsyncIterable<Uint8Array>,
  replayCookies: boolean,
  extra?: Record<string, string>,
): Promise<void> {
  const { response } = job;
  res.statusCode = response.status;
  const groups = applyHead(res, response.headers, { replayCookies });
  if (extra) for (const [name, value] of Object.entries(extra)) res.setHeader(name, value);
  if (!bodyless(response.status)) res.setHeader('Content-Length', String(response.size));
  if (job.expiresAt) res.setHeader('Expires', new Date(job.expiresAt).toUTCString());
  if (!groups.has('cache-control')) res.setHeader('Cache-Control', 'no-store');
  try {
    await pipeline(Readable.from(body, { objectMode: false }), res);
  } catch {
    // The client went away mid-download, or the store failed mid-stream: the response is already cut.
    res.destroy();
  }
}
