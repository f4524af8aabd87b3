#!/usr/bin/env bash
# Every offline check of the operator, the CRD, the chart and the manifests. Run from anywhere
# after tests/operator/install.sh. Artifacts (rendered YAML, generated configs) land in
# tests/artifacts/operator/ for inspection.
#
# Optional: GYRE_BIN=/path/to/gyre makes the real server binary load every config.json the
# operator generates (`gyre checkconfig -c FILE`). Without it that step says it is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DEPS=tests/.deps
HELM="$DEPS/helm"
PY="$DEPS/venv/bin/python"
ART=tests/artifacts/operator
VALIDATE=(tests/operator/validate.py --crd manifests/crd.yaml)
KUBE_VERSIONS=(1.33.0 1.37.0)

for tool in "$HELM" "$PY"; do
  [ -x "$tool" ] || { echo "run.sh: $tool missing; run tests/operator/install.sh first" >&2; exit 1; }
done
rm -rf "$ART"
mkdir -p "$ART/rendered" "$ART/configs" "$ART/chart"
step() { printf '\n=== %s\n' "$*"; }

TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
OP="$TARGET_DIR/debug/gyre-operator"
if [ "${GYRE_WORKSPACE_BUILT:-0}" = 1 ] && [ -x "$OP" ]; then
  # tests/run-all.sh already built the workspace and ran `cargo test --workspace`. Building again
  # with `-p gyre-operator` would resolve a different feature set for the shared dependencies and
  # compile a second copy of them: minutes of CPU and gigabytes of disk for nothing.
  step "operator crate tests and binary: done by the workspace build and cargo test"
else
  step "cargo test -p gyre-operator (builders, CEL, mocked-apiserver scenarios, CRD drift)"
  cargo test -p gyre-operator
  step "build the operator binary"
  cargo build -q -p gyre-operator
fi
[ -x "$OP" ] || { echo "run.sh: $OP not built" >&2; exit 1; }

step "generated files are committed and current (CRD, chart crds/, manifests/operator.yaml)"
bash tests/operator/gen-manifests.sh --check

step "operator renders every example and sample; invalid samples are refused"
samples=(manifests/examples/*.yaml tests/operator/samples/valid/*.yaml)
for f in "${samples[@]}"; do
  base="$(basename "$f" .yaml)"
  "$OP" render -f "$f" --default-image gyre:ci > "$ART/rendered/$base.yaml"
  "$OP" render -f "$f" --config-only > "$ART/configs/$base.json"
  "$PY" -c 'import json,sys; json.load(open(sys.argv[1]))' "$ART/configs/$base.json"
done
for f in tests/operator/samples/invalid/*.yaml; do
  stage="$(sed -n 's/^# fails: \([a-z]*\).*/\1/p' "$f")"
  [ "$stage" = schema ] && continue   # refused by the apiserver's schema, checked below
  if "$OP" render -f "$f" > /dev/null 2> "$ART/render-error.txt"; then
    echo "run.sh: $f should have been refused by 'render'" >&2; exit 1
  fi
  echo "refused as expected: $f: $(head -1 "$ART/render-error.txt")"
done

step "Centrifugo samples against the CRD schema"
"$PY" "${VALIDATE[@]}" samples --good "${samples[@]}" --invalid-dir tests/operator/samples/invalid

step "helm lint --strict"
for v in tests/operator/values/*.yaml; do
  "$HELM" lint --strict charts/gyre-operator -f "$v" --namespace gyre-system
done

step "helm template --include-crds over the values matrix, Kubernetes ${KUBE_VERSIONS[*]}"
"$OP" rbac > "$ART/rbac-required.json"
for v in tests/operator/values/*.yaml; do
  base="$(basename "$v" .yaml)"
  for kv in "${KUBE_VERSIONS[@]}"; do
    "$HELM" template gyre-operator charts/gyre-operator -f "$v" --namespace gyre-system \
      --include-crds --kube-version "$kv" > "$ART/chart/$base-$kv.yaml"
  done
  out="$ART/chart/$base-${KUBE_VERSIONS[0]}.yaml"
  "$PY" "${VALIDATE[@]}" rbac --required "$ART/rbac-required.json" --values "$v" "$out"
done
E=("$PY" "${VALIDATE[@]}" expect)
"${E[@]}" "$ART/chart/defaults-1.33.0.yaml" \
  --has CustomResourceDefinition ServiceAccount ClusterRole ClusterRoleBinding Deployment Service \
    Role RoleBinding \
  --lacks Centrifugo ServiceMonitor NetworkPolicy Namespace
# The defaults name the images deploy/build-images.sh builds and deploy/push-images.sh pushes.
app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/gyre-operator/Chart.yaml)"
registry="$(sed -n 's/^registry="${GYRE_IMAGE_REGISTRY:-\(.*\)}"$/\1/p' deploy/build-images.sh)"
for want in "image: \"$registry/gyre-operator:$app_version\"" "--default-image=$registry/gyre:$app_version"; do
  grep -qF -- "$want" "$ART/chart/defaults-1.33.0.yaml" || { echo "run.sh: chart defaults lack '$want'" >&2; exit 1; }
  grep -qF -- "$want" manifests/operator.yaml || { echo "run.sh: manifests/operator.yaml lacks '$want'" >&2; exit 1; }
done
echo "chart defaults and manifests/operator.yaml name $registry/gyre-operator and $registry/gyre at $app_version"
"${E[@]}" "$ART/chart/namespaced-1.33.0.yaml" --watch-namespace realtime \
  --has Role RoleBinding Deployment --lacks ClusterRole ClusterRoleBinding
"${E[@]}" "$ART/chart/monitoring-1.33.0.yaml" --has ServiceMonitor NetworkPolicy
"${E[@]}" "$ART/chart/instance-1.33.0.yaml" --has Centrifugo --lacks Service
"${E[@]}" "$ART/chart/namespaced-instance-1.33.0.yaml" --watch-namespace realtime --has Centrifugo Role Namespace
"${E[@]}" "$ART/chart/ha-1.33.0.yaml" --has Role RoleBinding ClusterRole Deployment

step "values.schema.json refuses bad values"
for v in tests/operator/values-invalid/*.yaml; do
  if "$HELM" template gyre-operator charts/gyre-operator -f "$v" > /dev/null 2> "$ART/helm-error.txt"; then
    echo "run.sh: helm accepted $v" >&2; exit 1
  fi
  echo "refused as expected: $v: $(grep -m1 "at '/" "$ART/helm-error.txt" || head -1 "$ART/helm-error.txt")"
done

step "kubernetes-validate --strict (${KUBE_VERSIONS[*]}): operator outputs, chart renders, manifests"
"$PY" "${VALIDATE[@]}" k8s --versions "$(IFS=,; echo "${KUBE_VERSIONS[*]}")" \
  "$ART"/rendered/*.yaml "$ART"/chart/*.yaml manifests/crd.yaml manifests/operator.yaml manifests/examples/*.yaml

step "generated config.json loaded by the real server (gyre checkconfig)"
if [ -n "${GYRE_BIN:-}" ] && [ -x "${GYRE_BIN}" ]; then
  for cfg in "$ART"/configs/*.json; do
    echo "checkconfig $cfg"
    # As in the pod: credentials are not in config.json but come from the Secret as CENTRIFUGO_*
    # environment variables (an instance with spec.admin needs the admin password and secret).
    CENTRIFUGO_ADMIN_PASSWORD=ci-admin CENTRIFUGO_ADMIN_SECRET=ci-admin-secret \
      "$GYRE_BIN" checkconfig -c "$cfg"
  done
  echo "all generated configs accepted by $GYRE_BIN"

  # Start the server as the pod would (config file + CENTRIFUGO_* credentials from the Secret),
  # on free loopback ports, and use the credentials: /health answers, the API key publishes, a
  # wrong key is refused.
  read -r port iport < <("$PY" -c 'import socket
ss=[socket.socket() for _ in range(2)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
  api_key="ci-api-key-$RANDOM$RANDOM"
  CENTRIFUGO_HTTP_API_KEY="$api_key" \
  CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY="ci-hmac-secret-0123456789abcdef0123456789" \
  CENTRIFUGO_ADMIN_PASSWORD=ci-admin CENTRIFUGO_ADMIN_SECRET=ci-admin-secret \
    "$GYRE_BIN" -c "$ART/configs/centrifugo-single.json" --http_server.address 127.0.0.1 \
    --http_server.port "$port" --http_server.internal_port "$iport" > "$ART/gyre-server.log" 2>&1 &
  gyre_pid=$!
  trap 'kill "$gyre_pid" 2>/dev/null || true' EXIT
  "$PY" - "$iport" "$api_key" <<'PY'
import json, sys, time, urllib.request, urllib.error
port, key = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
for _ in range(100):
    try:
        urllib.request.urlopen(base + "/health", timeout=1)
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("gyre did not answer /health on the internal port")
def publish(k):
    req = urllib.request.Request(base + "/api/publish", method="POST",
        data=json.dumps({"channel": "chat:ci", "data": {"x": 1}}).encode(),
        headers={"X-API-Key": k, "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=2).status
    except urllib.error.HTTPError as e:
        return e.code
assert publish(key) == 200, "publish with the Secret's API key failed"
assert publish("wrong") == 401, "a wrong API key was not refused"
print("gyre started from the generated config: /health ok, API key accepted, wrong key refused")
PY
  kill -TERM "$gyre_pid"; wait "$gyre_pid" || true
  trap - EXIT

  step "managed NATS with TLS: rendered nats.conf and config.json run by real nats-server and gyre"
  bash tests/operator/nats-tls.sh "$OP" "$GYRE_BIN"
else
  echo "SKIPPED: GYRE_BIN is not set to an executable gyre binary (got '${GYRE_BIN:-}')."
  echo "SKIPPED: the operator's config.json files were NOT checked by the real server."
fi

printf '\noperator checks: all passed\n'
