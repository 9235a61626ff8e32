// `npm run bench`: measures what bgrs costs on loopback with autocannon and writes bench/RESULTS.md.
//
// Each comparison starts two server processes (bench/server.ts): the baseline and the subject. Both
// are warmed up, then loaded in alternating short slices (B S S B B S …) until each has had the
// measured duration; only one is ever under load. Alternating matters on a small shared VM: a single
// 5 s run of each side drifted by ±30 % between runs, which drowned a 3 % goal. After every slice the
// runner waits until the loaded server is idle again (background jobs drained), so leftover work
// never lands in the other server's slice, and records how long that took.
//
// Environment:
//   BENCH_DURATION     seconds measured per side of each comparison (default 5)
//   BENCH_WARMUP       seconds of unmeasured load per server before measuring (default 1)
//   BENCH_SLICE        seconds per alternating slice (default 1)
//   BENCH_CONNECTIONS  concurrent connections (default 50)
//   BENCH_EXPRESS      Express majors to run, comma-separated (default "5,4")
//   BENCH_ONLY         scenario groups to run, comma-separated: "core" (bgrs vs plain Express),
//                      "idempotency" (the guard vs express-idempotency), "stores-rate" (detached
//                      submissions on RedisStore / PostgresStore vs BullMQ), "stores-rss" (peak RSS while
//                      a 1 GiB result is captured into each store), "stores" (both store groups),
//                      "memory-list" (one GET /bgrs page from a MemoryStore holding up to 100,000 jobs),
//                      "worker-rate" (completed jobs/s of one bgrs queue worker process vs a plain BullMQ
//                      Worker, with a CPU profile and Redis round trips per job: bench/worker-rate.ts)
//                      (default: core, idempotency, stores-rate, worker-rate; see DEFAULT_GROUPS)
//   BENCH_REPLAY_KEYS  how many keys the replay scenario cycles through (default 100)
//   BENCH_PIN          "0" to not pin the load generator and the server to separate cores (default on, Linux with taskset)
//   BENCH_DEBUG        set to print every slice's rate and drain
//   BENCH_CPU_PROF     a directory: servers run with --cpu-prof and write their profiles there on exit, one
//                      subdirectory per server (<mode>-<major>-<ms>); the main thread's file is CPU.*.<pid>.0.*
//   BENCH_RSS_MIB      size of the streamed result in the stores-rss group, in MiB (default 1024)
//   BENCH_REDIS, BENCH_POSTGRES  where the store groups connect (default 127.0.0.1:6379, postgres@127.0.0.1:5432/test)
//
// The store groups run on the first major of BENCH_EXPRESS only: what they compare is the store's
// cost per job, which does not depend on the Express major, and running them once keeps the
// default run under about four minutes. Their keys (`bgrs-bench-*`) and tables (`bgrs_bench_*`) are
// deleted after each server and leftovers of interrupted runs at the start, so nothing big stays behind.
//
// RESULTS.md is made of one section per group family; a run that leaves a family out keeps that
// family's previous section (with its own date), so BENCH_ONLY runs do not erase the other rows.

import type { ChildProcess } from 'node:child_process';
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { measureMemoryList } from './memory-list.js';
import { measureWorkerRate } from './worker-rate.js';

const here = (path: string): string => fileURLToPath(new URL(path, import.meta.url));

function positive(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, received "${raw}"`);
  return value;
}

const DURATION = positive('BENCH_DURATION', 5);
const WARMUP = positive('BENCH_WARMUP', 1);
// Slices interleave the two sides: a drift of the VM's speed then hits both about equally. Shorter
// slices interleave finer but add per-slice overhead (connect, idle wait); 1 s keeps the run near 90 s.
const SLICE = Math.min(positive('BENCH_SLICE', 1), DURATION);
const ROUNDS = Math.max(1, Math.round(DURATION / SLICE));
const CONNECTIONS = Math.round(positive('BENCH_CONNECTIONS', 50));
const MAJORS = (process.env.BENCH_EXPRESS ?? '5,4')
  .split(',')
  .map((major) => major.trim())
  .filter((major): major is '5' | '4' => major === '5' || major === '4');
if (MAJORS.length === 0) throw new Error('BENCH_EXPRESS must list 5 and/or 4');
const GROUPS = ['core', 'idempotency', 'stores-rate', 'stores-rss', 'memory-list', 'worker-rate'] as const;
type Group = (typeof GROUPS)[number];
// stores-rss is left out by default: capturing 1 GiB into PostgreSQL alone takes about a minute
// (WAL and TOAST for 16,384 chunk rows), which would push the default run past four minutes.
// worker-rate takes about 55 s (its own knobs: BENCH_WORKER_* in bench/worker-rate.ts).
const DEFAULT_GROUPS: Group[] = ['core', 'idempotency', 'stores-rate', 'worker-rate'];
const ALIASES: Record<string, Group[]> = { stores: ['stores-rate', 'stores-rss'] };
const ONLY = (process.env.BENCH_ONLY ? process.env.BENCH_ONLY.split(',') : DEFAULT_GROUPS)
  .map((group) => group.trim())
  .filter((group) => group !== '')
  .flatMap((group) => ALIASES[group] ?? [group]);
for (const group of ONLY) {
  if (!(GROUPS as readonly string[]).includes(group)) throw new Error(`BENCH_ONLY: unknown group "${group}" (known: ${GROUPS.join(', ')}, stores)`);
}
const runs = (group: Group): boolean => ONLY.includes(group);
if (ONLY.length === 0) throw new Error(`BENCH_ONLY must list some of ${GROUPS.join(', ')}`);
const REPLAY_KEYS = Math.round(positive('BENCH_REPLAY_KEYS', 100));
const RSS_MIB = Math.round(positive('BENCH_RSS_MIB', 1024));
const CPU_PROF = process.env.BENCH_CPU_PROF;
const REDIS_URL = process.env.BENCH_REDIS ?? 'redis://127.0.0.1:6379';
const POSTGRES_URL = process.env.BENCH_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';

// With two cores, the load generator (this process) and the server each get one, so the scheduler
// does not shuffle them (and the server's GC threads) around between slices.
const TASKSET = '/usr/bin/taskset';
const PIN = process.env.BENCH_PIN !== '0' && os.platform() === 'linux' && os.cpus().length >= 2 && existsSync(TASKSET);
if (PIN) execFileSync(TASKSET, ['-a', '-cp', '0', String(process.pid)], { stdio: 'ignore' });

type Mode = 'plain' | 'bgrs' | 'idem-bgrs' | 'idem-lib' | 'bgrs-redis' | 'bgrs-postgres' | 'bullmq-worker' | 'bullmq-add' | 'bgrs-queue' | 'bgrs-queue-web';
type Major = '5' | '4';

interface Ready {
  port: number;
  location: string | null;
}

interface Server {
  child: ChildProcess;
  ready: Ready;
  mode: Mode;
  /** Names the server's Redis keys and PostgreSQL tables, for the clean-up after it stops. */
  ns: string;
  /** Idempotency servers: how often the handler had run at the last check (GET /stats). */
  executions: number;
}

/**
 * An idempotency scenario: POST /orders with an Idempotency-Key on every request. `first`: every
 * request carries a key never sent before, so the handler runs each time; `replay`: the requests
 * cycle through REPLAY_KEYS keys sent once before the warm-up, so the handler never runs again.
 */
interface Keyed {
  kind: 'first' | 'replay';
  /** Whether a replay says so with `Idempotent-Replayed: true` (ours; express-idempotency has no such header). */
  replayHeader: boolean;
}

/** One side of a comparison: what runs, where, and what it answers. */
interface Side {
  label: string;
  mode: Mode;
  path: (ready: Ready) => string;
  status: number;
  keyed?: Keyed;
  /** Each answer starts a background job: after every slice, check that they all completed (GET /stats). */
  jobs?: boolean;
}

interface Measurement {
  label: string;
  /** Requests answered ÷ seconds under load, over all slices: the mean req/s. */
  mean: number;
  /** Standard deviation of the per-slice rates. */
  stddev: number;
  total: number;
  /** Time the server kept working after the load stopped, summed over slices (background jobs). */
  drainMs: number;
  seconds: number;
  latencyP50: number;
  latencyP99: number;
  bodyBytes: number;
  status: string;
}

interface Comparison {
  name: string;
  subject: Measurement;
  baseline: Measurement;
  /** null: reported without a goal. */
  goal: number | null;
  /** Whether background work outlives the request, making the drain-inclusive ratio meaningful. */
  background: boolean;
}

/** Starts one server process and waits for its ready line. */
function startServer(mode: Mode, major: Major): Promise<Server> {
  // Node's default file names, not --cpu-prof-name: tsx's loader hooks run on a thread of their own,
  // whose profile would overwrite the main thread's under one fixed name.
  const profile = CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}/${mode}-${major}-${Date.now()}`] : [];
  const node = [process.execPath, ...profile, '--import', 'tsx', here('./server.ts'), mode, major];
  const [command, ...args] = PIN ? [TASKSET, '-c', '1', ...node] : node;
  // Lower case, digits only: valid in a Redis key and in an unquoted PostgreSQL table name.
  const ns = randomUUID().replaceAll('-', '').slice(0, 10);
  const child = spawn(command!, args, {
    // Production mode, as an application would be deployed.
    env: { ...process.env, NODE_ENV: 'production', BENCH_NS: ns, BENCH_REDIS: REDIS_URL, BENCH_POSTGRES: POSTGRES_URL },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`bench: server ${mode}/${major} did not start within 30 s`));
    }, 30_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`bench: server ${mode}/${major} exited early (code ${code})`));
    });
    createInterface({ input: child.stdout! }).once('line', (line) => {
      clearTimeout(timer);
      resolve({ child, ready: JSON.parse(line) as Ready, mode, ns, executions: 0 });
    });
  });
}

function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const force = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.once('exit', () => {
      clearTimeout(force);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** CPU time a process has used so far, in clock ticks; `null` where /proc is not available. */
function cpuTicks(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may itself contain spaces.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]); // utime + stime
  } catch {
    return null;
  }
}

/**
 * Waits until a server has stopped working (under 1 tick of CPU in a 50 ms window) and returns how
 * long after `since` it became idle. A detached job keeps running after its 202, so this is the
 * backlog of background work the slice left behind; for plain routes it is ~0.
 */
async function quiesce(child: ChildProcess, since: number): Promise<number> {
  const window = 50;
  for (;;) {
    const start = performance.now();
    const before = cpuTicks(child.pid!);
    await sleep(window);
    const after = cpuTicks(child.pid!);
    if (before === null || after === null) return 0;
    if (after - before <= 1) return Math.max(0, start - since);
    if (start - since > 60_000) throw new Error('bench: a server stayed busy for 60 s after its load stopped');
  }
}

const ORDER = JSON.stringify({ item: 'book', quantity: 2 });
const REPLAY_KEY_SET = Array.from({ length: REPLAY_KEYS }, (_, i) => `bench-replay-${i}`);
/** Appended to per-run key prefixes so that no first-time key is ever sent twice to one server. */
let keyCounter = 0;

/** A response header by name, whatever case the server sent it in (autocannon keeps the raw names). */
function header(headers: Record<string, unknown>, name: string): unknown {
  for (const key in headers) if (key.toLowerCase() === name) return headers[key];
  return undefined;
}

interface Load {
  result: autocannon.Result;
  /** Answers whose `Idempotent-Replayed` header was not what the scenario expects. */
  wrongReplayHeader: number;
}

async function load(url: string, seconds: number, keyed: Keyed | undefined): Promise<Load> {
  if (!keyed) return { result: await autocannon({ url, connections: CONNECTIONS, pipelining: 1, duration: seconds }), wrongReplayHeader: 0 };
  // A fresh prefix per run on top of the counter: keys stay unique even if a server outlives a run.
  const prefix = randomUUID().slice(0, 8);
  const expectReplayed = keyed.kind === 'replay' && keyed.replayHeader;
  let wrongReplayHeader = 0;
  const result = await autocannon({
    url,
    connections: CONNECTIONS,
    pipelining: 1,
    duration: seconds,
    requests: [
      {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: ORDER,
        // autocannon hands setupRequest a fresh copy of the headers for every request it builds.
        setupRequest: (request) => {
          const key = keyed.kind === 'first' ? `${prefix}-${keyCounter++}` : REPLAY_KEY_SET[keyCounter++ % REPLAY_KEY_SET.length]!;
          request.headers = { ...request.headers, 'idempotency-key': key };
          return request;
        },
        // The same check runs on both sides, so the load generator does the same work for each.
        onResponse: (_status, _body, _context, headers) => {
          if ((header(headers ?? {}, 'idempotent-replayed') === 'true') !== expectReplayed) wrongReplayHeader += 1;
        },
      },
    ],
  });
  return { result, wrongReplayHeader };
}

interface Stats {
  executions: number;
  completed: number;
  failed: number;
}

/** The server's counters: idempotent handler runs, background jobs completed and failed. */
async function stats(server: Server): Promise<Stats> {
  const response = await fetch(`http://127.0.0.1:${server.ready.port}/stats`);
  return (await response.json()) as Stats;
}

/** How often the idempotency server's handler has run so far. */
async function executions(server: Server): Promise<number> {
  return (await stats(server)).executions;
}

/** One keyed POST /orders, outside the load; returns the status, whether it said it was replayed, and the body. */
async function order(server: Server, key: string): Promise<{ status: number; replayed: boolean; body: string }> {
  const response = await fetch(`http://127.0.0.1:${server.ready.port}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
    body: ORDER,
  });
  return { status: response.status, replayed: response.headers.get('idempotent-replayed') === 'true', body: await response.text() };
}

/**
 * Checks an idempotency server before any load and returns its body size: a new key runs the
 * handler once (201), the same key again is the stored answer (same status and body, the replay
 * header where the side has one) without running it. For the replay scenario it also sends each
 * replay key once, so that every measured request is a replay.
 */
async function probeKeyed(server: Server, side: Side & { keyed: Keyed }): Promise<number> {
  const fail = (what: string): never => {
    throw new Error(`bench: ${side.label}: ${what}`);
  };
  const key = `bench-probe-${randomUUID()}`;
  const first = await order(server, key);
  if (first.status !== side.status || first.replayed) fail(`a new key answered ${first.status}${first.replayed ? ' (replayed)' : ''}, expected ${side.status}`);
  const again = await order(server, key);
  if (again.status !== side.status || again.body !== first.body || again.replayed !== side.keyed.replayHeader) {
    fail(`a repeated key answered ${again.status} replayed=${again.replayed} with ${again.body === first.body ? 'the same' : 'another'} body`);
  }
  if (side.keyed.kind === 'replay') {
    for (const replayKey of REPLAY_KEY_SET) {
      const seeded = await order(server, replayKey);
      if (seeded.status !== side.status) fail(`seeding key ${replayKey} answered ${seeded.status}`);
    }
  }
  server.executions = await executions(server);
  const expected = 1 + (side.keyed.kind === 'replay' ? REPLAY_KEY_SET.length : 0);
  if (server.executions !== expected) fail(`the handler ran ${server.executions} times for ${expected} distinct keys`);
  return Buffer.byteLength(first.body);
}

/** Accumulates the slices of one side. */
class Tally {
  total = 0;
  seconds = 0;
  drainMs = 0;
  rates: number[] = [];
  p50: number[] = [];
  p99 = 0;
  statuses = new Map<string, number>();
  /** Job-starting sides: accepted jobs that had not completed once the server went quiet. */
  lost = 0;

  add(result: autocannon.Result, drainMs: number): void {
    this.total += result.requests.total;
    this.seconds += result.duration;
    this.drainMs += drainMs;
    this.rates.push(result.requests.total / result.duration);
    if (process.env.BENCH_DEBUG) console.log(`    slice ${Math.round(result.requests.total / result.duration)} req/s, drain ${Math.round(drainMs)} ms`);
    this.p50.push(result.latency.p50);
    this.p99 = Math.max(this.p99, result.latency.p99);
    for (const [code, stats] of Object.entries(result.statusCodeStats ?? {})) {
      this.statuses.set(code, (this.statuses.get(code) ?? 0) + (stats.count ?? 0));
    }
  }

  result(label: string, bodyBytes: number): Measurement {
    const mean = this.total / this.seconds;
    const sliceMean = this.rates.reduce((a, b) => a + b, 0) / this.rates.length;
    const variance = this.rates.reduce((sum, rate) => sum + (rate - sliceMean) ** 2, 0) / this.rates.length;
    const p50s = [...this.p50].sort((a, b) => a - b);
    return {
      label,
      mean,
      stddev: Math.sqrt(variance),
      total: this.total,
      drainMs: this.drainMs,
      seconds: this.seconds,
      latencyP50: p50s[Math.floor(p50s.length / 2)] ?? 0,
      latencyP99: this.p99,
      bodyBytes,
      status: [...this.statuses].map(([code, count]) => `${code}×${count}`).join(' ') + (this.lost > 0 ? `; ${this.lost} jobs never completed` : ''),
    };
  }
}

/** Loads one server for one slice, checks every answer had the expected status, waits for it to go idle. */
async function slice(server: Server, side: Side, seconds: number, tally: Tally | null): Promise<void> {
  const url = `http://127.0.0.1:${server.ready.port}${side.path(server.ready)}`;
  const before = side.jobs ? await stats(server) : null;
  const { result, wrongReplayHeader } = await load(url, seconds, side.keyed);
  const end = performance.now();
  const codes = Object.keys(result.statusCodeStats ?? {});
  // A slice with errors or another status measured something else: fail loudly, not silently.
  if (result.errors > 0 || result.timeouts > 0 || codes.some((code) => code !== String(side.status))) {
    throw new Error(`bench: ${side.label}: errors=${result.errors} timeouts=${result.timeouts} statuses=${codes.join(',')}`);
  }
  if (wrongReplayHeader > 0) {
    throw new Error(
      `bench: ${side.label}: ${wrongReplayHeader} answers had ${side.keyed?.kind === 'replay' && side.keyed.replayHeader ? 'no' : 'an'} Idempotent-Replayed: true`,
    );
  }
  const drain = await quiesce(server.child, end);
  if (side.keyed) await checkExecutions(server, side, result);
  if (before) await checkJobs(server, side, result, before, tally);
  tally?.add(result, drain);
}

/**
 * Every 202 of a job-starting side must become a completed job: the jobs of the answered requests,
 * plus at most one per connection cut off at the slice's end and the probe job. A failed job, or more
 * completions than that, fails the run, and so does a lost job (fewer completions). A quiet CPU can come a moment before the last completion is counted, so this waits until
 * the count stops moving for a second.
 */
async function checkJobs(server: Server, side: Side, result: autocannon.Result, before: Stats, tally: Tally | null): Promise<void> {
  const answered = result.requests.total;
  let now = await stats(server);
  let moved = performance.now();
  while (now.completed - before.completed < answered && performance.now() - moved < 1_000) {
    await sleep(50);
    const next = await stats(server);
    if (next.completed !== now.completed) moved = performance.now();
    now = next;
  }
  const completed = now.completed - before.completed;
  const failed = now.failed - before.failed;
  if (failed > 0 || completed > answered + CONNECTIONS + 1) {
    throw new Error(`bench: ${side.label}: ${answered} answers, but ${completed} jobs completed and ${failed} failed`);
  }
  const lost = Math.max(0, answered - completed);
  if (lost > 0) throw new Error(`bench: ${side.label}: ${lost} of ${answered} accepted jobs never completed`);
  if (tally) tally.lost += lost;
}

/**
 * One key, one execution: first-time keys run the handler once per answered request (plus at most
 * one per connection for requests cut off when the slice ended, which still run server-side);
 * replayed keys never run it. A 201 from a handler that ran again would otherwise pass unnoticed.
 */
async function checkExecutions(server: Server, side: Side, result: autocannon.Result): Promise<void> {
  const now = await executions(server);
  const ran = now - server.executions;
  server.executions = now;
  const answered = result.requests.total;
  const ok = side.keyed?.kind === 'replay' ? ran === 0 : ran >= answered && ran <= answered + CONNECTIONS;
  if (!ok) throw new Error(`bench: ${side.label}: the handler ran ${ran} times for ${answered} answers`);
}

async function compare(major: Major, baselineSide: Side, subjectSide: Side): Promise<[Measurement, Measurement]> {
  const servers: Server[] = [];
  try {
    for (const side of [baselineSide, subjectSide]) servers.push(await startServer(side.mode, major));
    const pairs = [
      { server: servers[0]!, side: baselineSide, tally: new Tally(), bodyBytes: 0 },
      { server: servers[1]!, side: subjectSide, tally: new Tally(), bodyBytes: 0 },
    ];
    for (const pair of pairs) {
      const { keyed } = pair.side;
      if (keyed) {
        pair.bodyBytes = await probeKeyed(pair.server, { ...pair.side, keyed });
      } else {
        // One request first, to check the route and learn its body size (the JSON comparison needs similar sizes).
        const response = await fetch(`http://127.0.0.1:${pair.server.ready.port}${pair.side.path(pair.server.ready)}`);
        pair.bodyBytes = (await response.arrayBuffer()).byteLength;
        if (response.status !== pair.side.status) throw new Error(`bench: ${pair.side.label}: expected ${pair.side.status}, got ${response.status}`);
      }
      await slice(pair.server, pair.side, WARMUP, null);
    }
    // B S S B B S …: each side goes first as often as it goes second, so drift cancels out.
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? pairs : [...pairs].reverse();
      for (const pair of order) await slice(pair.server, pair.side, SLICE, pair.tally);
    }
    const [baseline, subject] = pairs.map((pair) => pair.tally.result(pair.side.label, pair.bodyBytes)) as [Measurement, Measurement];
    for (const m of [baseline, subject]) {
      console.log(
        `  ${m.label.padEnd(44)} ${fmt(m.mean).padStart(7)} req/s ±${fmt(m.stddev).padEnd(5)} p50 ${m.latencyP50} ms  p99 ${m.latencyP99} ms  drain ${fmt(m.drainMs)} ms  (${m.status}, ${m.bodyBytes} B body)`,
      );
    }
    return [baseline, subject];
  } finally {
    await Promise.all(servers.map((server) => stopServer(server.child)));
    for (const server of servers) await cleanup(server);
  }
}

function fmt(value: number): string {
  return Math.round(value).toLocaleString('en-US');
}

function version(pkg: string): string {
  return (JSON.parse(readFileSync(here(`../node_modules/${pkg}/package.json`), 'utf8')) as { version: string }).version;
}

async function runMajor(major: Major): Promise<Comparison[]> {
  const express = `Express ${version(major === '4' ? 'express4' : 'express')}`;
  if (!runs('core') && !runs('idempotency')) return [];
  console.log(`\n${express}`);
  const side = (label: string, mode: Mode, path: Side['path'], status = 200): Side => ({ label: `${express} ${label}`, mode, path, status });
  const comparisons: Comparison[] = [];
  if (runs('core')) comparisons.push(...(await runCore(major, express, side)));
  if (runs('idempotency')) comparisons.push(...(await runIdempotency(major, express, side)));
  return comparisons;
}

type SideFactory = (label: string, mode: Mode, path: Side['path'], status?: number) => Side;

/** bgrs against plain Express: the cost of app.use(bgrs()), of a submission, of a job read. */
async function runCore(major: Major, express: string, side: SideFactory): Promise<Comparison[]> {
  const plainHello = side('plain GET /hello', 'plain', () => '/hello');
  const bgrsHello = side('bgrs GET /hello', 'bgrs', () => '/hello');
  const submit = side('bgrs GET /hello?bgrs=yes', 'bgrs', () => '/hello?bgrs=yes', 202);
  const plainJson = side('plain GET /json (res.json)', 'plain', () => '/json');
  const jobRead = side('bgrs GET /bgrs/:id', 'bgrs', (ready) => ready.location!);

  const [a1, b1] = await compare(major, plainHello, bgrsHello);
  const [a2, b2] = await compare(major, bgrsHello, submit);
  const [a3, b3] = await compare(major, plainJson, jobRead);
  return [
    { name: `${express}: app.use(bgrs()), request without bgrs, vs plain Express`, baseline: a1, subject: b1, goal: 0.97, background: false },
    { name: `${express}: ?bgrs=yes submission (202 + background job) vs the same route without it`, baseline: a2, subject: b2, goal: 0.45, background: true },
    { name: `${express}: GET /bgrs/:id of a finished job vs a plain res.json of a similar object`, baseline: a3, subject: b3, goal: 0.9, background: false },
  ];
}

/** The Idempotency-Key guard against express-idempotency (in-memory adapter) on the same POST /orders. */
async function runIdempotency(major: Major, express: string, side: SideFactory): Promise<Comparison[]> {
  const lib = `express-idempotency ${version('express-idempotency')}`;
  const orders = (): string => '/orders';
  const keyed = (base: Side, kind: Keyed['kind'], replayHeader: boolean): Side => ({ ...base, keyed: { kind, replayHeader } });
  const oursFirst = keyed(side('bgrs guard POST /orders, first-time keys', 'idem-bgrs', orders, 201), 'first', true);
  const theirsFirst = keyed(side(`${lib} POST /orders, first-time keys`, 'idem-lib', orders, 201), 'first', false);
  const replays = `replays of ${REPLAY_KEYS} key${REPLAY_KEYS === 1 ? '' : 's'}`;
  const oursReplay = keyed(side(`bgrs guard POST /orders, ${replays}`, 'idem-bgrs', orders, 201), 'replay', true);
  const theirsReplay = keyed(side(`${lib} POST /orders, ${replays}`, 'idem-lib', orders, 201), 'replay', false);

  const [a1, b1] = await compare(major, theirsFirst, oursFirst);
  const [a2, b2] = await compare(major, theirsReplay, oursReplay);
  return [
    {
      name: `${express}: Idempotency-Key guard, a new key on every POST (handler runs, 201), vs ${lib} (memory adapter)`,
      baseline: a1,
      subject: b1,
      goal: 1.0,
      background: false,
    },
    {
      name: `${express}: Idempotency-Key guard, ${replays} sent once before (stored 201), vs ${lib} (memory adapter)`,
      baseline: a2,
      subject: b2,
      goal: 1.0,
      background: false,
    },
  ];
}

// ---- Stores ---------------------------------------------------------------------------------

type RedisClient = import('ioredis').Redis;
type PgPool = import('pg').Pool;
let redisClient: RedisClient | undefined;
let pgPool: PgPool | undefined;

/** The runner's own connections, for clean-up only; opened on first use so other groups need no services. */
async function redis(): Promise<RedisClient> {
  if (!redisClient) {
    const { Redis } = await import('ioredis');
    redisClient = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redisClient.connect();
  }
  return redisClient;
}

async function postgres(): Promise<PgPool> {
  if (!pgPool) {
    const { default: pg } = await import('pg');
    pgPool = new pg.Pool({ connectionString: POSTGRES_URL, max: 1 });
  }
  return pgPool;
}

/** Deletes every Redis key under `pattern` (SCAN + UNLINK, so Redis frees big values off its main thread); resolves how many. */
async function deleteKeys(pattern: string): Promise<number> {
  const client = await redis();
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) deleted += await client.unlink(...keys);
  } while (cursor !== '0');
  return deleted;
}

/** Drops every table whose name starts with `prefix` (a plain identifier with no LIKE wildcards but `_`, escaped here). */
async function dropTables(prefix: string): Promise<number> {
  const pool = await postgres();
  const { rows } = await pool.query<{ tablename: string }>(`SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE $1`, [
    `${prefix.replaceAll('_', '\\_')}%`,
  ]);
  if (rows.length > 0) await pool.query(`DROP TABLE IF EXISTS ${rows.map((row) => `"${row.tablename}"`).join(', ')} CASCADE`);
  return rows.length;
}

/** Removes what a store server left in Redis / PostgreSQL (its jobs, and for the RSS group 1 GiB of result). */
async function cleanup(server: Server): Promise<void> {
  if (server.mode === 'bgrs-redis' || server.mode.startsWith('bullmq') || server.mode.startsWith('bgrs-queue')) await deleteKeys(`bgrs-bench-${server.ns}*`);
  if (server.mode === 'bgrs-postgres') await dropTables(`bgrs_bench_${server.ns}_`);
}

/** Leftovers of interrupted runs (a killed runner cannot clean up): every bench key and table, whatever its run. */
async function cleanupAll(): Promise<void> {
  const keys = await deleteKeys('bgrs-bench-*');
  const tables = await dropTables('bgrs_bench_');
  if (keys + tables > 0) console.log(`  (removed ${keys} Redis keys and ${tables} tables left by an earlier run)`);
}

async function redisVersion(): Promise<string> {
  return /redis_version:(\S+)/.exec(await (await redis()).info('server'))?.[1] ?? 'unknown';
}

async function postgresVersion(): Promise<string> {
  const { rows } = await (await postgres()).query<{ server_version: string }>('SHOW server_version');
  return rows[0]?.server_version ?? 'unknown';
}

async function closeServices(): Promise<void> {
  await redisClient?.quit();
  await pgPool?.end();
}

/** Detached submissions on RedisStore and PostgresStore against an Express route on BullMQ. */
async function runStoresRate(major: Major): Promise<Comparison[]> {
  const express = `Express ${version(major === '4' ? 'express4' : 'express')}`;
  const bull = `BullMQ ${version('bullmq')}`;
  console.log(`\nStores: detached submissions (${express}, ioredis ${version('ioredis')}, pg ${version('pg')}, ${bull})`);
  await cleanupAll();
  const submit = (): string => '/hello?bgrs=yes';
  const side = (label: string, mode: Mode, jobs: boolean): Side => ({ label, mode, path: submit, status: 202, jobs });
  const redisSide = side('bgrs RedisStore GET /hello?bgrs=yes', 'bgrs-redis', true);
  const postgresSide = side('bgrs PostgresStore GET /hello?bgrs=yes', 'bgrs-postgres', true);
  const worker = side(`${bull} queue.add() + 202, Worker in-process`, 'bullmq-worker', true);
  const addOnly = side(`${bull} queue.add() + 202, no Worker`, 'bullmq-add', false);
  const queueSide = side('bgrs queue mode (RedisStore + BullMQ), worker in-process', 'bgrs-queue', true);
  const queueWeb = side('bgrs queue mode (RedisStore + BullMQ), web only', 'bgrs-queue-web', false);

  const [a1, b1] = await compare(major, worker, redisSide);
  const [a2, b2] = await compare(major, addOnly, redisSide);
  const [a3, b3] = await compare(major, worker, postgresSide);
  const [a4, b4] = await compare(major, worker, queueSide);
  const [a5, b5] = await compare(major, addOnly, queueWeb);
  return [
    {
      name: `Queue mode submission (202, then run by a bgrs worker and stored) vs ${bull} queue.add() + 202 with a Worker in the same process`,
      baseline: a4,
      subject: b4,
      // Issue 13's goal.
      goal: 0.8,
      background: true,
    },
    {
      name: `Queue mode web side alone (record + enqueue + 202) vs ${bull} queue.add() + 202 with no Worker`,
      baseline: a5,
      subject: b5,
      goal: null,
      background: true,
    },
    {
      name: `RedisStore submission (202 + job run and stored) vs ${bull} queue.add() + 202 with a Worker (concurrency 64) in the same process`,
      baseline: a1,
      subject: b1,
      // Issue 12's goal (the earlier 1.0 came from the first design draft).
      goal: 0.8,
      background: true,
    },
    {
      name: `RedisStore submission vs ${bull} queue.add() + 202 with no Worker (enqueue only; the job never runs)`,
      baseline: a2,
      subject: b2,
      goal: null,
      background: true,
    },
    {
      name: `PostgresStore submission (202 + job run and stored) vs ${bull} queue.add() + 202 with a Worker in the same process`,
      baseline: a3,
      subject: b3,
      goal: null,
      background: true,
    },
  ];
}

interface RssRun {
  label: string;
  baseline: number;
  peak: number;
  /** The kernel's high-water mark over the capture (VmHWM after a reset), when it could be reset. */
  hwm: number | null;
  samples: number;
  seconds: number;
  size: number;
}

/** A field of /proc/<pid>/status in bytes (the kernel reports kB). */
function procStatus(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match) throw new Error(`bench: no ${field} in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

interface JobDocument {
  status: string;
  response: { status: number; size: number } | null;
  error: unknown;
}

/** Detaches GET /big?bgrs=yes&mib=…, resolves the job's location. */
async function detachBig(origin: string, mib: number): Promise<string> {
  const ack = await fetch(`${origin}/big?bgrs=yes&mib=${mib}`);
  await ack.arrayBuffer();
  const location = ack.headers.get('location');
  if (ack.status !== 202 || !location) throw new Error(`bench: GET /big?bgrs=yes answered ${ack.status}, expected 202 with a Location`);
  return location;
}

/** Polls the job until it is final (at most `seconds`), resolves its document. */
async function finalJob(origin: string, location: string, seconds: number): Promise<JobDocument> {
  const deadline = performance.now() + seconds * 1000;
  for (;;) {
    const response = await fetch(`${origin}${location}`);
    const job = (await response.json()) as JobDocument;
    if (response.status !== 200 && response.status !== 202) throw new Error(`bench: GET ${location} answered ${response.status}`);
    if (!['queued', 'running'].includes(job.status)) return job;
    if (performance.now() > deadline) throw new Error(`bench: the job at ${location} was still ${job.status} after ${seconds} s`);
    await sleep(250);
  }
}

/** Forgets the job, as a client should: a 503 (the store busy freeing a 1 GiB result) is retried after Retry-After. */
async function deleteJob(origin: string, location: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const response = await fetch(`${origin}${location}`, { method: 'DELETE' });
    await response.arrayBuffer();
    if (response.status === 204) return;
    if (response.status !== 503 || attempt === 5) throw new Error(`bench: DELETE ${location} answered ${response.status}, expected 204`);
    console.log(`  DELETE ${location} answered 503; retrying after ${response.headers.get('retry-after')} s`);
    await sleep(Number(response.headers.get('retry-after') ?? 2) * 1000);
  }
}

/**
 * One store: a fresh server, a small detached job first (so code paths are loaded and connections
 * open), then RSS sampled every 100 ms from /proc while one detached RSS_MIB body is captured, from
 * before the request until the job is final. The server's VmHWM is reset (clear_refs 5) just before,
 * so the kernel's own peak catches spikes between samples.
 */
async function runRss(mode: 'bgrs-redis' | 'bgrs-postgres', label: string, major: Major): Promise<RssRun> {
  const server = await startServer(mode, major);
  const pid = server.child.pid!;
  const origin = `http://127.0.0.1:${server.ready.port}`;
  try {
    const warm = await detachBig(origin, 16);
    const warmJob = await finalJob(origin, warm, 60);
    if (warmJob.status !== 'completed') throw new Error(`bench: ${label}: the 16 MiB warm-up job ended ${warmJob.status}`);
    await deleteJob(origin, warm);
    // A second of samples: the baseline is their median, so one GC blip does not set it.
    const idle: number[] = [];
    for (let i = 0; i < 10; i++) {
      idle.push(procStatus(pid, 'VmRSS'));
      await sleep(100);
    }
    const baseline = idle.sort((a, b) => a - b)[5]!;
    let hwmReset = true;
    try {
      writeFileSync(`/proc/${pid}/clear_refs`, '5');
    } catch {
      hwmReset = false;
    }
    let peak = procStatus(pid, 'VmRSS');
    let samples = 1;
    const sampler = setInterval(() => {
      peak = Math.max(peak, procStatus(pid, 'VmRSS'));
      samples += 1;
    }, 100);
    const start = performance.now();
    let job: JobDocument;
    let location: string;
    try {
      location = await detachBig(origin, RSS_MIB);
      // Bounded: about 20 s per GiB would already be very slow for either store on loopback.
      job = await finalJob(origin, location, Math.max(120, (RSS_MIB / 1024) * 600));
    } finally {
      clearInterval(sampler);
    }
    const seconds = (performance.now() - start) / 1000;
    peak = Math.max(peak, procStatus(pid, 'VmRSS'));
    const hwm = hwmReset ? procStatus(pid, 'VmHWM') : null;
    const expected = RSS_MIB * 2 ** 20;
    if (job.status !== 'completed' || job.response?.status !== 200 || job.response.size !== expected) {
      throw new Error(
        `bench: ${label}: the job ended ${job.status} with response ${JSON.stringify(job.response)} (expected 200, size ${expected}); error ${JSON.stringify(job.error)}`,
      );
    }
    await deleteJob(origin, location);
    const run = { label, baseline, peak, hwm, samples, seconds, size: job.response.size };
    console.log(
      `  ${label.padEnd(44)} baseline ${mib(baseline)} MiB  peak ${mib(peak)} MiB  growth ${mib(peak - baseline)} MiB  VmHWM ${hwm === null ? '—' : mib(hwm)} MiB  ${seconds.toFixed(1)} s  (size ${job.response.size})`,
    );
    return run;
  } finally {
    await stopServer(server.child);
    await cleanup(server);
  }
}

function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}

async function runStoresRss(major: Major): Promise<RssRun[]> {
  console.log(`\nStores: peak RSS while a ${RSS_MIB} MiB streamed result is captured`);
  await cleanupAll();
  return [await runRss('bgrs-redis', 'RedisStore', major), await runRss('bgrs-postgres', 'PostgresStore', major)];
}

/**
 * The worker-rate group (bench/worker-rate.ts), with this runner's pinning and Redis. It deletes its own
 * keys after every run and leaves other `bgrs-bench-*` keys alone (it needs no PostgreSQL either).
 */
function runWorkerRate(): Promise<string> {
  return measureWorkerRate({ taskset: PIN ? TASKSET : null, redisUrl: REDIS_URL, deleteKeys });
}

/** Growth goal of the RSS group: the capture must stay in constant memory, whatever the body size. */
const RSS_GOAL = 64 * 2 ** 20;

function rssTable(rows: RssRun[]): string {
  return [
    '| Store | body stored (GET /bgrs/:id response.size) | baseline RSS MiB | peak RSS MiB (100 ms samples) | growth MiB | peak VmHWM MiB | Goal | Result | capture s | MiB/s |',
    '|---|---:|---:|---:|---:|---:|---:|---|---:|---:|',
    ...rows.map((r) => {
      const growth = Math.max(r.peak, r.hwm ?? 0) - r.baseline;
      return `| ${r.label} | ${r.size.toLocaleString('en-US')} | ${mib(r.baseline)} | ${mib(r.peak)} | ${mib(r.peak - r.baseline)} | ${r.hwm === null ? '—' : mib(r.hwm)} | < 64 | ${growth < RSS_GOAL ? 'PASS' : 'MISS'} | ${r.seconds.toFixed(1)} | ${fmt(r.size / 2 ** 20 / r.seconds)} |`;
    }),
  ].join('\n');
}

/** Throughput counting the time the server kept working after the load stopped (the job backlog). */
function sustained(m: Measurement): number {
  return m.total / (m.seconds + m.drainMs / 1000);
}

function table(comparisons: Comparison[]): string {
  const rows = comparisons.map((c) => {
    const ratio = c.subject.mean / c.baseline.mean;
    // Elsewhere the drain is only the 50 ms detection granularity (GC, socket teardown): noise.
    const withDrain = c.background ? (sustained(c.subject) / sustained(c.baseline)).toFixed(3) : '—';
    const goal = c.goal === null ? '—' : `≥ ${Number.isInteger(c.goal) ? c.goal.toFixed(1) : c.goal}`;
    const verdict = c.goal === null ? '—' : ratio >= c.goal ? 'PASS' : 'MISS';
    return `| ${c.name} | ${fmt(c.subject.mean)} | ${fmt(c.baseline.mean)} | ${ratio.toFixed(3)} | ${goal} | ${verdict} | ${withDrain} |`;
  });
  return ['| Scenario | req/s subject | req/s baseline | Ratio | Goal | Result | Ratio incl. drain |', '|---|---:|---:|---:|---:|---|---:|', ...rows].join(
    '\n',
  );
}

function details(measurements: Measurement[]): string {
  const rows = measurements.map(
    (m) => `| ${m.label} | ${fmt(m.mean)} | ${fmt(m.stddev)} | ${m.latencyP50} | ${m.latencyP99} | ${fmt(m.drainMs)} | ${m.bodyBytes} | ${m.status} |`,
  );
  return [
    '| Run | req/s mean | stddev (slices) | p50 ms (median slice) | p99 ms (worst slice) | drain ms | body bytes | statuses |',
    '|---|---:|---:|---:|---:|---:|---:|---|',
    ...rows,
  ].join('\n');
}

const started = new Date();
const comparisons: Comparison[] = [];
for (const major of MAJORS) comparisons.push(...(await runMajor(major)));
// The store groups run once, on the first major (see the header).
const storeComparisons = runs('stores-rate') ? await runStoresRate(MAJORS[0]!) : [];
const rssRuns = runs('stores-rss') ? await runStoresRss(MAJORS[0]!) : [];

/** The set-up lines of one section; each section carries its own, since a later run may keep it. */
function machine(groups: Group[], majors: Major[], load: boolean): string {
  return [
    `- Date: ${started.toISOString()}`,
    `- CPU: ${os.cpus()[0]?.model.trim() ?? 'unknown'}, ${os.cpus().length} cores (${os.platform()} ${os.release()})`,
    `- Node: ${process.version}`,
    `- Express: ${majors.map((major) => version(major === '4' ? 'express4' : 'express')).join(', ')}`,
    `- Scenarios: ${groups.join(', ')}${process.env.BENCH_ONLY ? ' (BENCH_ONLY)' : ''}`,
    ...(load
      ? [
          `- Load: autocannon ${version('autocannon')}, ${CONNECTIONS} connections, pipelining 1, 127.0.0.1`,
          `- Duration: ${WARMUP} s warm-up per server, then ${ROUNDS} alternating slices of ${SLICE} s per side (${ROUNDS * SLICE} s measured per side)`,
        ]
      : []),
    `- Pinning: ${PIN ? 'load generator on CPU 0, server on CPU 1 (taskset)' : 'none'}`,
  ].join('\n');
}

const coreGroups = ONLY.filter((group): group is Group => group === 'core' || group === 'idempotency');
const summary = table(comparisons);
if (comparisons.length > 0) console.log(`\n${summary}\n`);
const storeSummary = table(storeComparisons);
if (storeComparisons.length > 0) console.log(`\n${storeSummary}\n`);
if (rssRuns.length > 0) console.log(`\n${rssTable(rssRuns)}\n`);

const sections: Record<string, string | null> = {
  core:
    coreGroups.length === 0
      ? null
      : `## Ratios

${machine(coreGroups, MAJORS, true)}

${summary}

- Ratio = subject req/s ÷ baseline req/s (requests answered ÷ seconds under load, all slices).
- *Ratio incl. drain* (submissions only) also counts the time each server kept working after its
  load stopped: a detached job keeps running after its 202, so acks can outrun the jobs and leave
  a backlog; this column is the sustainable rate.
- Expect about ±5 % run-to-run on the ratios on a small shared VM, even with interleaving; a
  ratio within that of its goal is not a clear verdict either way.
- The submission server creates one job per request (replayed through the app in the background,
  kept in \`MemoryStore({ max: 1_000_000 })\`), so jobs accumulate during the run.
- The \`res.json\` baseline returns an object with the shape of a finished job document; body sizes
  are in the table below.
- Idempotency rows: subject = \`background.idempotency()\` (default \`MemoryStore\`), baseline =
  express-idempotency with its default in-memory adapter, both on Express with \`express.json()\` and
  the same \`POST /orders\` handler (\`res.status(201).json({ id, ...req.body })\`). First-time keys:
  every request carries a key never sent before, so the handler runs every time (ours runs it through
  its in-process replay, by design). Replays: the requests cycle through ${REPLAY_KEYS} keys sent once
  before the warm-up, so every measured request is answered from the store. After every slice the
  runner checks the statuses, the \`Idempotent-Replayed\` header (ours) and, through the server's
  count of handler runs, that replays never ran the handler and new keys ran it once each.
- express-idempotency's in-memory adapter keeps records in an array and scans it on every lookup,
  so with first-time keys its rate falls as keys pile up during the run (its stddev shows it); that
  ratio therefore grows with \`BENCH_DURATION\`. Ours keeps keys in a \`Map\`.

### Runs

${details(comparisons.flatMap((c) => [c.baseline, c.subject]))}`,
  'stores-rate':
    storeComparisons.length === 0
      ? null
      : `## Stores: detached submissions vs BullMQ

${machine(['stores-rate'], [MAJORS[0]!], true)}
- Services: Redis ${await redisVersion()}, PostgreSQL ${await postgresVersion()}, both on 127.0.0.1 (same machine, unpinned)

${storeSummary}

- Subject: \`bgrs({ store, maxQueued: Infinity, validations: false })\` with \`new RedisStore({ client:
  new Redis(), prefix: 'bgrs-bench-<random>:' })\` or \`new PostgresStore({ pool: new pg.Pool(),
  table: 'bgrs_bench_<random>' })\` (default pool of 10, migrated before the start), the same
  \`GET /hello?bgrs=yes\` as the core rows: a 202 with the job document, then the job runs in the same
  process (the route answers \`hello\`) and its status and result go to the store.
- Baseline (goal row): an Express route doing \`await queue.add('job', { method, url })\` and answering
  202 with \`{ id, status, links }\` and a Location, with a BullMQ \`Worker\` in the same process,
  concurrency 64 (bgrs's default), whose processor returns \`'hello'\`. That is the like-for-like
  comparison: both sides take the job, run it in this process and keep its outcome in Redis (BullMQ
  keeps completed jobs by default, bgrs keeps finished jobs for its \`ttl\`). Measuring queue.add()
  without a Worker compares bgrs's whole job with only BullMQ's enqueue; that row is reported too,
  without a goal, as the ceiling of an ack that defers all work to another process.
- PostgresStore is compared with the same BullMQ-with-Worker route (no goal): it is the answer to
  "what does a durable SQL store cost per job next to a Redis queue".
- *Ratio incl. drain* counts the time each server kept working after its load stopped (jobs still
  queued behind the acks): the sustainable rate of acks whose jobs are also done.
- After every slice the runner checks that every 202 became a completed job (bgrs: a counting
  wrapper around the store's \`finishJob\`; BullMQ: the Worker's \`completed\` events) and none failed.
  Keys and tables are removed when each server stops.
- An accepted job that never completes fails the run. (That check found a real bug: a job admitted
  to run but demoted to the queue while it was being written was never started; admission now holds
  its place.)

### Runs

${details(storeComparisons.flatMap((c) => [c.baseline, c.subject]))}`,
  'stores-rss':
    rssRuns.length === 0
      ? null
      : `## Stores: peak RSS while a ${RSS_MIB} MiB streamed result is captured

${machine(['stores-rss'], [MAJORS[0]!], false)}

${rssTable(rssRuns)}

- One fresh server per store (\`bgrs({ store, maxQueued: Infinity, validations: false })\`), whose
  route streams ${RSS_MIB * 16} fresh 64 KiB chunks (random bytes, so TOAST cannot compress them), waiting
  for \`'drain'\` whenever \`write()\` returns false. It is detached once (\`GET /big?bgrs=yes\`); the
  runner samples the server's VmRSS from /proc every 100 ms from before the request until GET
  /bgrs/:id shows the job final, after a 16 MiB warm-up job (code loaded, connections open).
- Baseline: median of 10 samples over the second before the request. Growth = sampled peak −
  baseline. *Peak VmHWM* is the kernel's high-water mark over the capture (reset with
  \`clear_refs\` just before), which also catches spikes between samples; the verdict uses the larger
  of the two peaks.
- Checked: the job completed with \`response.size\` = ${(RSS_MIB * 2 ** 20).toLocaleString('en-US')} (GET /bgrs/:id);
  then DELETE /bgrs/:id answered 204, and the bench's keys / tables were removed.`,
  'memory-list': runs('memory-list') ? await measureMemoryList() : null,
  // Written by bench/idle-streams.ts (`npm run bench:idle`), never here: kept as it is.
  'idle-streams': null,
  'worker-rate': runs('worker-rate') ? await runWorkerRate() : null,
};

await closeServices();

// Sections this run did not measure keep their previous text, so a BENCH_ONLY run erases nothing.
const previous = existsSync(here('./RESULTS.md')) ? readFileSync(here('./RESULTS.md'), 'utf8') : '';
const kept = (name: string): string => {
  const match = new RegExp(`<!-- bench:${name} -->\\n([\\s\\S]*?)\\n<!-- /bench:${name} -->`).exec(previous);
  const how =
    name === 'core' ? 'BENCH_ONLY=core,idempotency npm run bench' : name === 'idle-streams' ? 'npm run bench:idle' : `BENCH_ONLY=${name} npm run bench`;
  return match?.[1] ?? `## ${name}\n\nNot measured yet: run \`${how}\`.`;
};
const body = Object.entries(sections)
  .map(([name, text]) => `<!-- bench:${name} -->\n${text ?? kept(name)}\n<!-- /bench:${name} -->`)
  .join('\n\n');

const report = `# express-bgrs benchmark results

Written by \`npm run bench\` (bench/run.ts); do not edit by hand. Every comparison runs its baseline
and its subject in two fresh server processes (bench/server.ts, \`NODE_ENV=production\`) and loads
them in alternating slices, one at a time, waiting after each slice until the server is idle. The
load generator runs on the same machine, so absolute numbers understate the server; the ratios are
what the goals are about. Each section below says when it was measured: a run limited with
\`BENCH_ONLY\` rewrites its own sections and keeps the others. The default run measures core,
idempotency, stores-rate and worker-rate (one bgrs queue worker process against a plain BullMQ Worker,
bench/worker-rate.ts); stores-rss (about a minute) runs with \`BENCH_ONLY=stores-rss\` (or
\`stores\` for both store groups), the MemoryStore listing with \`BENCH_ONLY=memory-list\`.

${body}
`;
writeFileSync(here('./RESULTS.md'), report);
console.log(`Wrote ${here('./RESULTS.md')} (${((Date.now() - started.getTime()) / 1000).toFixed(0)} s)`);
