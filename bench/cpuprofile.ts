// Summarises a V8 .cpuprofile (node --cpu-prof) for the `worker-rate` group: self time by bucket (bgrs
// source files by name, npm packages, node:http and streams, other Node internals, GC, idle) and the
// top frames, counting only the samples inside a window given on process.hrtime (same clock on Linux).
import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface Profile {
  nodes: Array<{ id: number; callFrame: CallFrame }>;
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  /** Sampled time inside the window, ms. */
  totalMs: number;
  /** bucket → self ms, largest first. */
  buckets: Array<[string, number]>;
  /** The heaviest frames by self time. */
  top: Array<{ frame: string; bucket: string; ms: number }>;
}

/** Packages counted with the library that brings them. */
const FAMILY: Record<string, string> = {
  'redis-parser': 'ioredis',
  denque: 'ioredis',
  'cluster-key-slot': 'ioredis',
  'standard-as-callback': 'ioredis',
  msgpackr: 'bullmq',
  cron: 'bullmq',
  router: 'express',
  'body-parser': 'express',
  finalhandler: 'express',
  qs: 'express',
  send: 'express',
  'path-to-regexp': 'express',
  'content-type': 'express',
  'type-is': 'express',
  'mime-types': 'express',
  'media-typer': 'express',
  debug: 'express',
  'on-finished': 'express',
  parseurl: 'express',
  'safe-buffer': 'express',
  etag: 'express',
  vary: 'express',
};

const HTTP = /^node:(_http_|http$|internal\/http|net$|internal\/net|internal\/streams|stream|internal\/stream_base|internal\/js_stream_socket)/;

function bucketOf(frame: CallFrame, root: string): string {
  const { url, functionName } = frame;
  if (url === '') {
    if (functionName === '(garbage collector)') return 'GC';
    if (functionName === '(idle)') return 'idle';
    if (functionName === '(program)') return '(program): V8/native, unattributed';
    return 'V8 builtins / native';
  }
  const modules = url.lastIndexOf('/node_modules/');
  if (modules >= 0) {
    const parts = url.slice(modules + 14).split('/');
    const pkg = parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
    return FAMILY[pkg] ?? pkg;
  }
  if (url.startsWith('node:')) return HTTP.test(url) ? 'node:http, net, streams' : 'other Node internals';
  const path = url.replace(/^file:\/\//, '');
  if (path.startsWith(`${root}/src/`)) return `bgrs ${path.slice(root.length + 1)}`;
  if (path.startsWith(`${root}/bench/`)) return 'bench harness';
  return path;
}

function frameName(frame: CallFrame, root: string): string {
  const file = frame.url
    .replace(/^file:\/\//, '')
    .replace(`${root}/`, '')
    .replace(/^.*\/node_modules\//, '');
  // tsx's transpiled sources report line 1 for everything: the line is left out there.
  const line = frame.lineNumber > 0 ? `:${frame.lineNumber + 1}` : '';
  return `${frame.functionName || '(anonymous)'}${file ? ` ${file}${line}` : ''}`;
}

/** Self time inside [from, to] (hrtime ns) of the profile at `file`; `root` is the repository, for file names. */
export function summarise(file: string, from: bigint, to: bigint, root: string, top = 10): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));
  const start = Number(from / 1000n);
  const end = Number(to / 1000n);
  if (start < profile.startTime || end > profile.endTime) throw new Error(`bench: ${file}: the measured window is outside the profile`);
  const self = new Map<string, { frame: CallFrame; us: number }>();
  let t = profile.startTime;
  let totalUs = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i]!;
    // A sample stands for the time until the next one.
    const us = profile.timeDeltas[i + 1] ?? 0;
    if (t < start || t > end) continue;
    const frame = byId.get(profile.samples[i]!)!;
    const key = `${frame.functionName}\u0000${frame.url}\u0000${frame.lineNumber}`;
    const entry = self.get(key) ?? { frame, us: 0 };
    entry.us += us;
    self.set(key, entry);
    totalUs += us;
  }
  const buckets = new Map<string, number>();
  for (const { frame, us } of self.values()) buckets.set(bucketOf(frame, root), (buckets.get(bucketOf(frame, root)) ?? 0) + us / 1000);
  const frames = [...self.values()]
    .filter(({ frame }) => frame.functionName !== '(idle)')
    .sort((a, b) => b.us - a.us)
    .slice(0, top)
    .map(({ frame, us }) => ({ frame: frameName(frame, root), bucket: bucketOf(frame, root), ms: us / 1000 }));
  return { totalMs: totalUs / 1000, buckets: [...buckets].sort((a, b) => b[1] - a[1]), top: frames };
}
