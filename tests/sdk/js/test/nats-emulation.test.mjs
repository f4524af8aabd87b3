// Emulation across nodes: centrifuge-js streams from node 1 (http_stream and
// sse) while its later commands (subscribe, publish) are POSTed to
// /emulation on node 2, which forwards them over NATS to the node that owns
// the session. An /emulation request naming a node nobody knows is a 404.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import EventSource from 'eventsource';
import { Centrifuge } from 'centrifuge';

import { startGyre, connToken, waitEvent, uniq } from '../harness.mjs';
import { startNats, REC_NAMESPACE } from '../nats.mjs';

const T = 8000;

describe('emulation sessions reachable from any node (NATS)', () => {
  let nats;
  const nodes = [];
  let clients = [];

  before(async () => {
    nats = await startNats();
    const prefix = uniq('gyre');
    for (let i = 0; i < 2; i++) {
      nodes.push(await startGyre({
        node: { name: `emu${i + 1}` },
        http_stream: { enabled: true },
        sse: { enabled: true },
        broker: { enabled: true, type: 'nats', nats: { url: nats.url, prefix } },
        presence_manager: { enabled: true, type: 'nats' },
        channel: { namespaces: [{ ...REC_NAMESPACE, allow_publish_for_subscriber: true }] },
      }));
    }
  });
  after(async () => {
    for (const n of nodes) await n.stop();
    if (nats) await nats.stop();
  });
  afterEach(() => {
    for (const c of clients) { try { c.disconnect(); } catch { /* ignore */ } }
    clients = [];
  });

  for (const transport of ['http_stream', 'sse']) {
    it(`${transport} on node 1 with /emulation on node 2: subscribe, receive, publish`, async () => {
      const c = new Centrifuge(
        [{ transport, endpoint: `${nodes[0].httpUrl}/connection/${transport}` }],
        { token: connToken(uniq('u')), emulationEndpoint: `${nodes[1].httpUrl}/emulation`, eventsource: EventSource, timeout: T },
      );
      c.on('error', () => {});
      clients.push(c);
      const connected = waitEvent(c, 'connected', T);
      c.connect();
      assert.equal((await connected).transport, transport);
      // The subscribe command travels node 2 → NATS → node 1.
      const ch = `rec:${uniq('e')}`;
      const sub = c.newSubscription(ch);
      sub.on('error', () => {});
      const subscribed = waitEvent(sub, 'subscribed', T);
      sub.subscribe();
      await subscribed;
      const got = waitEvent(sub, 'publication', T);
      await nodes[1].apiOk('publish', { channel: ch, data: { n: 1 } });
      assert.deepEqual((await got).data, { n: 1 });
      // A client publish, also through node 2's /emulation.
      const own = waitEvent(sub, 'publication', T);
      await sub.publish({ n: 2 });
      assert.deepEqual((await own).data, { n: 2 });
    });
  }

  it('an /emulation request for an unknown node is 404, for an unknown session on a known node 204', async () => {
    const unknown = await fetch(`${nodes[1].httpUrl}/emulation`, {
      method: 'POST',
      body: JSON.stringify({ node: 'no-such-node', session: 'x', data: '{"id":2,"rpc":{"method":"ping"}}' }),
    });
    assert.equal(unknown.status, 404);
    const info = await nodes[1].apiOk('info', {});
    const other = info.nodes.find((n) => n.name === 'emu1');
    assert.ok(other, JSON.stringify(info));
    const res = await fetch(`${nodes[1].httpUrl}/emulation`, {
      method: 'POST',
      body: JSON.stringify({ node: other.uid, session: 'no-such-session', data: '{"id":2,"rpc":{"method":"ping"}}' }),
    });
    assert.equal(res.status, 204);
  });
});
