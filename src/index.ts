// Public exports of express-bgrs.
export { bgrs } from './bgrs.js';
export type { BgrsMiddleware, CloseOptions, RouteOptions } from './bgrs.js';
export { JobAbortError } from './scheduler.js';
export type { BgrsContext } from './context.js';
export { isReplay } from './detach.js';
export type { IdempotencyOptions } from './idempotency.js';
export type { Job, JobDocument, JobError, JobFinish, JobPage, JobProgressUpdate, JobQuery, JobResponse, JobStatus, LogLevel, LogLine } from './job.js';
export type { JobAction, Logger, Options } from './options.js';
export { PROBLEM_TYPE_PREFIX, problems } from './problem.js';
export type { ProblemCode, ProblemDocument } from './problem.js';
export { MemoryStore } from './stores/memory.js';
export type { MemoryStoreOptions } from './stores/memory.js';
export { InvalidCursorError, StoreFullError } from './stores/store.js';
export type { IdempotencyClaimResult, IdempotencyRecord, Store } from './stores/store.js';
