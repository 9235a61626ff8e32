// The `worker-rate` group of `npm run bench`: completed jobs per second of ONE bgrs queue worker process
// (`background.work(app, { concurrency })`) against a plain BullMQ Worker process running the same trivial
// handler, plus where the time goes (a --cpu-prof run of each side, Redis round trips per job).
//
// Each run gets fresh keys (`bgrs-bench-<ns>…`, deleted after it) and a queue filled with WR_N jobs
// before its worker starts: the baseline by `queue.addBulk` from this process; the subject through the
// real HTTP surface (N detached `GET /item?n=<i>&bgrs=yes` to a bgrs web process in queue mode, which
// records each job in RedisStore and enqueues its id), the web stopped before the worker starts. A
// worker process (bench/worker-rate-proc.ts, pinned like the bench servers) times itself from its first
// take to the N-th completion and exits; then every job is checked here (completed, right result).
// Runs alternate B S B S B S per concurrency. One more run of each side, not timed, is profiled
// (--cpu-prof, cut to the measured window) and counts Redis commands by connection (bench/worker-rate-count.ts).
//
// Environment: BENCH_WORKER_JOBS (N, default 5000), BENCH_WORKER_CONCURRENCY (comma-separated, default
// "50"; "50,1" adds the latency-bound case; the first is profiled), BENCH_WORKER_RUNS (runs per side, default 3), BENCH_CPU_PROF (keep the
// profiles in that directory instead of a temporary one).
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { type ProfileSummary, summarise } from './cpuprofile.js';
import { workerRateSection } from './worker-rate-report.js';

export interface WorkerRateEnv {
  /** Pin the worker and web processes to CPU 1 with this taskset (the runner is on CPU 0). */
  taskset: string | null;
  redisUrl: string;
  deleteKeys(pattern: string): Promise<number>;
}

type Side = 'bgrs' | 'bullmq';

export interface Run {
  side: Side;
  concurrency: number;
  seconds: number;
  rate: number;
  /** CPU time (user + system) the worker process used per job in the window, µs. */
  cpuPerJob: number;
  /** Subject only: detached submissions per second while the queue was filled. */
  fillRate: number | null;
}

export interface Diagnosis {
  side: Side;
  concurrency: number;
  rate: number;
  cpuPerJob: number;
  profile: ProfileSummary;
  counts: { commands: Record<string, Record<string, number>>; roundTrips: Record<string, number>; store: Record<string, number> };
}

interface WorkerLine {
  pid: number;
  seconds: number;
  firstTake: string;
  done: string;
  cpuMs: number;
  completed: number;
  failed: number;
  counts?: Diagnosis['counts'];
}

const ROOT = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, '');
const PROC = fileURLToPath(new URL('./worker-rate-proc.ts', import.meta.url));
const N = Math.round(Number(process.env.BENCH_WORKER_JOBS || 5000));
const CONCURRENCIES = (process.env.BENCH_WORKER_CONCURRENCY || '50').split(',').map((c) => Math.round(Number(c)));
const RUNS = Math.round(Number(process.env.BENCH_WORKER_RUNS || 3));
if (!(N > 0) || !(RUNS > 0) || CONCURRENCIES.some((c) => !(c > 0))) throw new Error('bench: BENCH_WORKER_JOBS, _CONCURRENCY and _RUNS must be positive');
const QUEUE = 'wr';
/** Parallel detached requests while filling, and parallel reads while checking. */
const PARALLEL = 32;

function start(env: WorkerRateEnv, role: 'web' | Side, ns: string, concurrency: number, profileDir?: string): ChildProcess {
  // No --cpu-prof-name: tsx's loader hooks run on a thread of their own, whose profile would overwrite
  // the main thread's under one name. The default names carry the thread id (the main thread's is 0).
  const prof = profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];
  const node = [process.execPath, ...prof, '--import', 'tsx', PROC, role];
  const [command, ...args] = env.taskset ? [env.taskset, '-c', '1', ...node] : node;
  return spawn(command!, args, {
    env: {
      ...process.env,
      NODE_ENV: 'production',
      BENCH_NS: ns,
      BENCH_REDIS: env.redisUrl,
      WR_N: String(N),
      WR_CONCURRENCY: String(concurrency),
      WR_COUNT: profileDir ? '1' : '',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
}

/** The child's first stdout line, parsed; fails if it exits first or takes over two minutes. */
function firstLine<T>(child: ChildProcess, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`bench: ${what} gave no answer within 120 s`));
    }, 120_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`bench: ${what} exited (code ${code}) before answering`));
    });
    createInterface({ input: child.stdout! }).once('line', (line) => {
      clearTimeout(timer);
      resolve(JSON.parse(line) as T);
    });
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function parallel(count: number, each: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < count) await each(next++);
    }),
  );
}

const expected = (n: number): string => JSON.stringify({ ok: true, n });

function connection(env: WorkerRateEnv): { host: string; port: number; maxRetriesPerRequest: null } {
  const { hostname, port } = new URL(env.redisUrl);
  return { host: hostname, port: Number(port || 6379), maxRetriesPerRequest: null };
}

/** Baseline: addBulk N jobs, run the BullMQ worker, check every job completed with its return value. */
async function baselineRun(env: WorkerRateEnv, ns: string, concurrency: number, profileDir?: string): Promise<WorkerLine> {
  const { Queue } = await import('bullmq');
  const queue = new Queue<{ n: number }>(QUEUE, { connection: connection(env), prefix: `bgrs-bench-${ns}-bull` });
  try {
    for (let i = 0; i < N; i += 1000) {
      await queue.addBulk(Array.from({ length: Math.min(1000, N - i) }, (_, k) => ({ name: 'job', data: { n: i + k } })));
    }
    const child = start(env, 'bullmq', ns, concurrency, profileDir);
    const line = await firstLine<WorkerLine>(child, 'the BullMQ worker');
    await exited(child);
    const counts = await queue.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed');
    const done = await queue.getJobs(['completed'], 0, N - 1);
    const wrong = done.filter((job) => JSON.stringify(job.returnvalue) !== expected(job.data.n)).length;
    if (
      line.completed !== N ||
      counts.completed !== N ||
      done.length !== N ||
      wrong > 0 ||
      (counts.failed ?? 0) + (counts.waiting ?? 0) + (counts.active ?? 0) + (counts.delayed ?? 0) > 0
    ) {
      throw new Error(
        `bench: BullMQ worker: ${JSON.stringify(counts)}, ${done.length} completed read back, ${wrong} with a wrong return value (expected ${N})`,
      );
    }
    return line;
  } finally {
    await queue.close();
  }
}

/** Subject: N detached requests through a bgrs web process, then the bgrs worker; every job checked in the store. */
async function subjectRun(env: WorkerRateEnv, ns: string, concurrency: number, profileDir?: string): Promise<WorkerLine & { fillRate: number }> {
  const web = start(env, 'web', ns, concurrency);
  const ids: string[] = [];
  let fillRate: number;
  try {
    const { port } = await firstLine<{ port: number }>(web, 'the bgrs web process');
    const began = performance.now();
    await parallel(N, async (n) => {
      const response = await fetch(`http://127.0.0.1:${port}/item?n=${n}&bgrs=yes`);
      const body = (await response.json()) as { id?: string };
      if (response.status !== 202 || !body.id) throw new Error(`bench: GET /item?bgrs=yes answered ${response.status}`);
      ids[n] = body.id;
    });
    fillRate = N / ((performance.now() - began) / 1000);
  } finally {
    web.kill('SIGTERM');
    await exited(web);
  }
  const child = start(env, 'bgrs', ns, concurrency, profileDir);
  const line = await firstLine<WorkerLine>(child, 'the bgrs worker');
  await exited(child);
  const { Redis } = await import('ioredis');
  const { RedisStore } = await import('../src/stores/redis.js');
  const client = new Redis(env.redisUrl);
  try {
    const store = new RedisStore({ client, prefix: `bgrs-bench-${ns}:` });
    const bad: string[] = [];
    await parallel(N, async (n) => {
      const job = await store.getJob(ids[n]!);
      const chunks: Uint8Array[] = [];
      for await (const chunk of (await store.readResult(ids[n]!)) ?? []) chunks.push(chunk);
      const body = Buffer.concat(chunks).toString();
      if (job?.status !== 'completed' || job.response?.status !== 200 || body !== expected(n))
        bad.push(`${n}: ${job?.status} ${job?.response?.status} ${body}`);
    });
    if (line.completed !== N || line.failed > 0 || bad.length > 0) {
      throw new Error(
        `bench: bgrs worker: ${line.completed} completed, ${line.failed} failed, ${bad.length} of ${N} wrong in the store (${bad.slice(0, 3).join('; ')})`,
      );
    }
  } finally {
    await client.quit();
  }
  return { ...line, fillRate };
}

async function once(env: WorkerRateEnv, side: Side, concurrency: number, profileDir?: string): Promise<WorkerLine & { fillRate: number | null }> {
  const ns = randomUUID().replaceAll('-', '').slice(0, 10);
  try {
    return side === 'bullmq'
      ? { ...(await baselineRun(env, ns, concurrency, profileDir)), fillRate: null }
      : await subjectRun(env, ns, concurrency, profileDir);
  } finally {
    await env.deleteKeys(`bgrs-bench-${ns}*`);
  }
}

export async function measureWorkerRate(env: WorkerRateEnv): Promise<string> {
  console.log(`\nWorker rate: ${N} queued jobs, one worker process, bgrs vs a plain BullMQ Worker (concurrency ${CONCURRENCIES.join(', ')})`);
  const load = os.loadavg()[0]!;
  const runs: Run[] = [];
  for (const concurrency of CONCURRENCIES) {
    for (let i = 0; i < RUNS; i++) {
      for (const side of ['bullmq', 'bgrs'] as const) {
        const line = await once(env, side, concurrency);
        const run = { side, concurrency, seconds: line.seconds, rate: N / line.seconds, cpuPerJob: (line.cpuMs * 1000) / N, fillRate: line.fillRate };
        runs.push(run);
        console.log(
          `  ${side.padEnd(6)} C=${concurrency} ${run.rate.toFixed(0).padStart(6)} jobs/s (${run.seconds.toFixed(2)} s, ${run.cpuPerJob.toFixed(0)} µs CPU/job)${run.fillRate ? `  filled at ${run.fillRate.toFixed(0)} req/s` : ''}`,
        );
      }
    }
  }
  const dir = process.env.BENCH_CPU_PROF || mkdtempSync(join(os.tmpdir(), 'bgrs-worker-rate-'));
  const diagnoses: Diagnosis[] = [];
  try {
    for (const side of ['bullmq', 'bgrs'] as const) {
      const sideDir = join(dir, `worker-rate-${side}-${Date.now()}`);
      const line = await once(env, side, CONCURRENCIES[0]!, sideDir);
      const main = readdirSync(sideDir).find((name) => name.includes(`.${line.pid}.0.`) && name.endsWith('.cpuprofile'));
      if (!main) throw new Error(`bench: no main-thread profile of process ${line.pid} in ${sideDir}`);
      const profile = summarise(join(sideDir, main), BigInt(line.firstTake), BigInt(line.done), ROOT);
      diagnoses.push({ side, concurrency: CONCURRENCIES[0]!, rate: N / line.seconds, cpuPerJob: (line.cpuMs * 1000) / N, profile, counts: line.counts! });
      console.log(`  ${side.padEnd(6)} profiled: ${(N / line.seconds).toFixed(0)} jobs/s, ${((profile.totalMs * 1000) / N).toFixed(0)} µs sampled per job`);
    }
  } finally {
    if (!process.env.BENCH_CPU_PROF) rmSync(dir, { recursive: true, force: true });
  }
  return workerRateSection({ N, runsPerSide: RUNS, load, pinned: env.taskset !== null, runs, diagnoses, versions: versions(), redis: await redisVersion(env) });
}

function versions(): Record<string, string> {
  const of = (pkg: string): string => (JSON.parse(readFileSync(join(ROOT, 'node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version;
  return { bullmq: of('bullmq'), ioredis: of('ioredis'), express: of('express') };
}

async function redisVersion(env: WorkerRateEnv): Promise<string> {
  const { Redis } = await import('ioredis');
  const client = new Redis(env.redisUrl);
  try {
    return /redis_version:(\S+)/.exec(await client.info('server'))?.[1] ?? 'unknown';
  } finally {
    await client.quit();
  }
}
