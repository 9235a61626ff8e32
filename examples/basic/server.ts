// Runs the example app (`npm start`) and prints curl commands to try background requests by hand.
import type { BgrsMiddleware } from '../../src/index.js';
import { createApp, curlExamples } from './app.js';

const port = Number(process.env.PORT || 3000);
const app = createApp();

const server = app.listen(port, (error?: Error) => {
  // Express 5 passes listen errors (EADDRINUSE, …) to this callback instead of throwing them.
  if (error) {
    console.error(`Could not listen on port ${port}: ${error.message}`);
    process.exit(1);
  }
  const base = `http://localhost:${port}`;
  console.log(`express-bgrs example listening on ${base}\n`);
  console.log('Try these (the export takes about 3 s; /result answers 202 until then):');
  for (const line of curlExamples(base)) console.log(line.startsWith('#') ? `\n${line}` : line);
  console.log(`\nOr watch a job live in a browser: ${base}/progress/ (start the export there, or add ?job=<id>)\n`);
});

// Ctrl-C and `kill` shut down gracefully: new background requests get 503 at once, running jobs
// get 10 s to finish (status routes keep answering meanwhile), the rest are recorded failed:
// shutdown; then the server closes, so the port is free for the next run.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, async () => {
    console.log(`\n${signal}: finishing background jobs (up to 10 s)…`);
    await (app.locals.background as BgrsMiddleware).close({ grace: 10_000 });
    server.closeAllConnections();
    server.close(() => process.exit(0));
  });
}
