//! One benchmark run: connect, measure idle memory, publish, drain, report.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::frames::{self, Setup, Target};
use crate::payload::{TsScanner, encode_payload, now_micros};
use crate::procfs;
use crate::stats::{hist_summary_ms, new_latency_histogram, percentile_sorted};
use crate::wsraw::{RawWs, op};
use gyre_proto::ProtocolType;

/// Options of one run (see `main.rs` for the CLI).
#[derive(Debug, Clone, clap::Args)]
pub struct RunOpts {
    /// What is under test.
    #[arg(long, value_enum)]
    pub target: Target,
    /// Server address (loopback only): publishers, and subscribers unless `--sub-addr`.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Subscribers' addresses, comma-separated (a cluster: connection `i`
    /// goes to address `i mod n`); default: `--addr`.
    #[arg(long, value_delimiter = ',')]
    pub sub_addr: Vec<SocketAddr>,
    /// Label copied into the report.
    #[arg(long, default_value = "adhoc")]
    pub scenario: String,
    /// Run number copied into the report.
    #[arg(long, default_value_t = 1)]
    pub run: u32,
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// New connections per second (0 = as fast as allowed by --connect-concurrency).
    #[arg(long, default_value_t = 2000)]
    pub connect_rate: u32,
    /// Handshakes in flight at most.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Source addresses 127.0.0.1..=127.0.0.N to spread connections over.
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Channels; connection i subscribes to channel i % channels and publication j goes to j % channels.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Channel name prefix.
    #[arg(long, default_value = "ch")]
    pub channel_prefix: String,
    /// Publications to send (0 = only connect and measure memory).
    #[arg(long, default_value_t = 0)]
    pub msgs: u64,
    /// Publications per second (0 = as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    pub pub_rate: f64,
    /// Keep-alive HTTP connections used to publish.
    #[arg(long, default_value_t = 2)]
    pub pub_conns: usize,
    /// Padding bytes added to each payload.
    #[arg(long, default_value_t = 0)]
    pub payload_pad: usize,
    /// Server API key (Gyre: `X-API-Key`).
    #[arg(long, default_value = "apikey")]
    pub api_key: String,
    /// HS256 secret to sign connection tokens with (none: anonymous connect, needs `client.insecure`).
    #[arg(long)]
    pub token_secret: Option<String>,
    /// Server pids (comma-separated) whose memory and CPU are read; an nginx
    /// master pid brings its workers along.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Alternatively, the process name (`comm`) of the server processes.
    #[arg(long)]
    pub server_name: Option<String>,
    /// Pause after the last connection is ready before memory is read, ms.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// How long to wait for outstanding deliveries after the last publish, s.
    #[arg(long, default_value_t = 15)]
    pub drain_timeout_s: u64,
    /// Hard bound on the whole run, s.
    #[arg(long, default_value_t = 300)]
    pub deadline_s: u64,
    /// Connect+subscribe timeout per connection, s.
    #[arg(long, default_value_t = 20)]
    pub setup_timeout_s: u64,
}

struct Shared {
    target: Target,
    ready: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
    delivered: AtomicU64,
    pings: AtomicU64,
    last_delivery_us: AtomicU64,
    ready_per_channel: Vec<AtomicU32>,
    hist: Mutex<Histogram<u64>>,
    errors: Mutex<Vec<String>>,
    scanner: TsScanner,
    stop: CancellationToken,
}

impl Shared {
    fn note_error(&self, e: String) {
        let mut errs = self.errors.lock();
        if errs.len() < 8 && !errs.contains(&e) {
            errs.push(e);
        }
    }
}

fn check_loopback(addr: &SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!("refusing non-loopback target {addr}: benchmarks stay on 127.0.0.0/8");
    }
    Ok(())
}

fn channel_name(opts: &RunOpts, idx: usize) -> String {
    format!("{}{}", opts.channel_prefix, idx)
}

/// Signs `{"sub": user}` with HS256.
pub fn make_token(secret: &str, user: &str) -> Result<String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let claims = json!({ "sub": user });
    Ok(encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())?)?)
}

async fn tcp_connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn data_opcode(proto: ProtocolType) -> u8 {
    match proto {
        ProtocolType::Json => op::TEXT,
        ProtocolType::Protobuf => op::BINARY,
    }
}

async fn setup_conn(opts: &RunOpts, sh: &Shared, i: usize, token: Option<&str>) -> Result<RawWs> {
    let ch = channel_name(opts, i % opts.channels);
    let source = (opts.source_ips > 1).then(|| Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(opts.source_ips)) as u8));
    let addr = if opts.sub_addr.is_empty() { opts.addr } else { opts.sub_addr[i % opts.sub_addr.len()] };
    let stream = tcp_connect(addr, source).await?;
    let path = match sh.target {
        Target::Nchan => format!("/sub/{ch}"),
        _ => "/connection/websocket".to_owned(),
    };
    let subprotocol = (sh.target == Target::GyreProtobuf).then_some("centrifuge-protobuf");
    let seed = (i as u32).wrapping_mul(2_654_435_761);
    let (mut ws, mut leftover) = RawWs::handshake(stream, &addr.to_string(), &path, subprotocol, seed).await?;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let ctl = ws.reader.feed(&mut leftover, &mut |m| pending.push(m.to_vec()))?;
    ws.answer_pings(&ctl).await?;
    let Some(proto) = sh.target.protocol() else {
        return Ok(ws); // Nchan subscribes by the URL.
    };
    ws.send(data_opcode(proto), &frames::setup_frame(proto, token, &ch)).await?;
    let mut st = Setup::default();
    loop {
        let pings_before = st.pings;
        for m in pending.drain(..) {
            frames::absorb_setup_frame(proto, &m, &mut st)?;
        }
        for _ in pings_before..st.pings {
            ws.send(data_opcode(proto), frames::pong(proto)).await?;
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

async fn hot_loop(sh: &Shared, mut ws: RawWs) {
    let cancelled = sh.stop.cancelled();
    tokio::pin!(cancelled);
    let proto = sh.target.protocol();
    loop {
        let mut app_pings = 0usize;
        let mut bad_frames = 0usize;
        let mut on_message = |m: &[u8]| {
            let now = now_micros();
            let scan = frames::scan_frame(sh.target, m, &sh.scanner, |ts| {
                sh.hist.lock().saturating_record(now.saturating_sub(ts).max(1));
            });
            match scan {
                Ok(s) => {
                    if s.deliveries > 0 {
                        sh.delivered.fetch_add(s.deliveries as u64, Ordering::Relaxed);
                        sh.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                    }
                    app_pings += s.pings;
                }
                Err(_) => bad_frames += 1,
            }
        };
        let r = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = ws.read_and_process(&mut on_message) => r,
        };
        if bad_frames > 0 {
            sh.note_error("undecodable frame".to_owned());
        }
        let ctl = match r {
            Ok(Some(ctl)) => ctl,
            Ok(None) => {
                sh.note_error("server closed a connection (EOF)".to_owned());
                sh.dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                sh.note_error(format!("connection error: {e:#}"));
                sh.dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        if let Some(code) = ctl.close {
            sh.note_error(format!("server sent Close {code:?}"));
            sh.dropped.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let mut ok = ws.answer_pings(&ctl).await.is_ok();
        if let Some(proto) = proto {
            sh.pings.fetch_add(app_pings as u64, Ordering::Relaxed);
            for _ in 0..app_pings {
                ok &= ws.send(data_opcode(proto), frames::pong(proto)).await.is_ok();
            }
        }
        if !ok {
            sh.note_error("pong write failed".to_owned());
        }
    }
}

async fn conn_task(
    opts: Arc<RunOpts>,
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    i: usize,
    start: Instant,
    token: Option<Arc<str>>,
) {
    let setup = async {
        if opts.connect_rate > 0 {
            let at = start + Duration::from_secs_f64(i as f64 / f64::from(opts.connect_rate));
            sleep_until(at).await;
        }
        let _permit = sem.acquire().await?;
        timeout(Duration::from_secs(opts.setup_timeout_s), setup_conn(&opts, &sh, i, token.as_deref()))
            .await
            .context("setup timed out")?
    };
    let ws = tokio::select! {
        r = setup => r,
        _ = sh.stop.cancelled() => return,
    };
    match ws {
        Ok(ws) => {
            sh.ready.fetch_add(1, Ordering::Relaxed);
            sh.ready_per_channel[i % opts.channels].fetch_add(1, Ordering::Relaxed);
            hot_loop(&sh, ws).await;
        }
        Err(e) => {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            sh.note_error(format!("connect: {e:#}"));
        }
    }
}

struct PubState {
    next: AtomicU64,
    published: AtomicU64,
    errors: AtomicU64,
    ok_per_channel: Vec<AtomicU64>,
    latencies_us: Mutex<Vec<u64>>,
    last_done: Mutex<Option<Instant>>,
}

async fn publisher(opts: Arc<RunOpts>, sh: Arc<Shared>, ps: Arc<PubState>, start: Instant) {
    let mut reconnects = 0;
    'outer: while reconnects < 5 {
        reconnects += 1;
        let stream = match tcp_connect(opts.addr, None).await {
            Ok(s) => s,
            Err(e) => {
                sh.note_error(format!("publisher connect: {e}"));
                sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(e) => {
                    sh.note_error(format!("publisher handshake: {e}"));
                    continue;
                }
            };
        tokio::spawn(conn);
        loop {
            let j = ps.next.fetch_add(1, Ordering::Relaxed);
            if j >= opts.msgs {
                break 'outer;
            }
            if opts.pub_rate > 0.0 {
                sleep_until(start + Duration::from_secs_f64(j as f64 / opts.pub_rate)).await;
            }
            let ch_idx = (j % opts.channels as u64) as usize;
            let ch = channel_name(&opts, ch_idx);
            if sender.ready().await.is_err() {
                ps.errors.fetch_add(1, Ordering::Relaxed);
                continue 'outer;
            }
            let t0 = Instant::now();
            let payload = encode_payload(now_micros(), j, opts.payload_pad);
            let req = match sh.target {
                Target::Nchan => http::Request::post(format!("/pub/{ch}"))
                    .header("host", opts.addr.to_string())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(payload))),
                _ => {
                    let mut body = Vec::with_capacity(payload.len() + 40);
                    body.extend_from_slice(b"{\"channel\":");
                    body.extend_from_slice(serde_json::to_string(&ch).unwrap_or_default().as_bytes());
                    body.extend_from_slice(b",\"data\":");
                    body.extend_from_slice(&payload);
                    body.extend_from_slice(b"}");
                    http::Request::post("/api/publish")
                        .header("host", opts.addr.to_string())
                        .header("content-type", "application/json")
                        .header("x-api-key", opts.api_key.as_str())
                        .body(Full::new(Bytes::from(body)))
                }
            };
            let req = req.expect("valid request");
            let res = async {
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, body))
            }
            .await;
            let lat = t0.elapsed();
            match res {
                Ok((status, body)) => {
                    let api_error = sh.target != Target::Nchan && memchr::memmem::find(&body, b"\"error\"").is_some();
                    if status.is_success() && !api_error {
                        ps.published.fetch_add(1, Ordering::Relaxed);
                        ps.ok_per_channel[ch_idx].fetch_add(1, Ordering::Relaxed);
                        ps.latencies_us.lock().push(u64::try_from(lat.as_micros()).unwrap_or(u64::MAX));
                    } else {
                        ps.errors.fetch_add(1, Ordering::Relaxed);
                        sh.note_error(format!(
                            "publish: HTTP {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ));
                    }
                }
                Err(e) => {
                    ps.errors.fetch_add(1, Ordering::Relaxed);
                    sh.note_error(format!("publish: {e}"));
                    continue 'outer;
                }
            }
            *ps.last_done.lock() = Some(Instant::now());
        }
    }
}

fn resolve_server_pids(opts: &RunOpts) -> Result<Vec<u32>> {
    let root = std::path::Path::new("/proc");
    let mut pids = Vec::new();
    for &p in &opts.server_pid {
        pids.push(p);
        pids.extend(procfs::children_of(root, p));
    }
    if let Some(name) = &opts.server_name {
        pids.extend(procfs::pids_by_name(root, name)?);
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs one scenario and returns its report (one JSON object).
pub async fn run(opts: RunOpts) -> Result<serde_json::Value> {
    check_loopback(&opts.addr)?;
    for a in &opts.sub_addr {
        check_loopback(a)?;
    }
    if opts.channels == 0 || opts.conns == 0 {
        bail!("--conns and --channels must be positive");
    }
    let t_begin = Instant::now();
    let deadline = t_begin + Duration::from_secs(opts.deadline_s);
    let server_pids = resolve_server_pids(&opts)?;
    let clk = procfs::clock_ticks_per_sec();
    let mem = |pids: &[u32]| -> Option<u64> { if pids.is_empty() { None } else { procfs::total_pss(pids).ok() } };
    let pss_before = mem(&server_pids);

    let opts = Arc::new(opts);
    let sh = Arc::new(Shared {
        target: opts.target,
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        pings: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        ready_per_channel: (0..opts.channels).map(|_| AtomicU32::new(0)).collect(),
        hist: Mutex::new(new_latency_histogram()),
        errors: Mutex::new(Vec::new()),
        scanner: TsScanner::default(),
        stop: CancellationToken::new(),
    });
    let mut deadline_hit = false;

    // Phase 1: connect.
    let sem = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let conn_start = Instant::now();
    let mut tasks = Vec::with_capacity(opts.conns);
    for i in 0..opts.conns {
        let token = match &opts.token_secret {
            Some(s) => Some(Arc::<str>::from(make_token(s, &format!("lg{i}"))?)),
            None => None,
        };
        tasks.push(tokio::spawn(conn_task(opts.clone(), sh.clone(), sem.clone(), i, conn_start, token)));
    }
    loop {
        let done = sh.ready.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed);
        if done >= opts.conns {
            break;
        }
        if Instant::now() >= deadline {
            deadline_hit = true;
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = conn_start.elapsed().as_secs_f64();
    let _ = timeout_at(deadline, sleep(Duration::from_millis(opts.settle_ms))).await;
    let pss_after = mem(&server_pids);
    let ready = sh.ready.load(Ordering::Relaxed);

    // Phase 2: publish and drain.
    let ps = Arc::new(PubState {
        next: AtomicU64::new(0),
        published: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        ok_per_channel: (0..opts.channels).map(|_| AtomicU64::new(0)).collect(),
        latencies_us: Mutex::new(Vec::with_capacity(opts.msgs as usize)),
        last_done: Mutex::new(None),
    });
    let server_cpu0 = procfs::total_cpu_ticks(&server_pids).ok();
    let by_pid0: Vec<Option<u64>> = server_pids.iter().map(|p| procfs::cpu_ticks(&p.to_string()).ok()).collect();
    let self_cpu0 = procfs::cpu_ticks("self").ok();
    let host_cpu0 = procfs::host_busy_ticks().ok();
    let runq0 = procfs::total_runq_wait_ns(&server_pids).ok();
    let pub_start = Instant::now();
    let pub_start_us = now_micros();
    let mut expected = 0u64;
    let mut drain_secs = 0.0;
    if opts.msgs > 0 && !deadline_hit {
        let pubs: Vec<_> = (0..opts.pub_conns.max(1))
            .map(|_| tokio::spawn(publisher(opts.clone(), sh.clone(), ps.clone(), pub_start)))
            .collect();
        for p in pubs {
            if timeout_at(deadline, p).await.is_err() {
                deadline_hit = true;
                break;
            }
        }
        expected = (0..opts.channels)
            .map(|c| {
                ps.ok_per_channel[c].load(Ordering::Relaxed)
                    * u64::from(sh.ready_per_channel[c].load(Ordering::Relaxed))
            })
            .sum();
        let drain_start = Instant::now();
        let drain_end = (drain_start + Duration::from_secs(opts.drain_timeout_s)).min(deadline);
        while sh.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_end {
            sleep(Duration::from_millis(5)).await;
        }
        drain_secs = drain_start.elapsed().as_secs_f64();
    }
    let server_cpu1 = procfs::total_cpu_ticks(&server_pids).ok();
    let by_pid1: Vec<Option<u64>> = server_pids.iter().map(|p| procfs::cpu_ticks(&p.to_string()).ok()).collect();
    let self_cpu1 = procfs::cpu_ticks("self").ok();
    let host_cpu1 = procfs::host_busy_ticks().ok();
    let runq1 = procfs::total_runq_wait_ns(&server_pids).ok();
    let phase_secs = pub_start.elapsed().as_secs_f64();

    sh.stop.cancel();
    let _ = timeout(Duration::from_secs(5), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;

    let delivered = sh.delivered.load(Ordering::Relaxed);
    let published = ps.published.load(Ordering::Relaxed);
    let pub_secs = ps.last_done.lock().map(|t| t.duration_since(pub_start).as_secs_f64()).unwrap_or(0.0);
    let last_us = sh.last_delivery_us.load(Ordering::Relaxed);
    let deliver_secs = if last_us > pub_start_us { (last_us - pub_start_us) as f64 / 1e6 } else { 0.0 };
    let mut pub_lat = std::mem::take(&mut *ps.latencies_us.lock());
    pub_lat.sort_unstable();
    let pct_ms = |q: f64| percentile_sorted(&pub_lat, q).map(|us| round3(us as f64 / 1000.0));
    let e2e = hist_summary_ms(&sh.hist.lock());
    let cpu_delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / clk as f64),
        _ => None,
    };
    let server_cpu_s = cpu_delta(server_cpu0, server_cpu1);
    let self_cpu_s = cpu_delta(self_cpu0, self_cpu1);
    // CPU used by anything else on the host while publishing: a run where this
    // is high was disturbed (the machine is shared with builds) and is suspect.
    let other_cpu_s = match (cpu_delta(host_cpu0, host_cpu1), server_cpu_s, self_cpu_s) {
        (Some(h), Some(s), Some(l)) => Some((h - s - l).max(0.0)),
        _ => None,
    };
    let per_conn = match (pss_before, pss_after) {
        (Some(b), Some(a)) if ready > 0 => Some(round3((a as f64 - b as f64) / ready as f64)),
        _ => None,
    };

    Ok(json!({
        "scenario": opts.scenario,
        "run": opts.run,
        "target": opts.target.as_str(),
        "conns": opts.conns,
        "channels": opts.channels,
        "msgs": opts.msgs,
        "pub_rate": if opts.pub_rate > 0.0 { json!(opts.pub_rate) } else { json!("max") },
        "pub_conns": opts.pub_conns,
        "ready": ready,
        "failed": sh.failed.load(Ordering::Relaxed),
        "dropped": sh.dropped.load(Ordering::Relaxed),
        "connect_s": round3(connect_secs),
        "published": published,
        "publish_errors": ps.errors.load(Ordering::Relaxed),
        "publish_s": round3(pub_secs),
        "pub_per_s": if pub_secs > 0.0 { json!(round3(published as f64 / pub_secs)) } else { json!(null) },
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "extra": delivered.saturating_sub(expected),
        "delivered_per_s": if deliver_secs > 0.0 { json!(round3(delivered as f64 / deliver_secs)) } else { json!(null) },
        "deliver_s": round3(deliver_secs),
        "drain_s": round3(drain_secs),
        "latency_ms": e2e.map(|(p50, p99, max)| json!({"p50": p50, "p99": p99, "max": max})),
        "publish_latency_ms": json!({"p50": pct_ms(0.5), "p99": pct_ms(0.99), "max": pct_ms(1.0)}),
        "server_pids": server_pids,
        "server_pss_before_kib": pss_before.map(|b| b / 1024),
        "server_pss_after_kib": pss_after.map(|b| b / 1024),
        "pss_per_conn_bytes": per_conn,
        "server_cpu_s": server_cpu_s.map(round3),
        // Per process, keyed by pid (a cluster: which node paid).
        "server_cpu_s_by_pid": server_pids.iter().zip(by_pid0.iter().zip(&by_pid1))
            .map(|(pid, (a, b))| (pid.to_string(), json!(cpu_delta(*a, *b).map(round3))))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "server_cpu_us_per_delivery": match server_cpu_s {
            Some(s) if delivered > 0 => json!(round3(s * 1e6 / delivered as f64)),
            _ => json!(null),
        },
        "loadgen_cpu_pct": match self_cpu_s {
            Some(s) if phase_secs > 0.0 => json!(round3(100.0 * s / phase_secs)),
            _ => json!(null),
        },
        "other_cpu_pct": match other_cpu_s {
            Some(s) if phase_secs > 0.0 => json!(round3(100.0 * s / phase_secs)),
            _ => json!(null),
        },
        "server_runq_wait_ms": match (runq0, runq1) {
            (Some(a), Some(b)) if !server_pids.is_empty() => json!(round3(b.saturating_sub(a) as f64 / 1e6)),
            _ => json!(null),
        },
        "pings": sh.pings.load(Ordering::Relaxed),
        "deadline_hit": deadline_hit,
        "errors": *sh.errors.lock(),
        "elapsed_s": round3(t_begin.elapsed().as_secs_f64()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(check_loopback(&"127.0.0.1:80".parse().unwrap()).is_ok());
        assert!(check_loopback(&"127.3.0.1:80".parse().unwrap()).is_ok());
        assert!(check_loopback(&"[::1]:80".parse().unwrap()).is_ok());
        assert!(check_loopback(&"10.0.0.1:80".parse().unwrap()).is_err());
    }

    #[test]
    fn tokens_are_hs256_with_sub() {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
        let t = make_token("secret", "lg5").unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let d = decode::<serde_json::Value>(&t, &DecodingKey::from_secret(b"secret").unwrap(), &v).unwrap();
        assert_eq!(d.claims["sub"], "lg5");
    }
}
