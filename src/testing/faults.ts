// A Store wrapper that injects faults: a call that commits and then fails (its reply lost), once or for an outage window.
import type { Store } from '../stores/store.js';

/** The store methods a fault can hit. */
export type StoreMethod = Exclude<keyof Store, 'close'>;

/** What an injected fault rejects with; `committed` says the call was applied before it failed. */
export class InjectedFault extends Error {
  readonly code = 'BGRS_INJECTED_FAULT';
  constructor(
    readonly method: StoreMethod,
    readonly committed: boolean,
  ) {
    super(`injected fault: ${method}() ${committed ? 'was applied, then its reply was lost' : 'failed before it was applied'}`);
  }
}

export interface FaultOptions {
  /** How many calls fail; defaults to 1. Ignored when `forMs` is given. */
  times?: number;
  /** Every call fails for this many ms from now (an outage window) instead of a count. */
  forMs?: number;
  /**
   * With `forMs`: the window opens at the method's first call after `fail()`, not at once. For a
   * call that comes after work of unknown length (a key's completion, once the handler and the
   * job's end are done), so the outage hits it however slow the machine is. Defaults to `false`.
   */
  fromFirstCall?: boolean;
  /** `true` (default): the call is applied, then fails, as when a reply is lost. `false`: it fails without being applied. */
  commit?: boolean;
}

export interface FaultyStore {
  /** The wrapped store: pass it to `bgrs({ store })`. */
  readonly store: Store;
  /** Makes the next calls of `method` fail (see FaultOptions). */
  fail(method: StoreMethod, options?: FaultOptions): void;
  /** Removes every fault. */
  clear(): void;
  /** How many faults were injected so far, per method. */
  readonly injected: Readonly<Partial<Record<StoreMethod, number>>>;
}

interface Fault {
  left: number;
  /** When the window closes; 0 for a count. */
  until: number;
  /** The window's length, while it waits for its first call to open it. */
  pending: number;
  commit: boolean;
}

/**
 * Wraps `store` so tests can make its calls fail the way real backends do: a reset connection or
 * a timeout after the write landed (`commit: true`), or a refused call. Store authors can run the
 * core's fault tests against their own store with it:
 *
 * ```ts
 * const faulty = withFaults(new MyStore());
 * app.use(bgrs({ store: faulty.store }));
 * faulty.fail('finishJob');                       // the next finishJob commits, then rejects
 * faulty.fail('appendResult', { forMs: 2000 });   // an outage of two seconds
 * ```
 */
export function withFaults(store: Store): FaultyStore {
  const faults = new Map<StoreMethod, Fault>();
  const injected: Partial<Record<StoreMethod, number>> = {};
  const wrapped = Object.create(store) as Store;
  const target = store as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;

  const due = (method: StoreMethod): Fault | undefined => {
    const fault = faults.get(method);
    if (!fault) return undefined;
    if (fault.pending > 0) {
      fault.until = Date.now() + fault.pending;
      fault.pending = 0;
    }
    if (fault.until > 0 ? Date.now() >= fault.until : fault.left <= 0) {
      faults.delete(method);
      return undefined;
    }
    fault.left -= 1;
    injected[method] = (injected[method] ?? 0) + 1;
    return fault;
  };

  // The methods the store has, found on it (not from a list): an optional one it lacks
  // (readRequest, restartJob, watchChanges, the guard's) stays absent through the wrapper, so bgrs sees the store's own shape.
  const methods = new Set<string>();
  for (let proto: object | null = store; proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto) as object | null) {
    for (const name of Object.getOwnPropertyNames(proto))
      if (name !== 'constructor' && name !== 'close' && typeof target[name] === 'function') methods.add(name);
  }
  for (const name of methods) {
    const method = name as StoreMethod;
    (wrapped as unknown as Record<string, unknown>)[name] = async (...args: unknown[]): Promise<unknown> => {
      const fault = due(method);
      if (fault && !fault.commit) throw new InjectedFault(method, false);
      const result = await target[name]!.apply(store, args);
      if (fault) throw new InjectedFault(method, true);
      return result;
    };
  }

  return {
    store: wrapped,
    fail(method, options = {}) {
      const forMs = options.forMs ?? 0;
      const later = forMs > 0 && options.fromFirstCall === true;
      faults.set(method, {
        left: forMs > 0 ? Number.POSITIVE_INFINITY : (options.times ?? 1),
        until: forMs > 0 && !later ? Date.now() + forMs : 0,
        pending: later ? forMs : 0,
        commit: options.commit ?? true,
      });
    },
    clear() {
      faults.clear();
    },
    injected,
  };
}
