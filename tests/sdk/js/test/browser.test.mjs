// The demo page at / in headless Chromium (Debian `chromium`, driven by
// playwright-core; tests/install-deps.sh installs both): the page loads the
// centrifuge-js build shipped in the gyre binary, connects over the transport
// named in ?transport=, shows a publication sent through the server API and
// one typed into its publish box. A screenshot per transport is saved to
// tests/artifacts/ (gitignored) for a human to look at.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

import { startGyre, uniq, repoRoot } from '../harness.mjs';

const T = 15000;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(repoRoot, 'tests', 'artifacts');

describe('demo page in headless Chromium', () => {
  let server;
  let browser;

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} missing: run tests/install-deps.sh (installs Debian chromium)`);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    server = await startGyre({
      demo: { enabled: true },
      http_stream: { enabled: true },
      sse: { enabled: true },
      sockjs: { enabled: true },
    });
    // playwright launches with a fresh, empty profile directory of its own.
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: T,
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  for (const transport of ['websocket', 'sockjs', 'http_stream', 'sse']) {
    it(`${transport}: loads, connects, shows API and typed publications`, async () => {
      const page = await browser.newPage({ viewport: { width: 900, height: 820 } });
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      try {
        const channel = uniq('demo');
        await page.goto(`${server.httpUrl}/?transport=${transport}&channel=${channel}`, { timeout: T });
        await page.waitForSelector('#status[data-state="connected"][data-subscribed="true"]', { timeout: T });
        const status = await page.textContent('#status-text');
        assert.match(status, new RegExp(`connected over ${transport === 'sockjs' ? 'sockjs' : transport}`));

        await server.apiOk('publish', { channel, data: { text: `hello over ${transport} from the API` } });
        await page.waitForSelector(`#messages li.publication:has-text("hello over ${transport} from the API")`, { timeout: T });

        await page.fill('#message', `typed in the browser (${transport})`);
        await page.click('#publish');
        await page.waitForSelector(`#messages li.publication:has-text("typed in the browser (${transport})")`, { timeout: T });
        assert.equal(await page.inputValue('#message'), '');
        assert.equal(await page.locator('#messages li.publication').count(), 2);

        await page.screenshot({ path: path.join(ARTIFACTS, `demo-${transport}.png`), fullPage: true });
        assert.deepEqual(errors, []);
      } finally {
        await page.close();
      }
    });
  }
});
