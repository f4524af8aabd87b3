//! The `gyre` server: transports, the HTTP server API, configuration loading
//! and the CLI, on top of `gyre-node`.
//!
//! The binary is a thin `main`; everything is a library so integration tests
//! start the real server in-process on `127.0.0.1:0` with [`http::start`].

pub mod api;
pub mod cli;
pub mod config_load;
pub mod demo;
pub mod driver;
pub mod emulation;
pub mod http;
pub mod sockjs;
pub mod stream;
pub mod uni;
pub mod ws;

use std::sync::Arc;

use gyre_node::Node;
use gyre_node::config::Config;

/// Builds the node for a validated config (memory engine).
pub fn build_node(config: Config) -> anyhow::Result<Arc<Node>> {
    let name = if config.node.name.is_empty() {
        let host =
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "gyre".into());
        format!("{host}_{}", config.http_server.port)
    } else {
        config.node.name.clone()
    };
    Ok(Node::new(config, name)?)
}
