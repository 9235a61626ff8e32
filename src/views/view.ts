// The view seam: how a job and its pages are rendered on the wire. Every document the job routes
// and the ack send goes through one View; the native view (today's documents) is the default.
import type { Job, LogLine } from '../model/job.js';

/** Where a rendering sits: the job routes' base path, and a queued job's place in its queue. */
export interface Placement {
  base: string;
  position?: number;
}

/** What a view makes of one answer: the JSON body, and headers of its dialect (set over bgrs' own). */
export interface Rendered {
  body: unknown;
  headers?: Record<string, string>;
}

export interface View {
  /** The 202 of a request just detached, or of the job a keyed retry re-attached to. */
  ack(job: Job, at: Placement): Rendered;
  /** A job's status: GET <base>/:id, /result while it runs, a cancel's answer, a keyed retry of a finished detach. */
  job(job: Job, at: Placement): Rendered;
  /** One page of a job's log lines; `next` is the URL of the following page, or null. */
  logPage(job: Job, lines: readonly LogLine[], next: string | null): Rendered;
  /** One page of jobs, newest first; `next` is the URL of the following page, or null. */
  listPage(jobs: ReadonlyArray<{ job: Job; position?: number }>, next: string | null, base: string): Rendered;
  /** The data of a Server-Sent `status` or `end` event. */
  event(job: Job, at: Placement): unknown;
  /** Headers added to a finished job's replayed result. */
  resultHeaders(job: Job): Record<string, string>;
  /** An error bgrs answers (sent with its HTTP status; `application/problem+json` unless the view's headers say otherwise). */
  problem(problem: ProblemDocument): Rendered;
}

/** An RFC 9457 problem as bgrs builds it, before a view renders it. */
export interface ProblemDocument {
  type: string;
  title: string;
  status: number;
  detail?: string;
  /** Mirrors `title` for clients that read `error` (Mastodon-style). */
  error: string;
  [extension: string]: unknown;
}
