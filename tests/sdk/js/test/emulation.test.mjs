// centrifuge-js (npm `centrifuge` 5.x) over Gyre's bidirectional emulation:
// HTTP-streaming (JSON and Protobuf builds) and SSE (JSON), forced with the
// SDK's transport list, commands going through POST /emulation. In Node the
// SDK uses the global fetch/ReadableStream; SSE needs an EventSource, taken
// from the npm `eventsource` package.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import EventSource from 'eventsource';
import * as jsonBuild from 'centrifuge';
import * as protobufBuild from 'centrifuge/build/protobuf';

import { startGyre, connToken, waitEvent, withTimeout, sleep, uniq } from '../harness.mjs';

const T = 8000;

const variants = [
  { name: 'http_stream json', transport: 'http_stream', sdk: jsonBuild, enc: (o) => o, dec: (d) => d },
  {
    name: 'http_stream protobuf',
    transport: 'http_stream',
    sdk: protobufBuild,
    enc: (o) => new TextEncoder().encode(JSON.stringify(o)),
    dec: (d) => JSON.parse(new TextDecoder().decode(d)),
  },
  { name: 'sse json', transport: 'sse', sdk: jsonBuild, enc: (o) => o, dec: (d) => d },
];

describe('centrifuge-js over emulation transports', () => {
  let server;
  let clients = [];

  before(async () => {
    server = await startGyre({
      http_stream: { enabled: true },
      sse: { enabled: true },
      channel: {
        namespaces: [
          {
            name: 'chat',
            allow_subscribe_for_client: true,
            allow_publish_for_subscriber: true,
            presence: true,
            allow_presence_for_subscriber: true,
            history_size: 50,
            history_ttl: '300s',
            force_recovery: true,
          },
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

  for (const v of variants) {
    describe(v.name, () => {
      function newClient(user) {
        const c = new v.sdk.Centrifuge(
          [{ transport: v.transport, endpoint: `${server.httpUrl}/connection/${v.transport}` }],
          {
            token: connToken(user),
            emulationEndpoint: `${server.httpUrl}/emulation`,
            eventsource: EventSource,
            minReconnectDelay: 100,
            maxReconnectDelay: 500,
            timeout: T,
          },
        );
        c.on('error', () => {});
        clients.push(c);
        return c;
      }

      async function connected(user) {
        const c = newClient(user);
        const p = waitEvent(c, 'connected', T);
        c.connect();
        return { c, ctx: await p };
      }

      async function subscribed(c, channel) {
        const sub = c.newSubscription(channel);
        sub.on('error', () => {});
        const p = waitEvent(sub, 'subscribed', T);
        sub.subscribe();
        return { sub, ctx: await p };
      }

      it('connects over the forced transport', async () => {
        const { c, ctx } = await connected(uniq('u'));
        assert.equal(ctx.transport, v.transport);
        assert.equal(c.state, 'connected');
      });

      it('subscribes and receives a publication sent through the server API', async () => {
        const { c } = await connected(uniq('u'));
        const ch = `chat:${uniq('c')}`;
        const { sub } = await subscribed(c, ch);
        const got = waitEvent(sub, 'publication', T);
        await server.apiOk('publish', { channel: ch, data: { text: 'from api' } });
        const ctx = await got;
        assert.deepEqual(v.dec(ctx.data), { text: 'from api' });
      });

      it('publishes from the client and sees presence', async () => {
        const user = uniq('u');
        const { c } = await connected(user);
        const ch = `chat:${uniq('c')}`;
        const { sub } = await subscribed(c, ch);
        const got = waitEvent(sub, 'publication', T);
        await withTimeout(sub.publish(v.enc({ text: 'mine' })), T, 'client publish');
        const ctx = await got;
        assert.deepEqual(v.dec(ctx.data), { text: 'mine' });
        assert.equal(ctx.info.user, user);
        const pres = await withTimeout(sub.presence(), T, 'presence');
        const users = Object.values(pres.clients).map((i) => i.user);
        assert.deepEqual(users, [user]);
        const stats = await withTimeout(sub.presenceStats(), T, 'presence stats');
        assert.equal(stats.numClients, 1);
      });

      it('recovers missed publications after a reconnect', async () => {
        const { c } = await connected(uniq('u'));
        const ch = `chat:${uniq('c')}`;
        const { sub, ctx: first } = await subscribed(c, ch);
        assert.equal(first.recoverable, true);
        const seen = [];
        sub.on('publication', (ctx) => seen.push(v.dec(ctx.data).n));
        await server.apiOk('publish', { channel: ch, data: { n: 1 } });
        const deadline = Date.now() + T;
        while (seen.length < 1 && Date.now() < deadline) await sleep(20);
        assert.deepEqual(seen, [1]);

        c.disconnect();
        await server.apiOk('publish', { channel: ch, data: { n: 2 } });
        await server.apiOk('publish', { channel: ch, data: { n: 3 } });
        const again = waitEvent(sub, 'subscribed', T);
        c.connect();
        const ctx = await again;
        assert.equal(ctx.wasRecovering, true);
        assert.equal(ctx.recovered, true);
        while (seen.length < 3 && Date.now() < deadline) await sleep(20);
        assert.deepEqual(seen, [1, 2, 3]);
      });

      it('is told a server-side disconnect with its code', async () => {
        const user = uniq('u');
        const { c } = await connected(user);
        const p = waitEvent(c, 'disconnected', T);
        await server.apiOk('disconnect', { user, disconnect: { code: 4501, reason: 'bye' } });
        const ctx = await p;
        assert.equal(ctx.code, 4501);
        assert.equal(ctx.reason, 'bye');
      });
    });
  }
});
