//! The one typed configuration tree, with Centrifugo v6 key names and defaults.
//!
//! Loading (file formats, `CENTRIFUGO_*` env vars, flags) happens in the server
//! crate; this module only defines the shape, the defaults and [`Config::validate`],
//! which reports every problem at once, each naming its key. Library code never
//! reads the environment.
//!
//! Every section derives `Serialize` as well: the server walks the serialized
//! default tree to learn which env vars exist, so a key added here is
//! automatically reachable from the environment. Which Centrifugo keys are
//! honoured and which are refused (only their default accepted) is decided by
//! the server's key registry (`gyre-server/src/config_keys.rs`); a field here
//! documented as "refused" is parsed only so that its default round-trips.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a Go-style string (`"25s"`, `"1m30s"`, `"720h"`,
/// `"500ms"`); a bare JSON number is nanoseconds, as in Centrifugo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// Whole seconds.
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    /// Zero.
    pub const ZERO: Dur = Dur(Duration::ZERO);
}

/// Parses a Go-style duration string; `-1`-style negative values map to `None`.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(Some(Duration::ZERO));
    }
    if s.starts_with('-') {
        return Ok(None);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        if num_end == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| format!("invalid number in duration {s:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map(Some).map_err(|_| format!("duration {s:?} is out of range"))
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        let s = ms / 1000;
        if s.is_multiple_of(3600) && s != 0 {
            format!("{}h", s / 3600)
        } else if s.is_multiple_of(60) && s != 0 {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    } else {
        format!("{ms}ms")
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"25s\" or a number of nanoseconds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                match parse_duration(v).map_err(E::custom)? {
                    Some(d) => Ok(Dur(d)),
                    None => Ok(Dur(Duration::ZERO)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_nanos(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_nanos(v.max(0) as u64)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_nanos(v.max(0.0) as u64)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A ping interval or pong timeout: a duration, or disabled by `-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptDur(pub Option<Duration>);

impl Serialize for OptDur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(d) => s.serialize_str(&format_duration(d)),
            None => s.serialize_str("-1"),
        }
    }
}

impl<'de> Deserialize<'de> for OptDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => parse_duration(&s).map(OptDur).map_err(serde::de::Error::custom),
            serde_json::Value::Number(n) => {
                let n = n.as_f64().unwrap_or(0.0);
                Ok(OptDur(if n < 0.0 { None } else { Some(Duration::from_nanos(n as u64)) }))
            }
            other => Err(serde::de::Error::custom(format!("expected a duration, got {other}"))),
        }
    }
}

/// Declares a config value that is one of a fixed set of strings, parsed once
/// into an enum. A bad value is a deserialization error listing the accepted
/// ones, which the loader reports under the key's dotted path. `A = "a" | "b"`
/// accepts `"b"` as an alias of `"a"` (serialized as `"a"`).
macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vm])* $var),+
        }

        impl $name {
            /// The config spelling.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $s),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s $(| $alias)* => Ok($name::$var),)+
                    _ => Err(format!(
                        "unsupported value {s:?} (expected one of: {})",
                        [$(format!("{:?}", $s)),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

str_enum! {
    /// `log.level`.
    LogLevel {
        /// No logging.
        None = "none",
        /// Everything.
        Trace = "trace",
        /// Debug and above.
        Debug = "debug",
        /// Info and above (default).
        #[default]
        Info = "info",
        /// Warnings and errors.
        Warn = "warn",
        /// Errors only.
        Error = "error",
        /// Centrifugo's `fatal`: Gyre logs errors at this level.
        Fatal = "fatal",
    }
}

str_enum! {
    /// `engine.type`: Gyre has only the memory engine (Redis is not implemented;
    /// clusters use `broker.type: nats`).
    EngineType {
        /// In-process broker and presence.
        #[default]
        Memory = "memory",
    }
}

str_enum! {
    /// `broker.type` and `presence_manager.type`.
    BackendType {
        /// In-process.
        #[default]
        Memory = "memory",
        /// NATS JetStream (see docs/nats.md).
        Nats = "nats",
    }
}

str_enum! {
    /// `force_recovery_mode` of a namespace; `""` means `stream`.
    RecoveryMode {
        /// Recover missed publications from the stream.
        #[default]
        Stream = "stream" | "",
        /// Deliver only the latest publication.
        Cache = "cache",
    }
}

str_enum! {
    /// `publication_data_format` (global and per namespace).
    PublicationDataFormat {
        /// Unset: any non-empty data (a namespace inherits the global format).
        #[default]
        Any = "",
        /// Valid JSON.
        Json = "json",
        /// A JSON object.
        JsonObject = "json_object",
        /// Anything, empty data included.
        Binary = "binary",
    }
}

str_enum! {
    /// An entry of `allowed_delta_types`.
    DeltaType {
        /// Fossil delta.
        #[default]
        Fossil = "fossil",
    }
}

str_enum! {
    /// `http_api.error_mode` and `grpc_api.error_mode`.
    ErrorMode {
        /// Errors in the reply body with HTTP 200.
        #[default]
        Default = "",
        /// Errors as HTTP status codes.
        Transport = "transport",
    }
}

macro_rules! default_fn {
    ($name:ident, $t:ty, $v:expr) => {
        fn $name() -> $t {
            $v
        }
    };
}

default_fn!(d_port, u16, 8000);
default_fn!(d_ping, OptDur, OptDur(Some(Duration::from_secs(25))));
default_fn!(d_pong, OptDur, OptDur(Some(Duration::from_secs(8))));
default_fn!(d_25s, Dur, Dur::secs(25));
default_fn!(d_10s, Dur, Dur::secs(10));
default_fn!(d_27s, Dur, Dur::secs(27));
default_fn!(d_40s, Dur, Dur::secs(40));
default_fn!(d_30s, Dur, Dur::secs(30));
default_fn!(d_1s, Dur, Dur::secs(1));
default_fn!(d_720h, Dur, Dur::secs(720 * 3600));
default_fn!(d_128, usize, 128);
default_fn!(d_300, usize, 300);
default_fn!(d_queue, usize, 1_048_576);
default_fn!(d_msg_limit, usize, 65_536);
default_fn!(d_255, usize, 255);
default_fn!(d_private, String, "$".into());
default_fn!(d_ns_boundary, String, ":".into());
default_fn!(d_user_boundary, String, "#".into());
default_fn!(d_user_sep, String, ",".into());
default_fn!(d_api_prefix, String, "/api".into());
default_fn!(d_ws_prefix, String, "/connection/websocket".into());
default_fn!(d_sse_prefix, String, "/connection/sse".into());
default_fn!(d_hs_prefix, String, "/connection/http_stream".into());
default_fn!(d_emu_prefix, String, "/emulation".into());
default_fn!(d_uws_prefix, String, "/connection/uni_websocket".into());
default_fn!(d_usse_prefix, String, "/connection/uni_sse".into());
default_fn!(d_uhs_prefix, String, "/connection/uni_http_stream".into());
default_fn!(d_sockjs_prefix, String, "/connection/sockjs".into());
default_fn!(d_health_prefix, String, "/health".into());
default_fn!(d_metrics_prefix, String, "/metrics".into());
default_fn!(d_init_prefix, String, "/connection/init".into());
default_fn!(d_ping_method, String, "ping".into());
default_fn!(d_nats_url, String, "nats://localhost:4222".into());
default_fn!(d_prefix, String, "centrifugo".into());
default_fn!(d_body_limit, usize, 65_536);

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// Listeners.
    pub http_server: HttpServer,
    /// Logging.
    pub log: Log,
    /// Real-time connection options.
    pub client: Client,
    /// Channel options and namespaces.
    pub channel: Channel,
    /// RPC options.
    pub rpc: Rpc,
    /// Combined broker and presence manager.
    pub engine: Engine,
    /// A separately configured broker.
    pub broker: Broker,
    /// A separately configured presence manager.
    pub presence_manager: PresenceManager,
    /// The HTTP server API.
    pub http_api: HttpApi,
    /// The gRPC server API (own listener).
    pub grpc_api: GrpcApi,
    /// Bidirectional WebSocket.
    pub websocket: WebSocket,
    /// SSE emulation.
    pub sse: Streaming<SsePrefix>,
    /// HTTP-streaming emulation.
    pub http_stream: Streaming<HttpStreamPrefix>,
    /// Emulation endpoint.
    pub emulation: Emulation,
    /// Unidirectional WebSocket.
    pub uni_websocket: UniWebSocket,
    /// Unidirectional SSE.
    pub uni_sse: Streaming<UniSsePrefix>,
    /// Unidirectional HTTP-streaming.
    pub uni_http_stream: Streaming<UniHttpStreamPrefix>,
    /// SockJS (Centrifugo v3–v5 transport, served by Gyre for old clients).
    pub sockjs: SockJs,
    /// `/health`.
    pub health: Endpoint<HealthPrefix>,
    /// `/metrics`.
    pub prometheus: Endpoint<MetricsPrefix>,
    /// `/connection/init`.
    pub init: Endpoint<InitPrefix>,
    /// Admin web UI and its API (`/admin/auth`, `/admin/api`).
    pub admin: Admin,
    /// Gyre's demo page at `/`.
    pub demo: Demo,
    /// Node identity.
    pub node: NodeSection,
    /// Usage statistics (Gyre never sends any).
    pub usage_stats: UsageStats,
    /// Graceful shutdown.
    pub shutdown: Shutdown,
    /// Named proxies, referenced by `*_proxy_name` / `rpc.namespaces[].proxy_name`.
    pub proxies: Vec<ProxyConfig>,
    /// Write the process id to this file.
    pub pid_file: String,
}

/// `http_server.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpServer {
    /// Bind address ("" = all interfaces).
    pub address: String,
    /// External port.
    pub port: u16,
    /// Internal listener address (falls back to `address`).
    pub internal_address: String,
    /// Internal port; 0 = same as `port`. Centrifugo types it as a string
    /// (`""` = unset), so a string or a number is accepted.
    #[serde(deserialize_with = "port_or_string")]
    pub internal_port: u16,
    /// Gyre: a new socket must deliver its first request's headers (HTTP/1)
    /// or open its first stream (HTTP/2) within this, and an idle HTTP/1
    /// keep-alive socket its next request's headers; else it is closed. 0 = no limit.
    pub read_header_timeout: Dur,
    /// Gyre: a request body (connection endpoints, `/emulation`, the server
    /// API, SockJS sends) must arrive in full within this; else 408 and the
    /// socket is closed. 0 = no limit.
    pub read_body_timeout: Dur,
    /// Gyre: accepted sockets that are not (yet) a client connection, at most;
    /// sockets over the cap are closed at once. 0 = no cap.
    pub max_pending_connections: usize,
    /// TLS of the listeners (both, unless `tls_external` or `internal_tls`).
    pub tls: Tls,
    /// With a separate internal port: TLS only on the external listener.
    pub tls_external: bool,
    /// TLS of the separate internal listener (wins over `tls` there).
    pub internal_tls: Tls,
}

impl Default for HttpServer {
    fn default() -> Self {
        HttpServer {
            address: String::new(),
            port: d_port(),
            internal_address: String::new(),
            internal_port: 0,
            read_header_timeout: Dur::secs(10),
            read_body_timeout: Dur::secs(10),
            max_pending_connections: 2048,
            tls: Tls::default(),
            tls_external: false,
            internal_tls: Tls::default(),
        }
    }
}

/// Centrifugo's TLS object (`http_server.tls`, `http_server.internal_tls`,
/// `grpc_api.tls`, `broker.nats.tls`, a proxy's `http.tls` / `grpc.tls`).
/// Each `*_pem` holds raw PEM, base64-encoded PEM or a file path; loading
/// and checking them is [`crate::tls`]'s job (and gyre-server's `tls` module
/// for listeners), so a bad certificate is reported naming its key at start.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Tls {
    /// Use TLS.
    pub enabled: bool,
    /// Certificate chain (server side: the served one; client side: the client certificate for mTLS).
    pub cert_pem: String,
    /// Private key of `cert_pem`.
    pub key_pem: String,
    /// Client side: CA the peer's certificate must chain to (system roots when empty).
    pub server_ca_pem: String,
    /// Server side: clients must present a certificate signed by this CA (mTLS).
    pub client_ca_pem: String,
    /// Client side: accept any server certificate.
    pub insecure_skip_verify: bool,
    /// Client side: name the server certificate is checked against (the URL's host when empty).
    pub server_name: String,
}

impl std::fmt::Debug for Tls {
    // `key_pem` may hold the key itself: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("enabled", &self.enabled)
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .field("server_ca_pem", &self.server_ca_pem.len())
            .field("client_ca_pem", &self.client_ca_pem.len())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn port_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a port"))),
        serde_json::Value::String(s) if s.is_empty() => Ok(0),
        serde_json::Value::String(s) => s.parse().map_err(|_| serde::de::Error::custom(format!("{s:?} is not a port"))),
        serde_json::Value::Null => Ok(0),
        other => Err(serde::de::Error::custom(format!("expected a port, got {other}"))),
    }
}

/// `log.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    /// Level.
    pub level: LogLevel,
    /// Log to this file instead of stdout.
    pub file: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: LogLevel::Info, file: String::new() }
    }
}

/// Token verification keys and claim checks (`client.token.*`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Token {
    /// HMAC secret (HS256/384/512).
    pub hmac_secret_key: String,
    /// Previous HMAC secret, tried when the current one fails.
    pub hmac_previous_secret_key: String,
    /// Unix seconds until which the previous key is accepted (0 = no limit).
    pub hmac_previous_secret_key_valid_until: i64,
    /// RSA public key PEM (RS256/384/512).
    pub rsa_public_key: String,
    /// ECDSA public key PEM (ES256/384).
    pub ecdsa_public_key: String,
    /// JWKS URL; when set, static keys are not used.
    pub jwks_public_endpoint: String,
    /// Required `aud`.
    pub audience: String,
    /// Regex `aud` must match.
    pub audience_regex: String,
    /// Required `iss`.
    pub issuer: String,
    /// Regex `iss` must match.
    pub issuer_regex: String,
    /// Claim holding the user id (default `sub`).
    pub user_id_claim: String,
    /// Allow JWKS endpoints on private networks/plain HTTP.
    pub insecure_skip_jwks_endpoint_safety_check: bool,
}

/// `client.subscription_token.*`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SubscriptionToken {
    /// Use these keys for subscription tokens instead of `client.token`.
    pub enabled: bool,
    /// The keys.
    #[serde(flatten)]
    pub token: Token,
}

/// `client.subscribe_to_user_personal_channel.*`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PersonalChannel {
    /// Subscribe every authenticated connection to its personal channel.
    pub enabled: bool,
    /// Namespace of the personal channel.
    pub personal_channel_namespace: String,
    /// Keep one connection per user (needs presence).
    pub single_connection: bool,
}

/// `client.connect_code_to_unidirectional_disconnect`: which disconnect a
/// unidirectional client gets for a connect error code.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CodeTransforms {
    /// Apply the transforms.
    pub enabled: bool,
    /// Code → disconnect.
    pub transforms: Vec<CodeTransform>,
}

/// One transform.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CodeTransform {
    /// Connect error code.
    pub code: u32,
    /// Resulting disconnect.
    pub to: DisconnectTo,
}

/// A disconnect code and reason.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct DisconnectTo {
    /// Code.
    pub code: u32,
    /// Reason.
    pub reason: String,
}

/// `client.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Client {
    /// Origin glob patterns; empty = only requests without `Origin`.
    pub allowed_origins: Vec<String>,
    /// Connection token verification.
    pub token: Token,
    /// Subscription token verification.
    pub subscription_token: SubscriptionToken,
    /// Accept connections without a token as anonymous.
    pub allow_anonymous_connect_without_token: bool,
    /// Reject connection tokens with an empty `sub`.
    pub disallow_anonymous_connection_tokens: bool,
    /// Server ping interval (`-1` disables).
    #[serde(default = "d_ping")]
    pub ping_interval: OptDur,
    /// Pong timeout (`-1` disables).
    #[serde(default = "d_pong")]
    pub pong_timeout: OptDur,
    /// Grace after connection expiry.
    #[serde(default = "d_25s")]
    pub expired_close_delay: Dur,
    /// Grace after subscription expiry.
    #[serde(default = "d_25s")]
    pub expired_sub_close_delay: Dur,
    /// Connect must arrive within this.
    #[serde(default = "d_10s")]
    pub stale_close_delay: Dur,
    /// Channels per connection.
    #[serde(default = "d_128")]
    pub channel_limit: usize,
    /// Bytes per connection outgoing queue.
    #[serde(default = "d_queue")]
    pub queue_max_size: usize,
    /// Presence refresh and periodic checks.
    #[serde(default = "d_27s")]
    pub presence_update_interval: Dur,
    /// Commands processed concurrently. Gyre processes them in order, so the
    /// loader refuses any value but the default 0.
    pub concurrency: usize,
    /// Delay between stream position checks.
    #[serde(default = "d_40s")]
    pub channel_position_check_delay: Dur,
    /// Max lag of position (0 = disabled).
    pub channel_position_max_time_lag: Dur,
    /// Connections per node (0 = unlimited).
    pub connection_limit: usize,
    /// Connections per user per node (0 = unlimited).
    pub user_connection_limit: usize,
    /// New connections per second per node (0 = unlimited).
    pub connection_rate_limit: usize,
    /// Add server time to the connect reply.
    pub connect_include_server_time: bool,
    /// Max publications per history request.
    #[serde(default = "d_300")]
    pub history_max_publication_limit: usize,
    /// Max publications recovered per subscribe.
    #[serde(default = "d_300")]
    pub recovery_max_publication_limit: usize,
    /// Skip token signature checks (testing only).
    pub insecure_skip_token_signature_verify: bool,
    /// Trust this request header as the user id.
    pub user_id_http_header: String,
    /// Development mode: everything allowed.
    pub insecure: bool,
    /// Personal channel auto-subscription.
    pub subscribe_to_user_personal_channel: PersonalChannel,
    /// Connect error code transforms for unidirectional transports.
    pub connect_code_to_unidirectional_disconnect: CodeTransforms,
    /// Connect and refresh proxies.
    pub proxy: ClientProxies,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            allowed_origins: Vec::new(),
            token: Token::default(),
            subscription_token: SubscriptionToken::default(),
            allow_anonymous_connect_without_token: false,
            disallow_anonymous_connection_tokens: false,
            ping_interval: d_ping(),
            pong_timeout: d_pong(),
            expired_close_delay: d_25s(),
            expired_sub_close_delay: d_25s(),
            stale_close_delay: d_10s(),
            channel_limit: d_128(),
            queue_max_size: d_queue(),
            presence_update_interval: d_27s(),
            concurrency: 0,
            channel_position_check_delay: d_40s(),
            channel_position_max_time_lag: Dur::ZERO,
            connection_limit: 0,
            user_connection_limit: 0,
            connection_rate_limit: 0,
            connect_include_server_time: false,
            history_max_publication_limit: d_300(),
            recovery_max_publication_limit: d_300(),
            insecure_skip_token_signature_verify: false,
            user_id_http_header: String::new(),
            insecure: false,
            subscribe_to_user_personal_channel: PersonalChannel::default(),
            connect_code_to_unidirectional_disconnect: CodeTransforms::default(),
            proxy: ClientProxies::default(),
        }
    }
}

/// Options of a channel namespace (or of channels without namespace).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ChannelOptions {
    /// Maintain presence.
    pub presence: bool,
    /// Publish join/leave events.
    pub join_leave: bool,
    /// Push join/leave to all subscribers.
    pub force_push_join_leave: bool,
    /// History stream size.
    pub history_size: usize,
    /// History retention.
    pub history_ttl: Dur,
    /// Stream meta retention (0 = `channel.history_meta_ttl`).
    pub history_meta_ttl: Dur,
    /// Positioning for all subscribers.
    pub force_positioning: bool,
    /// Allow clients to ask for positioning.
    pub allow_positioning: bool,
    /// Recovery for all subscribers.
    pub force_recovery: bool,
    /// Allow clients to ask for recovery.
    pub allow_recovery: bool,
    /// `stream` (default) or `cache`.
    pub force_recovery_mode: RecoveryMode,
    /// Deliver the latest publication on every subscribe (cache mode).
    pub auto_cache_recover: bool,
    /// `["fossil"]` enables delta negotiation.
    pub allowed_delta_types: Vec<DeltaType>,
    /// Mark all publications as delta-capable.
    pub delta_publish: bool,
    /// Allow client tag filters.
    pub allow_tags_filter: bool,
    /// Authenticated users may subscribe.
    pub allow_subscribe_for_client: bool,
    /// Anonymous users may subscribe too.
    pub allow_subscribe_for_anonymous: bool,
    /// Authenticated users may publish.
    pub allow_publish_for_client: bool,
    /// Subscribers may publish.
    pub allow_publish_for_subscriber: bool,
    /// Extends publish permissions to anonymous users.
    pub allow_publish_for_anonymous: bool,
    /// Presence for authenticated users.
    pub allow_presence_for_client: bool,
    /// Presence for subscribers.
    pub allow_presence_for_subscriber: bool,
    /// Presence for anonymous users.
    pub allow_presence_for_anonymous: bool,
    /// History for authenticated users.
    pub allow_history_for_client: bool,
    /// History for subscribers.
    pub allow_history_for_subscriber: bool,
    /// History for anonymous users.
    pub allow_history_for_anonymous: bool,
    /// Enable `#` user-limited channels.
    pub allow_user_limited_channels: bool,
    /// Regex the channel (after `ns:`) must match.
    pub channel_regex: String,
    /// "", json, json_object or binary.
    pub publication_data_format: PublicationDataFormat,
    /// Ask the subscribe proxy about subscriptions without a token.
    pub subscribe_proxy_enabled: bool,
    /// Which subscribe proxy ("" = "default" = `channel.proxy.subscribe`).
    pub subscribe_proxy_name: String,
    /// Ask the publish proxy about client publications.
    pub publish_proxy_enabled: bool,
    /// Which publish proxy ("" = "default").
    pub publish_proxy_name: String,
    /// Server-side subscription refresh through the sub_refresh proxy.
    pub sub_refresh_proxy_enabled: bool,
    /// Which sub_refresh proxy ("" = "default").
    pub sub_refresh_proxy_name: String,
    /// Subscribe stream proxy (refused by the loader: not implemented).
    pub subscribe_stream_proxy_enabled: bool,
    /// Experimental subscription type.
    pub subscription_type: String,
}

impl ChannelOptions {
    /// History is on when both size and ttl are set.
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.0.is_zero()
    }
}

/// A named namespace.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct Namespace {
    /// Namespace name.
    pub name: String,
    /// Its options.
    #[serde(flatten)]
    pub options: ChannelOptions,
}

/// `channel.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Channel {
    /// Options of channels without a namespace.
    pub without_namespace: ChannelOptions,
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Default stream meta retention.
    #[serde(default = "d_720h")]
    pub history_meta_ttl: Dur,
    /// Global publication data format.
    pub publication_data_format: PublicationDataFormat,
    /// Max channel name length.
    #[serde(default = "d_255")]
    pub max_length: usize,
    /// Private channel prefix.
    #[serde(default = "d_private")]
    pub private_prefix: String,
    /// Namespace boundary.
    #[serde(default = "d_ns_boundary")]
    pub namespace_boundary: String,
    /// User boundary.
    #[serde(default = "d_user_boundary")]
    pub user_boundary: String,
    /// User separator.
    #[serde(default = "d_user_sep")]
    pub user_separator: String,
    /// The channel proxies named `default`.
    pub proxy: ChannelProxies,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            without_namespace: ChannelOptions::default(),
            namespaces: Vec::new(),
            history_meta_ttl: d_720h(),
            publication_data_format: PublicationDataFormat::Any,
            max_length: d_255(),
            private_prefix: d_private(),
            namespace_boundary: d_ns_boundary(),
            user_boundary: d_user_boundary(),
            user_separator: d_user_sep(),
            proxy: ChannelProxies::default(),
        }
    }
}

/// `rpc.ping.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcPing {
    /// Enable the built-in ping RPC.
    pub enabled: bool,
    /// Its method name.
    pub method: String,
}

impl Default for RpcPing {
    fn default() -> Self {
        RpcPing { enabled: false, method: d_ping_method() }
    }
}

/// RPC namespace options.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RpcOptions {
    /// Forward to the RPC proxy.
    pub proxy_enabled: bool,
    /// Which proxy.
    pub proxy_name: String,
}

/// A named RPC namespace.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RpcNamespace {
    /// Name.
    pub name: String,
    /// Options.
    #[serde(flatten)]
    pub options: RpcOptions,
}

/// `rpc.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Rpc {
    /// Built-in ping.
    pub ping: RpcPing,
    /// RPC namespace boundary.
    #[serde(default = "d_ns_boundary")]
    pub namespace_boundary: String,
    /// Options for methods without namespace.
    pub without_namespace: RpcOptions,
    /// RPC namespaces.
    pub namespaces: Vec<RpcNamespace>,
    /// The RPC proxy named `default`.
    pub proxy: ProxyConfig,
}

impl Default for Rpc {
    fn default() -> Self {
        Rpc {
            ping: RpcPing::default(),
            namespace_boundary: d_ns_boundary(),
            without_namespace: RpcOptions::default(),
            namespaces: Vec::new(),
            proxy: ProxyConfig::default(),
        }
    }
}

/// A proxy object: `client.proxy.connect`, `channel.proxy.subscribe`,
/// `rpc.proxy`, an element of `proxies`, ...
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProxyConfig {
    /// Name (only in `proxies[]`; `default` is reserved for the built-in ones).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `http(s)://…` (POST JSON) or `grpc://host:port`.
    pub endpoint: String,
    /// Deadline of one call, body included.
    #[serde(default = "d_1s")]
    pub timeout: Dur,
    /// Headers of the client's transport request copied into the proxy request.
    pub http_headers: Vec<String>,
    /// Like `http_headers`, sent as gRPC metadata to a gRPC proxy.
    pub grpc_metadata: Vec<String>,
    /// Names from the client-sent `connect.headers` forwarded as headers.
    pub emulated_headers: Vec<String>,
    /// Payloads as base64 `b64data` (and `encoding: "binary"`).
    pub binary_encoding: bool,
    /// Send the connection's `meta` with every request after connect.
    pub include_connection_meta: bool,
    /// HTTP-only options.
    pub http: ProxyHttp,
    /// gRPC-only options.
    pub grpc: ProxyGrpc,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            name: String::new(),
            endpoint: String::new(),
            timeout: d_1s(),
            http_headers: Vec::new(),
            grpc_metadata: Vec::new(),
            emulated_headers: Vec::new(),
            binary_encoding: false,
            include_connection_meta: false,
            http: ProxyHttp::default(),
            grpc: ProxyGrpc::default(),
        }
    }
}

/// `<proxy>.http.*`
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ProxyHttp {
    /// TLS toward an `https://` endpoint: CA, client certificate (mutual
    /// TLS), server name, skip verify. Off: `https://` checks the system roots.
    pub tls: Tls,
    /// Headers added to every request.
    pub static_headers: std::collections::BTreeMap<String, String>,
    /// HTTP status → reply error / disconnect, instead of error 100.
    pub status_to_code_transforms: Vec<StatusTransform>,
}

/// `<proxy>.grpc.*`
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ProxyGrpc {
    /// TLS toward the `grpc://` endpoint (off: cleartext HTTP/2).
    pub tls: Tls,
    /// Metadata key sent with every call (with `credentials_value`), as
    /// Centrifugo's per-RPC credentials; unused when empty.
    pub credentials_key: String,
    /// Metadata value of `credentials_key` (a secret: never logged).
    pub credentials_value: String,
    /// Send request messages gzip-compressed (`grpc-encoding: gzip`).
    pub compression: bool,
    /// Metadata added to every call.
    pub static_metadata: std::collections::BTreeMap<String, String>,
}

/// One `status_to_code_transforms` entry.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct StatusTransform {
    /// HTTP status to match.
    pub status_code: u16,
    /// Reply error (used when its code is non-zero).
    pub to_error: ErrorTo,
    /// Disconnect (used when its code is non-zero).
    pub to_disconnect: DisconnectTo,
}

/// A reply error given in config.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ErrorTo {
    /// Code.
    pub code: u32,
    /// Message.
    pub message: String,
    /// Whether the SDK retries.
    pub temporary: bool,
}

/// A proxy that is off unless `enabled` (`client.proxy.connect` / `.refresh`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ToggledProxy {
    /// Call it.
    pub enabled: bool,
    /// The proxy object.
    #[serde(flatten)]
    pub proxy: ProxyConfig,
}

/// `client.proxy.*`
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ClientProxies {
    /// Decides connections without a token.
    pub connect: ToggledProxy,
    /// Extends connections when they expire (server-driven refresh).
    pub refresh: ToggledProxy,
}

/// `channel.proxy.*`: the channel proxies named `default`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ChannelProxies {
    /// Subscribe proxy.
    pub subscribe: ProxyConfig,
    /// Publish proxy.
    pub publish: ProxyConfig,
    /// Subscription refresh proxy.
    pub sub_refresh: ProxyConfig,
}

/// `engine.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Engine {
    /// `memory` (Gyre has no Redis engine).
    #[serde(rename = "type")]
    pub typ: EngineType,
}

impl Default for Engine {
    fn default() -> Self {
        Engine { typ: EngineType::Memory }
    }
}

/// `broker.nats.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Nats {
    /// Server URL.
    pub url: String,
    /// Subject prefix.
    pub prefix: String,
    /// Dial timeout.
    #[serde(default = "d_1s")]
    pub dial_timeout: Dur,
    /// Write timeout.
    #[serde(default = "d_1s")]
    pub write_timeout: Dur,
    /// TLS to the NATS server (CA, client certificate for mTLS).
    pub tls: Tls,
}

impl Default for Nats {
    fn default() -> Self {
        Nats { url: d_nats_url(), prefix: d_prefix(), dial_timeout: d_1s(), write_timeout: d_1s(), tls: Tls::default() }
    }
}

/// `broker.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Broker {
    /// Use this broker instead of the engine's.
    pub enabled: bool,
    /// `memory` or `nats`.
    #[serde(rename = "type")]
    pub typ: BackendType,
    /// NATS options.
    pub nats: Nats,
}

impl Default for Broker {
    fn default() -> Self {
        Broker { enabled: false, typ: BackendType::Memory, nats: Nats::default() }
    }
}

/// `presence_manager.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceManager {
    /// Use this presence manager instead of the engine's.
    pub enabled: bool,
    /// `memory` or `nats`.
    #[serde(rename = "type")]
    pub typ: BackendType,
}

impl Default for PresenceManager {
    fn default() -> Self {
        PresenceManager { enabled: false, typ: BackendType::Memory }
    }
}

/// `http_api.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpApi {
    /// Remove the API.
    pub disabled: bool,
    /// Mount point.
    #[serde(default = "d_api_prefix")]
    pub handler_prefix: String,
    /// API key.
    pub key: String,
    /// "" or "transport".
    pub error_mode: ErrorMode,
    /// Serve on the external listener.
    pub external: bool,
    /// No key check.
    pub insecure: bool,
}

impl Default for HttpApi {
    fn default() -> Self {
        HttpApi {
            disabled: false,
            handler_prefix: d_api_prefix(),
            key: String::new(),
            error_mode: ErrorMode::Default,
            external: false,
            insecure: false,
        }
    }
}

default_fn!(d_grpc_port, u16, 10000);

/// `grpc_api.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcApi {
    /// Serve the gRPC API.
    pub enabled: bool,
    /// Bind address ("" = all interfaces).
    pub address: String,
    /// Port.
    #[serde(default = "d_grpc_port")]
    pub port: u16,
    /// API key: each call carries metadata `authorization: apikey <key>`. Empty = no check.
    pub key: String,
    /// Errors in the response's `error` field (default) or as gRPC status codes (`transport`).
    pub error_mode: ErrorMode,
    /// Largest request message in bytes; 0 = 4 MiB (the gRPC default).
    pub max_receive_message_size: usize,
    /// gRPC server reflection (not supported by this Gyre version; must stay false).
    pub reflection: bool,
    /// TLS of the gRPC listener (`client_ca_pem`: mTLS), as `http_server.tls`.
    pub tls: Tls,
}

impl Default for GrpcApi {
    fn default() -> Self {
        GrpcApi {
            enabled: false,
            address: String::new(),
            port: d_grpc_port(),
            key: String::new(),
            error_mode: ErrorMode::Default,
            max_receive_message_size: 0,
            reflection: false,
            tls: Tls::default(),
        }
    }
}

impl GrpcApi {
    /// The effective request size limit.
    pub fn max_receive(&self) -> usize {
        if self.max_receive_message_size == 0 { 4 * 1024 * 1024 } else { self.max_receive_message_size }
    }
}

/// `websocket.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebSocket {
    /// Remove the endpoint.
    pub disabled: bool,
    /// Path.
    #[serde(default = "d_ws_prefix")]
    pub handler_prefix: String,
    /// permessage-deflate (not implemented: the loader refuses `true`).
    pub compression: bool,
    /// Max incoming message size.
    #[serde(default = "d_msg_limit")]
    pub message_size_limit: usize,
    /// Write timeout.
    #[serde(default = "d_1s")]
    pub write_timeout: Dur,
    /// Read buffer size (not used: the loader refuses non-default values).
    pub read_buffer_size: usize,
    /// Write buffer size (not used: the loader refuses non-default values).
    pub write_buffer_size: usize,
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            disabled: false,
            handler_prefix: d_ws_prefix(),
            compression: false,
            message_size_limit: d_msg_limit(),
            write_timeout: d_1s(),
            read_buffer_size: 0,
            write_buffer_size: 0,
        }
    }
}

/// Gives each endpoint section type its default path.
pub trait DefaultPrefix {
    /// The default `handler_prefix`.
    fn prefix() -> String;
}

macro_rules! prefix_type {
    ($t:ident, $f:ident) => {
        /// Default path marker.
        #[derive(Debug, Clone, Default)]
        pub struct $t;
        impl DefaultPrefix for $t {
            fn prefix() -> String {
                $f()
            }
        }
    };
}

prefix_type!(SsePrefix, d_sse_prefix);
prefix_type!(HttpStreamPrefix, d_hs_prefix);
prefix_type!(UniSsePrefix, d_usse_prefix);
prefix_type!(UniHttpStreamPrefix, d_uhs_prefix);
prefix_type!(HealthPrefix, d_health_prefix);
prefix_type!(MetricsPrefix, d_metrics_prefix);
prefix_type!(InitPrefix, d_init_prefix);

/// An HTTP streaming transport section (`sse`, `http_stream`, `uni_sse`, `uni_http_stream`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, bound = "")]
pub struct Streaming<P: DefaultPrefix> {
    /// Enable.
    pub enabled: bool,
    /// Path.
    pub handler_prefix: String,
    /// Body limit.
    pub max_request_body_size: usize,
    #[serde(skip)]
    _p: std::marker::PhantomData<P>,
}

impl<P: DefaultPrefix> Default for Streaming<P> {
    fn default() -> Self {
        Streaming {
            enabled: false,
            handler_prefix: P::prefix(),
            max_request_body_size: d_body_limit(),
            _p: std::marker::PhantomData,
        }
    }
}

/// A plain endpoint section (`health`, `prometheus`, `init`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, bound = "")]
pub struct Endpoint<P: DefaultPrefix> {
    /// Enable.
    pub enabled: bool,
    /// Path.
    pub handler_prefix: String,
    #[serde(skip)]
    _p: std::marker::PhantomData<P>,
}

impl<P: DefaultPrefix> Default for Endpoint<P> {
    fn default() -> Self {
        Endpoint { enabled: false, handler_prefix: P::prefix(), _p: std::marker::PhantomData }
    }
}

/// `emulation.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Emulation {
    /// Path.
    #[serde(default = "d_emu_prefix")]
    pub handler_prefix: String,
    /// Body limit.
    #[serde(default = "d_body_limit")]
    pub max_request_body_size: usize,
}

impl Default for Emulation {
    fn default() -> Self {
        Emulation { handler_prefix: d_emu_prefix(), max_request_body_size: d_body_limit() }
    }
}

/// `uni_websocket.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UniWebSocket {
    /// Enable.
    pub enabled: bool,
    /// Path.
    #[serde(default = "d_uws_prefix")]
    pub handler_prefix: String,
    /// Max incoming message size.
    #[serde(default = "d_msg_limit")]
    pub message_size_limit: usize,
    /// Do not send a disconnect push before closing.
    pub disable_disconnect_push: bool,
    /// Join pushes of one write with `\n`.
    pub join_push_messages: bool,
}

impl Default for UniWebSocket {
    fn default() -> Self {
        UniWebSocket {
            enabled: false,
            handler_prefix: d_uws_prefix(),
            message_size_limit: d_msg_limit(),
            disable_disconnect_push: false,
            join_push_messages: false,
        }
    }
}

/// `sockjs.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SockJs {
    /// Enable.
    pub enabled: bool,
    /// Path.
    #[serde(default = "d_sockjs_prefix")]
    pub handler_prefix: String,
    /// Script URL the iframe transports' page loads.
    pub sockjs_url: String,
    /// Interval of `h` heartbeat frames.
    pub heartbeat_delay: Dur,
    /// A session without a receiving request expires after this.
    pub disconnect_delay: Dur,
    /// Streaming responses end after this many bytes; the client reconnects to the session.
    pub response_limit: usize,
    /// Sticky sessions for load balancers: set a `JSESSIONID` cookie and
    /// announce `cookie_needed` in `/info`.
    pub cookie_needed: bool,
    /// Expose SockJS's protocol test services (`/echo`, `/close`,
    /// `/disabled_websocket_echo`, `/cookie_needed_echo`) under `test_services_prefix`.
    pub test_services: bool,
    /// Prefix of the test services.
    pub test_services_prefix: String,
    /// Gyre: the `JSESSIONID` cookie (with `cookie_needed`) is `HttpOnly`.
    pub cookie_http_only: bool,
    /// Gyre: the `JSESSIONID` cookie's `SameSite` attribute.
    pub cookie_same_site: SameSite,
    /// Gyre: the `JSESSIONID` cookie is `Secure` (HTTPS only; required by
    /// browsers for `SameSite=None`).
    pub cookie_secure: bool,
}

/// A cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// Sent on top-level navigations from other sites, not on their subrequests.
    #[default]
    Lax,
    /// Never sent from other sites.
    Strict,
    /// Always sent (browsers require `Secure` with it).
    None,
}

impl SameSite {
    /// The attribute value as written in `Set-Cookie`.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

impl Default for SockJs {
    fn default() -> Self {
        SockJs {
            enabled: false,
            handler_prefix: d_sockjs_prefix(),
            sockjs_url: "https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js".into(),
            heartbeat_delay: Dur(Duration::from_secs(25)),
            disconnect_delay: Dur(Duration::from_secs(5)),
            response_limit: 128 * 1024,
            cookie_needed: false,
            test_services: false,
            test_services_prefix: "/sockjs_test".into(),
            cookie_http_only: true,
            cookie_same_site: SameSite::Lax,
            cookie_secure: false,
        }
    }
}

/// `admin.*`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Admin {
    /// Serve the admin web UI and its API.
    pub enabled: bool,
    /// Password for `POST /admin/auth`.
    pub password: String,
    /// HMAC secret signing admin tokens.
    pub secret: String,
    /// No password and no token (for a UI behind other protection only).
    pub insecure: bool,
    /// Mount point of the UI ("" = `/`); the API is under `<prefix>/admin/`.
    pub handler_prefix: String,
    /// Serve on the external listener instead of the internal one.
    pub external: bool,
}

/// `demo.*` (Gyre-specific)
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Demo {
    /// Serve the demo page at `/`.
    pub enabled: bool,
}

/// `usage_stats.*`: Gyre sends no usage statistics, so `disabled: true` is
/// what it always does; the key is accepted so Centrifugo configs load.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct UsageStats {
    /// Do not send usage statistics.
    pub disabled: bool,
}

/// `node.*`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NodeSection {
    /// Node name (default `<hostname>_<port>`).
    pub name: String,
}

/// `shutdown.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Shutdown {
    /// Drain deadline.
    #[serde(default = "d_30s")]
    pub timeout: Dur,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { timeout: d_30s() }
    }
}

/// A config problem, naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn valid_ns_name(name: &str) -> bool {
    name.len() >= 2 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_options(errs: &mut Vec<ConfigError>, key: &str, o: &ChannelOptions, meta_ttl: Dur) {
    let mut e = |k: &str, m: &str| errs.push(ConfigError { key: format!("{key}.{k}"), message: m.into() });
    if (o.history_size > 0) == o.history_ttl.0.is_zero() {
        e("history_size", "history_size and history_ttl must both be set or both be zero");
    }
    let meta = if o.history_meta_ttl.0.is_zero() { meta_ttl } else { o.history_meta_ttl };
    if o.history_enabled() && o.history_ttl > meta {
        e("history_ttl", "must not exceed history_meta_ttl");
    }
    if o.force_recovery && !o.history_enabled() {
        e("force_recovery", "recovery needs history (history_size and history_ttl)");
    }
    if !o.channel_regex.is_empty() && regex::Regex::new(&o.channel_regex).is_err() {
        e("channel_regex", "invalid regular expression");
    }
}

impl Config {
    /// Checks cross-field rules; returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut e = |k: &str, m: String| errs.push(ConfigError { key: k.into(), message: m });
        if let (Some(ping), Some(pong)) = (self.client.ping_interval.0, self.client.pong_timeout.0)
            && !pong.is_zero()
            && ping <= pong
        {
            e("client.ping_interval", "must be greater than client.pong_timeout".into());
        }
        if self.sockjs.cookie_same_site == SameSite::None && !self.sockjs.cookie_secure {
            e(
                "sockjs.cookie_same_site",
                "none requires sockjs.cookie_secure: true (browsers drop the cookie otherwise)".into(),
            );
        }
        if self.client.queue_max_size == 0 {
            e("client.queue_max_size", "must be positive".into());
        }
        if self.websocket.message_size_limit == 0 {
            e("websocket.message_size_limit", "must be positive".into());
        }
        if self.grpc_api.reflection {
            e("grpc_api.reflection", "gRPC reflection is not supported by this Gyre version".into());
        }
        if self.admin.enabled && !self.admin.insecure {
            if self.admin.password.is_empty() {
                e("admin.password", "must be set when admin.enabled (or set admin.insecure)".into());
            }
            if self.admin.secret.is_empty() {
                e("admin.secret", "must be set when admin.enabled (or set admin.insecure)".into());
            }
        }
        if !self.admin.handler_prefix.is_empty() && !self.admin.handler_prefix.starts_with('/') {
            e("admin.handler_prefix", "must start with /".into());
        }
        if self.channel.max_length == 0 {
            e("channel.max_length", "must be positive".into());
        }
        for (k, v) in [
            ("channel.namespace_boundary", &self.channel.namespace_boundary),
            ("channel.user_boundary", &self.channel.user_boundary),
            ("channel.user_separator", &self.channel.user_separator),
        ] {
            if v.is_empty() {
                e(k, "must not be empty".into());
            }
        }
        let jwks = &self.client.token.jwks_public_endpoint;
        if !(jwks.is_empty() || jwks.starts_with("http://") || jwks.starts_with("https://")) {
            e("client.token.jwks_public_endpoint", "must be an http(s) URL".into());
        }
        for (k, v) in [
            ("client.token.audience_regex", &self.client.token.audience_regex),
            ("client.token.issuer_regex", &self.client.token.issuer_regex),
        ] {
            if !v.is_empty() && regex::Regex::new(v).is_err() {
                e(k, "invalid regular expression".into());
            }
        }
        let meta = self.channel.history_meta_ttl;
        check_options(&mut errs, "channel.without_namespace", &self.channel.without_namespace, meta);
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in self.channel.namespaces.iter().enumerate() {
            let key = format!("channel.namespaces[{i}]");
            if !valid_ns_name(&ns.name) {
                errs.push(ConfigError {
                    key: format!("{key}.name"),
                    message: format!("invalid namespace name {:?} (must match ^[-a-zA-Z0-9_.]{{2,}}$)", ns.name),
                });
            }
            if !seen.insert(ns.name.clone()) {
                errs.push(ConfigError {
                    key: format!("{key}.name"),
                    message: format!("duplicate namespace {:?}", ns.name),
                });
            }
            check_options(&mut errs, &key, &ns.options, meta);
        }
        let pc = &self.client.subscribe_to_user_personal_channel;
        if pc.enabled && !pc.personal_channel_namespace.is_empty() {
            match self.channel.namespaces.iter().find(|n| n.name == pc.personal_channel_namespace) {
                None => errs.push(ConfigError {
                    key: "client.subscribe_to_user_personal_channel.personal_channel_namespace".into(),
                    message: format!("namespace {:?} is not defined", pc.personal_channel_namespace),
                }),
                Some(ns) if pc.single_connection && !ns.options.presence => errs.push(ConfigError {
                    key: "client.subscribe_to_user_personal_channel.single_connection".into(),
                    message: "needs presence enabled on the personal channel namespace".into(),
                }),
                _ => {}
            }
        }
        let mut rseen = std::collections::HashSet::new();
        for (i, ns) in self.rpc.namespaces.iter().enumerate() {
            if !valid_ns_name(&ns.name) || !rseen.insert(ns.name.clone()) {
                errs.push(ConfigError {
                    key: format!("rpc.namespaces[{i}].name"),
                    message: format!("invalid or duplicate rpc namespace name {:?}", ns.name),
                });
            }
        }
        self.validate_proxies(&mut errs);
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    /// Proxy objects and every reference to one by name.
    fn validate_proxies(&self, errs: &mut Vec<ConfigError>) {
        let mut e = |k: String, m: &str| errs.push(ConfigError { key: k, message: m.into() });
        let check = |key: &str, p: &ProxyConfig, e: &mut dyn FnMut(String, &str)| {
            let ep = &p.endpoint;
            if ep.is_empty() {
                e(format!("{key}.endpoint"), "must be set");
            } else if !(ep.starts_with("http://") || ep.starts_with("https://") || ep.starts_with("grpc://")) {
                e(format!("{key}.endpoint"), "must start with http://, https:// or grpc://");
            }
            if p.timeout.0.is_zero() {
                e(format!("{key}.timeout"), "must be positive");
            }
            // Centrifugo would send plain HTTP here (Go applies a TLS config to
            // https URLs only): refused, since TLS was asked for.
            if p.http.tls.enabled && ep.starts_with("http://") {
                e(format!("{key}.http.tls.enabled"), "needs an https:// endpoint");
            }
            if ep.starts_with("grpc://") && !p.grpc.credentials_key.is_empty() {
                if let Err(m) = crate::proxy::credentials_header(&p.grpc.credentials_key, "") {
                    e(format!("{key}.grpc.credentials_key"), m);
                }
                if crate::proxy::credentials_header("x-check", &p.grpc.credentials_value).is_err() {
                    e(format!("{key}.grpc.credentials_value"), "not a valid metadata value (visible ASCII only)");
                }
            }
        };
        let cp = &self.client.proxy;
        if cp.connect.enabled {
            check("client.proxy.connect", &cp.connect.proxy, &mut e);
        }
        if cp.refresh.enabled {
            check("client.proxy.refresh", &cp.refresh.proxy, &mut e);
        }
        let chp = &self.channel.proxy;
        for (k, p) in [("subscribe", &chp.subscribe), ("publish", &chp.publish), ("sub_refresh", &chp.sub_refresh)] {
            if !p.endpoint.is_empty() {
                check(&format!("channel.proxy.{k}"), p, &mut e);
            }
        }
        if !self.rpc.proxy.endpoint.is_empty() {
            check("rpc.proxy", &self.rpc.proxy, &mut e);
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.proxies.iter().enumerate() {
            let key = format!("proxies[{i}]");
            if !valid_ns_name(&p.name) || p.name == "default" {
                e(format!("{key}.name"), "must match ^[-a-zA-Z0-9_.]{2,}$ and not be \"default\"");
            } else if !names.insert(p.name.as_str()) {
                e(format!("{key}.name"), "duplicate proxy name");
            }
            check(&key, p, &mut e);
        }
        let exists = |default: &ProxyConfig, name: &str| match name {
            "" | "default" => !default.endpoint.is_empty(),
            n => self.proxies.iter().any(|p| p.name == n),
        };
        let mut opts: Vec<(String, &ChannelOptions)> =
            vec![("channel.without_namespace".into(), &self.channel.without_namespace)];
        for (i, ns) in self.channel.namespaces.iter().enumerate() {
            opts.push((format!("channel.namespaces[{i}]"), &ns.options));
        }
        for (key, o) in opts {
            for (kind, on, name, default) in [
                ("subscribe", o.subscribe_proxy_enabled, &o.subscribe_proxy_name, &chp.subscribe),
                ("publish", o.publish_proxy_enabled, &o.publish_proxy_name, &chp.publish),
                ("sub_refresh", o.sub_refresh_proxy_enabled, &o.sub_refresh_proxy_name, &chp.sub_refresh),
            ] {
                if on && !exists(default, name) {
                    e(
                        format!("{key}.{kind}_proxy_name"),
                        "names no configured proxy (channel.proxy.<kind> or proxies[])",
                    );
                }
            }
        }
        let mut rpc: Vec<(String, &RpcOptions)> = vec![("rpc.without_namespace".into(), &self.rpc.without_namespace)];
        for (i, ns) in self.rpc.namespaces.iter().enumerate() {
            rpc.push((format!("rpc.namespaces[{i}]"), &ns.options));
        }
        for (key, o) in rpc {
            if o.proxy_enabled && !exists(&self.rpc.proxy, &o.proxy_name) {
                e(format!("{key}.proxy_name"), "names no configured proxy (rpc.proxy or proxies[])");
            }
        }
    }

    /// The internal listener's port.
    pub fn internal_port(&self) -> u16 {
        if self.http_server.internal_port == 0 { self.http_server.port } else { self.http_server.internal_port }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("25s").unwrap(), Some(Duration::from_secs(25)));
        assert_eq!(parse_duration("1m30s").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("720h").unwrap(), Some(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_duration("500ms").unwrap(), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("-1").unwrap(), None);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err(), "overflow is an error, not a panic");
        assert!(parse_duration("1..5s").is_err());
    }

    #[test]
    fn defaults_match_centrifugo() {
        let c = Config::default();
        assert_eq!(c.http_server.port, 8000);
        assert_eq!(c.client.ping_interval.0, Some(Duration::from_secs(25)));
        assert_eq!(c.client.pong_timeout.0, Some(Duration::from_secs(8)));
        assert_eq!(c.client.queue_max_size, 1_048_576);
        assert_eq!(c.client.channel_limit, 128);
        assert_eq!(c.websocket.message_size_limit, 65536);
        assert_eq!(c.channel.max_length, 255);
        assert!(c.validate().is_ok());
        // The tree round-trips through its own serialization (the env overlay relies on it).
        let v = serde_json::to_value(&c).unwrap();
        let back: Config = serde_json::from_value(v).unwrap();
        assert_eq!(back.client.stale_close_delay, Dur::secs(10));
    }

    #[test]
    fn grpc_api_and_admin_rules() {
        // (patch, the key the error must name; None = valid)
        let table: &[(serde_json::Value, Option<&str>)] = &[
            (serde_json::json!({}), None),
            (serde_json::json!({"grpc_api": {"enabled": true, "key": "k", "port": 0}}), None),
            (serde_json::json!({"grpc_api": {"tls": {"enabled": false, "cert_pem": "x"}}}), None),
            // TLS material is checked when the listener starts (gyre-server's tls module).
            (serde_json::json!({"grpc_api": {"tls": {"enabled": true}}}), None),
            (serde_json::json!({"grpc_api": {"reflection": true}}), Some("grpc_api.reflection")),
            (serde_json::json!({"admin": {"enabled": true, "secret": "s"}}), Some("admin.password")),
            (serde_json::json!({"admin": {"enabled": true, "password": "p"}}), Some("admin.secret")),
            (serde_json::json!({"admin": {"enabled": true, "insecure": true}}), None),
            (serde_json::json!({"admin": {"enabled": true, "password": "p", "secret": "s"}}), None),
            (serde_json::json!({"admin": {"handler_prefix": "ops"}}), Some("admin.handler_prefix")),
        ];
        for (patch, want) in table {
            let c: Config = serde_json::from_value(patch.clone()).unwrap();
            match (c.validate(), want) {
                (Ok(()), None) => {}
                (Err(errs), Some(key)) => assert!(errs.iter().any(|e| e.key == *key), "{patch}: {errs:?}"),
                (got, _) => panic!("{patch}: want {want:?}, got {got:?}"),
            }
        }
        assert_eq!(Config::default().grpc_api.port, 10000);
        assert_eq!(Config::default().grpc_api.max_receive(), 4 * 1024 * 1024);
    }

    #[test]
    fn proxy_rules() {
        use serde_json::json;
        let ep = json!({"endpoint": "http://127.0.0.1:1/p"});
        // (patch, the key the error must name; None = valid)
        let table: &[(serde_json::Value, Option<&str>)] = &[
            (json!({"client": {"proxy": {"connect": {"enabled": true}}}}), Some("client.proxy.connect.endpoint")),
            (
                json!({"client": {"proxy": {"connect": {"enabled": true, "endpoint": "ftp://x"}}}}),
                Some("client.proxy.connect.endpoint"),
            ),
            (json!({"client": {"proxy": {"connect": {"enabled": true, "endpoint": "grpc://127.0.0.1:9"}}}}), None),
            (
                json!({"client": {"proxy": {"refresh": {"enabled": true, "endpoint": "http://x", "timeout": "0s"}}}}),
                Some("client.proxy.refresh.timeout"),
            ),
            (json!({"client": {"proxy": {"connect": {"enabled": false, "endpoint": "nonsense"}}}}), None),
            // TLS asked for toward a cleartext URL: refused, never plain HTTP.
            (
                json!({"rpc": {"proxy": {"endpoint": "http://x", "http": {"tls": {"enabled": true}}}}}),
                Some("rpc.proxy.http.tls.enabled"),
            ),
            (json!({"rpc": {"proxy": {"endpoint": "https://x", "http": {"tls": {"enabled": true}}}}}), None),
            // grpc.* of an HTTP proxy is not used (Centrifugo ignores it too).
            (json!({"rpc": {"proxy": {"endpoint": "https://x", "grpc": {"credentials_key": "bad key"}}}}), None),
            (
                json!({"rpc": {"proxy": {"endpoint": "grpc://x:1", "grpc": {"credentials_key": "bad key"}}}}),
                Some("rpc.proxy.grpc.credentials_key"),
            ),
            (
                json!({"rpc": {"proxy": {"endpoint": "grpc://x:1", "grpc": {"credentials_key": "grpc-status"}}}}),
                Some("rpc.proxy.grpc.credentials_key"),
            ),
            (
                json!({"rpc": {"proxy": {"endpoint": "grpc://x:1", "grpc": {"credentials_key": "k", "credentials_value": "line\nbreak"}}}}),
                Some("rpc.proxy.grpc.credentials_value"),
            ),
            (
                json!({"rpc": {"proxy": {"endpoint": "grpc://x:1", "grpc": {"credentials_key": "Authorization", "credentials_value": "Bearer t"}}}}),
                None,
            ),
            (json!({"proxies": [{"name": "default", "endpoint": "http://x"}]}), Some("proxies[0].name")),
            (json!({"proxies": [{"name": "p", "endpoint": "http://x"}]}), Some("proxies[0].name")),
            (
                json!({"proxies": [{"name": "a", "endpoint": "http://x"}, {"name": "a", "endpoint": "http://y"}]}),
                Some("proxies[1].name"),
            ),
            (
                json!({"channel": {"without_namespace": {"subscribe_proxy_enabled": true}}}),
                Some("channel.without_namespace.subscribe_proxy_name"),
            ),
            (
                json!({"channel": {"proxy": {"subscribe": ep}, "without_namespace": {"subscribe_proxy_enabled": true}}}),
                None,
            ),
            (
                json!({"channel": {"namespaces": [{"name": "ns", "publish_proxy_enabled": true, "publish_proxy_name": "p"}]}}),
                Some("channel.namespaces[0].publish_proxy_name"),
            ),
            (
                json!({"proxies": [{"name": "pp", "endpoint": "http://x"}], "channel": {"namespaces": [{"name": "ns", "publish_proxy_enabled": true, "publish_proxy_name": "pp"}]}}),
                None,
            ),
            (json!({"rpc": {"without_namespace": {"proxy_enabled": true}}}), Some("rpc.without_namespace.proxy_name")),
            (json!({"rpc": {"proxy": ep, "without_namespace": {"proxy_enabled": true}}}), None),
            (
                json!({"rpc": {"namespaces": [{"name": "ns", "proxy_enabled": true, "proxy_name": "nope"}]}}),
                Some("rpc.namespaces[0].proxy_name"),
            ),
        ];
        for (patch, want) in table {
            let c: Config = serde_json::from_value(patch.clone()).unwrap();
            match (c.validate(), want) {
                (Ok(()), None) => {}
                (Err(errs), Some(key)) => assert!(errs.iter().any(|e| e.key == *key), "{patch}: {errs:?}"),
                (got, _) => panic!("{patch}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn validation_names_keys() {
        let mut c = Config::default();
        c.channel.namespaces.push(Namespace { name: "x".into(), ..Default::default() });
        c.channel.without_namespace.history_size = 10;
        c.client.ping_interval = OptDur(Some(Duration::from_secs(5)));
        let errs = c.validate().unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"channel.namespaces[0].name"), "{keys:?}");
        assert!(keys.contains(&"channel.without_namespace.history_size"), "{keys:?}");
        assert!(keys.contains(&"client.ping_interval"), "{keys:?}");
    }

    #[test]
    fn enum_values_parse_once_and_bad_ones_list_the_accepted() {
        // (json patch, accepted?)
        let cases = [
            (serde_json::json!({"log": {"level": "fatal"}}), true),
            (serde_json::json!({"log": {"level": "loud"}}), false),
            (serde_json::json!({"engine": {"type": "redis"}}), false),
            (serde_json::json!({"broker": {"type": "nats"}}), true),
            (serde_json::json!({"presence_manager": {"type": "redis"}}), false),
            (serde_json::json!({"http_api": {"error_mode": "transport"}}), true),
            (serde_json::json!({"http_api": {"error_mode": "custom"}}), false),
            (serde_json::json!({"grpc_api": {"error_mode": "transport"}}), true),
            (serde_json::json!({"grpc_api": {"error_mode": "weird"}}), false),
            (serde_json::json!({"channel": {"publication_data_format": "json_object"}}), true),
            (serde_json::json!({"channel": {"publication_data_format": "xml"}}), false),
            (serde_json::json!({"channel": {"without_namespace": {"force_recovery_mode": ""}}}), true),
            (serde_json::json!({"channel": {"without_namespace": {"force_recovery_mode": "cache"}}}), true),
            (serde_json::json!({"channel": {"without_namespace": {"force_recovery_mode": "fast"}}}), false),
            (serde_json::json!({"channel": {"without_namespace": {"allowed_delta_types": ["fossil"]}}}), true),
            (serde_json::json!({"channel": {"without_namespace": {"allowed_delta_types": ["xdelta"]}}}), false),
        ];
        for (v, ok) in cases {
            let r: Result<Config, _> = serde_json::from_value(v.clone());
            match r {
                Ok(_) => assert!(ok, "{v} must be rejected"),
                Err(e) => {
                    assert!(!ok, "{v}: {e}");
                    assert!(e.to_string().contains("expected one of"), "{v}: {e}");
                }
            }
        }
        let c: Config =
            serde_json::from_value(serde_json::json!({"channel": {"without_namespace": {"force_recovery_mode": ""}}}))
                .unwrap();
        assert_eq!(c.channel.without_namespace.force_recovery_mode, RecoveryMode::Stream);
        assert_eq!(RecoveryMode::Cache.to_string(), "cache");
    }
}
