// The README is the user's first program: every TypeScript sample in it must compile under strict
// TypeScript against the built package, and the quick start and the shutdown sample must run as printed.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const work = join(root, 'test', 'artifacts', 'readme');

interface Block {
  lang: string;
  line: number;
  heading: string;
  code: string;
}

/** Every fenced block of the README, with the heading it sits under. */
function readmeBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split('\n');
  let heading = '';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.startsWith('#')) heading = line.replace(/^#+\s*/, '');
    const open = /^```(\w*)\s*$/.exec(line);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !lines[i]!.startsWith('```'); i++) body.push(lines[i]!);
    blocks.push({ lang: open[1]!, line: start + 1, heading, code: `${body.join('\n')}\n` });
  }
  return blocks;
}

const blocks = readmeBlocks(readFileSync(join(root, 'README.md'), 'utf8'));
const tsBlocks = blocks.filter((b) => b.lang === 'ts');

// What a fragment assumes of the app it is pasted into: the names its prose says are yours.
const context = `import type { Express, Request, RequestHandler } from 'express';
declare global {
  const app: Express;
  const authenticate: RequestHandler;
  const requireAuth: RequestHandler;
  const statement: RequestHandler;
  const exportHandler: RequestHandler;
  const createOrder: RequestHandler;
  function rateLimit(options: { skip(req: Request): boolean }): RequestHandler;
  const bgrs: typeof import('express-bgrs').bgrs;
}
export {};
`;

// The conformance sample imports the store the reader is writing.
const myStore = `import { MemoryStore } from 'express-bgrs';
export class MyStore extends MemoryStore {
  constructor(_options: { url: string | undefined }) {
    super();
  }
}
`;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`the sample exited (${child.exitCode}) before listening:\n${output()}`);
    try {
      await fetch(`http://127.0.0.1:${port}/bgrs`);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`the sample never listened on ${port}:\n${output()}`);
}

/** Runs a sample with tsx on a free port (its `3000` replaced), from inside the package so `express-bgrs` resolves to the build. */
async function runSample(block: Block, name: string): Promise<{ child: ChildProcess; port: number; output: () => string; exited: Promise<number | null> }> {
  const port = await freePort();
  const file = join(work, `${name}.ts`);
  writeFileSync(file, block.code.replace(/\b3000\b/g, String(port)));
  const child = spawn(process.execPath, ['--import', 'tsx', file], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout!.on('data', (d: Buffer) => (text += d));
  child.stderr!.on('data', (d: Buffer) => (text += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const output = () => text;
  await waitForPort(port, child, output);
  return { child, port, output, exited };
}

describe('README samples', () => {
  mkdirSync(join(work, 'src'), { recursive: true });
  const children: ChildProcess[] = [];
  after(() => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  });

  it('has the samples this test knows about', () => {
    assert.ok(tsBlocks.length >= 10, `only ${tsBlocks.length} TypeScript samples found`);
    assert.ok(tsBlocks.some((b) => b.heading === 'Quick start' && b.code.includes('app.listen(3000)')));
  });

  it('every TypeScript sample compiles under strict TypeScript against the built package', () => {
    rmSync(join(work, 'samples'), { recursive: true, force: true });
    mkdirSync(join(work, 'samples'), { recursive: true });
    writeFileSync(join(work, 'samples', 'context.d.ts'), context);
    writeFileSync(join(work, 'src', 'my-store.ts'), myStore);
    const files = ['context.d.ts'];
    for (const block of tsBlocks) {
      const name = `line-${block.line}.ts`;
      // A fragment without import or export is still its own module, so samples never collide.
      const module = /^\s*(import|export)\s/m.test(block.code) ? block.code : `${block.code}export {};\n`;
      writeFileSync(join(work, 'samples', name), module);
      files.push(name);
    }
    // The conformance sample's '../src/my-store.js' resolves beside the samples.
    writeFileSync(join(work, 'samples', '..', 'src', 'my-store.ts'), myStore);
    const tsconfig = {
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        lib: ['ES2022'],
        types: ['node'],
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        esModuleInterop: true,
      },
      files: [...files, '../src/my-store.ts'],
    };
    writeFileSync(join(work, 'samples', 'tsconfig.json'), JSON.stringify(tsconfig, null, 2));
    const tsc = spawnSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(work, 'samples', 'tsconfig.json')], {
      encoding: 'utf8',
    });
    // Name the README line of each error, not the extracted file.
    const report = (tsc.stdout + tsc.stderr).replace(
      /line-(\d+)\.ts\((\d+),/g,
      (_m, line: string, at: string) => `README.md:${Number(line) + Number(at)} (sample at line ${line}) (`,
    );
    assert.equal(tsc.status, 0, report);
  });

  it('the quick start runs as printed, and its curl commands work against it', async () => {
    const quick = tsBlocks.find((b) => b.heading === 'Quick start')!;
    const curls = blocks.find((b) => b.heading === 'Quick start' && b.lang === 'sh')!;
    const { child, port, output } = await runSample(quick, 'quick-start');
    children.push(child);
    const sh = spawnSync('bash', ['-euo', 'pipefail', '-c', curls.code.replace(/localhost:3000/g, `localhost:${port}`)], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(sh.status, 0, `${sh.stderr}\n${output()}`);
    const out = sh.stdout;
    // The detaches (the query parameter, then Prefer) answer 202 with a Location under /bgrs.
    assert.equal(out.match(/HTTP\/1\.1 202 Accepted/g)?.length ?? 0, 3, out); // the two detaches and the running job's /result
    assert.match(out, /^Location: \/bgrs\/[0-9a-f-]{36}\r?$/m);
    assert.match(out, /^Preference-Applied: respond-async\r?$/m);
    // The status document and the details page of the job the second command kept.
    assert.match(out, /"status":"(queued|running)"/);
    assert.match(out, /\{"items":\[.*\],"next":/);
    // The synchronous call answers the CSV itself.
    assert.match(out, /HTTP\/1\.1 200 OK\r?$/m);
    assert.match(out, /^month,total\r?\n2025-01,100\n[\s\S]*2025-12,1200$/m);
  });

  it('the shutdown sample answers 503 shutting-down while it drains, then exits 0', async () => {
    const sample = tsBlocks.find((b) => b.code.includes("process.on('SIGTERM'"))!;
    const { child, port, output, exited } = await runSample(sample, 'shutdown');
    children.push(child);
    const base = `http://127.0.0.1:${port}`;
    const first = await fetch(`${base}/export?bgrs=yes`);
    assert.equal(first.status, 202);
    const job = (await first.json()) as { id: string };
    child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 200));
    const refused = await fetch(`${base}/export?bgrs=yes`);
    assert.equal(refused.status, 503, output());
    assert.equal(((await refused.json()) as { type: string }).type, 'urn:express-bgrs:problem:shutting-down');
    // The running job finishes within the grace, and is readable until the server closes.
    const during = await fetch(`${base}/bgrs/${job.id}?wait=5`, { headers: { connection: 'close' } });
    assert.equal(((await during.json()) as { status: string }).status, 'completed');
    assert.equal(await exited, 0, output());
  });
});
