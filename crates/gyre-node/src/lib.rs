//! Gyre's domain: the Node, the Hub, the per-connection Client state machine,
//! the engine traits and the memory engine.
//!
//! Nothing here knows about sockets or HTTP. Transports (in `gyre-server`)
//! drive a [`client::Client`] with decoded frames, control wake-ups and timer
//! ticks, and drain its [`session::ClientShared`] write queue. That split is
//! what lets every transport — WebSocket, HTTP-streaming, SSE, SockJS and the
//! unidirectional ones — share one command implementation.

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
pub mod session;
pub mod small_map;

pub use client::Client;
pub use errors::{ClientError, Disconnect};
pub use node::Node;
pub use session::{ClientShared, Encoding, TransportInfo};
