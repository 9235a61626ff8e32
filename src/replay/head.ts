// Writes a captured response head onto a ServerResponse: for the waiting client and for a replayed result.
import type { ServerResponse } from 'node:http';
import { HOP_BY_HOP } from './capture.js';

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
