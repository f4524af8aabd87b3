//! Push encoding: the wire encodings, the forms a publication takes for a
//! subscriber, and a push encoded lazily once per (encoding, form) and
//! shared by every subscriber of a broadcast.
//!
//! A leaf: it imports nothing else of this crate but the delta helper, so the
//! hub, the shared connection half and the transports can all use it.

use std::sync::Arc;

use bytes::Bytes;
use gyre_proto::protocol::{Publication, Push, Reply};

/// How messages for this connection are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON replies (bidirectional and emulation transports).
    Json,
    /// Bare JSON pushes (unidirectional transports).
    JsonUni,
    /// Protobuf replies.
    Protobuf,
}

impl Encoding {
    /// JSON of either kind.
    pub fn is_json(self) -> bool {
        matches!(self, Encoding::Json | Encoding::JsonUni)
    }
    /// The protocol type.
    pub fn protocol(self) -> gyre_proto::ProtocolType {
        match self {
            Encoding::Protobuf => gyre_proto::ProtocolType::Protobuf,
            _ => gyre_proto::ProtocolType::Json,
        }
    }
}

/// How a subscriber wants one publication: plain, or for delta subscriptions
/// full (data as a JSON string) or as a fossil patch against the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubForm {
    /// Raw data, no delta negotiated.
    Plain,
    /// Full data on a delta subscription.
    DeltaFull,
    /// A patch against the previous publication.
    DeltaPatch,
}

/// How a connection's queued messages are framed.
///
/// Most transports frame at write time (they join up to 16 messages into one
/// transport message). A bidirectional WebSocket over plain TCP instead
/// queues finished WebSocket frames, so that the broadcaster can write a
/// publication's frame straight to an idle socket (`shared.rs`): server
/// frames are unmasked (RFC 6455 §5.1), so a publication's frame is the same
/// bytes for every subscriber of one encoding and is built once per broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Messages are queued bare; the transport frames them.
    Transport,
    /// One WebSocket text frame per message (JSON).
    WsText,
    /// One WebSocket binary frame per message (Protobuf, already varint-delimited).
    WsBinary,
}

/// One unmasked, unfragmented WebSocket frame of `payload` (FIN set).
pub fn ws_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut b = Vec::with_capacity(len + 10);
    b.push(0x80 | (opcode & 0x0f));
    if len < 126 {
        b.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        b.push(126);
        b.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        b.push(127);
        b.extend_from_slice(&(len as u64).to_be_bytes());
    }
    b.extend_from_slice(payload);
    Bytes::from(b)
}

/// `msg` framed as `framing` says, or `None` when it cannot be: a text frame
/// must be UTF-8 (bytes stored through the Protobuf side can reach a JSON
/// client; client-protocol.md §4 ends such a connection with 3506).
pub fn frame_message(framing: Framing, msg: &Bytes) -> Option<Bytes> {
    match framing {
        Framing::Transport => Some(msg.clone()),
        Framing::WsText => std::str::from_utf8(msg).is_ok().then(|| ws_frame(0x1, msg)),
        Framing::WsBinary => Some(ws_frame(0x2, msg)),
    }
}

/// Lazily encoded forms of one push, shared by all subscribers: one per
/// wire encoding and publication form (bare and framed), computed on first
/// use only.
pub(crate) struct LazyPush<'a> {
    push: &'a Push,
    prev: Option<&'a Arc<Publication>>,
    cache: [Option<Bytes>; 9],
    framed: [Option<Option<Bytes>>; 9],
    patch: Option<Option<Push>>,
}

impl<'a> LazyPush<'a> {
    pub(crate) fn new(push: &'a Push) -> Self {
        LazyPush { push, prev: None, cache: Default::default(), framed: Default::default(), patch: None }
    }

    pub(crate) fn with_prev(push: &'a Push, prev: Option<&'a Arc<Publication>>) -> Self {
        LazyPush { push, prev, cache: Default::default(), framed: Default::default(), patch: None }
    }

    /// The patched push, if a patch is smaller than the data (computed once).
    fn patched(&mut self) -> Option<&Push> {
        if self.patch.is_none() {
            let p = (|| {
                let prev = self.prev?;
                let publication = self.push.r#pub.as_ref()?;
                // JSON needs a UTF-8 patch; a patch valid for JSON is valid for protobuf too.
                let patch = crate::delta::patch(&prev.data, &publication.data, true)?;
                let mut push = self.push.clone();
                let p = push.r#pub.as_mut().expect("checked above");
                p.data = patch;
                p.delta = true;
                Some(push)
            })();
            self.patch = Some(p);
        }
        self.patch.as_ref().and_then(|p| p.as_ref())
    }

    fn index(enc: Encoding, form: PubForm) -> usize {
        let e = match enc {
            Encoding::Json => 0,
            Encoding::JsonUni => 1,
            Encoding::Protobuf => 2,
        };
        let f = match form {
            PubForm::Plain => 0,
            PubForm::DeltaFull => 1,
            PubForm::DeltaPatch => 2,
        };
        e * 3 + f
    }

    /// The push framed for a connection that queues frames (`None`: cannot
    /// be framed, see [`frame_message`]). Built once per (encoding, form).
    pub(crate) fn get_framed(&mut self, enc: Encoding, form: PubForm, framing: Framing) -> Option<Bytes> {
        if framing == Framing::Transport {
            return Some(self.get(enc, form));
        }
        let idx = Self::index(enc, form);
        if let Some(f) = &self.framed[idx] {
            return f.clone();
        }
        let framed = frame_message(framing, &self.get(enc, form));
        self.framed[idx] = Some(framed.clone());
        framed
    }

    pub(crate) fn get(&mut self, enc: Encoding, form: PubForm) -> Bytes {
        let idx = Self::index(enc, form);
        if let Some(b) = &self.cache[idx] {
            return b.clone();
        }
        let as_string = form != PubForm::Plain;
        let bytes = match form {
            PubForm::DeltaPatch => match self.patched().cloned() {
                Some(p) => encode_push(enc, &p, as_string),
                None => return self.get(enc, PubForm::DeltaFull),
            },
            _ => encode_push(enc, self.push, as_string),
        };
        self.cache[idx] = Some(bytes.clone());
        bytes
    }
}

/// Encodes a push in one encoding (a `Reply{push}` for bidirectional, a bare
/// `Push` for unidirectional JSON). `data_as_string` writes publication data
/// as a JSON string (delta-negotiated subscriptions).
pub fn encode_push(enc: Encoding, push: &Push, data_as_string: bool) -> Bytes {
    match enc {
        Encoding::Json => {
            let mut b = Vec::with_capacity(64);
            b.extend_from_slice(b"{\"push\":");
            gyre_proto::json::write_push(&mut b, push, data_as_string);
            b.push(b'}');
            Bytes::from(b)
        }
        Encoding::JsonUni => {
            let mut b = Vec::with_capacity(64);
            gyre_proto::json::write_push(&mut b, push, data_as_string);
            Bytes::from(b)
        }
        Encoding::Protobuf => {
            use prost::Message;
            Bytes::from(Reply { push: Some(push.clone()), ..Default::default() }.encode_length_delimited_to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header bytes of `ws_frame` for payload lengths at each boundary of
    /// RFC 6455 §5.2's three length forms.
    #[test]
    fn ws_frame_headers_follow_the_length_forms() {
        let table: &[(u8, usize, &[u8])] = &[
            (0x1, 0, &[0x81, 0]),
            (0x1, 125, &[0x81, 125]),
            (0x1, 126, &[0x81, 126, 0, 126]),
            (0x2, 65535, &[0x82, 126, 0xff, 0xff]),
            (0x2, 65536, &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ];
        for &(op, len, header) in table {
            let f = ws_frame(op, &vec![b'x'; len]);
            assert_eq!(&f[..header.len()], header, "opcode {op} length {len}");
            assert_eq!(f.len(), header.len() + len, "opcode {op} length {len}");
        }
    }

    #[test]
    fn text_framing_refuses_bytes_that_are_not_utf8() {
        type Case = (Framing, &'static [u8], Option<&'static [u8]>);
        let table: &[Case] = &[
            (Framing::WsText, b"{}", Some(&[0x81, 2, b'{', b'}'])),
            (Framing::WsText, b"\xff", None),
            (Framing::WsBinary, b"\xff", Some(&[0x82, 1, 0xff])),
            (Framing::Transport, b"\xff", Some(&[0xff])),
        ];
        for &(framing, msg, want) in table {
            let got = frame_message(framing, &Bytes::copy_from_slice(msg));
            assert_eq!(got.as_deref(), want, "{framing:?} {msg:?}");
        }
    }
}
