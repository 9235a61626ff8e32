// Counts what a worker process of the `worker-rate` group sends to Redis, by connection and command
// (EVALSHA named after its script), and the store methods the bgrs worker calls. Only used in the
// group's diagnostic run (WR_COUNT=1), never in a timed one.
//
// Every ioredis connection of the process (the store's and BullMQ's) goes through
// Redis.prototype.sendCommand; a pipeline or MULTI sends its commands through it too (with a stream
// argument) and goes out as one write, so round trips = commands outside a pipeline + pipelines.
import { Pipeline, Redis } from 'ioredis';
import { JOB_METHODS, OPTIONAL_JOB_METHODS } from '../src/stores/store.js';

interface Counts {
  /** connection label → command → how many. */
  commands: Record<string, Record<string, number>>;
  /** connection label → round trips (a pipeline counts once). */
  roundTrips: Record<string, number>;
  /** Store method → calls (bgrs side). */
  store: Record<string, number>;
}

type Sent = { name: string; args: unknown[] };

export function countCommands(): {
  tag(client: Redis, label: string, scripts: Array<{ name: string; sha: string }>): void;
  wrapStore(store: object): void;
  report(): Counts;
} {
  const labels = new WeakMap<object, string>();
  const shas = new Map<string, string>();
  const seen = new Set<Redis>();
  const counts: Counts = { commands: {}, roundTrips: {}, store: {} };
  const label = (client: object): string => labels.get(client) ?? 'bullmq';
  const proto = Redis.prototype as unknown as { sendCommand: (command: Sent, stream?: unknown, node?: unknown) => unknown };
  const send = proto.sendCommand;
  proto.sendCommand = function (this: Redis, command: Sent, stream?: unknown, node?: unknown) {
    seen.add(this);
    const by = (counts.commands[label(this)] ??= {});
    const name = command.name === 'evalsha' ? `evalsha ${String(command.args[0])}` : command.name;
    by[name] = (by[name] ?? 0) + 1;
    if (stream === undefined) counts.roundTrips[label(this)] = (counts.roundTrips[label(this)] ?? 0) + 1;
    return send.call(this, command, stream, node);
  };
  const pipeline = Pipeline.prototype as unknown as { exec: (...args: unknown[]) => unknown; redis: Redis };
  const exec = pipeline.exec;
  pipeline.exec = function (this: { redis: Redis }, ...args: unknown[]) {
    counts.roundTrips[label(this.redis)] = (counts.roundTrips[label(this.redis)] ?? 0) + 1;
    return exec.apply(this, args);
  };
  return {
    tag(client, name, scripts) {
      labels.set(client, name);
      for (const script of scripts) shas.set(script.sha, script.name);
    },
    wrapStore(store) {
      const target = store as Record<string, unknown>;
      for (const method of [...JOB_METHODS, ...OPTIONAL_JOB_METHODS]) {
        const fn = target[method];
        if (typeof fn !== 'function') continue;
        target[method] = function (this: unknown, ...args: unknown[]) {
          counts.store[method] = (counts.store[method] ?? 0) + 1;
          return (fn as (...a: unknown[]) => unknown).apply(this, args);
        };
      }
    },
    report() {
      // BullMQ's scripts are registered with ioredis's defineCommand: name them from each client's scriptsSet.
      for (const client of seen) {
        const set = (client as unknown as { scriptsSet?: Record<string, { sha: string }> }).scriptsSet ?? {};
        for (const [name, script] of Object.entries(set)) if (!shas.has(script.sha)) shas.set(script.sha, name);
      }
      const named: Counts['commands'] = {};
      for (const [conn, by] of Object.entries(counts.commands)) {
        named[conn] = {};
        for (const [name, count] of Object.entries(by)) {
          const sha = name.startsWith('evalsha ') ? name.slice(8) : undefined;
          const key = sha === undefined ? name : `evalsha ${shas.get(sha) ?? sha.slice(0, 8)}`;
          named[conn][key] = (named[conn][key] ?? 0) + count;
        }
      }
      return { ...counts, commands: named };
    },
  };
}
