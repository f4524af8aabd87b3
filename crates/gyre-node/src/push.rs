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

/// Lazily encoded forms of one push, shared by all subscribers: one per
/// wire encoding and publication form, computed on first use only.
pub(crate) struct LazyPush<'a> {
    push: &'a Push,
    prev: Option<&'a Arc<Publication>>,
    cache: [Option<Bytes>; 9],
    patch: Option<Option<Push>>,
}

impl<'a> LazyPush<'a> {
    pub(crate) fn new(push: &'a Push) -> Self {
        LazyPush { push, prev: None, cache: Default::default(), patch: None }
    }

    pub(crate) fn with_prev(push: &'a Push, prev: Option<&'a Arc<Publication>>) -> Self {
        LazyPush { push, prev, cache: Default::default(), patch: None }
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

    pub(crate) fn get(&mut self, enc: Encoding, form: PubForm) -> Bytes {
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
        let idx = e * 3 + f;
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
