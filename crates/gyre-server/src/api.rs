//! The HTTP server API: `POST /api/<method>`, `POST /api/batch` and the legacy
//! newline format on `POST /api`. This module is the JSON edge only: bodies
//! decode into [`dispatch::Request`]s and replies render from
//! [`dispatch::Reply`]; the methods themselves live in [`dispatch`].
//!
//! A publish answers as soon as the node accepted the publication: with the
//! memory engine the fan-out is a series of non-blocking queue pushes done
//! inside the call, so the request never waits for any subscriber's socket.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use gyre_node::auth::SubOverride;
use gyre_node::engine::StreamPosition;
use gyre_node::node::Target;
use gyre_node::{ClientError, Node};
use gyre_proto::protocol::{ClientInfo, Publication};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::dispatch::{self, History, Payload, PublishOpts, Reply, Request, Subscribe};

/// Outcome of one API call, rendered as JSON.
pub type ApiResult = Result<Value, ClientError>;

fn err_json(e: &ClientError) -> Value {
    json!({"code": e.code, "message": e.message})
}

/// Raw JSON (`null` = absent) and base64 payload fields of a request.
fn payload(data: &Option<Box<RawValue>>, b64: &Option<String>) -> Payload {
    Payload {
        data: match data {
            Some(raw) if raw.get() != "null" => Bytes::copy_from_slice(raw.get().as_bytes()),
            _ => Bytes::new(),
        },
        b64: b64.clone().unwrap_or_default(),
    }
}

/// Bytes that were raw JSON back into a JSON value (non-JSON bytes → base64 string).
fn bytes_value(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| Value::String(base64::engine::general_purpose::STANDARD.encode(b)))
}

fn client_info_json(i: &ClientInfo) -> Value {
    let mut m = Map::new();
    m.insert("user".into(), Value::String(i.user.clone()));
    m.insert("client".into(), Value::String(i.client.clone()));
    if !i.conn_info.is_empty() {
        m.insert("conn_info".into(), bytes_value(&i.conn_info));
    }
    if !i.chan_info.is_empty() {
        m.insert("chan_info".into(), bytes_value(&i.chan_info));
    }
    Value::Object(m)
}

fn publication_json(p: &Publication) -> Value {
    let mut m = Map::new();
    m.insert("data".into(), if p.data.is_empty() { Value::Null } else { bytes_value(&p.data) });
    if let Some(i) = &p.info {
        m.insert("info".into(), client_info_json(i));
    }
    if p.offset != 0 {
        m.insert("offset".into(), p.offset.into());
    }
    if !p.tags.is_empty() {
        m.insert("tags".into(), serde_json::to_value(&p.tags).unwrap_or_default());
    }
    Value::Object(m)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PublishReq {
    channel: String,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    skip_history: bool,
    tags: HashMap<String, String>,
    idempotency_key: String,
    delta: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BroadcastReq {
    channels: Vec<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    skip_history: bool,
    tags: HashMap<String, String>,
    idempotency_key: String,
    delta: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Pos {
    offset: u64,
    epoch: String,
}

impl From<Pos> for StreamPosition {
    fn from(p: Pos) -> Self {
        StreamPosition { offset: p.offset, epoch: p.epoch }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SubscribeReq {
    user: String,
    channel: String,
    client: String,
    session: String,
    expire_at: i64,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    recover_since: Option<Pos>,
    #[serde(rename = "override")]
    overrides: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TargetReq {
    user: String,
    channel: String,
    client: String,
    session: String,
    whitelist: Vec<String>,
    disconnect: Option<DisconnectReq>,
    expired: bool,
    expire_at: i64,
    info: Option<Box<RawValue>>,
}

impl TargetReq {
    fn target(&mut self) -> Target {
        Target {
            user: std::mem::take(&mut self.user),
            client: std::mem::take(&mut self.client),
            session: std::mem::take(&mut self.session),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DisconnectReq {
    code: u32,
    reason: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChannelReq {
    channel: String,
    limit: i64,
    since: Option<Pos>,
    reverse: bool,
    pattern: String,
    method: String,
}

/// Why a request body could not be used at all (HTTP 400 "Bad Request").
#[derive(Debug)]
pub struct BadBody;

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, BadBody> {
    serde_json::from_slice(body).map_err(|_| BadBody)
}

/// The method names of the API (v6 paths and batch keys).
pub const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "rpc",
];

/// PRO-only names: known, answered with 104 in batch and legacy calls.
const PRO_METHODS: &[&str] = &[
    "connections",
    "update_user_status",
    "get_user_status",
    "delete_user_status",
    "block_user",
    "unblock_user",
    "revoke_token",
    "invalidate_user_tokens",
    "device_register",
    "device_update",
    "device_remove",
    "device_list",
    "device_topic_list",
    "device_topic_update",
    "user_topic_list",
    "user_topic_update",
    "send_push_notification",
    "update_push_status",
    "cancel_push",
];

/// The metrics label of a method: its static name, or "other" (the label set stays bounded).
fn method_label(method: &str) -> &'static str {
    METHODS.iter().chain(PRO_METHODS).find(|m| **m == method).copied().unwrap_or("other")
}

/// Decodes a JSON body for `method`. `Ok(None)`: not a method Gyre serves
/// (PRO or unknown: 104). `Err(BadBody)`: the body does not decode.
fn decode(method: &str, body: &[u8]) -> Result<Option<Request>, BadBody> {
    Ok(Some(match method {
        "publish" => {
            let r: PublishReq = parse(body)?;
            Request::Publish {
                channel: r.channel,
                opts: PublishOpts {
                    data: payload(&r.data, &r.b64data),
                    skip_history: r.skip_history,
                    tags: r.tags,
                    idempotency_key: r.idempotency_key,
                    delta: r.delta,
                },
            }
        }
        "broadcast" => {
            let r: BroadcastReq = parse(body)?;
            Request::Broadcast {
                channels: r.channels,
                opts: PublishOpts {
                    data: payload(&r.data, &r.b64data),
                    skip_history: r.skip_history,
                    tags: r.tags,
                    idempotency_key: r.idempotency_key,
                    delta: r.delta,
                },
            }
        }
        "subscribe" => {
            let r: SubscribeReq = parse(body)?;
            Request::Subscribe(Subscribe {
                info: payload(&r.info, &r.b64info),
                data: payload(&r.data, &r.b64data),
                overrides: SubOverride::from_json(r.overrides.as_ref()),
                target: Target { user: r.user, client: r.client, session: r.session },
                channel: r.channel,
                expire_at: r.expire_at,
                recover_since: r.recover_since.map(Into::into),
            })
        }
        "unsubscribe" => {
            let mut r: TargetReq = parse(body)?;
            Request::Unsubscribe { target: r.target(), channel: r.channel }
        }
        "disconnect" => {
            let mut r: TargetReq = parse(body)?;
            Request::Disconnect {
                target: r.target(),
                whitelist: r.whitelist,
                disconnect: r.disconnect.map(|d| (d.code, d.reason)),
            }
        }
        "refresh" => {
            let mut r: TargetReq = parse(body)?;
            Request::Refresh {
                target: r.target(),
                expired: r.expired,
                expire_at: r.expire_at,
                info: payload(&r.info, &None).data,
            }
        }
        "presence" => Request::Presence { channel: parse::<ChannelReq>(body)?.channel },
        "presence_stats" => Request::PresenceStats { channel: parse::<ChannelReq>(body)?.channel },
        "history" => {
            let r: ChannelReq = parse(body)?;
            Request::History(History {
                channel: r.channel,
                limit: r.limit,
                since: r.since.map(Into::into),
                reverse: r.reverse,
            })
        }
        "history_remove" => Request::HistoryRemove { channel: parse::<ChannelReq>(body)?.channel },
        "channels" => Request::Channels { pattern: parse::<ChannelReq>(body)?.pattern },
        "info" => Request::Info,
        "rpc" => Request::Rpc { method: parse::<ChannelReq>(body)?.method },
        _ => return Ok(None),
    }))
}

/// Runs one API method through the shared dispatcher and renders it as JSON.
/// `Err(BadBody)` when the body does not decode for that method. Single,
/// batch and legacy calls all come here; a decoded command is counted in the
/// API metrics by the dispatcher, one that never reaches it is counted here.
pub async fn call(node: &Arc<Node>, method: &str, body: &[u8]) -> Result<ApiResult, BadBody> {
    match decode(method, body) {
        Ok(Some(req)) => Ok(dispatch::call(node, req).await.map(|r| reply_json(&r))),
        Ok(None) => {
            node.counters.record_api(method_label(method), true);
            Ok(Err(ClientError::NOT_FOUND))
        }
        Err(bad) => {
            node.counters.record_api(method_label(method), true);
            Err(bad)
        }
    }
}

fn position_json(p: &StreamPosition) -> Value {
    if p.epoch.is_empty() && p.offset == 0 { json!({}) } else { json!({"offset": p.offset, "epoch": p.epoch}) }
}

/// The JSON `result` of a reply (the v6 HTTP API shapes).
fn reply_json(r: &Reply) -> Value {
    match r {
        Reply::Publish(p) => position_json(p),
        Reply::Broadcast(list) => {
            let responses: Vec<Value> = list
                .iter()
                .map(|r| match r {
                    Ok(p) => json!({"result": position_json(p)}),
                    Err(e) => json!({"error": err_json(e)}),
                })
                .collect();
            json!({"responses": responses})
        }
        Reply::Empty => json!({}),
        Reply::Presence(p) => {
            let mut m = Map::new();
            for (k, v) in p {
                m.insert(k.clone(), client_info_json(v));
            }
            json!({"presence": m})
        }
        Reply::PresenceStats(s) => json!({"num_clients": s.num_clients, "num_users": s.num_users}),
        Reply::History(pubs, top) => {
            json!({"publications": pubs.iter().map(publication_json).collect::<Vec<_>>(), "epoch": top.epoch, "offset": top.offset})
        }
        Reply::Channels(chans) => {
            let mut m = Map::new();
            for (ch, n) in chans {
                m.insert(ch.clone(), json!({"num_clients": n}));
            }
            json!({"channels": m})
        }
        Reply::Info(nodes) => {
            let nodes: Vec<Value> = nodes
                .iter()
                .map(|i| {
                    let mut n = json!({
                        "uid": i.uid, "name": i.name, "version": i.version, "num_clients": i.num_clients,
                        "num_users": i.num_users, "num_channels": i.num_channels, "num_subs": i.num_subs,
                    });
                    if i.uptime > 0 {
                        n["uptime"] = i.uptime.into();
                    }
                    n
                })
                .collect();
            json!({"nodes": nodes})
        }
    }
}

/// Wraps a result as `{"result":…}` / `{"error":…}`.
pub fn envelope(r: &ApiResult) -> Value {
    match r {
        Ok(v) => json!({"result": v}),
        Err(e) => json!({"error": err_json(e)}),
    }
}

/// HTTP status for transport error mode.
pub fn transport_status(e: &ClientError) -> u16 {
    match e.code {
        102 | 104 => 404,
        107 | 108 => 400,
        112 => 416,
        113 => 409,
        _ => 500,
    }
}

/// Transport-mode error body.
pub fn error_body(e: &ClientError) -> Value {
    err_json(e)
}

#[derive(Deserialize)]
struct BatchReq {
    #[serde(default)]
    commands: Vec<Value>,
    #[serde(default)]
    parallel: bool,
}

/// `POST /api/batch`: replies keyed by method, not wrapped in `result`.
pub async fn batch(node: &Arc<Node>, body: &[u8]) -> Result<Value, BadBody> {
    let r: BatchReq = parse(body)?;
    let _ = r.parallel; // Executed in order either way; results come back in command order.
    let mut replies = Vec::with_capacity(r.commands.len());
    for cmd in r.commands {
        let reply = match cmd {
            Value::Null => json!({"error": err_json(&ClientError::BAD_REQUEST)}),
            Value::Object(m) if m.len() == 1 => {
                let (method, params) = m.into_iter().next().expect("one entry");
                if METHODS.contains(&method.as_str()) {
                    let body = serde_json::to_vec(&params).unwrap_or_default();
                    match call(node, &method, &body).await {
                        Ok(Ok(v)) => json!({ method: v }),
                        Ok(Err(e)) => json!({"error": err_json(&e)}),
                        Err(BadBody) => json!({"error": err_json(&ClientError::BAD_REQUEST)}),
                    }
                } else {
                    json!({"error": err_json(&ClientError::NOT_FOUND)})
                }
            }
            _ => json!({"error": err_json(&ClientError::NOT_FOUND)}),
        };
        replies.push(reply);
    }
    Ok(json!({"replies": replies}))
}

/// Legacy method numbers (`POST /api` with `"method": 0`).
fn legacy_method_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_ascii_lowercase()),
        Value::Number(n) => {
            let names = [
                "publish",
                "broadcast",
                "unsubscribe",
                "disconnect",
                "presence",
                "presence_stats",
                "history",
                "history_remove",
                "channels",
                "info",
                "rpc",
                "subscribe",
                "refresh",
            ];
            let i = n.as_u64()? as usize;
            Some(names.get(i).map(|s| s.to_string()).unwrap_or_else(|| "pro".to_string()))
        }
        _ => None,
    }
}

/// `POST /api` (legacy): newline-delimited commands, newline-delimited replies.
/// `Err(BadBody)` when the body is empty, unparsable or names an unknown method.
pub async fn legacy(node: &Arc<Node>, body: &[u8]) -> Result<String, BadBody> {
    let mut cmds = Vec::new();
    for v in serde_json::Deserializer::from_slice(body).into_iter::<Value>() {
        cmds.push(v.map_err(|_| BadBody)?);
    }
    if cmds.is_empty() {
        return Err(BadBody);
    }
    let mut parsed = Vec::new();
    for c in cmds {
        let id = c.get("id").and_then(Value::as_u64).unwrap_or(0);
        let method = c.get("method").and_then(legacy_method_name).ok_or(BadBody)?;
        if !METHODS.contains(&method.as_str()) && !PRO_METHODS.contains(&method.as_str()) && method != "pro" {
            return Err(BadBody);
        }
        let params = c.get("params").cloned().unwrap_or_else(|| json!({}));
        parsed.push((id, method, params));
    }
    let mut out = Vec::new();
    for (id, method, params) in parsed {
        let body = serde_json::to_vec(&params).unwrap_or_default();
        let res = match call(node, &method, &body).await {
            Ok(r) => r,
            Err(BadBody) => Err(ClientError::BAD_REQUEST),
        };
        let mut m = Map::new();
        if id != 0 {
            m.insert("id".into(), id.into());
        }
        match res {
            Ok(v) => {
                if v.as_object().is_some_and(|o| !o.is_empty()) {
                    m.insert("result".into(), v);
                }
            }
            Err(e) => {
                m.insert("error".into(), err_json(&e));
            }
        }
        out.push(Value::Object(m).to_string());
    }
    Ok(out.join("\n"))
}
