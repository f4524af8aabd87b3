//! The CRD: committed copies match the generator, the schema has the promised shape, the CEL
//! rules accept and refuse what they should, and the sample manifests behave as labelled.

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::{config::build_config, crd::Centrifugo};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn committed_crds_match_generator() {
    let generated = crate::crd_yaml();
    for rel in ["manifests/crd.yaml", "charts/gyre-operator/crds/centrifugo.yaml"] {
        let path = repo_root().join(rel);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(committed == generated, "{rel} is stale: run `cargo run -p gyre-operator -- crdgen -o {rel}`");
    }
}

#[test]
fn crd_shape() {
    let crd = serde_json::to_value(Centrifugo::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "centrifugos.centrifugo.gyre.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["cfgo"]));
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!((v["served"].clone(), v["storage"].clone()), (json!(true), json!(true)));
    assert_eq!(v["subresources"]["status"], json!({}));
    assert_eq!(
        v["subresources"]["scale"],
        json!({"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"})
    );
    let cols: Vec<&str> =
        v["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(cols, ["Ready", "Replicas", "Image", "Age"]);
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["replicas"]["default"], 1);
    assert_eq!(spec["properties"]["replicas"]["minimum"], 0.0);
    assert_eq!(spec["properties"]["logLevel"]["default"], "info");
    assert_eq!(spec["properties"]["config"]["x-kubernetes-preserve-unknown-fields"], true);
    assert_eq!(spec["properties"]["namespaces"]["x-kubernetes-list-type"], "map");
    let rules: Vec<&str> =
        spec["x-kubernetes-validations"].as_array().unwrap().iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(rules.len(), 2);
    let conds = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conds["x-kubernetes-list-map-keys"], json!(["type"]));
}

fn sample(spec: Value) -> Centrifugo {
    serde_json::from_value(json!({
        "apiVersion": "centrifugo.gyre.dev/v1alpha1", "kind": "Centrifugo",
        "metadata": {"name": "s", "namespace": "default"}, "spec": spec
    }))
    .expect("sample deserializes")
}

fn cel_errors(spec: Value) -> String {
    match sample(spec).validate_cel() {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn cel_accepts_good_specs() {
    for spec in [
        json!({}),
        json!({"replicas": 1}),
        json!({"replicas": 3, "nats": {"url": "nats://n:4222"}}),
        json!({"nats": {"urlFrom": {"name": "s", "key": "url"}}, "autoscaling": {"minReplicas": 2, "maxReplicas": 2}}),
        json!({"autoscaling": {"enabled": false}}),
        json!({"podDisruptionBudget": {"minAvailable": 1}}),
        json!({"podDisruptionBudget": {"maxUnavailable": "25%"}}),
    ] {
        assert_eq!(cel_errors(spec.clone()), "", "{spec}");
    }
}

#[test]
fn cel_refuses_bad_specs() {
    for (spec, needle) in [
        (json!({"replicas": 2}), "spec.nats is required when replicas > 1"),
        (json!({"autoscaling": {}}), "spec.nats is required when autoscaling is enabled"),
        (
            json!({"nats": {"url": "nats://n:4222"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 3}}),
            "minReplicas must not exceed",
        ),
        (json!({"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}), "at most one of"),
        (json!({"nats": {"prefix": "x"}}), "exactly one of nats.url, nats.urlFrom and nats.managed"),
        (json!({"nats": {"managed": false}}), "exactly one of"),
        (json!({"nats": {"managed": true, "url": "nats://n"}}), "exactly one of"),
        (json!({"nats": {"url": "nats://n", "urlFrom": {"name": "s", "key": "k"}}}), "exactly one of"),
    ] {
        let errs = cel_errors(spec.clone());
        assert!(errs.contains(needle), "{spec}: expected {needle:?}, got {errs:?}");
    }
}

/// `# fails: <stage>` header of a sample: where it must be refused.
fn expectation(text: &str) -> Option<(String, String)> {
    let line = text.lines().find(|l| l.starts_with("# fails:"))?;
    let rest = line.trim_start_matches("# fails:").trim();
    let (stage, needle) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((stage.to_string(), needle.trim().to_string()))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no samples in {}", dir.display());
    v
}

#[test]
fn example_manifests_are_valid() {
    for path in yaml_files(&repo_root().join("manifests/examples")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let cr: Centrifugo = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cr.validate_cel().unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        build_config(&cr.spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn invalid_samples_fail_where_labelled() {
    let mut stages = std::collections::BTreeSet::new();
    for path in yaml_files(&repo_root().join("tests/operator/samples/invalid")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let (stage, needle) = expectation(&text).unwrap_or_else(|| panic!("{} lacks '# fails:'", path.display()));
        stages.insert(stage.clone());
        let parsed: Result<Centrifugo, _> = serde_norway::from_str(&text);
        let err = match stage.as_str() {
            // Checked by the Python jsonschema step against the CRD's openAPIV3Schema; here it
            // is enough that the typed model refuses or that it survives to the schema check.
            "schema" => continue,
            "cel" => format!("{:?}", parsed.expect("parses").validate_cel().expect_err("CEL must refuse")),
            "operator" => {
                let cr = parsed.expect("parses");
                cr.validate_cel().unwrap_or_else(|e| panic!("{}: CEL refused: {e:?}", path.display()));
                build_config(&cr.spec).expect_err("operator must refuse").to_string()
            }
            other => panic!("unknown stage {other}"),
        };
        assert!(err.contains(&needle), "{}: expected {needle:?} in {err}", path.display());
    }
    assert!(stages.contains("cel") && stages.contains("operator") && stages.contains("schema"));
}
