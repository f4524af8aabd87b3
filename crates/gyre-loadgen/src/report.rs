//! Medians over repeated runs and the markdown table of BENCHMARKS.md.

use serde_json::{Value, json};

use crate::stats::median;

/// The metrics whose median is reported: (column title, JSON pointer, scale).
pub const METRICS: &[(&str, &str, f64)] = &[
    ("ready", "/ready", 1.0),
    ("failed", "/failed", 1.0),
    ("mem/conn KiB", "/pss_per_conn_bytes", 1.0 / 1024.0),
    ("server PSS MiB", "/server_pss_after_kib", 1.0 / 1024.0),
    ("deliv/s", "/delivered_per_s", 1.0),
    ("p50 ms", "/latency_ms/p50", 1.0),
    ("p99 ms", "/latency_ms/p99", 1.0),
    ("max ms", "/latency_ms/max", 1.0),
    ("lost", "/lost", 1.0),
    ("pub/s", "/pub_per_s", 1.0),
    ("pub p50 ms", "/publish_latency_ms/p50", 1.0),
    ("pub p99 ms", "/publish_latency_ms/p99", 1.0),
    ("CPU µs/deliv", "/server_cpu_us_per_delivery", 1.0),
    ("loadgen CPU %", "/loadgen_cpu_pct", 1.0),
    ("other CPU %", "/other_cpu_pct", 1.0),
    ("server runq wait ms", "/server_runq_wait_ms", 1.0),
];

/// One (scenario, target) group with the median of each metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Scenario label.
    pub scenario: String,
    /// Target name.
    pub target: String,
    /// Runs found.
    pub runs: usize,
    /// Median per metric of [`METRICS`], `None` if no run had it.
    pub medians: Vec<Option<f64>>,
    /// Worst (largest) loss over the runs — zero loss must hold in every run.
    pub max_lost: Option<f64>,
}

/// Groups report lines by (scenario, target), in order of first appearance,
/// and takes medians. Lines that are not JSON objects are skipped.
pub fn summarize(lines: &str) -> Vec<Row> {
    let mut groups: Vec<((String, String), Vec<Value>)> = Vec::new();
    for line in lines.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        let (Some(s), Some(t)) = (v["scenario"].as_str(), v["target"].as_str()) else {
            continue;
        };
        let key = (s.to_owned(), t.to_owned());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, runs)) => runs.push(v),
            None => groups.push((key, vec![v])),
        }
    }
    groups
        .into_iter()
        .map(|((scenario, target), runs)| {
            let medians = METRICS
                .iter()
                .map(|(_, ptr, scale)| {
                    let vals: Vec<f64> =
                        runs.iter().filter_map(|r| r.pointer(ptr).and_then(Value::as_f64)).map(|x| x * scale).collect();
                    median(&vals)
                })
                .collect();
            let max_lost = runs
                .iter()
                .filter_map(|r| r["lost"].as_f64())
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            Row { scenario, target, runs: runs.len(), medians, max_lost }
        })
        .collect()
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// The markdown table of medians.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| scenario | server | runs |");
    for (title, _, _) in METRICS {
        out.push_str(&format!(" {title} |"));
    }
    out.push_str(" max lost |\n|---|---|---|");
    for _ in METRICS {
        out.push_str("---|");
    }
    out.push_str("---|\n");
    for r in rows {
        out.push_str(&format!("| {} | {} | {} |", r.scenario, r.target, r.runs));
        for m in &r.medians {
            out.push_str(&format!(" {} |", fmt_num(*m)));
        }
        out.push_str(&format!(" {} |\n", fmt_num(r.max_lost)));
    }
    out
}

/// The medians as JSON objects, one per row.
pub fn medians_json(rows: &[Row]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            for ((title, _, _), v) in METRICS.iter().zip(&r.medians) {
                m.insert((*title).to_owned(), json!(v));
            }
            json!({"scenario": r.scenario, "target": r.target, "runs": r.runs,
                   "median": m, "max_lost": r.max_lost})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_per_group() {
        let input = r#"{"scenario":"a","target":"nchan","ready":10,"lost":0,"latency_ms":{"p99":3.0},"pss_per_conn_bytes":2048}
{"scenario":"a","target":"nchan","ready":10,"lost":2,"latency_ms":{"p99":1.0},"pss_per_conn_bytes":4096}
not json
{"scenario":"a","target":"gyre-json","ready":9,"lost":0,"latency_ms":null}
{"scenario":"a","target":"nchan","ready":8,"lost":0,"latency_ms":{"p99":2.0},"pss_per_conn_bytes":1024}
"#;
        let rows = summarize(input);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].target, "nchan");
        assert_eq!(rows[0].runs, 3);
        let col = |name: &str| METRICS.iter().position(|(t, _, _)| *t == name).unwrap();
        assert_eq!(rows[0].medians[col("ready")], Some(10.0));
        assert_eq!(rows[0].medians[col("p99 ms")], Some(2.0));
        assert_eq!(rows[0].medians[col("mem/conn KiB")], Some(2.0));
        assert_eq!(rows[0].max_lost, Some(2.0));
        assert_eq!(rows[1].medians[col("p99 ms")], None);
        let md = markdown(&rows);
        assert!(md.starts_with("| scenario | server | runs |"));
        assert_eq!(md.lines().count(), 4);
        assert!(md.contains("| a | gyre-json | 1 |"));
        assert_eq!(medians_json(&rows)[0]["median"]["ready"], 10.0);
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_num(None), "–");
        assert_eq!(fmt_num(Some(12345.6)), "12346");
        assert_eq!(fmt_num(Some(12.34)), "12.3");
        assert_eq!(fmt_num(Some(1.234)), "1.23");
        assert_eq!(fmt_num(Some(200.0)), "200");
        assert_eq!(fmt_num(Some(0.0)), "0");
    }
}
