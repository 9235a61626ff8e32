// Browser check: headless Chromium (Debian's, through playwright-core) follows a job on examples/progress over real SSE.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type Browser, chromium, type Page } from 'playwright-core';
import { createApp } from '../examples/basic/app.js';
import { CHROMIUM, CHROMIUM_ARGS, type ChromiumStatus, ensureChromium } from './browser-setup.js';
import { type JobDoc, listen, type Running } from './helpers.js';

const artifacts = fileURLToPath(new URL('artifacts/', import.meta.url));
const CI = process.env.CI === 'true' || process.env.CI === '1';

describe('examples/progress page in headless Chromium', () => {
  let server: Running;
  let browser: Browser | undefined;
  let chromiumStatus: ChromiumStatus;

  // apt-get may need minutes on a cold machine; the hook's own timeout must outlast the install's.
  before(
    async () => {
      chromiumStatus = await ensureChromium();
      if (!chromiumStatus.ok) {
        // On CI a missing browser is a broken pipeline, not a reason to go green.
        if (CI) throw new Error(`Chromium is required on CI: ${chromiumStatus.reason}`);
        console.warn(`\n!!! browser test SKIPPED: ${chromiumStatus.reason}\n!!! install it with: apt-get install -y chromium\n`);
        return;
      }
      server = await listen(createApp());
      browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    },
    { timeout: 20 * 60_000 },
  );
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  /** A fresh page whose console errors and failed requests fail the test instead of passing unnoticed. */
  async function open(path: string): Promise<{ page: Page; problems: string[] }> {
    const page = await browser!.newPage({ viewport: { width: 820, height: 720 } });
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(`console error: ${message.text()} (${message.location().url})`);
    });
    page.on('requestfailed', (request) => {
      // An EventSource the page closes itself after `end` may report an aborted request; that is expected.
      if (!request.url().endsWith('/events')) problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`);
    });
    await page.goto(server.url + path);
    return { page, problems };
  }

  /** Waits for the end of the job shown on the page and checks bar, percentage and result link. */
  async function expectFinished(page: Page, id: string): Promise<void> {
    const link = page.locator('#download');
    await link.waitFor({ state: 'visible', timeout: 20_000 });
    assert.equal(await link.getAttribute('href'), `/bgrs/${id}/result`);
    assert.equal(await link.textContent(), 'Download result');
    // tsconfig has no DOM lib (this is a Node project): the element is typed by what is read from it.
    assert.equal(await page.locator('#bar').evaluate((bar) => (bar as unknown as { value: number }).value), 100);
    assert.equal(await page.locator('#percent').textContent(), '100 %');
    assert.equal(await page.locator('#status').textContent(), 'completed');
  }

  it('starts the CSV export with the button, shows progress and log lines, then links to the result', { timeout: 60_000 }, async (t) => {
    if (!browser) return t.skip('Chromium is not available (see the warning above)');
    const { page, problems } = await open('/progress/');
    await page.fill('input[name=rows]', '60');
    await page.fill('input[name=delayMs]', '25');

    const ack = page.waitForResponse((res) => res.url().includes('/exports/orders.csv'));
    await page.click('button[type=submit]');
    const ackResponse = await ack;
    assert.equal(ackResponse.status(), 202);
    const { id } = (await ackResponse.json()) as JobDoc;
    // A string runs in the page as is; a function would need DOM types that this Node project does not load.
    await page.waitForFunction('(() => { const { value } = document.getElementById("bar"); return value > 0 && value < 100; })()', undefined, {
      timeout: 10_000,
    });

    await expectFinished(page, id);
    assert.equal(new URL(page.url()).searchParams.get('job'), id, 'the page URL names the job, so a reload re-attaches');
    assert.equal(await page.locator('#message').textContent(), 'exported 60 of 60 orders');
    const lines = await page.locator('#log li').allTextContents();
    assert.deepEqual(lines, ['export started: 60 orders', 'export finished: 60 orders']);

    // The link really downloads the CSV the route wrote.
    const download = await page.evaluate(async (href) => {
      const res = await fetch(href);
      return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
    }, `/bgrs/${id}/result`);
    assert.equal(download.status, 200);
    assert.equal(download.type, 'text/csv; charset=utf-8');
    assert.equal(download.text.trimEnd().split('\n').length, 61);

    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: `${artifacts}progress.png`, fullPage: true });
    assert.deepEqual(problems, []);
    await page.close();
  });

  it('follows a job given as ?job=<id>, warnings included', { timeout: 60_000 }, async (t) => {
    if (!browser) return t.skip('Chromium is not available (see the warning above)');
    // 122 rows: orders 61 and 122 have no email, so a warning line is shown too.
    const ack = await fetch(`${server.url}/exports/orders.csv?rows=122&delayMs=5&bgrs=yes`);
    assert.equal(ack.status, 202);
    const { id } = (await ack.json()) as JobDoc;

    const { page, problems } = await open(`/progress/?job=${id}`);
    await expectFinished(page, id);
    assert.deepEqual(await page.locator('#log li').allTextContents(), [
      'export started: 122 orders',
      'warning: 2 orders had no customer email',
      'export finished: 122 orders',
    ]);
    assert.equal(await page.locator('#log li.warning').count(), 1);
    assert.equal(await page.locator('#job-id').textContent(), id);
    assert.deepEqual(problems, []);
    await page.close();
  });

  it('says so when the job does not exist', { timeout: 30_000 }, async (t) => {
    if (!browser) return t.skip('Chromium is not available (see the warning above)');
    const { page } = await open('/progress/?job=00000000-0000-4000-8000-000000000000');
    await page.locator('#problem').waitFor({ state: 'visible', timeout: 10_000 });
    assert.match((await page.locator('#problem').textContent()) ?? '', /may not exist/);
    assert.equal(await page.locator('#download').isVisible(), false);
    await page.close();
  });
});
