// Drives the progress page: starts or picks a job, then renders its SSE stream (status, progress, log, end). Plain JS, no build.

const $ = (id) => document.getElementById(id);
/** Follows one job: every update arrives as an event, so there is nothing to poll. */
function follow(id, eventsUrl) {
  $('job').hidden = false;
  $('job-id').textContent = id;
  $('status').textContent = 'connecting…';
  $('log').replaceChildren();
  $('download').hidden = true;
  $('problem').hidden = true;
  // A reload of the page re-attaches to the same job instead of starting another export.
  history.replaceState(null, '', `?job=${encodeURIComponent(id)}`);

  const showProgress = (progress, message) => {
    const percent = Math.floor(progress);
    $('bar').value = progress;
    $('percent').textContent = `${percent} %`;
    if (message) $('message').textContent = message;
  };
  const showJob = (doc) => {
    $('status').textContent = doc.status + (doc.position ? ` (#${doc.position} in queue)` : '');
    showProgress(doc.progress, doc.message);
  };

  let ended = false;
  const events = new EventSource(eventsUrl || `/bgrs/${encodeURIComponent(id)}/events`);
  events.addEventListener('status', (e) => showJob(JSON.parse(e.data)));
  events.addEventListener('progress', (e) => {
    const { progress, message } = JSON.parse(e.data);
    showProgress(progress, message);
  });
  events.addEventListener('log', (e) => {
    const line = JSON.parse(e.data);
    const item = document.createElement('li');
    item.className = line.level;
    item.value = line.seq;
    // textContent, never innerHTML: log messages come from the handler and may contain anything.
    item.textContent = `${line.level === 'info' ? '' : `${line.level}: `}${line.message}`;
    $('log').append(item);
    item.scrollIntoView({ block: 'nearest' });
  });
  events.addEventListener('end', (e) => {
    // The server closes the stream after `end`; without close() EventSource would reconnect and replay it.
    events.close();
    ended = true;
    const doc = JSON.parse(e.data);
    showJob(doc);
    if (doc.status === 'completed' || (doc.response && doc.status === 'failed')) {
      const link = $('download');
      link.href = doc.links.result;
      link.hidden = false;
    }
    if (doc.error) {
      $('problem').textContent = `${doc.error.type}: ${doc.error.message}`;
      $('problem').hidden = false;
    }
  });
  events.addEventListener('error', () => {
    // EventSource retries by itself while readyState is CONNECTING; CLOSED means it gave up (404, wrong type).
    if (ended) return;
    if (events.readyState === EventSource.CLOSED) {
      $('status').textContent = 'disconnected';
      $('problem').textContent = 'The event stream closed: the job may not exist (any more).';
      $('problem').hidden = false;
    } else if (events.readyState === EventSource.CONNECTING) {
      $('status').textContent = 'reconnecting…';
    }
  });
}

$('start').addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  const query = new URLSearchParams({ rows: form.get('rows'), delayMs: form.get('delayMs'), bgrs: 'yes' });
  const res = await fetch(`/exports/orders.csv?${query}`);
  if (res.status !== 202) {
    $('job').hidden = false;
    $('problem').textContent = `Expected 202 Accepted, got ${res.status}: ${await res.text()}`;
    $('problem').hidden = false;
    return;
  }
  const doc = await res.json();
  follow(doc.id, doc.links.events);
});

const job = new URLSearchParams(location.search).get('job');
if (job) follow(job);
