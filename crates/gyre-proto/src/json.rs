//! The JSON form of the protocol.
//!
//! Rules (client-protocol.md §4), which is why this is written by hand:
//!
//! * names are the proto field names (snake_case);
//! * `bytes` fields are raw embedded JSON. Outgoing raw payloads have their
//!   literal `\n` bytes removed, because `\n` delimits messages in a frame (a
//!   raw newline in valid JSON can only be whitespace, so this is lossless);
//! * every zero value is omitted, except `ClientInfo.user`/`client`,
//!   `PresenceResult.presence`, `PresenceStatsResult.num_*` and all three
//!   `HistoryResult` fields;
//! * a successful reply always carries its result key, even when empty.
//!
//! Decoding borrows payloads as `RawValue` so a publication's data is never
//! parsed into a tree and re-serialized.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codec::DecodeError;
use crate::protocol::*;

// ---------------------------------------------------------------------------
// Decoding (client → server)
// ---------------------------------------------------------------------------

fn raw_bytes(v: Option<&RawValue>) -> Bytes {
    v.map(|r| Bytes::copy_from_slice(r.get().as_bytes())).unwrap_or_default()
}

#[derive(Deserialize)]
struct JCommand<'a> {
    #[serde(default)]
    id: u32,
    #[serde(borrow, default)]
    connect: Option<JConnect<'a>>,
    #[serde(borrow, default)]
    subscribe: Option<JSubscribe<'a>>,
    #[serde(default)]
    unsubscribe: Option<JChannel>,
    #[serde(borrow, default)]
    publish: Option<JPublish<'a>>,
    #[serde(default)]
    presence: Option<JChannel>,
    #[serde(default)]
    presence_stats: Option<JChannel>,
    #[serde(default)]
    history: Option<JHistory>,
    #[serde(default)]
    ping: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    send: Option<JData<'a>>,
    #[serde(borrow, default)]
    rpc: Option<JRpc<'a>>,
    #[serde(default)]
    refresh: Option<JToken>,
    #[serde(default)]
    sub_refresh: Option<JSubRefresh>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JConnect<'a> {
    token: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    subs: HashMap<String, JSubscribe<'a>>,
    name: String,
    version: String,
    headers: HashMap<String, String>,
    flag: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JSubscribe<'a> {
    channel: String,
    token: String,
    recover: bool,
    epoch: String,
    offset: u64,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    positioned: bool,
    recoverable: bool,
    join_leave: bool,
    delta: String,
    tf: Option<JFilter>,
    flag: i64,
    #[serde(rename = "type")]
    typ: i32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JFilter {
    op: String,
    key: String,
    cmp: String,
    val: String,
    vals: Vec<String>,
    nodes: Vec<JFilter>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JChannel {
    channel: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JPublish<'a> {
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JHistory {
    channel: String,
    limit: i32,
    since: Option<JPosition>,
    reverse: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JPosition {
    offset: u64,
    epoch: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JData<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JRpc<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    method: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JToken {
    token: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JSubRefresh {
    channel: String,
    token: String,
}

impl From<JFilter> for FilterNode {
    fn from(f: JFilter) -> Self {
        FilterNode {
            op: f.op,
            key: f.key,
            cmp: f.cmp,
            val: f.val,
            vals: f.vals,
            nodes: f.nodes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<JSubscribe<'_>> for SubscribeRequest {
    fn from(s: JSubscribe<'_>) -> Self {
        SubscribeRequest {
            channel: s.channel,
            token: s.token,
            recover: s.recover,
            epoch: s.epoch,
            offset: s.offset,
            data: raw_bytes(s.data),
            positioned: s.positioned,
            recoverable: s.recoverable,
            join_leave: s.join_leave,
            delta: s.delta,
            tf: s.tf.map(Into::into),
            flag: s.flag,
            r#type: s.typ,
            ..Default::default()
        }
    }
}

/// Decodes one JSON command line.
pub fn decode_command(line: &[u8]) -> Result<Command, DecodeError> {
    let c: JCommand<'_> = serde_json::from_slice(line).map_err(|e| DecodeError::Json(e.to_string()))?;
    Ok(Command {
        id: c.id,
        connect: c.connect.map(|c| ConnectRequest {
            token: c.token,
            data: raw_bytes(c.data),
            subs: c.subs.into_iter().map(|(k, v)| (k, v.into())).collect(),
            name: c.name,
            version: c.version,
            headers: c.headers,
            flag: c.flag,
        }),
        subscribe: c.subscribe.map(Into::into),
        unsubscribe: c.unsubscribe.map(|u| UnsubscribeRequest { channel: u.channel }),
        publish: c.publish.map(|p| PublishRequest {
            channel: p.channel,
            data: raw_bytes(p.data),
            ..Default::default()
        }),
        presence: c.presence.map(|p| PresenceRequest { channel: p.channel }),
        presence_stats: c.presence_stats.map(|p| PresenceStatsRequest { channel: p.channel }),
        history: c.history.map(|h| HistoryRequest {
            channel: h.channel,
            limit: h.limit,
            since: h.since.map(|s| StreamPosition { offset: s.offset, epoch: s.epoch }),
            reverse: h.reverse,
        }),
        ping: c.ping.map(|_| PingRequest {}),
        send: c.send.map(|s| SendRequest { data: raw_bytes(s.data) }),
        rpc: c.rpc.map(|r| RpcRequest { data: raw_bytes(r.data), method: r.method }),
        refresh: c.refresh.map(|r| RefreshRequest { token: r.token }),
        sub_refresh: c.sub_refresh.map(|r| SubRefreshRequest { channel: r.channel, token: r.token }),
    })
}

/// True when `data` is one valid JSON value (what a JSON client can receive raw).
pub fn is_valid_json(data: &[u8]) -> bool {
    serde_json::from_slice::<&RawValue>(data).is_ok()
}

// ---------------------------------------------------------------------------
// Encoding (server → client)
// ---------------------------------------------------------------------------

/// Appends JSON for an object's fields, tracking whether a comma is due.
struct Obj<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(buf: &'a mut Vec<u8>) -> Self {
        buf.push(b'{');
        Obj { buf, first: true }
    }

    fn key(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self.buf
    }

    fn str(&mut self, name: &str, v: &str) {
        if !v.is_empty() {
            self.str_always(name, v);
        }
    }

    fn str_always(&mut self, name: &str, v: &str) {
        let buf = self.key(name);
        write_str(buf, v);
    }

    fn u64(&mut self, name: &str, v: u64) {
        if v != 0 {
            self.u64_always(name, v);
        }
    }

    fn u64_always(&mut self, name: &str, v: u64) {
        let buf = self.key(name);
        buf.extend_from_slice(itoa_u64(v).as_bytes());
    }

    fn i64(&mut self, name: &str, v: i64) {
        if v != 0 {
            let buf = self.key(name);
            buf.extend_from_slice(v.to_string().as_bytes());
        }
    }

    fn bool(&mut self, name: &str, v: bool) {
        if v {
            self.key(name).extend_from_slice(b"true");
        }
    }

    fn raw(&mut self, name: &str, v: &[u8]) {
        if !v.is_empty() {
            let buf = self.key(name);
            write_raw(buf, v);
        }
    }

    fn close(self) {
        self.buf.push(b'}');
    }
}

fn itoa_u64(v: u64) -> String {
    v.to_string()
}

/// Writes raw JSON, dropping literal newlines (they would split the frame).
pub fn write_raw(buf: &mut Vec<u8>, v: &[u8]) {
    if memchr_nl(v) {
        buf.extend(v.iter().copied().filter(|b| *b != b'\n'));
    } else {
        buf.extend_from_slice(v);
    }
}

fn memchr_nl(v: &[u8]) -> bool {
    v.contains(&b'\n')
}

/// Writes a JSON string literal with the escapes JSON requires.
pub fn write_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        match esc {
            Some(e) => buf.extend_from_slice(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[(b >> 4) as usize]);
                buf.push(HEX[(b & 0xf) as usize]);
            }
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Writes a byte payload as a JSON string (delta-negotiated subscriptions get
/// their data this way; invalid UTF-8 is replaced, as fossil deltas of JSON
/// payloads are ASCII-framed and the payloads themselves are valid JSON text).
pub fn write_bytes_as_str(buf: &mut Vec<u8>, v: &[u8]) {
    write_str(buf, &String::from_utf8_lossy(v));
}

/// Writes a `ClientInfo`; `user` and `client` are always present.
pub fn write_client_info(buf: &mut Vec<u8>, info: &ClientInfo) {
    let mut o = Obj::open(buf);
    o.str_always("user", &info.user);
    o.str_always("client", &info.client);
    o.raw("conn_info", &info.conn_info);
    o.raw("chan_info", &info.chan_info);
    o.close();
}

/// Writes a `Publication`. With `data_as_string` the payload is a JSON string
/// (delta-negotiated subscriptions), otherwise raw JSON. `data` is always
/// written, because API clients (pycent) require it.
pub fn write_publication(buf: &mut Vec<u8>, p: &Publication, data_as_string: bool) {
    let mut o = Obj::open(buf);
    if data_as_string {
        let b = o.key("data");
        write_bytes_as_str(b, &p.data);
    } else if p.data.is_empty() {
        o.key("data").extend_from_slice(b"null");
    } else {
        o.raw("data", &p.data);
    }
    if let Some(info) = &p.info {
        write_client_info(o.key("info"), info);
    }
    o.u64("offset", p.offset);
    if !p.tags.is_empty() {
        write_string_map(o.key("tags"), &p.tags);
    }
    o.bool("delta", p.delta);
    o.i64("time", p.time);
    o.str("channel", &p.channel);
    o.close();
}

fn write_string_map(buf: &mut Vec<u8>, m: &HashMap<String, String>) {
    buf.push(b'{');
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_str(buf, k);
        buf.push(b':');
        write_str(buf, &m[k]);
    }
    buf.push(b'}');
}

fn write_error(buf: &mut Vec<u8>, e: &Error) {
    let mut o = Obj::open(buf);
    o.u64("code", e.code.into());
    o.str("message", &e.message);
    o.bool("temporary", e.temporary);
    o.close();
}

fn write_subscribe_result(buf: &mut Vec<u8>, r: &SubscribeResult, data_as_string: bool) {
    let mut o = Obj::open(buf);
    o.bool("expires", r.expires);
    o.u64("ttl", r.ttl.into());
    o.bool("recoverable", r.recoverable);
    o.str("epoch", &r.epoch);
    if !r.publications.is_empty() {
        let b = o.key("publications");
        write_publications(b, &r.publications, data_as_string);
    }
    o.bool("recovered", r.recovered);
    o.u64("offset", r.offset);
    o.bool("positioned", r.positioned);
    o.raw("data", &r.data);
    o.bool("was_recovering", r.was_recovering);
    o.bool("delta", r.delta);
    o.close();
}

fn write_publications(buf: &mut Vec<u8>, pubs: &[Publication], data_as_string: bool) {
    buf.push(b'[');
    for (i, p) in pubs.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_publication(buf, p, data_as_string);
    }
    buf.push(b']');
}

fn write_subs_map(buf: &mut Vec<u8>, subs: &HashMap<String, SubscribeResult>) {
    buf.push(b'{');
    let mut keys: Vec<&String> = subs.keys().collect();
    keys.sort();
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_str(buf, k);
        buf.push(b':');
        write_subscribe_result(buf, &subs[k], false);
    }
    buf.push(b'}');
}

fn write_connect_result(buf: &mut Vec<u8>, r: &ConnectResult) {
    let mut o = Obj::open(buf);
    o.str("client", &r.client);
    o.str("version", &r.version);
    o.bool("expires", r.expires);
    o.u64("ttl", r.ttl.into());
    o.raw("data", &r.data);
    if !r.subs.is_empty() {
        write_subs_map(o.key("subs"), &r.subs);
    }
    o.u64("ping", r.ping.into());
    o.bool("pong", r.pong);
    o.str("session", &r.session);
    o.str("node", &r.node);
    o.i64("time", r.time);
    o.close();
}

fn write_connect_push(buf: &mut Vec<u8>, r: &Connect) {
    let mut o = Obj::open(buf);
    o.str("client", &r.client);
    o.str("version", &r.version);
    o.raw("data", &r.data);
    if !r.subs.is_empty() {
        write_subs_map(o.key("subs"), &r.subs);
    }
    o.bool("expires", r.expires);
    o.u64("ttl", r.ttl.into());
    o.u64("ping", r.ping.into());
    o.bool("pong", r.pong);
    o.str("session", &r.session);
    o.str("node", &r.node);
    o.i64("time", r.time);
    o.close();
}

/// Writes a `Push` object (used bare by unidirectional transports).
/// `data_as_string` applies to a contained publication (delta subscriptions).
pub fn write_push(buf: &mut Vec<u8>, p: &Push, data_as_string: bool) {
    let mut o = Obj::open(buf);
    o.i64("id", p.id);
    o.str("channel", &p.channel);
    if let Some(x) = &p.r#pub {
        write_publication(o.key("pub"), x, data_as_string);
    }
    if let Some(x) = &p.join {
        let b = o.key("join");
        let mut j = Obj::open(b);
        if let Some(info) = &x.info {
            write_client_info(j.key("info"), info);
        }
        j.close();
    }
    if let Some(x) = &p.leave {
        let b = o.key("leave");
        let mut j = Obj::open(b);
        if let Some(info) = &x.info {
            write_client_info(j.key("info"), info);
        }
        j.close();
    }
    if let Some(x) = &p.unsubscribe {
        let mut j = Obj::open(o.key("unsubscribe"));
        j.u64("code", x.code.into());
        j.str("reason", &x.reason);
        j.close();
    }
    if let Some(x) = &p.message {
        let mut j = Obj::open(o.key("message"));
        j.raw("data", &x.data);
        j.close();
    }
    if let Some(x) = &p.subscribe {
        let mut j = Obj::open(o.key("subscribe"));
        j.bool("recoverable", x.recoverable);
        j.str("epoch", &x.epoch);
        j.u64("offset", x.offset);
        j.bool("positioned", x.positioned);
        j.raw("data", &x.data);
        j.close();
    }
    if let Some(x) = &p.connect {
        write_connect_push(o.key("connect"), x);
    }
    if let Some(x) = &p.disconnect {
        let mut j = Obj::open(o.key("disconnect"));
        j.u64("code", x.code.into());
        j.str("reason", &x.reason);
        j.bool("reconnect", x.reconnect);
        j.close();
    }
    if let Some(x) = &p.refresh {
        let mut j = Obj::open(o.key("refresh"));
        j.bool("expires", x.expires);
        j.u64("ttl", x.ttl.into());
        j.close();
    }
    o.close();
}

/// Writes a `Reply` object. An empty reply (`{}`) is a server ping.
pub fn write_reply(buf: &mut Vec<u8>, r: &Reply) {
    write_reply_with(buf, r, false)
}

/// Like [`write_reply`], with publication data written as JSON strings
/// (subscribe results and pushes of delta-negotiated subscriptions).
pub fn write_reply_with(buf: &mut Vec<u8>, r: &Reply, data_as_string: bool) {
    let mut o = Obj::open(buf);
    o.u64("id", r.id.into());
    if let Some(e) = &r.error {
        write_error(o.key("error"), e);
    }
    if let Some(p) = &r.push {
        write_push(o.key("push"), p, data_as_string);
    }
    if let Some(x) = &r.connect {
        write_connect_result(o.key("connect"), x);
    }
    if let Some(x) = &r.subscribe {
        write_subscribe_result(o.key("subscribe"), x, data_as_string);
    }
    if r.unsubscribe.is_some() {
        o.key("unsubscribe").extend_from_slice(b"{}");
    }
    if r.publish.is_some() {
        o.key("publish").extend_from_slice(b"{}");
    }
    if let Some(x) = &r.presence {
        write_presence_result(o.key("presence"), x);
    }
    if let Some(x) = &r.presence_stats {
        let mut j = Obj::open(o.key("presence_stats"));
        j.u64_always("num_clients", x.num_clients.into());
        j.u64_always("num_users", x.num_users.into());
        j.close();
    }
    if let Some(x) = &r.history {
        write_history_result(o.key("history"), x);
    }
    if r.ping.is_some() {
        o.key("ping").extend_from_slice(b"{}");
    }
    if let Some(x) = &r.rpc {
        let mut j = Obj::open(o.key("rpc"));
        j.raw("data", &x.data);
        j.close();
    }
    if let Some(x) = &r.refresh {
        let mut j = Obj::open(o.key("refresh"));
        j.str("client", &x.client);
        j.str("version", &x.version);
        j.bool("expires", x.expires);
        j.u64("ttl", x.ttl.into());
        j.close();
    }
    if let Some(x) = &r.sub_refresh {
        let mut j = Obj::open(o.key("sub_refresh"));
        j.bool("expires", x.expires);
        j.u64("ttl", x.ttl.into());
        j.close();
    }
    o.close();
}

/// Writes a `PresenceResult`; `presence` is always present.
pub fn write_presence_result(buf: &mut Vec<u8>, r: &PresenceResult) {
    let mut o = Obj::open(buf);
    let b = o.key("presence");
    b.push(b'{');
    let mut keys: Vec<&String> = r.presence.keys().collect();
    keys.sort();
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        write_str(b, k);
        b.push(b':');
        write_client_info(b, &r.presence[k]);
    }
    b.push(b'}');
    o.close();
}

/// Writes a `HistoryResult`; all three fields are always present.
pub fn write_history_result(buf: &mut Vec<u8>, r: &HistoryResult) {
    let mut o = Obj::open(buf);
    write_publications(o.key("publications"), &r.publications, false);
    o.str_always("epoch", &r.epoch);
    o.u64_always("offset", r.offset);
    o.close();
}

// ---------------------------------------------------------------------------
// Reply decoding (tests and the load generator only; servers never decode replies)
// ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct JReply<'a> {
    id: u32,
    error: Option<JError>,
    #[serde(borrow)]
    push: Option<JPush<'a>>,
    connect: Option<JConnectResult>,
    #[serde(borrow)]
    subscribe: Option<JSubscribeResult<'a>>,
    publish: Option<serde::de::IgnoredAny>,
    unsubscribe: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JError {
    code: u32,
    message: String,
    temporary: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JConnectResult {
    client: String,
    version: String,
    expires: bool,
    ttl: u32,
    ping: u32,
    pong: bool,
    session: String,
    node: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JSubscribeResult<'a> {
    expires: bool,
    ttl: u32,
    recoverable: bool,
    epoch: String,
    #[serde(borrow)]
    publications: Vec<JPub<'a>>,
    recovered: bool,
    offset: u64,
    positioned: bool,
    was_recovering: bool,
    delta: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JPush<'a> {
    channel: String,
    #[serde(borrow, rename = "pub")]
    publication: Option<JPub<'a>>,
    unsubscribe: Option<JCode>,
    disconnect: Option<JCode>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JCode {
    code: u32,
    reason: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JPub<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    offset: u64,
    delta: bool,
}

impl From<JPub<'_>> for Publication {
    fn from(p: JPub<'_>) -> Self {
        Publication { data: raw_bytes(p.data), offset: p.offset, delta: p.delta, ..Default::default() }
    }
}

/// Decodes the common parts of a JSON reply (ids, errors, connect/subscribe
/// results, publication/unsubscribe/disconnect pushes). Test and tooling use.
pub fn decode_reply(line: &str) -> Result<Reply, DecodeError> {
    let r: JReply<'_> = serde_json::from_str(line).map_err(|e| DecodeError::Json(e.to_string()))?;
    Ok(Reply {
        id: r.id,
        error: r.error.map(|e| Error { code: e.code, message: e.message, temporary: e.temporary }),
        push: r.push.map(|p| Push {
            channel: p.channel,
            r#pub: p.publication.map(Into::into),
            unsubscribe: p.unsubscribe.map(|u| Unsubscribe { code: u.code, reason: u.reason }),
            disconnect: p.disconnect.map(|d| Disconnect { code: d.code, reason: d.reason, reconnect: false }),
            ..Default::default()
        }),
        connect: r.connect.map(|c| ConnectResult {
            client: c.client,
            version: c.version,
            expires: c.expires,
            ttl: c.ttl,
            ping: c.ping,
            pong: c.pong,
            session: c.session,
            node: c.node,
            ..Default::default()
        }),
        subscribe: r.subscribe.map(|s| SubscribeResult {
            expires: s.expires,
            ttl: s.ttl,
            recoverable: s.recoverable,
            epoch: s.epoch,
            publications: s.publications.into_iter().map(Into::into).collect(),
            recovered: s.recovered,
            offset: s.offset,
            positioned: s.positioned,
            was_recovering: s.was_recovering,
            delta: s.delta,
            ..Default::default()
        }),
        publish: r.publish.map(|_| PublishResult {}),
        unsubscribe: r.unsubscribe.map(|_| UnsubscribeResult {}),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_json(r: &Reply) -> String {
        let mut b = Vec::new();
        write_reply(&mut b, r);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn empty_results_keep_their_key() {
        let r = Reply { id: 3, publish: Some(PublishResult {}), ..Default::default() };
        assert_eq!(reply_json(&r), r#"{"id":3,"publish":{}}"#);
        let r = Reply { id: 2, subscribe: Some(SubscribeResult::default()), ..Default::default() };
        assert_eq!(reply_json(&r), r#"{"id":2,"subscribe":{}}"#);
        assert_eq!(reply_json(&Reply::default()), "{}");
    }

    #[test]
    fn omission_exceptions() {
        let r = Reply { id: 1, presence_stats: Some(PresenceStatsResult::default()), ..Default::default() };
        assert_eq!(reply_json(&r), r#"{"id":1,"presence_stats":{"num_clients":0,"num_users":0}}"#);
        let r = Reply { id: 1, history: Some(HistoryResult::default()), ..Default::default() };
        assert_eq!(reply_json(&r), r#"{"id":1,"history":{"publications":[],"epoch":"","offset":0}}"#);
        let r = Reply { id: 1, presence: Some(PresenceResult::default()), ..Default::default() };
        assert_eq!(reply_json(&r), r#"{"id":1,"presence":{"presence":{}}}"#);
    }

    #[test]
    fn publication_push_is_raw_and_newline_free() {
        let r = Reply {
            push: Some(Push {
                channel: "chat".into(),
                r#pub: Some(Publication {
                    data: Bytes::from_static(b"{\n  \"text\": \"hi\\n\"\n}"),
                    offset: 7,
                    info: Some(ClientInfo { user: "".into(), client: "c1".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            reply_json(&r),
            r#"{"push":{"channel":"chat","pub":{"data":{  "text": "hi\n"},"info":{"user":"","client":"c1"},"offset":7}}}"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        let mut b = Vec::new();
        write_str(&mut b, "a\"b\\c\u{1}\n");
        assert_eq!(String::from_utf8(b).unwrap(), r#""a\"b\\c\u0001\n""#);
    }

    #[test]
    fn decodes_commands_with_raw_payloads() {
        let c = decode_command(br#"{"id":4,"publish":{"channel":"c","data":{"x":[1,2]}}}"#).unwrap();
        assert_eq!(&c.publish.unwrap().data[..], br#"{"x":[1,2]}"#);
        let c = decode_command(br#"{"id":5,"rpc":{"method":"ping"}}"#).unwrap();
        assert!(c.rpc.unwrap().data.is_empty());
        let c = decode_command(b"{}").unwrap();
        assert_eq!(c, Command::default());
        let c =
            decode_command(br#"{"id":1,"connect":{"subs":{"a":{"recover":true,"offset":3,"epoch":"e"}}}}"#).unwrap();
        assert!(c.connect.unwrap().subs["a"].recover);
        assert!(decode_command(br#"{"id":"x"}"#).is_err());
    }

    #[test]
    fn reply_round_trip_through_decoder() {
        let r = Reply {
            id: 9,
            subscribe: Some(SubscribeResult {
                recoverable: true,
                epoch: "abc".into(),
                offset: 12,
                publications: vec![Publication { data: Bytes::from_static(b"1"), offset: 12, ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let back = decode_reply(&reply_json(&r)).unwrap();
        assert_eq!(back.subscribe.unwrap().publications[0].offset, 12);
    }
}
