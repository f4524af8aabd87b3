#!/usr/bin/env bash
# Cluster figures (issue 13): three gyre nodes on one private nats-server,
# SUBS_PER_NODE subscribers on each node, the publisher on node 1; and the
# same load on one node with the memory engine, in the same run.
#
#   bench/cluster.sh [--out DIR] [--runs N] [--scenarios "cluster-1ch cluster-1000ch"]
#
# Environment: GYRE_BIN (default target/release/gyre), LOADGEN (default
# target/release/gyre-loadgen), NATS_SERVER_BIN, SUBS_PER_NODE (6000).
# Nothing is pinned: four servers and the load generator share the two cores,
# so the figures are CPU costs and delivery counts more than latencies. Every
# run appends one JSON line (gyre-loadgen's, plus the topology) to
# DIR/results.jsonl; DIR/table.md summarises them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=bench/results/cluster-1
RUNS=1
SCENARIOS="cluster-1ch cluster-1000ch"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --scenarios) SCENARIOS=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
GYRE_BIN=${GYRE_BIN:-$ROOT/target/release/gyre}
LOADGEN=${LOADGEN:-$ROOT/target/release/gyre-loadgen}
NATS=${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}
SUBS_PER_NODE=${SUBS_PER_NODE:-6000}
[ -x "$GYRE_BIN" ] && [ -x "$LOADGEN" ] || cargo build --release -p gyre-server -p gyre-loadgen
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log() { echo "[cluster $(date -u +%H:%M:%S)] $*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# scenario -> "channels msgs pub_rate pub_conns"
scenario_params() {
    case "$1" in
        cluster-1ch)    echo "1 50 5 2" ;;
        cluster-1000ch) echo "1000 10000 2000 8" ;;
        *) echo "unknown scenario $1" >&2; return 1 ;;
    esac
}

TOKEN_SECRET="bench-secret-0123456789abcdef0123456789"

start_gyre() { # name port broker-json
    cat >"$WORK/$1.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $2},
  "log": {"level": "error"},
  "node": {"name": "$1"},
  "client": {"token": {"hmac_secret_key": "$TOKEN_SECRET"}, "allowed_origins": ["*"]},
  "http_api": {"key": "apikey"},
  "channel": {"without_namespace": {"allow_subscribe_for_client": true}}$3
}
EOF
    "$GYRE_BIN" --config "$WORK/$1.json" >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
    wait_port "$2" || { log "$1 did not listen"; tail -5 "$WORK/$1.log" >&2; exit 1; }
}

stop_all() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 3; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; PIDS=(); sleep 2; }

run_loadgen() { # scenario run topology pub-port sub-ports pids(comma-separated, named by ROLES)
    local channels msgs rate pubconns
    read -r channels msgs rate pubconns < <(scenario_params "$1")
    local conns=$(( SUBS_PER_NODE * 3 ))
    log "$1 run $2 $3: conns=$conns channels=$channels msgs=$msgs rate=$rate"
    local line
    line=$("$LOADGEN" run --target gyre-json --addr "127.0.0.1:$4" --sub-addr "$5" \
        --scenario "$1" --run "$2" --conns "$conns" --channels "$channels" --msgs "$msgs" \
        --pub-rate "$rate" --pub-conns "$pubconns" --connect-rate 2000 --server-pid "$6" \
        --token-secret "$TOKEN_SECRET" --deadline-s 300)
    line=$(echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); r["topology"]=sys.argv[1]; r["roles"]=dict(zip(sys.argv[3].split(","), sys.argv[2].split(","))); print(json.dumps(r))' "$3" "$6" "$ROLES")
    echo "$line" >>"$RESULTS"
    echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("   ready=%s lost=%s p50=%s p99=%s deliv/s=%s published=%s cpu=%s" % (r["ready"], r["lost"], (r["latency_ms"] or {}).get("p50"), (r["latency_ms"] or {}).get("p99"), r["delivered_per_s"], r["published"], {k: r["server_cpu_s_by_pid"].get(v) for k, v in r["roles"].items()}))' >&2
}

for scen in $SCENARIOS; do
    scenario_params "$scen" >/dev/null
    for run in $(seq 1 "$RUNS"); do
        # One node, memory engine: every subscriber on it.
        p=$(free_port); start_gyre single "$p" ""
        ROLES=node1
        run_loadgen "$scen" "$run" single "$p" "127.0.0.1:$p" "$LAST_PID"
        stop_all
        # Three nodes over NATS: subscribers spread evenly, publisher on node 1.
        np=$(free_port)
        "$NATS" -a 127.0.0.1 -p "$np" -js -sd "$WORK/nats-$scen-$run" >"$WORK/nats.log" 2>&1 &
        PIDS+=($!); nats_pid=$!
        wait_port "$np" || { log "nats-server did not listen"; exit 1; }
        broker=", \"broker\": {\"enabled\": true, \"type\": \"nats\", \"nats\": {\"url\": \"nats://127.0.0.1:$np\", \"prefix\": \"bench\"}}"
        ports=(); pids=()
        for n in 1 2 3; do
            p=$(free_port); start_gyre "node$n" "$p" "$broker"; ports+=("$p"); pids+=("$LAST_PID")
        done
        ROLES=node1,node2,node3,nats-server
        run_loadgen "$scen" "$run" cluster-3 "${ports[0]}" \
            "127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}" \
            "${pids[0]},${pids[1]},${pids[2]},$nats_pid"
        stop_all
    done
done

# Table: CPU per publication by process (ms), deliveries, latency.
python3 - "$RESULTS" >"$OUT/table.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| scenario | topology | run | ready | deliv/s | p50 ms | p99 ms | lost | pub/s | CPU ms per publication: node 1 (publisher) / node 2 / node 3 / nats-server | CPU µs per delivery (all) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    pub = max(r["published"], 1)
    cpu = [r["server_cpu_s_by_pid"].get(r["roles"][k]) for k in ("node1", "node2", "node3", "nats-server") if k in r["roles"]]
    per = [("%.3f" % (1000 * c / pub)) if c is not None else "–" for c in cpu]
    lat = r["latency_ms"] or {}
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        r["scenario"], r["topology"], r["run"], r["ready"], r["delivered_per_s"], lat.get("p50"), lat.get("p99"),
        r["lost"], r["pub_per_s"], " / ".join(per), r["server_cpu_us_per_delivery"]))
EOF
cat "$OUT/table.md"
