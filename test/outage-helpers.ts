// Outage tooling: a private redis-server child and a cuttable TCP proxy, so outage tests never touch the shared services.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { type AddressInfo, createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A port nobody listens on right now: the kernel picks one, and we give it back at once. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Rejects with a message naming `what` when `promise` does not settle within `ms`: no wait in these tests is open-ended. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * Whether `redis-server` can be run here. Missing: a failure under CI=true (a CI run must not pass
 * by skipping), a loud skip otherwise, the same rule as serviceAvailable() in services.ts.
 */
export function redisServerAvailable(): boolean {
  const probe = spawnSync('redis-server', ['--version'], { encoding: 'utf8', timeout: 5000 });
  if (probe.status === 0 && /Redis server/i.test(probe.stdout)) return true;
  const message = 'redis-server cannot be run (`redis-server --version` failed)';
  if (process.env.CI === 'true' || process.env.CI === '1') throw new Error(`${message}: CI=true, so this is a failure, not a skip.`);
  console.warn(`\n!!!!!!!! ${message}: SKIPPING the Redis outage tests (set CI=true to make this a failure) !!!!!!!!\n`);
  return false;
}

/**
 * A redis-server of our own on a fixed free port. Its data lives in an append-only file fsynced on
 * every write, so a SIGKILL loses nothing that Redis had acknowledged and a restart on the same
 * port brings the same data back: what a production Redis with persistence does after a crash.
 */
export class RedisServer {
  readonly dir = mkdtempSync(join(tmpdir(), 'bgrs-outage-redis-'));
  #child: ChildProcess | undefined;

  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.#child !== undefined && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** Starts the server and resolves once it accepts connections (it says so on stdout). */
  async start(): Promise<void> {
    const args = [
      '--port',
      String(this.port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'yes',
      '--appendfsync',
      'always',
      '--dir',
      this.dir,
      '--daemonize',
      'no',
    ];
    const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    let output = '';
    await within(
      new Promise<void>((resolve, reject) => {
        const onData = (chunk: Buffer): void => {
          output += chunk.toString();
          if (/Ready to accept connections/.test(output)) {
            child.stdout!.off('data', onData);
            // Keep draining so a chatty server never blocks on a full pipe.
            child.stdout!.resume();
            resolve();
          }
        };
        child.stdout!.on('data', onData);
        child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
        child.once('error', reject);
        child.once('exit', (code, signal) => reject(new Error(`redis-server exited (${code ?? signal}) before it was ready:\n${output}`)));
      }),
      5000,
      `redis-server on port ${this.port}`,
    ).catch((err: unknown) => {
      child.kill('SIGKILL');
      throw new Error(`${(err as Error).message}\n${output}`);
    });
  }

  /** Stops the server with `signal` and resolves once it has exited (SIGKILL after 5 s). */
  async stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.#child;
    if (!child || !this.running) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    try {
      await within(exited, 5000, `redis-server ${child.pid} after ${signal}`);
    } catch {
      child.kill('SIGKILL');
      await within(exited, 5000, `redis-server ${child.pid} after SIGKILL`);
    }
  }

  /** Sends a signal without waiting for an exit: SIGSTOP freezes the server with its connections open, SIGCONT thaws it. */
  signal(signal: NodeJS.Signals): void {
    if (this.running) this.#child!.kill(signal);
  }

  /** Stops the server and removes its data directory. */
  async destroy(): Promise<void> {
    await this.stop('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy in front of a service (127.0.0.1 only). `cut()` destroys every connection through it
 * and stops listening, so new connections are refused, as when the server goes down; `restore()`
 * listens on the same port again. The app under test only ever knows the proxy's port.
 */
export class TcpProxy {
  readonly #sockets = new Set<Socket>();
  readonly #held: Socket[] = [];
  #frozen = false;
  #server: Server | undefined;
  port = 0;

  constructor(
    readonly targetHost: string,
    readonly targetPort: number,
  ) {}

  get url(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Listens (on a new free port the first time, the same port after a cut). */
  async restore(): Promise<void> {
    if (this.#server) return;
    const server = createServer((client) => {
      if (this.#frozen) {
        // Accepted, never answered, as behind a dead link: it waits here for thaw().
        this.#sockets.add(client);
        client.on('error', () => undefined);
        client.pause();
        this.#held.push(client);
        return;
      }
      this.#connect(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.port = (server.address() as AddressInfo).port;
    this.#server = server;
  }

  /**
   * A dead link rather than a dead server: connections stay open but nothing passes either way,
   * and new ones are accepted but never answered, until thaw().
   */
  freeze(): void {
    this.#frozen = true;
    for (const socket of this.#sockets) socket.pause();
  }

  /** Lets everything through again, what was held included. */
  thaw(): void {
    this.#frozen = false;
    for (const socket of this.#sockets) socket.resume();
    for (const client of this.#held.splice(0)) {
      this.#sockets.delete(client);
      if (!client.destroyed) this.#connect(client);
    }
  }

  #connect(client: Socket): void {
    const upstream = createConnection({ host: this.targetHost, port: this.targetPort });
    for (const socket of [client, upstream]) {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
      // A cut resets both ends: that is the point, not an error of the test.
      socket.on('error', () => undefined);
    }
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
    // A client held while frozen was paused.
    client.resume();
  }

  /** Stops accepting and destroys every open connection at once. */
  async cut(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    for (const socket of this.#sockets) socket.destroy();
    this.#sockets.clear();
    this.#held.length = 0;
    this.#frozen = false;
    await within(closed, 5000, 'closing the proxy');
  }

  /** How many sockets (both ends) are open through the proxy. */
  get open(): number {
    return this.#sockets.size;
  }
}
