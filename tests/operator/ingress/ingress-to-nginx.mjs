// Translates an Ingress rendered by gyre-operator into an nginx.conf, doing for the paths and
// annotations the operator emits what ingress-nginx does for them, so Debian's nginx can stand
// in for the Ingress controller in tests:
//   - every rule path (pathType Prefix) becomes a location proxied to the backend Service's pods,
//     with ingress-nginx's WebSocket upgrade headers; anything else answers 404;
//   - proxy-read-timeout / proxy-send-timeout / proxy-buffering map to the same directives;
//   - affinity: cookie (with session-cookie-name) becomes consistent hashing on that cookie,
//     setting it on the first response like ingress-nginx's Lua balancer does.
// Annotations it does not know make it fail: a silently ignored annotation would make the test
// claim more than it checks.
const NGINX = 'nginx.ingress.kubernetes.io/';
const KNOWN = new Set([
  'proxy-read-timeout', 'proxy-send-timeout', 'proxy-buffering',
  'affinity', 'affinity-mode', 'session-cookie-name',
]);

/**
 * @param ingress  the Ingress object (JSON)
 * @param endpoints  { [serviceName]: ["127.0.0.1:PORT", ...] } : the Service's ready pods
 * @param listen  port nginx listens on
 * @param dir  writable prefix directory (pid, logs, temp files)
 * @param workerConnections  nginx's worker_connections (default 1024; load tests need more)
 */
export function nginxConf(ingress, endpoints, { listen, dir, workerConnections = 1024 }) {
  const ann = ingress.metadata.annotations || {};
  for (const k of Object.keys(ann)) {
    if (k.startsWith(NGINX) && !KNOWN.has(k.slice(NGINX.length))) {
      throw new Error(`ingress-to-nginx: annotation ${k} is not translated`);
    }
  }
  const get = (k) => ann[NGINX + k];
  const affinityCookie = get('affinity') === 'cookie' ? (get('session-cookie-name') || 'INGRESSCOOKIE') : null;
  const upstreams = new Map();
  const locations = [];
  for (const rule of ingress.spec.rules) {
    for (const p of rule.http.paths) {
      if (p.pathType !== 'Prefix') throw new Error(`ingress-to-nginx: pathType ${p.pathType} not supported`);
      const svc = p.backend.service.name;
      const eps = endpoints[svc];
      if (!eps || eps.length === 0) throw new Error(`ingress-to-nginx: no endpoints for Service ${svc}`);
      const up = `svc_${svc.replace(/[^A-Za-z0-9_]/g, '_')}`;
      upstreams.set(up, eps);
      // Prefix semantics: the path itself and anything below it at a '/' boundary.
      const base = p.path.replace(/\/+$/, '') || '/';
      const matches = base === '/' ? ['location / '] : [`location = ${base} `, `location ${base}/ `];
      for (const m of matches) locations.push({ match: m, upstream: up });
    }
  }
  const lines = [];
  const w = (s) => lines.push(s);
  w(`pid ${dir}/nginx.pid;`);
  w(`error_log ${dir}/error.log info;`);
  w('worker_processes 1;');
  // Each proxied connection takes two: the client's and the upstream's.
  if (workerConnections > 1024) w(`worker_rlimit_nofile ${workerConnections * 2 + 64};`);
  w(`events { worker_connections ${workerConnections}; }`);
  w('http {');
  w('  log_format gyre \'$request $status upstream=$upstream_addr cookie="$http_cookie"\';');
  w(`  access_log ${dir}/access.log gyre;`);
  for (const t of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) w(`  ${t}_temp_path ${dir}/${t}_temp;`);
  w('  map $http_upgrade $connection_upgrade { default upgrade; "" close; }');
  if (affinityCookie) {
    w(`  map $cookie_${affinityCookie} $gyre_affinity_key { "" $request_id; default $cookie_${affinityCookie}; }`);
    w(`  map $cookie_${affinityCookie} $gyre_affinity_set { "" "${affinityCookie}=$request_id; Path=/; HttpOnly"; default ""; }`);
  }
  for (const [name, eps] of upstreams) {
    w(`  upstream ${name} {`);
    if (affinityCookie) w('    hash $gyre_affinity_key consistent;');
    for (const e of eps) w(`    server ${e};`);
    w('  }');
  }
  w('  server {');
  w(`    listen 127.0.0.1:${listen};`);
  for (const l of locations) {
    w(`    ${l.match}{`);
    w(`      proxy_pass http://${l.upstream};`);
    w('      proxy_http_version 1.1;');
    w('      proxy_set_header Upgrade $http_upgrade;');
    w('      proxy_set_header Connection $connection_upgrade;');
    w('      proxy_set_header Host $host;');
    w('      proxy_set_header X-Forwarded-For $remote_addr;');
    const rt = get('proxy-read-timeout');
    if (rt) w(`      proxy_read_timeout ${Number(rt)}s;`);
    const st = get('proxy-send-timeout');
    if (st) w(`      proxy_send_timeout ${Number(st)}s;`);
    const buf = get('proxy-buffering');
    if (buf) w(`      proxy_buffering ${buf === 'off' ? 'off' : 'on'};`);
    if (affinityCookie) w('      add_header Set-Cookie $gyre_affinity_set always;');
    w('    }');
  }
  if (!locations.some((l) => l.match === 'location / ')) w('    location / { return 404; }');
  w('  }');
  w('}');
  return lines.join('\n') + '\n';
}
