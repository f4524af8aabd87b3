// A zero-loss rolling restart, measured.
//
// Three gyre nodes on one real nats-server behind Debian's nginx standing in for ingress-nginx,
// configured from the Ingress the operator renders for tests/operator/ingress/rolling.yaml (same
// paths, WebSocket upgrade, timeouts, cookie affinity: tests/operator/ingress/ingress-to-nginx.mjs).
// GYRE_ROLLING_CLIENTS real centrifuge-js clients (default 3000) spread over WebSocket,
// HTTP-streaming, SSE and SockJS (sockjs-client, its websocket transport) each subscribe to one of
// GYRE_ROLLING_CHANNELS channels of a namespace with history and force_recovery. A publisher
// sends GYRE_ROLLING_RATE publications per second through the server HTTP API, each carrying its
// channel's sequence number; every client checks it sees 1, 2, 3, ... with no gap and no repeat
// across all its reconnects.
//
// Then the nodes are replaced one by one the way the rendered Deployment has Kubernetes do it
// (strategy maxSurge 1 / maxUnavailable 0): a replacement process starts on a new port, is added
// to nginx's upstream once /health/ready answers 200 (the ingress controller following the
// Endpoints), then the old node leaves the upstream (endpoint removal at the start of
// termination), sleeps the rendered preStop, gets SIGTERM and must exit 0 within the rendered
// terminationGracePeriodSeconds. Last, 3 → 2: one node is removed the same way with no
// replacement. After each phase every client must be connected and subscribed and have every
// publication exactly once.
//
// Measured per phase: time from a client's disconnect to its re-subscription (p50/p90/p99/max),
// how many subscriptions were recovered, and the reconnect wave on the nodes that took the clients
// (new connections per second per node from each node's centrifugo_client_connections_accepted
// counter, and the busiest 250 ms), compared with what centrifuge-js's backoff predicts: the first
// reconnect after a server disconnect waits minReconnectDelay + uniform(0, minReconnectDelay),
// so the clients of one node should arrive spread over that window, not at once.
//
// Run alone (tests/run-all.sh runs it as its own step):
//   cd tests/sdk/js && node --test --test-timeout=900000 load/rolling-restart.test.mjs
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import EventSource from 'eventsource';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import SockJS from 'sockjs-client';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

import { repoRoot, startGyre, connToken, freePort, sleep, uniq, API_KEY } from '../harness.mjs';
import { startNats } from '../nats.mjs';
import { nginxConf } from '../../../operator/ingress/ingress-to-nginx.mjs';

const CLIENTS = Number(process.env.GYRE_ROLLING_CLIENTS || 3000);
const CHANNELS = Number(process.env.GYRE_ROLLING_CHANNELS || 30);
const RATE = Number(process.env.GYRE_ROLLING_RATE || 10);
const TRANSPORTS = (process.env.GYRE_ROLLING_TRANSPORTS || 'websocket,http_stream,sse,sockjs').split(',');
// centrifuge-js 5.8 defaults, spelled out because the herd check is measured against them.
const MIN_RECONNECT_DELAY = 500;
const MAX_RECONNECT_DELAY = 20000;
// Connect and subscribe timeout of the clients: generous, the whole test shares two cores.
const CLIENT_TIMEOUT = 15000;
const SETTLE_MS = 60000;

const operatorBin = process.env.GYRE_OPERATOR_BIN || path.join(repoRoot, 'target', 'debug', 'gyre-operator');
const crFile = path.join(repoRoot, 'tests', 'operator', 'ingress', 'rolling.yaml');

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

/**
 * nginx as the ingress controller: `setEndpoints` rewrites the conf and reloads (SIGHUP), as
 * ingress-nginx does when a Service's Endpoints change. Old workers keep the connections they
 * hold until those close, new connections go to the new upstream list.
 */
async function startIngress(ingress, endpoints) {
  const svc = ingress.spec.rules[0].http.paths[0].backend.service.name;
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gyre-rolling-nginx-'));
  const confPath = path.join(dir, 'nginx.conf');
  const write = (eps) => {
    let conf = nginxConf(ingress, { [svc]: eps }, { listen: port, dir, workerConnections: 4 * CLIENTS + 1024 });
    // As root nginx would switch its workers to `nobody`, who cannot write the temp directory.
    if (process.getuid && process.getuid() === 0) conf = 'user root;\n' + conf;
    fs.writeFileSync(confPath, conf);
  };
  write(endpoints);
  const child = spawn(nginxBin(), ['-p', dir, '-c', confPath, '-g', 'daemon off;'], { stdio: 'ignore' });
  process.on('exit', () => { try { child.kill('SIGKILL'); } catch { /* gone */ } });
  const errorLog = () => (fs.existsSync(path.join(dir, 'error.log')) ? fs.readFileSync(path.join(dir, 'error.log'), 'utf8') : '');
  const deadline = Date.now() + 10000;
  while (!(await canConnect(port))) {
    if (Date.now() > deadline) throw new Error(`nginx did not listen on ${port}\n${errorLog()}`);
    await sleep(20);
  }
  const reloads = () => (errorLog().match(/reconfiguring/g) || []).length;
  return {
    port,
    base: `http://127.0.0.1:${port}`,
    async setEndpoints(eps) {
      const before = reloads();
      write(eps);
      child.kill('SIGHUP');
      // The master logs "reconfiguring" once it has read the new conf and starts new workers.
      const until = Date.now() + 10000;
      while (reloads() <= before) {
        if (Date.now() > until) throw new Error(`nginx did not reload\n${errorLog().slice(-4000)}`);
        await sleep(20);
      }
      await sleep(100);
    },
    async stop() {
      child.kill('SIGTERM');
      await sleep(200);
      try { child.kill('SIGKILL'); } catch { /* gone */ }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/** Highest count of `times` (ms, sorted) inside any window of `win` ms. */
function peakInWindow(sorted, win) {
  let best = 0;
  let lo = 0;
  for (let hi = 0; hi < sorted.length; hi++) {
    while (sorted[hi] - sorted[lo] >= win) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
}

describe(`rolling restart behind the rendered Ingress: ${CLIENTS} clients, 3 nodes`, { timeout: 900000 }, () => {
  let nats;
  let ingress;
  let gyreConfig;
  let preStopSeconds;
  let graceSeconds;
  let proxy;
  let podSeq = 0;
  /** Nodes in the Service's Endpoints, oldest first. */
  let live = [];
  const draining = new Set();
  const clients = [];
  const phases = [];
  const published = new Map(); // channel -> last seq published (acknowledged by the API)
  let publisher = null;
  const publishErrors = [];
  /** Accepted-connection samples per node: name -> [{ at, accepted }] */
  const samples = new Map();
  let sampler = null;
  // Reconnect times include this process's event-loop lag: it is measured and printed with them.
  let loopDelay = null;

  async function startPod() {
    podSeq += 1;
    const name = `rolling-${podSeq}`;
    const n = await startGyre({ ...gyreConfig, node: { name } }, { startTimeoutMs: 60000 });
    n.name = name;
    // Ready for the Service once it answers /health/ready 200 (startGyre waited for that) and
    // knows the other pods over NATS: before that an /emulation POST for a session held by
    // another pod would be answered 404 and its client would reconnect.
    const until = Date.now() + 30000;
    while ((await n.apiOk('info', {})).nodes.length < live.length + 1) {
      if (Date.now() > until) throw new Error(`${name} did not see the other nodes over NATS`);
      await sleep(100);
    }
    samples.set(name, []);
    return n;
  }

  const endpoints = () => live.filter((n) => !draining.has(n)).map((n) => `127.0.0.1:${n.port}`);

  /** One pod's termination as kubelet runs it; resolves with the exit and the drain time. */
  async function terminate(n) {
    draining.add(n);
    // Endpoint removal and preStop start together; the preStop sleep gives the removal time to
    // reach the ingress controller before the server stops taking connections.
    await proxy.setEndpoints(endpoints());
    await sleep(preStopSeconds * 1000);
    // The clients it still holds: each of them must come back through the other nodes.
    const text = await (await fetch(`${n.httpUrl}/metrics`)).text();
    const held = Number(text.match(/^centrifugo_node_num_clients (\d+)/m)[1]);
    const t0 = Date.now();
    n.signal('SIGTERM');
    const budget = (graceSeconds - preStopSeconds) * 1000;
    const exit = await Promise.race([n.exited(), sleep(budget).then(() => null)]);
    if (exit === null) n.signal('SIGKILL');
    const drainMs = Date.now() - t0;
    live = live.filter((x) => x !== n);
    draining.delete(n);
    await n.stop(); // keeps its log in tests/artifacts/
    return { exit, drainMs, held };
  }

  function newClient(i) {
    const transport = TRANSPORTS[i % TRANSPORTS.length];
    const channel = `rec:roll${i % CHANNELS}`;
    const base = proxy.base;
    const common = {
      token: connToken(`user${i}`),
      timeout: CLIENT_TIMEOUT,
      minReconnectDelay: MIN_RECONNECT_DELAY,
      maxReconnectDelay: MAX_RECONNECT_DELAY,
    };
    let c;
    if (transport === 'websocket') {
      c = new Centrifuge(`ws://127.0.0.1:${proxy.port}/connection/websocket`, { ...common, websocket: WebSocket });
    } else if (transport === 'sockjs') {
      // sockjs-client's websocket transport: its xhr transports need the affinity cookie kept
      // between requests, which a browser does and Node's http client does not.
      c = new Centrifuge([{ transport: 'sockjs', endpoint: `${base}/connection/sockjs` }], {
        ...common, sockjs: SockJS, sockjsOptions: { transports: ['websocket'], timeout: CLIENT_TIMEOUT },
      });
    } else {
      c = new Centrifuge([{ transport, endpoint: `${base}/connection/${transport}` }], {
        ...common, emulationEndpoint: `${base}/emulation`, eventsource: EventSource,
      });
    }
    const sub = c.newSubscription(channel);
    const st = {
      i, transport, channel, c, sub: null,
      last: 0, received: 0, duplicated: 0, lost: 0, notRecovered: 0,
      everSubscribed: false, downAt: null, downCode: null, reconnects: [], errors: 0,
    };
    // The client's recent history, shown for a client that does not come back.
    st.history = [];
    const note = (what) => (ctx) => {
      st.history.push(`${Date.now() % 100000} ${what} ${ctx?.code ?? ''} ${ctx?.reason ?? ctx?.error?.message ?? ctx?.type ?? ''}`);
      if (st.history.length > 20) st.history.shift();
    };
    for (const e of ['connecting', 'connected', 'disconnected', 'error']) c.on(e, note(`client ${e}`));
    for (const e of ['subscribing', 'subscribed', 'unsubscribed', 'error']) sub.on(e, note(`sub ${e}`));
    c.on('error', () => { st.errors += 1; });
    const markDown = (ctx) => {
      if (st.everSubscribed && st.downAt === null) {
        st.downAt = Date.now();
        st.downCode = ctx.code;
      }
    };
    c.on('connecting', markDown);
    st.sub = sub;
    sub.on('error', () => { st.errors += 1; });
    sub.on('subscribing', markDown);
    sub.on('subscribed', (ctx) => {
      const now = Date.now();
      if (st.downAt !== null) {
        st.reconnects.push({ downAt: st.downAt, upAt: now, ms: now - st.downAt, code: st.downCode, recovered: ctx.recovered, wasRecovering: ctx.wasRecovering });
        st.downAt = null;
      }
      // A resubscription that could not recover lost what was published meanwhile (unless
      // nothing was); the sequence check below finds out which.
      if (ctx.wasRecovering && !ctx.recovered) st.notRecovered += 1;
      st.everSubscribed = true;
    });
    sub.on('publication', (ctx) => {
      const seq = ctx.data.seq;
      st.received += 1;
      if (seq <= st.last) {
        st.duplicated += 1;
      } else {
        st.lost += seq - st.last - 1;
        st.last = seq;
      }
    });
    clients.push(st);
    return st;
  }

  async function connectAll() {
    const BATCH = 200;
    for (let i = 0; i < CLIENTS; i += BATCH) {
      const batch = [];
      for (let j = i; j < Math.min(CLIENTS, i + BATCH); j++) batch.push(newClient(j));
      await Promise.all(batch.map((st) => new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`client ${st.i} (${st.transport}) did not subscribe:\n    ${st.history.join('\n    ')}`)), 60000);
        st.sub.once('subscribed', () => { clearTimeout(timer); resolve(); });
        st.sub.subscribe();
        st.c.connect();
      })));
    }
  }

  function publishTarget() {
    const ok = live.filter((n) => !draining.has(n));
    return ok[ok.length - 1];
  }

  async function publishOnce(channel, seq) {
    // The idempotency key makes a retry after an unanswered request safe: JetStream keeps the
    // key cluster-wide, so a publication the first node did store is not stored twice.
    const body = JSON.stringify({ channel, data: { seq }, idempotency_key: `${channel}:${seq}` });
    let lastErr;
    for (let attempt = 0; attempt < 10; attempt++) {
      const n = publishTarget();
      try {
        const res = await fetch(`${n.httpUrl}/api/publish`, {
          method: 'POST', headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY }, body,
          signal: AbortSignal.timeout(5000),
        });
        const b = await res.json();
        if (res.status === 200 && !b.error) return;
        lastErr = new Error(`${res.status} ${JSON.stringify(b)}`);
      } catch (e) {
        lastErr = e;
      }
      await sleep(100);
    }
    throw lastErr;
  }

  /**
   * One sequential loop per channel (a channel's publications must be acknowledged in order for
   * its sequence to mean anything), each at RATE / CHANNELS per second on its own schedule, so a
   * slow call on one channel does not hold the others back.
   */
  function startPublisher() {
    let stop = false;
    const t0 = Date.now();
    let count = 0;
    const perChannel = RATE / CHANNELS;
    const loops = [];
    for (let k = 0; k < CHANNELS; k++) {
      const ch = `rec:roll${k}`;
      loops.push((async () => {
        // Spread the channels' ticks over the first period.
        await sleep((k * 1000) / RATE);
        const start = Date.now();
        let n = 0;
        while (!stop) {
          const seq = (published.get(ch) || 0) + 1;
          try {
            await publishOnce(ch, seq);
            published.set(ch, seq);
          } catch (e) {
            // Never acknowledged: not counted as published, and its seq is tried again; the
            // idempotency key keeps a stored-after-all first attempt from being stored twice.
            publishErrors.push(`${ch}:${seq}: ${e.message}`);
            continue;
          }
          count += 1;
          n += 1;
          const wait = start + (n * 1000) / perChannel - Date.now();
          if (wait > 0) await sleep(wait);
        }
      })());
    }
    return {
      count: () => count,
      rate: () => (count * 1000) / (Date.now() - t0),
      async stop() { stop = true; await Promise.all(loops); },
    };
  }

  function startSampler() {
    let stop = false;
    const done = (async () => {
      while (!stop) {
        await Promise.all(live.map(async (n) => {
          try {
            const res = await fetch(`${n.httpUrl}/metrics`, { signal: AbortSignal.timeout(2000) });
            const text = await res.text();
            const m = text.match(/^centrifugo_client_connections_accepted (\d+)/m);
            if (m) samples.get(n.name).push({ at: Date.now(), accepted: Number(m[1]) });
          } catch { /* a node going away */ }
        }));
        await sleep(100);
      }
    })();
    return { async stop() { stop = true; await done; } };
  }

  /** Every client connected and subscribed and caught up with what was published before. */
  async function settle(what) {
    const target = new Map(published);
    const until = Date.now() + SETTLE_MS;
    for (;;) {
      const behind = clients.filter((st) => st.c.state !== 'connected' || st.sub.state !== 'subscribed' || st.last < (target.get(st.channel) || 0));
      if (behind.length === 0) return;
      if (Date.now() > until) {
        const ex = behind.slice(0, 5).map((st) => `#${st.i} ${st.transport} ${st.c.state}/${st.sub.state} last=${st.last} want=${target.get(st.channel)}\n    ${st.history.join('\n    ')}`);
        throw new Error(`${what}: ${behind.length} clients not connected, subscribed and caught up after ${SETTLE_MS} ms: ${ex.join('; ')}`);
      }
      await sleep(200);
    }
  }

  /** Figures of one phase: reconnects whose disconnect fell in [from, to). */
  function measure(name, from, to, nodesTaking) {
    const recs = clients.flatMap((st) => st.reconnects.filter((r) => r.downAt >= from && r.downAt < to).map((r) => ({ ...r, transport: st.transport })));
    const ms = recs.map((r) => r.ms).sort((a, b) => a - b);
    const ups = recs.map((r) => r.upAt).sort((a, b) => a - b);
    const perNode = {};
    for (const n of nodesTaking) {
      const s = (samples.get(n) || []).filter((x) => x.at >= from && x.at < to + 5000);
      // Connections accepted per second over the first ≥ 1 s span from each sample (the
      // sampler polls every 100 ms, slower when the machine is busy).
      let peak = 0;
      for (let a = 0, b = 0; a < s.length; a++) {
        while (b < s.length && s[b].at - s[a].at < 1000) b++;
        if (b === s.length) break;
        peak = Math.max(peak, ((s[b].accepted - s[a].accepted) * 1000) / (s[b].at - s[a].at));
      }
      perNode[n] = Math.round(peak);
    }
    const byTransport = {};
    for (const t of TRANSPORTS) byTransport[t] = recs.filter((r) => r.transport === t).length;
    const p = {
      name,
      reconnects: recs.length,
      recovered: recs.filter((r) => r.recovered).length,
      notRecovered: recs.filter((r) => r.wasRecovering && !r.recovered).length,
      p50: quantile(ms, 0.5), p90: quantile(ms, 0.9), p99: quantile(ms, 0.99), max: ms[ms.length - 1] ?? NaN, min: ms[0] ?? NaN,
      peak250: peakInWindow(ups, 250),
      spreadMs: ups.length ? ups[ups.length - 1] - ups[0] : 0,
      perNodePeakPerSec: perNode,
      byTransport,
    };
    phases.push(p);
    return p;
  }

  function printTable() {
    const lines = [];
    const pub = [...published.values()].reduce((a, b) => a + b, 0);
    const sum = (k) => clients.reduce((a, st) => a + st[k], 0);
    const expected = clients.reduce((a, st) => a + (published.get(st.channel) || 0), 0);
    lines.push(`rolling restart: ${CLIENTS} clients (${TRANSPORTS.join(', ')}), ${CHANNELS} channels, ${RATE} publications/s, preStop ${preStopSeconds} s, grace ${graceSeconds} s`);
    lines.push('phase                 reconnects  recovered  p50 ms  p90 ms  p99 ms  max ms  busiest 250 ms  peak/s per node taking clients');
    for (const p of phases) {
      const nodes = Object.entries(p.perNodePeakPerSec).map(([n, v]) => `${n}=${v}`).join(' ');
      lines.push(`${p.name.padEnd(21)} ${String(p.reconnects).padStart(10)}  ${String(p.recovered).padStart(9)}  ${String(p.p50).padStart(6)}  ${String(p.p90).padStart(6)}  ${String(p.p99).padStart(6)}  ${String(p.max).padStart(6)}  ${String(p.peak250).padStart(14)}  ${nodes}`);
    }
    lines.push(`publications: ${pub} published (API-acknowledged), ${expected} deliveries expected, ${sum('received')} received, ${sum('lost')} lost, ${sum('duplicated')} duplicated, ${sum('notRecovered')} recoveries refused, ${publishErrors.length} publish calls given up`);
    lines.push(`centrifuge-js backoff: first reconnect after ${MIN_RECONNECT_DELAY}..${2 * MIN_RECONNECT_DELAY} ms (uniform jitter): the clients of one node arrive over ~${MIN_RECONNECT_DELAY} ms, i.e. at most ~half of them in any 250 ms`);
    if (loopDelay) {
      lines.push(`this test's own event loop (all ${CLIENTS} clients on one thread): delay p50 ${Math.round(loopDelay.percentile(50) / 1e6)} ms, p99 ${Math.round(loopDelay.percentile(99) / 1e6)} ms, max ${Math.round(loopDelay.max / 1e6)} ms; publish rate achieved ${publisher ? publisher.rate().toFixed(1) : '?'}/s of ${RATE}/s`);
    }
    const text = lines.join('\n');
    console.log(text);
    try {
      const dir = path.join(repoRoot, 'tests', 'artifacts');
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'rolling-restart.txt'), text + '\n');
      fs.writeFileSync(path.join(dir, 'rolling-restart.json'), JSON.stringify({ clients: CLIENTS, channels: CHANNELS, rate: RATE, phases }, null, 2));
    } catch { /* best effort */ }
  }

  function assertZeroLoss(what) {
    const lost = clients.reduce((a, st) => a + st.lost, 0);
    const dup = clients.reduce((a, st) => a + st.duplicated, 0);
    assert.equal(lost, 0, `${what}: publications lost (gaps in the sequence)`);
    assert.equal(dup, 0, `${what}: publications duplicated`);
    assert.deepEqual(publishErrors, [], `${what}: publish calls failed`);
  }

  function assertNoHerd(p, disconnected) {
    // Everyone who was disconnected came back (and only once per disconnect).
    assert.ok(p.reconnects >= disconnected, `${p.name}: ${p.reconnects} reconnects for ${disconnected} disconnected clients`);
    assert.equal(p.notRecovered, 0, `${p.name}: subscriptions not recovered`);
    // No client came back before its backoff: the server did not hand anyone an early retry.
    assert.ok(p.min >= MIN_RECONNECT_DELAY - 50, `${p.name}: a reconnect after ${p.min} ms, under minReconnectDelay`);
    // The wave is spread by the clients' jitter: uniform over MIN_RECONNECT_DELAY ms puts about
    // half of them in any 250 ms; a herd (everyone at once) would put all of them there.
    assert.ok(p.peak250 <= Math.ceil(0.8 * p.reconnects) + 20, `${p.name}: ${p.peak250} of ${p.reconnects} reconnects within 250 ms`);
  }

  before(async () => {
    const objects = render();
    ingress = objects.find((o) => o.kind === 'Ingress');
    const deploy = objects.find((o) => o.kind === 'Deployment');
    const cm = objects.find((o) => o.kind === 'ConfigMap');
    assert.ok(ingress && deploy && cm, 'the operator renders an Ingress, a Deployment and a ConfigMap');
    const pod = deploy.spec.template.spec;
    const server = pod.containers.find((c) => c.name === 'gyre');
    preStopSeconds = server.lifecycle?.preStop?.sleep?.seconds ?? 0;
    graceSeconds = pod.terminationGracePeriodSeconds;
    assert.deepEqual(deploy.spec.strategy.rollingUpdate, { maxSurge: 1, maxUnavailable: 0 });
    gyreConfig = JSON.parse(cm.data['config.json']);
    assert.ok(gyreConfig.shutdown?.timeout, 'the operator derives shutdown.timeout from the pod timing');
    delete gyreConfig.http_server;
    nats = await startNats();
    gyreConfig.broker.nats.url = nats.url;
    gyreConfig.broker.nats.prefix = uniq('roll');
    gyreConfig.log = { level: process.env.DEBUG_ROLLING ? 'debug' : 'info' };
    for (let i = 0; i < 3; i++) live.push(await startPod());
    proxy = await startIngress(ingress, endpoints());
    sampler = startSampler();
    loopDelay = monitorEventLoopDelay({ resolution: 20 });
    loopDelay.enable();
    const t0 = Date.now();
    await connectAll();
    console.log(`${CLIENTS} clients connected and subscribed in ${Date.now() - t0} ms`);
    publisher = startPublisher();
    await sleep(2000);
  }, { timeout: 600000 });

  after(async () => {
    if (publisher) await publisher.stop();
    if (sampler) await sampler.stop();
    if (loopDelay) loopDelay.disable();
    if (phases.length) printTable();
    for (const st of clients) { try { st.c.disconnect(); } catch { /* ignore */ } }
    if (proxy) await proxy.stop();
    for (const n of live) await n.stop();
    if (nats) await nats.stop();
  });

  it('rolling restart of all three nodes: every client back, 0 lost, 0 duplicated, the wave spread', { timeout: 600000 }, async () => {
    for (let k = 0; k < 3; k++) {
      const old = live[0];
      const from = Date.now();
      const fresh = await startPod();
      live.push(fresh);
      await proxy.setEndpoints(endpoints());
      const { exit, drainMs, held } = await terminate(old);
      assert.deepEqual(exit, { code: 0, signal: null }, `${old.name} exits 0 within the grace period`);
      await settle(`after replacing ${old.name}`);
      const p = measure(`replace ${old.name}`, from, Date.now(), live.map((n) => n.name));
      Object.assign(p, { drainMs, held });
      assertNoHerd(p, held);
      assertZeroLoss(`after replacing ${old.name}`);
    }
  });

  it('scale 3 → 2: every client back, 0 lost, 0 duplicated, the wave spread', { timeout: 300000 }, async () => {
    const from = Date.now();
    const gone = live[0];
    const { exit, drainMs, held } = await terminate(gone);
    assert.deepEqual(exit, { code: 0, signal: null }, `${gone.name} exits 0 within the grace period`);
    await settle(`after removing ${gone.name}`);
    const p = measure(`scale 3→2 (${gone.name})`, from, Date.now(), live.map((n) => n.name));
    Object.assign(p, { drainMs, held });
    assertNoHerd(p, held);
    // The last word: stop publishing, let everyone catch up, compare with what was published.
    await publisher.stop();
    await settle('at the end');
    assertZeroLoss('at the end');
    for (const st of clients) {
      assert.equal(st.c.state, 'connected', `client ${st.i} connected at the end`);
      assert.equal(st.last, published.get(st.channel) || 0, `client ${st.i} saw every publication of ${st.channel}`);
    }
    const received = clients.reduce((a, st) => a + st.received, 0);
    const expected = clients.reduce((a, st) => a + (published.get(st.channel) || 0), 0);
    assert.equal(received, expected, 'every publication delivered exactly once to every subscriber');
  });
});
