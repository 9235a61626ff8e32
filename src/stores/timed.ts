// Wraps the user's store so that no call the core makes can hang: each one fails after `storeTimeout`.
import type { Store } from './store.js';
import { IDEMPOTENCY_METHODS, JOB_METHODS, OPTIONAL_JOB_METHODS } from './store.js';

class StoreTimeoutError extends Error {
  readonly code = 'BGRS_STORE_TIMEOUT';
  constructor(method: string, ms: number) {
    super(`the store did not answer ${method}() within ${ms} ms`);
  }
}

// Every store method: one left out would still be reached through the prototype, but with no timeout.
const METHODS = [...JOB_METHODS, ...OPTIONAL_JOB_METHODS, ...IDEMPOTENCY_METHODS] as const;

/**
 * A client that queues commands while disconnected (ioredis' offline queue) or a pool waiting for
 * a connection would otherwise hold a request until its client gives up; with this, a store
 * outage becomes a prompt 503 with Retry-After. The late answer, if any, is ignored.
 */
export function withTimeouts(store: Store, ms: number): Store {
  const timed = Object.create(store) as Store;
  for (const method of METHODS) {
    // The guard's methods, readRequest and restartJob are optional: a store without them stays without them.
    if (typeof store[method] !== 'function') continue;
    const call = (store[method] as (...args: unknown[]) => Promise<unknown>).bind(store);
    (timed as unknown as Record<string, unknown>)[method] = (...args: unknown[]): Promise<unknown> => {
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new StoreTimeoutError(method, ms)), ms);
      });
      const work = call(...args);
      return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
    };
  }
  // Forwarded as it is, bound to the store (which keeps its one subscription on itself), and with no
  // timeout: a subscription that is late is still one, and its caller (the executor's watchers)
  // bounds the wait itself and drops a subscription that lands after it gave up.
  if (typeof store.watchChanges === 'function') timed.watchChanges = store.watchChanges.bind(store);
  return timed;
}
