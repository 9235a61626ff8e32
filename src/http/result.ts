// Serves a finished job's captured response: status, headers and body bytes, streamed from the store.
import type { ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Job, JobResponse } from '../model/job.js';
import { applyHead } from '../replay/head.js';

/**
 * A stored result belongs to one job's caller: a shared cache must never keep it for others. So
 * `public` becomes `private`, the shared-cache directives (`s-maxage`, `proxy-revalidate`) go,
 * and the rest (max-age, no-cache, immutable, …) stays as the handler set it.
 */
export function privateCacheControl(value: string): string {
  const kept: string[] = [];
  let restricted = false;
  for (const part of value.split(',')) {
    const directive = part.trim();
    const name = directive.split('=')[0]!.trim().toLowerCase();
    if (name === '' || name === 's-maxage' || name === 'proxy-revalidate') continue;
    if (name === 'public') {
      kept.push('private');
      restricted = true;
      continue;
    }
    if (name === 'private' || name === 'no-store') restricted = true;
    kept.push(directive);
  }
  if (!restricted) kept.unshift('private');
  return [...new Set(kept)].join(', ');
}

function mergeVary(current: number | string | string[] | undefined, add: string[]): string {
  const names =
    current === undefined
      ? []
      : (Array.isArray(current) ? current.join(',') : String(current))
          .split(',')
          .map((name) => name.trim())
          .filter(Boolean);
  if (names.includes('*')) return '*';
  const lower = new Set(names.map((name) => name.toLowerCase()));
  for (const name of add) if (!lower.has(name.toLowerCase())) names.push(name);
  return names.join(', ');
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
  applyHead(res, response.headers, { replayCookies });
  if (extra) for (const [name, value] of Object.entries(extra)) res.setHeader(name, value);
  if (!bodyless(response.status)) res.setHeader('Content-Length', String(response.size));
  if (job.expiresAt) res.setHeader('Expires', new Date(job.expiresAt).toUTCString());
  const cacheControl = res.getHeader('cache-control');
  res.setHeader('Cache-Control', cacheControl === undefined ? 'no-store' : privateCacheControl(String(cacheControl)));
  // Who may read it depends on the caller's credentials: a cache must key on them.
  if (job.owner !== null) res.setHeader('Vary', mergeVary(res.getHeader('vary'), ['Authorization', 'Cookie']));
  try {
    await pipeline(Readable.from(body, { objectMode: false }), res);
  } catch {
    // The client went away mid-download, or the store failed mid-stream: the response is already cut.
    res.destroy();
  }
}
