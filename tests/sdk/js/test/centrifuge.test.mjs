// The official centrifuge-js SDK (npm `centrifuge` 5.x) against the real gyre
// binary, in Node with `ws`: once with the JSON build and once with the
// Protobuf build (`centrifuge/build/protobuf`, subprotocol centrifuge-protobuf).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as jsonBuild from 'centrifuge';
import * as protobufBuild from 'centrifuge/build/protobuf';

import {
  startGyre, connToken, subToken, waitEvent, recordEvents, withTimeout, sleep, uniq, SECRET,
} from '../harness.mjs';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const T = 5000; // per-await timeout (ms)

const builds = [
  {
    name: 'json',
    sdk: jsonBuild,
    enc: (obj) => obj,
    dec: (data) => data,
  },
  {
    name: 'protobuf',
    sdk: protobufBuild,
    enc: (obj) => new TextEncoder().encode(JSON.stringify(obj)),
    dec: (data) => {
      assert.ok(data instanceof Uint8Array, `protobuf payload must be bytes, got ${typeof data}`);
      return JSON.parse(new TextDecoder().decode(data));
    },
  },
];

/** Awaits a promise that must reject; returns the rejection value. */
async function rejection(promise, what) {
  let failed = false;
  let err;
  await withTimeout(promise.then(
    (v) => { err = v; },
    (e) => { failed = true; err = e; },
  ), T, what);
  assert.ok(failed, `${what} should have been rejected, resolved with ${JSON.stringify(err)}`);
  return err;
}

for (const build of builds) {
  const { Centrifuge } = build.sdk;
  const { enc, dec } = build;

  describe(`centrifuge-js ${build.name} build`, () => {
    let server;
    let clients = [];

    before(async () => {
      server = await startGyre({
        client: { expired_close_delay: '1s', expired_sub_close_delay: '1s', presence_update_interval: '1s' },
        channel: {
          namespaces: [
            { name: 'ro', allow_subscribe_for_client: true },
            { name: 'srv' },
          ],
        },
      });
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

    function newClient(opts = {}) {
      const c = new Centrifuge(server.wsUrl, {
        websocket: WebSocket,
        minReconnectDelay: 100,
        maxReconnectDelay: 500,
        timeout: T,
        ...opts,
      });
      // Unhandled 'error' events must not crash the test process.
      c.on('error', () => {});
      clients.push(c);
      return c;
    }

    async function connected(user, opts = {}) {
      const c = newClient({ token: connToken(user), ...opts });
      const p = waitEvent(c, 'connected', T);
      c.connect();
      const ctx = await p;
      return { c, ctx };
    }

    async function subscribed(c, channel, opts = {}) {
      const sub = c.newSubscription(channel, opts);
      sub.on('error', () => {});
      const p = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      await p;
      return sub;
    }

    it('connects with a valid token and gets a client id', async () => {
      const { c, ctx } = await connected(uniq('u'));
      assert.match(ctx.client, UUID_RE);
      assert.equal(ctx.transport, 'websocket');
      assert.equal(c.state, 'connected');
    });

    it('refuses a token with a bad signature: disconnect 3500, terminal', async () => {
      const c = newClient({ token: connToken(uniq('u'), { secret: `${SECRET}-wrong` }) });
      const log = recordEvents(c, ['connecting', 'connected', 'disconnected']);
      const p = waitEvent(c, 'disconnected', T);
      c.connect();
      const ctx = await p;
      assert.equal(ctx.code, 3500, `disconnected ctx: ${JSON.stringify(ctx)}`);
      await sleep(1000);
      assert.equal(c.state, 'disconnected');
      assert.deepEqual(log.map((e) => e.event), ['connecting', 'disconnected'],
        'no reconnect after a terminal code');
    });

    it('refuses a malformed token with 3500', async () => {
      const c = newClient({ token: 'not.a.jwt' });
      const p = waitEvent(c, 'disconnected', T);
      c.connect();
      const ctx = await p;
      assert.equal(ctx.code, 3500, `disconnected ctx: ${JSON.stringify(ctx)}`);
    });

    it('expired token: error 109, getToken is called and the reconnect succeeds', async () => {
      const user = uniq('u');
      let calls = 0;
      const c = newClient({
        token: connToken(user, { ttl: -30 }),
        getToken: async () => { calls += 1; return connToken(user); },
      });
      const errors = [];
      c.on('error', (ctx) => errors.push(ctx));
      const p = waitEvent(c, 'connected', T * 2);
      c.connect();
      const ctx = await p;
      assert.match(ctx.client, UUID_RE);
      assert.equal(calls, 1, 'getToken called exactly once');
      const connectErr = errors.find((e) => e.type === 'connect');
      assert.ok(connectErr, `a connect error was reported: ${JSON.stringify(errors)}`);
      assert.equal(connectErr.error.code, 109);
    });

    it('subscribes and receives a publication sent through the HTTP API', async () => {
      const channel = uniq('news');
      const c = newClient({ token: connToken(uniq('u')) });
      // Subscription created before connect: the SDK sends connect + subscribe in one frame.
      const sub = c.newSubscription(channel);
      const subscribedP = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      c.connect();
      const sctx = await subscribedP;
      assert.equal(sctx.channel, channel);
      assert.equal(sub.state, 'subscribed');

      const pubP = waitEvent(sub, 'publication', T);
      const result = await server.apiOk('publish', { channel, data: { text: 'hello', n: 1 } });
      assert.deepEqual(result, {}, 'no history: empty publish result');
      const pub = await pubP;
      assert.equal(pub.channel, channel);
      assert.deepEqual(dec(pub.data), { text: 'hello', n: 1 });
      assert.equal(pub.info, undefined, 'API publications carry no publisher info');
    });

    it('subscribes after connect and gets publications in order', async () => {
      const { c } = await connected(uniq('u'));
      const channel = uniq('ord');
      const sub = await subscribed(c, channel);
      const got = [];
      const done = new Promise((resolve) => {
        sub.on('publication', (ctx) => { got.push(dec(ctx.data).i); if (got.length === 5) resolve(); });
      });
      for (let i = 0; i < 5; i++) await server.apiOk('publish', { channel, data: { i } });
      await withTimeout(done, T, '5 publications');
      assert.deepEqual(got, [0, 1, 2, 3, 4]);
    });

    it('client publish is allowed with allow_publish_for_subscriber', async () => {
      const user = uniq('u');
      const { c, ctx } = await connected(user, { token: connToken(user, { info: { name: 'alice' } }) });
      const channel = uniq('chat');
      const sub = await subscribed(c, channel);
      const pubP = waitEvent(sub, 'publication', T);
      const res = await withTimeout(sub.publish(enc({ says: 'hi' })), T, 'sub.publish');
      assert.deepEqual(res, {});
      const pub = await pubP;
      assert.deepEqual(dec(pub.data), { says: 'hi' });
      assert.ok(pub.info, 'client publications carry the publisher info');
      assert.equal(pub.info.user, user);
      assert.equal(pub.info.client, ctx.client);
      assert.deepEqual(dec(pub.info.connInfo), { name: 'alice' }, 'conn_info from the token info claim');
    });

    it('private channel: subscription token required (103 without), works with one', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = `$${uniq('priv')}`;
      const denied = c.newSubscription(channel);
      denied.on('error', () => {});
      const p = waitEvent(denied, 'unsubscribed', T);
      denied.subscribe();
      assert.equal((await p).code, 103);
      c.removeSubscription(denied);

      const sub = await subscribed(c, channel, { token: subToken(user, channel) });
      const pubP = waitEvent(sub, 'publication', T);
      await server.apiOk('publish', { channel, data: { secret: true } });
      assert.deepEqual(dec((await pubP).data), { secret: true });
    });

    it('expired subscription token: getToken of the subscription is called', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = `$${uniq('priv')}`;
      const calls = [];
      const sub = c.newSubscription(channel, {
        token: subToken(user, channel, { ttl: -30 }),
        getToken: async (ctx) => { calls.push(ctx.channel); return subToken(user, channel); },
      });
      const errors = [];
      sub.on('error', (e) => errors.push(e));
      const p = waitEvent(sub, 'subscribed', T * 2);
      sub.subscribe();
      await p;
      assert.deepEqual(calls, [channel]);
      assert.ok(errors.some((e) => e.error && e.error.code === 109), JSON.stringify(errors));
    });

    it('client publish is refused with 103 in a namespace without publish permission', async () => {
      const { c } = await connected(uniq('u'));
      const channel = `ro:${uniq('c')}`;
      const sub = await subscribed(c, channel);
      const err = await rejection(sub.publish(enc({ x: 1 })), 'publish to ro:');
      assert.equal(err.code, 103, JSON.stringify(err));
      // Not subscribed to the channel: also 103, and the connection stays up.
      const err2 = await rejection(c.publish(`ro:${uniq('other')}`, enc({ x: 2 })), 'client.publish');
      assert.equal(err2.code, 103, JSON.stringify(err2));
      assert.equal(c.state, 'connected');
      assert.equal(sub.state, 'subscribed');
    });

    it('subscribing to an unknown namespace is refused with 102', async () => {
      const { c } = await connected(uniq('u'));
      const sub = c.newSubscription(`nonexistent:${uniq('c')}`);
      sub.on('error', () => {});
      const p = waitEvent(sub, 'unsubscribed', T);
      sub.subscribe();
      const ctx = await p;
      assert.equal(ctx.code, 102, JSON.stringify(ctx));
      assert.equal(c.state, 'connected');
    });

    it('subscription token refresh through getToken keeps the subscription', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = `$${uniq('priv')}`;
      let calls = 0;
      const sub = await subscribed(c, channel, {
        token: subToken(user, channel, { ttl: 3 }),
        getToken: async () => { calls += 1; return subToken(user, channel, { ttl: 3600 }); },
      });
      const log = recordEvents(sub, ['subscribing', 'unsubscribed', 'error']);
      const start = Date.now();
      while (calls === 0 && Date.now() - start < 8000) await sleep(100);
      assert.ok(calls >= 1, 'getToken of the subscription was called (sub_refresh)');
      // Past exp + expired_sub_close_delay (1s), with the periodic check every 1s.
      await sleep(3500);
      assert.deepEqual(log.map((e) => `${e.event}:${JSON.stringify(e.ctx.error || e.ctx.code)}`), []);
      assert.equal(sub.state, 'subscribed');
      const pubP = waitEvent(sub, 'publication', T);
      await server.apiOk('publish', { channel, data: { still: 'subscribed' } });
      assert.deepEqual(dec((await pubP).data), { still: 'subscribed' });
    });

    it('control: a subscription whose token is not refreshed gets unsubscribe 2501', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = `$${uniq('priv')}`;
      const sub = await subscribed(c, channel, {
        token: subToken(user, channel, { ttl: 2 }),
        getToken: () => new Promise(() => {}),
      });
      const ctx = await waitEvent(sub, 'subscribing', 10000);
      assert.equal(ctx.code, 2501, JSON.stringify(ctx));
      assert.equal(c.state, 'connected');
    });

    it('unsubscribe and subscribe again on the same connection', async () => {
      const { c } = await connected(uniq('u'));
      const channel = uniq('again');
      const sub = await subscribed(c, channel);
      const uP = waitEvent(sub, 'unsubscribed', T);
      sub.unsubscribe();
      assert.equal((await uP).code, 0);
      let received = 0;
      sub.on('publication', () => { received += 1; });
      // Publications are no longer delivered once the unsubscribe was processed:
      // a round trip (rpc) makes sure the server handled it.
      await withTimeout(c.rpc('ping', enc({})), T, 'rpc');
      await server.apiOk('publish', { channel, data: { n: 1 } });
      await sleep(300);
      assert.equal(received, 0);
      const sP = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      await sP;
      const pubP = waitEvent(sub, 'publication', T);
      await server.apiOk('publish', { channel, data: { n: 2 } });
      assert.deepEqual(dec((await pubP).data), { n: 2 });
      assert.equal(received, 1);
    });

    it('API unsubscribe unsubscribes the subscription with code 2000', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = uniq('uns');
      const sub = await subscribed(c, channel);
      const p = waitEvent(sub, 'unsubscribed', T);
      await server.apiOk('unsubscribe', { user, channel });
      const ctx = await p;
      assert.equal(ctx.code, 2000, JSON.stringify(ctx));
      assert.equal(sub.state, 'unsubscribed');
      assert.equal(c.state, 'connected');
      // No longer delivered.
      let received = false;
      sub.on('publication', () => { received = true; });
      await server.apiOk('publish', { channel, data: { after: true } });
      await sleep(300);
      assert.equal(received, false);
    });

    it('API disconnect closes the connection with 3503 (terminal)', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const log = recordEvents(c, ['connecting', 'disconnected']);
      const p = waitEvent(c, 'disconnected', T);
      await server.apiOk('disconnect', { user });
      const ctx = await p;
      assert.equal(ctx.code, 3503, JSON.stringify(ctx));
      await sleep(700);
      assert.equal(c.state, 'disconnected');
      assert.deepEqual(log.map((e) => e.event), ['disconnected']);
    });

    it('API disconnect with a custom terminal code 4500 and reason', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const p = waitEvent(c, 'disconnected', T);
      await server.apiOk('disconnect', { user, disconnect: { code: 4500, reason: 'custom bye' } });
      const ctx = await p;
      assert.equal(ctx.code, 4500);
      assert.equal(ctx.reason, 'custom bye');
      await sleep(500);
      assert.equal(c.state, 'disconnected');
    });

    it('API disconnect with a reconnect code 4000: the SDK reconnects', async () => {
      const user = uniq('u');
      const { c, ctx: first } = await connected(user);
      const connectingP = waitEvent(c, 'connecting', T);
      const reconnectedP = waitEvent(c, 'connected', T * 2);
      await server.apiOk('disconnect', { user, disconnect: { code: 4000, reason: 'come back' } });
      const cctx = await connectingP;
      assert.equal(cctx.code, 4000);
      assert.equal(cctx.reason, 'come back');
      const second = await reconnectedP;
      assert.notEqual(second.client, first.client, 'a new connection has a new client id');
    });

    it('connection token refresh through getToken keeps the connection up', async () => {
      const user = uniq('u');
      let calls = 0;
      const c = newClient({
        token: connToken(user, { ttl: 3 }),
        getToken: async () => { calls += 1; return connToken(user, { ttl: 3600 }); },
      });
      const p = waitEvent(c, 'connected', T);
      c.connect();
      await p;
      const log = recordEvents(c, ['connecting', 'disconnected']);
      const start = Date.now();
      while (calls === 0 && Date.now() - start < 8000) await sleep(100);
      assert.ok(calls >= 1, 'getToken was called to refresh the connection token');
      // Past the original exp + expired_close_delay (1s): the server must not close it.
      await sleep(3000);
      assert.equal(c.state, 'connected');
      assert.deepEqual(log.map((e) => `${e.event}:${e.ctx.code}`), [], 'no reconnect or disconnect');
      await withTimeout(c.rpc('ping', enc({})), T, 'rpc after refresh');
    });

    it('control: a connection whose token is not refreshed is closed with 3005', async () => {
      const user = uniq('u');
      // getToken never answers, so the SDK never sends refresh.
      const c = newClient({
        token: connToken(user, { ttl: 2 }),
        getToken: () => new Promise(() => {}),
      });
      const p = waitEvent(c, 'connected', T);
      c.connect();
      await p;
      const ctx = await waitEvent(c, 'connecting', 10000);
      assert.equal(ctx.code, 3005, JSON.stringify(ctx));
    });

    it('RPC ping answers; with only ping on, unknown methods and namespaces get 104', async () => {
      const { c } = await connected(uniq('u'));
      const res = await withTimeout(c.rpc('ping', enc({})), T, 'rpc ping');
      assert.ok(res && typeof res === 'object', 'rpc returns an object');
      if (res.data !== undefined && res.data !== null) {
        // Empty result: no data, or empty bytes.
        assert.equal(res.data.length ?? Object.keys(res.data).length, 0, `data: ${res.data}`);
      }
      const err = await rejection(c.rpc('no_such_method', enc({})), 'rpc no_such_method');
      assert.equal(err.code, 104, JSON.stringify(err));
      const err2 = await rejection(c.rpc('nons:method', enc({})), 'rpc nons:method');
      assert.equal(err2.code, 104, JSON.stringify(err2));
      assert.equal(c.state, 'connected');
    });

    it('server-side subscription from the token channels claim', async () => {
      const user = uniq('u');
      const channel = `srv:${uniq('c')}`;
      const c = newClient({ token: connToken(user, { channels: [channel] }) });
      const subP = waitEvent(c, 'subscribed', T, (ctx) => ctx.channel === channel);
      c.connect();
      await subP;
      const pubP = waitEvent(c, 'publication', T, (ctx) => ctx.channel === channel);
      await server.apiOk('publish', { channel, data: { server: 'side' } });
      const pub = await pubP;
      assert.deepEqual(dec(pub.data), { server: 'side' });
    });

    it('API subscribe adds a server-side subscription; API unsubscribe removes it', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = `srv:${uniq('c')}`;
      const subP = waitEvent(c, 'subscribed', T, (ctx) => ctx.channel === channel);
      await server.apiOk('subscribe', { user, channel });
      await subP;
      const pubP = waitEvent(c, 'publication', T, (ctx) => ctx.channel === channel);
      await server.apiOk('publish', { channel, data: { n: 7 } });
      assert.deepEqual(dec((await pubP).data), { n: 7 });
      const unsP = waitEvent(c, 'unsubscribed', T, (ctx) => ctx.channel === channel);
      await server.apiOk('unsubscribe', { user, channel });
      await unsP;
      assert.equal(c.state, 'connected');
    });

    it('other clients on the channel keep receiving after one is disconnected', async () => {
      const userA = uniq('a');
      const userB = uniq('b');
      const { c: a } = await connected(userA);
      const { c: b } = await connected(userB);
      const channel = uniq('shared');
      await subscribed(a, channel);
      const subB = await subscribed(b, channel);
      const dP = waitEvent(a, 'disconnected', T);
      await server.apiOk('disconnect', { user: userA });
      await dP;
      const pubP = waitEvent(subB, 'publication', T);
      await server.apiOk('publish', { channel, data: { still: 'here' } });
      assert.deepEqual(dec((await pubP).data), { still: 'here' });
      assert.equal(b.state, 'connected');
    });
  });
}
