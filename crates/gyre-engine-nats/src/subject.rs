//! Names in NATS: subjects, stream and bucket names, KV keys.
//!
//! Channel names may contain anything (dots, `*`, `>`, spaces), so they are
//! base64url-encoded (no padding) into a single subject token; the alphabet
//! (`A-Za-z0-9-_`) is valid in subjects and KV keys alike.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Token for a free-form string.
pub fn token(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s.as_bytes())
}

/// The string of a token (None: not ours).
pub fn untoken(t: &str) -> Option<String> {
    URL_SAFE_NO_PAD.decode(t).ok().and_then(|b| String::from_utf8(b).ok())
}

/// Idempotency key of a publish: unique per channel (JetStream message ids
/// are per stream, so the channel must be part of it).
pub fn idempotency_key(channel: &str, key: &str) -> String {
    format!("{}.{}", token(channel), token(key))
}

/// Every name derived from the prefix.
#[derive(Debug, Clone)]
pub struct Names {
    /// Sanitized prefix (subject token).
    pub prefix: String,
    /// History stream.
    pub history_stream: String,
    /// Presence KV bucket.
    pub presence_bucket: String,
    /// Idempotency KV bucket.
    pub idempotency_bucket: String,
}

impl Names {
    /// Names for a prefix; characters not allowed in stream names become `_`.
    pub fn new(prefix: &str) -> Names {
        let mut p: String =
            prefix.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        if p.is_empty() {
            p = "gyre".into();
        }
        Names {
            history_stream: format!("{p}-history"),
            presence_bucket: format!("{p}-presence"),
            idempotency_bucket: format!("{p}-idempotency"),
            prefix: p,
        }
    }
    /// Stored history of a channel.
    pub fn history(&self, channel: &str) -> String {
        format!("{}.h.{}", self.prefix, token(channel))
    }
    /// All history subjects.
    pub fn history_wildcard(&self) -> String {
        format!("{}.h.>", self.prefix)
    }
    /// Live traffic of a channel.
    pub fn live(&self, channel: &str) -> String {
        format!("{}.c.{}", self.prefix, token(channel))
    }
    /// All live subjects (republish destination).
    pub fn live_wildcard(&self) -> String {
        format!("{}.c.>", self.prefix)
    }
    /// Control messages for every node.
    pub fn control(&self) -> String {
        format!("{}.ctl", self.prefix)
    }
    /// Control messages for one node.
    pub fn control_node(&self, uid: &str) -> String {
        format!("{}.ctl.{}", self.prefix, token(uid))
    }
    /// Presence key of a client in a channel.
    pub fn presence_key(&self, channel: &str, client: &str) -> String {
        format!("{}.{}", token(channel), token(client))
    }
    /// Stream subjects of a channel's presence keys.
    pub fn presence_filter(&self, channel: &str) -> String {
        format!("$KV.{}.{}.*", self.presence_bucket, token(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_become_one_token() {
        let n = Names::new("centrifugo");
        let s = n.history("news.sport *>x y");
        assert!(s.starts_with("centrifugo.h."));
        let tok = s.trim_start_matches("centrifugo.h.");
        assert!(tok.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(untoken(tok).as_deref(), Some("news.sport *>x y"));
        assert_eq!(Names::new("a.b c").prefix, "a_b_c");
    }
}
