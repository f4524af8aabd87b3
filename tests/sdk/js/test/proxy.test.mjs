// HTTP proxies (client.proxy.connect/refresh, channel.proxy.subscribe/publish,
// rpc.proxy, named proxies[]) against a real backend: a Node http server
// started here on a free port, which gyre calls with Centrifugo's proxy
// requests. Driven by the unmodified centrifuge-js SDK over WebSocket (`ws`,
// which lets the test send a Cookie like a browser would).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

import { startGyre, connToken, freePort, waitEvent, withTimeout, sleep, uniq } from '../harness.mjs';

const T = 5000;

/** A WebSocket class that sends `cookie` with the upgrade request, as a browser would. */
function cookieSocket(cookie) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, cookie ? { headers: { Cookie: cookie } } : {});
    }
  };
}

/** Awaits a promise that must reject; returns the rejection value. */
async function rejection(promise, what) {
  let failed = false;
  let err;
  await withTimeout(promise.then((v) => { err = v; }, (e) => { failed = true; err = e; }), T, what);
  assert.ok(failed, `${what} should have been rejected, resolved with ${JSON.stringify(err)}`);
  return err;
}

/**
 * The application backend: answers gyre's proxy requests by path and keeps
 * every request (path, headers, body) for assertions.
 */
function startBackend() {
  const calls = [];
  const refreshes = new Map(); // user -> count
  const now = () => Math.floor(Date.now() / 1000);
  const handlers = {
    '/connect': (b, h) => {
      const session = /session=([\w-]+)/.exec(h.cookie || '')?.[1];
      if (session === 'banned') return { disconnect: { code: 4501, reason: 'banned' } };
      if (session === 'broken') return { result: { user: 42 } }; // not the contract
      if (session === 'short') return { result: { user: `short-${b.client}`, expire_at: now() + 2 } };
      if (!session) return { result: null };
      return {
        result: {
          meta: { plan: 'gold', session },
          user: session,
          info: { name: session.toUpperCase() },
          data: { greeting: `hi ${session}`, sent: b.data ?? null },
        },
      };
    },
    '/refresh': (b) => {
      const n = (refreshes.get(b.user) || 0) + 1;
      refreshes.set(b.user, n);
      return n === 1 ? { result: { expire_at: now() + 2 } } : { result: { expired: true } };
    },
    '/subscribe': (b) => {
      if (b.channel.endsWith(':refused')) return { error: { code: 1403, message: 'not for you' } };
      if (b.channel.startsWith('sr:')) return { result: { expire_at: now() + 2, info: { gen: 0 } } };
      return { result: { info: { role: 'member' }, data: { welcome: b.channel, user: b.user } } };
    },
    '/sub_refresh': (b) => {
      const key = `${b.client}/${b.channel}`;
      const n = (refreshes.get(key) || 0) + 1;
      refreshes.set(key, n);
      return n === 1 ? { result: { expire_at: now() + 2, info: { gen: 1 } } } : { result: { expired: true } };
    },
    '/publish': (b) => {
      if (b.channel.endsWith(':ro')) return { error: { code: 1404, message: 'read only' } };
      return { result: { data: { text: String(b.data.text).toUpperCase(), by: b.user } } };
    },
    '/rpc': (b) => {
      if (b.method === 'fail') return { error: { code: 1500, message: 'boom' } };
      return { result: { data: { echo: b.data, user: b.user, method: b.method } } };
    },
    '/rpcbin': (b) => {
      if (b.encoding !== 'binary' || b.data !== undefined) return { error: { code: 1998, message: 'not binary' } };
      const got = JSON.parse(Buffer.from(b.b64data, 'base64').toString());
      return { result: { b64data: Buffer.from(JSON.stringify({ decoded: got })).toString('base64') } };
    },
  };
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', async () => {
      const parsed = body ? JSON.parse(body) : {};
      calls.push({ path: req.url, headers: req.headers, body: parsed });
      if (req.url === '/slow') {
        await sleep(3000); // beyond every proxy timeout used here
        if (!res.destroyed) res.end('{}');
        return;
      }
      if (req.url === '/status500' || req.url === '/status403') {
        res.statusCode = Number(req.url.slice(-3));
        res.end('oops');
        return;
      }
      const h = handlers[req.url];
      const out = h ? h(parsed, req.headers) : { error: { code: 1999, message: 'no handler' } };
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify(out));
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({
      url: `http://127.0.0.1:${server.address().port}`,
      calls,
      refreshes,
      close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
    }));
  });
}

describe('HTTP proxies with centrifuge-js', () => {
  let backend;
  let server;
  let clients = [];

  before(async () => {
    backend = await startBackend();
    const dead = `http://127.0.0.1:${await freePort()}/nobody-listens`;
    const b = backend.url;
    server = await startGyre({
      client: {
        proxy: {
          connect: { enabled: true, endpoint: `${b}/connect`, timeout: '1s', http_headers: ['Cookie'] },
          refresh: { enabled: true, endpoint: `${b}/refresh`, timeout: '1s' },
        },
        presence_update_interval: '1s', // subscription expiry is checked at this tick
      },
      channel: {
        proxy: {
          subscribe: { endpoint: `${b}/subscribe`, http_headers: ['Cookie'], http: { static_headers: { 'X-Gyre-Test': 'yes' } } },
          publish: { endpoint: `${b}/publish` },
          sub_refresh: { endpoint: `${b}/sub_refresh` },
        },
        namespaces: [
          { name: 'ro', allow_subscribe_for_client: true },
          { name: 'px', subscribe_proxy_enabled: true, publish_proxy_enabled: true },
          { name: 'sr', subscribe_proxy_enabled: true, sub_refresh_proxy_enabled: true },
          { name: 'slow', subscribe_proxy_enabled: true, subscribe_proxy_name: 'slow' },
          { name: 'dead', subscribe_proxy_enabled: true, subscribe_proxy_name: 'dead' },
        ],
      },
      rpc: {
        proxy: { endpoint: `${b}/rpc` },
        without_namespace: { proxy_enabled: true },
        namespaces: [
          { name: 'slow', proxy_enabled: true, proxy_name: 'slow' },
          { name: 'dead', proxy_enabled: true, proxy_name: 'dead' },
          { name: 'err', proxy_enabled: true, proxy_name: 'err' },
          { name: 'xf', proxy_enabled: true, proxy_name: 'xf' },
          { name: 'xd', proxy_enabled: true, proxy_name: 'xd' },
          { name: 'bin', proxy_enabled: true, proxy_name: 'bin' },
          { name: 'meta', proxy_enabled: true, proxy_name: 'meta' },
        ],
      },
      proxies: [
        { name: 'slow', endpoint: `${b}/slow`, timeout: '500ms' },
        { name: 'dead', endpoint: dead, timeout: '1s' },
        { name: 'err', endpoint: `${b}/status500` },
        {
          name: 'xf',
          endpoint: `${b}/status500`,
          http: { status_to_code_transforms: [{ status_code: 500, to_error: { code: 1501, message: 'mapped', temporary: false } }] },
        },
        {
          name: 'xd',
          endpoint: `${b}/status403`,
          http: { status_to_code_transforms: [{ status_code: 403, to_disconnect: { code: 4503, reason: 'forbidden' } }] },
        },
        { name: 'bin', endpoint: `${b}/rpcbin`, binary_encoding: true },
        { name: 'meta', endpoint: `${b}/rpc`, include_connection_meta: true, emulated_headers: ['X-Tenant'], http_headers: ['Cookie'] },
      ],
    });
  });

  after(async () => {
    if (server) await server.stop();
    if (backend) await backend.close();
  });

  afterEach(() => {
    for (const c of clients) c.disconnect();
    clients = [];
  });

  function client(cookie, opts = {}) {
    const c = new Centrifuge(server.wsUrl, { websocket: cookieSocket(cookie), minReconnectDelay: 200, maxReconnectDelay: 500, ...opts });
    c.on('error', () => {}); // errors are asserted through their events where they matter
    clients.push(c);
    return c;
  }

  async function connected(cookie, opts) {
    const c = client(cookie, opts);
    const p = waitEvent(c, 'connected', T);
    c.connect();
    return { c, ctx: await p };
  }

  it('connect proxy: cookie auth without a token, result mapped into the connect reply', async () => {
    const before = backend.calls.length;
    const { c, ctx } = await connected('session=alice', { data: { hello: 1 } });
    assert.deepEqual(ctx.data, { greeting: 'hi alice', sent: { hello: 1 } });
    const call = backend.calls.slice(before).find((x) => x.path === '/connect');
    assert.ok(call, 'connect proxy called');
    assert.equal(call.headers.cookie, 'session=alice', 'http_headers copies the Cookie');
    assert.equal(call.headers['content-type'], 'application/json');
    assert.equal(call.body.client, ctx.client);
    assert.equal(call.body.transport, 'websocket');
    assert.equal(call.body.protocol, 'json');
    assert.equal(call.body.encoding, 'json');
    assert.equal(call.body.name, 'js');
    assert.equal(call.body.user, undefined, 'no user before connect');
    // The user and conn_info from the proxy are the connection's identity.
    const res = await withTimeout(c.rpc('whoami', { q: 1 }), T, 'rpc');
    assert.deepEqual(res.data, { echo: { q: 1 }, user: 'alice', method: 'whoami' });
  });

  it('connect proxy: a token bypasses it; no result → 3501; disconnect relayed; bad answer → 100', async () => {
    const before = backend.calls.filter((x) => x.path === '/connect').length;
    const { ctx } = await connected(null, { token: connToken('tokenuser') });
    assert.ok(ctx.client);
    assert.equal(backend.calls.filter((x) => x.path === '/connect').length, before, 'connect proxy not called with a token');

    const anon = client(null);
    const d1 = waitEvent(anon, 'disconnected', T);
    anon.connect();
    assert.equal((await d1).code, 3501);

    const banned = client('session=banned');
    const d2 = waitEvent(banned, 'disconnected', T);
    banned.connect();
    const ctx2 = await d2;
    assert.equal(ctx2.code, 4501);
    assert.equal(ctx2.reason, 'banned');

    const broken = client('session=broken');
    const e = waitEvent(broken, 'error', T, (x) => x.type === 'connect');
    broken.connect();
    assert.equal((await e).error.code, 100, 'a non-contract answer is 100 internal');
    assert.equal(broken.state, 'connecting', 'error 100 is temporary: the SDK keeps reconnecting');
    broken.disconnect();
    assert.match(server.logs(), /proxy answer is not the connect contract/);
  });

  it('subscribe proxy: allowed with data and info, refused with the custom code', async () => {
    const { c } = await connected('session=bob');
    const before = backend.calls.length;
    const sub = c.newSubscription('px:room');
    const subscribed = waitEvent(sub, 'subscribed', T);
    sub.subscribe();
    const ctx = await subscribed;
    assert.deepEqual(ctx.data, { welcome: 'px:room', user: 'bob' });
    const call = backend.calls.slice(before).find((x) => x.path === '/subscribe');
    assert.equal(call.body.channel, 'px:room');
    assert.equal(call.body.user, 'bob');
    assert.equal(call.headers.cookie, 'session=bob');
    assert.equal(call.headers['x-gyre-test'], 'yes', 'static headers');

    const refused = c.newSubscription('px:refused');
    const unsub = waitEvent(refused, 'unsubscribed', T);
    refused.subscribe();
    const u = await unsub;
    assert.equal(u.code, 1403, JSON.stringify(u));
    assert.equal(u.reason, 'not for you');
    assert.equal(c.state, 'connected');
  });

  it('publish proxy rewrites the data every subscriber receives, or refuses', async () => {
    const { c: a } = await connected('session=carol');
    const { c: b } = await connected('session=dave');
    const ch = `px:${uniq('pub')}`;
    const subA = a.newSubscription(ch);
    const subB = b.newSubscription(ch);
    const pa = waitEvent(subA, 'subscribed', T);
    const pb = waitEvent(subB, 'subscribed', T);
    subA.subscribe();
    subB.subscribe();
    await Promise.all([pa, pb]);
    const got = waitEvent(subB, 'publication', T);
    await withTimeout(subA.publish({ text: 'hello' }), T, 'publish');
    const pub = await got;
    assert.deepEqual(pub.data, { text: 'HELLO', by: 'carol' });
    assert.equal(pub.info.user, 'carol');
    assert.deepEqual(pub.info.connInfo, { name: 'CAROL' }, 'conn_info from the connect proxy');
    assert.deepEqual(pub.info.chanInfo, { role: 'member' }, 'chan_info from the subscribe proxy');

    const err = await rejection(a.publish('px:ro', { text: 'x' }), 'publish to px:ro');
    assert.equal(err.code, 1404);
    assert.equal(err.message, 'read only');
  });

  it('rpc proxy: answered, failed with the app error; non-2xx → 100', async () => {
    const { c } = await connected('session=erin');
    const res = await withTimeout(c.rpc('sum', { a: 1 }), T, 'rpc sum');
    assert.deepEqual(res.data, { echo: { a: 1 }, user: 'erin', method: 'sum' });
    const e1 = await rejection(c.rpc('fail', {}), 'rpc fail');
    assert.equal(e1.code, 1500);
    assert.equal(e1.message, 'boom');
    const e2 = await rejection(c.rpc('err:x', {}), 'rpc err:x');
    assert.equal(e2.code, 100);
    const e3 = await rejection(c.rpc('nons:x', {}), 'rpc nons:x');
    assert.equal(e3.code, 104, 'unknown rpc namespace');
    assert.equal(c.state, 'connected');
  });

  it('proxy options: status_to_code_transforms, binary_encoding, include_connection_meta, emulated headers', async () => {
    const { c } = await connected('session=ivy', { headers: { 'X-Tenant': 'acme' } });
    const e1 = await rejection(c.rpc('xf:x', {}), 'rpc xf:x');
    assert.deepEqual([e1.code, e1.message], [1501, 'mapped']);
    const bin = await withTimeout(c.rpc('bin:x', { n: 7 }), T, 'rpc bin:x');
    assert.deepEqual(bin.data, { decoded: { n: 7 } });
    const before = backend.calls.length;
    await withTimeout(c.rpc('meta:x', {}), T, 'rpc meta:x');
    const call = backend.calls.slice(before).find((x) => x.path === '/rpc');
    assert.deepEqual(call.body.meta, { plan: 'gold', session: 'ivy' }, 'meta from the connect proxy');
    assert.equal(call.headers['x-tenant'], 'acme', 'emulated header from connect.headers');
    assert.equal(call.headers.cookie, 'session=ivy');
    const before2 = backend.calls.length;
    await withTimeout(c.rpc('plain', {}), T, 'rpc plain');
    const plain = backend.calls.slice(before2).find((x) => x.path === '/rpc');
    assert.equal(plain.body.meta, undefined, 'no meta without include_connection_meta');
    assert.equal(plain.headers['x-tenant'], undefined, 'no emulated header where not configured');
    const closed = waitEvent(c, 'disconnected', T);
    c.rpc('xd:x', {}).catch(() => {});
    const d = await closed;
    assert.deepEqual([d.code, d.reason], [4503, 'forbidden']);
  });

  it('refresh proxy: server-driven expiry extended once, then expired → 3005', async () => {
    const { c, ctx } = await connected('session=short');
    const user = `short-${ctx.client}`;
    const t0 = Date.now();
    const disc = waitEvent(c, 'connecting', 12000, (x) => x.code === 3005);
    // The client never sends `refresh` (the reply had no expiry for it to act on).
    const ev = await disc;
    const elapsed = Date.now() - t0;
    assert.equal(ev.code, 3005);
    assert.equal(backend.refreshes.get(user), 2, 'one extension, then expired');
    assert.ok(elapsed >= 3000, `the first refresh extended the session (ended after ${elapsed} ms)`);
    const calls = backend.calls.filter((x) => x.path === '/refresh' && x.body.user === user);
    assert.equal(calls[0].body.client, ctx.client);
    c.disconnect();
  });

  it('refresh proxy: the connect reply carries no expiry, and a client refresh command is 3501', async () => {
    const ws = new WebSocket(server.wsUrl, 'centrifuge-json', { headers: { Cookie: 'session=short' } });
    const frames = [];
    const closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
    ws.on('message', (m) => frames.push(JSON.parse(m.toString().split('\n')[0])));
    await withTimeout(new Promise((r) => ws.on('open', r)), T, 'ws open');
    ws.send(JSON.stringify({ id: 1, connect: {} }));
    await withTimeout((async () => { while (!frames.length) await sleep(20); })(), T, 'connect reply');
    const reply = frames[0].connect;
    assert.ok(reply && reply.client, JSON.stringify(frames[0]));
    assert.equal(reply.expires, undefined, 'no expires: the server refreshes through the proxy');
    assert.equal(reply.ttl, undefined);
    ws.send(JSON.stringify({ id: 2, refresh: { token: connToken('short') } }));
    assert.equal(await withTimeout(closed, T, 'close'), 3501);
  });

  it('sub_refresh proxy: the server extends a subscription once, then ends it (2501)', async () => {
    const { c, ctx } = await connected('session=henry');
    const ch = `sr:${uniq('room')}`;
    const sub = c.newSubscription(ch);
    const subscribed = waitEvent(sub, 'subscribed', T);
    const t0 = Date.now();
    sub.subscribe();
    await subscribed;
    const ended = await waitEvent(sub, 'subscribing', 12000, (x) => x.code === 2501);
    assert.equal(ended.code, 2501);
    const elapsed = Date.now() - t0;
    assert.equal(backend.refreshes.get(`${ctx.client}/${ch}`), 2, 'one extension, then expired');
    assert.ok(elapsed >= 3000, `extended before ending (${elapsed} ms)`);
    const call = backend.calls.find((x) => x.path === '/sub_refresh' && x.body.channel === ch);
    assert.equal(call.body.user, 'henry');
    sub.unsubscribe();
  });

  it('a slow proxy times out with 100 and harms nobody else; a dead one is 100 too', async () => {
    const { c: slowClient } = await connected('session=frank');
    const { c: other } = await connected('session=grace');
    const t0 = Date.now();
    const slow = rejection(slowClient.rpc('slow:x', {}), 'rpc slow:x');
    // While the slow call is outstanding, another connection is served at once.
    const fast = await withTimeout(other.rpc('quick', {}), T, 'rpc quick');
    assert.equal(fast.data.user, 'grace');
    assert.ok(Date.now() - t0 < 450, 'not held up by the slow proxy');
    const e = await slow;
    assert.equal(e.code, 100);
    const took = Date.now() - t0;
    assert.ok(took >= 450 && took < 2500, `timeout honoured (${took} ms)`);

    const e2 = await rejection(other.rpc('dead:x', {}), 'rpc dead:x');
    assert.equal(e2.code, 100);

    const sub = other.newSubscription('dead:room');
    const err = waitEvent(sub, 'error', T);
    sub.subscribe();
    const ectx = await err;
    assert.equal(ectx.error.code, 100);
    sub.unsubscribe();

    // Everyone keeps being served after all that.
    const again = await withTimeout(slowClient.rpc('after', {}), T, 'rpc after');
    assert.equal(again.data.user, 'frank');
    assert.equal(other.state, 'connected');
    assert.match(server.logs(), /proxy call timed out/);
    assert.match(server.logs(), /proxy unreachable/);
  });
});
