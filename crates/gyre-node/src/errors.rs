//! Wire-visible outcomes as plain values: reply errors (the connection stays)
//! and disconnects (the connection ends with a code the SDK acts on).
//!
//! SDKs decide whether to reconnect from the code range alone (3000–3499 and
//! 4000–4499 reconnect, 3500–3999 and 4500–4999 are terminal), so a wrong code
//! here is a behavioural bug in every client, not a cosmetic one.

use std::borrow::Cow;
use std::fmt;

use gyre_proto::protocol;

/// A reply error: `{"id":N,"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// Error code.
    pub code: u32,
    /// Message.
    pub message: Cow<'static, str>,
    /// Whether the SDK should retry.
    pub temporary: bool,
}

impl ClientError {
    const fn new(code: u32, message: &'static str) -> Self {
        ClientError { code, message: Cow::Borrowed(message), temporary: false }
    }
    /// 100 internal server error (temporary).
    pub const INTERNAL: ClientError =
        ClientError { code: 100, message: Cow::Borrowed("internal server error"), temporary: true };
    /// 101 unauthorized.
    pub const UNAUTHORIZED: ClientError = ClientError::new(101, "unauthorized");
    /// 102 unknown channel.
    pub const UNKNOWN_CHANNEL: ClientError = ClientError::new(102, "unknown channel");
    /// 103 permission denied.
    pub const PERMISSION_DENIED: ClientError = ClientError::new(103, "permission denied");
    /// 104 method not found.
    pub const METHOD_NOT_FOUND: ClientError = ClientError::new(104, "method not found");
    /// 105 already subscribed.
    pub const ALREADY_SUBSCRIBED: ClientError = ClientError::new(105, "already subscribed");
    /// 106 limit exceeded.
    pub const LIMIT_EXCEEDED: ClientError = ClientError::new(106, "limit exceeded");
    /// 107 bad request.
    pub const BAD_REQUEST: ClientError = ClientError::new(107, "bad request");
    /// 108 not available.
    pub const NOT_AVAILABLE: ClientError = ClientError::new(108, "not available");
    /// 109 token expired.
    pub const TOKEN_EXPIRED: ClientError = ClientError::new(109, "token expired");
    /// 110 expired.
    pub const EXPIRED: ClientError = ClientError::new(110, "expired");
    /// 111 too many requests.
    pub const TOO_MANY_REQUESTS: ClientError =
        ClientError { code: 111, message: Cow::Borrowed("too many requests"), temporary: true };
    /// 112 unrecoverable position.
    pub const UNRECOVERABLE_POSITION: ClientError = ClientError::new(112, "unrecoverable position");
    /// API "not found" (104 with the API's message).
    pub const NOT_FOUND: ClientError = ClientError::new(104, "not found");

    /// To the wire type.
    pub fn to_proto(&self) -> protocol::Error {
        protocol::Error { code: self.code, message: self.message.to_string(), temporary: self.temporary }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

impl std::error::Error for ClientError {}

/// A disconnect: close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Code.
    pub code: u32,
    /// Reason (fits a WebSocket close frame: ≤ 123 bytes).
    pub reason: Cow<'static, str>,
}

impl Disconnect {
    const fn new(code: u32, reason: &'static str) -> Self {
        Disconnect { code, reason: Cow::Borrowed(reason) }
    }
    /// 3000 connection closed (client-side marker; never sent).
    pub const CONNECTION_CLOSED: Disconnect = Disconnect::new(3000, "connection closed");
    /// 3001 shutdown.
    pub const SHUTDOWN: Disconnect = Disconnect::new(3001, "shutdown");
    /// 3004 internal server error.
    pub const SERVER_ERROR: Disconnect = Disconnect::new(3004, "internal server error");
    /// 3005 connection expired.
    pub const EXPIRED: Disconnect = Disconnect::new(3005, "connection expired");
    /// 3006 subscription expired.
    pub const SUB_EXPIRED: Disconnect = Disconnect::new(3006, "subscription expired");
    /// 3008 slow.
    pub const SLOW: Disconnect = Disconnect::new(3008, "slow");
    /// 3009 write error.
    pub const WRITE_ERROR: Disconnect = Disconnect::new(3009, "write error");
    /// 3010 insufficient state.
    pub const INSUFFICIENT_STATE: Disconnect = Disconnect::new(3010, "insufficient state");
    /// 3011 force reconnect.
    pub const FORCE_RECONNECT: Disconnect = Disconnect::new(3011, "force reconnect");
    /// 3012 no pong.
    pub const NO_PONG: Disconnect = Disconnect::new(3012, "no pong");
    /// 3013 too many requests.
    pub const TOO_MANY_REQUESTS: Disconnect = Disconnect::new(3013, "too many requests");
    /// 3500 invalid token.
    pub const INVALID_TOKEN: Disconnect = Disconnect::new(3500, "invalid token");
    /// 3501 bad request.
    pub const BAD_REQUEST: Disconnect = Disconnect::new(3501, "bad request");
    /// 3502 stale.
    pub const STALE: Disconnect = Disconnect::new(3502, "stale");
    /// 3503 force disconnect.
    pub const FORCE_NO_RECONNECT: Disconnect = Disconnect::new(3503, "force disconnect");
    /// 3504 connection limit.
    pub const CONNECTION_LIMIT: Disconnect = Disconnect::new(3504, "connection limit");
    /// 3505 channel limit.
    pub const CHANNEL_LIMIT: Disconnect = Disconnect::new(3505, "channel limit");
    /// 3506 inappropriate protocol.
    pub const INAPPROPRIATE_PROTOCOL: Disconnect = Disconnect::new(3506, "inappropriate protocol");
    /// 3507 permission denied.
    pub const PERMISSION_DENIED: Disconnect = Disconnect::new(3507, "permission denied");
    /// 3508 not available.
    pub const NOT_AVAILABLE: Disconnect = Disconnect::new(3508, "not available");
    /// 3509 too many errors.
    pub const TOO_MANY_ERRORS: Disconnect = Disconnect::new(3509, "too many errors");

    /// A custom disconnect (server API).
    pub fn custom(code: u32, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into();
        truncate_utf8(&mut reason, 123);
        Disconnect { code, reason: Cow::Owned(reason) }
    }

    /// Whether SDKs reconnect after this code.
    pub fn reconnect(&self) -> bool {
        matches!(self.code, 3000..=3499 | 4000..=4499) || self.code >= 5000 || self.code < 3000
    }

    /// The push form (emulation and unidirectional transports).
    pub fn to_proto(&self) -> protocol::Disconnect {
        protocol::Disconnect { code: self.code, reason: self.reason.to_string(), reconnect: false }
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "disconnect {} {}", self.code, self.reason)
    }
}

impl std::error::Error for Disconnect {}

/// Unsubscribe push codes.
pub mod unsubscribe {
    /// 2000 server unsubscribe (final).
    pub const SERVER: (u32, &str) = (2000, "server unsubscribe");
    /// 2500 insufficient state (resubscribe).
    pub const INSUFFICIENT_STATE: (u32, &str) = (2500, "insufficient state");
    /// 2501 subscription expired (resubscribe).
    pub const EXPIRED: (u32, &str) = (2501, "subscription expired");
}

/// Result of handling one command: a reply error or a disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Reply with this error; the connection stays.
    Reply(ClientError),
    /// Close the connection.
    Disconnect(Disconnect),
}

impl From<ClientError> for CommandError {
    fn from(e: ClientError) -> Self {
        CommandError::Reply(e)
    }
}

impl From<Disconnect> for CommandError {
    fn from(d: Disconnect) -> Self {
        CommandError::Disconnect(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_reason_fits_a_close_frame() {
        let d = Disconnect::custom(4500, "é".repeat(100));
        assert!(d.reason.len() <= 123);
        assert!(!d.reconnect());
        assert!(Disconnect::SHUTDOWN.reconnect());
        assert!(!Disconnect::INVALID_TOKEN.reconnect());
    }
}
