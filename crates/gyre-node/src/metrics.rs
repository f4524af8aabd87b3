//! Prometheus metrics in the text exposition format, under Centrifugo's
//! `centrifugo_` namespace so dashboards built for Centrifugo keep working
//! for the gauges they share (clients, users, channels, subscriptions).
//!
//! Counters are plain atomics bumped once per event (a broadcast adds its
//! delivery count in one step, not one increment per subscriber), and the
//! exposition is rendered on scrape; there is no background task.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::node::Node;

/// Process-wide counters of one node.
#[derive(Debug, Default)]
pub struct Counters {
    /// Publications queued to subscribers (one per delivery).
    pub publications_sent: AtomicU64,
    /// Publications accepted for broadcast on this node.
    pub publications_received: AtomicU64,
    /// Join/leave pushes queued.
    pub join_leave_sent: AtomicU64,
    /// Server API calls.
    pub api_calls: AtomicU64,
    /// Server API calls answered with an error.
    pub api_errors: AtomicU64,
    /// Connections accepted (bidirectional and emulated).
    pub connections_accepted: AtomicU64,
    /// Times a publisher waited because the fan-out thread was a full queue behind.
    pub fanout_backpressure: AtomicU64,
    /// Server API calls by method: (calls, failed). The server only records
    /// method names it knows, so the label set stays bounded.
    api_by_method: parking_lot::Mutex<std::collections::BTreeMap<&'static str, (u64, u64)>>,
    /// Engine operations that failed (publish, history, presence, join/leave, subscribe...).
    pub engine_errors: AtomicU64,
    /// Join/leave events dropped because the fan-out had no room.
    pub join_leave_dropped: AtomicU64,
    /// Publishes refused because the fan-out had no room within its deadline.
    pub publish_refused_backpressure: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one server API command (`failed`: answered with an error).
    pub fn record_api(&self, method: &'static str, failed: bool) {
        Self::add(&self.api_calls, 1);
        if failed {
            Self::add(&self.api_errors, 1);
        }
        let mut m = self.api_by_method.lock();
        let e = m.entry(method).or_default();
        e.0 += 1;
        e.1 += u64::from(failed);
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

/// Renders the node's metrics.
pub fn render(node: &Node) -> String {
    let mut out = String::with_capacity(2048);
    let info = node.info();
    gauge(&mut out, "centrifugo_node_num_clients", "Number of clients connected.", info.num_clients);
    gauge(&mut out, "centrifugo_node_num_users", "Number of unique users connected.", info.num_users);
    gauge(
        &mut out,
        "centrifugo_node_num_channels",
        "Number of channels with one or more subscribers.",
        info.num_channels,
    );
    gauge(&mut out, "centrifugo_node_num_subscriptions", "Number of subscriptions.", info.num_subs);
    gauge(&mut out, "centrifugo_node_uptime_seconds", "Seconds since the node started.", info.uptime);
    let c = &node.counters;
    let _ = writeln!(
        out,
        "# HELP centrifugo_node_messages_sent_count Number of messages queued to clients.\n# TYPE centrifugo_node_messages_sent_count counter"
    );
    let _ = writeln!(
        out,
        "centrifugo_node_messages_sent_count{{type=\"publication\"}} {}",
        c.publications_sent.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "centrifugo_node_messages_sent_count{{type=\"join_leave\"}} {}",
        c.join_leave_sent.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "centrifugo_node_messages_received_count",
        "Publications received for broadcast.",
        c.publications_received.load(Ordering::Relaxed),
    );
    counter(&mut out, "centrifugo_api_command_count", "Server API commands.", c.api_calls.load(Ordering::Relaxed));
    counter(
        &mut out,
        "centrifugo_api_command_errors_count",
        "Server API commands that failed.",
        c.api_errors.load(Ordering::Relaxed),
    );
    let by_method: Vec<(&'static str, (u64, u64))> = c.api_by_method.lock().iter().map(|(k, v)| (*k, *v)).collect();
    let _ = writeln!(
        out,
        "# HELP gyre_api_command_count Server API commands by method and outcome.\n# TYPE gyre_api_command_count counter"
    );
    for (method, (calls, failed)) in by_method {
        let _ = writeln!(out, "gyre_api_command_count{{method=\"{method}\",failed=\"false\"}} {}", calls - failed);
        let _ = writeln!(out, "gyre_api_command_count{{method=\"{method}\",failed=\"true\"}} {failed}");
    }
    counter(
        &mut out,
        "centrifugo_client_connections_accepted",
        "Connections accepted.",
        c.connections_accepted.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "gyre_fanout_backpressure_count",
        "Times a publisher waited for the fan-out thread (its queue was full).",
        c.fanout_backpressure.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "gyre_engine_errors_total",
        "Engine operations that failed (logged with the operation and channel).",
        c.engine_errors.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "gyre_fanout_join_leave_dropped_total",
        "Join/leave events dropped because the fan-out stayed full.",
        c.join_leave_dropped.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "gyre_fanout_publish_refused_total",
        "Publishes refused (error 100) because the fan-out stayed full.",
        c.publish_refused_backpressure.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP centrifugo_client_num_server_disconnects Server-initiated disconnects by code.\n# TYPE centrifugo_client_num_server_disconnects counter"
    );
    let mut codes = node.disconnect_counts();
    codes.sort();
    for (code, n) in codes {
        let _ = writeln!(out, "centrifugo_client_num_server_disconnects{{code=\"{code}\"}} {n}");
    }
    out
}
