#!/usr/bin/env bash
# End-to-end check of the operator on a real cluster. NOT run in CI (no Docker engine or
# Kubernetes API there); run it on a workstation with buildah, kind, kubectl and helm:
#
#   deploy/e2e-kind.sh            # creates cluster "gyre-e2e", runs, deletes it
#   KEEP_CLUSTER=1 deploy/e2e-kind.sh
#   CLUSTER=existing USE_EXISTING=1 deploy/e2e-kind.sh   # reuse a kind cluster
#
# What it proves: images build; the chart installs the CRD and operator; a Centrifugo resource
# becomes Ready; the generated Secret works for the HTTP API (publish) through the internal
# Service; a config change rolls the pods and keeps the Secret; invalid specs are refused by the
# CRD's CEL rules; the paused annotation freezes the instance; deleting the resource removes
# every child through owner references.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER="${CLUSTER:-gyre-e2e}"
NS=gyre-e2e
TAG=e2e
for tool in buildah kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 1; }
done

log() { printf '\n### %s\n' "$*"; }
cleanup() {
  if [ -z "${KEEP_CLUSTER:-}" ] && [ -z "${USE_EXISTING:-}" ]; then kind delete cluster --name "$CLUSTER" || true; fi
}
trap cleanup EXIT

if [ -z "${USE_EXISTING:-}" ]; then
  log "create kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER"

log "build and load images (deploy/build-images.sh, the images a release pushes)"
REG=localhost/gyre-e2e
bash deploy/build-images.sh --registry "$REG" --tag "$TAG"
for name in gyre gyre-operator; do
  archive="$(mktemp --suffix=.tar)"
  buildah push --quiet "$REG/$name:$TAG" "docker-archive:$archive:$REG/$name:$TAG"
  kind load image-archive --name "$CLUSTER" "$archive"
  rm -f "$archive"
done

log "install the chart"
helm upgrade --install gyre-operator charts/gyre-operator --namespace gyre-system --create-namespace \
  --set image.repository="$REG/gyre-operator" --set image.tag="$TAG" \
  --set serverImage.repository="$REG/gyre" --set serverImage.tag="$TAG" --wait --timeout 3m
kubectl -n gyre-system rollout status deploy/gyre-operator --timeout=120s

log "CEL rules refuse an invalid resource"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
if kubectl -n "$NS" apply -f - <<'YAML' 2>/tmp/e2e-cel.txt; then
apiVersion: centrifugo.gyre.dev/v1alpha1
kind: Centrifugo
metadata: {name: bad}
spec: {replicas: 3}
YAML
  echo "e2e: replicas 3 without nats was accepted" >&2; exit 1
fi
grep -q "spec.nats is required" /tmp/e2e-cel.txt

log "create a Centrifugo and wait for Ready"
kubectl -n "$NS" apply -f - <<'YAML'
apiVersion: centrifugo.gyre.dev/v1alpha1
kind: Centrifugo
metadata: {name: demo}
spec:
  replicas: 1
  namespaces:
    - {name: chat, allowSubscribeForClient: true}
YAML
kubectl -n "$NS" wait centrifugo/demo --for=condition=Ready --timeout=180s
kubectl -n "$NS" get centrifugo demo -o wide
kubectl -n "$NS" get deploy,svc,cm,secret,sa -l app.kubernetes.io/instance=demo

log "publish through the internal Service with the generated API key"
api_key="$(kubectl -n "$NS" get secret demo-secrets -o jsonpath='{.data.apiKey}' | base64 -d)"
api_url="$(kubectl -n "$NS" get centrifugo demo -o jsonpath='{.status.endpoints.api}')"
kubectl -n "$NS" run e2e-curl --rm -i --restart=Never --image=curlimages/curl:8.10.1 -- \
  curl -fsS -X POST -H "X-API-Key: $api_key" -H 'Content-Type: application/json' \
  -d '{"channel":"chat:e2e","data":{"hello":"world"}}' "$api_url/publish"

log "config change rolls the pods and keeps the Secret"
hash1="$(kubectl -n "$NS" get centrifugo demo -o jsonpath='{.status.configHash}')"
secret1="$(kubectl -n "$NS" get secret demo-secrets -o jsonpath='{.data.tokenHmacSecretKey}')"
kubectl -n "$NS" patch centrifugo demo --type merge -p '{"spec":{"logLevel":"debug"}}'
for _ in $(seq 60); do
  hash2="$(kubectl -n "$NS" get centrifugo demo -o jsonpath='{.status.configHash}')"
  [ "$hash2" != "$hash1" ] && break; sleep 2
done
[ "$hash2" != "$hash1" ] || { echo "e2e: config hash did not change" >&2; exit 1; }
kubectl -n "$NS" rollout status deploy/demo --timeout=120s
[ "$(kubectl -n "$NS" get secret demo-secrets -o jsonpath='{.data.tokenHmacSecretKey}')" = "$secret1" ] \
  || { echo "e2e: Secret was regenerated" >&2; exit 1; }

log "paused: spec changes are not applied"
kubectl -n "$NS" annotate centrifugo demo centrifugo.gyre.dev/paused=true --overwrite
kubectl -n "$NS" patch centrifugo demo --type merge -p '{"spec":{"logLevel":"warn"}}'
sleep 10
kubectl -n "$NS" get cm demo-config -o jsonpath='{.data.config\.json}' | grep -q '"debug"' \
  || { echo "e2e: paused instance was reconciled" >&2; exit 1; }
kubectl -n "$NS" annotate centrifugo demo centrifugo.gyre.dev/paused-

log "delete: owner references remove every child"
kubectl -n "$NS" delete centrifugo demo --wait
for _ in $(seq 30); do
  left="$(kubectl -n "$NS" get deploy,svc,cm,secret,sa -l app.kubernetes.io/instance=demo -o name | wc -l)"
  [ "$left" = 0 ] && break; sleep 2
done
[ "$left" = 0 ] || { echo "e2e: children left behind" >&2; exit 1; }

log "e2e passed"
