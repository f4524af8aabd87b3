#!/usr/bin/env bash
# Builds both container images with deploy/build-images.sh and runs them with podman + runc, the
# way a kubelet would run the pods the operator renders (read-only root, non-root user, the
# config mounted at /etc/gyre, NATS as the broker):
#
#   1. the build is reproducible: a second build of the same workspace gives the same image IDs;
#   2. the images are FROM scratch, name user 65532, and carry the chart's appVersion as tag;
#   3. the server image answers /health/live, /health/ready (503 with the reason while its NATS is
#      down, 200 once NATS is up), publishes through the HTTP API with the API key, refuses a
#      wrong key, runs as uid 65532, and exits 0 on SIGTERM within the grace period, a connected
#      WebSocket client getting close code 3001 (shutdown, reconnect);
#   4. the operator image runs (`render` of a sample gives the same YAML as the host binary).
#
# Images, containers, the nats-server and temp files are removed at the end, pass or fail.
# Needs buildah, podman, runc (tests/install-deps.sh) and nats-server. Env:
#   GYRE_IMAGE_PROFILE  debug (default here: reuse the test build) or release
#   GYRE_WORKSPACE_BUILT=1  the binaries are already built (tests/run-all.sh): no cargo build
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

export GYRE_IMAGE_PROFILE="${GYRE_IMAGE_PROFILE:-debug}"
# A registry of our own: never touches (or removes) images someone else tagged.
REGISTRY="localhost/gyre-test-$$"
GRACE=30              # terminationGracePeriodSeconds the operator renders
SHUTDOWN_TIMEOUT=5s   # shutdown.timeout in the test config
# crun fails on this kind of host's cgroups; the default nofile/nproc rlimits cannot be set
# inside an unprivileged nested container, so set ones the host allows.
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
RUN_FLAGS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --network host --read-only
  --cap-drop ALL --security-opt no-new-privileges)

step() { printf '\n=== %s\n' "$*"; }
die() { echo "tests/images/run.sh: FAIL: $*" >&2; exit 1; }
for tool in buildah podman runc python3; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || die "$tool missing; run tests/install-deps.sh"
done
NATS_BIN="${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
[ -x "$NATS_BIN" ] || die "nats-server missing; run tests/install-deps.sh"

work="$(mktemp -d)"
containers=()
nats_pid=""
images=()
cleanup() {
  local rc=$? c i
  for c in "${containers[@]}"; do "${PODMAN[@]}" rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  for i in "${images[@]}"; do buildah rmi -f "$i" >/dev/null 2>&1 || true; done
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

free_ports() {
  python3 -c 'import socket
ss=[socket.socket() for _ in range('"$1"')]
[s.bind(("127.0.0.1",0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])'
}

app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/gyre-operator/Chart.yaml)"
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
build_flags=(--registry "$REGISTRY")
# The workspace build made debug binaries only; a release run builds its own.
[ "${GYRE_WORKSPACE_BUILT:-0}" = 1 ] && [ "$GYRE_IMAGE_PROFILE" = debug ] && build_flags+=(--no-build)

step "build both images (profile $GYRE_IMAGE_PROFILE) and again: same image IDs"
t0=$(date +%s)
mapfile -t refs < <(bash deploy/build-images.sh "${build_flags[@]}" | tail -2)
images=("${refs[@]}")
echo "built in $(( $(date +%s) - t0 ))s: ${refs[*]}"
[ "${refs[0]}" = "$REGISTRY/gyre:$app_version" ] || die "server image is ${refs[0]}, expected tag $app_version"
[ "${refs[1]}" = "$REGISTRY/gyre-operator:$app_version" ] || die "operator image is ${refs[1]}"
id_of() { buildah inspect --type image --format '{{.FromImageID}}' "$1"; }
first=("$(id_of "${refs[0]}")" "$(id_of "${refs[1]}")")
bash deploy/build-images.sh --registry "$REGISTRY" --no-build >/dev/null
second=("$(id_of "${refs[0]}")" "$(id_of "${refs[1]}")")
[ "${first[*]}" = "${second[*]}" ] || die "rebuild changed the image IDs: ${first[*]} -> ${second[*]}"
echo "reproducible: ${first[0]:0:12} ${first[1]:0:12}"

step "image metadata: FROM scratch, user 65532, entrypoint, size"
for ref in "${refs[@]}"; do
  user="$(podman image inspect --format '{{.Config.User}}' "$ref")"
  [ "$user" = "65532:65532" ] || die "$ref runs as '$user', expected 65532:65532"
  layers="$(podman image inspect --format '{{len .RootFS.Layers}}' "$ref")"
  [ "$layers" = 1 ] || die "$ref has $layers layers; FROM scratch + one copy gives 1"
  echo "$ref: user $user, $layers layer, $(podman image inspect --format '{{.Size}}' "$ref" | awk '{printf "%.1f MB", $1/1e6}')"
done

step "server image against a real nats-server: probes, publish, non-root, SIGTERM"
read -r nats_port http_port internal_port < <(free_ports 3)
mkdir -p "$work/etc" "$work/nats"
api_key="img-key-$RANDOM$RANDOM"
cat > "$work/etc/config.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $http_port, "internal_port": $internal_port},
  "health": {"enabled": true},
  "shutdown": {"timeout": "$SHUTDOWN_TIMEOUT"},
  "client": {"token": {"hmac_secret_key": "img-secret-0123456789abcdef0123456789"}},
  "http_api": {"key": "$api_key"},
  "channel": {"without_namespace": {"history_size": 10, "history_ttl": "60s"}},
  "broker": {"enabled": true, "type": "nats", "nats": {"url": "nats://127.0.0.1:$nats_port", "prefix": "img$$"}},
  "presence_manager": {"enabled": true, "type": "nats"}
}
EOF
chmod -R a+rX "$work/etc"
name="gyre-img-test-$$"
containers+=("$name")
# NATS is not running yet: the container must come up live, unready, and wait for it.
"${PODMAN[@]}" run -d --name "$name" "${RUN_FLAGS[@]}" -v "$work/etc:/etc/gyre:ro" "${refs[0]}" >/dev/null
probe() { # probe PATH -> "CODE BODY"
  python3 - "$internal_port" "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=2)
    print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception as e:
    print(0, e)
PY
}
wait_probe() { # wait_probe PATH CODE SECONDS
  local deadline=$(( $(date +%s) + $3 )) got
  while :; do
    got="$(probe "$1")"
    [ "${got%% *}" = "$2" ] && { echo "$1 -> $got"; return 0; }
    [ "$(date +%s)" -lt "$deadline" ] || { "${PODMAN[@]}" logs "$name" | tail -20 >&2; die "$1 answered '$got', wanted $2 within $3 s"; }
    sleep 0.2
  done
}
wait_probe /health/live 200 30
wait_probe /health/ready 503 10
probe /health/ready | grep -q "unreachable" || die "readiness reason does not say NATS is unreachable: $(probe /health/ready)"
[ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$name")" = true ] || die "the container exited without NATS"

"$NATS_BIN" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" > "$work/nats.log" 2>&1 &
nats_pid=$!
wait_probe /health/ready 200 20
wait_probe /health 200 2

pid="$("${PODMAN[@]}" inspect --format '{{.State.Pid}}' "$name")"
uids="$(awk '/^Uid:/ {print $2, $3}' "/proc/$pid/status")"
[ "$uids" = "65532 65532" ] || die "the server process runs as uid '$uids', expected 65532"
echo "server process $pid runs as uid $uids (real, effective)"

python3 - "$internal_port" "$api_key" <<'PY'
import json, sys, urllib.request, urllib.error
port, key = sys.argv[1], sys.argv[2]
def call(method, body, k):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/{method}", method="POST",
        data=json.dumps(body).encode(), headers={"X-API-Key": k, "Content-Type": "application/json"})
    try:
        r = urllib.request.urlopen(req, timeout=5)
        return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None
st, body = call("publish", {"channel": "news", "data": {"n": 1}}, key)
assert st == 200 and "result" in body, (st, body)
offset = body["result"]["offset"]
st, hist = call("history", {"channel": "news", "limit": 10}, key)
assert st == 200 and hist["result"]["publications"][-1]["data"] == {"n": 1}, (st, hist)
assert call("publish", {"channel": "news", "data": {}}, "wrong")[0] == 401, "a wrong API key was accepted"
print(f"publish through the API: offset {offset}, in JetStream history; a wrong key is refused")
PY

# A connected WebSocket client sees the drain: close code 3001 ("shutdown", reconnect advised).
VENV_PY="$ROOT/tests/.deps/venv/bin/python"
[ -x "$VENV_PY" ] || die "$VENV_PY missing; run tests/install-deps.sh"
token="$("$target_dir/$GYRE_IMAGE_PROFILE/gyre" gentoken -c "$work/etc/config.json" -u img-user -q)"
"$VENV_PY" - "$http_port" "$token" > "$work/ws.txt" 2>&1 <<'PY' &
import asyncio, json, sys, websockets
async def main():
    async with websockets.connect(f"ws://127.0.0.1:{sys.argv[1]}/connection/websocket") as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": sys.argv[2]}}))
        reply = json.loads(await ws.recv())
        assert "connect" in reply, reply
        print("connected", flush=True)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 60)
        except websockets.ConnectionClosed as e:
            print("closed", e.rcvd.code if e.rcvd else None, flush=True)
asyncio.run(main())
PY
ws_pid=$!
for _ in $(seq 100); do grep -q connected "$work/ws.txt" && break; sleep 0.1; done
grep -q connected "$work/ws.txt" || die "WebSocket client did not connect: $(cat "$work/ws.txt")"

t0=$(date +%s%N)
"${PODMAN[@]}" kill --signal TERM "$name" >/dev/null
code="$(timeout "$GRACE" "${PODMAN[@]}" wait "$name" || echo timeout)"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$code" = 0 ] || { "${PODMAN[@]}" logs "$name" | tail -20 >&2; die "exit status after SIGTERM: $code (wanted 0 within ${GRACE}s)"; }
wait "$ws_pid" || die "WebSocket client failed: $(cat "$work/ws.txt")"
grep -q "closed 3001" "$work/ws.txt" || die "the client was not closed with 3001: $(cat "$work/ws.txt")"
echo "SIGTERM -> exit 0 in ${ms} ms (grace period ${GRACE}s); the connected client got close code 3001"
# conmon may hand the container's last lines to `podman logs` a moment after
# the exit status (seen: the line missing right after a 200 ms shutdown, there
# a second later), so ask for a few seconds before calling it missing.
for _ in $(seq 30); do
    "${PODMAN[@]}" logs "$name" 2>&1 | grep -q "shutting down" && break
    sleep 0.1
done
"${PODMAN[@]}" logs "$name" 2>&1 | grep -q "shutting down" || die "no shutdown line in the logs"

step "operator image: render a sample like the host binary does"
sample=manifests/examples/centrifugo-ha-nats.yaml
cp "$sample" "$work/sample.yaml"
chmod a+r "$work/sample.yaml"
host_op="$target_dir/$GYRE_IMAGE_PROFILE/gyre-operator"
in_image() { "${PODMAN[@]}" run --rm "${RUN_FLAGS[@]}" -v "$work/sample.yaml:/sample.yaml:ro" "${refs[1]}" "$@"; }
# The generated config is deterministic; the full render holds random credentials, so compare
# the objects it lists.
"$host_op" render -f "$work/sample.yaml" --config-only > "$work/host.json"
in_image render -f /sample.yaml --config-only > "$work/image.json"
diff -u "$work/host.json" "$work/image.json" || die "the operator image generates a different config.json"
"$host_op" render -f "$work/sample.yaml" --default-image gyre:img | grep -E '^(kind|  name):' > "$work/host.kinds"
in_image render -f /sample.yaml --default-image gyre:img | grep -E '^(kind|  name):' > "$work/image.kinds"
diff -u "$work/host.kinds" "$work/image.kinds" || die "the operator image renders other objects than the host binary"
echo "operator image rendered $(basename "$sample"): $(grep -c '^kind:' "$work/image.kinds") objects and the config.json, as the host binary does"

step "push-images.sh: names the registry path and refuses debug builds"
if [ "$GYRE_IMAGE_PROFILE" = debug ]; then
  if bash deploy/push-images.sh --registry "$REGISTRY" --dry-run > "$work/push.txt" 2>&1; then
    die "push-images.sh would push a debug build: $(cat "$work/push.txt")"
  fi
  grep -q "built with the 'debug' profile" "$work/push.txt" || die "unexpected refusal: $(cat "$work/push.txt")"
  echo "refused as expected: $(cat "$work/push.txt")"
else
  bash deploy/push-images.sh --registry "$REGISTRY" --dry-run
fi

printf '\nimage checks: all passed\n'
