//! Fossil delta compression for delta-negotiated subscriptions.
//!
//! The `fossil-delta` crate produces the Fossil SCM format that centrifuge-js
//! and centrifuge-python decode. A patch is only used when it is smaller than
//! the payload and, for JSON clients, valid UTF-8: JSON carries the patch as a
//! string, and a literal run that splits a multi-byte character would not
//! survive the client's string round trip (the full payload is sent instead).

use bytes::Bytes;

/// A patch turning `source` into `target`, or `None` when sending `target`
/// in full is as small or the patch could not travel as a JSON string.
pub fn patch(source: &[u8], target: &[u8], json: bool) -> Option<Bytes> {
    // The crate's argument order is (target, source).
    let d = fossil_delta::delta(target, source);
    if d.len() >= target.len() {
        return None;
    }
    if json && std::str::from_utf8(&d).is_err() {
        return None;
    }
    Some(Bytes::from(d))
}

/// Applies a patch (tests and tooling).
pub fn apply(source: &[u8], patch: &[u8]) -> Option<Vec<u8>> {
    fossil_delta::apply(source, patch).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn apply_of_delta_is_the_target(a in proptest::collection::vec(any::<u8>(), 0..2000),
                                        b in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let d = fossil_delta::delta(&b, &a);
            prop_assert_eq!(fossil_delta::apply(&a, &d).unwrap(), b);
        }

        #[test]
        fn similar_json_documents_compress(n in 0u32..1000, s in "[a-z]{0,40}") {
            let a = format!(r#"{{"counter":{n},"text":"{s}","padding":"{}"}}"#, "x".repeat(200));
            let b = format!(r#"{{"counter":{},"text":"{s}","padding":"{}"}}"#, n + 1, "x".repeat(200));
            let p = patch(a.as_bytes(), b.as_bytes(), true).expect("a small change compresses");
            prop_assert!(p.len() < b.len());
            prop_assert_eq!(apply(a.as_bytes(), &p).unwrap(), b.into_bytes());
        }
    }
}
