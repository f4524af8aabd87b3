// Channel state (issue 3) with the official centrifuge-js SDK against the real
// gyre binary, JSON and Protobuf builds: recovery after a disconnect, history
// with limit/since/reverse, positioning, presence and presence stats, join/leave
// (client-requested and forced), subscription tokens of a protected namespace
// with refresh through getToken, and fossil delta compression decoded by the SDK.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as jsonBuild from 'centrifuge';
import * as protobufBuild from 'centrifuge/build/protobuf';

import {
  startGyre, connToken, subToken, waitEvent, recordEvents, withTimeout, sleep, uniq,
} from '../harness.mjs';

const T = 5000; // per-await timeout (ms)

const builds = [
  {
    name: 'json',
    sdk: jsonBuild,
    dec: (data) => data,
  },
  {
    name: 'protobuf',
    sdk: protobufBuild,
    dec: (data) => {
      assert.ok(data instanceof Uint8Array, `protobuf payload must be bytes, got ${typeof data}`);
      return JSON.parse(new TextDecoder().decode(data));
    },
  },
];

const HISTORY = { history_size: 100, history_ttl: '300s' };

/** Namespaces of this suite (Centrifugo v6 keys). */
const NAMESPACES = [
  // Recovery for every subscriber.
  { name: 'rec', allow_subscribe_for_client: true, ...HISTORY, force_recovery: true },
  // History readable by subscribers; clients may ask for positioning.
  {
    name: 'hist', allow_subscribe_for_client: true, ...HISTORY,
    allow_history_for_subscriber: true, allow_positioning: true,
  },
  // No history at all.
  { name: 'nohist', allow_subscribe_for_client: true, allow_history_for_subscriber: true },
  // Presence + join/leave pushed only to subscribers asking for them.
  {
    name: 'pres', allow_subscribe_for_client: true, presence: true, join_leave: true,
    allow_presence_for_subscriber: true,
  },
  // Join/leave pushed to every subscriber.
  {
    name: 'fjl', allow_subscribe_for_client: true, presence: true, join_leave: true,
    force_push_join_leave: true,
  },
  // Protected: subscription token needed (no allow_subscribe_for_client).
  { name: 'prot', presence: true, allow_presence_for_subscriber: true },
  // Fossil delta compression over a recoverable stream.
  {
    name: 'delta', allow_subscribe_for_client: true, ...HISTORY, force_recovery: true,
    allowed_delta_types: ['fossil'],
  },
  // Same, with every publication delta-capable (no `delta: true` on publish needed).
  {
    name: 'deltapub', allow_subscribe_for_client: true, ...HISTORY, force_recovery: true,
    allowed_delta_types: ['fossil'], delta_publish: true,
  },
];

/** A JSON document of ~3 KB; versions differ in a few fields only. */
function bigDoc(version) {
  return {
    id: 'document-1',
    version,
    title: `Quarterly report, revision ${version}`,
    items: Array.from({ length: 40 }, (_, i) => ({
      idx: i,
      name: `line item number ${i}`,
      qty: i % 7,
      price: i * 10 + (i === version % 40 ? version : 0),
    })),
  };
}

for (const build of builds) {
  const { Centrifuge } = build.sdk;
  const { dec } = build;

  describe(`channel state, centrifuge-js ${build.name} build`, () => {
    let server;
    let clients = [];

    before(async () => {
      server = await startGyre({
        client: { expired_sub_close_delay: '1s', presence_update_interval: '1s' },
        channel: { namespaces: NAMESPACES },
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
      const ctx = await p;
      return { sub, ctx };
    }

    /** Collects decoded publications of `sub`; `until(n)` waits for n of them. */
    function collect(sub) {
      const got = [];
      const waiters = [];
      sub.on('publication', (ctx) => {
        got.push({ offset: ctx.offset, data: dec(ctx.data) });
        for (const w of [...waiters]) {
          if (got.length >= w.n) { waiters.splice(waiters.indexOf(w), 1); w.resolve(); }
        }
      });
      return {
        got,
        until(n, ms = T) {
          if (got.length >= n) return Promise.resolve();
          return withTimeout(new Promise((resolve) => waiters.push({ n, resolve })), ms,
            `${n} publications (have ${got.length}: ${JSON.stringify(got)})`);
        },
      };
    }

    async function publishN(channel, datas, extra = {}) {
      const results = [];
      for (const data of datas) results.push(await server.apiOk('publish', { channel, data, ...extra }));
      return results;
    }

    // ------------------------------------------------------------- recovery

    it('recovers exactly the N publications missed while disconnected', async () => {
      const channel = `rec:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub, ctx: first } = await subscribed(c, channel);
      assert.equal(first.recoverable, true, JSON.stringify(first));
      assert.equal(first.wasRecovering, false);
      assert.equal(first.streamPosition.offset, 0);
      assert.match(first.streamPosition.epoch, /^.+$/);
      const epoch = first.streamPosition.epoch;

      const pubs = collect(sub);
      const live = await publishN(channel, [{ n: 1 }, { n: 2 }]);
      assert.deepEqual(live.map((r) => [r.offset, r.epoch]), [[1, epoch], [2, epoch]]);
      await pubs.until(2);

      const dP = waitEvent(c, 'disconnected', T);
      c.disconnect();
      await dP;
      assert.equal(sub.state, 'subscribing', 'the subscription waits for the next connect');

      const missed = await publishN(channel, [3, 4, 5, 6, 7].map((n) => ({ n, text: `missed ${n}` })));
      assert.deepEqual(missed.map((r) => r.offset), [3, 4, 5, 6, 7]);

      const sP = waitEvent(sub, 'subscribed', T);
      c.connect();
      const ctx = await sP;
      assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      assert.equal(ctx.hasRecoveredPublications, true);
      assert.equal(ctx.streamPosition.epoch, epoch);
      await pubs.until(7);

      // One live publication after the recovery: no duplicate of the recovered ones.
      await publishN(channel, [{ n: 8 }]);
      await pubs.until(8);
      await sleep(300);
      assert.deepEqual(pubs.got, [
        { offset: 1, data: { n: 1 } },
        { offset: 2, data: { n: 2 } },
        ...[3, 4, 5, 6, 7].map((n) => ({ offset: n, data: { n, text: `missed ${n}` } })),
        { offset: 8, data: { n: 8 } },
      ]);
    });

    it('recovers after the transport drops (SDK reconnects by itself)', async () => {
      const channel = `rec:${uniq('c')}`;
      // A long reconnect delay gives a window to publish while the client is away.
      const { c } = await connected(uniq('u'), { minReconnectDelay: 1500, maxReconnectDelay: 1500 });
      const { sub } = await subscribed(c, channel);
      const pubs = collect(sub);
      await publishN(channel, [{ n: 1 }]);
      await pubs.until(1);

      const connectingP = waitEvent(c, 'connecting', T);
      const subscribedP = waitEvent(sub, 'subscribed', T * 2);
      c._transport.close(); // the socket goes away without a disconnect frame
      await connectingP;
      await publishN(channel, [{ n: 2 }, { n: 3 }, { n: 4 }]);
      const ctx = await subscribedP;
      assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      await pubs.until(4);
      await sleep(300);
      assert.deepEqual(pubs.got.map((p) => [p.offset, p.data.n]), [[1, 1], [2, 2], [3, 3], [4, 4]]);
    });

    // -------------------------------------------------------------- history

    it('history with limit, since and reverse', async () => {
      const channel = `hist:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub } = await subscribed(c, channel);
      const res = await publishN(channel, Array.from({ length: 10 }, (_, i) => ({ i: i + 1 })));
      const { epoch } = res[0];
      assert.match(epoch, /^.+$/);
      assert.deepEqual(res.map((r) => r.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const view = (h) => h.publications.map((p) => [p.offset, dec(p.data).i]);

      // Default (limit 0): only the stream position.
      const top = await withTimeout(sub.history(), T, 'history()');
      assert.deepEqual([top.publications.length, top.offset, top.epoch], [0, 10, epoch]);

      const first3 = await withTimeout(sub.history({ limit: 3 }), T, 'history limit 3');
      assert.deepEqual(view(first3), [[1, 1], [2, 2], [3, 3]]);
      assert.deepEqual([first3.offset, first3.epoch], [10, epoch]);

      const last3 = await withTimeout(sub.history({ limit: 3, reverse: true }), T, 'history reverse');
      assert.deepEqual(view(last3), [[10, 10], [9, 9], [8, 8]]);

      const after4 = await withTimeout(sub.history({ limit: 3, since: { offset: 4, epoch } }), T, 'since');
      assert.deepEqual(view(after4), [[5, 5], [6, 6], [7, 7]]);

      const before7 = await withTimeout(
        sub.history({ limit: 2, since: { offset: 7, epoch }, reverse: true }), T, 'since reverse');
      assert.deepEqual(view(before7), [[6, 6], [5, 5]]);

      const all = await withTimeout(sub.history({ limit: -1 }), T, 'history limit -1');
      assert.deepEqual(view(all).map((x) => x[0]), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);

      const tail = await withTimeout(sub.history({ limit: 100, since: { offset: 8, epoch } }), T, 'tail');
      assert.deepEqual(view(tail), [[9, 9], [10, 10]]);

      // A position from another epoch is refused with 112 (unrecoverable position).
      const err = await withTimeout(
        sub.history({ limit: 3, since: { offset: 4, epoch: 'notTheEpoch' } }).then(
          (v) => ({ resolved: v }), (e) => e),
        T, 'history with a wrong epoch');
      assert.equal(err.code, 112, JSON.stringify(err));
    });

    it('history on a namespace without history is refused with 108', async () => {
      const channel = `nohist:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub } = await subscribed(c, channel);
      const err = await withTimeout(sub.history({ limit: 3 }).then((v) => ({ resolved: v }), (e) => e),
        T, 'history without history');
      assert.equal(err.code, 108, JSON.stringify(err));
      assert.equal(c.state, 'connected');
    });

    it('positioned subscription: position of the stream in the subscribe result', async () => {
      const channel = `hist:${uniq('c')}`;
      await publishN(channel, [{ a: 1 }, { a: 2 }, { a: 3 }]);
      const { c } = await connected(uniq('u'));
      const { ctx } = await subscribed(c, channel, { positioned: true });
      assert.equal(ctx.positioned, true, JSON.stringify(ctx));
      assert.equal(ctx.recoverable, false);
      assert.equal(ctx.streamPosition.offset, 3);
      const h = await server.apiOk('history', { channel, limit: 0 });
      assert.equal(ctx.streamPosition.epoch, h.epoch);
    });

    // ------------------------------------------------------------- presence

    it('presence and presence_stats with two clients', async () => {
      const channel = `pres:${uniq('c')}`;
      const userA = uniq('a');
      const userB = uniq('b');
      const { c: a, ctx: actx } = await connected(userA, { token: connToken(userA, { info: { name: 'alice' } }) });
      const { c: b, ctx: bctx } = await connected(userB);
      const { sub: subA } = await subscribed(a, channel);
      const { sub: subB } = await subscribed(b, channel);

      const p = await withTimeout(subA.presence(), T, 'presence');
      assert.deepEqual(Object.keys(p.clients).sort(), [actx.client, bctx.client].sort());
      assert.equal(p.clients[actx.client].user, userA);
      assert.equal(p.clients[actx.client].client, actx.client);
      assert.deepEqual(dec(p.clients[actx.client].connInfo), { name: 'alice' });
      assert.equal(p.clients[bctx.client].user, userB);
      // No info: absent in JSON; protobufjs shows an absent bytes field as empty bytes.
      const noInfo = p.clients[bctx.client].connInfo;
      assert.ok(noInfo === undefined || noInfo.length === 0, `connInfo: ${JSON.stringify(noInfo)}`);

      const stats = await withTimeout(subB.presenceStats(), T, 'presenceStats');
      assert.deepEqual(stats, { numClients: 2, numUsers: 2 });

      // A second connection of user A: 3 clients, still 2 users.
      const { c: a2 } = await connected(userA);
      await subscribed(a2, channel);
      assert.deepEqual(await withTimeout(subB.presenceStats(), T, 'stats'), { numClients: 3, numUsers: 2 });

      // B leaves: gone from presence at once.
      subB.unsubscribe();
      await withTimeout(b.rpc('ping', build.name === 'json' ? {} : new Uint8Array()), T, 'round trip');
      assert.deepEqual(await withTimeout(subA.presenceStats(), T, 'stats'), { numClients: 2, numUsers: 1 });
      const p2 = await withTimeout(subA.presence(), T, 'presence');
      assert.equal(Object.values(p2.clients).every((ci) => ci.user === userA), true, JSON.stringify(p2));
    });

    it('presence without subscription is refused with 103; without presence with 108', async () => {
      const { c } = await connected(uniq('u'));
      const err = await withTimeout(c.presence(`pres:${uniq('c')}`).then((v) => ({ resolved: v }), (e) => e),
        T, 'presence');
      assert.equal(err.code, 103, JSON.stringify(err));
      const channel = `hist:${uniq('c')}`;
      const { sub } = await subscribed(c, channel);
      const err2 = await withTimeout(sub.presenceStats().then((v) => ({ resolved: v }), (e) => e),
        T, 'presenceStats');
      assert.equal(err2.code, 108, JSON.stringify(err2));
    });

    // ----------------------------------------------------------- join/leave

    it('join and leave events for a subscriber asking joinLeave', async () => {
      const channel = `pres:${uniq('c')}`;
      const userA = uniq('a');
      const userB = uniq('b');
      const { c: a } = await connected(userA);
      const { sub: subA } = await subscribed(a, channel, { joinLeave: true });
      const log = recordEvents(subA, ['join', 'leave']);

      const { c: b, ctx: bctx } = await connected(userB, { token: connToken(userB, { info: { role: 'b' } }) });
      const joinP = waitEvent(subA, 'join', T, (ctx) => ctx.info.user === userB);
      const { sub: subB } = await subscribed(b, channel); // no joinLeave: B gets none
      const bLog = recordEvents(subB, ['join', 'leave']);
      const join = await joinP;
      assert.equal(join.channel, channel);
      assert.equal(join.info.client, bctx.client);
      assert.deepEqual(dec(join.info.connInfo), { role: 'b' });

      // A third client: A sees it, B (no joinLeave) does not.
      const userC = uniq('c');
      const { c: cc, ctx: cctx } = await connected(userC);
      const joinCP = waitEvent(subA, 'join', T, (ctx) => ctx.info.user === userC);
      const { sub: subC } = await subscribed(cc, channel);
      await joinCP;

      const leaveBP = waitEvent(subA, 'leave', T, (ctx) => ctx.info.user === userB);
      subB.unsubscribe();
      const leave = await leaveBP;
      assert.equal(leave.info.client, bctx.client);

      const leaveCP = waitEvent(subA, 'leave', T, (ctx) => ctx.info.user === userC);
      cc.disconnect(); // leave on disconnect too
      assert.equal((await leaveCP).info.client, cctx.client);
      void subC;

      await sleep(200);
      const others = log.filter((e) => e.ctx.info.user !== userA)
        .map((e) => `${e.event}:${e.ctx.info.user}`);
      assert.deepEqual(others, [`join:${userB}`, `join:${userC}`, `leave:${userB}`, `leave:${userC}`]);
      assert.deepEqual(bLog.map((e) => e.event), [], 'no join/leave for a subscriber without joinLeave');
    });

    it('force_push_join_leave: join/leave without asking', async () => {
      const channel = `fjl:${uniq('c')}`;
      const userA = uniq('a');
      const userB = uniq('b');
      const { c: a } = await connected(userA);
      const { sub: subA } = await subscribed(a, channel); // no joinLeave option
      const { c: b, ctx: bctx } = await connected(userB);
      const joinP = waitEvent(subA, 'join', T, (ctx) => ctx.info.user === userB);
      const { sub: subB } = await subscribed(b, channel);
      assert.equal((await joinP).info.client, bctx.client);
      const leaveP = waitEvent(subA, 'leave', T, (ctx) => ctx.info.user === userB);
      subB.unsubscribe();
      assert.equal((await leaveP).info.client, bctx.client);
    });

    // ---------------------------------------------------- subscription tokens

    it('protected namespace: 103 without token, token with refresh through getToken', async () => {
      const user = uniq('u');
      const { c, ctx: cctx } = await connected(user);
      const channel = `prot:${uniq('c')}`;
      const denied = c.newSubscription(channel);
      denied.on('error', () => {});
      const uP = waitEvent(denied, 'unsubscribed', T);
      denied.subscribe();
      assert.equal((await uP).code, 103);
      c.removeSubscription(denied);

      let calls = 0;
      const { sub } = await subscribed(c, channel, {
        token: subToken(user, channel, { ttl: 3, info: { seat: 1 } }),
        getToken: async (ctx) => {
          calls += 1;
          assert.equal(ctx.channel, channel);
          return subToken(user, channel, { ttl: 3600, info: { seat: 2 } });
        },
      });
      // Channel info from the token claim shows in presence.
      const p = await withTimeout(sub.presence(), T, 'presence');
      assert.deepEqual(dec(p.clients[cctx.client].chanInfo), { seat: 1 });

      const log = recordEvents(sub, ['subscribing', 'unsubscribed', 'error']);
      const start = Date.now();
      while (calls === 0 && Date.now() - start < 8000) await sleep(100);
      assert.equal(calls, 1, 'getToken called once to refresh (sub_refresh)');
      // Past exp (3s) + expired_sub_close_delay (1s): not unsubscribed.
      await sleep(3000);
      assert.deepEqual(log.map((e) => e.event), []);
      assert.equal(sub.state, 'subscribed');
      const pubs = collect(sub);
      await server.apiOk('publish', { channel, data: { after: 'refresh' } });
      await pubs.until(1);
      assert.deepEqual(pubs.got[0].data, { after: 'refresh' });
    });

    it('protected namespace: a token for another channel is refused', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = `prot:${uniq('c')}`;
      const sub = c.newSubscription(channel, { token: subToken(user, `prot:${uniq('other')}`) });
      sub.on('error', () => {});
      const dP = waitEvent(c, 'disconnected', T).then((ctx) => ({ disconnected: ctx }));
      const uP = waitEvent(sub, 'unsubscribed', T).then((ctx) => ({ unsubscribed: ctx }));
      sub.subscribe();
      const outcome = await Promise.race([dP, uP]);
      // auth-and-channels.md: channel mismatch → disconnect 3500 (terminal).
      assert.deepEqual(outcome.disconnected && outcome.disconnected.code, 3500, JSON.stringify(outcome));
      dP.catch(() => {}); uP.catch(() => {});
    });

    // ----------------------------------------------------------------- delta

    for (const mode of ['api delta flag', 'namespace delta_publish']) {
      it(`fossil delta compression decoded into full payloads (${mode})`, async () => {
        const ns = mode === 'api delta flag' ? 'delta' : 'deltapub';
        const extra = mode === 'api delta flag' ? { delta: true } : {};
        const channel = `${ns}:${uniq('c')}`;
        const { c } = await connected(uniq('u'));
        const { sub } = await subscribed(c, channel, { delta: 'fossil' });
        assert.equal(sub._delta_negotiated, true, 'subscribe result delta: true');
        const pubs = collect(sub);
        const docs = [1, 2, 3, 4, 5, 6].map(bigDoc);
        await publishN(channel, docs, extra);
        await pubs.until(6);
        assert.deepEqual(pubs.got.map((p) => p.data), docs);
        assert.deepEqual(pubs.got.map((p) => p.offset), [1, 2, 3, 4, 5, 6]);
        const stats = sub.deltaStats();
        assert.equal(stats.numPublications, 6, JSON.stringify(stats));
        assert.equal(stats.numFullPayloads, 1, `first full, then deltas: ${JSON.stringify(stats)}`);
        assert.equal(stats.numDeltaPayloads, 5, JSON.stringify(stats));
        assert.ok(stats.bytesReceived < stats.bytesDecoded / 3, JSON.stringify(stats));

        // Recovery with delta: missed publications come back decoded, then live ones.
        const dP = waitEvent(c, 'disconnected', T);
        c.disconnect();
        await dP;
        const missed = [7, 8, 9].map(bigDoc);
        await publishN(channel, missed, extra);
        const sP = waitEvent(sub, 'subscribed', T);
        c.connect();
        const ctx = await sP;
        assert.equal(ctx.recovered, true, JSON.stringify(ctx));
        await publishN(channel, [bigDoc(10)], extra);
        await pubs.until(10);
        assert.deepEqual(pubs.got.map((p) => p.data), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map(bigDoc));
        const stats2 = sub.deltaStats();
        assert.equal(stats2.numPublications, 10, JSON.stringify(stats2));
        // After the resubscribe: first recovered publication full, the rest deltas.
        assert.equal(stats2.numFullPayloads, 2, JSON.stringify(stats2));
        assert.equal(stats2.numDeltaPayloads, 8, JSON.stringify(stats2));
      });
    }

    it('delta not negotiated without delta option: plain payloads', async () => {
      const channel = `delta:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub } = await subscribed(c, channel);
      assert.equal(sub._delta_negotiated, false);
      const pubs = collect(sub);
      await publishN(channel, [bigDoc(1), bigDoc(2)], { delta: true });
      await pubs.until(2);
      assert.deepEqual(pubs.got.map((p) => p.data), [bigDoc(1), bigDoc(2)]);
    });
  });
}
