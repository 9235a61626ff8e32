// Who waits for which job in this process (SSE streams, `wait`), woken by local changes and by the store's own notifications.
import type { Store } from '../stores/store.js';
import type { Logger } from '../util/logger.js';

type Listener = () => void;

/** How long after a failed subscription to the store's notifications the next try comes, in ms. */
const RETRY_MS = 5000;

/**
 * The listeners of one executor, by job id. Local writes wake them through `notify`; when the store
 * can notify (`watchChanges`), one subscription per executor, opened with the first listener, wakes
 * them for changes made by other processes too. While that subscription is not live (not opened
 * yet, failed, or the store cannot notify), `live` is false and watchers keep polling quickly.
 */
export class Watchers {
  readonly #listeners = new Map<string, Set<Listener>>();
  /** Resolves the unsubscribe function of the live subscription. */
  #unwatch: (() => Promise<void>) | undefined;
  #opening = false;
  #closed = false;
  #retry: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: Store,
    private readonly logger: Logger,
    /** How long subscribing may take before it counts as failed (storeTimeout), in ms. */
    private readonly timeoutMs: number,
  ) {}

  /** Whether changes made by other processes reach the listeners now (the store's subscription is live). */
  get live(): boolean {
    return this.#unwatch !== undefined;
  }

  subscribe(id: string, listener: Listener): () => void {
    let set = this.#listeners.get(id);
    if (!set) this.#listeners.set(id, (set = new Set()));
    set.add(listener);
    this.#open();
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.#listeners.get(id) === set) this.#listeners.delete(id);
    };
  }

  /** Wakes the listeners of one job. */
  notify(id: string): void {
    const set = this.#listeners.get(id);
    if (set) for (const listener of [...set]) listener();
  }

  /** Wakes every listener once: changes may have been missed (the subscription was (re)established). */
  notifyAll(): void {
    for (const set of [...this.#listeners.values()]) for (const listener of [...set]) listener();
  }

  /** Drops the store subscription; listeners stay, and only hear local changes from now on. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retry);
    const unwatch = this.#unwatch;
    this.#unwatch = undefined;
    await unwatch?.().catch(() => undefined);
  }

  #open(): void {
    if (this.#closed || this.#opening || this.#unwatch || this.#retry || typeof this.store.watchChanges !== 'function') return;
    this.#opening = true;
    let timer: NodeJS.Timeout | undefined;
    let gaveUp = false;
    const subscribing = this.store.watchChanges((id) => (id === null ? this.notifyAll() : this.notify(id)));
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`the store did not subscribe to its notifications within ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    // A subscription that lands after the deadline (or after close) is not kept: it is dropped at once.
    void subscribing.then(
      (unwatch) => {
        if (gaveUp) void unwatch().catch(() => undefined);
      },
      () => undefined,
    );
    Promise.race([subscribing, deadline])
      .then(
        (unwatch) => {
          if (this.#closed) {
            void unwatch().catch(() => undefined);
            return;
          }
          this.#unwatch = unwatch;
          // Whatever changed before the subscription was live went unheard: every watcher reads again.
          this.notifyAll();
        },
        (err: unknown) => {
          gaveUp = true;
          if (this.#closed) return;
          this.logger.warn(
            `express-bgrs: could not subscribe to the store's change notifications (${(err as Error).message}); watchers poll until it works, retrying in ${RETRY_MS / 1000} s`,
          );
          this.#retry = setTimeout(() => {
            this.#retry = undefined;
            if (this.#listeners.size > 0) this.#open();
          }, RETRY_MS);
          this.#retry.unref();
        },
      )
      .finally(() => {
        clearTimeout(timer);
        this.#opening = false;
      });
  }
}
