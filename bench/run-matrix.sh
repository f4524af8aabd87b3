#!/usr/bin/env bash
# Runs the benchmark scenario matrix of issue 7 against Gyre and Nchan.
#
#   bench/run-matrix.sh [--runs N] [--targets "gyre-json gyre-protobuf nchan"]
#                       [--scenarios "idle-memory fanout-10k-5ps ..."] [--no-build]
#                       [--out DIR]
#
# Each (scenario, run, target) gets a freshly started server pinned to core 0
# and the load generator pinned to core 1 (taskset). Every run appends one JSON
# line to DIR/results.jsonl; at the end DIR/table.md holds the medians and
# DIR/medians.jsonl the same as JSON. Loopback only; every step is bounded in
# time (the load generator has its own --deadline-s, servers get 20 s to start).
#
# Needs root for apt-get (nginx + libnginx-mod-nchan are installed when
# missing). Environment: CARGO_TARGET_DIR (where binaries are built),
# GYRE_BIN (use this gyre binary instead of building one), GYRE_COMMIT (its
# commit, for machine.txt), PRIO, QUIET_PCT, QUIET_WAIT_S (see below).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
TARGETS="gyre-json gyre-protobuf nchan"
SCENARIOS="idle-memory fanout-10k-5ps fanout-10k-max fanout-2k-max chan10-10k-2kps chan10-10k-pubmax"
BUILD=1
OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
SERVER_CPU=0
LOADGEN_CPU=1
# The machine may be shared with builds of other sessions, in other cgroups,
# where nice does not reach: measured, a 10k fan-out then waited longer for
# the CPU than it ran. So the server and the load generator run SCHED_FIFO
# (`chrt -f 10`; the kernel's RT throttling still leaves 5% of each core to
# the rest). PRIO=normal disables it. server_runq_wait_ms in each JSON line
# tells how long the server waited for its core anyway.
PRIO=${PRIO:-rt}
if [ "$PRIO" = rt ]; then RUNPRIO=(chrt -f 10); else RUNPRIO=(); fi

while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --scenarios) SCENARIOS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

# scenario -> "conns channels msgs pub_rate pub_conns" (pub_rate 0 = max)
scenario_params() {
    case "$1" in
        idle-memory)       echo "10000 1 0 0 1" ;;
        fanout-10k-5ps)    echo "10000 1 50 5 2" ;;
        fanout-10k-max)    echo "10000 1 150 30 2" ;;
        fanout-2k-max)     echo "2000 1 600 200 4" ;;
        chan10-10k-2kps)   echo "10000 1000 10000 2000 8" ;;
        chan10-10k-pubmax) echo "10000 1000 20000 0 16" ;;
        # Short scenarios for smoke tests and profiling.
        smoke)             echo "200 4 40 20 2" ;;
        *) echo "unknown scenario $1" >&2; return 1 ;;
    esac
}

log() { echo "[run-matrix $(date -u +%H:%M:%S)] $*" >&2; }

# --- limits -----------------------------------------------------------------
HARD=$(ulimit -Hn)
if [ "$HARD" = unlimited ] || [ "$HARD" -ge 20000 ]; then ulimit -n 20000; else ulimit -n "$HARD"; fi
log "open files: $(ulimit -n) (hard $(ulimit -Hn))"
if [ "$(nproc)" -lt 2 ]; then log "need 2 cores for pinning"; exit 1; fi

# --- install ----------------------------------------------------------------
NCHAN_MOD=/usr/lib/nginx/modules/ngx_nchan_module.so
case " $TARGETS " in *" nchan "*)
    if ! command -v nginx >/dev/null || [ ! -f "$NCHAN_MOD" ]; then
        log "installing nginx and libnginx-mod-nchan"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null
    fi
    # The package may have started a system nginx on port 80; it is not ours and is left alone.
    ;;
esac

# --- build ------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN="$TARGET_DIR/release/gyre-loadgen"
GYRE_BIN_SET=${GYRE_BIN:+1}
GYRE_BIN=${GYRE_BIN:-$TARGET_DIR/release/gyre}
if [ "$BUILD" = 1 ]; then
    log "building release binaries into $TARGET_DIR"
    pkgs=(-p gyre-loadgen)
    if [ -z "$GYRE_BIN_SET" ] && [ -d "$ROOT/crates/gyre-server" ]; then pkgs+=(-p gyre-server); fi
    (cd "$ROOT" && cargo build --release "${pkgs[@]}")
fi
[ -x "$LOADGEN" ] || { log "no load generator at $LOADGEN"; exit 1; }

mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
WORK=$(mktemp -d /tmp/gyre-bench.XXXXXX)
SERVER_PID=""
SERVER_KIND=""

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port timeout_s
    local i
    for i in $(seq 1 $(( $2 * 10 ))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    # TERM: fast shutdown for the nginx master (it takes its worker along) and gyre.
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    # Let sockets of the previous run leave the listen queue and TIME_WAIT pile.
    sleep 2
}
trap 'stop_server; rm -rf "$WORK"' EXIT

TOKEN_SECRET="bench-secret-0123456789abcdef0123456789"

start_gyre() { # port
    [ -x "$GYRE_BIN" ] || { log "no gyre binary at $GYRE_BIN"; return 1; }
    cat >"$WORK/gyre.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $1},
  "log": {"level": "error"},
  "client": {"token": {"hmac_secret_key": "$TOKEN_SECRET"}, "allowed_origins": ["*"]},
  "http_api": {"key": "apikey"},
  "channel": {"without_namespace": {"allow_subscribe_for_client": true}}
}
EOF
    "${RUNPRIO[@]}" taskset -c "$SERVER_CPU" "$GYRE_BIN" --config "$WORK/gyre.json" >"$WORK/gyre.log" 2>&1 &
    SERVER_PID=$!
    SERVER_KIND=gyre
    wait_port "$1" 20 || { log "gyre did not listen on $1"; tail -20 "$WORK/gyre.log" >&2; return 1; }
}

start_nchan() { # port
    local d="$WORK/nginx"
    rm -rf "$d"; mkdir -p "$d"
    sed -e "s#@DIR@#$d#g" -e "s#@PORT@#$1#g" "$ROOT/bench/nchan.conf.in" >"$d/nginx.conf"
    # nginx daemonizes; the master and its worker inherit the affinity.
    "${RUNPRIO[@]}" taskset -c "$SERVER_CPU" nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log"
    wait_port "$1" 20 || { log "nginx did not listen on $1"; tail -20 "$d/error.log" >&2; return 1; }
    SERVER_PID=$(cat "$d/nginx.pid")
    SERVER_KIND=nchan
}

# Busy ticks of the whole host (user nice system irq softirq steal).
host_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }

# The machine may be shared (builds, tests): before each run wait, at most
# QUIET_WAIT_S seconds, until the rest of the host uses under QUIET_PCT % of
# one core over a 2 s window. Runs are tagged with what they saw anyway
# (other_cpu_pct in the JSON line).
QUIET_PCT=${QUIET_PCT:-15}
QUIET_WAIT_S=${QUIET_WAIT_S:-10}
wait_quiet() {
    local hz start a b pct
    hz=$(getconf CLK_TCK)
    start=$(date +%s)
    while :; do
        a=$(host_busy); sleep 2; b=$(host_busy)
        pct=$(( (b - a) * 100 / (2 * hz) ))
        [ "$pct" -lt "$QUIET_PCT" ] && return 0
        if [ $(( $(date +%s) - start )) -ge "$QUIET_WAIT_S" ]; then
            log "host still busy (${pct}% of a core); running anyway"
            return 0
        fi
        log "host busy (${pct}% of a core), waiting"
        sleep 8
    done
}

run_one() { # scenario run target
    local scen=$1 run=$2 target=$3 port conns channels msgs rate pubconns
    read -r conns channels msgs rate pubconns < <(scenario_params "$scen")
    wait_quiet
    port=$(free_port)
    case "$target" in
        nchan) start_nchan "$port" ;;
        gyre-*) start_gyre "$port" ;;
    esac
    local extra=()
    [ "$target" != nchan ] && extra+=(--token-secret "$TOKEN_SECRET")
    log "$scen run $run $target: conns=$conns channels=$channels msgs=$msgs rate=$rate pub_conns=$pubconns"
    local line
    if line=$("${RUNPRIO[@]}" taskset -c "$LOADGEN_CPU" "$LOADGEN" run --target "$target" --addr "127.0.0.1:$port" \
            --scenario "$scen" --run "$run" --conns "$conns" --channels "$channels" \
            --msgs "$msgs" --pub-rate "$rate" --pub-conns "$pubconns" \
            --connect-rate 2000 --server-pid "$SERVER_PID" --deadline-s 240 "${extra[@]}"); then
        echo "$line" >>"$RESULTS"
        echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("   ready=%s lost=%s p50=%s p99=%s pub/s=%s pub_p99=%s deliv/s=%s mem/conn=%s cpu/deliv=%s other_cpu=%s%% runq_wait_ms=%s errors=%s" % (r["ready"], r["lost"], (r["latency_ms"] or {}).get("p50"), (r["latency_ms"] or {}).get("p99"), r["pub_per_s"], r["publish_latency_ms"]["p99"], r["delivered_per_s"], r["pss_per_conn_bytes"], r["server_cpu_us_per_delivery"], r["other_cpu_pct"], r["server_runq_wait_ms"], r["errors"][:2]))' >&2
    else
        log "load generator failed for $scen/$run/$target"
    fi
    stop_server
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r)"
    echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
    echo "memory: $(grep MemTotal /proc/meminfo | awk '{print $2" kB"}')"
    echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2 || true)"
    echo "nchan: $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || true)"
    echo "gyre binary: $GYRE_BIN (commit ${GYRE_COMMIT:-$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || true)})"
    echo "load generator: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || true)"
    echo "targets: $TARGETS"
    echo "scenarios: $SCENARIOS"
    echo "runs: $RUNS"
    echo "priority: $PRIO"
} >"$OUT/machine.txt"

for scen in $SCENARIOS; do
    scenario_params "$scen" >/dev/null
    for run in $(seq 1 "$RUNS"); do
        for target in $TARGETS; do
            run_one "$scen" "$run" "$target"
        done
    done
done

"$LOADGEN" report "$RESULTS" --json-out "$OUT/medians.jsonl" >"$OUT/table.md"
log "results in $OUT"
cat "$OUT/table.md"
