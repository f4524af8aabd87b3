//! The operator's own health and Prometheus endpoints.
//!
//! A handful of counters does not justify a metrics framework; the text exposition format is
//! written by hand. Readiness turns true once the CRD is known to be served, so a rollout of the
//! operator without its CRD never reports Ready.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Counter,
    pub paused_skips: Counter,
    ready: AtomicBool,
}

impl Metrics {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, c) in [
            ("gyre_operator_reconciles_total", "Reconcile passes started.", &self.reconciles),
            ("gyre_operator_reconcile_failures_total", "Reconcile passes that returned an error.", &self.failures),
            ("gyre_operator_paused_skips_total", "Passes skipped because the instance is paused.", &self.paused_skips),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n", c.get()));
        }
        out
    }
}

fn respond(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (code, body) = match path {
        "/healthz" => (200, "ok".to_string()),
        "/readyz" if metrics.is_ready() => (200, "ok".to_string()),
        "/readyz" => (503, "not ready".to_string()),
        "/metrics" => (200, metrics.render()),
        _ => (404, "not found".to_string()),
    };
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Serves `/healthz`, `/readyz` and `/metrics` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = respond(&metrics, req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_answer() {
        let m = Metrics::default();
        assert_eq!(respond(&m, "/healthz").status(), 200);
        assert_eq!(respond(&m, "/readyz").status(), 503);
        m.set_ready(true);
        assert_eq!(respond(&m, "/readyz").status(), 200);
        m.reconciles.inc();
        m.reconciles.inc();
        assert!(m.render().contains("gyre_operator_reconciles_total 2\n"));
        assert_eq!(respond(&m, "/nope").status(), 404);
    }
}
