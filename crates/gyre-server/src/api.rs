//! The HTTP server API: `POST /api/<method>`, `POST /api/batch` and the legacy
//! newline format on `POST /api`.
//!
//! A publish answers as soon as the node accepted the publication: with the
//! memory engine the fan-out is a series of non-blocking queue pushes done
//! inside the call, so the request never waits for any subscriber's socket.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use gyre_node::auth::SubOverride;
use gyre_node::engine::{HistoryQuery, StreamPosition};
use gyre_node::node::{ApiPublish, ServerSubscribe, Target};
use gyre_node::{ClientError, Disconnect, Node};
use gyre_proto::protocol::{ClientInfo, Publication};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// Outcome of one API call.
pub type ApiResult = Result<Value, ClientError>;

fn err_json(e: &ClientError) -> Value {
    json!({"code": e.code, "message": e.message})
}

/// Raw JSON or base64 payload of a request.
fn payload(data: &Option<Box<RawValue>>, b64: &Option<String>) -> Result<Bytes, ClientError> {
    if let Some(b) = b64.as_ref().filter(|b| !b.is_empty()) {
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Bytes::from)
            .map_err(|_| ClientError::BAD_REQUEST);
    }
    Ok(match data {
        Some(raw) if raw.get() != "null" => Bytes::copy_from_slice(raw.get().as_bytes()),
        _ => Bytes::new(),
    })
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

/// Runs one API method (single, batch and legacy calls all come here, so
/// each is counted once in the API metrics). `Err(BadBody)` when the body
/// does not decode for that method.
pub async fn call(node: &Arc<Node>, method: &str, body: &[u8]) -> Result<ApiResult, BadBody> {
    let r = run(node, method, body).await;
    node.counters.record_api(method_label(method), !matches!(r, Ok(Ok(_))));
    r
}

async fn run(node: &Arc<Node>, method: &str, body: &[u8]) -> Result<ApiResult, BadBody> {
    Ok(match method {
        "publish" => {
            let r: PublishReq = parse(body)?;
            publish(node, r).await
        }
        "broadcast" => {
            let r: BroadcastReq = parse(body)?;
            broadcast(node, r).await
        }
        "subscribe" => {
            let r: SubscribeReq = parse(body)?;
            subscribe(node, r).await
        }
        "unsubscribe" => {
            let r: TargetReq = parse(body)?;
            node.unsubscribe_user(&Target { user: r.user, client: r.client, session: r.session }, &r.channel)
                .await
                .map(|_| json!({}))
        }
        "disconnect" => {
            let r: TargetReq = parse(body)?;
            let d = match r.disconnect {
                Some(d) if d.code != 0 => Disconnect::custom(d.code, d.reason),
                _ => Disconnect::FORCE_NO_RECONNECT,
            };
            node.disconnect_user(&Target { user: r.user, client: r.client, session: r.session }, &r.whitelist, d)
                .await
                .map(|_| json!({}))
        }
        "refresh" => {
            let r: TargetReq = parse(body)?;
            let info =
                r.info.as_ref().filter(|i| i.get() != "null").map(|i| Bytes::copy_from_slice(i.get().as_bytes()));
            let at = (r.expire_at > 0).then_some(r.expire_at);
            node.refresh_user(&Target { user: r.user, client: r.client, session: r.session }, r.expired, at, info)
                .await
                .map(|_| json!({}))
        }
        "presence" => {
            let r: ChannelReq = parse(body)?;
            presence(node, &r.channel).await
        }
        "presence_stats" => {
            let r: ChannelReq = parse(body)?;
            if r.channel.is_empty() {
                Err(ClientError::BAD_REQUEST)
            } else {
                node.presence_stats(&r.channel)
                    .await
                    .map(|s| json!({"num_clients": s.num_clients, "num_users": s.num_users}))
            }
        }
        "history" => {
            let r: ChannelReq = parse(body)?;
            history(node, r).await
        }
        "history_remove" => {
            let r: ChannelReq = parse(body)?;
            if r.channel.is_empty() {
                Err(ClientError::BAD_REQUEST)
            } else {
                node.history_remove(&r.channel).await.map(|_| json!({}))
            }
        }
        "channels" => {
            let r: ChannelReq = parse(body)?;
            node.channels(&r.pattern).await.map(|chans| {
                let mut m = Map::new();
                for (ch, n) in chans {
                    m.insert(ch, json!({"num_clients": n}));
                }
                json!({"channels": m})
            })
        }
        "info" => {
            let nodes: Vec<Value> = node
                .nodes()
                .into_iter()
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
            Ok(json!({"nodes": nodes}))
        }
        "rpc" => {
            let r: ChannelReq = parse(body)?;
            if r.method.is_empty() { Err(ClientError::BAD_REQUEST) } else { Err(ClientError::NOT_FOUND) }
        }
        m if PRO_METHODS.contains(&m) => Err(ClientError::NOT_FOUND),
        _ => Err(ClientError::NOT_FOUND),
    })
}

async fn publish(node: &Arc<Node>, r: PublishReq) -> ApiResult {
    if r.channel.is_empty() {
        return Err(ClientError::BAD_REQUEST);
    }
    let data = payload(&r.data, &r.b64data)?;
    let opts =
        ApiPublish { skip_history: r.skip_history, tags: r.tags, idempotency_key: r.idempotency_key, delta: r.delta };
    let res = node.publish(&r.channel, data, None, &opts).await?;
    Ok(position_json(&res.position))
}

fn position_json(p: &StreamPosition) -> Value {
    if p.epoch.is_empty() && p.offset == 0 { json!({}) } else { json!({"offset": p.offset, "epoch": p.epoch}) }
}

async fn broadcast(node: &Arc<Node>, r: BroadcastReq) -> ApiResult {
    if r.channels.is_empty() {
        return Err(ClientError::BAD_REQUEST);
    }
    let data = payload(&r.data, &r.b64data)?;
    let opts =
        ApiPublish { skip_history: r.skip_history, tags: r.tags, idempotency_key: r.idempotency_key, delta: r.delta };
    let mut responses = Vec::with_capacity(r.channels.len());
    for ch in &r.channels {
        let res = if ch.is_empty() {
            Err(ClientError::BAD_REQUEST)
        } else {
            node.publish(ch, data.clone(), None, &opts).await.map(|r| position_json(&r.position))
        };
        responses.push(match res {
            Ok(v) => json!({"result": v}),
            Err(e) => json!({"error": err_json(&e)}),
        });
    }
    Ok(json!({"responses": responses}))
}

async fn subscribe(node: &Arc<Node>, r: SubscribeReq) -> ApiResult {
    let sub = ServerSubscribe {
        channel: r.channel,
        expire_at: (r.expire_at > 0).then_some(r.expire_at),
        info: payload(&r.info, &r.b64info)?,
        data: payload(&r.data, &r.b64data)?,
        recover_since: r.recover_since.map(|p| StreamPosition { offset: p.offset, epoch: p.epoch }),
        overrides: SubOverride::from_json(r.overrides.as_ref()),
    };
    node.subscribe_user(&Target { user: r.user, client: r.client, session: r.session }, sub).await.map(|_| json!({}))
}

async fn presence(node: &Arc<Node>, channel: &str) -> ApiResult {
    if channel.is_empty() {
        return Err(ClientError::BAD_REQUEST);
    }
    let p = node.presence(channel).await?;
    let mut m = Map::new();
    for (k, v) in p {
        m.insert(k, client_info_json(&v));
    }
    Ok(json!({"presence": m}))
}

async fn history(node: &Arc<Node>, r: ChannelReq) -> ApiResult {
    if r.channel.is_empty() {
        return Err(ClientError::BAD_REQUEST);
    }
    if r.reverse && r.since.as_ref().is_some_and(|s| s.offset == 0) {
        return Err(ClientError::INTERNAL);
    }
    let limit = match r.limit {
        0 => Some(0),
        l if l < 0 => None,
        l => Some(l as usize),
    };
    let q = HistoryQuery { since: r.since.as_ref().map(|s| s.offset), limit, reverse: r.reverse, ..Default::default() };
    let (pubs, top) = node.history(&r.channel, q).await?;
    if let Some(s) = &r.since
        && !s.epoch.is_empty()
        && s.epoch != top.epoch
    {
        return Err(ClientError::UNRECOVERABLE_POSITION);
    }
    Ok(
        json!({"publications": pubs.iter().map(publication_json).collect::<Vec<_>>(), "epoch": top.epoch, "offset": top.offset}),
    )
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
