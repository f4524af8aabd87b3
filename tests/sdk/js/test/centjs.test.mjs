// cent.js 6.1.0 (npm, community HTTP API client listed in the Centrifugo docs)
// against the real gyre binary: per-method calls (POST /api/<method>) and
// pipeline() (legacy POST /api, newline-delimited {"method","params"} lines).
// A centrifuge-js client subscribed to the channels observes the deliveries.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import centjs from 'cent.js';

import { startGyre, connToken, waitEvent, withTimeout, uniq, API_KEY } from '../harness.mjs';

const { CentClient, CentException } = centjs;
const T = 5000;

describe('cent.js 6.1.0', () => {
  let server;
  let clients = [];

  before(async () => { server = await startGyre(); });
  after(async () => { if (server) await server.stop(); });
  afterEach(() => {
    for (const c of clients) { try { c.disconnect(); } catch { /* ignore */ } }
    clients = [];
  });

  async function subscriber(channels) {
    const c = new Centrifuge(server.wsUrl, { websocket: WebSocket, token: connToken(uniq('u')), timeout: T });
    c.on('error', () => {});
    clients.push(c);
    const subs = channels.map((ch) => c.newSubscription(ch));
    const ready = subs.map((s) => waitEvent(s, 'subscribed', T));
    subs.forEach((s) => s.subscribe());
    c.connect();
    await Promise.all(ready);
    return { c, subs };
  }

  function collect(sub, n) {
    const got = [];
    const p = new Promise((resolve) => {
      sub.on('publication', (ctx) => { got.push(ctx.data); if (got.length === n) resolve(got); });
    });
    return withTimeout(p, T, `${n} publications on ${sub.channel}`);
  }

  it('publish delivers to a subscriber and returns the result', async () => {
    const channel = uniq('cjs');
    const { subs: [sub] } = await subscriber([channel]);
    const cent = new CentClient({ url: server.apiUrl, apiKey: API_KEY });
    const pubP = waitEvent(sub, 'publication', T);
    const res = await withTimeout(cent.publish({ channel, data: { from: 'cent.js' } }), T, 'cent.js publish');
    assert.deepEqual(res, {});
    assert.deepEqual((await pubP).data, { from: 'cent.js' });
  });

  it('publish to an unknown namespace throws CentException with code 102', async () => {
    const cent = new CentClient({ url: server.apiUrl, apiKey: API_KEY });
    let err;
    await withTimeout(cent.publish({ channel: 'nope:x', data: {} }).then(
      () => assert.fail('should throw'), (e) => { err = e; }), T, 'publish error');
    // cent.js wraps the error object in `new CentException(res.error)`, which keeps
    // no code; the code itself is checked on the raw reply.
    assert.ok(err instanceof CentException, String(err));
    const raw = await server.api('publish', { channel: 'nope:x', data: {} });
    assert.equal(raw.status, 200);
    assert.equal(raw.body.error.code, 102, JSON.stringify(raw.body));
    assert.equal(raw.body.result, undefined);
  });

  it('broadcast, channels and info through per-method calls', async () => {
    const ch1 = uniq('b1');
    const ch2 = uniq('b2');
    const { subs: [s1, s2] } = await subscriber([ch1, ch2]);
    const cent = new CentClient({ url: server.apiUrl, apiKey: API_KEY });
    const p1 = waitEvent(s1, 'publication', T);
    const p2 = waitEvent(s2, 'publication', T);
    const res = await withTimeout(cent.broadcast({ channels: [ch1, ch2], data: { all: 1 } }), T, 'broadcast');
    assert.equal(res.responses.length, 2);
    for (const r of res.responses) assert.equal(r.error, undefined, JSON.stringify(r));
    assert.deepEqual((await p1).data, { all: 1 });
    assert.deepEqual((await p2).data, { all: 1 });

    const chans = await withTimeout(cent.getChannels({ pattern: `${ch1.slice(0, 2)}*` }), T, 'channels');
    assert.deepEqual(chans.channels[ch1], { num_clients: 1 });
    assert.equal(chans.channels[ch2], undefined, 'pattern filters channels');

    const info = await withTimeout(cent.getInfo(), T, 'info');
    assert.equal(info.nodes.length, 1);
    assert.ok(info.nodes[0].uid);
    assert.ok(info.nodes[0].num_clients >= 1);
  });

  it('pipeline() sends several commands over the legacy POST /api format', async () => {
    const channel = uniq('pipe');
    const { subs: [sub] } = await subscriber([channel]);
    const cent = new CentClient({ url: server.apiUrl, apiKey: API_KEY });
    const gotP = collect(sub, 2);
    const results = await withTimeout(cent.pipeline([
      { method: 'publish', params: { channel, data: { seq: 1 } } },
      { method: 'publish', params: { channel, data: { seq: 2 } } },
      { method: 'channels', params: { pattern: channel } },
      { method: 'info', params: {} },
    ]), T, 'pipeline');
    assert.equal(results.length, 4, JSON.stringify(results));
    assert.deepEqual(await gotP, [{ seq: 1 }, { seq: 2 }]);
    assert.deepEqual(results[2].channels, { [channel]: { num_clients: 1 } });
    assert.equal(results[3].nodes.length, 1);
  });

  it('a wrong API key is rejected (401)', async () => {
    const cent = new CentClient({ url: server.apiUrl, apiKey: 'wrong-key' });
    // cent.js parses the body as JSON without looking at the status: a 401
    // with an empty body makes it throw.
    await assert.rejects(withTimeout(cent.publish({ channel: 'x', data: {} }), T, 'publish wrong key'));
    const raw = await server.api('publish', { channel: 'x', data: {} }, { key: 'wrong-key' });
    assert.equal(raw.status, 401);
  });
});
