//! History streams in JetStream: reading a channel's messages, creating a
//! stream incarnation (epoch) on first read, `history_remove`, and presence
//! scans (same read machinery on the KV stream).
//!
//! Reads of a few publications behind the top (the usual recovery after a
//! short disconnect) walk back from the last message through the
//! `Gyre-Prev-Seq` header, one direct message get per publication. Longer
//! reads create a short-lived ephemeral consumer filtered on the channel's
//! subject and fetch everything it holds (at most `history_max_size`).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures_util::StreamExt;
use gyre_node::engine::{EngineError, HistoryQuery, StreamPosition};
use gyre_proto::protocol::Publication;
use prost::Message as _;

use crate::{Conn, Inner, Top, unavailable};

pub(crate) const H_KIND: &str = "Gyre-Kind";
pub(crate) const H_OFFSET: &str = "Gyre-Offset";
pub(crate) const H_EPOCH: &str = "Gyre-Epoch";
pub(crate) const H_SIZE: &str = "Gyre-Size";
pub(crate) const H_EXPIRE: &str = "Gyre-Expire";
pub(crate) const H_DELTA: &str = "Gyre-Delta";
pub(crate) const H_PREV_SEQ: &str = "Gyre-Prev-Seq";
pub(crate) const KIND_PUB: &str = "pub";
pub(crate) const KIND_JOIN: &str = "join";
pub(crate) const KIND_LEAVE: &str = "leave";
/// Position keeper: stream creation (offset 0) and `history_remove`.
pub(crate) const KIND_MARK: &str = "mark";

/// Reads of at most this many publications walk back instead of scanning.
const WALK_MAX: u64 = 32;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn header<T: std::str::FromStr>(h: &HeaderMap, name: &str) -> Option<T> {
    h.get(name).and_then(|v| v.as_str().parse().ok())
}

/// One stored message of a channel.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    seq: u64,
    prev_seq: u64,
    offset: u64,
    epoch: String,
    kind: String,
    size: u64,
    expire: u64,
    payload: Bytes,
}

impl Stored {
    fn parse(h: &HeaderMap, seq: u64, payload: Bytes) -> Option<Stored> {
        Some(Stored {
            seq,
            prev_seq: header(h, H_PREV_SEQ).unwrap_or(0),
            offset: header(h, H_OFFSET)?,
            epoch: h.get(H_EPOCH)?.as_str().to_string(),
            kind: h.get(H_KIND)?.as_str().to_string(),
            size: header(h, H_SIZE).unwrap_or(0),
            expire: header(h, H_EXPIRE).unwrap_or(0),
            payload,
        })
    }
    fn top(&self) -> Top {
        Top { seq: self.seq, offset: self.offset, epoch: self.epoch.clone(), size: self.size }
    }
}

/// The position a stored message stands for.
pub(crate) fn top_of(h: &HeaderMap, seq: u64) -> Option<Top> {
    Stored::parse(h, seq, Bytes::new()).map(|s| s.top())
}

async fn get(inner: &Inner, conn: &Conn, seq: Option<u64>, subject: &str) -> Result<Option<Stored>, EngineError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
    let req = async {
        match seq {
            Some(s) => conn.history.get_raw_message(s).await,
            None => conn.history.get_last_raw_message_by_subject(subject).await,
        }
    };
    match tokio::time::timeout(inner.opts.write_timeout, req).await {
        Err(_) => Err(unavailable(format!("history read on {subject}: timed out"))),
        Ok(Ok(m)) => Ok(Stored::parse(&m.headers, m.sequence, m.payload)),
        Ok(Err(e)) if e.kind() == K::NoMessageFound => Ok(None),
        Ok(Err(e)) => Err(unavailable(format!("history read on {subject}: {e}"))),
    }
}

/// The last stored message of a channel.
async fn last_stored(inner: &Inner, conn: &Conn, channel: &str) -> Result<Option<Stored>, EngineError> {
    get(inner, conn, None, &inner.names.history(channel)).await
}

/// The channel's current top (None: no stream).
pub(crate) async fn last(inner: &Inner, conn: &Conn, channel: &str) -> Result<Option<Top>, EngineError> {
    Ok(last_stored(inner, conn, channel).await?.map(|s| s.top()))
}

/// Starts a stream incarnation (offset 0, new epoch) unless someone did.
async fn create(inner: &Inner, conn: &Conn, channel: &str) -> Result<Stored, EngineError> {
    let epoch = gyre_node::memory::new_epoch();
    let mut h = HeaderMap::new();
    h.insert(H_KIND, KIND_MARK);
    h.insert(H_OFFSET, "0");
    h.insert(H_EPOCH, epoch.as_str());
    h.insert(H_SIZE, "0");
    h.insert(H_PREV_SEQ, "0");
    h.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    let subject = inner.names.history(channel);
    let ack = async {
        let f = conn.js.publish_with_headers(subject.clone(), h, Bytes::new()).await?;
        f.await
    };
    match tokio::time::timeout(inner.opts.write_timeout, ack).await {
        Err(_) => Err(unavailable(format!("create stream {channel}: timed out"))),
        Ok(Ok(ack)) => Ok(Stored {
            seq: ack.sequence,
            prev_seq: 0,
            offset: 0,
            epoch,
            kind: KIND_MARK.into(),
            size: 0,
            expire: 0,
            payload: Bytes::new(),
        }),
        Ok(Err(e)) if e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence => {
            last_stored(inner, conn, channel)
                .await?
                .ok_or_else(|| EngineError::Other(format!("stream {channel} vanished while created")))
        }
        Ok(Err(e)) => Err(unavailable(format!("create stream {channel}: {e}"))),
    }
}

/// Reads a subject (or filter) of `stream` with an ephemeral consumer:
/// `(stream sequence, subject, headers, payload)` in stream order.
pub(crate) async fn scan(
    inner: &Inner,
    stream: &stream::Stream,
    filter: String,
    policy: DeliverPolicy,
) -> Result<Vec<(u64, String, HeaderMap, Bytes)>, EngineError> {
    let work = async {
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.clone(),
                deliver_policy: policy,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let pending = consumer.cached_info().num_pending as usize;
        let mut out = Vec::with_capacity(pending);
        while out.len() < pending {
            let mut batch =
                consumer.fetch().max_messages(pending - out.len()).messages().await.map_err(|e| e.to_string())?;
            let before = out.len();
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| e.to_string())?;
                let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
                out.push((seq, m.subject.to_string(), m.headers.clone().unwrap_or_default(), m.payload.clone()));
            }
            if out.len() == before {
                break; // messages expired between info and fetch
            }
        }
        let name = consumer.cached_info().name.clone();
        let s = stream.clone();
        tokio::spawn(async move {
            let _ = s.delete_consumer(&name).await;
        });
        Ok::<_, String>(out)
    };
    match tokio::time::timeout(inner.opts.write_timeout * 2, work).await {
        Err(_) => Err(unavailable(format!("read {filter}: timed out"))),
        Ok(Err(e)) => Err(unavailable(format!("read {filter}: {e}"))),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Reads a channel's history. `create`: start a stream incarnation if there
/// is none (so the epoch a positioned subscriber gets stays valid), as the
/// memory engine does on any access.
pub(crate) async fn read(
    inner: &Inner,
    conn: &Conn,
    channel: &str,
    q: &HistoryQuery,
    create_missing: bool,
) -> Result<(Vec<Publication>, StreamPosition), EngineError> {
    let top = match last_stored(inner, conn, channel).await? {
        Some(t) => t,
        None if create_missing => create(inner, conn, channel).await?,
        None => return Ok((Vec::new(), StreamPosition::default())),
    };
    let pos = StreamPosition { offset: top.offset, epoch: top.epoch.clone() };
    if q.limit == Some(0) || top.offset == 0 {
        return Ok((Vec::new(), pos));
    }
    // Offsets above `low` are within the channel's history_size.
    let low = top.offset.saturating_sub(top.size);
    let after = if q.reverse { low } else { q.since.unwrap_or(0).max(low) };
    if after >= top.offset {
        return Ok((Vec::new(), pos));
    }
    let msgs: Vec<Stored> = if top.offset - after <= WALK_MAX {
        walk(inner, conn, top.clone(), after).await?
    } else {
        let subject = inner.names.history(channel);
        scan(inner, &conn.history, subject, DeliverPolicy::All)
            .await?
            .into_iter()
            .filter_map(|(seq, _, h, p)| Stored::parse(&h, seq, p))
            .filter(|s| s.epoch == top.epoch)
            .collect()
    };
    let now = now_ms();
    let cut = msgs.iter().filter(|m| m.kind == KIND_MARK).map(|m| m.offset).max().unwrap_or(0);
    let mut pubs: Vec<Publication> = msgs
        .into_iter()
        .filter(|m| m.kind == KIND_PUB && m.offset > cut && m.offset > after && m.expire > now)
        .filter_map(|m| {
            let mut p = Publication::decode(m.payload.as_ref()).ok()?;
            p.offset = m.offset;
            Some(p)
        })
        .collect();
    pubs.sort_by_key(|p| p.offset);
    pubs.dedup_by_key(|p| p.offset);
    let limit = q.limit.unwrap_or(usize::MAX);
    let pubs = if q.reverse {
        let before = q.since.unwrap_or(u64::MAX);
        pubs.into_iter().rev().filter(|p| p.offset < before).take(limit).collect()
    } else {
        pubs.into_iter().take(limit).collect()
    };
    Ok((pubs, pos))
}

/// From `top` back through `Gyre-Prev-Seq` down to offset `after + 1`
/// (or a marker, or a trimmed message).
async fn walk(inner: &Inner, conn: &Conn, top: Stored, after: u64) -> Result<Vec<Stored>, EngineError> {
    let subject = inner.names.history("");
    let mut out = Vec::new();
    let mut cur = top;
    loop {
        let stop = cur.kind == KIND_MARK || cur.offset <= after + 1 || cur.prev_seq == 0;
        let prev = cur.prev_seq;
        let epoch = cur.epoch.clone();
        out.push(cur);
        if stop {
            break;
        }
        match get(inner, conn, Some(prev), &subject).await? {
            Some(p) if p.epoch == epoch => cur = p,
            _ => break,
        }
    }
    out.reverse();
    Ok(out)
}

/// `history_remove`: a marker at the current position, then purge down to it.
pub(crate) async fn remove(inner: &Inner, conn: &Conn, channel: &str) -> Result<(), EngineError> {
    if last_stored(inner, conn, channel).await?.is_none() {
        return Ok(());
    }
    let make = |top: Option<&Top>| {
        let (offset, epoch, size) = match top {
            Some(t) => (t.offset, t.epoch.clone(), t.size),
            None => (0, gyre_node::memory::new_epoch(), 0),
        };
        let mut h = HeaderMap::new();
        h.insert(H_KIND, KIND_MARK);
        h.insert(H_OFFSET, offset.to_string().as_str());
        h.insert(H_EPOCH, epoch.as_str());
        h.insert(H_SIZE, size.to_string().as_str());
        (offset, epoch, h, Bytes::new())
    };
    inner.store(conn, channel, None, &make).await?;
    let subject = inner.names.history(channel);
    let purge = async { conn.history.purge().filter(subject).keep(1).await };
    match tokio::time::timeout(inner.opts.write_timeout, purge).await {
        Ok(Ok(_)) => Ok(()),
        // The marker already hides everything; the purge only frees storage.
        Ok(Err(e)) => {
            tracing::warn!(channel, error = %e, "history purge failed (items are hidden by the marker)");
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// Presence entries of a channel: `(client id, encoded ClientInfo)`.
pub(crate) async fn presence_entries(
    inner: &Inner,
    conn: &Conn,
    channel: &str,
) -> Result<Vec<(String, Bytes)>, EngineError> {
    let filter = inner.names.presence_filter(channel);
    let prefix = format!("$KV.{}.", inner.names.presence_bucket);
    let msgs = scan(inner, &conn.presence.stream, filter, DeliverPolicy::LastPerSubject).await?;
    let mut out = Vec::with_capacity(msgs.len());
    for (_, subject, h, payload) in msgs {
        if h.get("KV-Operation").is_some() {
            continue; // DEL / PURGE
        }
        let Some(key) = subject.strip_prefix(&prefix) else { continue };
        let Some((_, client)) = key.split_once('.') else { continue };
        if let Some(client) = crate::subject::untoken(client) {
            out.push((client, payload));
        }
    }
    Ok(out)
}
