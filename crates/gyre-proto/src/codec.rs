//! Framing: splitting an incoming transport message into commands and joining
//! outgoing messages into one transport message.
//!
//! Both directions are bounded by the caller: the transport enforces the
//! message size limit before bytes reach this module, and a declared Protobuf
//! length that runs past the end of the buffer is an error, never a wait.

use bytes::{Buf, Bytes};
use prost::Message;

use crate::ProtocolType;
use crate::json;
use crate::protocol::{Command, Reply};

/// Why a client frame could not be decoded. Every variant ends the connection
/// with disconnect 3501 (bad request); the variants exist for logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame held no command at all.
    #[error("empty frame")]
    Empty,
    /// A JSON line was not a valid command object.
    #[error("invalid JSON command: {0}")]
    Json(String),
    /// A Protobuf length prefix or body was malformed.
    #[error("invalid protobuf command: {0}")]
    Protobuf(String),
}

/// Decodes every command of one transport message, in order.
///
/// JSON: objects separated by exactly one `\n`, one optional trailing `\n`,
/// no empty lines. Protobuf: varint-length-prefixed messages back to back.
pub fn decode_commands(protocol: ProtocolType, data: &[u8]) -> Result<Vec<Command>, DecodeError> {
    match protocol {
        ProtocolType::Json => decode_json_commands(data),
        ProtocolType::Protobuf => decode_protobuf_commands(data),
    }
}

fn decode_json_commands(data: &[u8]) -> Result<Vec<Command>, DecodeError> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    if data.is_empty() {
        return Err(DecodeError::Empty);
    }
    data.split(|b| *b == b'\n').map(json::decode_command).collect()
}

fn decode_protobuf_commands(mut data: &[u8]) -> Result<Vec<Command>, DecodeError> {
    if data.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut out = Vec::new();
    while data.has_remaining() {
        let len = prost::encoding::decode_varint(&mut data).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Protobuf("length overflow".into()))?;
        if len > data.len() {
            return Err(DecodeError::Protobuf(format!("declared length {len} exceeds the {} bytes left", data.len())));
        }
        let (msg, rest) = data.split_at(len);
        out.push(Command::decode(msg).map_err(|e| DecodeError::Protobuf(e.to_string()))?);
        data = rest;
    }
    Ok(out)
}

/// Encodes one reply as a self-contained message: a JSON object without a
/// trailing newline, or a varint-length-prefixed Protobuf message.
pub fn encode_reply(protocol: ProtocolType, reply: &Reply) -> Bytes {
    match protocol {
        ProtocolType::Json => {
            let mut buf = Vec::with_capacity(64);
            json::write_reply(&mut buf, reply);
            Bytes::from(buf)
        }
        ProtocolType::Protobuf => match reply.connect.as_ref().filter(|c| !c.subs.is_empty()) {
            Some(connect) => Bytes::from(encode_connect_reply_with_subs(reply, connect)),
            None => Bytes::from(reply.encode_length_delimited_to_vec()),
        },
    }
}

/// prost leaves a map entry's value out when it equals the default, so a
/// server-side subscription with an empty `SubscribeResult` would arrive
/// without a value and protobufjs decodes it as `null` (centrifuge-js then
/// fails reading `null.offset`). Go's protobuf, which SDKs are tested
/// against, always writes the value. This writes `connect.subs` entries by
/// hand with the value always present; everything else goes through prost.
fn encode_connect_reply_with_subs(reply: &Reply, connect: &crate::protocol::ConnectResult) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, message, string};
    let mut without_subs = connect.clone();
    without_subs.subs.clear();
    let mut result = without_subs.encode_to_vec();
    let mut keys: Vec<&String> = connect.subs.keys().collect();
    keys.sort();
    for k in keys {
        let v = &connect.subs[k];
        let entry_len = string::encoded_len(1, k) + message::encoded_len(2, v);
        encode_key(6, WireType::LengthDelimited, &mut result);
        encode_varint(entry_len as u64, &mut result);
        string::encode(1, k, &mut result);
        message::encode(2, v, &mut result);
    }
    let mut rest = reply.clone();
    rest.connect = None;
    let mut body = rest.encode_to_vec();
    encode_key(5, WireType::LengthDelimited, &mut body);
    encode_varint(result.len() as u64, &mut body);
    body.extend_from_slice(&result);
    let mut out = Vec::with_capacity(body.len() + 5);
    encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(&body);
    out
}

/// Joins encoded messages into one transport message: `\n`-separated for JSON
/// (no trailing newline, SDKs split on it), concatenated for Protobuf (each
/// message already carries its length prefix).
pub fn frame_messages(protocol: ProtocolType, messages: &[Bytes]) -> Vec<u8> {
    let sep = usize::from(protocol == ProtocolType::Json);
    let total: usize = messages.iter().map(|m| m.len() + sep).sum();
    let mut out = Vec::with_capacity(total);
    for (i, m) in messages.iter().enumerate() {
        if sep == 1 && i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(m);
    }
    out
}

/// Encodes a Protobuf command stream as an SDK would send it (tests, load generator).
pub fn encode_protobuf_commands(commands: &[Command]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in commands {
        c.encode_length_delimited(&mut out).expect("Vec<u8> grows as needed");
    }
    out
}

/// Decodes a server frame into replies (tests, load generator).
pub fn decode_replies(protocol: ProtocolType, data: &[u8]) -> Result<Vec<Reply>, DecodeError> {
    match protocol {
        ProtocolType::Json => {
            let text = std::str::from_utf8(data).map_err(|e| DecodeError::Json(e.to_string()))?;
            text.split('\n').filter(|l| !l.trim().is_empty()).map(json::decode_reply).collect()
        }
        ProtocolType::Protobuf => {
            let mut data = data;
            let mut out = Vec::new();
            while data.has_remaining() {
                out.push(Reply::decode_length_delimited(&mut data).map_err(|e| DecodeError::Protobuf(e.to_string()))?);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ConnectRequest, SubscribeRequest};

    #[test]
    fn json_batch_in_order_with_trailing_newline() {
        let data = b"{\"id\":1,\"connect\":{\"token\":\"t\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\"}}\n";
        let cmds = decode_commands(ProtocolType::Json, data).unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].connect.as_ref().unwrap().token, "t");
        assert_eq!(cmds[1].subscribe.as_ref().unwrap().channel, "c");
    }

    #[test]
    fn json_empty_line_is_an_error() {
        assert!(decode_commands(ProtocolType::Json, b"{\"id\":1}\n\n{\"id\":2}").is_err());
        assert_eq!(decode_commands(ProtocolType::Json, b""), Err(DecodeError::Empty));
        assert!(decode_commands(ProtocolType::Json, b"not json").is_err());
    }

    #[test]
    fn protobuf_round_trip_and_truncation() {
        let cmds = vec![
            Command {
                id: 1,
                connect: Some(ConnectRequest { token: "t".into(), ..Default::default() }),
                ..Default::default()
            },
            Command {
                id: 2,
                subscribe: Some(SubscribeRequest { channel: "c".into(), ..Default::default() }),
                ..Default::default()
            },
        ];
        let bytes = encode_protobuf_commands(&cmds);
        assert_eq!(decode_commands(ProtocolType::Protobuf, &bytes).unwrap(), cmds);
        let err = decode_commands(ProtocolType::Protobuf, &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, DecodeError::Protobuf(_)));
        // A huge declared length must fail fast, not allocate or wait.
        let huge = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2];
        assert!(decode_commands(ProtocolType::Protobuf, &huge).is_err());
    }

    #[test]
    fn protobuf_ping_is_a_single_zero_byte() {
        let ping = encode_reply(ProtocolType::Protobuf, &Reply::default());
        assert_eq!(&ping[..], &[0u8]);
        let pong = decode_commands(ProtocolType::Protobuf, &[0]).unwrap();
        assert_eq!(pong, vec![Command::default()]);
    }

    #[test]
    fn empty_server_side_subscription_results_keep_their_value() {
        use crate::protocol::{ConnectResult, SubscribeResult};
        let mut subs = std::collections::HashMap::new();
        subs.insert("a".to_string(), SubscribeResult::default());
        subs.insert("b".to_string(), SubscribeResult { offset: 3, ..Default::default() });
        let reply = Reply {
            id: 1,
            connect: Some(ConnectResult { client: "c".into(), subs, ..Default::default() }),
            ..Default::default()
        };
        let bytes = encode_reply(ProtocolType::Protobuf, &reply);
        // Same message as prost decodes it...
        assert_eq!(decode_replies(ProtocolType::Protobuf, &bytes).unwrap(), vec![reply]);
        // ...and the empty value is on the wire: entry "a" = key(1) "a" + value(2) len 0.
        let needle = [0x0a, 0x01, b'a', 0x12, 0x00];
        assert!(bytes.windows(needle.len()).any(|w| w == needle), "{bytes:?}");
    }

    #[test]
    fn framing_joins_json_with_newlines_only_between() {
        let a = Bytes::from_static(b"{}");
        let b = Bytes::from_static(b"{\"id\":1}");
        assert_eq!(frame_messages(ProtocolType::Json, &[a.clone(), b.clone()]), b"{}\n{\"id\":1}");
        assert_eq!(frame_messages(ProtocolType::Protobuf, &[a, b]), b"{}{\"id\":1}");
    }
}
