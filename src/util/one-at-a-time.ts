// A periodic task that never overlaps itself: a tick that comes while the last run is in flight is skipped.

/** Wraps `task` so that calling it while a previous call is unsettled does nothing (a slow store is not piled up). */
export function oneAtATime(task: () => Promise<unknown>): () => void {
  let inFlight = false;
  return () => {
    if (inFlight) return;
    inFlight = true;
    void task()
      .catch(() => undefined)
      .finally(() => {
        inFlight = false;
      });
  };
}
