//! The control plane's wire format: what nodes tell each other through
//! [`crate::engine::Broker::publish_control`].
//!
//! Messages are JSON so that an operator can read them with `nats sub
//! '<prefix>.ctl.>'`. Every message names its sender; a node ignores its own
//! broadcasts because it already applied them locally before publishing
//! (so a single-node setup, where publishing goes nowhere, behaves the same).
//!
//! Failure modes: a control message is at-most-once (core NATS). A lost
//! heartbeat only delays `info`; a lost `disconnect` is reported to nobody,
//! exactly as in Centrifugo, which is why API calls fail loudly when the
//! broker refuses the publish (NATS down) rather than pretending success.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::auth::SubOverride;
use crate::engine::StreamPosition;
use crate::node::{NodeInfo, ServerSubscribe, Target};

/// One control message with its sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender node uid.
    pub from: String,
    /// What.
    pub msg: ControlMsg,
}

/// Control operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    /// Heartbeat with the sender's counts.
    Node {
        /// The sender's info.
        info: NodeInfo,
    },
    /// The sender is shutting down: forget it now rather than at expiry.
    Shutdown,
    /// API `disconnect`.
    Disconnect {
        /// Whom.
        target: Target,
        /// Client ids to spare.
        whitelist: Vec<String>,
        /// Code.
        code: u32,
        /// Reason.
        reason: String,
    },
    /// API `unsubscribe`.
    Unsubscribe {
        /// Whom.
        target: Target,
        /// Channel.
        channel: String,
    },
    /// API `subscribe`.
    Subscribe {
        /// Whom.
        target: Target,
        /// What.
        sub: WireSubscribe,
    },
    /// API `refresh`.
    Refresh {
        /// Whom.
        target: Target,
        /// Disconnect as expired.
        expired: bool,
        /// New expiry.
        expire_at: Option<i64>,
        /// New conn info (base64).
        info: Option<String>,
    },
    /// A survey: every node answers with a `SurveyReply` to the sender.
    SurveyRequest {
        /// Survey id (unique per sender).
        id: u64,
        /// `channels`.
        op: String,
        /// Channel pattern.
        pattern: String,
    },
    /// An answer to a survey.
    SurveyReply {
        /// Survey id.
        id: u64,
        /// Channels with subscriber counts on the answering node.
        channels: Vec<(String, usize)>,
    },
    /// Opaque bytes for a node-level handler (emulation sessions).
    User {
        /// Base64 payload.
        data: String,
    },
}

/// [`ServerSubscribe`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSubscribe {
    channel: String,
    expire_at: Option<i64>,
    info: String,
    data: String,
    recover_since: Option<(u64, String)>,
    presence: Option<bool>,
    join_leave: Option<bool>,
    force_push_join_leave: Option<bool>,
    force_recovery: Option<bool>,
    force_positioning: Option<bool>,
}

/// Base64 of bytes.
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Bytes of base64 (empty on garbage: control messages come from our own nodes).
pub fn unb64(s: &str) -> Bytes {
    base64::engine::general_purpose::STANDARD.decode(s).map(Bytes::from).unwrap_or_default()
}

impl From<&ServerSubscribe> for WireSubscribe {
    fn from(s: &ServerSubscribe) -> Self {
        WireSubscribe {
            channel: s.channel.clone(),
            expire_at: s.expire_at,
            info: b64(&s.info),
            data: b64(&s.data),
            recover_since: s.recover_since.as_ref().map(|p| (p.offset, p.epoch.clone())),
            presence: s.overrides.presence,
            join_leave: s.overrides.join_leave,
            force_push_join_leave: s.overrides.force_push_join_leave,
            force_recovery: s.overrides.force_recovery,
            force_positioning: s.overrides.force_positioning,
        }
    }
}

impl From<WireSubscribe> for ServerSubscribe {
    fn from(w: WireSubscribe) -> Self {
        ServerSubscribe {
            channel: w.channel,
            expire_at: w.expire_at,
            info: unb64(&w.info),
            data: unb64(&w.data),
            recover_since: w.recover_since.map(|(offset, epoch)| StreamPosition { offset, epoch }),
            overrides: SubOverride {
                presence: w.presence,
                join_leave: w.join_leave,
                force_push_join_leave: w.force_push_join_leave,
                force_recovery: w.force_recovery,
                force_positioning: w.force_positioning,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_round_trips() {
        let s = ServerSubscribe {
            channel: "a:b".into(),
            expire_at: Some(5),
            info: Bytes::from_static(b"{\"x\":1}"),
            data: Bytes::from_static(b"\x00\x01"),
            recover_since: Some(StreamPosition { offset: 3, epoch: "abc".into() }),
            overrides: SubOverride { presence: Some(true), ..Default::default() },
        };
        let env = Envelope {
            from: "n1".into(),
            msg: ControlMsg::Subscribe { target: Target { user: "u".into(), ..Default::default() }, sub: (&s).into() },
        };
        let json = serde_json::to_vec(&env).unwrap();
        let back: Envelope = serde_json::from_slice(&json).unwrap();
        let ControlMsg::Subscribe { target, sub } = back.msg else { panic!("wrong op") };
        assert_eq!(target.user, "u");
        let s2: ServerSubscribe = sub.into();
        assert_eq!(s2.channel, s.channel);
        assert_eq!(s2.info, s.info);
        assert_eq!(s2.data, s.data);
        assert_eq!(s2.recover_since, s.recover_since);
        assert_eq!(s2.overrides, s.overrides);
    }
}
