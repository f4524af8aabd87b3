//! Gyre's NATS engine: one [`Broker`] + [`PresenceManager`] shared by every
//! node of a cluster, over NATS core (live traffic, control) and JetStream
//! (history streams, presence, idempotency).
//!
//! # Layout in NATS (prefix `p`, channel name base64url-encoded as `b`)
//!
//! | What | Where |
//! | --- | --- |
//! | history of a channel | stream `p-history`, subject `p.h.b` |
//! | live traffic of a channel | core subject `p.c.b` |
//! | presence | KV bucket `p-presence`, key `b.<client id>`, TTL |
//! | idempotency (channels without history) | KV bucket `p-idempotency`, 5 min TTL |
//! | control (heartbeats, API targets, surveys) | `p.ctl` (all), `p.ctl.<node uid>` (one) |
//!
//! # Why offsets are contiguous and ordered
//!
//! Every stored publication carries its channel offset and epoch in headers.
//! A publish reads the channel's last stored message (or uses the cached one),
//! then publishes offset+1 with `Nats-Expected-Last-Subject-Sequence` set to
//! that message's stream sequence: JetStream stores it only if nobody else
//! stored a message on that subject meanwhile. A loser gets "wrong last
//! sequence", re-reads and retries. So offsets of a channel are 1, 2, 3, …
//! whatever the number of publishing nodes, and the epoch travels with them.
//!
//! Nodes never receive the publish itself: the stream *republishes* each
//! stored message to the live subject `p.c.b`, in store order, only after it
//! was stored. A rejected (CAS-losing) publish therefore never reaches a
//! subscriber, and subscribers see offsets in order.
//!
//! The last message of a channel is never removed by trimming
//! (`max_msgs_per_subject` keeps at least one), so the position survives
//! `history_ttl` (items expire by a header checked on read, not by deletion)
//! and `history_remove` (a marker message carrying the position is written,
//! then the subject is purged down to that marker). The stream's `max_age` is
//! the meta TTL: a channel nobody published to for that long loses its last
//! message, and the next use starts a new epoch at offset 0.
//!
//! # Failure modes (loss is never silent)
//!
//! - NATS unreachable at start-up: [`NatsEngine::start`] keeps retrying every
//!   second and logs each failure; [`NatsEngine::health`] is `NotReady`, so
//!   `/health/ready` answers 503 (liveness, `/health`, stays 200). A server without JetStream is a `Fatal` health.
//! - NATS lost mid-run: every publish, join/leave, history and presence call
//!   fails with [`EngineError::Unavailable`] at once (never buffered for
//!   later, never a false success). Publications stored while this node was
//!   not subscribed (it was disconnected) are found on reconnect: every
//!   channel compares its last delivered offset with the stream top and
//!   delivers what it missed from history, in order.
//! - Core NATS may drop live messages (slow consumer). Each channel checks
//!   that offsets are contiguous; a hole is filled from history before the
//!   next publication is delivered; if history cannot fill it, the
//!   publication goes out anyway and each positioned subscriber sees the gap
//!   and is told to resubscribe (insufficient state), recovering or getting
//!   `recovered: false`.
//! - A publish whose acknowledgement is lost (NATS died after storing) is
//!   reported as failed although stored: the caller may retry with an
//!   idempotency key. The reverse — success reported for a publication that
//!   was not stored — cannot happen: success is the JetStream ack.

mod history;
mod subject;
#[doc(hidden)]
pub mod testing;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use gyre_node::engine::*;
use gyre_proto::protocol::{ClientInfo, Publication};
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use subject::Names;

/// Channels whose last stored message this node remembers (bounded memory).
const MAX_CACHED_TOPS: usize = 100_000;

/// How long an idempotency key suppresses duplicates (as the memory engine).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// Engine options.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URL(s), comma separated.
    pub url: String,
    /// Subject and stream name prefix.
    pub prefix: String,
    /// Connect timeout.
    pub dial_timeout: Duration,
    /// Timeout of a request (publish ack, history read step).
    pub write_timeout: Duration,
    /// Largest `history_size` of any namespace: messages kept per channel.
    pub history_max_size: usize,
    /// Longest `history_meta_ttl`: a channel without publications that long
    /// loses its stream (new epoch).
    pub history_meta_ttl: Duration,
    /// Presence entries expire unless refreshed within this.
    pub presence_ttl: Duration,
    /// Client name shown by the NATS server.
    pub name: String,
    /// Bytes the history stream may hold in total; the oldest messages go
    /// first beyond it. Without a cap, many channels × `history_size` could
    /// fill the NATS server's disk.
    pub history_max_bytes: i64,
    /// Messages the history stream may hold in total (oldest go first).
    pub history_max_messages: i64,
    /// TLS to the server (`broker.nats.tls`): required when set, so a server
    /// offering plain text only is refused instead of used unencrypted.
    pub tls: Option<async_nats::rustls::ClientConfig>,
    /// Reloads the files behind `tls` (its CA and client certificate), run by
    /// the engine for as long as it lives, so each reconnect uses the current
    /// ones: cert-manager rotation needs no restart.
    pub tls_reloader: Option<gyre_node::tls::Reloader>,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "centrifugo".into(),
            dial_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(2),
            history_max_size: 1000,
            history_meta_ttl: Duration::from_secs(30 * 24 * 3600),
            presence_ttl: Duration::from_secs(60),
            name: "gyre".into(),
            history_max_bytes: 1 << 30,
            history_max_messages: 10_000_000,
            tls: None,
            tls_reloader: None,
        }
    }
}

/// What a connected engine uses.
pub(crate) struct Conn {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) history: stream::Stream,
    pub(crate) presence: kv::Store,
    pub(crate) idempotency: kv::Store,
}

/// The last stored message of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Top {
    /// Stream sequence of that message.
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    pub(crate) epoch: String,
    /// `history_size` it was published with (bounds reads).
    pub(crate) size: u64,
}

/// Builds a stored message for the current top: (offset, epoch, headers, payload).
pub(crate) type MakeMessage<'a> = dyn Fn(Option<&Top>) -> (u64, String, HeaderMap, Bytes) + Send + Sync + 'a;

enum ChanCmd {
    /// Compare the delivered position with the stream top (after reconnect).
    Check,
}

struct ChanHandle {
    tx: mpsc::UnboundedSender<ChanCmd>,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) struct Inner {
    pub(crate) opts: NatsOptions,
    pub(crate) names: Names,
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    conn: RwLock<Option<Arc<Conn>>>,
    health: Mutex<EngineHealth>,
    chans: Mutex<HashMap<String, ChanHandle>>,
    /// Last stored message per channel as this node last saw it (saves a
    /// read per publish; a stale entry only costs a CAS retry).
    tops: Mutex<HashMap<String, Top>>,
    /// Serializes this node's publishes per channel (64 shards), so they do
    /// not fight each other's CAS.
    publish_locks: Vec<tokio::sync::Mutex<()>>,
    control_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Stops the TLS reloader task: on `close` and when the engine is dropped.
    tls_stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tls_stop.cancel();
    }
}

/// The NATS engine. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct NatsEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEngine")
            .field("url", &self.inner.opts.url)
            .field("prefix", &self.inner.names.prefix)
            .finish()
    }
}

/// Longest channel name the engine carries, in bytes. Subjects travel in
/// nats-server's protocol control line (4 KB by default, with the prefix, a
/// reply subject and the header length); a longer line makes the server drop
/// the whole connection, with every channel of the node on it. The node
/// refuses long names first (`channel.max_length`); this is the engine's
/// own guard.
pub const MAX_CHANNEL_BYTES: usize = 2048;

fn check_channel(channel: &str) -> Result<(), EngineError> {
    if channel.len() > MAX_CHANNEL_BYTES {
        return Err(EngineError::BadRequest(format!(
            "channel name of {} bytes (at most {MAX_CHANNEL_BYTES})",
            channel.len()
        )));
    }
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

impl NatsEngine {
    /// Creates the engine and starts connecting in the background (inside a
    /// Tokio runtime). Until connected, health is `NotReady` and calls fail.
    pub fn start(mut opts: NatsOptions) -> NatsEngine {
        let names = Names::new(&opts.prefix);
        let tls_stop = CancellationToken::new();
        if let Some(r) = opts.tls_reloader.take() {
            tokio::spawn(r.run(tls_stop.clone()));
        }
        let inner = Arc::new(Inner {
            names,
            handler: OnceLock::new(),
            conn: RwLock::new(None),
            health: Mutex::new(EngineHealth::NotReady(format!("connecting to NATS at {}", opts.url))),
            chans: Mutex::new(HashMap::new()),
            tops: Mutex::new(HashMap::new()),
            publish_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            control_task: Mutex::new(None),
            tls_stop,
            opts,
        });
        tokio::spawn(connect_loop(Arc::downgrade(&inner)));
        NatsEngine { inner }
    }

    /// Waits until connected (or fatal, or `timeout`): for tests and tools.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.health() {
                EngineHealth::Ready => return Ok(()),
                EngineHealth::Fatal(m) => return Err(EngineError::Other(m)),
                EngineHealth::NotReady(m) if tokio::time::Instant::now() >= deadline => {
                    return Err(EngineError::Unavailable(m));
                }
                EngineHealth::NotReady(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Current health.
    pub fn health(&self) -> EngineHealth {
        self.inner.health.lock().clone()
    }

    /// Stops every background task and closes the connection (tests).
    pub async fn close(&self) {
        self.inner.tls_stop.cancel();
        for (_, h) in self.inner.chans.lock().drain() {
            h.task.abort();
        }
        if let Some(t) = self.inner.control_task.lock().take() {
            t.abort();
        }
        let conn = self.inner.conn.write().take();
        if let Some(c) = conn {
            let _ = c.client.drain().await;
        }
        *self.inner.health.lock() = EngineHealth::NotReady("closed".into());
    }
}

impl Inner {
    pub(crate) fn conn(&self) -> Result<Arc<Conn>, EngineError> {
        let c = self.conn.read().clone().ok_or_else(|| unavailable("not connected to NATS"))?;
        if c.client.connection_state() != async_nats::connection::State::Connected {
            return Err(unavailable("NATS connection lost (reconnecting)"));
        }
        Ok(c)
    }

    fn handler(&self) -> Option<&Arc<dyn BrokerEventHandler>> {
        self.handler.get()
    }

    fn set_health(&self, h: EngineHealth) {
        *self.health.lock() = h;
    }

    fn on_event(self: &Arc<Self>, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                if self.conn.read().is_none() {
                    return; // initial connect: setup runs in connect_loop
                }
                tracing::info!(url = %self.opts.url, "reconnected to NATS: checking channel positions for missed publications");
                self.set_health(EngineHealth::Ready);
                for h in self.chans.lock().values() {
                    let _ = h.tx.send(ChanCmd::Check);
                }
            }
            async_nats::Event::Disconnected => {
                if self.conn.read().is_some() {
                    tracing::warn!(url = %self.opts.url, "lost the NATS connection: publishing fails until it is back");
                    self.set_health(EngineHealth::NotReady(format!("NATS at {} disconnected", self.opts.url)));
                }
            }
            async_nats::Event::SlowConsumer(sid) => {
                tracing::warn!(
                    sid,
                    "NATS subscription overflowed: live messages dropped, gaps will be filled from history"
                );
            }
            other => tracing::debug!(event = %other, "NATS event"),
        }
    }

    fn publish_lock(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut h);
        &self.publish_locks[(h.finish() as usize) % self.publish_locks.len()]
    }

    async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.opts.write_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(format!("{what}: {e}"))),
            Err(_) => Err(unavailable(format!("{what}: timed out after {:?}", self.opts.write_timeout))),
        }
    }

    /// Publishes one stored message with CAS on the channel's last sequence.
    /// `make` builds headers and payload for the offset/epoch/prev chosen.
    async fn store(
        &self,
        conn: &Conn,
        channel: &str,
        msg_id: Option<String>,
        make: &MakeMessage<'_>,
    ) -> Result<(Top, bool), EngineError> {
        let subject = self.names.history(channel);
        let _guard = self.publish_lock(channel).lock().await;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let cached = self.tops.lock().get(channel).cloned();
            let top = match cached {
                Some(t) => Some(t),
                None => history::last(self, conn, channel).await?,
            };
            let (offset, epoch, mut headers, payload) = make(top.as_ref());
            let expect = top.as_ref().map(|t| t.seq).unwrap_or(0);
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expect.to_string().as_str());
            headers.insert(history::H_PREV_SEQ, expect.to_string().as_str());
            if let Some(id) = &msg_id {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            }
            let size: u64 = headers.get(history::H_SIZE).and_then(|v| v.as_str().parse().ok()).unwrap_or(0);
            let ack = async {
                let fut = conn.js.publish_with_headers(subject.clone(), headers, payload).await?;
                fut.await
            };
            match tokio::time::timeout(self.opts.write_timeout, ack).await {
                Err(_) => {
                    self.tops.lock().remove(channel);
                    return Err(unavailable(format!(
                        "publish to {channel}: no JetStream ack within {:?}",
                        self.opts.write_timeout
                    )));
                }
                Ok(Ok(ack)) if ack.duplicate => {
                    self.tops.lock().remove(channel);
                    let m = self.timed("read duplicate", conn.history.get_raw_message(ack.sequence)).await?;
                    let t = history::top_of(&m.headers, m.sequence)
                        .ok_or_else(|| EngineError::Other("duplicate points to a foreign message".into()))?;
                    return Ok((t, true));
                }
                Ok(Ok(ack)) => {
                    let t = Top { seq: ack.sequence, offset, epoch, size };
                    let mut tops = self.tops.lock();
                    if tops.len() >= MAX_CACHED_TOPS {
                        tops.clear(); // a cache: a miss costs one read
                    }
                    tops.insert(channel.to_string(), t.clone());
                    drop(tops);
                    return Ok((t, false));
                }
                Ok(Err(e)) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence && attempt < 100 => {
                    self.tops.lock().remove(channel);
                    if attempt > 3 {
                        let jitter = rand::random::<u64>() % (attempt as u64 * 2);
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                }
                Ok(Err(e)) => {
                    self.tops.lock().remove(channel);
                    return Err(unavailable(format!("publish to {channel}: {e}")));
                }
            }
        }
    }

    /// Publishes on the live subject and waits until the server has it
    /// (flush = PING/PONG after it): no success without the server's word.
    async fn publish_core(
        &self,
        conn: &Conn,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), EngineError> {
        self.timed("publish", async {
            conn.client.publish_with_headers(subject, headers, payload).await.map_err(|e| e.to_string())?;
            conn.client.flush().await.map_err(|e| e.to_string())
        })
        .await
    }

    fn deliver(
        &self,
        channel: &str,
        kind: &str,
        payload: &[u8],
        offset: u64,
        epoch: &str,
        prev: Option<Arc<Publication>>,
    ) -> Option<Arc<Publication>> {
        let handler = self.handler()?;
        match kind {
            history::KIND_PUB => match Publication::decode(payload) {
                Ok(mut p) => {
                    p.offset = offset;
                    let p = Arc::new(p);
                    handler.handle_publication(channel, p.clone(), epoch, prev);
                    Some(p)
                }
                Err(e) => {
                    tracing::warn!(channel, error = %e, "undecodable publication from NATS");
                    None
                }
            },
            history::KIND_JOIN | history::KIND_LEAVE => {
                match ClientInfo::decode(payload) {
                    Ok(info) if kind == history::KIND_JOIN => handler.handle_join(channel, info),
                    Ok(info) => handler.handle_leave(channel, info),
                    Err(e) => tracing::warn!(channel, error = %e, "undecodable join/leave from NATS"),
                }
                None
            }
            _ => None,
        }
    }
}

async fn connect_loop(weak: Weak<Inner>) {
    let mut attempt = 0u64;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        attempt += 1;
        match setup(&inner).await {
            Ok(conn) => {
                *inner.conn.write() = Some(conn.clone());
                // Resubscribe channels registered before (none at start-up).
                inner.set_health(EngineHealth::Ready);
                tracing::info!(url = %inner.opts.url, prefix = %inner.names.prefix, "connected to NATS; JetStream history and presence ready");
                return;
            }
            Err(SetupError::Fatal(m)) => {
                tracing::error!("{m}");
                inner.set_health(EngineHealth::Fatal(m));
                return;
            }
            Err(SetupError::Retry(m)) => {
                tracing::warn!(
                    attempt,
                    "NATS at {} unreachable or not ready: {m}; retrying in 1s (not ready: /health/ready answers 503 until connected)",
                    inner.opts.url
                );
                inner.set_health(EngineHealth::NotReady(format!("NATS at {} unreachable: {m}", inner.opts.url)));
            }
        }
        drop(inner);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

enum SetupError {
    Retry(String),
    Fatal(String),
}

async fn setup(inner: &Arc<Inner>) -> Result<Arc<Conn>, SetupError> {
    let o = &inner.opts;
    let weak = Arc::downgrade(inner);
    let mut connect = async_nats::ConnectOptions::new();
    if let Some(tls) = &o.tls {
        connect = connect.require_tls(true).tls_client_config(tls.clone());
    }
    let client = connect
        .name(&o.name)
        .connection_timeout(o.dial_timeout.max(Duration::from_millis(100)))
        .request_timeout(Some(o.write_timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| Duration::from_millis((100 * attempts as u64).min(1000)))
        .event_callback(move |event| {
            let weak = weak.clone();
            async move {
                if let Some(inner) = weak.upgrade() {
                    inner.on_event(event);
                }
            }
        })
        .connect(o.url.as_str())
        .await
        .map_err(|e| SetupError::Retry(e.to_string()))?;
    let info = client.server_info();
    if !info.jetstream {
        let _ = client.drain().await;
        return Err(SetupError::Fatal(format!(
            "NATS server at {} (version {}) has no JetStream: Gyre keeps history and presence in JetStream; start nats-server with -js (or enable jetstream in its config)",
            o.url, info.version
        )));
    }
    let mut js = jetstream::new(client.clone());
    js.set_timeout(o.write_timeout);
    let retry = |what: &str, e: &dyn std::fmt::Display| SetupError::Retry(format!("{what}: {e}"));
    let n = &inner.names;
    let meta_ttl = o.history_meta_ttl.max(Duration::from_secs(1));
    let cfg = stream::Config {
        name: n.history_stream.clone(),
        description: Some("Gyre channel history (one subject per channel)".into()),
        subjects: vec![n.history_wildcard()],
        storage: stream::StorageType::File,
        max_messages_per_subject: o.history_max_size.max(1) as i64,
        max_bytes: o.history_max_bytes,
        max_messages: o.history_max_messages,
        max_age: meta_ttl,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: IDEMPOTENCY_WINDOW.min(meta_ttl),
        republish: Some(stream::Republish {
            source: n.history_wildcard(),
            destination: n.live_wildcard(),
            headers_only: false,
        }),
        allow_direct: true,
        allow_rollup: false,
        num_replicas: 1,
        ..Default::default()
    };
    let history = match js.create_stream(cfg.clone()).await {
        Ok(s) => s,
        Err(e) => {
            // Exists (possibly with other limits): bring it to ours.
            match js.update_stream(cfg).await {
                Ok(_) => js.get_stream(&n.history_stream).await.map_err(|e| retry("history stream", &e))?,
                Err(e2) => return Err(retry("history stream", &format!("{e}; update: {e2}"))),
            }
        }
    };
    let presence = kv_bucket(&js, &n.presence_bucket, o.presence_ttl.max(Duration::from_secs(1)), "Gyre presence")
        .await
        .map_err(|e| retry("presence bucket", &e))?;
    let idempotency = kv_bucket(&js, &n.idempotency_bucket, IDEMPOTENCY_WINDOW, "Gyre idempotency keys")
        .await
        .map_err(|e| retry("idempotency bucket", &e))?;
    let conn = Arc::new(Conn { client, js, history, presence, idempotency });
    start_control(inner, &conn).await.map_err(|e| retry("control subscription", &e))?;
    Ok(conn)
}

/// A KV bucket, created as a plain stream: `Context::create_key_value`
/// queries account info first, whose reply from nats-server 2.9 async-nats
/// 0.51 cannot parse. The stream settings are those of a KV bucket.
async fn kv_bucket(js: &jetstream::Context, name: &str, ttl: Duration, what: &str) -> Result<kv::Store, String> {
    let cfg = stream::Config {
        name: format!("KV_{name}"),
        description: Some(what.to_string()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        storage: stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        duplicate_window: ttl.min(Duration::from_secs(120)),
        num_replicas: 1,
        ..Default::default()
    };
    if let Err(e) = js.create_stream(cfg.clone()).await {
        js.update_stream(cfg).await.map_err(|e2| format!("{e}; update: {e2}"))?;
    }
    js.get_key_value(name).await.map_err(|e| e.to_string())
}

async fn start_control(inner: &Arc<Inner>, conn: &Conn) -> Result<(), String> {
    let Some(handler) = inner.handler().cloned() else {
        return Ok(());
    };
    let mut all = conn.client.subscribe(inner.names.control()).await.map_err(|e| e.to_string())?;
    let uid = handler.node_uid();
    let mut direct = if uid.is_empty() {
        None
    } else {
        Some(conn.client.subscribe(inner.names.control_node(&uid)).await.map_err(|e| e.to_string())?)
    };
    conn.client.flush().await.map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        loop {
            let msg = match &mut direct {
                Some(d) => tokio::select! {
                    m = all.next() => m,
                    m = d.next() => m,
                },
                None => all.next().await,
            };
            let Some(msg) = msg else { return };
            handler.handle_control(msg.payload);
        }
    });
    if let Some(old) = inner.control_task.lock().replace(task) {
        old.abort();
    }
    Ok(())
}

/// Delivery state of one channel on this node.
struct ChanState {
    /// Last delivered stored offset and its epoch (None: nothing known).
    last: Option<(u64, String)>,
    /// Last delivered publication (delta base).
    prev: Option<Arc<Publication>>,
}

async fn channel_task(
    inner: Weak<Inner>,
    channel: String,
    mut sub: async_nats::Subscriber,
    mut rx: mpsc::UnboundedReceiver<ChanCmd>,
    last: Option<(u64, String)>,
) {
    let mut st = ChanState { last, prev: None };
    loop {
        tokio::select! {
            biased;
            cmd = rx.recv() => match cmd {
                Some(ChanCmd::Check) => {
                    let Some(inner) = inner.upgrade() else { return };
                    check_position(&inner, &channel, &mut st).await;
                }
                None => return,
            },
            msg = sub.next() => {
                let Some(msg) = msg else { return };
                let Some(inner) = inner.upgrade() else { return };
                handle_live(&inner, &channel, &mut st, msg).await;
            }
        }
    }
}

async fn handle_live(inner: &Arc<Inner>, channel: &str, st: &mut ChanState, msg: async_nats::Message) {
    // Backpressure from the node's fan-out (see gyre-node's fanout.rs):
    // this channel's delivery task waits here, never a runtime thread.
    if let Some(h) = inner.handler() {
        h.delivery_room().await;
    }
    let headers = msg.headers.unwrap_or_default();
    let kind = headers.get(history::H_KIND).map(|v| v.as_str().to_string()).unwrap_or_default();
    let offset: u64 = headers.get(history::H_OFFSET).and_then(|v| v.as_str().parse().ok()).unwrap_or(0);
    if kind != history::KIND_PUB || offset == 0 {
        if kind != history::KIND_MARK {
            inner.deliver(channel, &kind, &msg.payload, 0, "", None);
        }
        return;
    }
    let epoch = headers.get(history::H_EPOCH).map(|v| v.as_str().to_string()).unwrap_or_default();
    if let Some(seq) = headers.get("Nats-Sequence").and_then(|v| v.as_str().parse::<u64>().ok()) {
        let size = headers.get(history::H_SIZE).and_then(|v| v.as_str().parse().ok()).unwrap_or(0);
        let mut tops = inner.tops.lock();
        if tops.len() >= MAX_CACHED_TOPS {
            tops.clear();
        }
        let newer = tops.get(channel).is_none_or(|t| t.seq < seq);
        if newer {
            tops.insert(channel.to_string(), Top { seq, offset, epoch: epoch.clone(), size });
        }
    }
    if let Some((lo, le)) = &st.last
        && *le == epoch
    {
        if offset <= *lo {
            return; // already delivered (from history while filling a gap)
        }
        if offset > lo + 1 {
            tracing::info!(channel, from = lo + 1, to = offset - 1, "gap in live publications: filling from history");
            fill(inner, channel, st).await;
            if st.last.as_ref().is_some_and(|(lo, le)| *le == epoch && offset <= *lo) {
                return;
            }
        }
    }
    let delta = headers.get(history::H_DELTA).is_some();
    let prev = if delta { st.prev.clone().filter(|p| p.offset + 1 == offset) } else { None };
    if let Some(p) = inner.deliver(channel, &kind, &msg.payload, offset, &epoch, prev) {
        st.prev = Some(p);
    }
    st.last = Some((offset, epoch));
}

/// Delivers what history has after the last delivered offset (same epoch),
/// or everything of a new epoch.
async fn fill(inner: &Arc<Inner>, channel: &str, st: &mut ChanState) {
    let Ok(conn) = inner.conn() else { return };
    let since = st.last.as_ref().map(|(o, _)| *o).unwrap_or(0);
    let q = HistoryQuery {
        since: Some(since),
        limit: None,
        reverse: false,
        meta_ttl: Duration::ZERO,
        ensure_stream: false,
    };
    let (pubs, top) = match history::read(inner, &conn, channel, &q, false).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(channel, error = %e, "history read to fill a gap failed: subscribers will detect the gap");
            return;
        }
    };
    let same_epoch = st.last.as_ref().is_some_and(|(_, e)| *e == top.epoch);
    let (pubs, _) = if same_epoch {
        (pubs, ())
    } else {
        // A new epoch: deliver all of it (subscribers see the epoch change).
        let q =
            HistoryQuery { since: None, limit: None, reverse: false, meta_ttl: Duration::ZERO, ensure_stream: false };
        match history::read(inner, &conn, channel, &q, false).await {
            Ok((p, _)) => (p, ()),
            Err(_) => return,
        }
    };
    let Some(handler) = inner.handler() else { return };
    for p in pubs {
        if same_epoch && st.last.as_ref().is_some_and(|(lo, _)| p.offset <= *lo) {
            continue;
        }
        let offset = p.offset;
        let p = Arc::new(p);
        handler.handle_publication(channel, p.clone(), &top.epoch, None);
        st.prev = Some(p);
        st.last = Some((offset, top.epoch.clone()));
    }
}

async fn check_position(inner: &Arc<Inner>, channel: &str, st: &mut ChanState) {
    let Ok(conn) = inner.conn() else { return };
    // The resubscription went out before the reconnect event; make sure the
    // server has it before reading the top, so nothing falls in between.
    let _ = tokio::time::timeout(inner.opts.write_timeout, conn.client.flush()).await;
    inner.tops.lock().remove(channel);
    let top = match history::last(inner, &conn, channel).await {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(channel, error = %e, "position check failed");
            return;
        }
    };
    let behind = match &st.last {
        Some((lo, le)) => *le != top.epoch || top.offset > *lo,
        None => top.offset > 0,
    };
    if behind {
        tracing::info!(
            channel,
            top = top.offset,
            "missed publications while disconnected: delivering them from history"
        );
        fill(inner, channel, st).await;
    }
}

fn encode<M: prost::Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

#[async_trait]
impl Broker for NatsEngine {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.inner.handler.set(handler);
        // Connected before the handler arrived: subscribe control now.
        let inner = self.inner.clone();
        if inner.conn.read().is_some() {
            tokio::spawn(async move {
                if let Ok(conn) = inner.conn()
                    && let Err(e) = start_control(&inner, &conn).await
                {
                    tracing::error!(error = %e, "control subscription failed");
                }
            });
        }
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        check_channel(channel)?;
        let inner = &self.inner;
        if inner.chans.lock().contains_key(channel) {
            return Ok(());
        }
        let conn = inner.conn()?;
        let sub = conn.client.subscribe(inner.names.live(channel)).await.map_err(unavailable)?;
        inner.timed("subscribe", conn.client.flush()).await?;
        // Where the stream is now: live messages at or below are covered by
        // the history reads subscribers make after this returns.
        inner.tops.lock().remove(channel);
        let last = history::last(inner, &conn, channel).await?.map(|t| (t.offset, t.epoch));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(channel_task(Arc::downgrade(inner), channel.to_string(), sub, rx, last));
        if let Some(old) = inner.chans.lock().insert(channel.to_string(), ChanHandle { tx, task }) {
            old.task.abort();
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        check_channel(channel)?;
        if let Some(h) = self.inner.chans.lock().remove(channel) {
            // Dropping the subscriber (with the task) unsubscribes from NATS.
            h.task.abort();
        }
        self.inner.tops.lock().remove(channel);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &PublishOptions,
    ) -> Result<PublishResult, EngineError> {
        check_channel(channel)?;
        let inner = &self.inner;
        let conn = inner.conn()?;
        if !opts.with_history() {
            if let Some(key) = &opts.idempotency_key {
                let k = subject::idempotency_key(channel, key);
                let create = conn.idempotency.create(&k, Bytes::new());
                match tokio::time::timeout(inner.opts.write_timeout, create).await {
                    Ok(Ok(_)) => {}
                    // The key exists: a duplicate within the window (told by
                    // the error kind, not by the wording of the message).
                    Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                        return Ok(PublishResult { position: StreamPosition::default(), suppressed: true });
                    }
                    Ok(Err(e)) => return Err(unavailable(format!("idempotency: {e}"))),
                    Err(_) => return Err(EngineError::Timeout(format!("idempotency: {:?}", inner.opts.write_timeout))),
                }
            }
            publication.offset = 0;
            let mut h = HeaderMap::new();
            h.insert(history::H_KIND, history::KIND_PUB);
            inner.publish_core(&conn, inner.names.live(channel), h, encode(&publication)).await?;
            return Ok(PublishResult::default());
        }
        let ttl_ms = opts.history_ttl.as_millis() as u64;
        let size = opts.history_size as u64;
        let delta = opts.delta;
        let make = move |top: Option<&Top>| {
            let (offset, epoch) = match top {
                Some(t) => (t.offset + 1, t.epoch.clone()),
                None => (1, gyre_node::memory::new_epoch()),
            };
            let mut p = publication.clone();
            p.offset = offset;
            let mut h = HeaderMap::new();
            h.insert(history::H_KIND, history::KIND_PUB);
            h.insert(history::H_OFFSET, offset.to_string().as_str());
            h.insert(history::H_EPOCH, epoch.as_str());
            h.insert(history::H_SIZE, size.to_string().as_str());
            h.insert(history::H_EXPIRE, (history::now_ms() + ttl_ms).to_string().as_str());
            if delta {
                h.insert(history::H_DELTA, "1");
            }
            (offset, epoch, h, encode(&p))
        };
        let msg_id = opts.idempotency_key.as_ref().map(|k| subject::idempotency_key(channel, k));
        let (top, duplicate) = inner.store(&conn, channel, msg_id, &make).await?;
        Ok(PublishResult { position: StreamPosition { offset: top.offset, epoch: top.epoch }, suppressed: duplicate })
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        check_channel(channel)?;
        let conn = self.inner.conn()?;
        let mut h = HeaderMap::new();
        h.insert(history::H_KIND, history::KIND_JOIN);
        self.inner.publish_core(&conn, self.inner.names.live(channel), h, encode(&info)).await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        check_channel(channel)?;
        let conn = self.inner.conn()?;
        let mut h = HeaderMap::new();
        h.insert(history::H_KIND, history::KIND_LEAVE);
        self.inner.publish_core(&conn, self.inner.names.live(channel), h, encode(&info)).await
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<(Vec<Publication>, StreamPosition), EngineError> {
        check_channel(channel)?;
        let conn = self.inner.conn()?;
        history::read(&self.inner, &conn, channel, query, query.ensure_stream).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        check_channel(channel)?;
        let conn = self.inner.conn()?;
        history::remove(&self.inner, &conn, channel).await
    }

    async fn publish_control(&self, data: Bytes, to_node: Option<&str>) -> Result<(), EngineError> {
        let conn = self.inner.conn()?;
        let subject = match to_node {
            Some(uid) => self.inner.names.control_node(uid),
            None => self.inner.names.control(),
        };
        self.inner.publish_core(&conn, subject, HeaderMap::new(), data).await
    }

    fn health(&self) -> EngineHealth {
        NatsEngine::health(self)
    }
}

#[async_trait]
impl PresenceManager for NatsEngine {
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        check_channel(channel)?;
        let conn = self.inner.conn()?;
        let entries = history::presence_entries(&self.inner, &conn, channel).await?;
        let mut out = HashMap::with_capacity(entries.len());
        for (client, payload) in entries {
            match ClientInfo::decode(payload.as_ref()) {
                Ok(info) => {
                    out.insert(client, info);
                }
                Err(e) => tracing::warn!(channel, error = %e, "undecodable presence entry"),
            }
        }
        Ok(out)
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        check_channel(channel)?;
        let p = self.presence(channel).await?;
        let users: std::collections::HashSet<&str> = p.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats { num_clients: p.len() as u32, num_users: users.len() as u32 })
    }

    async fn add_presence(&self, channel: &str, client_id: &str, info: ClientInfo) -> Result<(), EngineError> {
        check_channel(channel)?;
        let conn = self.inner.conn()?;
        let key = self.inner.names.presence_key(channel, client_id);
        self.inner.timed("presence put", conn.presence.put(key, encode(&info))).await.map(|_| ())
    }

    async fn remove_presence(&self, channel: &str, client_id: &str, _user: &str) -> Result<(), EngineError> {
        check_channel(channel)?;
        let conn = self.inner.conn()?;
        let key = self.inner.names.presence_key(channel, client_id);
        self.inner.timed("presence purge", conn.presence.purge(key)).await
    }

    fn health(&self) -> EngineHealth {
        NatsEngine::health(self)
    }
}
