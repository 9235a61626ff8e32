// RedisStore's change feed: one pub/sub connection per store (a duplicate of the user's client) that hears every job change under the prefix.
import { ChangeFeed } from './change-feed.js';

/**
 * What the feed uses of its connection: an ioredis client (`Redis` or `Cluster`), described by
 * shape so that only redis.ts imports ioredis (an optional peer).
 */
export interface SubscriberConnection {
  on(event: 'pmessage', listener: (pattern: string, channel: string, message: string) => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  on(event: 'close' | 'ready', listener: () => void): unknown;
  psubscribe(pattern: string): Promise<unknown>;
  disconnect(): void;
}

/** Glob characters PSUBSCRIBE would read in a prefix, escaped so the pattern matches the prefix literally. */
function escapeGlob(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}

/**
 * The scripts that change what a watcher shows PUBLISH on the job's own hash key as channel
 * (`p + 'job:{<id>}'`, see redis-scripts.ts), inside the script: no round trip of its own, and the
 * message goes out only if the change was applied. This feed PSUBSCRIBEs to `p + 'job:{*}'` and
 * hands each id to the listeners.
 *
 * ioredis resubscribes by itself after a reconnect, but what was published while the connection
 * was down is lost: once the connection is ready again, the feed subscribes (a no-op when ioredis
 * did already; its reply proves the subscription is live on this connection) and then tells the
 * listeners `null`, so every watcher reads its job again.
 */
export class RedisChangeFeed extends ChangeFeed {
  readonly #subscriber: SubscriberConnection;
  readonly #pattern: string;
  readonly ready: Promise<void>;
  #lost = false;
  #closed = false;

  /** `subscriber`: a connection of its own (`client.duplicate()`): one in subscriber mode takes no other commands. */
  constructor(subscriber: SubscriberConnection, prefix: string, onError: (err: Error) => void) {
    super();
    this.#subscriber = subscriber;
    this.#pattern = `${escapeGlob(prefix)}job:{*}`;
    const start = prefix.length + 'job:{'.length;
    this.#subscriber.on('pmessage', (_pattern: string, channel: string) => {
      const id = channel.slice(start, -1);
      this.tell(id);
    });
    // Without a listener, ioredis prints every connection error of this connection.
    this.#subscriber.on('error', onError);
    this.#subscriber.on('close', () => {
      this.#lost = true;
    });
    this.#subscriber.on('ready', () => {
      if (!this.#lost || this.#closed) return;
      this.#lost = false;
      this.#subscriber.psubscribe(this.#pattern).then(
        () => {
          this.tell(null);
        },
        (err: unknown) => onError(err as Error),
      );
    });
    this.ready = this.#subscriber.psubscribe(this.#pattern).then(() => undefined);
    this.ready.catch(() => this.close());
  }

  /** Closes the connection this feed opened (never the client it was duplicated from). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.forgetListeners();
    this.#subscriber.disconnect();
  }
}
