// PostgresStore's change notifications: the coalesced NOTIFY after its writes, and the feed (one pooled connection per store that LISTENs, and comes back after an error).
import { ChangeFeed } from './change-feed.js';

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

/** A NOTIFY payload may hold 8000 bytes; a batch of ids stays below that. */
const PAYLOAD_BYTES = 7500;

/**
 * Sends the ids of jobs that changed as NOTIFY payloads (JSON arrays of ids), one statement at a
 * time: ids that come while one is on its way go together in the next. Not inside the writes:
 * PostgreSQL serialises the commits of notifying transactions, so one notify in flight per store
 * costs the writes far less than a notify in each of them (see notifyChanges in postgres-sql.ts).
 * A notify that fails is dropped (the watchers' safety poll covers it); it never fails a write.
 */
export class ChangeNotifier {
  #pending = new Set<string>();
  #sending = false;

  constructor(
    private readonly send: (payload: string) => Promise<unknown>,
    private readonly onError: (err: Error) => void,
  ) {}

  /** Announces that job `id` changed; call it once the write committed. */
  changed(id: string): void {
    this.#pending.add(id);
    this.#flush();
  }

  #flush(): void {
    if (this.#sending || this.#pending.size === 0) return;
    const batch: string[] = [];
    let bytes = 2;
    for (const id of this.#pending) {
      const size = Buffer.byteLength(JSON.stringify(id)) + 1;
      if (batch.length > 0 && bytes + size > PAYLOAD_BYTES) break;
      batch.push(id);
      bytes += size;
    }
    for (const id of batch) this.#pending.delete(id);
    this.#sending = true;
    this.send(JSON.stringify(batch))
      .catch((err: unknown) => this.onError(err as Error))
      .finally(() => {
        this.#sending = false;
        this.#flush();
      });
  }
}

/** The ids of a payload ChangeNotifier sent; none for a payload it did not send. */
function idsOf(payload: string): string[] {
  try {
    const ids: unknown = JSON.parse(payload);
    return Array.isArray(ids) ? ids.filter((id): id is string => typeof id === 'string') : [];
  } catch {
    return [];
  }
}

/**
 * The feed of watchChanges: one client of the user's pool, LISTENing on the channel that
 * ChangeNotifier notifies (of every PostgresStore on these tables, in any process).
 * When the connection fails (the server restarted, the backend was terminated), the client is
 * destroyed (never handed back to the pool with a LISTEN on it) and another is taken, after a
 * backoff; once it LISTENs, the listeners get `null`, since what was notified in between is lost.
 */
export class PostgresChangeFeed extends ChangeFeed {
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
    super();
    this.#pool = pool;
    this.#channel = channel;
    this.#listen = listen;
    this.#onError = onError;
    this.ready = this.#connect();
    this.ready.catch(() => this.close());
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
      for (const id of idsOf(message.payload)) this.tell(id);
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
          this.tell(null);
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
    this.forgetListeners();
    const client = this.#client;
    this.#client = undefined;
    client?.release(true);
  }
}
