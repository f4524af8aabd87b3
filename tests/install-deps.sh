#!/usr/bin/env bash
# Installs everything the test suites need, idempotently, on a fresh Debian 12
# machine as root (or on a machine that already has it all: then it only checks).
#
#   - Debian packages: nats-server, nginx-light (Ingress stand-in), chromium +
#     chromium-driver for the demo-page browser tests (GYRE_NEED_CHROMIUM=0 skips them),
#     buildah + podman + runc for the container image tests (GYRE_NEED_IMAGES=0 skips them).
#     `apt-get update` runs only if something has to be installed.
#   - tests/sdk/js: `npm ci` from the committed package-lock.json (centrifuge 5.x,
#     ws, cent.js 6.1.0), skipped when node_modules already matches the lockfile.
#   - tests/.deps/venv (gitignored): Python venv with tests/sdk/python/requirements.txt
#     (centrifuge-python, cent, pytest, pytest-asyncio, PyJWT, grpcio-tools, all pinned),
#     skipped when it already matches.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/tests/.deps"
JS_DIR="$ROOT/tests/sdk/js"
PY_REQ="$ROOT/tests/sdk/python/requirements.txt"
VENV="$DEPS/venv"

log() { printf '[install-deps] %s\n' "$*"; }

# ---------------------------------------------------------------- Debian packages
APT_UPDATED=0
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "apt-get not available; please install: $*" >&2
        return 1
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have nats-server || missing+=(nats-server)
have node || missing+=(nodejs)
have npm || missing+=(npm)
have curl || missing+=(curl)
# TLS tests (tests/sdk/js/test/tls.test.mjs) make their certificates with the openssl CLI.
have openssl || missing+=(openssl)
# Container images (deploy/build-images.sh, tests/images/run.sh): buildah builds them, podman
# runs them with runc (crun fails on some hosts' cgroups). GYRE_NEED_IMAGES=0 skips them.
if [ "${GYRE_NEED_IMAGES:-1}" = 1 ]; then
    have buildah || missing+=(buildah)
    have podman || missing+=(podman)
    have runc || missing+=(runc)
fi
# nginx stands in for an Ingress controller in tests/operator/ingress (configured from the Ingress
# the operator renders).
have nginx || missing+=(nginx-light)
# Browser tests (tests/sdk/js/test/browser.test.mjs) drive Debian's chromium.
if [ "${GYRE_NEED_CHROMIUM:-1}" = 1 ]; then
    have chromium || missing+=(chromium)
    have chromedriver || missing+=(chromium-driver)
fi

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for cand in python3 /usr/bin/python3; do
        if command -v "$cand" >/dev/null 2>&1; then PYTHON="$(command -v "$cand")"; break; fi
    done
fi
if [ -z "$PYTHON" ]; then
    missing+=(python3 python3-venv)
    PYTHON=/usr/bin/python3
fi

if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
else
    log "system packages present (nats-server, node, npm, python3)"
fi

# ---------------------------------------------------------------- JavaScript
lock_sum() { sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1; }
JS_STAMP="$JS_DIR/node_modules/.gyre-lock-sha256"
if [ -f "$JS_STAMP" ] && [ "$(cat "$JS_STAMP")" = "$(lock_sum)" ]; then
    log "tests/sdk/js/node_modules up to date"
else
    log "npm ci in tests/sdk/js"
    (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    lock_sum >"$JS_STAMP"
fi

# ---------------------------------------------------------------- Python
mkdir -p "$DEPS"
# Up to date when every pin of requirements.txt is installed at its version (the venv is
# shared with tests/operator/install.sh, which adds its own pins to it).
pins_ok() {
    "$VENV/bin/python" - "$PY_REQ" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, ver = line.split("==")
    if m.version(name) != ver:
        sys.exit(1)
PY
}
if [ -x "$VENV/bin/python" ] && pins_ok; then
    log "tests/.deps/venv up to date"
else
    if ! [ -x "$VENV/bin/python" ]; then
        log "creating venv with $PYTHON"
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            apt_install python3-venv
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    log "pip install -r tests/sdk/python/requirements.txt"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY_REQ"
    pins_ok || { log "installed versions do not match tests/sdk/python/requirements.txt" >&2; exit 1; }
fi

log "done"
