//! Gyre's domain: the Node, the Hub, the per-connection Client state machine,
//! the engine traits and the memory engine.
//!
//! Nothing here serves sockets or HTTP: transports (in `gyre-server`)
//! drive a [`client::Client`] with decoded frames, control wake-ups and timer
//! ticks, and drain its [`shared::ClientShared`] write queue. That split is
//! what lets every transport — WebSocket, HTTP-streaming, SSE, SockJS and the
//! unidirectional ones — share one command implementation. The one network
//! clients in this crate are [`jwks`], which fetches token keys over HTTP(S)
//! when `client.token.jwks_public_endpoint` is set, and [`proxy`], which asks
//! the application's backend about connects, subscriptions, publications
//! and RPCs when proxies are configured.

pub mod auth;
pub mod channel;
pub mod client;
pub mod config;
#[doc(hidden)]
pub mod conformance;
pub mod control;
pub mod delta;
pub mod engine;
pub mod errors;
mod fanout;
pub mod filter;
pub mod hub;
pub mod jwks;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod proxy;
pub mod push;
pub mod recovery;
pub mod shared;
pub mod small_map;
pub mod tls;
pub mod write_through;

pub use client::Client;
pub use errors::{ClientError, Disconnect};
pub use node::Node;
pub use push::Encoding;
pub use shared::{ClientShared, TransportInfo};
