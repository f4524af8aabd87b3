//! The fan-out thread: hands publications, joins and leaves to the hub off
//! the publisher's path.
//!
//! Why: putting a publication into every local subscriber's queue costs a
//! queue push and a task wake-up per subscriber (~0.8 µs each, measured: 8 ms
//! for 10,000 subscribers). Done inline, that is time the publishing request
//! (an HTTP `/api/publish`, a client's `publish` command, the NATS
//! subscription) spends before it can answer, so the server API's latency
//! grew with the audience of the channel. The broker now accepts the
//! publication (offset assigned, history stored) and the fan-out happens
//! here, right after.
//!
//! Order: one consumer, fed in the order the broker produced events (the
//! memory broker sends while holding the channel's shard lock, the NATS
//! engine from its single ordered delivery path), so offsets still reach the
//! hub in order and positioned subscribers see no reordering.
//!
//! Failure modes: a fan-out that falls behind fills the bounded channel and
//! then the publisher waits (backpressure instead of unbounded memory); it
//! never deadlocks, because the consumer is its own OS thread and the hub
//! never waits on a publisher or a socket. If the thread cannot be started
//! or has stopped, events are fanned out inline as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use gyre_proto::protocol::{ClientInfo, Publication};

use crate::hub::Hub;
use crate::metrics::Counters;

/// Events queued at most before publishers wait for the fan-out.
const CAPACITY: usize = 4096;

/// Channels with at most this many local subscribers are fanned out inline
/// when nothing is queued: the inline enqueue costs under a millisecond, and
/// a hand-off to the thread per publication costs more than it saves (many
/// small channels at a high publication rate).
const INLINE_MAX_SUBSCRIBERS: usize = 512;

/// One event for the hub.
pub(crate) enum Job {
    /// A publication (with its stream epoch and, for delta, the previous one).
    Publication { channel: Box<str>, publication: Arc<Publication>, epoch: Box<str>, prev: Option<Arc<Publication>> },
    /// A join push.
    Join { channel: Box<str>, info: ClientInfo },
    /// A leave push.
    Leave { channel: Box<str>, info: ClientInfo },
    /// Answered once every event queued before it has reached the hub.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The hub's side of the broker events.
pub(crate) struct Fanout {
    hub: Arc<Hub>,
    counters: Arc<Counters>,
    /// `None`: inline mode (the thread could not be started).
    tx: Option<SyncSender<Job>>,
    /// Jobs queued and not yet finished. Inline delivery is allowed only at
    /// zero, which keeps every channel's events in order: whatever was queued
    /// before has reached the hub.
    pending: Arc<AtomicUsize>,
}

impl Fanout {
    /// Starts the fan-out thread. It ends when this value is dropped.
    pub(crate) fn start(hub: Arc<Hub>, counters: Arc<Counters>) -> Fanout {
        let (tx, rx) = sync_channel(CAPACITY);
        let pending = Arc::new(AtomicUsize::new(0));
        let (h, c, p) = (hub.clone(), counters.clone(), pending.clone());
        let tx = match std::thread::Builder::new().name("gyre-fanout".into()).spawn(move || consume(&h, &c, &p, rx)) {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "fan-out thread not started; fanning out inline");
                None
            }
        };
        Fanout { hub, counters, tx, pending }
    }

    /// Resolves once every event queued so far has been handed to the hub.
    pub(crate) async fn settled(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Barrier(tx));
        let _ = rx.await;
    }

    /// Queues an event; waits only while the fan-out is `CAPACITY` events behind.
    pub(crate) fn send(&self, job: Job) {
        let Some(tx) = &self.tx else {
            return run(&self.hub, &self.counters, job);
        };
        let small = match &job {
            Job::Publication { channel, .. } | Job::Join { channel, .. } | Job::Leave { channel, .. } => {
                self.hub.num_channel_subscribers(channel) <= INLINE_MAX_SUBSCRIBERS
            }
            Job::Barrier(_) => false,
        };
        if small && self.pending.load(Ordering::Acquire) == 0 {
            return run(&self.hub, &self.counters, job);
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        let job = match tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(job)) => {
                crate::metrics::Counters::add(&self.counters.fanout_backpressure, 1);
                match tx.send(job) {
                    Ok(()) => return,
                    Err(e) => e.0,
                }
            }
            Err(TrySendError::Disconnected(job)) => job,
        };
        // The thread is gone (it only stops when this value is dropped, or if
        // the hub panicked): deliver here rather than lose the event.
        run(&self.hub, &self.counters, job);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn consume(hub: &Hub, counters: &Counters, pending: &AtomicUsize, rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        run(hub, counters, job);
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn run(hub: &Hub, counters: &Counters, job: Job) {
    match job {
        Job::Publication { channel, publication, epoch, prev } => {
            let n = hub.broadcast_publication(&channel, &publication, &epoch, prev.as_ref());
            Counters::add(&counters.publications_received, 1);
            Counters::add(&counters.publications_sent, n as u64);
        }
        Job::Join { channel, info } => {
            let n = hub.broadcast_join(&channel, info);
            Counters::add(&counters.join_leave_sent, n as u64);
        }
        Job::Leave { channel, info } => {
            let n = hub.broadcast_leave(&channel, info);
            Counters::add(&counters.join_leave_sent, n as u64);
        }
        Job::Barrier(done) => {
            let _ = done.send(());
        }
    }
}
