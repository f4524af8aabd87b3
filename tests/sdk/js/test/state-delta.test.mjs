// Fossil delta compression edge cases (issue 3) decoded by centrifuge-js, JSON and
// Protobuf builds: a subscriber joining mid-stream gets a full payload first,
// delta and non-delta subscribers of one channel, positioning without recovery,
// client publications in a delta_publish namespace, non-ASCII payloads.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as jsonBuild from 'centrifuge';
import * as protobufBuild from 'centrifuge/build/protobuf';

import { startGyre, connToken, waitEvent, withTimeout, sleep, uniq } from '../harness.mjs';

const T = 5000;
const HISTORY = { history_size: 100, history_ttl: '300s' };

const NAMESPACES = [
  {
    name: 'delta', allow_subscribe_for_client: true, ...HISTORY, force_recovery: true,
    allowed_delta_types: ['fossil'],
  },
  {
    name: 'dpos', allow_subscribe_for_client: true, ...HISTORY, force_positioning: true,
    allowed_delta_types: ['fossil'],
  },
  {
    name: 'dpub', allow_subscribe_for_client: true, ...HISTORY, force_recovery: true,
    allowed_delta_types: ['fossil'], delta_publish: true, allow_publish_for_subscriber: true,
  },
  // delta asked but not allowed by the namespace: not negotiated.
  { name: 'nodelta', allow_subscribe_for_client: true, ...HISTORY, force_recovery: true },
];

function doc(version, text = 'line item number') {
  return {
    version,
    items: Array.from({ length: 30 }, (_, i) => ({
      i, name: `${text} ${i}`, v: i === version % 30 ? version : 0,
    })),
  };
}

for (const build of [
  { name: 'json', sdk: jsonBuild, dec: (d) => d, enc: (o) => o },
  {
    name: 'protobuf',
    sdk: protobufBuild,
    dec: (d) => JSON.parse(new TextDecoder().decode(d)),
    enc: (o) => new TextEncoder().encode(JSON.stringify(o)),
  },
]) {
  const { Centrifuge } = build.sdk;
  const { dec, enc } = build;

  describe(`fossil delta, centrifuge-js ${build.name} build`, () => {
    let server;
    let clients = [];

    before(async () => {
      server = await startGyre({ channel: { namespaces: NAMESPACES } });
    });
    after(async () => { if (server) await server.stop(); });
    afterEach(async () => {
      for (const c of clients) { try { c.disconnect(); } catch { /* ignore */ } }
      clients = [];
    });

    async function connected(user) {
      const c = new Centrifuge(server.wsUrl, {
        websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 500, timeout: T,
        token: connToken(user),
      });
      c.on('error', () => {});
      clients.push(c);
      const p = waitEvent(c, 'connected', T);
      c.connect();
      await p;
      return c;
    }

    async function subscribed(c, channel, opts = {}) {
      const sub = c.newSubscription(channel, opts);
      const errors = [];
      sub.on('error', (e) => errors.push(e));
      const got = [];
      sub.on('publication', (ctx) => got.push({ offset: ctx.offset, data: dec(ctx.data), info: ctx.info }));
      const p = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      const ctx = await p;
      const until = async (n) => {
        const start = Date.now();
        while (got.length < n) {
          if (Date.now() - start > T) throw new Error(`timeout: ${n} publications, have ${got.length}`);
          await sleep(10);
        }
      };
      return { sub, ctx, got, until, errors };
    }

    const publish = (channel, data, extra = {}) => server.apiOk('publish', { channel, data, ...extra });

    it('a subscriber joining mid-stream gets a full payload first', async () => {
      const channel = `delta:${uniq('c')}`;
      const c1 = await connected(uniq('u'));
      const early = await subscribed(c1, channel, { delta: 'fossil' });
      await publish(channel, doc(1), { delta: true });
      await publish(channel, doc(2), { delta: true });
      await early.until(2);

      const c2 = await connected(uniq('u'));
      const late = await subscribed(c2, channel, { delta: 'fossil' });
      for (let v = 3; v <= 5; v++) await publish(channel, doc(v), { delta: true });
      await early.until(5);
      await late.until(3);
      assert.deepEqual(early.got.map((p) => p.data), [1, 2, 3, 4, 5].map((v) => doc(v)));
      assert.deepEqual(late.got.map((p) => [p.offset, p.data]), [3, 4, 5].map((v) => [v, doc(v)]));
      assert.deepEqual(late.sub.deltaStats().numFullPayloads, 1, JSON.stringify(late.sub.deltaStats()));
      assert.deepEqual(late.sub.deltaStats().numDeltaPayloads, 2);
      assert.deepEqual(early.sub.deltaStats().numDeltaPayloads, 4);
      assert.deepEqual(early.errors, []);
      assert.deepEqual(late.errors, []);
    });

    it('delta and non-delta subscribers of one channel each get correct payloads', async () => {
      const channel = `delta:${uniq('c')}`;
      const cd = await connected(uniq('u'));
      const cp = await connected(uniq('u'));
      const d = await subscribed(cd, channel, { delta: 'fossil' });
      const p = await subscribed(cp, channel);
      for (let v = 1; v <= 4; v++) await publish(channel, doc(v), { delta: true });
      await d.until(4);
      await p.until(4);
      const want = [1, 2, 3, 4].map((v) => [v, doc(v)]);
      assert.deepEqual(d.got.map((x) => [x.offset, x.data]), want);
      assert.deepEqual(p.got.map((x) => [x.offset, x.data]), want);
      assert.equal(d.sub.deltaStats().numDeltaPayloads, 3);
      assert.equal(p.sub.deltaStats().numPublications, 0, 'no delta on the plain subscription');
    });

    it('positioning without recovery: deltas decoded', async () => {
      const channel = `dpos:${uniq('c')}`;
      const c = await connected(uniq('u'));
      const s = await subscribed(c, channel, { delta: 'fossil' });
      assert.equal(s.ctx.positioned, true);
      for (let v = 1; v <= 4; v++) await publish(channel, doc(v), { delta: true });
      await s.until(4);
      assert.deepEqual(s.got.map((x) => x.data), [1, 2, 3, 4].map((v) => doc(v)));
      assert.equal(s.sub.deltaStats().numDeltaPayloads, 3, JSON.stringify(s.sub.deltaStats()));
    });

    it('namespace without allowed_delta_types: delta not negotiated, plain payloads', async () => {
      const channel = `nodelta:${uniq('c')}`;
      const c = await connected(uniq('u'));
      const s = await subscribed(c, channel, { delta: 'fossil' });
      for (let v = 1; v <= 3; v++) await publish(channel, doc(v), { delta: true });
      await s.until(3);
      assert.deepEqual(s.got.map((x) => x.data), [1, 2, 3].map((v) => doc(v)));
      assert.equal(s.sub.deltaStats().numPublications, 0);
    });

    it('client publications in a delta_publish namespace, with publisher info', async () => {
      const channel = `dpub:${uniq('c')}`;
      const user = uniq('pub');
      const c = await connected(user);
      const s = await subscribed(c, channel, { delta: 'fossil' });
      for (let v = 1; v <= 4; v++) await withTimeout(s.sub.publish(enc(doc(v))), T, 'publish');
      await s.until(4);
      assert.deepEqual(s.got.map((x) => x.data), [1, 2, 3, 4].map((v) => doc(v)));
      assert.ok(s.got.every((x) => x.info && x.info.user === user), JSON.stringify(s.got.map((x) => x.info)));
      assert.equal(s.sub.deltaStats().numDeltaPayloads, 3, JSON.stringify(s.sub.deltaStats()));
    });

    it('non-ASCII payloads survive delta encoding', async () => {
      const channel = `delta:${uniq('c')}`;
      const c = await connected(uniq('u'));
      const s = await subscribed(c, channel, { delta: 'fossil' });
      const texts = ['Größe Ärger – 日本語テキスト 🚀', 'Größe Ärgör – 日本語テクスト 🚁', 'Grüße Ärger — 日本人テキスト 🚂',
        'Größe Ärger – 日本語テキスト 🚀'];
      const docs = texts.map((t, v) => doc(v, t));
      for (const d of docs) await publish(channel, d, { delta: true });
      await s.until(docs.length);
      assert.deepEqual(s.got.map((x) => x.data), docs);
      assert.deepEqual(s.errors, []);
    });
  });
}
