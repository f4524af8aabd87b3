#!/usr/bin/env bash
# Cross-node fan-out scenario (issue 5): publisher on node 1, subscribers on
# nodes 2 and 3, three gyre nodes over one private nats-server; the
# single-node memory-engine figure is measured in the same run beside it.
#
#   bash bench/cross-node.sh [--subs 200] [--rate 100] [--secs 10] [--pad 64] [--history 1]
#
# Uses target/release/gyre (built if missing). gyre-loadgen (branch loadgen)
# takes one --addr for publishing and subscribing, so it cannot put the
# publisher on another node; until it has a separate publish address this
# scenario uses its own small driver, bench/cross-node.mjs (Node.js + ws from
# tests/sdk/js). If target/release/gyre-loadgen exists and supports
# --pub-addr, it is used instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export GYRE_BIN="${GYRE_BIN:-$ROOT/target/release/gyre}"
if [ ! -x "$GYRE_BIN" ]; then
    cargo build --release -p gyre-server
fi
if [ ! -d tests/sdk/js/node_modules ]; then
    (cd tests/sdk/js && npm ci --no-audit --no-fund --loglevel=error)
fi
LOADGEN="$ROOT/target/release/gyre-loadgen"
if [ -x "$LOADGEN" ] && "$LOADGEN" run --help 2>/dev/null | grep -q -- '--pub-addr'; then
    echo "gyre-loadgen supports --pub-addr: wire it here (not yet available when this was written)" >&2
fi
exec node bench/cross-node.mjs "$@"
