// centrifuge-js (JSON and Protobuf builds) against gyre: connection lifecycle
// details the SDK depends on — app-level ping/pong, missing credentials,
// oversize frames, raw JSON payloads with newlines, and graceful shutdown.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as jsonBuild from 'centrifuge';
import * as protobufBuild from 'centrifuge/build/protobuf';

import { startGyre, connToken, waitEvent, recordEvents, sleep, uniq, API_KEY } from '../harness.mjs';

const T = 5000;

const builds = [
  { name: 'json', sdk: jsonBuild, dec: (d) => d, enc: (o) => o },
  {
    name: 'protobuf',
    sdk: protobufBuild,
    dec: (d) => JSON.parse(new TextDecoder().decode(d)),
    enc: (o) => new TextEncoder().encode(JSON.stringify(o)),
  },
];

for (const build of builds) {
  const { Centrifuge } = build.sdk;

  describe(`centrifuge-js ${build.name} build: lifecycle`, () => {
    let server;
    let clients = [];

    before(async () => {
      // Fast server pings so that the SDK's ping watchdog and the server's pong
      // check both run within the test.
      server = await startGyre({ client: { ping_interval: '2s', pong_timeout: '1s' } });
    });
    after(async () => { if (server) await server.stop(); });
    afterEach(() => {
      for (const c of clients) { try { c.disconnect(); } catch { /* ignore */ } }
      clients = [];
    });

    function newClient(opts = {}) {
      const c = new Centrifuge(server.wsUrl, {
        websocket: WebSocket, timeout: T, minReconnectDelay: 100, maxReconnectDelay: 500, ...opts,
      });
      c.on('error', () => {});
      clients.push(c);
      return c;
    }

    it('server pings, SDK pongs: the connection stays up across several ping intervals', async () => {
      // maxServerPingDelay 1s: without a server ping every 2s (+1s) the SDK reconnects
      // (code 2, "no ping"); a missing/misread pong makes the server close with 3012.
      const c = newClient({ token: connToken(uniq('u')), maxServerPingDelay: 1000 });
      const p = waitEvent(c, 'connected', T);
      c.connect();
      await p;
      const log = recordEvents(c, ['connecting', 'disconnected']);
      await sleep(7000);
      assert.deepEqual(log.map((e) => `${e.event}:${e.ctx.code}:${e.ctx.reason}`), []);
      assert.equal(c.state, 'connected');
    });

    it('connect without token and without anonymous access: 3501, terminal', async () => {
      const c = newClient();
      const p = waitEvent(c, 'disconnected', T);
      c.connect();
      const ctx = await p;
      assert.equal(ctx.code, 3501, JSON.stringify(ctx));
      await sleep(500);
      assert.equal(c.state, 'disconnected');
    });

    it('an oversize frame (> 65536 bytes) closes with 1009: SDK reports message size limit', async () => {
      const c = newClient({ token: connToken(uniq('u')) });
      const p = waitEvent(c, 'connected', T);
      c.connect();
      await p;
      const dP = waitEvent(c, 'disconnected', T);
      c.publish(uniq('big'), build.enc({ blob: 'x'.repeat(70000) })).catch(() => {});
      const ctx = await dP;
      // centrifuge-js maps WebSocket close 1009 to disconnected code 3, terminal.
      assert.equal(ctx.code, 3, JSON.stringify(ctx));
    });

    it('raw JSON payload with newlines from the API is delivered intact', async () => {
      const c = newClient({ token: connToken(uniq('u')) });
      const channel = uniq('nl');
      const sub = c.newSubscription(channel);
      const sP = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      c.connect();
      await sP;
      const pubP = waitEvent(sub, 'publication', T);
      const body = `{\n  "channel": "${channel}",\n  "data": {\n    "text": "multi\\nline",\n    "list": [1,\n 2]\n  }\n}\n`;
      const res = await fetch(`${server.apiUrl}/publish`, {
        method: 'POST', headers: { 'X-API-Key': API_KEY }, body,
      });
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { result: {} });
      const pub = await pubP;
      assert.deepEqual(build.dec(pub.data), { text: 'multi\nline', list: [1, 2] });
      assert.equal(c.state, 'connected');
    });

    it('graceful shutdown: clients get 3001 (reconnect) and gyre exits 0', async () => {
      const own = await startGyre();
      try {
        const c = new Centrifuge(own.wsUrl, {
          websocket: WebSocket, token: connToken(uniq('u')), timeout: T,
          minReconnectDelay: 5000, maxReconnectDelay: 10000,
        });
        c.on('error', () => {});
        clients.push(c);
        const p = waitEvent(c, 'connected', T);
        c.connect();
        await p;
        const cP = waitEvent(c, 'connecting', T);
        const exited = own.stop();
        const ctx = await cP;
        assert.equal(ctx.code, 3001, JSON.stringify(ctx));
        const exit = await exited;
        assert.deepEqual(exit, { code: 0, signal: null });
      } finally {
        await own.stop();
      }
    });
  });
}
