// Public exports of express-bgrs.

export type { BgrsMiddleware, CloseOptions, RouteOptions } from './bgrs.js';
export { bgrs } from './bgrs.js';
export type { IdempotencyOptions } from './config/guard-options.js';
export type { JobAction, Logger, Options } from './config/options.js';
export type { Consumer, EndQueued, Executor, ExecutorConfig, ExecutorFactory, TakeJob } from './executors/executor.js';
export { isReplay } from './http/dispatch.js';
export type { ProblemCode, ProblemDocument } from './http/problem.js';
export { PROBLEM_TYPE_PREFIX, problems } from './http/problem.js';
export type { BgrsWorker, ReplayTarget, WorkCloseOptions, WorkOptions } from './http/work.js';
export type { BgrsContext } from './jobs/context.js';
export { JobAbortError } from './model/errors.js';
export type { Job, JobError, JobFinish, JobPage, JobProgressUpdate, JobQuery, JobResponse, JobStatus, LogLevel, LogLine } from './model/job.js';
export type { MemoryStoreOptions } from './stores/memory.js';
export { MemoryStore } from './stores/memory.js';
export type { ChangeListener, IdempotencyClaimResult, IdempotencyRecord, IdempotencyStore, JobStore, Store } from './stores/store.js';
export { InvalidCursorError, StaleAttemptError, StoreFullError } from './stores/store.js';
export type { JobDocument } from './views/native.js';
export { nativeView } from './views/native.js';
export type { Placement, Rendered, View } from './views/view.js';
