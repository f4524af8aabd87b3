// SockJS at /connection/sockjs with the real `sockjs-client` (npm), forced to
// one SockJS transport at a time, carrying centrifuge-js (JSON) the way
// Centrifugo v4/v5 deployments used it: connect, subscribe, receive a
// publication sent through the server API, publish from the client.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import SockJS from 'sockjs-client';
import { Centrifuge } from 'centrifuge';

import { startGyre, connToken, waitEvent, withTimeout, uniq } from '../harness.mjs';

const T = 10000;
const TRANSPORTS = ['websocket', 'xhr-streaming', 'xhr-polling', 'eventsource'];

describe('centrifuge-js over sockjs-client', () => {
  let server;
  let clients = [];

  before(async () => {
    server = await startGyre({ sockjs: { enabled: true } });
  });

  after(async () => {
    if (server) await server.stop();
  });

  afterEach(async () => {
    for (const c of clients) {
      try { c.disconnect(); } catch { /* ignore */ }
    }
    clients = [];
  });

  for (const transport of TRANSPORTS) {
    it(`${transport}: connect, subscribe, API publication, client publish, server disconnect`, async () => {
      const user = uniq('u');
      const c = new Centrifuge([{ transport: 'sockjs', endpoint: `${server.httpUrl}/connection/sockjs` }], {
        token: connToken(user),
        sockjs: SockJS,
        sockjsOptions: { transports: [transport], timeout: T },
        minReconnectDelay: 100,
        maxReconnectDelay: 500,
        timeout: T,
      });
      c.on('error', () => {});
      clients.push(c);
      const conn = waitEvent(c, 'connected', T);
      c.connect();
      const ctx = await conn;
      // centrifuge-js reports the SockJS transport sockjs-client really used.
      assert.equal(ctx.transport, `sockjs-${transport}`);

      const ch = uniq('ch');
      const sub = c.newSubscription(ch);
      sub.on('error', () => {});
      const subd = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      await subd;

      let got = waitEvent(sub, 'publication', T);
      await server.apiOk('publish', { channel: ch, data: { via: transport } });
      assert.deepEqual((await got).data, { via: transport });

      got = waitEvent(sub, 'publication', T);
      await withTimeout(sub.publish({ mine: true }), T, 'client publish');
      const p = await got;
      assert.deepEqual(p.data, { mine: true });
      assert.equal(p.info.user, user);

      const disc = waitEvent(c, 'disconnected', T);
      await server.apiOk('disconnect', { user });
      const d = await disc;
      assert.equal(d.code, 3503);
    });
  }
});
