#!/usr/bin/env python3
"""Offline checks of the operator's and the chart's Kubernetes YAML.

Subcommands:
  k8s FILE...       every document passes kubernetes-validate --strict for each --version;
                    Centrifugo documents are checked against our CRD schema instead; kinds
                    with no schema available offline (ServiceMonitor; HTTPRoute is checked by hand) are named, not ignored
  samples           good samples pass the CRD schema; samples labelled '# fails: schema'
                    fail it; samples refused later (CEL, operator) must pass the schema
  rbac FILE         the rendered chart grants exactly the permissions `gyre-operator rbac` lists
  expect FILE       assertions about one rendered chart (kinds present/absent)

The CRD schema is turned into JSON Schema the way the apiserver reads it: `nullable` becomes a
union with null, int-or-string accepts both, and unknown fields are rejected (kubectl's default
field validation is Strict) except under x-kubernetes-preserve-unknown-fields.
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

FAILURES = []


def fail(msg):
    FAILURES.append(msg)
    print(f"FAIL: {msg}")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def to_json_schema(node):
    node = copy.deepcopy(node)

    def walk(n):
        if not isinstance(n, dict):
            return
        if n.pop("x-kubernetes-int-or-string", False):
            n.pop("type", None)
            n["type"] = ["integer", "string"]
        if n.pop("nullable", False) and "type" in n:
            t = n["type"]
            n["type"] = (t if isinstance(t, list) else [t]) + ["null"]
        preserve = n.get("x-kubernetes-preserve-unknown-fields", False)
        if "properties" in n and "additionalProperties" not in n and not preserve:
            n["additionalProperties"] = False
        for k in ("properties",):
            for v in n.get(k, {}).values():
                walk(v)
        for k in ("items", "additionalProperties"):
            if isinstance(n.get(k), dict):
                walk(n[k])
        for k in ("anyOf", "oneOf", "allOf"):
            for v in n.get(k, []):
                walk(v)

    walk(node)
    return node


def crd_spec_validator(crd_path):
    crd = load_docs(crd_path)[0]
    version = crd["spec"]["versions"][0]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return jsonschema.Draft7Validator(to_json_schema(spec_schema))


def schema_errors(validator, doc):
    errs = sorted(validator.iter_errors(doc.get("spec", {})), key=lambda e: list(e.path))
    return ["/".join(map(str, e.path)) + ": " + e.message for e in errs]


def cmd_k8s(args):
    crd_validator = crd_spec_validator(args.crd)
    checked = 0
    for path in args.files:
        for doc in load_docs(path):
            kind = doc.get("kind")
            name = f"{path}: {kind}/{doc.get('metadata', {}).get('name')}"
            if kind == "Centrifugo":
                errs = schema_errors(crd_validator, doc)
                if errs:
                    fail(f"{name} fails the CRD schema: {errs}")
                checked += 1
                continue
            if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                print(f"note: {name}: NOT schema-checked (no offline schema for prometheus-operator kinds)")
                continue
            if doc.get("apiVersion", "") == "gateway.networking.k8s.io/v1" and kind == "HTTPRoute":
                # No offline Gateway API schema: check the fields the operator writes by hand.
                spec = doc.get("spec", {})
                ok = spec.get("parentRefs") and all(r.get("name") for r in spec["parentRefs"])
                for rule in spec.get("rules", []):
                    for m in rule.get("matches", []):
                        ok = ok and m["path"]["type"] == "PathPrefix" and m["path"]["value"].startswith("/")
                    ok = ok and all(b.get("kind") == "Service" and isinstance(b.get("port"), int) for b in rule["backendRefs"])
                if not ok:
                    fail(f"{name}: malformed HTTPRoute {spec}")
                print(f"note: {name}: structure checked by hand (no offline Gateway API schema)")
                continue
            if doc.get("apiVersion", "") == "cert-manager.io/v1" and kind == "Certificate":
                # No offline cert-manager schema: check the fields the operator writes by hand.
                spec = doc.get("spec", {})
                ref = spec.get("issuerRef", {})
                # An identity: DNS names (server certificates) or a commonName of at most 64
                # characters (the managed NATS's client certificate); usages cert-manager knows.
                names_ok = (spec.get("dnsNames") and all(isinstance(n, str) and n for n in spec["dnsNames"])) \
                    or (isinstance(spec.get("commonName"), str) and 0 < len(spec["commonName"]) <= 64
                        and "dnsNames" not in spec)
                usages_ok = all(u in ("digital signature", "key encipherment", "server auth", "client auth")
                                for u in spec.get("usages", []))
                ok = (isinstance(spec.get("secretName"), str) and spec["secretName"] and names_ok and usages_ok
                      and ref.get("name") and ref.get("kind") in ("Issuer", "ClusterIssuer") and ref.get("group"))
                if not ok:
                    fail(f"{name}: malformed Certificate {spec}")
                print(f"note: {name}: structure checked by hand (no offline cert-manager schema)")
                continue
            for v in args.versions.split(","):
                try:
                    kubernetes_validate.validate(doc, v, strict=True)
                    checked += 1
                except kubernetes_validate.ValidationError as e:
                    fail(f"{name} invalid for Kubernetes {v}: {e.message} at {'/'.join(map(str, e.path))}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    fail(f"{name}: no schema for Kubernetes {v}: {e}")
    print(f"k8s: {checked} document checks across {len(args.files)} files")


def cmd_samples(args):
    v = crd_spec_validator(args.crd)
    for path in args.good:
        for doc in load_docs(path):
            errs = schema_errors(v, doc)
            if errs:
                fail(f"{path} should pass the CRD schema: {errs}")
    n_bad = 0
    for path in sorted(Path(args.invalid_dir).glob("*.yaml")):
        text = path.read_text()
        header = next((l for l in text.splitlines() if l.startswith("# fails:")), None)
        if header is None:
            fail(f"{path} has no '# fails:' header")
            continue
        stage, _, needle = header[len("# fails:"):].strip().partition(" ")
        errs = schema_errors(v, yaml.safe_load(text))
        if stage == "schema":
            n_bad += 1
            if not errs:
                fail(f"{path} should fail the CRD schema")
            elif needle and not any(needle in e for e in errs):
                fail(f"{path} failed, but not on {needle!r}: {errs}")
        elif errs:
            fail(f"{path} is labelled '{stage}' so must pass the schema, got {errs}")
    if n_bad == 0:
        fail("no schema-level invalid samples found")
    print(f"samples: {len(args.good)} good files, {n_bad} schema-invalid samples")


def merged_values(path):
    """The chart's defaults overlaid with one values file (maps merge, everything else replaces)."""
    def merge(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a.get(k), v)
            return out
        return b
    base = load_docs("charts/gyre-operator/values.yaml")[0]
    docs = load_docs(path) if path else []
    over = docs[0] if docs else {}
    return merge(base, over or {})


def cmd_rbac(args):
    """The rendered Role/ClusterRole rules grant exactly the operator's REQUIRED table: every
    (group, resource, verb) the code uses, for the features the values switch on, and nothing
    more."""
    required = json.load(open(args.required))
    values = merged_values(args.values)
    on = {
        "serviceMonitors": values["rbac"].get("serviceMonitors", False),
        "httpRoutes": values["rbac"].get("httpRoutes", False),
        "certificates": values["rbac"].get("certificates", False),
        "exportApiKey": values["rbac"].get("exportApiKey", False),
        "leaderElection": values.get("leaderElection", {}).get("enabled", False),
    }
    want = set()
    for p in required:
        if p.get("optional") and not on[p["optional"]]:
            continue
        for v in p["verbs"]:
            want.add((p["group"], p["resource"], v))
    got = set()
    roles = 0
    for doc in load_docs(args.file):
        if doc.get("kind") in ("ClusterRole", "Role"):
            roles += 1
            for r in doc.get("rules", []):
                for g in r.get("apiGroups", []):
                    for res in r.get("resources", []):
                        for v in r.get("verbs", []):
                            got.add((g, res, v))
    if not roles:
        fail(f"{args.file}: no Role/ClusterRole rendered")
    missing, extra = sorted(want - got), sorted(got - want)
    if missing:
        fail(f"{args.file}: missing grants {missing}")
    if extra:
        fail(f"{args.file}: grants the code never uses {extra}")
    print(f"rbac: exactly {len(want)} (group, resource, verb) grants in {args.file}")


def cmd_expect(args):
    docs = load_docs(args.file)
    kinds = [d["kind"] for d in docs]
    for k in args.has or []:
        if k not in kinds:
            fail(f"{args.file}: expected a {k}, got {kinds}")
    for k in args.lacks or []:
        if k in kinds:
            fail(f"{args.file}: expected no {k}")
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("gyre-operator"):
            c = d["spec"]["template"]["spec"]["containers"][0]
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False):
                fail(f"{args.file}: operator container is not locked down: {sc}")
            ns_arg = [a for a in c.get("args", []) if a.startswith("--watch-namespace=")]
            if args.watch_namespace and ns_arg != [f"--watch-namespace={args.watch_namespace}"]:
                fail(f"{args.file}: expected --watch-namespace={args.watch_namespace}, got {c.get('args')}")
            if not args.watch_namespace and ns_arg:
                fail(f"{args.file}: unexpected {ns_arg}")
    print(f"expect: {args.file} has {sorted(set(kinds))}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--crd", default="manifests/crd.yaml")
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("k8s")
    k.add_argument("--versions", default="1.33.0,1.37.0", help="comma-separated")
    k.add_argument("files", nargs="+")
    s = sub.add_parser("samples")
    s.add_argument("--good", nargs="+", required=True)
    s.add_argument("--invalid-dir", required=True)
    r = sub.add_parser("rbac")
    r.add_argument("--required", required=True)
    r.add_argument("--values", help="values file the chart was rendered with (defaults otherwise)")
    r.add_argument("file")
    e = sub.add_parser("expect")
    e.add_argument("--has", nargs="*")
    e.add_argument("--lacks", nargs="*")
    e.add_argument("--watch-namespace", default="")
    e.add_argument("file")
    args = p.parse_args()
    {"k8s": cmd_k8s, "samples": cmd_samples, "rbac": cmd_rbac, "expect": cmd_expect}[args.cmd](args)
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
