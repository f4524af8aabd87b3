//! Publication tag filters (`tf` in a subscribe request, namespace option
//! `allow_tags_filter`): a subscriber only receives publications whose tags
//! match. Filtering happens at delivery time, after the position was
//! advanced, so a filtered-out publication never looks like a gap.

use std::collections::HashMap;

use gyre_proto::protocol::FilterNode;

/// Deepest nesting accepted, so a hostile filter cannot blow the stack.
const MAX_DEPTH: usize = 16;
/// Most nodes accepted in one filter.
const MAX_NODES: usize = 128;

/// Checks a filter's shape: known ops and comparisons, operands present.
pub fn validate(node: &FilterNode) -> Result<(), String> {
    let mut count = 0;
    validate_at(node, 0, &mut count)
}

fn validate_at(n: &FilterNode, depth: usize, count: &mut usize) -> Result<(), String> {
    *count += 1;
    if depth > MAX_DEPTH || *count > MAX_NODES {
        return Err("filter too large".into());
    }
    match n.op.as_str() {
        "" => {
            if n.key.is_empty() {
                return Err("leaf without key".into());
            }
            match n.cmp.as_str() {
                "eq" | "neq" | "sw" | "ew" | "ct" | "lt" | "lte" | "gt" | "gte" => Ok(()),
                "in" | "nin" => Ok(()),
                "ex" | "nex" => Ok(()),
                other => Err(format!("unknown comparison {other:?}")),
            }
        }
        "and" | "or" => {
            if n.nodes.is_empty() {
                return Err(format!("{} without nodes", n.op));
            }
            n.nodes.iter().try_for_each(|c| validate_at(c, depth + 1, count))
        }
        "not" => {
            if n.nodes.len() != 1 {
                return Err("not takes exactly one node".into());
            }
            validate_at(&n.nodes[0], depth + 1, count)
        }
        other => Err(format!("unknown operation {other:?}")),
    }
}

fn num(a: &str) -> Option<f64> {
    a.parse().ok()
}

/// Whether `tags` satisfy the (validated) filter.
pub fn matches(n: &FilterNode, tags: &HashMap<String, String>) -> bool {
    match n.op.as_str() {
        "and" => n.nodes.iter().all(|c| matches(c, tags)),
        "or" => n.nodes.iter().any(|c| matches(c, tags)),
        "not" => !n.nodes.first().is_some_and(|c| matches(c, tags)),
        _ => {
            let v = tags.get(&n.key);
            match n.cmp.as_str() {
                "ex" => v.is_some(),
                "nex" => v.is_none(),
                "eq" => v.is_some_and(|v| *v == n.val),
                "neq" => v.is_none_or(|v| *v != n.val),
                "in" => v.is_some_and(|v| n.vals.contains(v)),
                "nin" => v.is_none_or(|v| !n.vals.contains(v)),
                "sw" => v.is_some_and(|v| v.starts_with(n.val.as_str())),
                "ew" => v.is_some_and(|v| v.ends_with(n.val.as_str())),
                "ct" => v.is_some_and(|v| v.contains(n.val.as_str())),
                cmp @ ("lt" | "lte" | "gt" | "gte") => match (v.and_then(|v| num(v)), num(&n.val)) {
                    (Some(a), Some(b)) => match cmp {
                        "lt" => a < b,
                        "lte" => a <= b,
                        "gt" => a > b,
                        _ => a >= b,
                    },
                    _ => false,
                },
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(key: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode { key: key.into(), cmp: cmp.into(), val: val.into(), ..Default::default() }
    }

    #[test]
    fn leaves_and_combinators() {
        let tags: HashMap<String, String> =
            [("ticker".to_string(), "BTC".to_string()), ("price".to_string(), "101.5".to_string())].into();
        assert!(matches(&leaf("ticker", "eq", "BTC"), &tags));
        assert!(!matches(&leaf("ticker", "neq", "BTC"), &tags));
        assert!(matches(&leaf("price", "gt", "100"), &tags));
        assert!(!matches(&leaf("price", "lt", "100"), &tags));
        assert!(matches(&leaf("missing", "nex", ""), &tags));
        assert!(matches(&leaf("ticker", "sw", "B"), &tags));
        let in_node = FilterNode {
            key: "ticker".into(),
            cmp: "in".into(),
            vals: vec!["ETH".into(), "BTC".into()],
            ..Default::default()
        };
        assert!(matches(&in_node, &tags));
        let and = FilterNode {
            op: "and".into(),
            nodes: vec![leaf("ticker", "eq", "BTC"), leaf("price", "gte", "101.5")],
            ..Default::default()
        };
        assert!(matches(&and, &tags));
        let not = FilterNode { op: "not".into(), nodes: vec![and.clone()], ..Default::default() };
        assert!(!matches(&not, &tags));
        assert!(validate(&and).is_ok());
        assert!(validate(&leaf("", "eq", "x")).is_err());
        assert!(validate(&leaf("k", "regex", "x")).is_err());
        assert!(validate(&FilterNode { op: "xor".into(), ..Default::default() }).is_err());
    }
}
