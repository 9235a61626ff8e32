// PostgresStore's change feed: one pooled connection per store that LISTENs to every job change of its tables, and comes back after an error.
import type { ChangeListener } from './store.js';

/** A `pg` notification, as the feed reads it. */
interface Notification {
  channel: string;
  payload?: string;
}

/**
 * What the feed uses of a pooled `pg` client, described by shape so that only postgres.ts imports
 * pg (an optional peer).
 */
interface ListenClient {
  on(event: 'notification', listener: (message: Notification) => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  off(event: 'notification', listener: (message: Notification) => void): unknown;
  query(text: string): Promise<unknown>;
  release(destroy?: boolean | Error): void;
}

/** The user's `pg` Pool, as the feed uses it. */
export interface ListenPool {
  connect(): Promise<ListenClient>;
}

/** The first wait before a lost LISTEN connection is opened again, in ms; doubled per failure up to RECONNECT_MAX_MS. */
const RECONNECT_MS = 100;
const RECONNECT_MAX_MS = 5000;

/**
 * The statements that change what a watcher shows call `pg_notify(channel, id)` (see
 * postgres-sql.ts); this feed holds one client of the user's pool, LISTENing on that channel.
 * When the connection fails (the server restarted, the backend was terminated), the client is
 * destroyed (never handed back to the pool with a LISTEN on it) and another is taken, after a
 * backoff; once it LISTENs, the listeners get `null`, since what was notified in between is lost.
 */
export class PostgresChangeFeed {
  readonly #listeners = new Set<ChangeListener>();
  readonly #pool: ListenPool;
  readonly #channel: string;
  readonly #listen: string;
  readonly #onError: (err: Error) => void;
  #client: ListenClient | undefined;
  #closed = false;
  #retry: NodeJS.Timeout | undefined;
  #delay = RECONNECT_MS;
  /** Resolves once the first LISTEN is live; rejects when it failed (the feed is then closed). */
  readonly ready: Promise<void>;

  constructor(pool: ListenPool, channel: string, listen: string, onError: (err: Error) => void) {
    this.#pool = pool;
    this.#channel = channel;
    this.#listen = listen;
    this.#onError = onError;
    this.ready = this.#connect();
    this.ready.catch(() => this.close());
  }

  add(listener: ChangeListener): void {
    this.#listeners.add(listener);
  }

  remove(listener: ChangeListener): void {
    this.#listeners.delete(listener);
  }

  async #connect(): Promise<void> {
    const client = await this.#pool.connect();
    if (this.#closed) {
      client.release(true);
      return;
    }
    const lost = (err: Error): void => {
      if (this.#client !== client) return;
      this.#client = undefined;
      client.off('notification', heard);
      // Destroyed, not returned: a pooled connection must not keep listening for its next user.
      client.release(err);
      this.#onError(err);
      this.#reconnect();
    };
    const heard = (message: Notification): void => {
      if (message.channel !== this.#channel || message.payload === undefined) return;
      for (const listener of [...this.#listeners]) listener(message.payload);
    };
    client.on('notification', heard);
    client.on('error', lost);
    this.#client = client;
    try {
      await client.query(this.#listen);
    } catch (err) {
      if (this.#client === client) {
        this.#client = undefined;
        client.release(true);
      }
      throw err;
    }
  }

  #reconnect(): void {
    if (this.#closed) return;
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      this.#connect().then(
        () => {
          this.#delay = RECONNECT_MS;
          if (this.#closed) return;
          for (const listener of [...this.#listeners]) listener(null);
        },
        (err: unknown) => {
          this.#onError(err as Error);
          this.#delay = Math.min(this.#delay * 2, RECONNECT_MAX_MS);
          this.#reconnect();
        },
      );
    }, this.#delay);
    this.#retry.unref();
  }

  /** Gives the connection back destroyed (the pool opens a fresh one when it needs it); never ends the pool. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retry);
    this.#listeners.clear();
    const client = this.#client;
    this.#client = undefined;
    client?.release(true);
  }
}
