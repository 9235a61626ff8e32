// Why a job was stopped, as the handler reads it on its signal.

/** Why a job was stopped; the handler reads it as `req.bgrs.signal.reason`. */
export class JobAbortError extends Error {
  constructor(
    readonly code:
      | 'BGRS_CANCELLED'
      | 'BGRS_TIMEOUT'
      | 'BGRS_SHUTDOWN'
      | 'BGRS_RESULT_TOO_LARGE'
      | 'BGRS_STORE_UNAVAILABLE'
      | 'BGRS_INTERRUPTED'
      | 'BGRS_CONNECTION_LOST',
    message: string,
    name = 'AbortError',
  ) {
    super(message);
    this.name = name;
  }
}
