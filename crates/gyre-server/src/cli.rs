//! Command line: the server (no subcommand) and Centrifugo's helper commands.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use gyre_node::auth::{TokenVerifier, sign_hs256};
use gyre_node::config::{Config, LogLevel};
use serde_json::{Value, json};

use crate::config_load::{self, FlagOverrides, LoadError};

/// Gyre: a Centrifugo-compatible real-time messaging server.
#[derive(Debug, Parser)]
#[command(name = "gyre", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    server: ServerFlags,
}

#[derive(Debug, Args, Default)]
struct ServerFlags {
    /// Config file (JSON, YAML or TOML by extension). Default: config.json if present.
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Bind address (http_server.address).
    #[arg(short = 'a', long = "http_server.address", visible_alias = "address")]
    address: Option<String>,
    /// Port (http_server.port).
    #[arg(short = 'p', long = "http_server.port", visible_alias = "port")]
    port: Option<u16>,
    /// Internal listener address.
    #[arg(long = "http_server.internal_address")]
    internal_address: Option<String>,
    /// Internal listener port.
    #[arg(long = "http_server.internal_port")]
    internal_port: Option<u16>,
    /// Log level.
    #[arg(long = "log.level")]
    log_level: Option<String>,
    /// Write the pid here.
    #[arg(long = "pid_file")]
    pid_file: Option<String>,
    /// Engine type.
    #[arg(long = "engine.type")]
    engine_type: Option<String>,
    /// Broker type (with broker.enabled).
    #[arg(long = "broker.type")]
    broker_type: Option<String>,
    /// Presence manager type.
    #[arg(long = "presence_manager.type")]
    presence_type: Option<String>,
    #[arg(long = "broker.enabled")]
    broker_enabled: bool,
    #[arg(long = "presence_manager.enabled")]
    presence_enabled: bool,
    #[arg(long = "health.enabled")]
    health: bool,
    #[arg(long = "prometheus.enabled")]
    prometheus: bool,
    #[arg(long = "admin.enabled")]
    admin: bool,
    #[arg(long = "admin.external")]
    admin_external: bool,
    #[arg(long = "admin.insecure")]
    admin_insecure: bool,
    #[arg(long = "grpc_api.enabled")]
    grpc_api: bool,
    /// gRPC API port (grpc_api.port, default 10000).
    #[arg(long = "grpc_api.port")]
    grpc_api_port: Option<u16>,
    #[arg(long = "client.insecure")]
    client_insecure: bool,
    #[arg(long = "http_api.insecure")]
    api_insecure: bool,
    #[arg(long = "http_api.external")]
    api_external: bool,
    #[arg(long = "sse.enabled")]
    sse: bool,
    #[arg(long = "http_stream.enabled")]
    http_stream: bool,
    #[arg(long = "uni_websocket.enabled")]
    uni_websocket: bool,
    #[arg(long = "uni_sse.enabled")]
    uni_sse: bool,
    #[arg(long = "uni_http_stream.enabled")]
    uni_http_stream: bool,
    #[arg(long = "init.enabled")]
    init: bool,
}

impl ServerFlags {
    fn overrides(&self) -> FlagOverrides {
        let mut o: FlagOverrides = Vec::new();
        let mut s = |k: &str, v: Value| o.push((k.to_string(), v));
        if let Some(v) = &self.address {
            s("http_server.address", json!(v))
        }
        if let Some(v) = self.port {
            s("http_server.port", json!(v))
        }
        if let Some(v) = &self.internal_address {
            s("http_server.internal_address", json!(v))
        }
        if let Some(v) = self.internal_port {
            s("http_server.internal_port", json!(v))
        }
        if let Some(v) = &self.log_level {
            s("log.level", json!(v))
        }
        if let Some(v) = &self.pid_file {
            s("pid_file", json!(v))
        }
        if let Some(v) = &self.engine_type {
            s("engine.type", json!(v))
        }
        if let Some(v) = &self.broker_type {
            s("broker.type", json!(v))
        }
        if let Some(v) = &self.presence_type {
            s("presence_manager.type", json!(v))
        }
        if let Some(v) = self.grpc_api_port {
            s("grpc_api.port", json!(v))
        }
        for (on, key) in [
            (self.broker_enabled, "broker.enabled"),
            (self.presence_enabled, "presence_manager.enabled"),
            (self.health, "health.enabled"),
            (self.prometheus, "prometheus.enabled"),
            (self.admin, "admin.enabled"),
            (self.admin_external, "admin.external"),
            (self.admin_insecure, "admin.insecure"),
            (self.grpc_api, "grpc_api.enabled"),
            (self.client_insecure, "client.insecure"),
            (self.api_insecure, "http_api.insecure"),
            (self.api_external, "http_api.external"),
            (self.sse, "sse.enabled"),
            (self.http_stream, "http_stream.enabled"),
            (self.uni_websocket, "uni_websocket.enabled"),
            (self.uni_sse, "uni_sse.enabled"),
            (self.uni_http_stream, "uni_http_stream.enabled"),
            (self.init, "init.enabled"),
        ] {
            if on {
                s(key, json!(true));
            }
        }
        o
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version.
    Version,
    /// Write a minimal config with random secrets (refuses to overwrite).
    Genconfig,
    /// Validate a config.
    Checkconfig {
        /// Fail on unknown keys.
        #[arg(short = 's', long)]
        strict: bool,
    },
    /// Mint an HS256 connection token with the config's HMAC key.
    Gentoken {
        /// User id.
        #[arg(short = 'u', long, default_value = "")]
        user: String,
        /// Lifetime in seconds (-1 = no exp).
        #[arg(short = 't', long, default_value_t = 604800, allow_hyphen_values = true)]
        ttl: i64,
        /// Print the token only.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Mint an HS256 subscription token.
    Gensubtoken {
        /// User id.
        #[arg(short = 'u', long, default_value = "")]
        user: String,
        /// Channel.
        #[arg(short = 's', long)]
        channel: String,
        /// Lifetime in seconds (-1 = no exp).
        #[arg(short = 't', long, default_value_t = 604800, allow_hyphen_values = true)]
        ttl: i64,
        /// Print the token only.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Verify a connection token.
    Checktoken {
        /// The token.
        token: String,
    },
    /// Verify a subscription token.
    Checksubtoken {
        /// The token.
        token: String,
    },
}

/// The config source: an explicit file, `config.json` if present, or none.
fn config_file(flags: &ServerFlags) -> Result<Option<Value>, LoadError> {
    match &flags.config {
        Some(p) => config_load::read_file(p).map(Some),
        None if Path::new("config.json").exists() => config_load::read_file(Path::new("config.json")).map(Some),
        None => Ok(None),
    }
}

fn env_map() -> HashMap<String, String> {
    std::env::vars().filter(|(k, _)| k.starts_with("CENTRIFUGO_")).collect()
}

fn random_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Settings for the quickstart: a usable server on this machine only.
/// Bound to 127.0.0.1, because its secrets are generated and printed and the
/// demo page mints tokens for anyone who can reach it.
fn quickstart_tree() -> Value {
    json!({
        "http_server": {"address": "127.0.0.1"},
        "client": {
            "token": {"hmac_secret_key": random_secret()},
            "allowed_origins": ["http://localhost:*", "http://127.0.0.1:*"]
        },
        "http_api": {"key": random_secret()},
        "health": {"enabled": true},
        "demo": {"enabled": true},
        "http_stream": {"enabled": true},
        "sse": {"enabled": true},
        "sockjs": {"enabled": true},
        "channel": {"without_namespace": {
            "allow_subscribe_for_client": true, "allow_subscribe_for_anonymous": true,
            "allow_publish_for_subscriber": true, "allow_publish_for_anonymous": true,
            "presence": true, "allow_presence_for_subscriber": true, "allow_presence_for_anonymous": true,
            "join_leave": true,
            "history_size": 100, "history_ttl": "300s", "force_recovery": true,
            "allow_history_for_subscriber": true, "allow_history_for_anonymous": true
        }}
    })
}

/// Quickstart only when nothing configures the server: no file, no
/// `CENTRIFUGO_*` variable (Kubernetes service-link variables aside) and no
/// flag but `--port`. Anything else means an operator is configuring it, and
/// a generated secret or a demo token endpoint would silently undercut what
/// they set (issue 10, row 5).
fn is_quickstart(file: &Option<Value>, env: &HashMap<String, String>, overrides: &FlagOverrides) -> bool {
    file.is_none()
        && env.keys().all(|k| config_load::is_service_link_var(k))
        && overrides.iter().all(|(k, _)| k == "http_server.port")
}

fn load(flags: &ServerFlags) -> Result<(config_load::Loaded, bool), LoadError> {
    let file = config_file(flags)?;
    let env = env_map();
    let overrides = flags.overrides();
    let quickstart = is_quickstart(&file, &env, &overrides);
    let tree = match file {
        Some(f) => Some(f),
        None if quickstart => Some(quickstart_tree()),
        None => None,
    };
    config_load::load(tree, &env, &overrides).map(|l| (l, quickstart))
}

fn now() -> i64 {
    gyre_node::node::unix_now()
}

/// Entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.server),
        Some(Command::Version) => {
            println!("Gyre v{} (Centrifugo protocol v2 compatible)", gyre_node::node::VERSION);
            ExitCode::SUCCESS
        }
        Some(Command::Genconfig) => genconfig(&cli.server),
        Some(Command::Checkconfig { strict }) => {
            let file = match &cli.server.config {
                Some(p) => config_load::read_file(p),
                None => config_load::read_file(Path::new("config.json")),
            };
            let res = file.and_then(|f| config_load::load(Some(f), &env_map(), &vec![]));
            match res {
                Ok(l) => {
                    for w in &l.warnings {
                        eprintln!("warning: {w}");
                    }
                    if strict && !l.warnings.is_empty() {
                        eprintln!("config has unknown keys (strict mode)");
                        return ExitCode::FAILURE;
                    }
                    println!("config is valid");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Gentoken { user, ttl, quiet }) => with_config(&cli.server, |c| {
            let mut claims = HashMap::new();
            claims.insert("sub".to_string(), json!(user));
            if ttl >= 0 {
                claims.insert("exp".to_string(), json!(now() + ttl));
            }
            claims.insert("iat".to_string(), json!(now()));
            let t = sign_hs256(&c.client.token.hmac_secret_key, &claims);
            if quiet {
                println!("{t}");
            } else {
                println!("HMAC SHA-256 JWT for user \"{user}\" with expiration TTL {ttl}s:\n{t}");
            }
        }),
        Some(Command::Gensubtoken { user, channel, ttl, quiet }) => with_config(&cli.server, |c| {
            let key = if c.client.subscription_token.enabled {
                &c.client.subscription_token.token.hmac_secret_key
            } else {
                &c.client.token.hmac_secret_key
            };
            let mut claims = HashMap::new();
            claims.insert("sub".to_string(), json!(user));
            claims.insert("channel".to_string(), json!(channel));
            if ttl >= 0 {
                claims.insert("exp".to_string(), json!(now() + ttl));
            }
            let t = sign_hs256(key, &claims);
            if quiet {
                println!("{t}");
            } else {
                println!(
                    "HMAC SHA-256 subscription JWT for user \"{user}\" and channel \"{channel}\" with expiration TTL {ttl}s:\n{t}"
                );
            }
        }),
        Some(Command::Checktoken { token }) => check_token(&cli.server, &token, false),
        Some(Command::Checksubtoken { token }) => check_token(&cli.server, &token, true),
    }
}

fn with_config(flags: &ServerFlags, f: impl FnOnce(&Config)) -> ExitCode {
    let file = match config_file(flags) {
        Ok(Some(f)) => f,
        Ok(None) => {
            eprintln!("no config file: pass -c FILE (gyre genconfig writes one)");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match config_load::load(Some(file), &env_map(), &vec![]) {
        Ok(l) if l.config.client.token.hmac_secret_key.is_empty() => {
            eprintln!("client.token.hmac_secret_key is not set");
            ExitCode::FAILURE
        }
        Ok(l) => {
            f(&l.config);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn check_token(flags: &ServerFlags, token: &str, sub: bool) -> ExitCode {
    let loaded = match config_file(flags).and_then(|f| config_load::load(f, &env_map(), &vec![])) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let c = &loaded.config;
    let (tok_cfg, prefix) = if sub && c.client.subscription_token.enabled {
        (&c.client.subscription_token.token, "client.subscription_token")
    } else {
        (&c.client.token, "client.token")
    };
    let v = match TokenVerifier::new(tok_cfg, prefix, false) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // JWKS keys are fetched over the network, so verification runs on a runtime.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = if sub {
        rt.block_on(v.verify_subscribe_async(token, now()))
            .map(|c| format!("valid subscription token for user \"{}\" and channel \"{}\"", c.user, c.channel))
    } else {
        rt.block_on(v.verify_connect_async(token, now()))
            .map(|c| format!("valid connection token for user \"{}\" (expires: {:?})", c.user, c.expire_at))
    };
    match res {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("token is not valid: {e}");
            ExitCode::FAILURE
        }
    }
}

fn genconfig(flags: &ServerFlags) -> ExitCode {
    let path = flags.config.clone().unwrap_or_else(|| PathBuf::from("config.json"));
    if path.exists() {
        eprintln!("{} already exists, not overwriting", path.display());
        return ExitCode::FAILURE;
    }
    let v = json!({
        "client": {"token": {"hmac_secret_key": random_secret()}, "allowed_origins": []},
        "admin": {"enabled": false, "password": random_secret(), "secret": random_secret()},
        "http_api": {"key": random_secret()},
    });
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("json");
    let text = match ext {
        "yaml" | "yml" => serde_norway::to_string(&v).unwrap_or_default(),
        "toml" => toml::to_string(&v).unwrap_or_default(),
        _ => serde_json::to_string_pretty(&v).unwrap_or_default(),
    };
    let res = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
    };
    match res {
        Ok(()) => {
            println!("{} written", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: LogLevel) {
    let filter = match level {
        LogLevel::None => "off",
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error | LogLevel::Fatal => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GYRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).try_init();
}

fn serve(flags: ServerFlags) -> ExitCode {
    let (loaded, quickstart) = match load(&flags) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let config = loaded.config;
    init_logging(config.log.level);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if quickstart {
        let mut claims = HashMap::new();
        claims.insert("sub".to_string(), json!("demo"));
        let token = sign_hs256(&config.client.token.hmac_secret_key, &claims);
        // These secrets were generated just now (nothing was configured), so
        // printing them is how the user learns them; configured secrets are
        // never logged.
        tracing::info!(
            "nothing configured: quickstart on 127.0.0.1 with generated secrets (use -c FILE for production)"
        );
        tracing::info!(hmac_secret_key = %config.client.token.hmac_secret_key, http_api_key = %config.http_api.key, "quickstart secrets (generated)");
        tracing::info!(%token, "connection token for user \"demo\"");
    }
    if !config.pid_file.is_empty()
        && let Err(e) = std::fs::write(&config.pid_file, std::process::id().to_string())
    {
        eprintln!("pid_file {}: {e}", config.pid_file);
        return ExitCode::FAILURE;
    }
    // Two runtimes: connections on a multi-thread runtime, accept loops and
    // HTTP requests (the server API) on a one-thread front runtime. The OS
    // schedules the front thread independently, so an API call is served in
    // milliseconds even while a fan-out keeps every connection task busy.
    let conns = match tokio::runtime::Builder::new_multi_thread().thread_name("gyre-conn").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gyre-http")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let conn_handle = conns.handle().clone();
    rt.block_on(async move {
        let timeout = config.shutdown.timeout.0;
        let node = match crate::build_node(config) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let running = match crate::http::start_with(node, Some(conn_handle)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %running.addr, internal = %running.internal_addr, version = gyre_node::node::VERSION, "gyre serving");
        if let Some(grpc) = running.grpc_addr {
            tracing::info!(addr = %grpc, "gRPC API serving");
        }
        let node = running.node.clone();
        let sig = tokio::select! {
            sig = shutdown_signal() => sig,
            // An engine that can never work (NATS without JetStream): stop with its message.
            msg = node.fatal_error() => {
                tracing::error!("{msg}");
                let _ = running.shutdown(Duration::from_secs(1)).await;
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(signal = sig, "shutting down: disconnecting clients with 3001 and draining");
        if running.shutdown(timeout.max(Duration::from_secs(1))).await {
            tracing::info!("drained");
        } else {
            tracing::warn!("shutdown deadline reached with connections still open");
        }
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
