// Multi-node helpers for the centrifuge-js suites: a private nats-server (own
// free port and store directory; never the system one on 4222) and N gyre
// processes sharing it with broker/presence_manager type "nats".
// The binary is $NATS_SERVER_BIN, else nats-server on PATH, else
// /usr/sbin/nats-server (Debian); a missing binary fails with a clear message.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { freePort, sleep, startGyre, uniq } from './harness.mjs';

export function natsServerBin() {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const p = path.join(dir, 'nats-server');
    if (dir && fs.existsSync(p)) return p;
  }
  if (fs.existsSync('/usr/sbin/nats-server')) return '/usr/sbin/nats-server';
  throw new Error('nats-server not found: set NATS_SERVER_BIN or install it (Debian: apt-get install nats-server; tests/install-deps.sh does it)');
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** Starts nats-server -js on a free port; returns { url, stop() }. */
export async function startNats() {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gyre-nats-js-'));
  const child = spawn(natsServerBin(), ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
  process.on('exit', () => { try { child.kill('SIGKILL'); } catch { /* gone */ } });
  const deadline = Date.now() + 10000;
  while (!(await canConnect(port))) {
    if (Date.now() > deadline) throw new Error(`nats-server did not listen on ${port}`);
    await sleep(20);
  }
  return {
    url: `nats://127.0.0.1:${port}`,
    async stop() {
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export const REC_NAMESPACE = {
  name: 'rec',
  history_size: 1000,
  history_ttl: '300s',
  force_recovery: true,
  presence: true,
  join_leave: true,
  force_push_join_leave: true,
  allow_subscribe_for_client: true,
  allow_publish_for_subscriber: true,
  allow_presence_for_subscriber: true,
  allow_history_for_subscriber: true,
};

/** n gyre nodes on one NATS (unique prefix per cluster). */
export async function startCluster(natsUrl, n = 3) {
  const prefix = uniq('gyre');
  const nodes = [];
  for (let i = 0; i < n; i++) {
    nodes.push(await startGyre({
      node: { name: `node${i + 1}` },
      broker: { enabled: true, type: 'nats', nats: { url: natsUrl, prefix } },
      presence_manager: { enabled: true, type: 'nats' },
      channel: { namespaces: [{ name: 'ro', allow_subscribe_for_client: true }, REC_NAMESPACE] },
    }));
  }
  return nodes;
}
