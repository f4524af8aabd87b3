#!/usr/bin/env bash
# Pushes the images deploy/build-images.sh built to their registry (default ghcr.io/gyre-dev,
# the path the chart's values.yaml and manifests/operator.yaml name) and prints their digests.
#
#   buildah login ghcr.io                      # once; a token with write:packages
#   deploy/build-images.sh                     # release profile, tag = chart appVersion
#   deploy/push-images.sh                      # pushes <registry>/gyre and /gyre-operator
#   deploy/push-images.sh --dry-run            # prints what it would push
#
# Options: --registry REG (env GYRE_IMAGE_REGISTRY), --tag TAG (default: the chart's appVersion),
# --also-latest (also push the :latest tag), --dry-run.
# Refuses to push images built with the debug profile (the test suite builds those).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

registry="${GYRE_IMAGE_REGISTRY:-ghcr.io/gyre-dev}"
tag=""
dry=false
latest=false
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --also-latest) latest=true; shift ;;
    --dry-run) dry=true; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "push-images.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "push-images.sh: $*" >&2; exit 1; }
command -v buildah >/dev/null || die "buildah not found (Debian: apt-get install buildah)"
app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/gyre-operator/Chart.yaml)"
tag="${tag:-$app_version}"

for name in gyre gyre-operator; do
  ref="$registry/$name:$tag"
  buildah inspect --type image "$ref" >/dev/null 2>&1 || die "$ref not built; run deploy/build-images.sh first"
  profile="$(buildah inspect --type image --format '{{index .ImageAnnotations "dev.gyre.build-profile"}}{{index .Docker.Config.Labels "dev.gyre.build-profile"}}' "$ref")"
  case "$profile" in *release*) ;; *) die "$ref was built with the '$profile' profile; rebuild with --profile release" ;; esac
  dests=("docker://$ref")
  $latest && dests+=("docker://$registry/$name:latest")
  for dest in "${dests[@]}"; do
    if $dry; then
      echo "would push $ref -> $dest"
      continue
    fi
    digestfile="$(mktemp)"
    buildah push --quiet --digestfile "$digestfile" "$ref" "$dest"
    echo "pushed $dest@$(cat "$digestfile")"
    rm -f "$digestfile"
  done
done
