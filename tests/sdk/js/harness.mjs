// Test harness for the real-SDK suites: starts the real `gyre` binary on a free
// port with a temporary JSON config, waits for /health/ready, and kills it on teardown.
// Also mints HS256 tokens and calls the HTTP server API.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..', '..');
export const gyreBin = process.env.GYRE_BIN || path.join(repoRoot, 'target', 'debug', 'gyre');

export const SECRET = 'gyre-sdk-test-hmac-secret-0123456789';
export const API_KEY = 'gyre-sdk-test-api-key';

// Children still alive when the process exits are killed (e.g. a test file that
// threw before its after() hook ran).
const liveChildren = new Set();
process.on('exit', () => {
  for (const child of liveChildren) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/** Rejects after `ms` with a message naming what was awaited. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with the args of the first `event` emitted by `emitter` that passes `pred`. */
export function waitEvent(emitter, event, ms, pred = () => true) {
  let handler;
  const p = new Promise((resolve) => {
    handler = (ctx) => {
      if (pred(ctx)) {
        emitter.off(event, handler);
        resolve(ctx);
      }
    };
    emitter.on(event, handler);
  });
  return withTimeout(p, ms, `event '${event}'`).finally(() => emitter.off(event, handler));
}

/** Records every event of the given names, in order, for later assertions. */
export function recordEvents(emitter, names) {
  const log = [];
  for (const name of names) {
    emitter.on(name, (ctx) => log.push({ event: name, ctx, at: Date.now() }));
  }
  return log;
}

/** Asks the OS for a free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Deep merge (objects only; arrays and scalars of `b` replace those of `a`). */
export function merge(a, b) {
  const out = { ...a };
  for (const [k, v] of Object.entries(b || {})) {
    out[k] = isObject(v) && isObject(a[k]) ? merge(a[k], v) : v;
  }
  return out;
}

/** The config every suite starts from (Centrifugo v6 keys). */
export function baseConfig(port) {
  return {
    http_server: { port },
    health: { enabled: true },
    log: { level: 'debug' },
    client: {
      token: { hmac_secret_key: SECRET },
      allowed_origins: ['*'],
    },
    http_api: { key: API_KEY },
    rpc: { ping: { enabled: true } },
    channel: {
      without_namespace: {
        allow_subscribe_for_client: true,
        allow_publish_for_subscriber: true,
      },
      namespaces: [
        { name: 'ro', allow_subscribe_for_client: true },
      ],
    },
  };
}

/**
 * Starts gyre with baseConfig(port) deep-merged with `overrides`.
 * Returns { port, httpUrl, wsUrl, apiUrl, config, api(), stop(), logs() }.
 */
export async function startGyre(overrides = {}, { startTimeoutMs = 20000, caPem = null } = {}) {
  if (!fs.existsSync(gyreBin)) {
    throw new Error(`gyre binary not found at ${gyreBin} (build it or set GYRE_BIN)`);
  }
  // A port freed by the OS may be taken by someone else before gyre binds it:
  // retry a few times with a new port if gyre exits early.
  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    try {
      return await startOnce(port, overrides, startTimeoutMs, caPem);
    } catch (e) {
      lastErr = e;
      if (!e.exitedEarly) throw e;
    }
  }
  throw lastErr;
}

/** GET over https trusting `ca` (fetch has no per-request CA): resolves the status. */
export function httpsStatus(url, ca, timeoutMs = 1000) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

async function startOnce(port, overrides, startTimeoutMs, caPem) {
  const config = merge(baseConfig(port), overrides);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gyre-js-'));
  const configPath = path.join(dir, 'config.json');
  fs.writeFileSync(configPath, JSON.stringify(config, null, 2));

  const child = spawn(gyreBin, ['--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '1' },
  });
  liveChildren.add(child);
  let output = '';
  const keep = (chunk) => {
    output += chunk.toString();
    if (output.length > 400000) output = output.slice(-200000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      liveChildren.delete(child);
      resolve(exited);
    });
  });

  // With `caPem` the server serves TLS (http_server.tls) for `localhost`.
  const httpUrl = caPem ? `https://localhost:${port}` : `http://127.0.0.1:${port}`;
  const deadline = Date.now() + startTimeoutMs;
  let healthy = false;
  while (Date.now() < deadline) {
    if (exited) break;
    try {
      let status;
      if (caPem) {
        status = await httpsStatus(`${httpUrl}/health/ready`, caPem);
      } else {
        const res = await fetch(`${httpUrl}/health/ready`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        status = res.status;
      }
      if (status === 200) { healthy = true; break; }
    } catch { /* not listening yet */ }
    await sleep(50);
  }
  if (!healthy) {
    const early = exited !== null;
    if (!early) child.kill('SIGKILL');
    await exitPromise;
    fs.rmSync(dir, { recursive: true, force: true });
    const err = new Error(
      `gyre did not become healthy on port ${port} within ${startTimeoutMs} ms` +
      (early ? ` (exited: ${JSON.stringify(exited)})` : '') +
      `\nconfig: ${JSON.stringify(config)}\n--- gyre output ---\n${output.slice(-8000)}`);
    err.exitedEarly = early && /address|in use|bind/i.test(output);
    throw err;
  }

  // The server's output is kept in tests/artifacts/ (gitignored) for failed CI runs.
  const saveLog = () => {
    try {
      const dirA = path.join(repoRoot, 'tests', 'artifacts');
      fs.mkdirSync(dirA, { recursive: true });
      fs.writeFileSync(path.join(dirA, `gyre-js-${port}.log`), output);
    } catch { /* best effort */ }
  };
  const server = {
    port,
    config,
    configPath,
    httpUrl,
    wsUrl: caPem ? `wss://localhost:${port}/connection/websocket` : `ws://127.0.0.1:${port}/connection/websocket`,
    apiUrl: `${httpUrl}/api`,
    logs: () => output,
    pid: child.pid,
    /** Sends `sig` to the process (e.g. SIGTERM, as kubelet does after preStop). */
    signal: (sig) => { if (!exited) child.kill(sig); },
    /** Resolves with { code, signal } once the process has exited. */
    exited: () => exitPromise,
    /** POST /api/<method> with the API key; resolves { status, body(parsed or text) }. */
    async api(method, body = {}, { key = API_KEY, timeoutMs = 5000 } = {}) {
      const res = await fetch(`${httpUrl}/api/${method}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-API-Key': key },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
      const text = await res.text();
      let parsed = text;
      try { parsed = JSON.parse(text); } catch { /* keep text */ }
      return { status: res.status, body: parsed };
    },
    /** Like api() but throws unless HTTP 200 and `result` present; returns result. */
    async apiOk(method, body = {}) {
      const { status, body: b } = await server.api(method, body);
      if (status !== 200 || !isObject(b) || b.error || !('result' in b)) {
        throw new Error(`API ${method} ${JSON.stringify(body)} failed: ${status} ${JSON.stringify(b)}`);
      }
      return b.result;
    },
    async stop() {
      saveLog();
      if (exited) return exited;
      child.kill('SIGTERM');
      const res = await Promise.race([exitPromise, sleep(5000).then(() => null)]);
      if (res === null) {
        child.kill('SIGKILL');
        await exitPromise;
      }
      fs.rmSync(dir, { recursive: true, force: true });
      saveLog();
      return exited;
    },
  };
  return server;
}

// ---------------------------------------------------------------- tokens

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

/** Signs `claims` as an HS256 JWT. */
export function signHS256(claims, secret = SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = b64url(crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest());
  return `${header}.${payload}.${sig}`;
}

const now = () => Math.floor(Date.now() / 1000);

/** Connection token: sub + exp (ttl seconds from now; negative = already expired). */
export function connToken(sub, { ttl = 3600, secret = SECRET, ...extra } = {}) {
  return signHS256({ sub, exp: now() + ttl, ...extra }, secret);
}

/** Subscription token for `channel`. */
export function subToken(sub, channel, { ttl = 3600, secret = SECRET, ...extra } = {}) {
  return signHS256({ sub, channel, exp: now() + ttl, ...extra }, secret);
}

let counter = 0;
/** A unique name for channels and users of one test. */
export function uniq(prefix) {
  counter += 1;
  return `${prefix}${process.pid}x${counter}x${crypto.randomBytes(3).toString('hex')}`;
}
