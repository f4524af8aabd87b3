//! The `gyre` server: transports, the HTTP server API, configuration loading
//! and the CLI, on top of `gyre-node`.
//!
//! The binary is a thin `main`; everything is a library so integration tests
//! start the real server in-process on `127.0.0.1:0` with [`http::start`].

pub mod admin;
pub mod api;
pub mod cli;
pub mod config_keys;
pub mod config_load;
pub mod conn;
pub mod demo;
pub mod dispatch;
pub mod driver;
pub mod emulation;
pub mod grpc;
pub mod health;
pub mod http;
pub mod sockjs;
pub mod stream;
pub mod tls;
pub mod uni;
pub mod ws;
pub mod wsframe;

use std::sync::Arc;
use std::time::Duration;

use gyre_engine_nats::{NatsEngine, NatsOptions};
use gyre_node::Node;
use gyre_node::config::Config;
use gyre_node::engine::{Broker, PresenceManager};
use gyre_node::memory::{MemoryBroker, MemoryPresence};

/// NATS engine options from the config: `broker.nats.*`, and stream limits
/// large enough for every namespace (the longest `history_size` and
/// `history_meta_ttl`), presence TTL from `client.presence_update_interval`.
pub fn nats_options(config: &Config, name: &str) -> NatsOptions {
    let n = &config.broker.nats;
    let ch = &config.channel;
    let all = std::iter::once(&ch.without_namespace).chain(ch.namespaces.iter().map(|ns| &ns.options));
    let mut max_size = 0usize;
    let mut max_meta = ch.history_meta_ttl.0;
    for o in all {
        max_size = max_size.max(o.history_size);
        max_meta = max_meta.max(o.history_meta_ttl.0);
    }
    let interval = config.client.presence_update_interval.0;
    NatsOptions {
        url: n.url.clone(),
        prefix: n.prefix.clone(),
        dial_timeout: n.dial_timeout.0.max(Duration::from_millis(100)),
        write_timeout: n.write_timeout.0.max(Duration::from_secs(1)),
        history_max_size: max_size.max(1),
        history_meta_ttl: if max_meta.is_zero() { Duration::from_secs(30 * 24 * 3600) } else { max_meta },
        presence_ttl: (interval * 2 + Duration::from_secs(5)).max(Duration::from_secs(60)),
        name: format!("gyre {name}"),
        ..NatsOptions::default()
    }
}

/// Builds the node for a validated config: the memory engine, or NATS for
/// `broker.type: nats` / `presence_manager.type: nats` (see docs/nats.md).
/// With NATS the node connects in the background (`/health/ready` is 503
/// until connected; `/health` stays 200) and starts its cluster heartbeats. Call inside a Tokio runtime.
pub fn build_node(config: Config) -> anyhow::Result<Arc<Node>> {
    let name = if config.node.name.is_empty() {
        let host =
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "gyre".into());
        format!("{host}_{}", config.http_server.port)
    } else {
        config.node.name.clone()
    };
    let nats_broker = config.broker.enabled && config.broker.typ == gyre_node::config::BackendType::Nats;
    let nats_presence =
        config.presence_manager.enabled && config.presence_manager.typ == gyre_node::config::BackendType::Nats;
    if !nats_broker && !nats_presence {
        return Ok(Node::new(config, name)?);
    }
    let mut opts = nats_options(&config, &name);
    if config.broker.nats.tls.enabled {
        // The engine runs the reloader: its reconnects use the current files.
        let tls = gyre_node::tls::client_tls("broker.nats.tls", &config.broker.nats.tls)?;
        opts.tls = Some(tls.config);
        opts.tls_reloader = Some(tls.reloader);
    }
    let engine = NatsEngine::start(opts);
    let broker: Arc<dyn Broker> = if nats_broker { Arc::new(engine.clone()) } else { Arc::new(MemoryBroker::new()) };
    let presence: Arc<dyn PresenceManager> =
        if nats_presence { Arc::new(engine) } else { Arc::new(MemoryPresence::default()) };
    let node = Node::with_engines(config, name, broker, presence)?;
    if nats_broker {
        node.start_cluster();
    }
    Ok(node)
}
