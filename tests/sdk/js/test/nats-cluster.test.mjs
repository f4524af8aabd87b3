// Three gyre nodes sharing one private nats-server, with centrifuge-js (JSON):
// cross-node delivery, info, presence, recovery on another node, join/leave,
// API disconnect across nodes.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

import { connToken, waitEvent, sleep, uniq } from '../harness.mjs';
import { startNats, startCluster } from '../nats.mjs';

const T = 5000;

describe('three nodes over NATS (centrifuge-js)', () => {
  let nats;
  let nodes = [];
  let clients = [];

  before(async () => {
    nats = await startNats();
    nodes = await startCluster(nats.url, 3);
  });
  after(async () => {
    for (const n of nodes) await n.stop();
    if (nats) await nats.stop();
  });
  afterEach(() => {
    for (const c of clients) { try { c.disconnect(); } catch { /* ignore */ } }
    clients = [];
  });

  async function connect(node, user) {
    const c = new Centrifuge(node.wsUrl, { websocket: WebSocket, token: connToken(user), timeout: T });
    c.on('error', () => {});
    clients.push(c);
    const p = waitEvent(c, 'connected', T);
    c.connect();
    c.clientId = (await p).client;
    return c;
  }

  async function subscribe(c, channel, opts = {}) {
    const sub = c.newSubscription(channel, opts);
    const pubs = [];
    const joins = [];
    const leaves = [];
    sub.on('publication', (ctx) => pubs.push(ctx));
    sub.on('join', (ctx) => joins.push(ctx));
    sub.on('leave', (ctx) => leaves.push(ctx));
    const p = waitEvent(sub, 'subscribed', T);
    sub.subscribe();
    const ctx = await p;
    return { sub, ctx, pubs, joins, leaves };
  }

  async function until(cond, what, ms = T) {
    const deadline = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`);
      await sleep(20);
    }
  }

  it('a client on node 1 receives a publication sent through the API of node 2', async () => {
    const c = await connect(nodes[0], uniq('u'));
    const channel = uniq('rec:cross');
    const { pubs } = await subscribe(c, channel);
    const res = await nodes[1].apiOk('publish', { channel, data: { via: 'node2' } });
    assert.equal(res.offset, 1);
    await until(() => pubs.length === 1, 'publication');
    assert.deepEqual(pubs[0].data, { via: 'node2' });
  });

  it('info on node 3 lists three nodes', async () => {
    const deadline = Date.now() + 15000;
    let names;
    for (;;) {
      const { nodes: ns } = await nodes[2].apiOk('info', {});
      names = ns.map((n) => n.name).sort();
      if (names.join() === 'node1,node2,node3') break;
      assert.ok(Date.now() < deadline, `info: ${JSON.stringify(ns)}`);
      await sleep(300);
    }
  });

  it('presence on node 3 shows a client of node 1', async () => {
    const user = uniq('alice');
    const c = await connect(nodes[0], user);
    const channel = uniq('rec:pres');
    await subscribe(c, channel);
    const { presence } = await nodes[2].apiOk('presence', { channel });
    const entries = Object.values(presence);
    assert.equal(entries.length, 1, JSON.stringify(presence));
    assert.equal(entries[0].user, user);
  });

  it('disconnects from node 1, misses three publications sent through node 3, recovers exactly them on node 2', async () => {
    const user = uniq('u');
    const channel = uniq('rec:recover');
    const c1 = await connect(nodes[0], user);
    const first = await subscribe(c1, channel);
    assert.ok(first.ctx.recoverable);
    await nodes[0].apiOk('publish', { channel, data: { n: 0 } });
    await until(() => first.pubs.length === 1, 'first publication');
    const since = { offset: first.pubs[0].offset, epoch: first.ctx.streamPosition.epoch };
    c1.disconnect();
    for (let i = 1; i <= 3; i++) await nodes[2].apiOk('publish', { channel, data: { n: i } });
    const c2 = await connect(nodes[1], user);
    const again = await subscribe(c2, channel, { since });
    assert.ok(again.ctx.wasRecovering && again.ctx.recovered, JSON.stringify(again.ctx));
    await until(() => again.pubs.length >= 3, 'recovered publications');
    await sleep(200);
    assert.deepEqual(again.pubs.map((p) => [p.offset, p.data.n]), [[2, 1], [3, 2], [4, 3]]);
  });

  it('join and leave are seen across nodes', async () => {
    const channel = uniq('rec:jl');
    const a = await connect(nodes[0], uniq('a'));
    const sa = await subscribe(a, channel);
    const b = await connect(nodes[1], uniq('b'));
    const sb = await subscribe(b, channel);
    await until(() => sa.joins.some((j) => j.info.client === b.clientId), 'join of b on node 1');
    sb.sub.unsubscribe();
    await until(() => sa.leaves.some((l) => l.info.client === b.clientId), 'leave of b on node 1');
  });

  it('API disconnect on node 2 reaches a client of node 1', async () => {
    const user = uniq('victim');
    const c = await connect(nodes[0], user);
    const p = waitEvent(c, 'disconnected', T);
    await nodes[1].apiOk('disconnect', { user, disconnect: { code: 4500, reason: 'bye' } });
    const ctx = await p;
    assert.equal(ctx.code, 4500);
  });
});
