//! `gyre-loadgen flood`: server API latency while a subscribe/unsubscribe flood runs on a large
//! `join_leave` channel.
//!
//! Why this scenario: every subscribe or unsubscribe on a channel with join/leave pushes produces
//! one delivery per subscriber, so a handful of clients toggling their subscription on a
//! 2,000-subscriber channel asks the server for millions of deliveries per second. A server whose
//! fan-out backpressure blocks a runtime thread stops answering its HTTP API (and pings) while
//! that queue is full; one whose backpressure is asynchronous keeps the API responsive.
//!
//! The run: `--subs` connections subscribe to `--channel` and stay (reading and answering pings),
//! then `/api/publish` runs at `--pub-rate` for `--phase-s` seconds twice: first alone (the
//! baseline), then while `--flooders` connections unsubscribe and resubscribe in a loop. One JSON
//! line reports the publish latency of both phases, the flood rate achieved and how many
//! subscribers the server dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::frames::{self, Setup};
use crate::run::make_token;
use crate::stats::percentile_sorted;
use crate::wsraw::{RawWs, op};
use gyre_proto::ProtocolType;

/// Options of one flood run.
#[derive(Debug, Clone, clap::Args)]
pub struct FloodOpts {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Label copied into the report.
    #[arg(long, default_value = "flood")]
    pub scenario: String,
    /// Subscribers that stay on the channel.
    #[arg(long, default_value_t = 2000)]
    pub subs: usize,
    /// Connections that unsubscribe and resubscribe in a loop.
    #[arg(long, default_value_t = 8)]
    pub flooders: usize,
    /// The channel (its namespace needs `join_leave` and `force_push_join_leave`, or presence).
    #[arg(long, default_value = "jl:room")]
    pub channel: String,
    /// Publications per second through `/api/publish`, in each phase.
    #[arg(long, default_value_t = 50.0)]
    pub pub_rate: f64,
    /// Length of each phase (baseline, flood), s.
    #[arg(long, default_value_t = 15)]
    pub phase_s: u64,
    /// Server API key (`X-API-Key`).
    #[arg(long, default_value = "apikey")]
    pub api_key: String,
    /// HS256 secret to sign connection tokens with.
    #[arg(long)]
    pub token_secret: String,
    /// Handshakes in flight at most.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Per publish request timeout, s (a timed-out publish counts as failed, latency = timeout).
    #[arg(long, default_value_t = 10)]
    pub request_timeout_s: u64,
}

#[derive(Default)]
struct Counters {
    ready: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
    flood_ops: AtomicU64,
    flood_errors: AtomicU64,
    first_error: parking_lot::Mutex<Option<String>>,
}

impl Counters {
    fn note(&self, e: String) {
        self.first_error.lock().get_or_insert(e);
    }
}

async fn connect_ws(addr: SocketAddr, seed: u32) -> Result<(RawWs, Vec<Vec<u8>>)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut ws, mut leftover) =
        RawWs::handshake(stream, &addr.to_string(), "/connection/websocket", None, seed).await?;
    let mut pending = Vec::new();
    let ctl = ws.reader.feed(&mut leftover, &mut |m| pending.push(m.to_vec()))?;
    ws.answer_pings(&ctl).await?;
    Ok((ws, pending))
}

/// Connects and subscribes (one frame, as centrifuge-js does), answering pings meanwhile.
async fn setup(addr: SocketAddr, token: &str, channel: &str, seed: u32) -> Result<RawWs> {
    let (mut ws, mut pending) = connect_ws(addr, seed).await?;
    ws.send(op::TEXT, &frames::setup_frame(ProtocolType::Json, Some(token), channel)).await?;
    let mut st = Setup::default();
    loop {
        let pings_before = st.pings;
        for m in pending.drain(..) {
            frames::absorb_setup_frame(ProtocolType::Json, &m, &mut st)?;
        }
        for _ in pings_before..st.pings {
            ws.send(op::TEXT, frames::pong(ProtocolType::Json)).await?;
        }
        if st.connected && st.subscribed {
            return Ok(ws);
        }
        let ctl = ws.read_and_process(&mut |m| pending.push(m.to_vec())).await?.context("closed during setup")?;
        if let Some(code) = ctl.close {
            bail!("closed during setup with code {code:?}");
        }
        ws.answer_pings(&ctl).await?;
    }
}

/// Counts the empty JSON objects (application pings) in a frame and finds reply `want_id`
/// (returning its error, if any).
fn scan_json(frame: &[u8], want_id: u64, pings: &mut usize) -> Option<Result<(), String>> {
    let mut found = None;
    for line in frame.split(|&b| b == b'\n') {
        if line == b"{}" {
            *pings += 1;
            continue;
        }
        if want_id == 0 || memchr::memmem::find(line, b"\"id\"").is_none() {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        if v.get("id").and_then(|x| x.as_u64()) == Some(want_id) {
            found = Some(match v.get("error") {
                Some(e) => Err(e.to_string()),
                None => Ok(()),
            });
        }
    }
    found
}

/// Reads until reply `want_id` arrives (or only pings, when `want_id` is 0 and one read is done).
async fn read_until(ws: &mut RawWs, want_id: u64) -> Result<Result<(), String>> {
    loop {
        let mut pings = 0;
        let mut found = None;
        let ctl = ws
            .read_and_process(&mut |m| {
                if let Some(r) = scan_json(m, want_id, &mut pings) {
                    found = Some(r);
                }
            })
            .await?
            .context("server closed the connection (EOF)")?;
        if let Some(code) = ctl.close {
            bail!("server sent Close {code:?}");
        }
        ws.answer_pings(&ctl).await?;
        for _ in 0..pings {
            ws.send(op::TEXT, frames::pong(ProtocolType::Json)).await?;
        }
        if want_id == 0 {
            return Ok(Ok(()));
        }
        if let Some(r) = found {
            return Ok(r);
        }
    }
}

async fn subscriber(
    opts: Arc<FloodOpts>,
    c: Arc<Counters>,
    sem: Arc<Semaphore>,
    i: usize,
    token: Arc<str>,
    stop: CancellationToken,
) {
    let seed = (i as u32).wrapping_mul(2_654_435_761);
    let ws = {
        let Ok(_permit) = sem.acquire().await else { return };
        timeout(Duration::from_secs(30), setup(opts.addr, &token, &opts.channel, seed)).await
    };
    let mut ws = match ws {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            c.note(format!("subscriber setup: {e:#}"));
            c.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            c.note("subscriber setup timed out".to_owned());
            c.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    c.ready.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = read_until(&mut ws, 0) => if let Err(e) = r {
                c.note(format!("subscriber: {e:#}"));
                c.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

async fn flooder(
    opts: Arc<FloodOpts>,
    c: Arc<Counters>,
    i: usize,
    token: Arc<str>,
    go: CancellationToken,
    stop: CancellationToken,
) {
    let seed = (i as u32 + 1_000_000).wrapping_mul(2_654_435_761);
    let Ok(Ok(mut ws)) = timeout(Duration::from_secs(30), setup(opts.addr, &token, &opts.channel, seed)).await else {
        c.flood_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // Keep the subscription (and pings answered) until the flood phase starts.
    loop {
        tokio::select! {
            _ = go.cancelled() => break,
            r = read_until(&mut ws, 0) => if r.is_err() { c.flood_errors.fetch_add(1, Ordering::Relaxed); return; }
        }
    }
    let ch = serde_json::to_string(&opts.channel).unwrap_or_default();
    let mut id = 10u64;
    while !stop.is_cancelled() {
        for verb in ["unsubscribe", "subscribe"] {
            id += 1;
            let cmd = format!("{{\"id\":{id},\"{verb}\":{{\"channel\":{ch}}}}}");
            let r = async {
                ws.send(op::TEXT, cmd.as_bytes()).await?;
                read_until(&mut ws, id).await
            };
            match r.await {
                Ok(Ok(())) => {
                    c.flood_ops.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    c.note(format!("flood {verb}: {e}"));
                    c.flood_errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    c.flood_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

#[derive(Default)]
struct Phase {
    latencies_us: Vec<u64>,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Phase {
    fn report(mut self) -> serde_json::Value {
        self.latencies_us.sort_unstable();
        let ms = |q: f64| percentile_sorted(&self.latencies_us, q).map(|us| (us as f64 / 10.0).round() / 100.0);
        json!({
            "publish_ok": self.ok,
            "publish_failed": self.failed,
            "p50_ms": ms(0.50),
            "p99_ms": ms(0.99),
            "max_ms": self.latencies_us.last().map(|us| (*us as f64 / 10.0).round() / 100.0),
            "first_error": self.first_error,
        })
    }
}

/// Publishes at the configured rate for one phase over one keep-alive connection
/// (reconnecting after a failure), recording each request's latency.
async fn publish_phase(opts: &FloodOpts) -> Result<Phase> {
    let mut phase = Phase::default();
    let start = Instant::now();
    let n = (opts.pub_rate * opts.phase_s as f64).round() as u64;
    let per_request = Duration::from_secs(opts.request_timeout_s);
    let mut sender = None;
    for j in 0..n {
        sleep_until(start + Duration::from_secs_f64(j as f64 / opts.pub_rate)).await;
        if sender.is_none() {
            let stream = TcpStream::connect(opts.addr).await?;
            stream.set_nodelay(true)?;
            let (s, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    eprintln!("publisher connection: {e}");
                }
            });
            sender = Some(s);
        }
        let Some(s) = sender.as_mut() else { unreachable!("connected above") };
        let body = json!({"channel": opts.channel, "data": {"n": j}}).to_string();
        let req = http::Request::post("/api/publish")
            .header("host", opts.addr.to_string())
            .header("content-type", "application/json")
            .header("x-api-key", opts.api_key.as_str())
            .body(Full::new(Bytes::from(body)))?;
        let t0 = Instant::now();
        let res = timeout(per_request, async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        })
        .await;
        let lat = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        phase.latencies_us.push(lat);
        let err = match res {
            Ok(Ok((status, body))) if status.is_success() && memchr::memmem::find(&body, b"\"error\"").is_none() => {
                None
            }
            Ok(Ok((status, body))) => {
                Some(format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])))
            }
            Ok(Err(e)) => {
                sender = None;
                Some(format!("request: {e:?}"))
            }
            Err(_) => {
                sender = None;
                Some(format!("no answer within {per_request:?}"))
            }
        };
        match err {
            None => phase.ok += 1,
            Some(e) => {
                phase.failed += 1;
                phase.first_error.get_or_insert(e);
            }
        }
    }
    Ok(phase)
}

/// Runs the scenario and returns its report (one JSON object).
pub async fn run(opts: FloodOpts) -> Result<serde_json::Value> {
    if !opts.addr.ip().is_loopback() {
        bail!("refusing non-loopback target {}: benchmarks stay on 127.0.0.0/8", opts.addr);
    }
    if opts.pub_rate <= 0.0 || opts.subs == 0 {
        bail!("--pub-rate and --subs must be positive");
    }
    let opts = Arc::new(opts);
    let c = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let go = CancellationToken::new();
    let sem = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let mut tasks = Vec::new();
    for i in 0..opts.subs {
        let token: Arc<str> = make_token(&opts.token_secret, &format!("sub{i}"))?.into();
        tasks.push(tokio::spawn(subscriber(opts.clone(), c.clone(), sem.clone(), i, token, stop.clone())));
    }
    let setup_deadline = Instant::now() + Duration::from_secs(120);
    while c.ready.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed) < opts.subs {
        if Instant::now() > setup_deadline {
            bail!("subscribers not set up within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..opts.flooders {
        let token: Arc<str> = make_token(&opts.token_secret, &format!("flood{i}"))?.into();
        tasks.push(tokio::spawn(flooder(opts.clone(), c.clone(), i, token, go.clone(), stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = publish_phase(&opts).await?;
    go.cancel();
    let ops_before = c.flood_ops.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let flood = publish_phase(&opts).await?;
    let flood_secs = t0.elapsed().as_secs_f64();
    let flood_ops = c.flood_ops.load(Ordering::Relaxed) - ops_before;
    stop.cancel();
    for t in tasks {
        let _ = timeout(Duration::from_secs(5), t).await;
    }
    Ok(json!({
        "scenario": opts.scenario,
        "subs": opts.subs,
        "subs_ready": c.ready.load(Ordering::Relaxed),
        "subs_failed": c.failed.load(Ordering::Relaxed),
        "subs_dropped": c.dropped.load(Ordering::Relaxed),
        "flooders": opts.flooders,
        "flood_ops_per_s": (flood_ops as f64 / flood_secs).round(),
        "flood_errors": c.flood_errors.load(Ordering::Relaxed),
        "first_error": c.first_error.lock().clone(),
        "pub_rate": opts.pub_rate,
        "baseline": baseline.report(),
        "flood": flood.report(),
    }))
}
