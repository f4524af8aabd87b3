#!/usr/bin/env bash
# Profiles the Gyre server during one fan-out scenario.
#
#   bench/profile-gyre.sh [--scenario fanout-10k-max] [--target gyre-json] [--out DIR]
#
# perf: `perf stat -e instructions` is "not supported" on these machines (no
# hardware counters in the guest), but the software clock event works, so the
# server is sampled with `perf record -e cpu-clock` while the load generator
# runs. If perf cannot record at all, the script falls back to
# `valgrind --tool=callgrind` on the short `smoke` scenario (instruction counts,
# not time). Server on core 0, load generator on core 1, loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCEN=fanout-10k-max
TARGET=gyre-json
OUT="$ROOT/bench/results/profile-$(date -u +%Y%m%dT%H%M%SZ)"
while [ $# -gt 0 ]; do
    case "$1" in
        --scenario) SCEN=$2; shift 2 ;;
        --target) TARGET=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADGEN="$TARGET_DIR/release/gyre-loadgen"
GYRE_BIN=${GYRE_BIN:-$TARGET_DIR/release/gyre}
[ -x "$LOADGEN" ] && [ -x "$GYRE_BIN" ] || { echo "build gyre-loadgen and gyre (release) first" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gyre-prof.XXXXXX)
PID=""
trap '[ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

case "$SCEN" in
    fanout-10k-5ps) P="10000 1 50 5 2" ;;
    fanout-10k-max) P="10000 1 150 30 2" ;;
    fanout-2k-max) P="2000 1 600 200 4" ;;
    chan10-10k-pubmax) P="10000 1000 20000 0 16" ;;
    smoke) P="200 4 40 20 2" ;;
    *) echo "unknown scenario $SCEN" >&2; exit 2 ;;
esac
read -r CONNS CHANNELS MSGS RATE PUBCONNS <<<"$P"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
SECRET="bench-secret-0123456789abcdef0123456789"
cat >"$WORK/gyre.json" <<EOF
{"http_server": {"address": "127.0.0.1", "port": $PORT}, "log": {"level": "error"},
 "client": {"token": {"hmac_secret_key": "$SECRET"}, "allowed_origins": ["*"]},
 "http_api": {"key": "apikey"}, "channel": {"without_namespace": {"allow_subscribe_for_client": true}}}
EOF

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# SCHED_FIFO as in run-matrix.sh (the host may be shared); PRIO=normal disables.
if [ "${PRIO:-rt}" = rt ]; then RUNPRIO=(chrt -f 10); else RUNPRIO=(); fi

loadgen() {
    "${RUNPRIO[@]}" taskset -c 1 "$LOADGEN" run --target "$TARGET" --addr "127.0.0.1:$PORT" --scenario "$SCEN" \
        --conns "$CONNS" --channels "$CHANNELS" --msgs "$MSGS" --pub-rate "$RATE" \
        --pub-conns "$PUBCONNS" --server-pid "$PID" --token-secret "$SECRET" --deadline-s 240 "$@"
}

if perf record -e cpu-clock -o "$WORK/probe.data" -- true >/dev/null 2>&1; then
    "${RUNPRIO[@]}" taskset -c 0 "$GYRE_BIN" --config "$WORK/gyre.json" >"$WORK/gyre.log" 2>&1 &
    PID=$!
    wait_port
    # Sample the whole run (connect + publish); the report separates the phases by symbol.
    perf record -e cpu-clock -F 1999 --call-graph dwarf,16384 -p "$PID" -o "$OUT/perf.data" \
        >"$WORK/perf.log" 2>&1 &
    PERF=$!
    sleep 1
    loadgen | tee "$OUT/loadgen.json"
    kill -INT "$PERF"; wait "$PERF" || true
    perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
        | grep -v '^$' | head -400 >"$OUT/perf-flat.txt"
    perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
        | grep -v '^$' | head -200 >"$OUT/perf-children.txt"
    echo "profile: $OUT/perf-flat.txt $OUT/perf-children.txt" >&2
else
    echo "perf cannot record here; using callgrind on the smoke scenario" >&2
    CONNS=200 CHANNELS=4 MSGS=40 RATE=20 PUBCONNS=2
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
        "$GYRE_BIN" --config "$WORK/gyre.json" >"$WORK/gyre.log" 2>&1 &
    PID=$!
    wait_port
    loadgen --settle-ms 500 | tee "$OUT/loadgen.json"
    kill -TERM "$PID"; wait "$PID" || true; PID=""
    callgrind_annotate "$OUT/callgrind.out" | head -80 >"$OUT/callgrind.txt"
    echo "profile: $OUT/callgrind.txt" >&2
fi
