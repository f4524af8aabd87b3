#!/usr/bin/env bash
# The managed NATS with TLS (nats.server.tls), run for real: what the operator renders for a
# TLS instance, started as real processes.
#
#   1. `gyre-operator render --json` of a Centrifugo with nats.managed + nats.server.tls.issuerRef;
#      out of it: nats.conf (ConfigMap <name>-nats-config), the server Certificate's dnsNames,
#      Gyre's config.json (ConfigMap <name>-config) and the NATS URL the Deployment sets.
#   2. Certificates made here with the openssl CLI, as cert-manager's CA issuer would: the
#      server's for exactly the rendered dnsNames, the client's for Gyre; written as the Secret
#      volumes hold them (tls.crt, tls.key, ca.crt) at the paths the pods mount them.
#   3. A real nats-server with that nats.conf, a real gyre with that config.json. The host name
#      the pods dial (the rendered URL's, `<name>-nats`) does not resolve here, so gyre dials
#      127.0.0.1 and checks the certificate against that name (`broker.nats.tls.server_name`):
#      the same check a pod makes.
#   Checks: gyre becomes ready over mutual TLS and a publication to a history channel is in its
#   history (JetStream, over TLS); a gyre without a client certificate and one with a certificate
#   of another CA are refused by nats-server (never ready; nats-server logs the handshake
#   failure); the server certificate renewed in place plus SIGHUP (what the reloader sidecar
#   sends) is served to the next handshake while the running gyre keeps publishing. As root, the
#   rendered 3-server nats.conf as a real cluster (see the clustered part below).
#
# Usage: nats-tls.sh OPERATOR_BIN GYRE_BIN [NATS_SERVER_BIN]
set -euo pipefail
OP="$1"
GYRE="$2"
NATS="${3:-${NATS_SERVER_BIN:-/usr/sbin/nats-server}}"
for b in "$OP" "$GYRE" "$NATS"; do [ -x "$b" ] || { echo "nats-tls.sh: $b is not executable" >&2; exit 1; }; done
command -v openssl > /dev/null || { echo "nats-tls.sh: openssl CLI missing" >&2; exit 1; }

W="$(mktemp -d /tmp/gyre-nats-tls.XXXXXX)"
pids=()
cleanup() {
  # start_gyre runs in a command substitution (a subshell): its pids come through a file.
  [ -f "$W/gyre.pids" ] && while read -r p; do pids+=("$p"); done < "$W/gyre.pids"
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

cat > "$W/chat.yaml" << 'EOF'
apiVersion: centrifugo.gyre.dev/v1alpha1
kind: Centrifugo
metadata: {name: chat, namespace: prod}
spec:
  replicas: 2
  namespaces:
    - {name: chat, historySize: 10, historyTtl: 300s}
  nats:
    managed: true
    server:
      replicas: 1
      tls:
        issuerRef: {name: nats-ca, kind: ClusterIssuer}
EOF
"$OP" render -f "$W/chat.yaml" --json > "$W/rendered.json"

python3 - "$W" << 'PY'
import json, sys, os
w = sys.argv[1]
objs = json.load(open(f"{w}/rendered.json"))
def one(kind, name):
    m = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(m) == 1, f"{kind}/{name}: {len(m)} rendered"
    return m[0]
open(f"{w}/nats.conf", "w").write(one("ConfigMap", "chat-nats-config")["data"]["nats.conf"])
open(f"{w}/config.json", "w").write(one("ConfigMap", "chat-config")["data"]["config.json"])
cert = one("Certificate", "chat-nats-server")["spec"]
open(f"{w}/server-dns", "w").write(",".join("DNS:" + d for d in cert["dnsNames"]))
one("Certificate", "chat-nats-client")
dep = one("Deployment", "chat")["spec"]["template"]["spec"]
env = {e["name"]: e.get("value") for e in dep["containers"][0]["env"]}
open(f"{w}/url", "w").write(env["CENTRIFUGO_BROKER_NATS_URL"])
mounts = {m["name"]: m["mountPath"] for m in dep["containers"][0]["volumeMounts"]}
vols = {v["name"]: v for v in dep["volumes"]}
assert vols["nats-tls"]["secret"]["secretName"] == "chat-nats-client-tls", vols
open(f"{w}/client-dir", "w").write(mounts["nats-tls"])
sts = one("StatefulSet", "chat-nats")["spec"]["template"]["spec"]
nm = {m["name"]: m["mountPath"] for m in sts["containers"][0]["volumeMounts"]}
open(f"{w}/server-dir", "w").write(nm["nats-tls"])
print("rendered: nats.conf, config.json, URL", env["CENTRIFUGO_BROKER_NATS_URL"],
      "server cert names", cert["dnsNames"])
PY

url="$(cat "$W/url")"
case "$url" in tls://*) ;; *) echo "nats-tls.sh: the pods' NATS URL is not tls://: $url" >&2; exit 1 ;; esac
host="$(echo "$url" | sed -E 's#^tls://([^:/]+).*#\1#')"
client_dir="$(cat "$W/client-dir")"
server_dir="$(cat "$W/server-dir")"

# --- certificates, as cert-manager's CA issuer would write them
ec=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256)
mkca() { # dir
  mkdir -p "$1"
  openssl genpkey "${ec[@]}" -out "$1/ca.key" 2> /dev/null
  openssl req -x509 -new -key "$1/ca.key" -days 1 -subj "/CN=$(basename "$1")" -out "$1/ca.crt"
}
leaf() { # ca-dir out-dir cn san eku
  mkdir -p "$2"
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$4" "$5" > "$2/ext.cnf"
  openssl genpkey "${ec[@]}" -out "$2/tls.key" 2> /dev/null
  openssl req -new -key "$2/tls.key" -subj "/CN=$3" -out "$2/tls.csr"
  openssl x509 -req -in "$2/tls.csr" -CA "$1/ca.crt" -CAkey "$1/ca.key" -CAcreateserial -days 1 \
    -extfile "$2/ext.cnf" -out "$2/tls.crt" 2> /dev/null
  cp "$1/ca.crt" "$2/ca.crt"
}
mkca "$W/ca"
mkca "$W/other-ca"
leaf "$W/ca" "$W$server_dir" chat-nats "$(cat "$W/server-dns")" serverAuth,clientAuth
leaf "$W/ca" "$W$client_dir" chat DNS:chat clientAuth
leaf "$W/other-ca" "$W/other-client" chat DNS:chat clientAuth

# --- nats-server with the rendered nats.conf (in-pod paths moved under $W)
free_ports() { python3 -c 'import socket
ss=[socket.socket() for _ in range('"$1"')]
[s.bind(("127.0.0.1",0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])'; }
read -r nport mport < <(free_ports 2)
sed -e "s#\"$server_dir/#\"$W$server_dir/#g" -e "s#\"/data\"#\"$W/data\"#" \
  -e "s#\"/var/run/nats/nats.pid\"#\"$W/nats.pid\"#" "$W/nats.conf" > "$W/nats.local.conf"
grep -q "verify: true" "$W/nats.local.conf"
POD_NAME=chat-nats-0 "$NATS" -c "$W/nats.local.conf" -a 127.0.0.1 -p "$nport" -m "$mport" > "$W/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$mport/healthz?js-enabled-only=true" > /dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$mport/healthz?js-enabled-only=true" > /dev/null \
  || { cat "$W/nats.log"; echo "nats-server with the rendered TLS nats.conf did not come up" >&2; exit 1; }

# --- gyre with the rendered config.json; only the TLS paths moved under $W and server_name set
gyre_cfg() { # out-file client-dir-or-empty
  python3 - "$W/config.json" "$1" "$client_dir" "$W" "${2:-}" "$host" << 'PY'
import json, sys
src, out, cdir, w, mine, host = sys.argv[1:]
c = json.load(open(src))
t = c["broker"]["nats"]["tls"]
assert t["enabled"] is True and t["cert_pem"].startswith(cdir), t
for k in ("server_ca_pem", "cert_pem", "key_pem"):
    t[k] = t[k].replace(cdir, w + cdir)
if mine == "none":
    del t["cert_pem"], t["key_pem"]
elif mine:
    t["cert_pem"], t["key_pem"] = mine + "/tls.crt", mine + "/tls.key"
t["server_name"] = host
json.dump(c, open(out, "w"))
PY
}
start_gyre() { # name config
  read -r p ip < <(free_ports 2)
  CENTRIFUGO_BROKER_NATS_URL="tls://127.0.0.1:$nport" \
  CENTRIFUGO_HTTP_API_KEY=ci-key \
  CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY=ci-hmac-secret-0123456789abcdef0123456789 \
    "$GYRE" -c "$2" --http_server.address 127.0.0.1 --http_server.port "$p" \
    --http_server.internal_port "$ip" > "$W/$1.log" 2>&1 &
  echo "$!" >> "$W/gyre.pids"
  echo "$ip"
}
ready() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health/ready" || true; }
wait_ready() { # port seconds -> 0 when ready
  for _ in $(seq $(($2 * 10))); do
    [ "$(ready "$1")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}
api() { # port method body
  curl -sf -X POST "http://127.0.0.1:$1/api/$2" -H 'X-API-Key: ci-key' -H 'Content-Type: application/json' -d "$3"
}

gyre_cfg "$W/gyre.json" ""
gport="$(start_gyre gyre "$W/gyre.json")"
wait_ready "$gport" 30 || { tail -20 "$W/gyre.log"; echo "gyre did not get ready over TLS" >&2; exit 1; }
api "$gport" publish '{"channel": "chat:room", "data": {"n": 1}}' > "$W/pub1.json"
api "$gport" history '{"channel": "chat:room", "limit": 10}' > "$W/hist1.json"
python3 - "$W/hist1.json" << 'PY'
import json, sys
r = json.load(open(sys.argv[1]))["result"]
pubs = r.get("publications", [])
assert [p["data"] for p in pubs] == [{"n": 1}], r
print("ok: gyre ready over mutual TLS; publication in chat:room history (JetStream over TLS):", pubs[0]["data"])
PY

# --- refused: no client certificate, and a certificate from another CA
gyre_cfg "$W/nocert.json" none
gyre_cfg "$W/othercert.json" "$W/other-client"
np="$(start_gyre nocert "$W/nocert.json")"
op="$(start_gyre othercert "$W/othercert.json")"
sleep 5
for pair in "nocert:$np" "othercert:$op"; do
  name="${pair%%:*}"
  code="$(ready "${pair#*:}")"
  [ "$code" = 503 ] || { tail -20 "$W/$name.log"; echo "gyre $name: /health/ready $code, want 503" >&2; exit 1; }
done
for why in "client didn't provide a certificate" "certificate signed by unknown authority"; do
  grep -q "TLS handshake error: .*$why" "$W/nats.log" \
    || { cat "$W/nats.log"; echo "nats-server did not log a refused handshake: $why" >&2; exit 1; }
done
echo "ok: without a client certificate and with another CA's: not ready (503); nats-server refused both:"
for why in "client didn't provide a certificate" "certificate signed by unknown authority"; do
  grep -m1 "TLS handshake error: .*$why" "$W/nats.log"
done

# --- renewal: new server key and certificate in place, then SIGHUP (the reloader's signal)
served_fp() { # fingerprint of the certificate nats-server presents to a new client
  python3 - "$nport" "$W$client_dir" "$host" << 'PY'
import hashlib, socket, ssl, sys
port, d, host = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
f = s.makefile("rb")
assert f.readline().startswith(b"INFO "), "no INFO"
ctx = ssl.create_default_context(cafile=d + "/ca.crt")
ctx.load_cert_chain(d + "/tls.crt", d + "/tls.key")
t = ctx.wrap_socket(s, server_hostname=host)
print(hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest())
PY
}
before="$(served_fp)"
leaf "$W/ca" "$W/renewed" chat-nats "$(cat "$W/server-dns")" serverAuth,clientAuth
cp "$W/renewed/tls.crt" "$W/renewed/tls.key" "$W$server_dir/"
[ "$(served_fp)" = "$before" ] || { echo "nats-server served the new file before a reload?" >&2; exit 1; }
kill -HUP "$nats_pid"
after=""
for _ in $(seq 50); do
  after="$(served_fp)"
  [ "$after" != "$before" ] && break
  sleep 0.1
done
want="$(openssl x509 -in "$W/renewed/tls.crt" -outform DER | sha256sum | cut -d' ' -f1)"
[ "$after" = "$want" ] || { cat "$W/nats.log"; echo "after SIGHUP nats-server serves $after, want $want" >&2; exit 1; }
api "$gport" publish '{"channel": "chat:room", "data": {"n": 2}}' > /dev/null
hist2="$(api "$gport" history '{"channel": "chat:room", "limit": 10}')"
grep -q '"n":2' <<< "$hist2" \
  || { echo "gyre stopped publishing after the server certificate was reloaded" >&2; exit 1; }
echo "ok: renewed server certificate served after SIGHUP (not before); the running gyre keeps publishing"
echo "nats-tls.sh: single-server part passed"

# --- clustered: three servers with the rendered 3-server nats.conf, routes over mutual TLS
# The routes dial the per-pod names (<name>-nats-<i>.<name>-nats-headless) and check them against
# the server certificate. Those names resolve only in a cluster, so this part runs in a private
# network and mount namespace (unshare) whose /etc/hosts maps them to loopback addresses; the
# host's /etc/hosts and network are untouched. Needs root (CAP_SYS_ADMIN) for unshare.
if [ "$(id -u)" != 0 ] || ! unshare --mount --net --fork true 2> /dev/null; then
  echo "SKIPPED: clustered route TLS (needs root and unshare for a private /etc/hosts)"
  exit 0
fi
sed -e 's/replicas: 1$/replicas: 3/' "$W/chat.yaml" > "$W/chat3.yaml"
"$OP" render -f "$W/chat3.yaml" --json > "$W/rendered3.json"
python3 - "$W" << 'PY'
import json, sys
w = sys.argv[1]
objs = json.load(open(f"{w}/rendered3.json"))
conf = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "chat-nats-config"][0]
open(f"{w}/nats3.conf", "w").write(conf["data"]["nats.conf"])
cert = [o for o in objs if o["kind"] == "Certificate" and o["metadata"]["name"] == "chat-nats-server"][0]
open(f"{w}/server3-dns", "w").write(",".join("DNS:" + d for d in cert["spec"]["dnsNames"]))
PY
grep -q '"tls://chat-nats-2.chat-nats-headless:6222"' "$W/nats3.conf"
leaf "$W/ca" "$W/srv3" chat-nats "$(cat "$W/server3-dns")" serverAuth,clientAuth
# Without the per-pod names (only the Service's), the same cluster must not form: the routes
# check the names, so the names the operator puts into the server Certificate are needed.
leaf "$W/ca" "$W/srv3-service-only" chat-nats "$(cat "$W/server-dns")" serverAuth,clientAuth
cat > "$W/cluster.sh" << 'EOF2'
set -euo pipefail
W="$1"; NATS="$2"
ip link set lo up
: > "$W/hosts"
for i in 0 1 2; do
  echo "127.0.1.$((i + 1)) chat-nats-$i.chat-nats-headless" >> "$W/hosts"
done
mount --bind "$W/hosts" /etc/hosts
run_cluster() { # cert-dir tag
  for i in 0 1 2; do
    a="127.0.1.$((i + 1))"
    rm -rf "$W/data$i-$2"
    sed -e "s#0\.0\.0\.0#$a#g" -e "s#\"/etc/nats-tls/#\"$1/#g" -e "s#\"/data\"#\"$W/data$i-$2\"#" \
      -e "s#\"/var/run/nats/nats.pid\"#\"$W/nats$i-$2.pid\"#" "$W/nats3.conf" > "$W/nats3-$i-$2.conf"
    POD_NAME="chat-nats-$i" "$NATS" -c "$W/nats3-$i-$2.conf" > "$W/nats3-$i-$2.log" 2>&1 &
  done
}
routes_and_health() { # -> "routes-per-server:healthy-count"
  local out="" healthy=0
  for i in 0 1 2; do
    a="127.0.1.$((i + 1))"
    n="$(curl -sf "http://$a:8222/routez" | python3 -c 'import json,sys; print(json.load(sys.stdin)["num_routes"])' || echo 0)"
    out="$out$n,"
    curl -sf "http://$a:8222/healthz" > /dev/null && healthy=$((healthy + 1))
  done
  echo "$out:$healthy"
}
stop_cluster() {
  kill $(jobs -p) 2> /dev/null || true
  wait 2> /dev/null || true
}
# A failed check must not leave servers running in the namespace.
trap stop_cluster EXIT

run_cluster "$W/srv3" good
state=""
for _ in $(seq 300); do
  state="$(routes_and_health)"
  [ "$state" = "2,2,2,:3" ] && break
  sleep 0.2
done
if [ "$state" != "2,2,2,:3" ]; then
  tail -n 15 "$W"/nats3-*-good.log
  echo "the 3-server TLS cluster did not form (routes per server, healthy servers: $state)" >&2
  exit 1
fi
for i in 0 1 2; do
  curl -sf "http://127.0.1.$((i + 1)):8222/varz" | python3 -c 'import json,sys
c = json.load(sys.stdin)["cluster"]
assert c["tls_required"] and c["tls_verify"], c'
done
echo "ok: 3 servers from the rendered nats.conf: every server routes to the other two over mutual TLS (cluster tls_required and tls_verify), JetStream healthy on all"
stop_cluster

run_cluster "$W/srv3-service-only" bad
sleep 8
state="$(routes_and_health)"
stop_cluster
[ "$state" = "0,0,0,:0" ] || { echo "a cluster formed with a certificate lacking the pod names: $state" >&2; exit 1; }
# One grep, no pipe: with pipefail, `grep -q` ending a pipeline early fails the writer (SIGPIPE).
grep -hq "handshake error.*chat-nats-[012]\.chat-nats-headless" "$W"/nats3-*-bad.log \
  || { tail -n 5 "$W"/nats3-*-bad.log; echo "no route handshake error naming a pod" >&2; exit 1; }
echo "ok: with a certificate lacking the per-pod names no route forms:"
grep -h -m1 "handshake error.*chat-nats-[012]\.chat-nats-headless" "$W"/nats3-*-bad.log
EOF2
unshare --mount --net --fork bash "$W/cluster.sh" "$W" "$NATS"
echo "nats-tls.sh: clustered part passed"
echo "nats-tls.sh: all passed"
