// Channel state across a gyre restart (issue 3): the memory engine starts new
// streams with a new epoch, so a client that reconnects to the new process on
// the same port must be told `recovered: false` — never a silent loss. With
// getState (SubscribeRequest flag 2) the server answers 112 instead and the
// SDK reloads the state. centrifuge-js, JSON and Protobuf builds.
import { describe, it, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import * as jsonBuild from 'centrifuge';
import * as protobufBuild from 'centrifuge/build/protobuf';

import {
  baseConfig, merge, freePort, gyreBin, repoRoot, connToken, waitEvent, withTimeout, sleep, uniq,
  API_KEY,
} from '../harness.mjs';

const T = 5000;

const OVERRIDES = {
  channel: {
    namespaces: [
      { name: 'rec', allow_subscribe_for_client: true, history_size: 100, history_ttl: '300s', force_recovery: true },
    ],
  },
};

/**
 * Starts gyre on a given port (the harness picks its own port; a restart must
 * reuse the port the client reconnects to). Returns { apiOk(), stop() }.
 */
async function startOnPort(port) {
  const config = merge(baseConfig(port), OVERRIDES);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gyre-js-restart-'));
  const configPath = path.join(dir, 'config.json');
  fs.writeFileSync(configPath, JSON.stringify(config, null, 2));
  const child = spawn(gyreBin, ['--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  let exited = false;
  const exitP = new Promise((resolve) => child.on('exit', () => { exited = true; resolve(); }));
  const killOnExit = () => { try { child.kill('SIGKILL'); } catch { /* gone */ } };
  process.on('exit', killOnExit);
  const httpUrl = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20000;
  for (;;) {
    if (exited || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`gyre did not start on ${port}:\n${output.slice(-4000)}`);
    }
    try {
      const res = await fetch(`${httpUrl}/health/ready`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch { /* not yet */ }
    await sleep(50);
  }
  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/connection/websocket`,
    async apiOk(method, body) {
      const res = await fetch(`${httpUrl}/api/${method}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(T),
      });
      const b = await res.json();
      if (res.status !== 200 || b.error) throw new Error(`${method}: ${res.status} ${JSON.stringify(b)}`);
      return b.result;
    },
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        await Promise.race([exitP, sleep(5000)]);
        if (!exited) { child.kill('SIGKILL'); await exitP; }
      }
      process.off('exit', killOnExit);
      try {
        const a = path.join(repoRoot, 'tests', 'artifacts');
        fs.mkdirSync(a, { recursive: true });
        fs.writeFileSync(path.join(a, `gyre-js-restart-${port}-${Date.now()}.log`), output);
      } catch { /* best effort */ }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

for (const build of [{ name: 'json', sdk: jsonBuild }, { name: 'protobuf', sdk: protobufBuild }]) {
  const { Centrifuge } = build.sdk;
  const dec = build.name === 'json'
    ? (d) => d
    : (d) => JSON.parse(new TextDecoder().decode(d));

  describe(`gyre restart, centrifuge-js ${build.name} build`, () => {
    const cleanups = [];
    afterEach(async () => {
      while (cleanups.length) {
        try { await cleanups.pop()(); } catch { /* ignore */ }
      }
    });

    async function setup() {
      const port = await freePort();
      const servers = { current: await startOnPort(port) };
      cleanups.push(() => servers.current.stop());
      const c = new Centrifuge(servers.current.wsUrl, {
        websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 300, timeout: T,
        token: connToken(uniq('u')),
      });
      c.on('error', () => {});
      cleanups.push(async () => c.disconnect());
      return { port, servers, c };
    }

    it('epoch change after a restart: wasRecovering true, recovered false', async () => {
      const { port, servers, c } = await setup();
      const channel = `rec:${uniq('c')}`;
      const sub = c.newSubscription(channel);
      sub.on('error', () => {});
      const got = [];
      sub.on('publication', (ctx) => got.push([ctx.offset, dec(ctx.data)]));
      const firstP = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      c.connect();
      const first = await firstP;
      const oldEpoch = first.streamPosition.epoch;
      assert.ok(oldEpoch, JSON.stringify(first));
      await servers.current.apiOk('publish', { channel, data: { n: 1 } });
      await servers.current.apiOk('publish', { channel, data: { n: 2 } });
      const start = Date.now();
      while (got.length < 2 && Date.now() - start < T) await sleep(20);
      assert.deepEqual(got, [[1, { n: 1 }], [2, { n: 2 }]]);

      const connectingP = waitEvent(c, 'connecting', T);
      await servers.current.stop();
      const cctx = await connectingP;
      assert.equal(cctx.code, 3001, `shutdown disconnect: ${JSON.stringify(cctx)}`);
      const againP = waitEvent(sub, 'subscribed', 3 * T);
      servers.current = await startOnPort(port);
      const again = await againP;
      assert.equal(again.wasRecovering, true, JSON.stringify(again));
      assert.equal(again.recovered, false, JSON.stringify(again));
      assert.equal(again.hasRecoveredPublications, false);
      assert.ok(again.streamPosition.epoch && again.streamPosition.epoch !== oldEpoch,
        `new epoch expected: ${JSON.stringify(again)} old ${oldEpoch}`);
      assert.equal(again.streamPosition.offset, 0);

      // The new stream works: offset 1 of the new epoch arrives.
      const r = await servers.current.apiOk('publish', { channel, data: { n: 'new' } });
      assert.deepEqual([r.offset, r.epoch], [1, again.streamPosition.epoch]);
      const s2 = Date.now();
      while (got.length < 3 && Date.now() - s2 < T) await sleep(20);
      assert.deepEqual(got, [[1, { n: 1 }], [2, { n: 2 }], [1, { n: 'new' }]]);
    });

    it('getState (flag 2): unrecoverable position → 112 → state reloaded', async () => {
      const { port, servers, c } = await setup();
      const channel = `rec:${uniq('c')}`;
      const positions = [];
      const sub = c.newSubscription(channel, {
        getState: async () => {
          const h = await servers.current.apiOk('history', { channel, limit: 0 });
          const pos = { offset: h.offset || 0, epoch: h.epoch };
          positions.push(pos);
          return pos;
        },
      });
      // The SDK handles 112 silently (no error event): observe the subscribe errors it gets.
      const subscribeErrors = [];
      const handle = sub._handleSubscribeError.bind(sub);
      sub._handleSubscribeError = (err) => { subscribeErrors.push(err.code); return handle(err); };
      const got = [];
      sub.on('publication', (ctx) => got.push([ctx.offset, dec(ctx.data)]));
      const firstP = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      c.connect();
      const first = await firstP;
      assert.equal(positions.length, 1);
      assert.equal(first.recovered, true, `recovery from the getState position: ${JSON.stringify(first)}`);

      await servers.current.stop();
      const againP = waitEvent(sub, 'subscribed', 3 * T);
      servers.current = await startOnPort(port);
      const again = await againP;
      assert.equal(positions.length, 2, `getState called again after 112: ${JSON.stringify(positions)}`);
      assert.notEqual(positions[1].epoch, positions[0].epoch);
      assert.deepEqual(subscribeErrors, [112], 'the recovery from the old epoch was refused with 112');
      assert.equal(again.recovered, true, JSON.stringify(again));
      assert.equal(again.streamPosition.epoch, positions[1].epoch);
      await servers.current.apiOk('publish', { channel, data: { n: 'fresh' } });
      await withTimeout((async () => { while (got.length < 1) await sleep(20); })(), T, 'publication');
      assert.deepEqual(got, [[1, { n: 'fresh' }]]);
    });
  });
}
