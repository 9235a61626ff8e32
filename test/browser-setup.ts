// Makes sure Debian's Chromium is there for the browser test: installs it with apt-get when missing (root only, may take minutes).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';

export const CHROMIUM = '/usr/bin/chromium';

// The machine reaches only the npm and Debian registries: these flags stop Chromium from phoning home
// (QUIC probes, component updates, sync, first-run pages), which would otherwise stall or spam the log.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** apt-get update + install can take minutes on a cold cache; anything past this is a hung mirror. */
const INSTALL_TIMEOUT_MS = 15 * 60_000;

export type ChromiumStatus = { ok: true; installedInMs: number | null } | { ok: false; reason: string };

/** Runs a shell command, keeping the tail of its output for the error message. */
function run(command: string, timeout: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn('sh', ['-c', command], {
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout,
      killSignal: 'SIGKILL',
    });
    let output = '';
    const keep = (chunk: Buffer): void => {
      output = (output + chunk.toString()).slice(-4000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.once('error', (err) => resolve({ code: null, output: `${output}\n${err.message}` }));
    child.once('close', (code, signal) => resolve({ code, output: signal ? `${output}\nkilled by ${signal} (timeout ${timeout} ms?)` : output }));
  });
}

/** Installs Chromium when /usr/bin/chromium is missing; says whether it is usable now. */
export async function ensureChromium(): Promise<ChromiumStatus> {
  if (existsSync(CHROMIUM)) return { ok: true, installedInMs: null };
  if (process.getuid?.() !== 0) return { ok: false, reason: `${CHROMIUM} is missing and installing it needs root (apt-get install chromium)` };
  console.log(`browser test: ${CHROMIUM} is missing; installing Debian's chromium package (this can take a few minutes)…`);
  const started = Date.now();
  // No recommends: they pull in Mesa, udev, upower and a printing stack a headless test never uses. A font
  // package is named instead, so a bare machine renders text in the screenshot rather than empty boxes.
  const { code, output } = await run('apt-get update && apt-get install -y --no-install-recommends chromium fonts-liberation', INSTALL_TIMEOUT_MS);
  const installedInMs = Date.now() - started;
  if (code !== 0 || !existsSync(CHROMIUM)) {
    return { ok: false, reason: `apt-get install chromium failed (exit ${code}) after ${installedInMs} ms:\n${output}` };
  }
  console.log(`browser test: chromium installed in ${(installedInMs / 1000).toFixed(1)} s`);
  return { ok: true, installedInMs };
}
