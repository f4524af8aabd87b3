// Channel state edge cases (issue 3) with centrifuge-js, JSON and Protobuf builds:
// recovery while publications keep coming, loss beyond the history size reported
// as recovered:false, history_meta_ttl expiry (new epoch), cache recovery mode,
// `since` bootstrap (offset from the future), recovery of server-side subscriptions
// through connect.subs, tags filter, history bad input, sub_refresh with a token for
// another channel.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as jsonBuild from 'centrifuge';
import * as protobufBuild from 'centrifuge/build/protobuf';

import {
  startGyre, connToken, subToken, waitEvent, withTimeout, sleep, uniq,
} from '../harness.mjs';

const T = 5000;
const HISTORY = { history_size: 100, history_ttl: '300s' };

const NAMESPACES = [
  { name: 'rec', allow_subscribe_for_client: true, ...HISTORY, force_recovery: true },
  { name: 'recsmall', allow_subscribe_for_client: true, history_size: 5, history_ttl: '300s', force_recovery: true },
  {
    name: 'meta', allow_subscribe_for_client: true, history_size: 10, history_ttl: '1s',
    history_meta_ttl: '2s', force_recovery: true,
  },
  {
    name: 'cache', allow_subscribe_for_client: true, ...HISTORY, force_recovery: true,
    force_recovery_mode: 'cache',
  },
  { name: 'hist', allow_subscribe_for_client: true, ...HISTORY, allow_history_for_subscriber: true },
  { name: 'srv', ...HISTORY, force_recovery: true },
  { name: 'tf', allow_subscribe_for_client: true, allow_tags_filter: true },
  { name: 'notf', allow_subscribe_for_client: true },
  { name: 'prot' },
  { name: 'protrec', ...HISTORY },
  {
    name: 'fjl', allow_subscribe_for_client: true, presence: true, join_leave: true,
    force_push_join_leave: true, allow_presence_for_subscriber: true,
  },
];

for (const build of [
  { name: 'json', sdk: jsonBuild, dec: (d) => d },
  { name: 'protobuf', sdk: protobufBuild, dec: (d) => JSON.parse(new TextDecoder().decode(d)) },
]) {
  const { Centrifuge } = build.sdk;
  const { dec } = build;

  describe(`channel state edge cases, centrifuge-js ${build.name} build`, () => {
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

    async function connected(user, opts = {}) {
      const c = new Centrifuge(server.wsUrl, {
        websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 500, timeout: T,
        token: connToken(user), ...opts,
      });
      c.on('error', () => {});
      clients.push(c);
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
      return { sub, ctx: await p };
    }

    function collect(emitter, filter = () => true) {
      const got = [];
      emitter.on('publication', (ctx) => { if (filter(ctx)) got.push([ctx.offset, dec(ctx.data)]); });
      return {
        got,
        async until(n, ms = T) {
          const start = Date.now();
          while (got.length < n) {
            if (Date.now() - start > ms) throw new Error(`timeout: ${n} publications, have ${JSON.stringify(got)}`);
            await sleep(10);
          }
        },
      };
    }

    const publish = (channel, data, extra = {}) => server.apiOk('publish', { channel, data, ...extra });

    async function reconnect(c, sub, during) {
      const dP = waitEvent(c, 'disconnected', T);
      c.disconnect();
      await dP;
      await during();
      const sP = sub ? waitEvent(sub, 'subscribed', T) : waitEvent(c, 'connected', T);
      c.connect();
      return sP;
    }

    it('recovery while publications keep coming: no gap, no duplicate, in order', async () => {
      const channel = `rec:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub } = await subscribed(c, channel);
      const pubs = collect(sub);
      // Three concurrent publishers: offsets are one sequence, each publisher's own order kept.
      let stop = false;
      const sent = [[], [], []];
      const publishers = sent.map((mine, p) => (async () => {
        for (let k = 1; !stop; k++) {
          const r = await publish(channel, { p, k });
          mine.push(r.offset);
        }
      })());
      const outcomes = [];
      try {
        for (let round = 0; round < 8; round++) {
          await sleep(30);
          const ctx = await reconnect(c, sub, () => sleep(20));
          outcomes.push([ctx.wasRecovering, ctx.recovered]);
        }
      } finally {
        stop = true;
        await Promise.all(publishers);
      }
      const total = sent.reduce((a, m) => a + m.length, 0);
      await pubs.until(total);
      await sleep(200);
      assert.deepEqual(outcomes, Array(8).fill([true, true]));
      assert.ok(total >= 30, `the publishers kept publishing during the reconnects (${total})`);
      if (process.env.GYRE_TEST_DEBUG) console.log(`published ${total}`);
      assert.deepEqual(pubs.got.map((x) => x[0]), Array.from({ length: total }, (_, i) => i + 1),
        'every offset once, in order');
      for (let p = 0; p < 3; p++) {
        const mine = pubs.got.filter((x) => x[1].p === p);
        assert.deepEqual(mine.map((x) => x[1].k), Array.from({ length: sent[p].length }, (_, i) => i + 1));
        assert.deepEqual(mine.map((x) => x[0]), sent[p], 'delivered at the offsets the API returned');
      }
    });

    it('more missed than the history keeps: recovered false, nothing delivered', async () => {
      const channel = `recsmall:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub } = await subscribed(c, channel);
      const pubs = collect(sub);
      await publish(channel, { n: 1 });
      await pubs.until(1);
      const ctx = await reconnect(c, sub, async () => {
        for (let n = 2; n <= 9; n++) await publish(channel, { n }); // 8 missed, 5 kept
      });
      assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
      assert.equal(ctx.recovered, false, JSON.stringify(ctx));
      assert.equal(ctx.streamPosition.offset, 9, 'position = current top');
      await publish(channel, { n: 10 });
      await pubs.until(2);
      await sleep(200);
      assert.deepEqual(pubs.got, [[1, { n: 1 }], [10, { n: 10 }]]);
    });

    it('history_meta_ttl expiry: new epoch, recovered false', async () => {
      const channel = `meta:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub, ctx: first } = await subscribed(c, channel);
      const pubs = collect(sub);
      await publish(channel, { n: 1 });
      await pubs.until(1);
      const ctx = await reconnect(c, sub, () => sleep(3500));
      assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
      assert.equal(ctx.recovered, false, JSON.stringify(ctx));
      assert.notEqual(ctx.streamPosition.epoch, first.streamPosition.epoch);
      assert.equal(ctx.streamPosition.offset, 0);
    });

    it('history_ttl expiry alone keeps the epoch: missed items gone → recovered false', async () => {
      const channel = `meta:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub, ctx: first } = await subscribed(c, channel);
      const pubs = collect(sub);
      await publish(channel, { n: 1 });
      await pubs.until(1);
      const ctx = await reconnect(c, sub, async () => {
        await publish(channel, { n: 2 });
        await sleep(1300); // n:2 expires (history_ttl 1s), meta (2s) kept alive
        await publish(channel, { n: 3 });
      });
      assert.equal(ctx.streamPosition.epoch, first.streamPosition.epoch, JSON.stringify(ctx));
      assert.equal(ctx.recovered, false, `publication 2 is lost: ${JSON.stringify(ctx)}`);
      await sleep(200);
      assert.deepEqual(pubs.got, [[1, { n: 1 }]]);
    });

    it('cache recovery mode: only the latest publication, recovered true', async () => {
      const channel = `cache:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub } = await subscribed(c, channel);
      const pubs = collect(sub);
      await publish(channel, { n: 1 });
      await pubs.until(1);
      const ctx = await reconnect(c, sub, async () => {
        for (let n = 2; n <= 4; n++) await publish(channel, { n });
      });
      assert.equal(ctx.wasRecovering, true, JSON.stringify(ctx));
      assert.equal(ctx.recovered, true, JSON.stringify(ctx));
      await pubs.until(2);
      // Already at the top: nothing delivered on the next recovery.
      const ctx2 = await reconnect(c, sub, async () => {});
      assert.equal(ctx2.recovered, true, JSON.stringify(ctx2));
      await sleep(200);
      assert.deepEqual(pubs.got, [[1, { n: 1 }], [4, { n: 4 }]]);
    });

    it('since option: recovery bootstrap from a known position; an offset from the future', async () => {
      const channel = `rec:${uniq('c')}`;
      const r = [];
      for (let n = 1; n <= 4; n++) r.push(await publish(channel, { n }));
      const { epoch } = r[0];
      const { c } = await connected(uniq('u'));
      const sub = c.newSubscription(channel, { since: { offset: 2, epoch } });
      sub.on('error', () => {});
      const pubs = collect(sub);
      const p = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      const ctx = await p;
      assert.deepEqual([ctx.wasRecovering, ctx.recovered], [true, true], JSON.stringify(ctx));
      await pubs.until(2);
      await sleep(100);
      assert.deepEqual(pubs.got, [[3, { n: 3 }], [4, { n: 4 }]]);

      const channel2 = `rec:${uniq('c')}`;
      const r2 = await publish(channel2, { n: 1 });
      const sub2 = c.newSubscription(channel2, { since: { offset: 100, epoch: r2.epoch } });
      sub2.on('error', () => {});
      const pubs2 = collect(sub2);
      const p2 = waitEvent(sub2, 'subscribed', T);
      sub2.subscribe();
      const ctx2 = await p2;
      assert.equal(ctx2.wasRecovering, true, JSON.stringify(ctx2));
      assert.equal(ctx2.recovered, false, `offset 100 > top 1 is not recoverable: ${JSON.stringify(ctx2)}`);
      assert.equal(ctx2.streamPosition.offset, 1);
      await sleep(100);
      assert.deepEqual(pubs2.got, []);
    });

    it('server-side subscription recovers through connect.subs', async () => {
      const user = uniq('u');
      const channel = `srv:${uniq('c')}`;
      const { c } = await connected(user, { token: connToken(user, { channels: [channel] }) });
      const pubs = collect(c, (ctx) => ctx.channel === channel);
      const subs = [];
      c.on('subscribed', (ctx) => { if (ctx.channel === channel) subs.push(ctx); });
      await publish(channel, { n: 1 });
      await pubs.until(1);
      const dP = waitEvent(c, 'disconnected', T);
      c.disconnect();
      await dP;
      for (let n = 2; n <= 4; n++) await publish(channel, { n });
      const sP = waitEvent(c, 'subscribed', T, (ctx) => ctx.channel === channel);
      c.connect();
      const ctx = await sP;
      assert.deepEqual([ctx.wasRecovering, ctx.recovered], [true, true], JSON.stringify(ctx));
      await pubs.until(4);
      await sleep(200);
      assert.deepEqual(pubs.got, [1, 2, 3, 4].map((n) => [n, { n }]));
    });

    it('tags filter: only matching publications are delivered', async () => {
      const channel = `tf:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub } = await subscribed(c, channel, {
        tagsFilter: { op: 'or', nodes: [{ key: 'ticker', cmp: 'eq', val: 'BTC' }, { key: 'price', cmp: 'gt', val: '100' }] },
      });
      const pubs = collect(sub);
      await publish(channel, { n: 1 }, { tags: { ticker: 'BTC', price: '5' } });
      await publish(channel, { n: 2 }, { tags: { ticker: 'ETH', price: '50' } });
      await publish(channel, { n: 3 });
      await publish(channel, { n: 4 }, { tags: { ticker: 'SOL', price: '500' } });
      await pubs.until(2);
      await sleep(200);
      assert.deepEqual(pubs.got.map((p) => p[1].n), [1, 4]);

      const denied = c.newSubscription(`notf:${uniq('c')}`, { tagsFilter: { key: 'a', cmp: 'eq', val: 'b' } });
      denied.on('error', () => {});
      const uP = waitEvent(denied, 'unsubscribed', T);
      denied.subscribe();
      assert.equal((await uP).code, 107, 'tags filter without allow_tags_filter → 107');
    });

    it('history bad input: reverse from offset 0 → 107; limit above 300 capped', async () => {
      const channel = `hist:${uniq('c')}`;
      const { c } = await connected(uniq('u'));
      const { sub } = await subscribed(c, channel);
      const r = await publish(channel, { n: 1 });
      const err = await withTimeout(
        sub.history({ limit: 5, reverse: true, since: { offset: 0, epoch: r.epoch } })
          .then((v) => ({ resolved: v }), (e) => e), T, 'history');
      assert.equal(err.code, 107, JSON.stringify(err));
      const res = await withTimeout(sub.history({ limit: 1000 }), T, 'history limit 1000');
      assert.deepEqual(res.publications.map((p) => p.offset), [1]);
    });

    it('sub_refresh with a token for another channel → disconnect 3500', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = `prot:${uniq('c')}`;
      const { sub } = await subscribed(c, channel, {
        token: subToken(user, channel, { ttl: 2 }),
        getToken: async () => subToken(user, `prot:${uniq('other')}`, { ttl: 3600 }),
      });
      void sub;
      const ctx = await waitEvent(c, 'disconnected', 8000);
      assert.equal(ctx.code, 3500, JSON.stringify(ctx));
    });

    it('subscription token claims: data in the subscribe result, override force_recovery', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = `protrec:${uniq('c')}`;
      const { sub, ctx } = await subscribed(c, channel, {
        token: subToken(user, channel, {
          data: { welcome: 'aboard' },
          override: { force_recovery: { value: true } },
        }),
      });
      assert.deepEqual(dec(ctx.data), { welcome: 'aboard' });
      assert.equal(ctx.recoverable, true, `override force_recovery: ${JSON.stringify(ctx)}`);
      const pubs = collect(sub);
      await publish(channel, { n: 1 });
      await pubs.until(1);
      const ctx2 = await reconnect(c, sub, async () => { await publish(channel, { n: 2 }); });
      assert.deepEqual([ctx2.wasRecovering, ctx2.recovered], [true, true], JSON.stringify(ctx2));
      await pubs.until(2);
      assert.deepEqual(pubs.got, [[1, { n: 1 }], [2, { n: 2 }]]);
    });

    it('forged subscription token → 103; expired one without getToken → 109', async () => {
      const user = uniq('u');
      const { c } = await connected(user);
      const channel = `prot:${uniq('c')}`;
      const forged = c.newSubscription(channel, { token: subToken(user, channel, { secret: 'not-the-secret-at-all-0000' }) });
      forged.on('error', () => {});
      const uP = waitEvent(forged, 'unsubscribed', T);
      forged.subscribe();
      assert.equal((await uP).code, 103);
      c.removeSubscription(forged);
      assert.equal(c.state, 'connected');

      const expired = c.newSubscription(channel, { token: subToken(user, channel, { ttl: -30 }) });
      const errors = [];
      expired.on('error', (e) => errors.push(e));
      const eP = waitEvent(expired, 'error', T);
      expired.subscribe();
      const e = await eP;
      // The SDK turns the server's 109 into a configuration error (code 12) when
      // there is no getToken (centrifuge-js _subscribeError: err.code === 109).
      assert.equal(e.type, 'configuration', JSON.stringify(errors));
      assert.match(e.error.message, /subscription token expired/);
    });

    it('a connection dropped without a close frame leaves presence (leave pushed)', async () => {
      const channel = `fjl:${uniq('c')}`;
      const userA = uniq('a');
      const userB = uniq('b');
      const { c: a } = await connected(userA);
      const { sub: subA } = await subscribed(a, channel);
      const { c: b, ctx: bctx } = await connected(userB, { minReconnectDelay: 60000, maxReconnectDelay: 60000 });
      const joinP = waitEvent(subA, 'join', T, (ctx) => ctx.info.user === userB);
      await subscribed(b, channel);
      await joinP;
      const leaveP = waitEvent(subA, 'leave', T, (ctx) => ctx.info.user === userB);
      b._transport._transport.terminate(); // ws: destroy the socket, no close frame
      assert.equal((await leaveP).info.client, bctx.client);
      const stats = await withTimeout(subA.presenceStats(), T, 'presenceStats');
      assert.deepEqual(stats, { numClients: 1, numUsers: 1 });
    });

    it('server-side subscription: join/leave as client-level events', async () => {
      const channel = `fjl:${uniq('c')}`;
      const userA = uniq('a');
      const userB = uniq('b');
      const { c: a } = await connected(userA, { token: connToken(userA, { channels: [channel] }) });
      const joins = [];
      const leaves = [];
      a.on('join', (ctx) => { if (ctx.channel === channel) joins.push(ctx.info.user); });
      a.on('leave', (ctx) => { if (ctx.channel === channel) leaves.push(ctx.info.user); });
      const { c: b } = await connected(userB);
      const jP = waitEvent(a, 'join', T, (ctx) => ctx.info.user === userB);
      const { sub: subB } = await subscribed(b, channel);
      await jP;
      const lP = waitEvent(a, 'leave', T, (ctx) => ctx.info.user === userB);
      subB.unsubscribe();
      await lP;
      assert.deepEqual(joins.filter((u) => u !== userA), [userB]);
      assert.deepEqual(leaves, [userB]);
      const p = await withTimeout(a.presence(channel), T, 'presence via server-side sub');
      assert.deepEqual(Object.values(p.clients).map((ci) => ci.user), [userA]);
    });
  });
}
