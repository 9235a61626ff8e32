// `npm run example:queue`: starts the queue-mode example as two processes, a web and a worker, on the Redis
// at REDIS_URL (default 127.0.0.1:6379), or on PostgreSQL alone when DATABASE_URL is set. Ctrl-C stops both. Kill the worker and start it again: queued jobs wait.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const server = fileURLToPath(new URL('./server.ts', import.meta.url));
const children = ['web', 'worker'].map((role) => spawn(process.execPath, ['--import', 'tsx', server, role], { stdio: 'inherit' }));
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const child of children) child.kill('SIGTERM');
  });
}
await Promise.all(children.map((child) => new Promise((resolve) => child.once('exit', resolve))));
