//! Fuzz target bodies, as plain functions of `&[u8]`.
//!
//! Two callers share them: the cargo-fuzz crate in `fuzz/` (nightly,
//! libFuzzer, excluded from the workspace) wraps each in `fuzz_target!`, and
//! `tests/replay.rs` runs every saved input under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through the same function on stable, so CI
//! re-checks what the fuzzer found without a nightly toolchain.
//!
//! Each body checks properties, not only "no panic": round trips
//! (`decode(encode(x)) == x`), agreement between two paths that must agree,
//! and that bad input is an `Err`. A failed property is a panic, which
//! libFuzzer reports as a crash and the replay test as a failure.
//!
//! See docs/fuzzing.md for how to run them and what the runs found.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use gyre_proto::ProtocolType;
use gyre_proto::protocol::{ClientInfo, EmulationRequest, FilterNode, Publication, Reply, SubscribeResult};
use prost::Message;
use serde_json::Value;

/// A target body: panics when a property fails.
pub type Target = fn(&[u8]);

/// Every target: its name (the directory under `fuzz/corpus/` and
/// `fuzz/regressions/`, and the `fuzz/fuzz_targets/<name>.rs` binary) and body.
pub const TARGETS: &[(&str, Target)] = &[
    ("json_command", json_command),
    ("protobuf_command", protobuf_command),
    ("reply_roundtrip", reply_roundtrip),
    ("sockjs_frames", sockjs_frames),
    ("emulation_body", emulation_body),
    ("fossil_delta", fossil_delta),
    ("jwt_claims", jwt_claims),
    ("tags_filter", tags_filter),
    ("config_load", config_load),
    ("ws_frames", ws_frames),
];

/// JSON command frames (WebSocket text, HTTP-stream/SSE bodies).
///
/// Properties: malformed input is `Err`; a decoded batch has one command per
/// line and equals decoding each line alone; a trailing `\n` changes nothing;
/// each command survives a Protobuf round trip unchanged (both codecs hold
/// the same values).
pub fn json_command(data: &[u8]) {
    let Ok(cmds) = gyre_proto::decode_commands(ProtocolType::Json, data) else {
        return;
    };
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    assert_eq!(cmds.len(), lines.len(), "one command per line");
    for (c, line) in cmds.iter().zip(&lines) {
        let alone = gyre_proto::json::decode_command(line).expect("a line of a decoded batch decodes alone");
        assert_eq!(&alone, c);
    }
    if !data.ends_with(b"\n") {
        let mut with_nl = data.to_vec();
        with_nl.push(b'\n');
        assert_eq!(gyre_proto::decode_commands(ProtocolType::Json, &with_nl).as_ref(), Ok(&cmds));
    }
    let pb = gyre_proto::codec::encode_protobuf_commands(&cmds);
    assert_eq!(gyre_proto::decode_commands(ProtocolType::Protobuf, &pb).as_ref(), Ok(&cmds));
}

/// Protobuf command frames (varint-length-delimited `Command`s).
///
/// Properties: malformed input is `Err`; a decoded batch re-encodes to bytes
/// that decode to the same commands (unknown fields are dropped by design).
pub fn protobuf_command(data: &[u8]) {
    let Ok(cmds) = gyre_proto::decode_commands(ProtocolType::Protobuf, data) else {
        return;
    };
    assert!(!cmds.is_empty(), "a non-empty frame decodes to at least one command");
    let again = gyre_proto::codec::encode_protobuf_commands(&cmds);
    assert_eq!(gyre_proto::decode_commands(ProtocolType::Protobuf, &again), Ok(cmds));
}

/// Replies built from the input (a Protobuf `Reply`), through both encoders.
///
/// Properties: Protobuf `decode(encode(r)) == r`, including the hand-written
/// `connect.subs` encoder; two framed replies split back into two. JSON (raw
/// payloads made valid JSON first, as the server guarantees for JSON
/// clients): one line, no literal `\n`, parses as JSON, and the fields the
/// reply decoder knows equal the original's.
pub fn reply_roundtrip(data: &[u8]) {
    let Ok(mut reply) = Reply::decode(data) else {
        return;
    };
    let pb = gyre_proto::encode_reply(ProtocolType::Protobuf, &reply);
    let back = gyre_proto::codec::decode_replies(ProtocolType::Protobuf, &pb).expect("own Protobuf reply decodes");
    assert_eq!(back, vec![reply.clone()]);
    let framed = gyre_proto::frame_messages(ProtocolType::Protobuf, &[pb.clone(), pb]);
    assert_eq!(gyre_proto::codec::decode_replies(ProtocolType::Protobuf, &framed).map(|v| v.len()), Ok(2));

    sanitize_reply(&mut reply);
    let js = gyre_proto::encode_reply(ProtocolType::Json, &reply);
    assert!(!js.contains(&b'\n'), "a JSON reply is one line: {:?}", String::from_utf8_lossy(&js));
    let text = std::str::from_utf8(&js).expect("JSON replies are UTF-8");
    assert!(serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok(), "invalid JSON reply: {text}");
    let decoded = gyre_proto::json::decode_reply(text).expect("own JSON reply decodes");
    assert_eq!(decoded, json_projection(&reply), "{text}");
    let framed = gyre_proto::frame_messages(ProtocolType::Json, &[js.clone(), js]);
    assert_eq!(gyre_proto::codec::decode_replies(ProtocolType::Json, &framed).map(|v| v.len()), Ok(2));
}

/// Raw JSON fields hold valid JSON for JSON clients (the server checks
/// published data); replace anything else. Deep nesting is replaced too: the
/// check parser has a recursion limit the raw writer does not.
fn sanitize_raw(b: &mut Bytes) {
    let deep = b.iter().filter(|c| matches!(c, b'[' | b'{')).count() > 64;
    if !b.is_empty() && (deep || !gyre_proto::json::is_valid_json(b)) {
        *b = Bytes::from_static(b"{}");
    }
}

fn sanitize_info(i: &mut ClientInfo) {
    sanitize_raw(&mut i.conn_info);
    sanitize_raw(&mut i.chan_info);
}

fn sanitize_pub(p: &mut Publication) {
    sanitize_raw(&mut p.data);
    if let Some(i) = p.info.as_mut() {
        sanitize_info(i);
    }
}

fn sanitize_sub_result(s: &mut SubscribeResult) {
    sanitize_raw(&mut s.data);
    s.publications.iter_mut().for_each(sanitize_pub);
}

fn sanitize_reply(r: &mut Reply) {
    if let Some(p) = r.push.as_mut() {
        if let Some(x) = p.r#pub.as_mut() {
            sanitize_pub(x);
        }
        if let Some(i) = p.join.as_mut().and_then(|j| j.info.as_mut()) {
            sanitize_info(i);
        }
        if let Some(i) = p.leave.as_mut().and_then(|j| j.info.as_mut()) {
            sanitize_info(i);
        }
        if let Some(m) = p.message.as_mut() {
            sanitize_raw(&mut m.data);
        }
        if let Some(s) = p.subscribe.as_mut() {
            sanitize_raw(&mut s.data);
        }
        if let Some(c) = p.connect.as_mut() {
            sanitize_raw(&mut c.data);
            c.subs.values_mut().for_each(sanitize_sub_result);
        }
    }
    if let Some(c) = r.connect.as_mut() {
        sanitize_raw(&mut c.data);
        c.subs.values_mut().for_each(sanitize_sub_result);
    }
    if let Some(s) = r.subscribe.as_mut() {
        sanitize_sub_result(s);
    }
    if let Some(p) = r.presence.as_mut() {
        p.presence.values_mut().for_each(sanitize_info);
    }
    if let Some(h) = r.history.as_mut() {
        h.publications.iter_mut().for_each(sanitize_pub);
    }
    if let Some(x) = r.rpc.as_mut() {
        sanitize_raw(&mut x.data);
    }
}

/// What `json::decode_reply` can see of a reply written by `write_reply`:
/// publication data as it travels (newlines dropped, outer whitespace not
/// part of the value). Empty data is written as `null`, and the decoder reads
/// a `null` value back as empty (serde's `Option` takes `null` as `None`), so
/// both empty data and data that is JSON `null` project to empty; an earlier
/// projection kept `null`, which the reply_roundtrip run caught
/// (fuzz/regressions/reply_roundtrip/empty-pub-data).
fn json_projection(r: &Reply) -> Reply {
    use gyre_proto::protocol::{ConnectResult, Disconnect, Error, Push, Unsubscribe};
    fn data(b: &Bytes) -> Bytes {
        let v: Vec<u8> = b.iter().copied().filter(|c| *c != b'\n').collect();
        let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r');
        let start = v.iter().position(|c| !ws(c)).unwrap_or(v.len());
        let end = v.iter().rposition(|c| !ws(c)).map_or(start, |e| e + 1);
        if &v[start..end] == b"null" {
            return Bytes::new();
        }
        Bytes::copy_from_slice(&v[start..end])
    }
    let publ =
        |p: &Publication| Publication { data: data(&p.data), offset: p.offset, delta: p.delta, ..Default::default() };
    Reply {
        id: r.id,
        error: r.error.as_ref().map(|e| Error { code: e.code, message: e.message.clone(), temporary: e.temporary }),
        push: r.push.as_ref().map(|p| Push {
            channel: p.channel.clone(),
            r#pub: p.r#pub.as_ref().map(publ),
            unsubscribe: p.unsubscribe.as_ref().map(|u| Unsubscribe { code: u.code, reason: u.reason.clone() }),
            disconnect: p.disconnect.as_ref().map(|d| Disconnect {
                code: d.code,
                reason: d.reason.clone(),
                reconnect: false,
            }),
            ..Default::default()
        }),
        connect: r.connect.as_ref().map(|c| ConnectResult {
            client: c.client.clone(),
            version: c.version.clone(),
            expires: c.expires,
            ttl: c.ttl,
            ping: c.ping,
            pong: c.pong,
            session: c.session.clone(),
            node: c.node.clone(),
            ..Default::default()
        }),
        subscribe: r.subscribe.as_ref().map(|s| SubscribeResult {
            expires: s.expires,
            ttl: s.ttl,
            recoverable: s.recoverable,
            epoch: s.epoch.clone(),
            publications: s.publications.iter().map(publ).collect(),
            recovered: s.recovered,
            offset: s.offset,
            positioned: s.positioned,
            was_recovering: s.was_recovering,
            delta: s.delta,
            ..Default::default()
        }),
        publish: r.publish,
        unsubscribe: r.unsubscribe,
        ..Default::default()
    }
}

/// SockJS frames: the client frame parser and the server frame encoders.
///
/// Properties: a broken client frame is `Err`; messages parsed from a client
/// frame, re-framed as `a[...]`, parse back to the same strings, with every
/// character SockJS clients need escaped written as an escape; `c[code,
/// reason]` parses back to its code and reason.
pub fn sockjs_frames(data: &[u8]) {
    use gyre_server::sockjs::frames;
    let text = String::from_utf8_lossy(data);
    if let Ok(msgs) = frames::parse_messages(&text) {
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_bytes()).collect();
        let frame = frames::messages(&refs);
        assert!(frame.starts_with(b"a["), "message frames start with a[");
        let frame = std::str::from_utf8(&frame).expect("frames are UTF-8");
        assert!(
            !frame.chars().any(|c| (c as u32) < 0x20 || ('\u{2028}'..='\u{2029}').contains(&c)),
            "unescaped control or line separator in {frame:?}"
        );
        let back: Vec<String> = serde_json::from_str(&frame[1..]).expect("message frame is a JSON array");
        assert_eq!(back, msgs);
    }
    let code = data.get(..4).map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let close = frames::close(code, &text);
    let close = std::str::from_utf8(&close).expect("frames are UTF-8");
    let (c, reason): (u32, String) = serde_json::from_str(&close[1..]).expect("close frame is a JSON array");
    assert_eq!((c, reason.as_str()), (code, text.as_ref()));
}

/// `POST /emulation` bodies (first byte: odd = Protobuf, even = JSON) and the
/// cluster forwarding envelope (the rest of the input, as received).
///
/// Properties: a bad body is `None`; a parsed body re-encoded in its own
/// format parses to the same (session, node, data); the forwarding envelope
/// round-trips and never panics on truncated input.
pub fn emulation_body(data: &[u8]) {
    use gyre_server::emulation::{decode_forward, encode_forward, parse_emulation_body};
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let protobuf = mode & 1 == 1;
    if let Some((session, node, payload)) = parse_emulation_body(body, protobuf) {
        let again = if protobuf {
            EmulationRequest { node: node.clone(), session: session.clone(), data: payload.clone() }.encode_to_vec()
        } else {
            match std::str::from_utf8(&payload) {
                Ok(s) => serde_json::json!({"session": session, "node": node, "data": s}).to_string().into_bytes(),
                // Non-UTF-8 data can only have come as a raw value; nothing to rebuild.
                Err(_) => Vec::new(),
            }
        };
        if !again.is_empty() {
            assert_eq!(parse_emulation_body(&again, protobuf), Some((session.clone(), node, payload.clone())));
        }
        let env = encode_forward(&session, &payload);
        assert_eq!(decode_forward(env), Some((session, payload)));
    }
    if let Some((session, payload)) = decode_forward(Bytes::copy_from_slice(body)) {
        assert_eq!(decode_forward(encode_forward(&session, &payload)), Some((session, payload)));
    }
}

/// Fossil deltas: applying an untrusted patch, and making then applying one.
///
/// Input: first byte splits the rest into `a` and `b`. Properties: applying
/// `b` as a patch to `a` returns `None` or a result, never panics or
/// allocates past the declared size; `apply(a, patch(a, b)) == b`, and a
/// JSON-mode patch is UTF-8.
pub fn fossil_delta(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = if rest.is_empty() { 0 } else { usize::from(split) % (rest.len() + 1) };
    let (a, b) = rest.split_at(at);
    let _ = gyre_node::delta::apply(a, b);
    let _ = gyre_node::delta::apply(b, a);
    for json in [false, true] {
        if let Some(p) = gyre_node::delta::patch(a, b, json) {
            assert!(p.len() < b.len(), "a patch is only used when smaller");
            if json {
                assert!(std::str::from_utf8(&p).is_ok(), "JSON patches travel as strings");
            }
            assert_eq!(gyre_node::delta::apply(a, &p).as_deref(), Some(b));
        }
    }
}

/// JWT parsing and claim extraction (first byte picks the mode).
///
/// * raw token text through HMAC and signature-skipping verifiers: `Err`, or
///   claims, never a panic;
/// * the rest as a claims object, signed with the configured HMAC key: the
///   verifier's answer equals the signature-skipping one's (a valid
///   signature changes nothing about claim handling), and a verified user is
///   the `sub` claim (a string, or a number's JSON text; other shapes refused);
/// * the rest as a raw (unsigned) payload of any JSON shape, through the
///   signature-skipping verifier.
pub fn jwt_claims(data: &[u8]) {
    use gyre_node::auth::TokenVerifier;
    use gyre_node::config::Token;
    const SECRET: &str = "fuzz-secret";
    const NOW: i64 = 1_700_000_000;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let hmac = TokenVerifier::new(
        &Token { hmac_secret_key: SECRET.into(), audience_regex: "^a".into(), ..Default::default() },
        "client.token",
        false,
    )
    .expect("HMAC verifier");
    let skip = TokenVerifier::new(&Token { audience_regex: "^a".into(), ..Default::default() }, "client.token", true)
        .expect("skip verifier");
    let no_aud =
        TokenVerifier::new(&Token { hmac_secret_key: SECRET.into(), ..Default::default() }, "client.token", false)
            .expect("HMAC verifier");
    let text = String::from_utf8_lossy(rest);
    match mode % 3 {
        0 => {
            for v in [&hmac, &skip, &no_aud] {
                let _ = v.verify_connect(&text, NOW);
                let _ = v.verify_subscribe(&text, NOW);
            }
        }
        1 => {
            let Ok(claims) = serde_json::from_slice::<HashMap<String, Value>>(rest) else {
                return;
            };
            let token = gyre_node::auth::sign_hs256(SECRET, &claims);
            let skip_no_aud = TokenVerifier::new(&Token::default(), "client.token", true).expect("skip verifier");
            let c = no_aud.verify_connect(&token, NOW);
            assert_eq!(format!("{c:?}"), format!("{:?}", skip_no_aud.verify_connect(&token, NOW)));
            let s = no_aud.verify_subscribe(&token, NOW);
            assert_eq!(format!("{s:?}"), format!("{:?}", skip_no_aud.verify_subscribe(&token, NOW)));
            if let Ok(c) = c {
                let want = match claims.get("sub") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(n @ Value::Number(_)) => n.to_string(),
                    Some(other) => panic!("sub {other} accepted: only strings and numbers are users"),
                };
                assert_eq!(c.user, want);
                if let Some(Value::Array(chs)) = claims.get("channels") {
                    for ch in chs.iter().filter_map(Value::as_str) {
                        assert!(c.subs.iter().any(|(name, _)| name == ch), "channel {ch} kept");
                    }
                }
            }
            if let Ok(s) = s {
                assert_eq!(Some(s.channel.as_str()), claims.get("channel").and_then(Value::as_str));
            }
            let _ = hmac.verify_connect(&token, NOW);
        }
        _ => {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let token = format!("{}.{}.c2ln", b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#), b64.encode(rest));
            let _ = skip.verify_connect(&token, NOW);
            let _ = skip.verify_subscribe(&token, NOW);
            let _ = hmac.verify_connect(&token, NOW);
        }
    }
}

/// Publication tag filters. Input: a length-delimited Protobuf `FilterNode`,
/// then a Protobuf `Publication` whose `tags` are matched.
///
/// Properties: `validate` never panics (any depth prost accepts); for a valid
/// filter, `not` negates, a one-child `and`/`or` agrees, flipping a leaf's
/// comparison to its complement (`eq`/`neq`, `in`/`nin`, `ex`/`nex`) negates,
/// and nesting past the depth limit is refused.
pub fn tags_filter(data: &[u8]) {
    use gyre_node::filter::{matches, validate};
    let mut buf = data;
    let Ok(node) = FilterNode::decode_length_delimited(&mut buf) else {
        return;
    };
    let tags = Publication::decode(buf).map(|p| p.tags).unwrap_or_default();
    if validate(&node).is_err() {
        return;
    }
    let m = matches(&node, &tags);
    let wrap = |op: &str, n: &FilterNode| FilterNode { op: op.into(), nodes: vec![n.clone()], ..Default::default() };
    assert_eq!(matches(&wrap("not", &node), &tags), !m);
    assert_eq!(matches(&wrap("and", &node), &tags), m);
    assert_eq!(matches(&wrap("or", &node), &tags), m);
    if node.op.is_empty() {
        let flipped = match node.cmp.as_str() {
            "eq" => Some("neq"),
            "neq" => Some("eq"),
            "in" => Some("nin"),
            "nin" => Some("in"),
            "ex" => Some("nex"),
            "nex" => Some("ex"),
            _ => None,
        };
        if let Some(f) = flipped {
            let n = FilterNode { cmp: f.into(), ..node.clone() };
            assert!(validate(&n).is_ok());
            assert_eq!(matches(&n, &tags), !m, "{} vs {f}", node.cmp);
        }
    }
    let mut deep = node;
    for _ in 0..17 {
        deep = wrap("not", &deep);
    }
    assert!(validate(&deep).is_err(), "nesting past the limit is refused");
}

/// Config loading: file text (first byte picks JSON, YAML or TOML), and
/// after a NUL byte `KEY=VALUE` lines as the environment.
///
/// Properties: bad text or values are errors naming a key, never a panic; a
/// loaded config, serialized and loaded again, loads to the same config with
/// no unknown-key warnings.
pub fn config_load(data: &[u8]) {
    use gyre_server::config_load::{load, parse_text};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ext = ["json", "yaml", "toml"][usize::from(mode) % 3];
    let (file, env_part) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(file) else {
        return;
    };
    let env: HashMap<String, String> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let tree = match parse_text(text, ext) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.is_empty(), "parse errors say what is wrong");
            return;
        }
    };
    let loaded = match load(Some(tree), &env, &Vec::new()) {
        Ok(l) => l,
        Err(e) => {
            assert!(!e.0.is_empty() && e.0.iter().all(|m| !m.is_empty()), "errors name a problem");
            return;
        }
    };
    let saved = serde_json::to_value(&loaded.config).expect("a loaded config serializes");
    let again = load(Some(saved.clone()), &HashMap::new(), &Vec::new())
        .unwrap_or_else(|e| panic!("a loaded config reloads: {e}\n{saved}"));
    assert!(again.warnings.is_empty(), "reload warns: {:?}", again.warnings);
    assert_eq!(serde_json::to_value(&again.config).expect("serializes"), saved);
}

/// WebSocket client frames (`gyre_server::wsframe`), the bytes every
/// WebSocket client controls. Input: the first byte picks the size limit and
/// a chunk size; the rest is fed to a decoder.
///
/// Properties: never a panic; fed whole or in chunks the decoder yields the
/// same messages and the same error (a read boundary changes nothing); text
/// is UTF-8, no message is over the limit, control payloads fit 125 bytes;
/// every message framed again (masked) decodes to itself.
pub fn ws_frames(data: &[u8]) {
    use gyre_server::wsframe::{Decoder, FrameError, Message, op};
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let limit = [0usize, 1, 125, 126, 1000, 65536][usize::from(ctl & 7) % 6];
    let chunk = usize::from(ctl >> 3) + 1;
    let run = |input: &[u8], chunk: usize| {
        let mut d = Decoder::new(limit);
        let mut out: Vec<Result<Message, FrameError>> = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            d.feed(c);
            loop {
                match d.next_message() {
                    Ok(Some(m)) => out.push(Ok(m)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    };
    let whole = run(rest, rest.len());
    assert_eq!(whole, run(rest, chunk), "chunks of {chunk} decode differently");
    let mut again = Vec::new();
    for m in whole.iter().flatten() {
        let (opcode, payload) = match m {
            Message::Text(t) => {
                assert!(std::str::from_utf8(t).is_ok(), "text is UTF-8");
                (op::TEXT, &t[..])
            }
            Message::Binary(b) => (op::BINARY, &b[..]),
            Message::Ping(p) => (op::PING, &p[..]),
            Message::Pong => (op::PONG, &[][..]),
            Message::Close(p) => (op::CLOSE, &p[..]),
        };
        assert!(payload.len() <= limit || opcode & 0x8 != 0, "message over the limit");
        assert!(opcode & 0x8 == 0 || payload.len() <= 125, "control payload over 125 bytes");
        again.extend(gyre_server::wsframe::client_frame(0x80 | opcode, payload, [0xa1, 0x5e, 0x00, 0x7f]));
    }
    let want: Vec<_> = whole.into_iter().filter(Result::is_ok).collect();
    assert_eq!(run(&again, again.len()), want, "messages framed again decode to themselves");
}
