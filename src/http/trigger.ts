// Decides from the query string and the Prefer header whether a request asks to be detached.

import type { IncomingMessage } from 'node:http';
import type { Request } from 'express';
import type { Configuration } from '../config/options.js';

export const PARAM = 'bgrs';
const YES = new Set(['yes', '1', 'true']);
const NO = new Set(['no', '0', 'false']);

export interface PreferOptions {
  respondAsync: boolean;
  /** `wait=N` in seconds, when given and valid. */
  wait: number | undefined;
}

/**
 * The decoded `bgrs` values in a raw query string (`a=1&bgrs=yes`), or `undefined` when the
 * parameter is absent. Parsed by hand so the fast path (no parameter) costs one `indexOf`.
 */
export function bgrsValues(url: string): string[] | undefined {
  const q = url.indexOf('?');
  if (q === -1 || url.indexOf(PARAM, q) === -1) return undefined;
  const values: string[] = [];
  for (const pair of url.slice(q + 1).split('&')) {
    const eq = pair.indexOf('=');
    // The name is matched as written: `%62grs` is not the parameter, here or anywhere.
    const key = eq === -1 ? pair : pair.slice(0, eq);
    if (key === PARAM) values.push(eq === -1 ? '' : safeDecode(pair.slice(eq + 1)));
  }
  return values.length ? values : undefined;
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return text;
  }
}

/** `true`/`false` for a known value, `null` for one that deserves a 400. */
export function parseBgrsValue(values: string[]): boolean | null {
  let answer: boolean | null = null;
  for (const raw of values) {
    const value = raw.trim().toLowerCase();
    const current = YES.has(value) ? true : NO.has(value) ? false : null;
    if (current === null || (answer !== null && answer !== current)) return null;
    answer = current;
  }
  return answer;
}

/** Removes every `bgrs` parameter from a URL, keeping the others exactly as they were written. */
export function stripParam(url: string): string {
  const q = url.indexOf('?');
  if (q === -1 || url.indexOf(PARAM, q) === -1) return url;
  const kept = url
    .slice(q + 1)
    .split('&')
    .filter((pair) => {
      const eq = pair.indexOf('=');
      return (eq === -1 ? pair : pair.slice(0, eq)) !== PARAM;
    });
  return kept.length ? `${url.slice(0, q)}?${kept.join('&')}` : url.slice(0, q);
}

/** Reads the preferences bgrs cares about from every `Prefer` header (RFC 7240). */
export function parsePrefer(header: string | string[] | undefined): PreferOptions {
  const result: PreferOptions = { respondAsync: false, wait: undefined };
  if (header === undefined) return result;
  for (const line of Array.isArray(header) ? header : [header]) {
    for (const item of line.split(',')) {
      const [pref = ''] = item.split(';');
      const eq = pref.indexOf('=');
      const name = (eq === -1 ? pref : pref.slice(0, eq)).trim().toLowerCase();
      if (name === 'respond-async') result.respondAsync = true;
      else if (name === 'wait' && eq !== -1) {
        const seconds = Number(
          pref
            .slice(eq + 1)
            .trim()
            .replace(/^"|"$/g, ''),
        );
        if (Number.isFinite(seconds) && seconds >= 0) result.wait = seconds;
      }
    }
  }
  return result;
}

/** Whether to detach; `wait` is the `wait=N` of `Prefer: respond-async, wait=N`. */
export type TriggerDecision = { detach: boolean; byPrefer: boolean; invalid: boolean; wait?: number };

const NOT_TRIGGERED: TriggerDecision = { detach: false, byPrefer: false, invalid: false };

/** The default trigger: `?bgrs=yes|1|true` (any case) or `Prefer: respond-async`. */
export function defaultDecision(req: IncomingMessage): TriggerDecision {
  const values = bgrsValues(req.url ?? '');
  if (values !== undefined) {
    const answer = parseBgrsValue(values);
    if (answer === null) return { detach: false, byPrefer: false, invalid: true };
    if (answer) return { detach: true, byPrefer: false, invalid: false };
    return NOT_TRIGGERED;
  }
  const prefer = req.headers.prefer;
  if (prefer !== undefined) {
    const parsed = parsePrefer(prefer);
    if (parsed.respondAsync) return { detach: true, byPrefer: true, invalid: false, wait: parsed.wait };
  }
  return NOT_TRIGGERED;
}

/** The one trigger rule of an instance: the app's `trigger` when set, else the default. */
export function decide(config: Configuration, req: Request): TriggerDecision {
  if (config.trigger) return { detach: Boolean(config.trigger(req)), byPrefer: false, invalid: false };
  return defaultDecision(req);
}
