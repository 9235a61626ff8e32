// Real services for tests: reachable → use them; unreachable → fail under CI=true, skip loudly otherwise.
import { createConnection } from 'node:net';

export const REDIS_URL = process.env.BGRS_TEST_REDIS ?? 'redis://127.0.0.1:6379';
export const POSTGRES_URL = process.env.BGRS_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';

function reachable(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = createConnection({ host: hostname, port: Number(port) });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(2000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * Resolves `true` when the service answers. When it does not: throws under `CI=true` (a CI run
 * must not pass by skipping), and otherwise prints a loud warning and resolves `false` so the
 * caller skips.
 */
export async function serviceAvailable(name: string, url: string): Promise<boolean> {
  if (await reachable(url)) return true;
  const message = `${name} is not reachable at ${url}`;
  if (process.env.CI === 'true' || process.env.CI === '1') throw new Error(`${message}: CI=true, so this is a failure, not a skip.`);
  console.warn(`\n!!!!!!!! ${message}: SKIPPING its tests (set CI=true to make this a failure) !!!!!!!!\n`);
  return false;
}
