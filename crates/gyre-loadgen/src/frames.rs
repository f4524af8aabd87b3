//! Protocol framing for the three kinds of subscriber the load generator speaks.
//!
//! * Gyre JSON — one WebSocket text frame holds `\n`-joined objects; a server
//!   ping is the empty reply `{}` and is answered with the empty command `{}`.
//! * Gyre Protobuf (subprotocol `centrifuge-protobuf`) — varint-length-prefixed
//!   messages; a ping is the single byte `0x00` and so is the pong.
//! * Nchan — each text frame is one raw publication; pings are WebSocket
//!   control frames, answered by the WebSocket library.

use anyhow::{Result, bail};
use bytes::Buf;
use gyre_proto::ProtocolType;
use gyre_proto::codec::{decode_replies, encode_protobuf_commands};
use gyre_proto::protocol::{Command, ConnectRequest, SubscribeRequest};

use crate::payload::TsScanner;

/// What is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Gyre (or Centrifugo), JSON protocol.
    GyreJson,
    /// Gyre (or Centrifugo), Protobuf protocol.
    GyreProtobuf,
    /// Nchan websocket subscriber and HTTP publisher.
    Nchan,
}

impl Target {
    /// The Centrifugo protocol spoken, if any.
    pub fn protocol(self) -> Option<ProtocolType> {
        match self {
            Target::GyreJson => Some(ProtocolType::Json),
            Target::GyreProtobuf => Some(ProtocolType::Protobuf),
            Target::Nchan => None,
        }
    }

    /// Name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::GyreJson => "gyre-json",
            Target::GyreProtobuf => "gyre-protobuf",
            Target::Nchan => "nchan",
        }
    }
}

/// Command ids of the setup commands.
pub const CONNECT_ID: u32 = 1;
/// See [`CONNECT_ID`].
pub const SUBSCRIBE_ID: u32 = 2;

/// The first frame a Centrifugo client sends: connect and subscribe together,
/// as centrifuge-js does with optimistic subscriptions.
pub fn setup_frame(protocol: ProtocolType, token: Option<&str>, channel: &str) -> Vec<u8> {
    let connect = Command {
        id: CONNECT_ID,
        connect: Some(ConnectRequest { token: token.unwrap_or_default().to_owned(), ..Default::default() }),
        ..Default::default()
    };
    let subscribe = Command {
        id: SUBSCRIBE_ID,
        subscribe: Some(SubscribeRequest { channel: channel.to_owned(), ..Default::default() }),
        ..Default::default()
    };
    match protocol {
        ProtocolType::Protobuf => encode_protobuf_commands(&[connect, subscribe]),
        ProtocolType::Json => {
            let mut c = serde_json::json!({"id": CONNECT_ID, "connect": {}});
            if let Some(t) = token {
                c["connect"]["token"] = t.into();
            }
            let s = serde_json::json!({"id": SUBSCRIBE_ID, "subscribe": {"channel": channel}});
            format!("{c}\n{s}").into_bytes()
        }
    }
}

/// The pong: an empty command.
pub fn pong(protocol: ProtocolType) -> &'static [u8] {
    match protocol {
        ProtocolType::Json => b"{}",
        ProtocolType::Protobuf => &[0],
    }
}

/// Progress of the connect/subscribe handshake.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// The connect reply arrived without error.
    pub connected: bool,
    /// The subscribe reply arrived without error.
    pub subscribed: bool,
    /// Server pings seen (each needs a pong).
    pub pings: usize,
}

/// Folds one server frame into the setup state; an error reply fails setup.
pub fn absorb_setup_frame(protocol: ProtocolType, data: &[u8], st: &mut Setup) -> Result<()> {
    let replies = decode_replies(protocol, data)?;
    for r in replies {
        if let Some(e) = &r.error {
            bail!("reply {} error {} {}", r.id, e.code, e.message);
        }
        match r.id {
            CONNECT_ID if r.connect.is_some() => st.connected = true,
            SUBSCRIBE_ID if r.subscribe.is_some() => st.subscribed = true,
            0 if r.push.is_none() => st.pings += 1,
            _ => {}
        }
    }
    Ok(())
}

/// What one frame carried once setup is done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Publications (payload timestamps) found.
    pub deliveries: usize,
    /// Server pings found.
    pub pings: usize,
}

/// Scans a frame for deliveries and pings without decoding it fully;
/// `on_ts` gets each payload's send time.
pub fn scan_frame(target: Target, data: &[u8], scanner: &TsScanner, mut on_ts: impl FnMut(u64)) -> Result<Scan> {
    let mut s = Scan::default();
    match target {
        Target::Nchan => s.deliveries = scanner.scan(data, &mut on_ts),
        Target::GyreJson => {
            for line in data.split(|b| *b == b'\n') {
                if line.trim_ascii() == b"{}" {
                    s.pings += 1;
                } else {
                    s.deliveries += scanner.scan(line, &mut on_ts);
                }
            }
        }
        Target::GyreProtobuf => {
            let mut rest = data;
            while rest.has_remaining() {
                let len = usize::try_from(prost::encoding::decode_varint(&mut rest)?)?;
                if len > rest.len() {
                    bail!("protobuf length {len} past the {} bytes left", rest.len());
                }
                let (msg, tail) = rest.split_at(len);
                if msg.is_empty() {
                    s.pings += 1;
                } else {
                    s.deliveries += scanner.scan(msg, &mut on_ts);
                }
                rest = tail;
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::encode_payload;
    use bytes::Bytes;
    use gyre_proto::codec::{decode_commands, encode_reply, frame_messages};
    use gyre_proto::protocol::{ConnectResult, Error, Publication, Push, Reply, SubscribeResult};

    fn pub_reply(ts: u64) -> Reply {
        Reply {
            push: Some(Push {
                channel: "ch0".into(),
                r#pub: Some(Publication { data: encode_payload(ts, 1, 3).into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn setup_frames_decode_as_the_server_would() {
        for proto in [ProtocolType::Json, ProtocolType::Protobuf] {
            let f = setup_frame(proto, Some("tok"), "ch7");
            let cmds = decode_commands(proto, &f).unwrap();
            assert_eq!(cmds.len(), 2);
            assert_eq!(cmds[0].id, 1);
            assert_eq!(cmds[0].connect.as_ref().unwrap().token, "tok");
            assert_eq!(cmds[1].id, 2);
            assert_eq!(cmds[1].subscribe.as_ref().unwrap().channel, "ch7");
            let f = setup_frame(proto, None, "c");
            let cmds = decode_commands(proto, &f).unwrap();
            assert_eq!(cmds[0].connect.as_ref().unwrap().token, "");
        }
    }

    #[test]
    fn pongs_are_empty_commands() {
        for proto in [ProtocolType::Json, ProtocolType::Protobuf] {
            let cmds = decode_commands(proto, pong(proto)).unwrap();
            assert_eq!(cmds, vec![Command::default()]);
        }
    }

    #[test]
    fn setup_replies_are_tracked_across_frames() {
        for proto in [ProtocolType::Json, ProtocolType::Protobuf] {
            let connect = Reply {
                id: 1,
                connect: Some(ConnectResult { client: "c".into(), ping: 25, pong: true, ..Default::default() }),
                ..Default::default()
            };
            let sub = Reply { id: 2, subscribe: Some(SubscribeResult::default()), ..Default::default() };
            let mut st = Setup::default();
            let f1 = frame_messages(proto, &[encode_reply(proto, &connect)]);
            absorb_setup_frame(proto, &f1, &mut st).unwrap();
            assert!(st.connected && !st.subscribed);
            let f2 = frame_messages(proto, &[encode_reply(proto, &Reply::default()), encode_reply(proto, &sub)]);
            absorb_setup_frame(proto, &f2, &mut st).unwrap();
            assert_eq!(st, Setup { connected: true, subscribed: true, pings: 1 });
            let err = Reply {
                id: 2,
                error: Some(Error { code: 103, message: "permission denied".into(), temporary: false }),
                ..Default::default()
            };
            let f3 = frame_messages(proto, &[encode_reply(proto, &err)]);
            let e = absorb_setup_frame(proto, &f3, &mut Setup::default()).unwrap_err();
            assert!(e.to_string().contains("103"), "{e}");
        }
    }

    #[test]
    fn coalesced_frames_count_pings_and_deliveries() {
        for (target, proto) in [(Target::GyreJson, ProtocolType::Json), (Target::GyreProtobuf, ProtocolType::Protobuf)]
        {
            let msgs: Vec<Bytes> = vec![
                encode_reply(proto, &pub_reply(11)),
                encode_reply(proto, &Reply::default()),
                encode_reply(proto, &pub_reply(22)),
            ];
            let frame = frame_messages(proto, &msgs);
            let mut ts = vec![];
            let s = scan_frame(target, &frame, &TsScanner::default(), |t| ts.push(t)).unwrap();
            assert_eq!(s, Scan { deliveries: 2, pings: 1 }, "{target:?}");
            assert_eq!(ts, vec![11, 22]);
        }
    }

    #[test]
    fn nchan_frames_are_raw_payloads() {
        let mut ts = vec![];
        let s = scan_frame(Target::Nchan, &encode_payload(99, 5, 0), &TsScanner::default(), |t| ts.push(t)).unwrap();
        assert_eq!(s.deliveries, 1);
        assert_eq!(s.pings, 0);
        assert_eq!(ts, vec![99]);
    }

    #[test]
    fn truncated_protobuf_frame_is_an_error() {
        let r = scan_frame(Target::GyreProtobuf, &[5, 1, 2], &TsScanner::default(), |_| {});
        assert!(r.is_err());
    }
}
