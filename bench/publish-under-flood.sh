#!/usr/bin/env bash
# /api/publish latency while a subscribe/unsubscribe flood runs on a 2,000-subscriber join_leave
# channel (issue 10). Each binary given is started fresh on a free port with the same config and
# measured by `gyre-loadgen flood` in the same run, one after the other:
#
#   bash bench/publish-under-flood.sh [GYRE_BINARY ...]     (default: target/release/gyre)
#
# Environment: SUBS (2000), FLOODERS (8), RATE (50 publishes/s), PHASE_S (15), OUT (directory for
# the JSON lines, default bench/results/flood-<date>), LABELS (space-separated names for the
# binaries, default their commit), PRIO (rt, the default: server on core 0 and load generator on
# core 1 under SCHED_FIFO `chrt -f 10`, as bench/run-matrix.sh does, so other work on a shared
# machine does not decide the tail; `normal` for neither). Builds gyre-loadgen in release if missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUBS="${SUBS:-2000}"; FLOODERS="${FLOODERS:-8}"; RATE="${RATE:-50}"; PHASE_S="${PHASE_S:-15}"
OUT="${OUT:-bench/results/flood-$(date +%Y%m%d)}"
mkdir -p "$OUT"
LOADGEN="${LOADGEN:-$ROOT/target/release/gyre-loadgen}"
[ -x "$LOADGEN" ] || cargo build --release -p gyre-loadgen
BINS=("$@")
if [ ${#BINS[@]} -eq 0 ]; then
    [ -x target/release/gyre ] || cargo build --release -p gyre-server
    BINS=("$ROOT/target/release/gyre")
fi
ulimit -n "$(ulimit -Hn)"
read -r -a LABELS_A <<< "${LABELS:-}"
if [ "${PRIO:-rt}" = rt ]; then
    SRV=(taskset -c 0 chrt -f 10); GEN=(taskset -c 1 chrt -f 10)
else
    SRV=(); GEN=()
fi
i=0
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for bin in "${BINS[@]}"; do
    port=$(free_port)
    cfg="$OUT/config-$port.json"
    cat > "$cfg" <<JSON
{
  "http_server": {"address": "127.0.0.1", "port": $port},
  "client": {"token": {"hmac_secret_key": "flood-secret"}},
  "http_api": {"key": "apikey"},
  "log": {"level": "warn"},
  "channel": {"namespaces": [{"name": "jl", "join_leave": true, "force_push_join_leave": true, "presence": true, "allow_subscribe_for_client": true}]}
}
JSON
    "${SRV[@]}" "$bin" --config "$cfg" > "$OUT/server-$port.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
    rev="${LABELS_A[$i]:-$(git -C "$(dirname "$bin")" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    i=$((i + 1))
    echo "== $bin (commit $rev, pid $pid)" >&2
    "${GEN[@]}" "$LOADGEN" flood --addr "127.0.0.1:$port" --token-secret flood-secret --scenario "$rev" \
        --subs "$SUBS" --flooders "$FLOODERS" --pub-rate "$RATE" --phase-s "$PHASE_S" --threads 1 \
        | tee -a "$OUT/results.jsonl"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
