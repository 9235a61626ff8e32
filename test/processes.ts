// The app as separate OS processes: a fixture started with tsx that prints JSON lines on stdout (its port once it
// listens, then whatever its handlers report), and the tools to wait for those lines with deadlines.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { QueueAppConfig } from './fixtures/queue-app.js';

const root = new URL('..', import.meta.url).pathname;

/** One JSON line a fixture printed. */
type Event = Record<string, unknown> & { event: string };

export interface Proc {
  /** `http://127.0.0.1:<port>` once it listens; `''` for a process that does not. */
  url: string;
  pid: number;
  /** Every line it printed so far, in order. */
  events: Event[];
  /** The first event (printed so far or later) that matches, or a rejection naming the process after `timeout` ms. */
  next(match: (event: Event) => boolean, timeout?: number): Promise<Event>;
  /** Whether it still runs. */
  alive(): boolean;
  /** Sends `signal` (SIGTERM by default) unless it has exited, and resolves once it has. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

export interface StartOptions {
  /** Its name in messages. */
  name: string;
  /** The event that says it is ready (with `port` when it listens). */
  ready: string;
  /** How long it may take to get ready, in ms (tsx compiles the app first). Defaults to 30 s. */
  readyTimeout?: number;
  /** The default deadline of `next()`, in ms. Defaults to 15 s. */
  timeout?: number;
  /** Added to this process's environment. */
  env?: Record<string, string>;
}

const started = new Set<Proc>();

/** Starts `node --import tsx <script> ...args` in the package root and resolves once it printed `options.ready`. */
export async function startProcess(script: string, args: readonly string[], options: StartOptions): Promise<Proc> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
    cwd: root,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const name = `${options.name} ${child.pid}`;
  const events: Event[] = [];
  const waiters = new Set<() => void>();
  let gone = false;
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      events.push(JSON.parse(line) as Event);
    } catch {
      return;
    }
    for (const wake of [...waiters]) wake();
  });
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      gone = true;
      for (const wake of [...waiters]) wake();
      resolve();
    }),
  );
  const next = (match: (event: Event) => boolean, timeout = options.timeout ?? 15_000): Promise<Event> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const found = events.find(match);
        if (!found && !gone) return;
        clearTimeout(timer);
        waiters.delete(check);
        if (found) resolve(found);
        else reject(new Error(`${name} exited (${String(child.exitCode ?? child.signalCode)}) with no matching event (saw ${JSON.stringify(events)})`));
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`${name}: no matching event within ${timeout} ms (saw ${JSON.stringify(events)})`));
      }, timeout);
      waiters.add(check);
      check();
    });
  const proc: Proc = {
    url: '',
    pid: child.pid!,
    events,
    next,
    alive: () => child.exitCode === null && child.signalCode === null,
    kill: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
      started.delete(proc);
    },
  };
  started.add(proc);
  try {
    const ready = await next((e) => e.event === options.ready, options.readyTimeout ?? 30_000);
    if (ready.port !== undefined) proc.url = `http://127.0.0.1:${String(ready.port)}`;
  } catch (err) {
    await proc.kill('SIGKILL');
    throw err;
  }
  return proc;
}

/** Kills (SIGKILL) every process this test file started that still runs: for `after()` hooks, so nothing outlives a failed test. */
export async function killAll(): Promise<void> {
  await Promise.all([...started].map((proc) => proc.kill('SIGKILL')));
}

/** A process of test/fixtures/queue-app.ts: a web process is ready once it listens, a worker once it works. */
export function startQueueApp(config: QueueAppConfig, env?: Record<string, string>): Promise<Proc> {
  return startProcess('test/fixtures/queue-app.ts', [JSON.stringify(config)], {
    name: config.role,
    ready: config.role === 'worker' ? 'working' : 'listening',
    ...(env ? { env } : {}),
  });
}

/** How often the handler of job `id` ran, over all these processes (each prints a `run` line per run). */
export function runsOf(procs: readonly Proc[], id: string): number {
  return procs.reduce((sum, proc) => sum + proc.events.filter((e) => e.event === 'run' && e.id === id).length, 0);
}
