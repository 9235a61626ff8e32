// Loaded into every test process (test/run.mjs): an unhandled rejection or uncaught exception anywhere fails the run.
process.on('unhandledRejection', (reason) => {
  console.error('\n!!!!!!!! unhandledRejection during the tests:', reason);
  process.exitCode = 1;
});
process.on('uncaughtException', (err) => {
  console.error('\n!!!!!!!! uncaughtException during the tests:', err);
  process.exitCode = 1;
});
