#!/usr/bin/env bash
# Gyre's whole test suite (the README's test command; .ci/run calls it):
#   1. tests/install-deps.sh            (system packages, npm ci, Python venv)
#   2. cargo fmt --all --check, cargo clippy --workspace --all-targets -- -D warnings
#   3. cargo build --workspace --all-targets
#   4. cargo test --workspace           (Rust unit + integration tests, the abuse suite in tests/abuse)
#   5. real SDKs, JavaScript:  node --test  in tests/sdk/js   (centrifuge-js JSON+protobuf, cent.js),
#      then the measured rolling restart (tests/sdk/js/load/rolling-restart.test.mjs)
#   6. real SDKs, Python:      pytest       in tests/sdk/python (centrifuge-python JSON+protobuf, cent)
#   7. tests/operator/{install,run}.sh, if tests/operator/run.sh exists
#   8. tests/images/run.sh: deploy/build-images.sh (debug binaries), run with podman + runc
# Stops at the first failing step, and always prints a summary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -d "$HOME/.cargo/bin" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export GYRE_BIN="${GYRE_BIN:-$ROOT/target/debug/gyre}"
# A fresh clone gains nothing from incremental compilation, and its caches would about double the
# disk the debug build takes (CI machines have run out of disk here before).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

STEPS=()
RESULTS=()
TIMES=()
START_ALL=$(date +%s)

disk_report() {
    # Printed before and after, so a run that dies of a full disk says so in its own log.
    df -h "$ROOT" | awk -v when="$1" 'NR==2 {print "disk " when ": " $4 " free of " $2 " on " $6}'
    if [ -d "$ROOT/target" ]; then du -sh "$ROOT/target" 2>/dev/null | awk '{print "target/: " $1}'; fi
}
summary() {
    local rc=$?
    echo
    echo "==================== Gyre test summary ===================="
    local i
    for i in "${!STEPS[@]}"; do
        printf '  %-8s %-45s %5ss\n' "${RESULTS[$i]}" "${STEPS[$i]}" "${TIMES[$i]}"
    done
    printf '  total %ss\n' "$(( $(date +%s) - START_ALL ))"
    disk_report "at the end" | sed 's/^/  /' || true
    if [ "$rc" -eq 0 ]; then
        echo "  ALL STEPS PASSED"
    else
        echo "  FAILED (exit $rc)"
    fi
    echo "==========================================================="
}
trap summary EXIT

step() {
    local name="$1"
    shift
    echo
    echo ">>> [$name] $*"
    local t0
    t0=$(date +%s)
    STEPS+=("$name")
    RESULTS+=("RUNNING")
    TIMES+=("-")
    local idx=$(( ${#STEPS[@]} - 1 ))
    local rc=0
    "$@" || rc=$?
    TIMES[idx]=$(( $(date +%s) - t0 ))
    if [ "$rc" -ne 0 ]; then
        RESULTS[idx]="FAIL"
        echo
        echo "!!! step '$name' failed with exit code $rc: $*" >&2
        exit "$rc"
    fi
    RESULTS[idx]="ok"
}

js_suite() (
    cd "$ROOT/tests/sdk/js"
    # One test file at a time (each starts its own gyre); files list explicit so
    # Node 20 does not need directory globbing.
    node --test --test-concurrency=1 --test-timeout=120000 test/*.test.mjs
)

# The measured rolling restart (tests/sdk/js/load/): 3 nodes behind nginx, GYRE_ROLLING_CLIENTS
# SDK clients (default 3000), its own step because it runs for minutes, not seconds.
js_rolling() (
    cd "$ROOT/tests/sdk/js"
    node --test --test-timeout=900000 load/rolling-restart.test.mjs
)

py_suite() (
    cd "$ROOT/tests/sdk/python"
    "$ROOT/tests/.deps/venv/bin/python" -m pytest -p no:cacheprovider
)

disk_report "at start"
step "install deps" bash tests/install-deps.sh
step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build" cargo build --workspace --all-targets
if [ ! -x "$GYRE_BIN" ]; then
    echo "!!! gyre binary not found at $GYRE_BIN after the build" >&2
    exit 1
fi
step "cargo test" cargo test --workspace
step "SDK tests: JavaScript (centrifuge-js, cent.js)" js_suite
step "rolling restart (3 nodes, nginx, SDK clients)" js_rolling
step "SDK tests: Python (centrifuge-python, cent)" py_suite
if [ -f tests/operator/run.sh ]; then
    step "operator install" bash tests/operator/install.sh
    step "operator tests" env GYRE_WORKSPACE_BUILT=1 bash tests/operator/run.sh
fi
# Both container images, built from the debug binaries above (GYRE_IMAGE_PROFILE=release for
# release ones) and run with podman + runc; removed again at the end.
step "container images (build, run)" env GYRE_WORKSPACE_BUILT=1 bash tests/images/run.sh
