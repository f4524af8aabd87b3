// The admin web UI in headless Chromium (Debian `chromium` driven by playwright-core,
// as in browser.test.mjs) against two gyre nodes on one private nats-server: a wrong
// password is refused, the right one logs in, both nodes show up with live counts, the
// channel list shows a centrifuge-js subscriber, a publication sent from the UI's form
// reaches that subscriber (connected to the *other* node), presence/history lookups
// answer, and "disconnect a user" closes the user's connection. Screenshots are saved
// to tests/artifacts/ (gitignored).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import { chromium } from 'playwright-core';

import { connToken, repoRoot, startGyre, uniq, waitEvent } from '../harness.mjs';
import { REC_NAMESPACE, startNats } from '../nats.mjs';

const T = 15000;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(repoRoot, 'tests', 'artifacts');
const PASSWORD = 'admin-ui-test-password';

describe('admin web UI in headless Chromium (two nodes over NATS)', () => {
  let nats;
  const nodes = [];
  let browser;

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} missing: run tests/install-deps.sh (installs Debian chromium)`);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    nats = await startNats();
    const prefix = uniq('gyre');
    for (const name of ['node1', 'node2']) {
      nodes.push(await startGyre({
        node: { name },
        broker: { enabled: true, type: 'nats', nats: { url: nats.url, prefix } },
        presence_manager: { enabled: true, type: 'nats' },
        channel: { namespaces: [{ name: 'ro', allow_subscribe_for_client: true }, REC_NAMESPACE] },
        admin: { enabled: true, password: PASSWORD, secret: 'admin-ui-test-secret' },
      }));
    }
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
    for (const n of nodes) await n.stop();
    if (nats) await nats.stop();
  });

  it('refuses a wrong password', async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    try {
      await page.goto(`${nodes[0].httpUrl}/`, { timeout: T });
      await page.waitForSelector('#login:not([hidden])', { timeout: T });
      await page.fill('#password', 'not-the-password');
      await page.click('#login-btn');
      await page.waitForSelector('#login-error:not([hidden])', { timeout: T });
      assert.equal(await page.textContent('#login-error'), 'Wrong password.');
      assert.equal(await page.isHidden('#app'), true);
      await page.screenshot({ path: path.join(ARTIFACTS, 'admin-wrong-password.png'), fullPage: true });
    } finally {
      await page.close();
    }
  });

  it('logs in, shows both nodes, publishes to a subscriber on the other node, looks up and disconnects', async () => {
    const user = uniq('admin-ui-user');
    const channel = `rec:${uniq('adminui')}`;
    const client = new Centrifuge(nodes[1].wsUrl, { websocket: WebSocket, token: connToken(user), timeout: T });
    client.on('error', () => {});
    const pubs = [];
    const page = await browser.newPage({ viewport: { width: 1100, height: 1000 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    try {
      const connected = waitEvent(client, 'connected', T);
      client.connect();
      await connected;
      const sub = client.newSubscription(channel);
      sub.on('publication', (ctx) => pubs.push(ctx.data));
      const subscribed = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      await subscribed;

      await page.goto(`${nodes[0].httpUrl}/`, { timeout: T });
      await page.fill('#password', PASSWORD);
      await page.click('#login-btn');
      await page.waitForSelector('#app:not([hidden])', { timeout: T });

      // Both nodes, refreshed live: node2's connection shows up in its row.
      await page.waitForFunction(() => document.querySelectorAll('#nodes tr.node').length === 2, null, { timeout: T });
      const names = await page.$$eval('#nodes tr.node', (rows) => rows.map((r) => r.dataset.name));
      assert.deepEqual(names, ['node1', 'node2']);
      await page.waitForFunction(
        () => Number(document.querySelector('#nodes tr.node[data-name="node2"] td:nth-child(3)')?.textContent) >= 1,
        null, { timeout: T });
      // The channel list (cluster-wide) has our subscriber.
      await page.waitForSelector(`#channels tr.channel[data-channel="${channel}"]`, { timeout: T });
      const count = await page.textContent(`#channels tr.channel[data-channel="${channel}"] td:nth-child(2)`);
      assert.equal(count, '1');
      await page.screenshot({ path: path.join(ARTIFACTS, 'admin-nodes.png'), fullPage: true });

      // Publish from the UI (served by node1) → the centrifuge-js client on node2 gets it.
      await page.fill('#pub-channel', channel);
      await page.fill('#pub-data', JSON.stringify({ text: 'hello from the admin UI' }));
      await page.click('#pub-send');
      await page.waitForSelector('#pub-result.ok', { timeout: T });
      const deadline = Date.now() + T;
      while (pubs.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(pubs, [{ text: 'hello from the admin UI' }]);

      // Presence and history lookups.
      await page.fill('#lookup-channel', channel);
      await page.click('#presence-btn');
      await page.waitForSelector(`#lookup-result.ok:has-text("${user}")`, { timeout: T });
      await page.click('#history-btn');
      await page.waitForSelector('#lookup-result.ok:has-text("hello from the admin UI")', { timeout: T });
      await page.screenshot({ path: path.join(ARTIFACTS, 'admin-publish-lookup.png'), fullPage: true });

      // A bad publish shows the API error instead of pretending it worked.
      await page.fill('#pub-channel', 'nope:x');
      await page.click('#pub-send');
      await page.waitForSelector('#pub-result.error:has-text("102")', { timeout: T });

      // Disconnect the user from the UI: the client on node2 is closed.
      const disconnected = waitEvent(client, 'disconnected', T);
      await page.fill('#disc-user', user);
      await page.click('#disc-btn');
      const ctx = await disconnected;
      assert.equal(ctx.code, 3503);
      await page.waitForSelector('#disc-result.ok', { timeout: T });
      await page.screenshot({ path: path.join(ARTIFACTS, 'admin-disconnect.png'), fullPage: true });
      assert.deepEqual(errors, []);
    } finally {
      client.disconnect();
      await page.close();
    }
  });
});
