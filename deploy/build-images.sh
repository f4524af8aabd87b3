#!/usr/bin/env bash
# Builds Gyre's two container images from this workspace with buildah, no Docker daemon needed:
#
#   <registry>/gyre:<appVersion>           the server (`gyre`), ports 8000 (clients) and 9000
#                                          (API, /metrics, /health/{live,ready})
#   <registry>/gyre-operator:<appVersion>  the operator (`gyre-operator run`)
#
# Each image is FROM scratch: the binary, exactly the shared libraries it links (from `ldd`:
# glibc, libgcc_s, libm and the loader), the host's CA bundle, /etc/passwd and /etc/group naming
# the non-root user 65532 ("nonroot", the uid distroless uses and the chart's securityContext
# expects), and /etc/nsswitch.conf. No shell, no package manager.
#
# Reproducible: every file is owned by 0:0 with its mtime set to SOURCE_DATE_EPOCH (default: the
# commit time of HEAD), and the image is committed with that timestamp, so building the same
# workspace twice gives the same image ID (tests/images/run.sh checks it).
#
# Usage: deploy/build-images.sh [--profile release|debug] [--registry REG] [--tag TAG] [--no-build]
#   --profile   cargo profile of the binaries (default release; env GYRE_IMAGE_PROFILE). The test
#               suite uses debug: those binaries are already built by `cargo build`, saving a
#               release build's minutes and gigabytes. Debug info is stripped either way.
#   --registry  image name prefix (default ghcr.io/gyre-dev; env GYRE_IMAGE_REGISTRY), the path
#               deploy/push-images.sh pushes to and the chart's defaults name.
#   --tag       image tag (default: appVersion of charts/gyre-operator/Chart.yaml).
#   --no-build  use the binaries already in target/<profile>/ (env GYRE_IMAGE_NO_BUILD=1).
# Prints the two image names on stdout's last two lines.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

profile="${GYRE_IMAGE_PROFILE:-release}"
registry="${GYRE_IMAGE_REGISTRY:-ghcr.io/gyre-dev}"
tag=""
build=true
[ "${GYRE_IMAGE_NO_BUILD:-0}" = 1 ] && build=false
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --registry) registry="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --no-build) build=false; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "build-images.sh: $*" >&2; exit 1; }
case "$profile" in release|debug) ;; *) die "--profile must be release or debug, got '$profile'" ;; esac
for tool in buildah ldd objcopy cargo; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install buildah binutils; see tests/install-deps.sh)"
done
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA_BUNDLE" ] || die "$CA_BUNDLE missing (Debian: apt-get install ca-certificates)"

app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/gyre-operator/Chart.yaml)"
[ -n "$app_version" ] || die "no appVersion in charts/gyre-operator/Chart.yaml"
tag="${tag:-$app_version}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
if $build; then
  flags=(--locked)
  [ "$profile" = release ] && flags+=(--release)
  echo "build-images.sh: cargo build ${flags[*]} (gyre, gyre-operator)" >&2
  cargo build "${flags[@]}" -p gyre-server --bin gyre -p gyre-operator --bin gyre-operator >&2
fi

work="$(mktemp -d)"
ctrs=()
cleanup() {
  local c
  for c in "${ctrs[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# stage BINARY NAME: writes a root filesystem for BINARY under $work/NAME.
stage() {
  local bin="$1" name="$2" rootfs lib
  rootfs="$work/$name"
  [ -x "$bin" ] || die "$bin not built (run without --no-build, or cargo build first)"
  mkdir -p "$rootfs"/{usr/local/bin,etc/ssl/certs,tmp}
  objcopy --strip-debug "$bin" "$rootfs/usr/local/bin/$name"
  # Every library the dynamic loader would map, at the path it maps it from (the loader itself
  # is the line without "=>").
  while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
  [ -n "$(find "$rootfs" -name 'libc.so*' -print -quit)" ] || die "ldd found no libc for $bin"
  cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    > "$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
  printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
  chmod 1777 "$rootfs/tmp"
  find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# image NAME PORTS CMD_JSON: commits $work/NAME as $registry/NAME:$tag.
image() {
  local name="$1" ports="$2" cmd="$3"
  local ref ctr p
  ref="$registry/$name:$tag"
  ctr="$(buildah from --quiet scratch)"
  ctrs+=("$ctr")
  buildah copy --quiet --chown 0:0 "$ctr" "$work/$name" / >/dev/null
  local cfg=(--user 65532:65532 --workingdir / --entrypoint "[\"/usr/local/bin/$name\"]"
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
    --label "org.opencontainers.image.title=$name"
    --label "org.opencontainers.image.version=$app_version"
    --label "org.opencontainers.image.revision=$revision"
    --label "org.opencontainers.image.source=https://github.com/gyre-dev/gyre"
    --label "org.opencontainers.image.licenses=Apache-2.0"
    --label "dev.gyre.build-profile=$profile")
  for p in $ports; do cfg+=(--port "$p"); done
  buildah config "${cfg[@]}" --cmd "$cmd" "$ctr"
  buildah commit --quiet --timestamp "$SOURCE_DATE_EPOCH" --rm "$ctr" "$ref" >/dev/null
  ctrs=("${ctrs[@]/$ctr}")
  echo "build-images.sh: built $ref ($(buildah inspect --type image --format '{{.FromImageID}}' "$ref" | cut -c1-12))" >&2
}

stage "$target_dir/$profile/gyre" gyre
stage "$target_dir/$profile/gyre-operator" gyre-operator
# The operator passes `--config /etc/gyre/config.json` itself; the CMD is the same default.
image gyre "8000 9000" '["--config", "/etc/gyre/config.json"]'
image gyre-operator "8080" '["run"]'
echo "$registry/gyre:$tag"
echo "$registry/gyre-operator:$tag"
