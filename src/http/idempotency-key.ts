// Idempotency-Key syntax (IETF draft-07 sf-string, or a Stripe-style bare token) and the request fingerprint.
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { PARAM } from './trigger.js';

const MAX_KEY = 255;

/**
 * The key in an `Idempotency-Key` header, or `null` when it is malformed. Accepted: an sf-string
 * (`"abc"`, RFC 8941, with `\"` and `\\` escapes) or a bare value; either way 1–255 visible ASCII
 * characters. A bare value may not contain `"` or `,` (a comma reads as a list, which is how Node
 * joins two headers).
 */
export function parseIdempotencyKey(header: string | string[] | undefined): string | null {
  if (typeof header !== 'string') return null;
  const value = header.trim();
  if (value.startsWith('"')) {
    let key = '';
    for (let i = 1; i < value.length; i++) {
      const c = value.charCodeAt(i);
      if (c === 0x22) return i === value.length - 1 && key.length >= 1 && key.length <= MAX_KEY ? key : null;
      if (c === 0x5c) {
        const escaped = value[++i];
        if (escaped !== '"' && escaped !== '\\') return null;
        key += escaped;
      } else if (c < 0x21 || c > 0x7e) {
        return null;
      } else {
        key += value[i];
      }
    }
    return null;
  }
  if (value.length < 1 || value.length > MAX_KEY) return null;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x22 || c === 0x2c) return null;
  }
  return value;
}

/** JSON with object keys sorted at every depth, so `{a,b}` and `{b,a}` fingerprint alike. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object' && !(value instanceof Date) && !Buffer.isBuffer(value)) {
    const entries = Object.keys(value as object)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${canonicalJson((value as Record<string, unknown>)[key])}`);
    return `{${entries.join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * The query string with `bgrs` removed and the pairs sorted: `?b=2&a=1` and `?a=1&b=2&bgrs=yes`
 * are the same request. With a custom trigger, `bgrs` is an ordinary parameter and is kept.
 */
function canonicalQuery(url: string, keepParam: boolean): string {
  const q = url.indexOf('?');
  if (q === -1) return '';
  const query = url.slice(q + 1);
  // The trigger parameter is the one spelled `bgrs` as written (see bgrsValues).
  const params = new URLSearchParams(
    keepParam
      ? query
      : query
          .split('&')
          .filter((pair) => pair !== PARAM && !pair.startsWith(`${PARAM}=`))
          .join('&'),
  );
  params.sort();
  return params.toString();
}

function mediaType(header: string | string[] | undefined): string {
  const value = Array.isArray(header) ? header[0] : header;
  return (value ?? '').split(';')[0]!.trim().toLowerCase();
}

const FORM = 'application/x-www-form-urlencoded';

/** A form's pairs in one order, with `a[]`, `a[0]` and `a` read alike (as qs and querystring parse them). */
function canonicalForm(pairs: Array<[string, string]>): string {
  // An explicit index (`a[1]`) orders the items as qs does; without one, the order they came in.
  const normalised = pairs.map(([key, value], position) => {
    const index = /\[(\d+)\]/.exec(key);
    return { name: key.replace(/\[\d*\]/g, ''), value, order: index ? Number(index[1]) : position };
  });
  normalised.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.order - b.order));
  return JSON.stringify(normalised.map(({ name, value }) => [name, value]));
}

/** A parsed form (`express.urlencoded`, extended or not) back into name/value pairs, nested names in brackets. */
function formPairs(value: unknown, prefix: string, out: Array<[string, string]>): Array<[string, string]> {
  if (Array.isArray(value)) {
    for (const item of value) formPairs(item, prefix, out);
  } else if (value !== null && typeof value === 'object') {
    for (const key of Object.keys(value)) formPairs((value as Record<string, unknown>)[key], prefix ? `${prefix}[${key}]` : key, out);
  } else {
    out.push([prefix, value === null || value === undefined ? '' : String(value)]);
  }
  return out;
}

/** The Buffer encoding of a `charset` parameter a text parser decoded with (utf-8 when unknown). */
function charsetOf(header: string | string[] | undefined): BufferEncoding {
  const value = Array.isArray(header) ? header[0] : header;
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(value ?? '')?.[1]?.toLowerCase();
  if (charset === 'iso-8859-1' || charset === 'latin1' || charset === 'us-ascii' || charset === 'ascii') return 'latin1';
  if (charset === 'utf-16le' || charset === 'utf16le') return 'utf16le';
  return 'utf8';
}

const JSON_START = new Set([...'{["-0123456789tfn'].map((c) => c.charCodeAt(0)));

/** JSON text, canonical, or `null` when the bytes are not JSON. */
function jsonOf(bytes: Buffer): string | null {
  let i = 0;
  while (i < bytes.length && (bytes[i] === 0x20 || bytes[i] === 0x09 || bytes[i] === 0x0a || bytes[i] === 0x0d)) i++;
  if (i === bytes.length || !JSON_START.has(bytes[i]!)) return null;
  try {
    return `json:${canonicalJson(JSON.parse(bytes.toString('utf8')))}`;
  } catch {
    return null;
  }
}

/**
 * Bytes as the fingerprint takes them: a form's canonical pairs, JSON text as canonical JSON
 * whatever the Content-Type claims (a parser may read text/plain as JSON, or keep JSON as bytes),
 * anything else as it is.
 */
function fromBytes(type: string, bytes: Buffer): Buffer | string {
  if (type === FORM) return `form:${canonicalForm([...new URLSearchParams(bytes.toString('utf8'))])}`;
  return jsonOf(bytes) ?? bytes;
}

/**
 * What the fingerprint takes of the body, the same whether a body parser ran before the guard or
 * not, and whichever parser it was: bytes or text a parser kept are taken as the bytes they came
 * from, a parsed form as its pairs, any other parsed value as canonical JSON.
 */
function bodyDigestInput(contentType: string | string[] | undefined, raw: Buffer | null, parsed: unknown, preParsed: boolean): Buffer | string | null {
  const type = mediaType(contentType);
  if (!preParsed) return raw ? fromBytes(type, raw) : null;
  if (Buffer.isBuffer(parsed)) return fromBytes(type, parsed);
  if (typeof parsed === 'string') return fromBytes(type, Buffer.from(parsed, charsetOf(contentType)));
  if (type === FORM && parsed !== null && typeof parsed === 'object') return `form:${canonicalForm(formPairs(parsed, '', []))}`;
  return `json:${canonicalJson(parsed)}`;
}

/**
 * The default fingerprint: method, path, canonical query and the body (see bodyDigestInput). The
 * `bgrs` parameter and the `Prefer` header are not part of it: detaching is how the client wants
 * the answer delivered, not a different request.
 */
export function defaultFingerprint(
  req: IncomingMessage & { originalUrl?: string },
  raw: Buffer | null,
  parsed: unknown,
  preParsed: boolean,
  keepParam = false,
): string {
  const url = req.originalUrl ?? req.url ?? '/';
  const q = url.indexOf('?');
  const hash = createHash('sha256');
  hash.update(`${req.method}\n${q === -1 ? url : url.slice(0, q)}\n${canonicalQuery(url, keepParam)}\n`);
  const body = bodyDigestInput(req.headers['content-type'], raw, parsed, preParsed);
  // Raw bytes are tagged like the canonical forms, so no body can pass for another kind.
  if (typeof body === 'string') hash.update(body);
  else if (body !== null) hash.update('raw:').update(body);
  return hash.digest('base64url');
}

/** The store key of a record: scope, method, path and key, hashed to a fixed length. */
export function recordKey(scope: string | null, method: string, url: string, key: string): string {
  const q = url.indexOf('?');
  return createHash('sha256')
    .update(JSON.stringify([scope, method, q === -1 ? url : url.slice(0, q), key]))
    .digest('base64url');
}
