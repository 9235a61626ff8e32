// The Idempotency-Key guard's options: their types, defaults and validation.
import type { Request } from 'express';
import { checkKnown } from '../util/known-options.js';

export interface IdempotencyOptions {
  /** Whether a request without an `Idempotency-Key` is refused with 400 `idempotency-key-missing`. Defaults to `false`. */
  required: boolean;
  /** The methods the guard applies to; others pass untouched. Defaults to `['POST', 'PATCH']`. */
  methods: string[];
  /** How long a key and its stored response are kept, in ms; then the key is new again. Defaults to 24 hours. */
  ttl: number;
  /** How long a claim survives without renewal, in ms (renewed every third of it while the request runs), so a crashed process frees its keys. Defaults to `30000`. */
  lease: number;
  /** Which responses are stored and replayed; an excluded status frees the key instead. Defaults to every status. */
  storeResponse: (status: number) => boolean;
  /** Replaces the default fingerprint (method, path, canonical query, body digest). Defaults to none. */
  fingerprint: ((req: Request) => string | Promise<string>) | undefined;
  /**
   * Who a key belongs to: two scopes never share a record. Defaults to the bgrs `owner`, and for a
   * caller without one to a digest of its `Authorization` and `Cookie` headers (never stored in clear).
   */
  scope: ((req: Request) => string | null | undefined | Promise<string | null | undefined>) | undefined;
}

export interface GuardConfig extends Omit<IdempotencyOptions, 'methods'> {
  methods: ReadonlySet<string>;
}

const KNOWN: ReadonlyArray<keyof IdempotencyOptions> = ['required', 'methods', 'ttl', 'lease', 'storeResponse', 'fingerprint', 'scope'];

export function parseIdempotencyOptions(input: Partial<IdempotencyOptions> | undefined, where: string): GuardConfig {
  const options = input ?? {};
  if (typeof options !== 'object' || options === null) throw new TypeError(`${where}: options must be an object.`);
  checkKnown(where, options, KNOWN);
  const methods = options.methods ?? ['POST', 'PATCH'];
  if (!Array.isArray(methods) || methods.some((m) => typeof m !== 'string')) throw new TypeError(`${where}: \`methods\` must be an array of method names.`);
  const config: GuardConfig = {
    required: options.required ?? false,
    methods: new Set(methods.map((m) => m.toUpperCase())),
    ttl: options.ttl ?? 24 * 3_600_000,
    lease: options.lease ?? 30_000,
    storeResponse: options.storeResponse ?? (() => true),
    fingerprint: options.fingerprint,
    scope: options.scope,
  };
  if (typeof config.required !== 'boolean') throw new TypeError(`${where}: \`required\` must be a boolean.`);
  for (const name of ['ttl', 'lease'] as const) {
    if (typeof config[name] !== 'number' || !(config[name] > 0) || !Number.isFinite(config[name])) {
      throw new TypeError(`${where}: \`${name}\` must be a positive number of milliseconds, received \`${String(config[name])}\`.`);
    }
  }
  for (const name of ['storeResponse', 'fingerprint', 'scope'] as const) {
    if (config[name] !== undefined && typeof config[name] !== 'function') throw new TypeError(`${where}: \`${name}\` must be a function.`);
  }
  return config;
}
