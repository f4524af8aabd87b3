// Issue 11 #3: the Ingress the operator renders routes every client transport. Debian's nginx
// stands in for ingress-nginx, configured from that Ingress by tests/operator/ingress/
// ingress-to-nginx.mjs (paths, WebSocket upgrade, timeouts, buffering, cookie affinity), in
// front of two real gyre nodes on a real nats-server, started with the config.json the operator
// generates for tests/operator/ingress/centrifugo.yaml. The real centrifuge-js client then
// connects through nginx over WebSocket, HTTP-streaming and SSE. With round-robin balancing the
// emulation POSTs of one session land on both nodes, so the /emulation route is exercised
// together with the cross-node forwarding over NATS.
//
// Before the fix the Ingress had only `/connection`: the last test renders that Ingress and
// shows HTTP-streaming cannot subscribe through it.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import EventSource from 'eventsource';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

import { repoRoot, startGyre, connToken, waitEvent, uniq, freePort, sleep } from '../harness.mjs';
import { startNats } from '../nats.mjs';
import { nginxConf } from '../../../operator/ingress/ingress-to-nginx.mjs';

const T = 8000;
const operatorBin = process.env.GYRE_OPERATOR_BIN || path.join(repoRoot, 'target', 'debug', 'gyre-operator');
const crFile = path.join(repoRoot, 'tests', 'operator', 'ingress', 'centrifugo.yaml');

function nginxBin() {
  for (const p of [process.env.NGINX_BIN, '/usr/sbin/nginx', '/usr/bin/nginx']) {
    if (p && fs.existsSync(p)) return p;
  }
  throw new Error('nginx not found: set NGINX_BIN or run tests/install-deps.sh (Debian nginx-light)');
}

function render() {
  if (!fs.existsSync(operatorBin)) {
    throw new Error(`gyre-operator not found at ${operatorBin} (cargo build -p gyre-operator, or set GYRE_OPERATOR_BIN)`);
  }
  const r = spawnSync(operatorBin, ['render', '-f', crFile, '--json'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`gyre-operator render failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** Runs nginx with the conf for `ingress`; returns { url, port, stop(), accessLog() }. */
async function startNginx(ingress, endpoints) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gyre-nginx-'));
  let conf = nginxConf(ingress, endpoints, { listen: port, dir });
  // As root nginx would switch its workers to `nobody`, who cannot write the temp directory.
  if (process.getuid && process.getuid() === 0) conf = 'user root;\n' + conf;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const child = spawn(nginxBin(), ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: 'ignore' });
  process.on('exit', () => { try { child.kill('SIGKILL'); } catch { /* gone */ } });
  const deadline = Date.now() + 10000;
  while (!(await canConnect(port))) {
    if (Date.now() > deadline) {
      const log = fs.existsSync(path.join(dir, 'error.log')) ? fs.readFileSync(path.join(dir, 'error.log'), 'utf8') : '';
      throw new Error(`nginx did not listen on ${port}\n${conf}\n${log}`);
    }
    await sleep(20);
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    conf,
    accessLog: () => fs.readFileSync(path.join(dir, 'access.log'), 'utf8'),
    async stop() {
      child.kill('SIGTERM');
      await sleep(100);
      try { child.kill('SIGKILL'); } catch { /* gone */ }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe('operator-rendered Ingress in front of two nodes (nginx as the Ingress controller)', () => {
  let nats;
  let objects;
  let ingress;
  let proxy;
  const nodes = [];
  let clients = [];

  before(async () => {
    objects = render();
    ingress = objects.find((o) => o.kind === 'Ingress');
    assert.ok(ingress, 'the operator renders an Ingress');
    const cm = objects.find((o) => o.kind === 'ConfigMap');
    const config = JSON.parse(cm.data['config.json']);
    // The pod's fixed ports become free loopback ports; the NATS URL points at the test's server.
    delete config.http_server;
    nats = await startNats();
    config.broker.nats.url = nats.url;
    config.broker.nats.prefix = uniq('ing');
    if (process.env.DEBUG_INGRESS) config.log = { level: 'debug' };
    for (let i = 0; i < 2; i++) {
      nodes.push(await startGyre({ ...config, node: { name: `ing${i + 1}` } }));
    }
    // Like pods behind a readiness gate: wait until each node knows the other over NATS. Until
    // then a node answers an /emulation POST for a session on the other node 404 (unknown node)
    // and the client reconnects.
    const deadline = Date.now() + 15000;
    for (const n of nodes) {
      while ((await n.apiOk('info', {})).nodes.length < nodes.length) {
        if (Date.now() > deadline) throw new Error('nodes did not discover each other over NATS');
        await sleep(100);
      }
    }
    const svc = ingress.spec.rules[0].http.paths[0].backend.service.name;
    proxy = await startNginx(ingress, { [svc]: nodes.map((n) => `127.0.0.1:${n.port}`) });
  });
  after(async () => {
    if (proxy) await proxy.stop();
    for (const n of nodes) await n.stop();
    if (nats) await nats.stop();
  });
  afterEach(() => {
    if (process.env.DEBUG_INGRESS) console.log(proxy.accessLog());
    for (const c of clients) { try { c.disconnect(); } catch { /* ignore */ } }
    clients = [];
  });

  it('routes /connection and /emulation to the client port, with the long-connection annotations', () => {
    const paths = ingress.spec.rules[0].http.paths.map((p) => [p.path, p.pathType, p.backend.service.port.name]);
    assert.deepEqual(paths, [['/connection', 'Prefix', 'http'], ['/emulation', 'Prefix', 'http']]);
    const a = ingress.metadata.annotations;
    assert.equal(a['nginx.ingress.kubernetes.io/proxy-read-timeout'], '3600');
    assert.equal(a['nginx.ingress.kubernetes.io/proxy-buffering'], 'off');
    // SockJS on with two replicas: sessions are node-local, so the Ingress asks for affinity.
    assert.equal(a['nginx.ingress.kubernetes.io/affinity'], 'cookie');
    assert.match(proxy.conf, /hash \$gyre_affinity_key consistent;/);
  });

  it('WebSocket through the Ingress: connect, subscribe, receive a publication from the other node', async () => {
    const c = new Centrifuge(`ws://127.0.0.1:${proxy.port}/connection/websocket`, { token: connToken(uniq('u')), websocket: WebSocket, timeout: T });
    c.on('error', () => {});
    clients.push(c);
    const connected = waitEvent(c, 'connected', T);
    c.connect();
    assert.equal((await connected).transport, 'websocket');
    const ch = uniq('ws');
    const sub = c.newSubscription(ch);
    const subscribed = waitEvent(sub, 'subscribed', T);
    sub.subscribe();
    await subscribed;
    for (const [i, n] of nodes.entries()) {
      const got = waitEvent(sub, 'publication', T);
      await n.apiOk('publish', { channel: ch, data: { from: i } });
      assert.deepEqual((await got).data, { from: i });
    }
  });

  for (const transport of ['sse', 'http_stream']) {
    it(`${transport} through the Ingress, commands POSTed to /emulation on either node`, async () => {
      const base = `http://127.0.0.1:${proxy.port}`;
      const emulationPosts = () => proxy.accessLog().split('\n').filter((l) => l.startsWith('POST /emulation')).length;
      const postsBefore = emulationPosts();
      const c = new Centrifuge(
        [{ transport, endpoint: `${base}/connection/${transport}` }],
        { token: connToken(uniq('u')), emulationEndpoint: `${base}/emulation`, eventsource: EventSource, timeout: T },
      );
      c.on('error', () => {});
      clients.push(c);
      const connected = waitEvent(c, 'connected', T);
      c.connect();
      assert.equal((await connected).transport, transport);
      // Several subscribe commands: round-robin sends them to both nodes, so some travel
      // node → NATS → the node holding the stream.
      const subs = [];
      for (let i = 0; i < 4; i++) {
        const sub = c.newSubscription(uniq(`${transport}${i}`));
        sub.on('error', () => {});
        const subscribed = waitEvent(sub, 'subscribed', T);
        sub.subscribe();
        await subscribed;
        subs.push(sub);
      }
      for (const sub of subs) {
        const got = waitEvent(sub, 'publication', T);
        await nodes[1].apiOk('publish', { channel: sub.channel, data: { ch: sub.channel } });
        assert.deepEqual((await got).data, { ch: sub.channel });
      }
      const own = waitEvent(subs[0], 'publication', T);
      await subs[0].publish({ mine: true });
      assert.deepEqual((await own).data, { mine: true });
      // 4 subscribes + 1 publish went through the Ingress's /emulation route.
      // nginx logs a request after answering it: give the last line a moment.
      let posts = 0;
      for (let i = 0; i < 50 && posts < 5; i++) {
        posts = emulationPosts() - postsBefore;
        if (posts < 5) await sleep(20);
      }
      assert.ok(posts >= 5, `expected the commands to go through /emulation, saw ${posts}`);
    });
  }

  it('SSE through the Ingress: eventsource 2.0.2 gets the first event of every stream', async () => {
    // nginx re-chunks what it relays, so the stream's preamble and the connect reply often reach
    // the client as one chunk. eventsource 2.0.2 (what centrifuge-js uses in Node) then rescans
    // the consumed preamble: a "\r" in it made it skip the blank line ending the connect reply,
    // which was never dispatched, and the client timed out over and over (about a fifth of the
    // streams). A "\n" preamble is the same empty line to every SSE parser and survives that.
    const streams = [];
    const got = await Promise.all(Array.from({ length: 60 }, (_, i) => new Promise((resolve) => {
      const connect = encodeURIComponent(JSON.stringify({ connect: { token: connToken(uniq(`sse${i}`)), name: 'js' }, id: 1 }));
      const es = new EventSource(`http://127.0.0.1:${proxy.port}/connection/sse?cf_connect=${connect}`);
      streams.push(es);
      const timer = setTimeout(() => resolve('no event'), T);
      es.onmessage = (e) => { clearTimeout(timer); resolve(JSON.parse(e.data).connect ? 'connect' : e.data); };
    })));
    for (const es of streams) es.close();
    assert.deepEqual(got.filter((g) => g !== 'connect'), [], 'every stream dispatches its connect reply');
  });

  it('the server API and unlisted paths are not reachable through the Ingress', async () => {
    const api = await fetch(`http://127.0.0.1:${proxy.port}/api/info`, { method: 'POST', body: '{}' });
    assert.equal(api.status, 404);
    const root = await fetch(`http://127.0.0.1:${proxy.port}/`);
    assert.equal(root.status, 404);
  });

  it("the NOTES example's browser origin is accepted, others are refused", async () => {
    const upgrade = (origin) => new Promise((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}/connection/websocket`, { origin });
      ws.on('open', () => { ws.close(); resolve(101); });
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode));
      ws.on('error', () => resolve('error'));
    });
    assert.equal(await upgrade('http://localhost:8000'), 101);
    assert.equal(await upgrade('https://evil.example'), 403);
  });

  it('cookie affinity: the first response sets the cookie, requests carrying it stay on one node', async () => {
    const first = await fetch(`http://127.0.0.1:${proxy.port}/connection/sockjs/info`);
    await first.arrayBuffer();
    const cookie = first.headers.get('set-cookie');
    assert.match(cookie || '', /^gyre_affinity=/);
    const value = cookie.split(';')[0];
    for (let i = 0; i < 6; i++) {
      const r = await fetch(`http://127.0.0.1:${proxy.port}/connection/sockjs/info`, { headers: { cookie: value } });
      await r.arrayBuffer();
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('set-cookie'), null, 'no new cookie once pinned');
    }
    const pinned = proxy.accessLog().split('\n').filter((l) => l.includes(`cookie="${value}"`));
    assert.equal(pinned.length, 6, proxy.accessLog());
    const upstreams = new Set(pinned.map((l) => l.match(/upstream=(\S+)/)[1]));
    assert.equal(upstreams.size, 1, `one node for one session: ${[...upstreams]}`);
  });

  it('the previous Ingress (only /connection) breaks HTTP-streaming: commands to /emulation 404', async () => {
    const old = structuredClone(ingress);
    old.spec.rules[0].http.paths = old.spec.rules[0].http.paths.filter((p) => p.path === '/connection');
    const svc = old.spec.rules[0].http.paths[0].backend.service.name;
    const oldProxy = await startNginx(old, { [svc]: nodes.map((n) => `127.0.0.1:${n.port}`) });
    try {
      const base = `http://127.0.0.1:${oldProxy.port}`;
      const c = new Centrifuge(
        [{ transport: 'http_stream', endpoint: `${base}/connection/http_stream` }],
        { token: connToken(uniq('u')), emulationEndpoint: `${base}/emulation`, timeout: 2000 },
      );
      c.on('error', () => {});
      clients.push(c);
      const connected = waitEvent(c, 'connected', T);
      c.connect();
      await connected;
      const sub = c.newSubscription(uniq('old'));
      const failed = new Promise((resolve) => {
        sub.on('subscribed', () => resolve('subscribed'));
        sub.on('error', () => resolve('error'));
        c.on('disconnected', () => resolve('disconnected'));
        setTimeout(() => resolve('timeout'), 4000);
      });
      sub.subscribe();
      assert.notEqual(await failed, 'subscribed');
      const res = await fetch(`${base}/emulation`, { method: 'POST', body: '{}' });
      assert.equal(res.status, 404);
    } finally {
      await oldProxy.stop();
    }
  });
});
