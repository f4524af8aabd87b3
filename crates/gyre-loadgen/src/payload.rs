//! The publication payload and how receivers find its send time.
//!
//! A payload is a small JSON object, `{"lg_ts":<µs>,"lg_seq":<n>,"pad":"…"}`,
//! whose `lg_ts` is the publisher's wall-clock time (microseconds since the Unix
//! epoch) at the moment the HTTP request was sent. Gyre embeds the payload as
//! raw JSON in JSON pushes and as the raw bytes of `Publication.data` in
//! Protobuf pushes; Nchan sends it verbatim as a WebSocket text frame. In every
//! case the bytes `"lg_ts":` appear literally, so receivers locate deliveries by
//! scanning for that marker instead of decoding whole messages — the load
//! generator has one core for up to ~300k deliveries/s.

use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem;

/// The literal that precedes the timestamp in every payload.
pub const TS_MARKER: &[u8] = b"\"lg_ts\":";

/// Wall-clock microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Builds a payload carrying send time `ts_us`, sequence `seq` and `pad_bytes`
/// of padding (`x` characters, so the result stays valid JSON).
pub fn encode_payload(ts_us: u64, seq: u64, pad_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + pad_bytes);
    out.extend_from_slice(b"{");
    out.extend_from_slice(TS_MARKER);
    out.extend_from_slice(ts_us.to_string().as_bytes());
    out.extend_from_slice(b",\"lg_seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    if pad_bytes > 0 {
        out.extend_from_slice(b",\"pad\":\"");
        out.resize(out.len() + pad_bytes, b'x');
        out.extend_from_slice(b"\"");
    }
    out.extend_from_slice(b"}");
    out
}

/// A reusable scanner for payload timestamps.
pub struct TsScanner {
    finder: memmem::Finder<'static>,
}

impl Default for TsScanner {
    fn default() -> Self {
        Self { finder: memmem::Finder::new(TS_MARKER) }
    }
}

impl TsScanner {
    /// Calls `f` with the timestamp of every payload found in `bytes`, in order.
    /// Returns how many were found. A marker not followed by digits is skipped.
    pub fn scan(&self, bytes: &[u8], mut f: impl FnMut(u64)) -> usize {
        let mut n = 0;
        for pos in self.finder.find_iter(bytes) {
            if let Some(ts) = parse_u64_prefix(&bytes[pos + TS_MARKER.len()..]) {
                f(ts);
                n += 1;
            }
        }
        n
    }
}

/// Parses the decimal digits at the start of `b`; `None` if there are none or
/// they overflow a `u64`.
pub fn parse_u64_prefix(b: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut digits = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_valid_json_and_round_trips() {
        let p = encode_payload(1_730_000_000_123_456, 42, 10);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["lg_ts"], 1_730_000_000_123_456_u64);
        assert_eq!(v["lg_seq"], 42);
        assert_eq!(v["pad"].as_str().unwrap().len(), 10);
        let mut got = vec![];
        assert_eq!(TsScanner::default().scan(&p, |t| got.push(t)), 1);
        assert_eq!(got, vec![1_730_000_000_123_456]);
    }

    #[test]
    fn payload_without_padding() {
        let p = encode_payload(7, 0, 0);
        assert_eq!(p, br#"{"lg_ts":7,"lg_seq":0}"#);
    }

    #[test]
    fn scan_finds_every_payload_in_a_coalesced_frame() {
        let frame = br#"{"push":{"channel":"ch0","pub":{"data":{"lg_ts":100,"lg_seq":1}}}}
{}
{"push":{"channel":"ch0","pub":{"data":{"lg_ts":200,"lg_seq":2}}}}"#;
        let mut got = vec![];
        let n = TsScanner::default().scan(frame, |t| got.push(t));
        assert_eq!(n, 2);
        assert_eq!(got, vec![100, 200]);
    }

    #[test]
    fn scan_skips_marker_without_digits() {
        let mut got = vec![];
        let n = TsScanner::default().scan(br#"{"lg_ts":"x"} {"lg_ts":5}"#, |t| got.push(t));
        assert_eq!(n, 1);
        assert_eq!(got, vec![5]);
    }

    #[test]
    fn parse_prefix_edge_cases() {
        assert_eq!(parse_u64_prefix(b"123,"), Some(123));
        assert_eq!(parse_u64_prefix(b""), None);
        assert_eq!(parse_u64_prefix(b"-1"), None);
        assert_eq!(parse_u64_prefix(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64_prefix(b"18446744073709551616"), None);
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_micros() > 1_577_836_800_000_000);
    }
}
