// The official centrifuge-js SDK over wss:// against the real gyre binary with
// `http_server.tls` (certificate files made here with the openssl CLI): a
// client trusting the CA connects, subscribes and receives a publication sent
// through the HTTP API over https; a client trusting another CA never
// connects; a rotated certificate (signed by a new CA) is served to new
// connections without a restart, while the connection made before keeps
// receiving publications.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

import { startGyre, connToken, waitEvent, withTimeout, sleep, API_KEY } from '../harness.mjs';

const T = 5000;

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA (`<name>.crt`, `<name>.key`) in `dir`. */
function makeCa(dir, name) {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '1', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  return fs.readFileSync(path.join(dir, `${name}.crt`), 'utf8');
}

/** A server certificate for localhost/127.0.0.1 signed by CA `ca`, written to `out`.crt/.key. */
function makeLeaf(dir, ca, out, cn) {
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', `${out}.key.tmp`, '-out', `${out}.csr`, '-subj', `/CN=${cn}`], dir);
  fs.writeFileSync(path.join(dir, `${out}.ext`),
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', `${out}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial',
    '-out', `${out}.crt.tmp`, '-days', '1', '-extfile', `${out}.ext`], dir);
  // Renamed into place (key first), as a Secret volume update swaps files.
  fs.renameSync(path.join(dir, `${out}.key.tmp`), path.join(dir, `${out}.key`));
  fs.renameSync(path.join(dir, `${out}.crt.tmp`), path.join(dir, `${out}.crt`));
}

/** A ws constructor trusting `ca` (NODE_EXTRA_CA_CERTS is read at start only). */
function wsTrusting(ca) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca });
    }
  };
}

/** The CN of the certificate a new TLS connection gets. */
function servedCn(port, ca) {
  return withTimeout(new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca }, () => {
      const cn = s.getPeerCertificate().subject.CN;
      s.end();
      resolve(cn);
    });
    s.on('error', reject);
  }), T, 'TLS handshake');
}

/** POST /api/<method> over https trusting `ca`. */
function api(port, ca, method, body) {
  return withTimeout(new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = https.request({
      host: '127.0.0.1', port, servername: 'localhost', ca, method: 'POST', path: `/api/${method}`,
      headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY, 'Content-Length': Buffer.byteLength(data) },
    }, (res) => {
      let text = '';
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(data);
  }), T, `API ${method}`);
}

describe('centrifuge-js over wss:// (http_server.tls)', () => {
  let dir;
  let server;
  let caPem;
  const clients = [];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gyre-js-tls-'));
    caPem = makeCa(dir, 'ca1');
    makeLeaf(dir, 'ca1', 'tls', 'gyre-1');
    server = await startGyre({
      http_server: {
        tls: { enabled: true, cert_pem: path.join(dir, 'tls.crt'), key_pem: path.join(dir, 'tls.key') },
      },
    }, { caPem });
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    if (server) await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function client(ca) {
    const c = new Centrifuge(server.wsUrl, {
      websocket: wsTrusting(ca), token: connToken('alice'), minReconnectDelay: 100, maxReconnectDelay: 300,
    });
    clients.push(c);
    return c;
  }

  it('connects, subscribes and receives a publication with the right CA', async () => {
    assert.ok(server.wsUrl.startsWith('wss://'), server.wsUrl);
    const c = client(caPem);
    const connected = waitEvent(c, 'connected', T);
    c.connect();
    const ctx = await connected;
    assert.equal(ctx.transport, 'websocket');
    const sub = c.newSubscription('tls-news');
    const subscribed = waitEvent(sub, 'subscribed', T);
    sub.subscribe();
    await subscribed;
    const got = waitEvent(sub, 'publication', T);
    const r = await api(server.port, caPem, 'publish', { channel: 'tls-news', data: { n: 1 } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual((await got).data, { n: 1 });
    c.disconnect();
  });

  it('never connects when trusting another CA', async () => {
    const other = makeCa(dir, 'other');
    const c = client(other);
    const error = waitEvent(c, 'error', T);
    let connected = false;
    c.on('connected', () => { connected = true; });
    c.connect();
    const e = await error;
    assert.equal(e.type, 'transport', JSON.stringify(e));
    await sleep(500);
    assert.equal(connected, false);
    assert.notEqual(c.state, 'connected');
    c.disconnect();
  });

  it('serves a rotated certificate to new connections without a restart', async () => {
    const before = client(caPem);
    const connected = waitEvent(before, 'connected', T);
    before.connect();
    await connected;
    const sub = before.newSubscription('tls-rotation');
    const subscribed = waitEvent(sub, 'subscribed', T);
    sub.subscribe();
    await subscribed;

    const ca2Pem = makeCa(dir, 'ca2');
    makeLeaf(dir, 'ca2', 'tls', 'gyre-2');
    const deadline = Date.now() + 10000;
    for (;;) {
      const cn = await servedCn(server.port, [caPem, ca2Pem]);
      if (cn === 'gyre-2') break;
      assert.ok(Date.now() < deadline, `still served ${cn} 10 s after rotation`);
      await sleep(200);
    }
    // A new client trusting only the new CA connects; one trusting only the old does not.
    const fresh = client(ca2Pem);
    const freshConnected = waitEvent(fresh, 'connected', T);
    fresh.connect();
    await freshConnected;
    const stale = client(caPem);
    const staleError = waitEvent(stale, 'error', T);
    stale.connect();
    assert.equal((await staleError).type, 'transport');
    stale.disconnect();

    // The connection made before rotation still receives publications.
    const got = waitEvent(sub, 'publication', T);
    const r = await api(server.port, ca2Pem, 'publish', { channel: 'tls-rotation', data: { after: 'rotation' } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual((await got).data, { after: 'rotation' });
    fresh.disconnect();
    before.disconnect();
  });
});
