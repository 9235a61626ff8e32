// The native view: the job document of express-bgrs' own routes (the default view).
import type { Job, JobResponse } from '../model/job.js';
import type { View } from './view.js';

/** What clients see: the job without its owner, lease and raw headers, plus links. */
export interface JobDocument extends Omit<Job, 'owner' | 'leaseUntil' | 'response'> {
  response: Omit<JobResponse, 'headers'> | null;
  /** While queued: the 1-based place in the queue of the process that holds it, when that process answers. */
  position?: number;
  links: { self: string; details: string; result: string; events: string; cancel: string };
}

function jobDocument(job: Job, base: string, position?: number): JobDocument {
  const self = `${base}/${job.id}`;
  return {
    id: job.id,
    name: job.name,
    method: job.method,
    url: job.url,
    status: job.status,
    attempt: job.attempt,
    progress: job.progress,
    message: job.message,
    resultCount: job.resultCount,
    warnings: job.warnings,
    errors: job.errors,
    createdAt: job.createdAt,
    startedAt: job.startedAt,
    finishedAt: job.finishedAt,
    expiresAt: job.expiresAt,
    response: job.response ? { status: job.response.status, contentType: job.response.contentType, size: job.response.size } : null,
    error: job.error && { type: job.error.type, message: job.error.message },
    ...(position !== undefined && job.status === 'queued' ? { position } : {}),
    links: { self, details: `${self}/details`, result: `${self}/result`, events: `${self}/events`, cancel: `${self}/cancel` },
  };
}

/** express-bgrs' own documents: the job document, `{ items, next }` pages, the job document as event data. */
export const nativeView: View = {
  ack: (job, at) => ({ body: jobDocument(job, at.base, at.position) }),
  job: (job, at) => ({ body: jobDocument(job, at.base, at.position) }),
  logPage: (_job, lines, next) => ({ body: { items: lines, next } }),
  listPage: (jobs, next, base) => ({ body: { items: jobs.map(({ job, position }) => jobDocument(job, base, position)), next } }),
  event: (job, at) => jobDocument(job, at.base, at.position),
  resultHeaders: () => ({}),
  problem: (problem) => ({ body: problem }),
};
