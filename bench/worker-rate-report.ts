// Writes the `worker-rate` section of bench/RESULTS.md from the runs and the profiled runs of bench/worker-rate.ts.
import os from 'node:os';
import type { Diagnosis, Run } from './worker-rate.js';

interface Input {
  N: number;
  runsPerSide: number;
  load: number;
  pinned: boolean;
  runs: Run[];
  diagnoses: Diagnosis[];
  versions: Record<string, string>;
  redis: string;
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};
const int = (value: number): string => Math.round(value).toLocaleString('en-US');
const spread = (values: number[]): string =>
  `${int(Math.min(...values))}–${int(Math.max(...values))} (±${((50 * (Math.max(...values) - Math.min(...values))) / median(values)).toFixed(0)} %)`;

function rateTable(input: Input): string {
  const rows = [...new Set(input.runs.map((run) => run.concurrency))].map((c) => {
    const of = (side: Run['side'], what: 'rate' | 'cpuPerJob'): number[] =>
      input.runs.filter((run) => run.side === side && run.concurrency === c).map((run) => run[what]);
    const [s, b] = [of('bgrs', 'rate'), of('bullmq', 'rate')];
    const pairs = s.map((rate, i) => rate / b[i]!);
    const cpu = `${int(median(of('bgrs', 'cpuPerJob')))} / ${int(median(of('bullmq', 'cpuPerJob')))}`;
    return `| ${c} | ${int(median(s))} | ${spread(s)} | ${int(median(b))} | ${spread(b)} | **${(median(s) / median(b)).toFixed(3)}** | ${Math.min(...pairs).toFixed(3)}–${Math.max(...pairs).toFixed(3)} | ${cpu} |`;
  });
  return [
    '| Concurrency | bgrs worker jobs/s (median) | bgrs min–max | BullMQ Worker jobs/s (median) | BullMQ min–max | Ratio (medians) | Ratio per B/S pair | CPU µs/job bgrs / BullMQ (median) |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows,
  ].join('\n');
}

function runsTable(input: Input): string {
  return [
    '| # | Side | Concurrency | seconds | jobs/s | CPU µs/job | queue filled at (detached req/s) |',
    '|---:|---|---:|---:|---:|---:|---:|',
    ...input.runs.map(
      (run, i) =>
        `| ${i + 1} | ${run.side === 'bgrs' ? 'bgrs worker' : 'BullMQ Worker'} | ${run.concurrency} | ${run.seconds.toFixed(2)} | ${int(run.rate)} | ${int(run.cpuPerJob)} | ${run.fillRate ? int(run.fillRate) : '— (addBulk)'} |`,
    ),
  ].join('\n');
}

/** Self time per job by bucket, both sides side by side (µs of CPU per job, and share of the window). */
function bucketTable(input: Input, s: Diagnosis, b: Diagnosis): string {
  const names = [...new Set([...s.profile.buckets, ...b.profile.buckets].map(([name]) => name))];
  const get = (d: Diagnosis, name: string): number => d.profile.buckets.find(([n]) => n === name)?.[1] ?? 0;
  const cell = (d: Diagnosis, name: string): string => {
    const ms = get(d, name);
    return ms === 0 ? '—' : `${((ms * 1000) / input.N).toFixed(1)} | ${((100 * ms) / d.profile.totalMs).toFixed(1)} %`;
  };
  const rows = names
    .sort((x, y) => get(s, y) + get(b, y) - get(s, x) - get(b, x))
    .map((name) => `| ${name} | ${get(s, name) ? cell(s, name) : '— | —'} | ${get(b, name) ? cell(b, name) : '— | —'} |`);
  const busy = (d: Diagnosis): number => ((d.profile.totalMs - get(d, 'idle')) * 1000) / input.N;
  return [
    '| Bucket (self time) | bgrs µs/job | bgrs share | BullMQ µs/job | BullMQ share |',
    '|---|---:|---:|---:|---:|',
    ...rows,
    `| **all but idle** | **${busy(s).toFixed(1)}** | | **${busy(b).toFixed(1)}** | |`,
  ].join('\n');
}

function topTable(d: Diagnosis, N: number): string {
  return [
    '| Frame | Bucket | self ms | µs/job |',
    '|---|---|---:|---:|',
    ...d.profile.top.map((f) => `| \`${f.frame}\` | ${f.bucket} | ${f.ms.toFixed(0)} | ${((f.ms * 1000) / N).toFixed(1)} |`),
  ].join('\n');
}

const perJob = (count: number | undefined, N: number): string => (count ? (count / N).toFixed(count / N < 0.01 ? 4 : 2) : '0');

function tripsTable(input: Input, s: Diagnosis, b: Diagnosis): string {
  const conn = (d: Diagnosis, name: string): string =>
    Object.entries(d.counts.commands[name] ?? {})
      .filter(([, count]) => count / input.N >= 0.01)
      .sort((x, y) => y[1] - x[1])
      .map(([command, count]) => `${command} ${perJob(count, input.N)}`)
      .join(', ') || '—';
  const total = (d: Diagnosis): number => Object.values(d.counts.roundTrips).reduce((a, c) => a + c, 0);
  return [
    '| Per job | bgrs worker | BullMQ Worker |',
    '|---|---:|---:|',
    `| Redis round trips, bgrs store connection | ${perJob(s.counts.roundTrips.store, input.N)} | — |`,
    `| Redis round trips, BullMQ connections | ${perJob(s.counts.roundTrips.bullmq, input.N)} | ${perJob(b.counts.roundTrips.bullmq, input.N)} |`,
    `| **Redis round trips, total** | **${perJob(total(s), input.N)}** | **${perJob(total(b), input.N)}** |`,
    `| store commands | ${conn(s, 'store')} | — |`,
    `| BullMQ commands | ${conn(s, 'bullmq')} | ${conn(b, 'bullmq')} |`,
    `| store method calls | ${
      Object.entries(s.counts.store)
        .sort((x, y) => y[1] - x[1])
        .map(([method, count]) => `${method} ${perJob(count, input.N)}`)
        .join(', ') || '—'
    } | — |`,
  ].join('\n');
}

export function workerRateSection(input: Input): string {
  const s = input.diagnoses.find((d) => d.side === 'bgrs')!;
  const b = input.diagnoses.find((d) => d.side === 'bullmq')!;
  const C = s.concurrency;
  return `## Worker: completed jobs per second, one bgrs worker process vs a plain BullMQ Worker

- Date: ${new Date().toISOString()}
- CPU: ${os.cpus()[0]?.model.trim() ?? 'unknown'}, ${os.cpus().length} cores (${os.platform()} ${os.release()}); load average ${input.load.toFixed(2)} at the start
- Node: ${process.version}; Express ${input.versions.express}, BullMQ ${input.versions.bullmq}, ioredis ${input.versions.ioredis}; Redis ${input.redis} on 127.0.0.1 (unpinned)
- Scenarios: worker-rate${process.env.BENCH_ONLY ? ' (BENCH_ONLY)' : ''}; ${input.N.toLocaleString('en-US')} jobs per run, ${input.runsPerSide} runs per side and concurrency, alternating B S B S…
- Pinning: ${input.pinned ? 'runner on CPU 0, web and worker processes on CPU 1 (taskset)' : 'none'}

${rateTable(input)}

- Subject: a queue filled with ${input.N.toLocaleString('en-US')} jobs through the real HTTP surface (detached \`GET
  /item?n=<i>&bgrs=yes\`, ${32} at a time, to a bgrs web process in queue mode: \`RedisStore\` + \`bullmq()\`;
  the route answers \`res.json({ ok: true, n })\`), the web stopped, then ONE process (bench/worker-rate-proc.ts)
  running the same app with \`background.work(app, { concurrency })\`, timed in-process from its first take
  (the first \`store.takeJob\`) to the ${input.N.toLocaleString('en-US')}-th \`finishJob\` that recorded \`completed\`.
- Baseline: the same number of jobs (\`{ n }\`) added with \`queue.addBulk\`, then a plain BullMQ \`Worker\`
  process with the same concurrency whose processor returns \`{ ok: true, n }\` (BullMQ stores it as the
  return value and keeps completed jobs), timed from the first processor call to the ${input.N.toLocaleString('en-US')}-th
  \`completed\` event.
- Checked after every run, or the bench fails: bgrs: every job's document reads \`completed\` with status
  200 and its stored result is exactly \`{"ok":true,"n":<i>}\`; BullMQ: ${input.N.toLocaleString('en-US')} completed, none failed or
  waiting, each return value right. Each run has its own key prefix, deleted afterwards.
- Spread = (max − min) ÷ 2 ÷ median. CPU µs/job: user + system time of the worker process over the
  window (\`process.cpuUsage\`), ÷ jobs. The headline is concurrency ${C}: enough
  jobs in flight that both workers keep their core busy, so the rate is the CPU cost of a job. At
  concurrency 1 (when measured) each job also waits out its Redis round trips one after the other, and
  nothing is batched.

### Runs

${runsTable(input)}

### Where the time goes (concurrency ${C}, one more run of each side with \`--cpu-prof\`)

Self time of the samples inside the measured window (first take to last completion), per job; the
profiled runs went at ${int(s.rate)} (bgrs) and ${int(b.rate)} (BullMQ) jobs/s, using ${int(s.cpuPerJob)} and ${int(b.cpuPerJob)} µs of CPU per
job (\`process.cpuUsage\`). The profiler samples wall-clock time, so on a shared core the µs columns run
high when the process waits for the CPU; the shares are the sturdier reading. *idle* is the worker
waiting on Redis.

${bucketTable(input, s, b)}

Top frames, bgrs worker:

${topTable(s, input.N)}

Top frames, BullMQ Worker:

${topTable(b, input.N)}

### Redis round trips per job (same profiled runs, counted on ioredis's sendCommand; a pipeline counts once)

${tripsTable(input, s, b)}

### What the bgrs worker does per job that BullMQ's does not

${interpretation(input, s, b)}`;
}

function interpretation(input: Input, s: Diagnosis, b: Diagnosis): string {
  const us = (d: Diagnosis, test: (bucket: string) => boolean): number =>
    (d.profile.buckets.filter(([name]) => test(name)).reduce((sum, [, ms]) => sum + ms, 0) * 1000) / input.N;
  const busy = (d: Diagnosis): string =>
    median(input.runs.filter((run) => run.side === d.side && run.concurrency === d.concurrency).map((run) => run.cpuPerJob)).toFixed(0);
  const trips = (d: Diagnosis): string => (Object.values(d.counts.roundTrips).reduce((a, c) => a + c, 0) / input.N).toFixed(1);
  const f = (value: number): string => value.toFixed(0);
  const http = us(s, (name) => name === 'node:http, net, streams');
  const express = us(s, (name) => name === 'express');
  const own = us(s, (name) => name.startsWith('bgrs '));
  const at1 = (side: Run['side'], what: 'rate' | 'cpuPerJob'): number =>
    median(input.runs.filter((run) => run.side === side && run.concurrency === 1).map((run) => run[what]));
  const one = input.runs.some((run) => run.concurrency === 1)
    ? ` At concurrency 1 nothing overlaps or batches, and every round trip gets its own socket write, event-loop
  wake-up and reply: a bgrs job then takes ${(1000 / at1('bgrs', 'rate')).toFixed(2)} ms of which ${(at1('bgrs', 'cpuPerJob') / 1000).toFixed(2)} ms CPU (BullMQ:
  ${(1000 / at1('bullmq', 'rate')).toFixed(2)} ms, ${(at1('bullmq', 'cpuPerJob') / 1000).toFixed(2)} ms CPU), a ratio of ${(at1('bgrs', 'rate') / at1('bullmq', 'rate')).toFixed(2)}: the bgrs worker is ${
    at1('bgrs', 'cpuPerJob') / 1000 > 500 / at1('bgrs', 'rate') ? 'still mostly busy on its CPU, not waiting on Redis' : 'mostly waiting on Redis'
  }.`
    : '';
  return `- Per job the BullMQ Worker makes ${trips(b)} Redis round trip (\`moveToFinished\`, which also hands it its next job)
  and uses about ${busy(b)} µs of CPU (median of the timed runs); the bgrs worker makes ${trips(s)}: the same \`moveToFinished\`, plus three on the store
  (\`takeJob\`, one script that starts the job and reads it with its request, \`appendResult\` for the one-chunk body, \`finishJob\`; lease
  renewals are one batched call a second, next to nothing per job), and uses about ${busy(s)} µs.
- The largest part of the difference is the replay through the in-process HTTP server, not bgrs's own code: every
  job's request is serialised and parsed by Node's HTTP machinery, and its response serialised and parsed again, over
  an in-memory duplex pair (node:http/net/streams ${f(http)} µs/job, Express ${f(express)} µs/job); its short-lived objects (requests,
  responses, sockets, streams, listeners) are likely much of the extra GC (${f(us(s, (n) => n === 'GC'))} against ${f(us(b, (n) => n === 'GC'))} µs/job) and of
  "other Node internals" (events, stream ticks: ${f(us(s, (n) => n === 'other Node internals'))} against ${f(us(b, (n) => n === 'other Node internals'))} µs/job). The bgrs source files
  together self-account for ${f(own)} µs/job.
- The three store calls cost their RESP encoding and parsing (ioredis ${f(us(s, (n) => n === 'ioredis'))} against ${f(us(b, (n) => n === 'ioredis'))} µs/job), a socket write each
  (the \`writeUtf8String\` / \`writeBuffer\` frames) and promise churn (\`runMicrotasks\`).${one}
- What looked avoidable and went: the take's three calls (\`getJob\`, \`readRequest\`, \`startJob\`) are one \`takeJob\`
  now (5,000 jobs at concurrency 50: about 1,250 → 1,580 jobs/s, 785 → 624 µs of CPU per job). Still avoidable: a result
  that fits in one chunk could travel with \`finishJob\` instead of its own \`appendResult\` (two store round trips per
  small job instead of three). What does not: recording \`running\` and \`completed\` in the bgrs
  store (it is the source of truth next to BullMQ), and the HTTP replay itself, which is what makes a job run the route
  exactly as a request would (real req/res through every middleware); replacing it is a design change, not a tweak.
- The profiled runs carry the round-trip counter (the *bench harness* bucket), so they go a little slower than the timed ones.`;
}
