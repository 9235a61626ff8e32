// The store matrix for end-to-end tests: memory always, Redis and PostgreSQL when reachable (required under CI).
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { MemoryStore, type Store } from '../src/index.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from './services.js';

export interface StoreKind {
  name: string;
  /** A fresh store in its own namespace (key prefix or table prefix). */
  create(): Promise<Store>;
  /** Removes everything the store created, and closes what this helper opened. */
  destroy(store: Store): Promise<void>;
}

const memory: StoreKind = {
  name: 'MemoryStore',
  create: async () => new MemoryStore(),
  destroy: async (store) => store.close?.(),
};

/** Deletes every key under a prefix (SCAN, not KEYS, so a shared server is not blocked). */
export async function dropRedisPrefix(client: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await client.del(...keys);
  } while (cursor !== '0');
}

/** Drops the tables a PostgresStore created under a table prefix. */
export async function dropPostgresTables(db: { query(sql: string): Promise<unknown> }, table: string): Promise<void> {
  for (const suffix of ['logs', 'chunks', 'keys', 'jobs']) await db.query(`DROP TABLE IF EXISTS "${table}_${suffix}" CASCADE`);
}

async function redisKind(): Promise<StoreKind> {
  const { Redis } = await import('ioredis');
  const { RedisStore } = await import('../src/stores/redis.js');
  const opened = new Map<Store, { client: InstanceType<typeof Redis>; prefix: string }>();
  return {
    name: 'RedisStore',
    async create() {
      const client = new Redis(REDIS_URL);
      const prefix = `bgrs-e2e-${randomUUID()}:`;
      const store = new RedisStore({ client, prefix });
      opened.set(store, { client, prefix });
      return store;
    },
    async destroy(store) {
      const { client, prefix } = opened.get(store)!;
      await store.close?.();
      await dropRedisPrefix(client, prefix);
      await client.quit();
    },
  };
}

async function postgresKind(): Promise<StoreKind> {
  const { default: pg } = await import('pg');
  const { PostgresStore } = await import('../src/stores/postgres.js');
  const opened = new Map<Store, { pool: InstanceType<typeof pg.Pool>; table: string }>();
  return {
    name: 'PostgresStore',
    async create() {
      const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 10 });
      const table = `bgrs_e2e_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
      const store = new PostgresStore({ pool, table });
      opened.set(store, { pool, table });
      return store;
    },
    async destroy(store) {
      const { pool, table } = opened.get(store)!;
      await store.close?.();
      await dropPostgresTables(pool, table);
      await pool.end();
    },
  };
}

/** Every store the end-to-end tests run on, here and now. */
export async function storeKinds(): Promise<StoreKind[]> {
  const kinds = [memory];
  if (await serviceAvailable('Redis', REDIS_URL)) kinds.push(await redisKind());
  if (await serviceAvailable('PostgreSQL', POSTGRES_URL)) kinds.push(await postgresKind());
  return kinds;
}
