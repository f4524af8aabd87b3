//! Proxies: connect, refresh, subscribe, publish, sub_refresh and RPC
//! decisions delegated to the application's backend, over HTTP (`http(s)://`
//! endpoints: POST JSON) or gRPC (`grpc://host:port`: unary calls of
//! `centrifugal.centrifugo.proxy.CentrifugoProxy` from `proto/proxy.proto`,
//! over HTTP/2, cleartext or TLS). A gRPC answer is turned into the JSON
//! answer it stands for, so both transports share one result mapping.
//!
//! TLS toward the backend is the proxy's `http.tls` (an `https://` endpoint)
//! or `grpc.tls` object, loaded by [`crate::tls::client_config`] when the
//! node starts (a bad CA, certificate or key is a start-up error naming its
//! key): the backend's certificate must chain to `server_ca_pem` (system
//! roots when empty) for `server_name` (else the endpoint's host) unless
//! `insecure_skip_verify`; `cert_pem`/`key_pem` are presented as the client
//! certificate (mutual TLS). Such a proxy has its own connection pool. A
//! handshake that fails (another CA, a backend requiring a client
//! certificate we lack) fails the call like a refused connection.
//!
//! gRPC messages: requests are gzip-compressed with `grpc.compression`
//! (`grpc-encoding: gzip`, as Centrifugo's gzip compressor); every call
//! advertises `grpc-accept-encoding: gzip`, and a gzip answer is inflated
//! up to 4 MiB (`MAX_ANSWER`; a bigger one, a "gzip bomb", fails the call).
//!
//! A call is one request with a deadline (`timeout`, body included) made
//! from the connection's own task: a slow or dead backend delays only the
//! command that asked, never a runtime thread or another connection, and no
//! lock is held while it runs. Every way a call can fail maps to a wire
//! outcome here, once:
//!
//! * `{"result":…}` → the typed result of that proxy kind;
//! * `{"error":{code,message,temporary}}` → that reply error;
//! * `{"disconnect":{code,reason}}` → that disconnect;
//! * timeout, connection refused, a status other than 200 (unless a
//!   `status_to_code_transforms` entry matches), a gRPC status other than OK
//!   → error 100 (temporary), so the SDK retries;
//! * an answer that is not the contract (not JSON, wrong field types, bad
//!   base64) → error 100 and a warning naming the proxy and what was wrong.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::auth::KeyError;
use crate::config::{Config, ProxyConfig};
use crate::errors::{ClientError, CommandError, Disconnect};

/// Largest proxy answer read.
const MAX_ANSWER: usize = 4 << 20;

/// Every proxy's client: TLS for `https://` (and TLS gRPC), plain TCP for
/// `http://` and cleartext gRPC.
type HttpClient = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Which decision a call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `client.proxy.connect`
    Connect,
    /// `client.proxy.refresh`
    Refresh,
    /// `channel.proxy.subscribe`
    Subscribe,
    /// `channel.proxy.publish`
    Publish,
    /// `channel.proxy.sub_refresh`
    SubRefresh,
    /// `rpc.proxy`
    Rpc,
}

impl Kind {
    /// Name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Refresh => "refresh",
            Kind::Subscribe => "subscribe",
            Kind::Publish => "publish",
            Kind::SubRefresh => "sub_refresh",
            Kind::Rpc => "rpc",
        }
    }
}

/// What a call knows about the connection (Centrifugo's common request fields).
#[derive(Debug, Clone, Copy)]
pub struct CallCtx<'a> {
    /// Client id.
    pub client: &'a str,
    /// Transport name (`websocket`, `sse`, …).
    pub transport: &'a str,
    /// `json` or `protobuf`.
    pub protocol: &'static str,
    /// User id; `None` before connect (the connect proxy gets no `user`).
    pub user: Option<&'a str>,
    /// Connection meta (sent with `include_connection_meta`).
    pub meta: Option<&'a Value>,
    /// Headers of the client's transport request (names lowercase).
    pub headers: &'a [(String, String)],
    /// Client-sent `connect.headers` (headers emulation).
    pub emulated: &'a HashMap<String, String>,
}

/// One configured proxy.
pub struct Proxy {
    /// `default` or the `proxies[]` name.
    pub name: String,
    cfg: ProxyConfig,
    target: Target,
    /// The shared pool of its kind, or its own when it has a TLS object.
    client: HttpClient,
    /// `grpc.credentials_key: credentials_value`, sent with every gRPC call.
    credentials: Option<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
}

/// Clients shared by the proxies without a TLS object of their own
/// (connection pools): HTTP/1.1 (`https://` checks the system roots) and
/// cleartext HTTP/2 for gRPC.
#[derive(Clone)]
struct Clients {
    http: HttpClient,
    h2c: HttpClient,
}

/// gRPC metadata that carries the call itself, which credentials must not replace.
const RESERVED_METADATA: &[&str] = &["content-type", "te", "user-agent", "host"];

/// The header `grpc.credentials_key: credentials_value` (Centrifugo's per-RPC
/// credentials). The key is lowercased, as gRPC metadata keys are; the
/// message never holds the value (a secret).
pub fn credentials_header(
    key: &str,
    value: &str,
) -> Result<(hyper::header::HeaderName, hyper::header::HeaderValue), &'static str> {
    let name = hyper::header::HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
        .map_err(|_| "not a valid metadata key (letters, digits, -, _ and .)")?;
    if name.as_str().starts_with("grpc-")
        || name.as_str().starts_with(':')
        || RESERVED_METADATA.contains(&name.as_str())
    {
        return Err("a reserved gRPC metadata key");
    }
    let mut value =
        hyper::header::HeaderValue::from_str(value).map_err(|_| "not a valid metadata value (visible ASCII only)")?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// A connector with `tls` for `https://` URIs: HTTP/2 only (gRPC) or
/// HTTP/1.1. `https_only`: refuse plain `http://` (a proxy with a TLS object
/// must never fall back to cleartext).
fn connector(
    tls: rustls::ClientConfig,
    server_name: Option<rustls::pki_types::ServerName<'static>>,
    https_only: bool,
    http2: bool,
) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let b = if https_only { b.https_only() } else { b.https_or_http() };
    // server_name is also the SNI sent, as Go's tls.Config.ServerName is.
    let b = match server_name {
        Some(n) => b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(n)),
        None => b,
    };
    if http2 { b.enable_http2().build() } else { b.enable_http1().build() }
}

fn client(c: hyper_rustls::HttpsConnector<HttpConnector>, http2: bool) -> HttpClient {
    let mut b = HyperClient::builder(TokioExecutor::new());
    if http2 {
        b.http2_only(true);
    }
    b.build(c)
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("name", &self.name).field("endpoint", &self.cfg.endpoint).finish()
    }
}

#[derive(Deserialize)]
struct Answer<T> {
    result: Option<T>,
    error: Option<AnswerError>,
    disconnect: Option<AnswerDisconnect>,
}

#[derive(Deserialize)]
struct AnswerError {
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(Deserialize)]
struct AnswerDisconnect {
    code: u32,
    #[serde(default)]
    reason: String,
}

/// A payload given as raw JSON (`data`, `info`) or base64 (`b64data`, `b64info`).
fn payload(raw: Option<&RawValue>, b64: &str, what: &str) -> Result<Bytes, String> {
    if !b64.is_empty() {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| format!("b64{what} is not base64: {e}"));
    }
    Ok(match raw {
        Some(r) if r.get() != "null" => Bytes::copy_from_slice(r.get().as_bytes()),
        _ => Bytes::new(),
    })
}

/// Declares a result struct whose payload fields come in JSON and base64 forms.
macro_rules! payload_fields {
    ($raw:ident, $b64:ident, $get:ident) => {
        /// The payload, from its JSON or its base64 field.
        pub fn $get(&self) -> Result<Bytes, String> {
            payload(self.$raw.as_deref(), &self.$b64, stringify!($raw))
        }
    };
}

/// `subs` entry of a connect result, and the subscribe result's `override`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubOptionsResult {
    info: Option<Box<RawValue>>,
    b64info: String,
    data: Option<Box<RawValue>>,
    b64data: String,
    /// `{"presence":{"value":true},…}`
    #[serde(rename = "override")]
    pub overrides: Option<Value>,
}

impl SubOptionsResult {
    payload_fields!(info, b64info, info_bytes);
    payload_fields!(data, b64data, data_bytes);
}

/// Connect proxy result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    /// User id ("" = anonymous).
    pub user: String,
    /// Connection expiry (unix seconds; 0 = never).
    pub expire_at: i64,
    info: Option<Box<RawValue>>,
    b64info: String,
    data: Option<Box<RawValue>>,
    b64data: String,
    /// Server-side subscriptions.
    pub channels: Vec<String>,
    /// Server-side subscriptions with options.
    pub subs: HashMap<String, SubOptionsResult>,
    /// Connection meta.
    pub meta: Option<Value>,
}

impl ConnectResult {
    payload_fields!(info, b64info, info_bytes);
    payload_fields!(data, b64data, data_bytes);
}

/// Refresh and sub_refresh proxy result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    /// End the connection (3005) / subscription.
    pub expired: bool,
    /// New expiry (unix seconds).
    pub expire_at: i64,
    info: Option<Box<RawValue>>,
    b64info: String,
    /// New connection meta.
    pub meta: Option<Value>,
}

impl RefreshResult {
    payload_fields!(info, b64info, info_bytes);
}

/// Subscribe proxy result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    /// Subscription expiry (unix seconds; 0 = never).
    pub expire_at: i64,
    info: Option<Box<RawValue>>,
    b64info: String,
    data: Option<Box<RawValue>>,
    b64data: String,
    /// Option overrides.
    #[serde(rename = "override")]
    pub overrides: Option<Value>,
}

impl SubscribeResult {
    payload_fields!(info, b64info, info_bytes);
    payload_fields!(data, b64data, data_bytes);
}

/// Publish proxy result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishResult {
    data: Option<Box<RawValue>>,
    b64data: String,
    /// Do not keep this publication in history.
    pub skip_history: bool,
    /// Publication tags.
    pub tags: HashMap<String, String>,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Delta-capable publication.
    pub delta: bool,
}

impl PublishResult {
    /// The replacement payload (`None`: publish the client's data).
    pub fn replacement(&self) -> Result<Option<Bytes>, String> {
        if self.b64data.is_empty() && self.data.as_ref().is_none_or(|r| r.get() == "null") {
            return Ok(None);
        }
        payload(self.data.as_deref(), &self.b64data, "data").map(Some)
    }
}

/// RPC proxy result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    data: Option<Box<RawValue>>,
    b64data: String,
}

impl RpcResult {
    payload_fields!(data, b64data, data_bytes);
}

/// The per-kind part of a request (Centrifugo's extra request fields).
#[derive(Debug, Default, Clone)]
pub struct Req<'a> {
    /// `data` / `b64data`: the command's payload.
    pub data: &'a [u8],
    /// Connect: SDK name.
    pub name: &'a str,
    /// Connect: SDK version.
    pub version: &'a str,
    /// Connect: keys of `connect.subs`.
    pub channels: Vec<String>,
    /// Subscribe, publish, sub_refresh: the channel.
    pub channel: &'a str,
    /// RPC: the method.
    pub method: &'a str,
}

/// Where a proxy's requests go.
enum Target {
    /// `http(s)://…`: POST JSON.
    Http(hyper::Uri),
    /// `grpc://host:port`: unary calls of `CentrifugoProxy`; the base URI is
    /// `http://host:port` (h2c) or `https://host:port` (`grpc.tls`).
    Grpc(String),
}

const GRPC_SERVICE: &str = "centrifugal.centrifugo.proxy.CentrifugoProxy";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl Proxy {
    fn new(name: &str, cfg: &ProxyConfig, clients: &Clients, key: &str) -> Result<Self, KeyError> {
        let err = |m: String| KeyError { key: format!("{key}.endpoint"), message: m };
        let tls_err = |e: crate::tls::TlsError| KeyError { key: e.key, message: e.msg };
        let tls = |prefix: &str, t: &crate::config::Tls, http2: bool| -> Result<HttpClient, KeyError> {
            let config = crate::tls::client_config(prefix, t).map_err(tls_err)?;
            let name = crate::tls::server_name(prefix, t).map_err(tls_err)?;
            Ok(client(connector(config, name, true, http2), http2))
        };
        let mut credentials = None;
        let (target, client) = if let Some(addr) = cfg.endpoint.strip_prefix("grpc://") {
            let addr = addr.trim_end_matches('/');
            let (base, client) = if cfg.grpc.tls.enabled {
                (format!("https://{addr}"), tls(&format!("{key}.grpc.tls"), &cfg.grpc.tls, true)?)
            } else {
                (format!("http://{addr}"), clients.h2c.clone())
            };
            let _: hyper::Uri = base.parse().map_err(|e| err(format!("invalid address: {e}")))?;
            if !cfg.grpc.credentials_key.is_empty() {
                let header = credentials_header(&cfg.grpc.credentials_key, &cfg.grpc.credentials_value)
                    .map_err(|m| KeyError { key: format!("{key}.grpc.credentials_key"), message: m.into() })?;
                credentials = Some(header);
            }
            (Target::Grpc(base), client)
        } else {
            let uri: hyper::Uri = cfg.endpoint.parse().map_err(|e| err(format!("invalid URL: {e}")))?;
            let client = if cfg.http.tls.enabled {
                if uri.scheme() != Some(&hyper::http::uri::Scheme::HTTPS) {
                    return Err(KeyError {
                        key: format!("{key}.http.tls.enabled"),
                        message: "needs an https:// endpoint".into(),
                    });
                }
                tls(&format!("{key}.http.tls"), &cfg.http.tls, false)?
            } else {
                clients.http.clone()
            };
            (Target::Http(uri), client)
        };
        Ok(Proxy { name: name.to_string(), cfg: cfg.clone(), target, client, credentials })
    }

    /// The payload in JSON form: `data` when the bytes are JSON and
    /// `binary_encoding` is off, else `b64data` (a protobuf client's binary
    /// data cannot be embedded as JSON).
    fn json_payload(&self, body: &mut Map<String, Value>, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if !self.cfg.binary_encoding
            && let Ok(v) = serde_json::from_slice::<Value>(data)
        {
            body.insert("data".into(), v);
            return;
        }
        body.insert("b64data".into(), Value::String(b64(data)));
    }

    /// The HTTP request body.
    fn json_request(&self, kind: Kind, ctx: &CallCtx<'_>, req: &Req<'_>) -> Vec<u8> {
        let mut body = Map::new();
        body.insert("client".into(), ctx.client.into());
        body.insert("transport".into(), ctx.transport.into());
        body.insert("protocol".into(), ctx.protocol.into());
        body.insert("encoding".into(), if self.cfg.binary_encoding { "binary" } else { "json" }.into());
        if let Some(u) = ctx.user {
            body.insert("user".into(), u.into());
        }
        if self.cfg.include_connection_meta
            && let Some(m) = ctx.meta
        {
            body.insert("meta".into(), m.clone());
        }
        match kind {
            Kind::Connect => {
                self.json_payload(&mut body, req.data);
                body.insert("name".into(), req.name.into());
                body.insert("version".into(), req.version.into());
                if !req.channels.is_empty() {
                    body.insert("channels".into(), req.channels.clone().into());
                }
            }
            Kind::Refresh => {}
            Kind::Subscribe | Kind::Publish => {
                body.insert("channel".into(), req.channel.into());
                self.json_payload(&mut body, req.data);
            }
            Kind::SubRefresh => {
                body.insert("channel".into(), req.channel.into());
            }
            Kind::Rpc => {
                body.insert("method".into(), req.method.into());
                self.json_payload(&mut body, req.data);
            }
        }
        serde_json::to_vec(&Value::Object(body)).expect("a JSON map serializes")
    }

    /// The gRPC method and request message.
    fn grpc_request(&self, kind: Kind, ctx: &CallCtx<'_>, req: &Req<'_>) -> (&'static str, Vec<u8>) {
        use gyre_proto::proxy as pb;
        use prost::Message;
        let binary = self.cfg.binary_encoding;
        let (data, b64data) =
            if binary { (Bytes::new(), b64(req.data)) } else { (Bytes::copy_from_slice(req.data), String::new()) };
        let (client, transport, protocol) =
            (ctx.client.to_string(), ctx.transport.to_string(), ctx.protocol.to_string());
        let encoding = if binary { "binary" } else { "json" }.to_string();
        let user = ctx.user.unwrap_or_default().to_string();
        let meta = match ctx.meta.filter(|_| self.cfg.include_connection_meta) {
            Some(m) => Bytes::from(serde_json::to_vec(m).expect("JSON serializes")),
            None => Bytes::new(),
        };
        match kind {
            Kind::Connect => (
                "Connect",
                pb::ConnectRequest {
                    client,
                    transport,
                    protocol,
                    encoding,
                    data,
                    b64data,
                    name: req.name.into(),
                    version: req.version.into(),
                    channels: req.channels.clone(),
                }
                .encode_to_vec(),
            ),
            Kind::Refresh => {
                ("Refresh", pb::RefreshRequest { client, transport, protocol, encoding, user, meta }.encode_to_vec())
            }
            Kind::Subscribe => (
                "Subscribe",
                pb::SubscribeRequest {
                    client,
                    transport,
                    protocol,
                    encoding,
                    user,
                    channel: req.channel.into(),
                    token: String::new(),
                    meta,
                    data,
                    b64data,
                }
                .encode_to_vec(),
            ),
            Kind::Publish => (
                "Publish",
                pb::PublishRequest {
                    client,
                    transport,
                    protocol,
                    encoding,
                    user,
                    channel: req.channel.into(),
                    data,
                    b64data,
                    meta,
                }
                .encode_to_vec(),
            ),
            Kind::SubRefresh => (
                "SubRefresh",
                pb::SubRefreshRequest {
                    client,
                    transport,
                    protocol,
                    encoding,
                    user,
                    channel: req.channel.into(),
                    meta,
                }
                .encode_to_vec(),
            ),
            Kind::Rpc => (
                "RPC",
                pb::RpcRequest {
                    client,
                    transport,
                    protocol,
                    encoding,
                    user,
                    method: req.method.into(),
                    data,
                    b64data,
                    meta,
                }
                .encode_to_vec(),
            ),
        }
    }

    /// Calls the proxy; `Ok(None)` is an answer without a result (e.g. `{}`
    /// or `{"result":null}`).
    pub async fn call<T: DeserializeOwned>(
        &self,
        kind: Kind,
        ctx: &CallCtx<'_>,
        req: Req<'_>,
    ) -> Result<Option<T>, CommandError> {
        let warn = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(proxy = %self.name, kind = kind.as_str(), error = %e, "{what}");
            CommandError::Reply(ClientError::INTERNAL)
        };
        let answer = match &self.target {
            Target::Http(uri) => {
                let body = self.json_request(kind, ctx, &req);
                let mut r = hyper::Request::post(uri.clone()).header(hyper::header::CONTENT_TYPE, "application/json");
                for (k, v) in &self.cfg.http.static_headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                for (k, v) in self.forwarded(ctx, &self.cfg.http_headers) {
                    r = r.header(k, v);
                }
                let r = r.body(Full::new(Bytes::from(body))).map_err(|e| warn("proxy request not built", &e))?;
                self.exchange(kind, self.client.request(r)).await?
            }
            Target::Grpc(base) => {
                let (method, msg) = self.grpc_request(kind, ctx, &req);
                let gzip = self.cfg.grpc.compression;
                let frame = grpc_frame(&msg, gzip);
                let mut r = hyper::Request::post(format!("{base}/{GRPC_SERVICE}/{method}"))
                    .header(hyper::header::CONTENT_TYPE, "application/grpc")
                    .header(hyper::header::TE, "trailers")
                    .header("grpc-accept-encoding", "gzip");
                if gzip {
                    r = r.header("grpc-encoding", "gzip");
                }
                for (k, v) in &self.cfg.grpc.static_metadata {
                    r = r.header(k.as_str(), v.as_str());
                }
                for (k, v) in self.forwarded(ctx, &self.cfg.grpc_metadata) {
                    r = r.header(k, v);
                }
                // Last, so a forwarded header of the same name cannot stand in for it.
                if let Some((k, v)) = &self.credentials
                    && let Some(h) = r.headers_mut()
                {
                    h.insert(k.clone(), v.clone());
                }
                let r = r.body(Full::new(Bytes::from(frame))).map_err(|e| warn("proxy request not built", &e))?;
                let (status, trailers, body) = self.exchange(kind, self.client.request(r)).await?;
                let json = grpc_answer(kind, status, trailers.as_ref(), &body)
                    .map_err(|e| warn("gRPC proxy call failed", &e))?;
                (hyper::StatusCode::OK, None, Bytes::from(json))
            }
        };
        let (status, _, bytes) = answer;
        if status != hyper::StatusCode::OK {
            if let Some(t) = self.cfg.http.status_to_code_transforms.iter().find(|t| t.status_code == status.as_u16()) {
                if t.to_disconnect.code != 0 {
                    return Err(Disconnect::custom(t.to_disconnect.code, t.to_disconnect.reason.clone()).into());
                }
                if t.to_error.code != 0 {
                    return Err(ClientError {
                        code: t.to_error.code,
                        message: t.to_error.message.clone().into(),
                        temporary: t.to_error.temporary,
                    }
                    .into());
                }
            }
            return Err(warn("proxy answered with an error status", &status.as_u16()));
        }
        decode(&self.name, kind, &bytes)
    }

    /// Headers (`http_headers`) or metadata (`grpc_metadata`) this proxy
    /// forwards: each listed name from the client's transport request, else
    /// from the client-sent `connect.headers` (headers emulation: browsers
    /// cannot set WebSocket headers), plus `emulated_headers` names from
    /// `connect.headers`. One value per name; the transport's wins.
    fn forwarded<'c>(&'c self, ctx: &'c CallCtx<'_>, names: &'c [String]) -> Vec<(&'c str, &'c str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        let listed = |k: &str, list: &[String]| list.iter().any(|h| h.eq_ignore_ascii_case(k));
        for (k, v) in ctx.headers {
            if listed(k, names) {
                out.push((k, v));
            }
        }
        for (k, v) in ctx.emulated {
            if (listed(k, names) || listed(k, &self.cfg.emulated_headers))
                && !out.iter().any(|(o, _)| o.eq_ignore_ascii_case(k))
            {
                out.push((k, v));
            }
        }
        out
    }

    /// Runs one exchange under the proxy's deadline (body included).
    async fn exchange<F>(
        &self,
        kind: Kind,
        send: F,
    ) -> Result<(hyper::StatusCode, Option<hyper::HeaderMap>, Bytes), CommandError>
    where
        F: std::future::Future<
                Output = Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
            >,
    {
        let exchange = async {
            let res = send.await.map_err(|e| format!("request failed: {}", with_sources(&e)))?;
            let (parts, body) = res.into_parts();
            let collected = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?;
            // gRPC puts grpc-status in the trailers, or in the headers of a
            // trailers-only answer.
            let mut trailers = collected.trailers().cloned().unwrap_or_default();
            for (k, v) in &parts.headers {
                if k.as_str().starts_with("grpc-") && !trailers.contains_key(k) {
                    trailers.insert(k.clone(), v.clone());
                }
            }
            Ok::<_, String>((parts.status, Some(trailers), collected.to_bytes()))
        };
        match tokio::time::timeout(self.cfg.timeout.0, exchange).await {
            Err(_) => {
                tracing::warn!(proxy = %self.name, kind = kind.as_str(), timeout = ?self.cfg.timeout.0, "proxy call timed out");
                Err(ClientError::INTERNAL.into())
            }
            Ok(Err(e)) => {
                tracing::warn!(proxy = %self.name, kind = kind.as_str(), error = %e, "proxy unreachable");
                Err(ClientError::INTERNAL.into())
            }
            Ok(Ok(x)) => Ok(x),
        }
    }
}

/// One length-prefixed gRPC message, gzip-compressed (flag 1) or not.
fn grpc_frame(msg: &[u8], gzip: bool) -> Vec<u8> {
    use std::io::Write as _;
    let compressed;
    let (flag, payload) = if gzip {
        let mut enc =
            flate2::write::GzEncoder::new(Vec::with_capacity(msg.len() / 2 + 32), flate2::Compression::fast());
        // Writing to a Vec cannot fail.
        enc.write_all(msg).expect("gzip into memory");
        compressed = enc.finish().expect("gzip into memory");
        (1u8, &compressed[..])
    } else {
        (0u8, msg)
    };
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(flag);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Inflates a gzip message, refusing one that inflates past `limit` bytes.
fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("undecodable gzip response: {e}"))?;
    if out.len() > limit {
        return Err(format!("gzip response inflates past {limit} bytes"));
    }
    Ok(out)
}

/// An error and its causes: hyper's own message ("client error (Connect)")
/// hides why a connection failed (refused, a certificate from another CA, a
/// client certificate the backend refused), which the log must say.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

/// A gRPC answer as the JSON answer it stands for, so both transports share
/// [`decode`]: payload bytes become `b64*` fields, `meta` bytes JSON.
fn grpc_answer(
    kind: Kind,
    status: hyper::StatusCode,
    trailers: Option<&hyper::HeaderMap>,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    use gyre_proto::proxy as pb;
    use prost::Message;
    use serde_json::json;
    if status != hyper::StatusCode::OK {
        return Err(format!("HTTP status {status}"));
    }
    let get = |k: &str| trailers.and_then(|t| t.get(k)).and_then(|v| v.to_str().ok()).unwrap_or("");
    let code = get("grpc-status");
    if code != "0" {
        return Err(format!("grpc-status {code:?}: {}", get("grpc-message")));
    }
    if body.len() < 5 {
        return Err("no response message".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let msg = body.get(5..5 + len).ok_or("truncated response message")?;
    let inflated;
    let msg = match (body[0], get("grpc-encoding")) {
        (0, _) => msg,
        (1, "gzip") => {
            inflated = gunzip(msg, MAX_ANSWER)?;
            &inflated[..]
        }
        (1, "") => return Err("compressed response without grpc-encoding".into()),
        (1, other) => return Err(format!("compressed response in grpc-encoding {other:?} (only gzip is accepted)")),
        (flag, _) => return Err(format!("bad message flag {flag}")),
    };
    let bad = |e: prost::DecodeError| format!("undecodable response: {e}");
    let pay = |raw: &Bytes, b64s: &str| if b64s.is_empty() && !raw.is_empty() { b64(raw) } else { b64s.to_string() };
    let meta = |m: &Bytes| if m.is_empty() { Value::Null } else { serde_json::from_slice(m).unwrap_or(Value::Null) };
    let ov = |o: &Option<pb::SubscribeOptionOverride>| {
        o.as_ref().map(|o| {
            let f = |b: &Option<pb::BoolValue>| b.as_ref().map(|b| json!({"value": b.value}));
            json!({"presence": f(&o.presence), "join_leave": f(&o.join_leave), "force_recovery": f(&o.force_recovery),
                   "force_positioning": f(&o.force_positioning), "force_push_join_leave": f(&o.force_push_join_leave)})
        })
    };
    let err = |e: &Option<pb::Error>| {
        e.as_ref().map(|e| json!({"code": e.code, "message": e.message, "temporary": e.temporary}))
    };
    let disc = |d: &Option<pb::Disconnect>| d.as_ref().map(|d| json!({"code": d.code, "reason": d.reason}));
    let v = match kind {
        Kind::Connect => {
            let r = pb::ConnectResponse::decode(msg).map_err(bad)?;
            let result = r.result.as_ref().map(|x| {
                let subs: Map<String, Value> = x
                    .subs
                    .iter()
                    .map(|(k, o)| {
                        (k.clone(), json!({"b64info": pay(&o.info, &o.b64info), "b64data": pay(&o.data, &o.b64data), "override": ov(&o.r#override)}))
                    })
                    .collect();
                json!({"user": x.user, "expire_at": x.expire_at, "b64info": pay(&x.info, &x.b64info),
                       "b64data": pay(&x.data, &x.b64data), "channels": x.channels, "subs": subs, "meta": meta(&x.meta)})
            });
            json!({"result": result, "error": err(&r.error), "disconnect": disc(&r.disconnect)})
        }
        Kind::Refresh => {
            let r = pb::RefreshResponse::decode(msg).map_err(bad)?;
            let result = r.result.as_ref().map(|x| {
                json!({"expired": x.expired, "expire_at": x.expire_at, "b64info": pay(&x.info, &x.b64info), "meta": meta(&x.meta)})
            });
            json!({"result": result, "error": err(&r.error), "disconnect": disc(&r.disconnect)})
        }
        Kind::Subscribe => {
            let r = pb::SubscribeResponse::decode(msg).map_err(bad)?;
            let result = r.result.as_ref().map(|x| {
                json!({"expire_at": x.expire_at, "b64info": pay(&x.info, &x.b64info), "b64data": pay(&x.data, &x.b64data), "override": ov(&x.r#override)})
            });
            json!({"result": result, "error": err(&r.error), "disconnect": disc(&r.disconnect)})
        }
        Kind::Publish => {
            let r = pb::PublishResponse::decode(msg).map_err(bad)?;
            let result = r.result.as_ref().map(|x| {
                json!({"b64data": pay(&x.data, &x.b64data), "skip_history": x.skip_history, "tags": x.tags,
                       "idempotency_key": x.idempotency_key, "delta": x.delta})
            });
            json!({"result": result, "error": err(&r.error), "disconnect": disc(&r.disconnect)})
        }
        Kind::SubRefresh => {
            let r = pb::SubRefreshResponse::decode(msg).map_err(bad)?;
            let result = r
                .result
                .as_ref()
                .map(|x| json!({"expired": x.expired, "expire_at": x.expire_at, "b64info": pay(&x.info, &x.b64info)}));
            json!({"result": result, "error": err(&r.error), "disconnect": disc(&r.disconnect)})
        }
        Kind::Rpc => {
            let r = pb::RpcResponse::decode(msg).map_err(bad)?;
            let result = r.result.as_ref().map(|x| json!({"b64data": pay(&x.data, &x.b64data)}));
            json!({"result": result, "error": err(&r.error), "disconnect": disc(&r.disconnect)})
        }
    };
    Ok(serde_json::to_vec(&v).expect("JSON serializes"))
}

/// Maps a 200 answer body to the call's outcome.
fn decode<T: DeserializeOwned>(proxy: &str, kind: Kind, bytes: &[u8]) -> Result<Option<T>, CommandError> {
    let a: Answer<T> = serde_json::from_slice(bytes).map_err(|e| {
        tracing::warn!(proxy, kind = kind.as_str(), error = %e, "proxy answer is not the {} contract", kind.as_str());
        CommandError::Reply(ClientError::INTERNAL)
    })?;
    if let Some(d) = a.disconnect {
        return Err(Disconnect::custom(d.code, d.reason).into());
    }
    if let Some(e) = a.error {
        return Err(ClientError { code: e.code, message: e.message.into(), temporary: e.temporary }.into());
    }
    Ok(a.result)
}

/// Logs a contract violation found after decoding (e.g. bad base64) and
/// returns the error the client gets.
pub fn contract_error(proxy: &Proxy, kind: Kind, what: &str) -> CommandError {
    tracing::warn!(proxy = %proxy.name, kind = kind.as_str(), error = what, "proxy answer is not the {} contract", kind.as_str());
    ClientError::INTERNAL.into()
}

/// Every configured proxy, by kind and name.
#[derive(Debug, Default)]
pub struct Proxies {
    connect: Option<Arc<Proxy>>,
    refresh: Option<Arc<Proxy>>,
    defaults: HashMap<Kind, Arc<Proxy>>,
    named: HashMap<String, Arc<Proxy>>,
    headers: Vec<String>,
}

impl Proxies {
    /// Builds the proxies of a validated config.
    pub fn new(cfg: &Config) -> Result<Self, KeyError> {
        let mut out = Proxies::default();
        let cp = &cfg.client.proxy;
        let chp = &cfg.channel.proxy;
        let any = cp.connect.enabled
            || cp.refresh.enabled
            || !cfg.proxies.is_empty()
            || [&chp.subscribe, &chp.publish, &chp.sub_refresh, &cfg.rpc.proxy].iter().any(|p| !p.endpoint.is_empty());
        if !any {
            return Ok(out);
        }
        // The shared clients: `https://` without an `http.tls` object checks
        // the system roots; cleartext gRPC never negotiates TLS (https_or_http
        // with an `http://` base URI is plain TCP).
        // Fails only when the system has no usable CA certificate at all.
        let system = crate::tls::client_config("proxies", &crate::config::Tls::default())
            .map_err(|e| KeyError { key: "proxies".into(), message: format!("system TLS roots: {}", e.msg) })?;
        let clients = Clients {
            http: client(connector(system.clone(), None, false, false), false),
            h2c: client(connector(system, None, false, true), true),
        };
        let mut all: Vec<&ProxyConfig> = Vec::new();
        let mk = |key: &str, p: &ProxyConfig, name: &str| Proxy::new(name, p, &clients, key).map(Arc::new);
        if cp.connect.enabled {
            out.connect = Some(mk("client.proxy.connect", &cp.connect.proxy, "default")?);
            all.push(&cp.connect.proxy);
        }
        if cp.refresh.enabled {
            out.refresh = Some(mk("client.proxy.refresh", &cp.refresh.proxy, "default")?);
            all.push(&cp.refresh.proxy);
        }
        for (kind, key, p) in [
            (Kind::Subscribe, "channel.proxy.subscribe", &chp.subscribe),
            (Kind::Publish, "channel.proxy.publish", &chp.publish),
            (Kind::SubRefresh, "channel.proxy.sub_refresh", &chp.sub_refresh),
            (Kind::Rpc, "rpc.proxy", &cfg.rpc.proxy),
        ] {
            if !p.endpoint.is_empty() {
                out.defaults.insert(kind, mk(key, p, "default")?);
                all.push(p);
            }
        }
        for (i, p) in cfg.proxies.iter().enumerate() {
            out.named.insert(p.name.clone(), mk(&format!("proxies[{i}]"), p, &p.name)?);
            all.push(p);
        }
        for p in all {
            for h in p.http_headers.iter().chain(&p.grpc_metadata) {
                let h = h.to_ascii_lowercase();
                if !out.headers.contains(&h) {
                    out.headers.push(h);
                }
            }
        }
        Ok(out)
    }

    /// The connect proxy, when enabled.
    pub fn connect(&self) -> Option<&Arc<Proxy>> {
        self.connect.as_ref()
    }

    /// The refresh proxy, when enabled.
    pub fn refresh(&self) -> Option<&Arc<Proxy>> {
        self.refresh.as_ref()
    }

    /// A channel or RPC proxy by name ("" and "default" name the built-in one of `kind`).
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Arc<Proxy>> {
        match name {
            "" | "default" => self.defaults.get(&kind),
            n => self.named.get(n),
        }
    }

    /// Lowercase names of the transport request headers any proxy forwards:
    /// transports keep only these.
    pub fn header_names(&self) -> &[String] {
        &self.headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_mapping_table() {
        // (body, Ok(user) | Err(code))
        let rows: &[(&str, Result<Option<&str>, u32>)] = &[
            (r#"{"result":{"user":"42"}}"#, Ok(Some("42"))),
            (r#"{"result":null}"#, Ok(None)),
            (r#"{}"#, Ok(None)),
            (r#"{"error":{"code":1000,"message":"nope"}}"#, Err(1000)),
            (r#"{"disconnect":{"code":4500,"reason":"bye"}}"#, Err(4500)),
            (r#"{"result":{"user":42}}"#, Err(100)),
            (r#"not json"#, Err(100)),
            (r#"[1,2]"#, Err(100)),
        ];
        for (body, want) in rows {
            let got = decode::<ConnectResult>("p", Kind::Connect, body.as_bytes());
            let got = match got {
                Ok(r) => Ok(r.map(|r| r.user)),
                Err(CommandError::Reply(e)) => Err(e.code),
                Err(CommandError::Disconnect(d)) => Err(d.code),
            };
            assert_eq!(got.as_ref().map(|o| o.as_deref()), want.as_ref().map(|o| *o), "{body}");
        }
    }

    #[test]
    fn grpc_answer_table() {
        use gyre_proto::proxy as pb;
        use prost::Message;
        let frame = |m: &[u8], flag: u8| {
            let mut f = vec![flag];
            f.extend_from_slice(&(m.len() as u32).to_be_bytes());
            f.extend_from_slice(m);
            f
        };
        let ok_trailers = || {
            let mut h = hyper::HeaderMap::new();
            h.insert("grpc-status", "0".parse().unwrap());
            h
        };
        let rpc = pb::RpcResponse {
            result: Some(pb::RpcResult { data: Bytes::from_static(b"{\"x\":1}"), b64data: String::new() }),
            ..Default::default()
        }
        .encode_to_vec();
        let err = pb::RpcResponse {
            error: Some(pb::Error { code: 1500, message: "boom".into(), temporary: false }),
            ..Default::default()
        }
        .encode_to_vec();
        let gzip_trailers = |enc: &str| {
            let mut h = ok_trailers();
            h.insert("grpc-encoding", enc.parse().unwrap());
            h
        };
        let gz = |m: &[u8]| grpc_frame(m, true);
        let mut unavailable = hyper::HeaderMap::new();
        unavailable.insert("grpc-status", "14".parse().unwrap());
        let ok = hyper::StatusCode::OK;
        // (status, trailers, body) -> Ok(rpc data) | Err(reply code)
        type Row = (hyper::StatusCode, Option<hyper::HeaderMap>, Vec<u8>, Result<&'static [u8], u32>);
        let rows: Vec<Row> = vec![
            (ok, Some(ok_trailers()), frame(&rpc, 0), Ok(br#"{"x":1}"#)),
            (ok, Some(ok_trailers()), frame(&err, 0), Err(1500)),
            (ok, Some(unavailable), Vec::new(), Err(100)),
            (ok, None, frame(&rpc, 0), Err(100)),
            (ok, Some(ok_trailers()), frame(&rpc, 1), Err(100)),
            (ok, Some(gzip_trailers("gzip")), gz(&rpc), Ok(br#"{"x":1}"#)),
            (ok, Some(gzip_trailers("gzip")), gz(&err), Err(1500)),
            // An uncompressed message in a gzip-encoded answer is fine (flag 0).
            (ok, Some(gzip_trailers("gzip")), frame(&rpc, 0), Ok(br#"{"x":1}"#)),
            (ok, Some(gzip_trailers("deflate")), gz(&rpc), Err(100)),
            (ok, Some(gzip_trailers("gzip")), frame(b"not gzip", 1), Err(100)),
            (ok, Some(ok_trailers()), frame(&rpc, 2), Err(100)),
            (ok, Some(ok_trailers()), frame(&rpc, 0)[..7].to_vec(), Err(100)),
            (ok, Some(ok_trailers()), frame(b"\xff\xff", 0), Err(100)),
            (hyper::StatusCode::NOT_FOUND, Some(ok_trailers()), frame(&rpc, 0), Err(100)),
        ];
        for (i, (status, trailers, body, want)) in rows.into_iter().enumerate() {
            let got = grpc_answer(Kind::Rpc, status, trailers.as_ref(), &body)
                .map_err(|_| CommandError::Reply(ClientError::INTERNAL))
                .and_then(|json| decode::<RpcResult>("p", Kind::Rpc, &json));
            let got = match got {
                Ok(r) => Ok(r.expect("result").data_bytes().unwrap()),
                Err(CommandError::Reply(e)) => Err(e.code),
                Err(CommandError::Disconnect(d)) => Err(d.code),
            };
            assert_eq!(got.as_ref().map(|b| b.as_ref()).map_err(|e| *e), want, "row {i}");
        }
    }

    #[test]
    fn grpc_frames_and_gzip_limits() {
        let msg = vec![b'x'; 10_000];
        let plain = grpc_frame(&msg, false);
        assert_eq!((plain[0], plain.len()), (0, 10_005));
        let gz = grpc_frame(&msg, true);
        let len = u32::from_be_bytes([gz[1], gz[2], gz[3], gz[4]]) as usize;
        assert_eq!((gz[0], gz.len()), (1, len + 5));
        assert!(len < 200, "compressed {len}");
        assert_eq!(gunzip(&gz[5..], 10_000).unwrap(), msg);
        // One byte over the limit when inflated: refused, not read whole.
        assert!(gunzip(&gz[5..], 9_999).unwrap_err().contains("inflates past 9999"));
        assert!(gunzip(b"plain", 100).is_err());
    }

    #[test]
    fn credentials_header_table() {
        // (key, value, Ok(header name) | Err(())): names lowercased as gRPC metadata keys are.
        let rows: &[(&str, &str, Result<&str, ()>)] = &[
            ("x-proxy-key", "s3cret", Ok("x-proxy-key")),
            ("Authorization", "Bearer t", Ok("authorization")),
            ("x-empty", "", Ok("x-empty")),
            ("bad key", "v", Err(())),
            ("", "v", Err(())),
            ("grpc-timeout", "1S", Err(())),
            ("content-type", "application/json", Err(())),
            ("te", "x", Err(())),
            ("x-k", "line\nbreak", Err(())),
        ];
        for (k, v, want) in rows {
            let got = credentials_header(k, v);
            match (got, want) {
                (Ok((name, value)), Ok(n)) => {
                    assert_eq!(name.as_str(), *n);
                    assert_eq!(value.to_str().unwrap(), *v);
                    assert!(value.is_sensitive(), "{k}: the value is a secret");
                }
                (Err(_), Err(())) => {}
                (got, _) => panic!("{k:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn payloads_come_as_json_or_base64() {
        let r: ConnectResult = serde_json::from_str(r#"{"info":{"a":1},"b64data":"aGk=","channels":["x"]}"#).unwrap();
        assert_eq!(r.info_bytes().unwrap(), Bytes::from_static(br#"{"a":1}"#));
        assert_eq!(r.data_bytes().unwrap(), Bytes::from_static(b"hi"));
        let bad: ConnectResult = serde_json::from_str(r#"{"b64info":"%%%"}"#).unwrap();
        assert!(bad.info_bytes().is_err());
        let p: PublishResult = serde_json::from_str(r#"{"skip_history":true}"#).unwrap();
        assert_eq!(p.replacement().unwrap(), None);
        let p: PublishResult = serde_json::from_str(r#"{"data":{"x":2}}"#).unwrap();
        assert_eq!(p.replacement().unwrap(), Some(Bytes::from_static(br#"{"x":2}"#)));
    }
}
