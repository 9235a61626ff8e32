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
//   BENCH_ONLY         scenario groups to run, comma-separated: "core" (bgrs vs plain Express) and/or
//                      "idempotency" (the guard vs express-idempotency) (default both)
//   BENCH_REPLAY_KEYS  how many keys the replay scenario cycles through (default 100)
//   BENCH_PIN          "0" to not pin the load generator and the server to separate cores (default on, Linux with taskset)
//   BENCH_DEBUG        set to print every slice's rate and drain
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';

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
const GROUPS = ['core', 'idempotency'] as const;
type Group = (typeof GROUPS)[number];
const ONLY = (process.env.BENCH_ONLY ?? GROUPS.join(','))
  .split(',')
  .map((group) => group.trim())
  .filter((group) => group !== '');
for (const group of ONLY) {
  if (!(GROUPS as readonly string[]).includes(group)) throw new Error(`BENCH_ONLY: unknown group "${group}" (known: ${GROUPS.join(', ')})`);
}
const runs = (group: Group): boolean => ONLY.includes(group);
if (ONLY.length === 0) throw new Error(`BENCH_ONLY must list ${GROUPS.join(' and/or ')}`);
const REPLAY_KEYS = Math.round(positive('BENCH_REPLAY_KEYS', 100));

// With two cores, the load generator (this process) and the server each get one, so the scheduler
// does not shuffle them (and the server's GC threads) around between slices.
const TASKSET = '/usr/bin/taskset';
const PIN = process.env.BENCH_PIN !== '0' && os.platform() === 'linux' && os.cpus().length >= 2 && existsSync(TASKSET);
if (PIN) execFileSync(TASKSET, ['-a', '-cp', '0', String(process.pid)], { stdio: 'ignore' });

type Mode = 'plain' | 'bgrs' | 'idem-bgrs' | 'idem-lib';
type Major = '5' | '4';

interface Ready {
  port: number;
  location: string | null;
}

interface Server {
  child: ChildProcess;
  ready: Ready;
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
  goal: number;
  /** Whether background work outlives the request, making the drain-inclusive ratio meaningful. */
  background: boolean;
}

/** Starts one server process and waits for its ready line. */
function startServer(mode: Mode, major: Major): Promise<Server> {
  const node = [process.execPath, '--import', 'tsx', here('./server.ts'), mode, major];
  const [command, ...args] = PIN ? [TASKSET, '-c', '1', ...node] : node;
  const child = spawn(command!, args, {
    // Production mode, as an application would be deployed.
    env: { ...process.env, NODE_ENV: 'production' },
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
      resolve({ child, ready: JSON.parse(line) as Ready, executions: 0 });
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

/** How often the idempotency server's handler has run so far. */
async function executions(server: Server): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${server.ready.port}/stats`);
  return ((await response.json()) as { executions: number }).executions;
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
      status: [...this.statuses].map(([code, count]) => `${code}×${count}`).join(' '),
    };
  }
}

/** Loads one server for one slice, checks every answer had the expected status, waits for it to go idle. */
async function slice(server: Server, side: Side, seconds: number, tally: Tally | null): Promise<void> {
  const url = `http://127.0.0.1:${server.ready.port}${side.path(server.ready)}`;
  const { result, wrongReplayHeader } = await load(url, seconds, side.keyed);
  const end = performance.now();
  const codes = Object.keys(result.statusCodeStats ?? {});
  // A slice with errors or another status measured something else: fail loudly, not silently.
  if (result.errors > 0 || result.timeouts > 0 || codes.some((code) => code !== String(side.status))) {
    throw new Error(`bench: ${side.label}: errors=${result.errors} timeouts=${result.timeouts} statuses=${codes.join(',')}`);
  }
  if (wrongReplayHeader > 0) {
    throw new Error(`bench: ${side.label}: ${wrongReplayHeader} answers had ${side.keyed?.kind === 'replay' && side.keyed.replayHeader ? 'no' : 'an'} Idempotent-Replayed: true`);
  }
  const drain = await quiesce(server.child, end);
  if (side.keyed) await checkExecutions(server, side, result);
  tally?.add(result, drain);
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
    { name: `${express}: Idempotency-Key guard, a new key on every POST (handler runs, 201), vs ${lib} (memory adapter)`, baseline: a1, subject: b1, goal: 1.0, background: false },
    { name: `${express}: Idempotency-Key guard, ${replays} sent once before (stored 201), vs ${lib} (memory adapter)`, baseline: a2, subject: b2, goal: 1.0, background: false },
  ];
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
    return `| ${c.name} | ${fmt(c.subject.mean)} | ${fmt(c.baseline.mean)} | ${ratio.toFixed(3)} | ≥ ${Number.isInteger(c.goal) ? c.goal.toFixed(1) : c.goal} | ${ratio >= c.goal ? 'PASS' : 'MISS'} | ${withDrain} |`;
  });
  return [
    '| Scenario | req/s subject | req/s baseline | Ratio | Goal | Result | Ratio incl. drain |',
    '|---|---:|---:|---:|---:|---|---:|',
    ...rows,
  ].join('\n');
}

function details(measurements: Measurement[]): string {
  const rows = measurements.map(
    (m) =>
      `| ${m.label} | ${fmt(m.mean)} | ${fmt(m.stddev)} | ${m.latencyP50} | ${m.latencyP99} | ${fmt(m.drainMs)} | ${m.bodyBytes} | ${m.status} |`,
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

const machine = [
  `- Date: ${started.toISOString()}`,
  `- CPU: ${os.cpus()[0]?.model.trim() ?? 'unknown'}, ${os.cpus().length} cores (${os.platform()} ${os.release()})`,
  `- Node: ${process.version}`,
  `- Express: ${MAJORS.map((major) => version(major === '4' ? 'express4' : 'express')).join(', ')}`,
  `- Scenarios: ${ONLY.join(', ')}${process.env.BENCH_ONLY ? ' (BENCH_ONLY)' : ''}`,
  `- Load: autocannon ${version('autocannon')}, ${CONNECTIONS} connections, pipelining 1, 127.0.0.1`,
  `- Duration: ${WARMUP} s warm-up per server, then ${ROUNDS} alternating slices of ${SLICE} s per side (${ROUNDS * SLICE} s measured per side)`,
  `- Pinning: ${PIN ? 'load generator on CPU 0, server on CPU 1 (taskset)' : 'none'}`,
].join('\n');

const summary = table(comparisons);
console.log(`\n${summary}\n`);

const report = `# express-bgrs benchmark results

Written by \`npm run bench\` (bench/run.ts); do not edit by hand. Every comparison runs its baseline
and its subject in two fresh server processes (bench/server.ts, \`NODE_ENV=production\`) and loads
them in alternating slices, one at a time, waiting after each slice until the server is idle. The
load generator runs on the same machine, so absolute numbers understate the server; the ratios are
what the goals are about.

${machine}

## Ratios

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

## Runs

${details(comparisons.flatMap((c) => [c.baseline, c.subject]))}
`;
writeFileSync(here('./RESULTS.md'), report);
console.log(`Wrote ${here('./RESULTS.md')} (${((Date.now() - started.getTime()) / 1000).toFixed(0)} s)`);
