// Cross-node fan-out benchmark: publisher on node 1 (HTTP API), subscribers
// on nodes 2 and 3, three gyre nodes over one private nats-server; and the
// single-node figure beside it (memory engine, publisher and subscribers on
// one node). Prints one JSON line per scenario:
//   deliveries/s, p50/p99/max latency (publish call start → push received),
//   server CPU seconds (all gyre processes + nats-server) per 1000 deliveries.
//
//   node bench/cross-node.mjs [--subs 200] [--rate 100] [--secs 10] [--pad 64] [--history 1]
// --history 1: the channel keeps history with recovery (every publish is a
// JetStream CAS store + republish with NATS; positioned subscribers).
//
// Run from the repository root with tests/sdk/js/node_modules installed (uses
// `ws`). GYRE_BIN (default target/release/gyre) and NATS_SERVER_BIN.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(path.resolve('tests/sdk/js/package.json'));
const WebSocket = require('ws');

const args = Object.fromEntries(process.argv.slice(2).reduce((a, v, i, all) => {
  if (v.startsWith('--')) a.push([v.slice(2), all[i + 1]]);
  return a;
}, []));
const SUBS = Number(args.subs || 200);
const RATE = Number(args.rate || 100);
const SECS = Number(args.secs || 10);
const PAD = Number(args.pad || 64);
const HISTORY = args.history === '1';
const GYRE = process.env.GYRE_BIN || path.resolve('target/release/gyre');
const NATS = process.env.NATS_SERVER_BIN || (fs.existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = [];
process.on('exit', () => children.forEach((c) => { try { c.kill('SIGKILL'); } catch { /* gone */ } }));

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}
async function waitPort(port) {
  for (let i = 0; i < 500; i++) {
    const ok = await new Promise((r) => { const s = net.connect(port, '127.0.0.1'); s.once('connect', () => { s.destroy(); r(true); }); s.once('error', () => r(false)); });
    if (ok) return;
    await sleep(20);
  }
  throw new Error(`port ${port} never listened`);
}
function cpuSeconds(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const parts = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(parts[11]) + Number(parts[12])) / 100; // utime + stime, USER_HZ=100
}

async function startGyre(dir, name, extra) {
  const port = await freePort();
  const cfg = {
    http_server: { port },
    health: { enabled: true },
    log: { level: 'warn' },
    node: { name },
    client: { allow_anonymous_connect_without_token: true, allowed_origins: ['*'], queue_max_size: 64 * 1024 * 1024 },
    http_api: { insecure: true },
    channel: { without_namespace: { allow_subscribe_for_anonymous: true, allow_subscribe_for_client: true, ...(HISTORY ? { history_size: 100, history_ttl: '60s', force_recovery: true } : {}) } },
    ...extra,
  };
  const file = path.join(dir, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(cfg));
  const child = spawn(GYRE, ['--config', file], { stdio: 'ignore' });
  children.push(child);
  for (let i = 0; i < 300; i++) {
    try { const r = await fetch(`http://127.0.0.1:${port}/health/ready`); if (r.status === 200) return { port, pid: child.pid, child }; } catch { /* not yet */ }
    await sleep(50);
  }
  throw new Error(`${name} not healthy`);
}

function subscriber(port, channel, onPub) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/connection/websocket`);
    ws.on('open', () => ws.send('{"id":1,"connect":{}}\n' + JSON.stringify({ id: 2, subscribe: { channel } })));
    ws.on('message', (buf) => {
      const now = performance.timeOrigin + performance.now();
      for (const line of buf.toString().split('\n')) {
        if (!line) continue;
        const m = JSON.parse(line);
        if (m.id === 2) resolve(ws);
        const p = m.push && m.push.pub;
        if (p) onPub(now - p.data.t);
      }
    });
    ws.on('error', reject);
  });
}

async function scenario(label, pubPort, subPorts, pids) {
  const channel = `bench${Date.now()}`;
  const lat = [];
  const socks = [];
  for (let i = 0; i < SUBS; i++) socks.push(await subscriber(subPorts[i % subPorts.length], channel, (l) => lat.push(l)));
  await sleep(500);
  const cpu0 = pids.map(cpuSeconds);
  const pad = 'x'.repeat(PAD);
  const total = RATE * SECS;
  let failed = 0;
  const t0 = performance.now();
  const inflight = [];
  for (let i = 0; i < total; i++) {
    const due = t0 + (i * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    const body = JSON.stringify({ channel, data: { t: performance.timeOrigin + performance.now(), pad } });
    inflight.push(fetch(`http://127.0.0.1:${pubPort}/api/publish`, { method: 'POST', body }).then(async (r) => {
      const j = await r.json();
      if (r.status !== 200 || j.error) failed++;
    }).catch(() => { failed++; }));
  }
  await Promise.all(inflight);
  const want = total * SUBS;
  const deadline = performance.now() + 15000;
  while (lat.length < want && performance.now() < deadline) await sleep(50);
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = pids.map(cpuSeconds).reduce((a, v, i) => a + v - cpu0[i], 0);
  socks.forEach((s) => s.terminate());
  lat.sort((a, b) => a - b);
  const q = (x) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(x * lat.length))] : null);
  const r = {
    scenario: label + (HISTORY ? '+history' : ''), subs: SUBS, rate: RATE, secs: SECS, publishes: total, failed_publishes: failed,
    deliveries: lat.length, expected: want, deliveries_per_s: Math.round(lat.length / elapsed),
    p50_ms: q(0.5)?.toFixed(2), p99_ms: q(0.99)?.toFixed(2), max_ms: lat.length ? lat[lat.length - 1].toFixed(2) : null,
    server_cpu_s: cpu.toFixed(2), cpu_ms_per_1000_deliveries: lat.length ? ((cpu * 1e6) / lat.length).toFixed(1) : null,
    cores: os.cpus().length,
  };
  console.log(JSON.stringify(r));
  return r;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gyre-bench-'));
// Single node, memory engine.
{
  const g = await startGyre(dir, 'single', {});
  await scenario('single-node-memory', g.port, [g.port], [g.pid]);
  g.child.kill('SIGKILL');
}
// Three nodes over NATS: publisher on node 1, subscribers on nodes 2 and 3.
{
  const natsPort = await freePort();
  const store = path.join(dir, 'nats');
  const nats = spawn(NATS, ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', store], { stdio: 'ignore' });
  children.push(nats);
  await waitPort(natsPort);
  const extra = {
    broker: { enabled: true, type: 'nats', nats: { url: `nats://127.0.0.1:${natsPort}`, prefix: 'bench' } },
    presence_manager: { enabled: true, type: 'nats' },
  };
  const nodes = [];
  for (let i = 1; i <= 3; i++) nodes.push(await startGyre(dir, `node${i}`, extra));
  await scenario('cross-node-nats', nodes[0].port, [nodes[1].port, nodes[2].port], [...nodes.map((n) => n.pid), nats.pid]);
  // History channels too: every publish is a JetStream CAS store + republish.
  nodes.forEach((n) => n.child.kill('SIGKILL'));
}
fs.rmSync(dir, { recursive: true, force: true });
process.exit(0);
