// What the change feeds of the shared stores have in common: their listeners, and the one feed a store keeps open while anyone watches.
import type { ChangeListener } from './store.js';

/** A store's connection to its backend's notifications, as RedisChangeFeed and PostgresChangeFeed implement it. */
export abstract class ChangeFeed {
  readonly #listeners = new Set<ChangeListener>();
  /** Resolves once the first subscription is live; rejects when it failed (the feed is then closed). */
  abstract readonly ready: Promise<void>;

  add(listener: ChangeListener): void {
    this.#listeners.add(listener);
  }

  remove(listener: ChangeListener): void {
    this.#listeners.delete(listener);
  }

  /** Whether no listener is left: the store then closes the feed, so its connection never outlives its watchers. */
  get idle(): boolean {
    return this.#listeners.size === 0;
  }

  /** Tells every listener of a change (`null`: changes may have been missed). */
  protected tell(id: string | null): void {
    for (const listener of [...this.#listeners]) listener(id);
  }

  protected forgetListeners(): void {
    this.#listeners.clear();
  }

  /** Releases the feed's connection (never the user's client or pool). */
  abstract close(): void;
}

/**
 * The one feed of a store: opened by the first watcher, closed with the last one (background.close()
 * unwatches, so the app's own client or pool can be closed without closing the store first) or
 * with the store. A feed that failed to subscribe is dropped, and the next watcher opens another.
 */
export class FeedHolder {
  #feed: ChangeFeed | undefined;

  constructor(private readonly open: () => ChangeFeed) {}

  async watch(listener: ChangeListener): Promise<() => Promise<void>> {
    const feed = (this.#feed ??= this.open());
    feed.add(listener);
    try {
      await feed.ready;
    } catch (err) {
      if (this.#feed === feed) this.#feed = undefined;
      throw err;
    }
    return async () => {
      feed.remove(listener);
      if (feed.idle && this.#feed === feed) {
        this.#feed = undefined;
        feed.close();
      }
    };
  }

  close(): void {
    this.#feed?.close();
    this.#feed = undefined;
  }
}
