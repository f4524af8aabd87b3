//! The fan-out: hands publications, joins and leaves to the hub, for large
//! channels on a thread of its own, off the publisher's path.
//!
//! Why a thread: putting a publication into every local subscriber's queue
//! costs a queue push and a task wake-up per subscriber (~0.8 µs each,
//! measured: 8 ms for 10,000 subscribers). Done inline, that is time the
//! publishing request spends before it can answer, so the server API's
//! latency grew with the audience of the channel. Channels with at most
//! [`INLINE_MAX_SUBSCRIBERS`] local subscribers are still delivered inline
//! when nothing is queued (a hand-off costs more than it saves there).
//!
//! Order: one consumer, fed in the order the broker produced events (the
//! memory broker sends while holding the channel's shard lock, the NATS
//! engine from its ordered per-channel delivery path); inline delivery only
//! happens when nothing is queued. Offsets reach the hub in order.
//!
//! # Backpressure policy
//!
//! The queue to the thread is never waited on by a sender: `send` only
//! appends (it runs inside `MemoryBroker::publish` under a shard lock, and on
//! runtime threads, which must never block). Memory is bounded instead by
//! budgets of pending *deliveries* (a job weighs as many deliveries as its
//! channel had local subscribers when queued), in two lanes so that a flood
//! of joins and leaves cannot starve publishing and vice versa:
//!
//! - publications: [`PUBLICATION_BUDGET`]. Before a publication is stored,
//!   [`Node::publish`](crate::node::Node::publish) awaits
//!   [`Fanout::publication_room`]: up to [`ROOM_WAIT`] for the lane to drop
//!   under its budget, asynchronously (the runtime thread serves others
//!   meanwhile). No room by then: the publish fails with error 100 before
//!   anything was stored or sent — the publisher learns of it, nothing is
//!   lost silently.
//! - joins and leaves: [`JOIN_LEAVE_BUDGET`]. The node awaits
//!   [`Fanout::join_leave_room`] the same way; with no room by the deadline
//!   the event is dropped, logged and counted
//!   (`gyre_fanout_join_leave_dropped_total`): join/leave pushes are
//!   best-effort in Centrifugo too, and a subscription never fails for one.
//! - events from other nodes (NATS): the engine awaits
//!   [`Fanout::delivery_room`] before each live delivery, up to
//!   [`ROOM_WAIT`]; after that it delivers anyway (counted as backpressure)
//!   rather than drop a publication that was already stored and acknowledged.
//!
//! The budgets are soft: concurrent publishers that all saw room can each add
//! one job. If the thread cannot be started, events are delivered inline.
//!
//! # Write-through and falling behind
//!
//! A subscriber whose socket is idle gets a publication's frame written
//! straight to its socket by whoever broadcasts (`shared.rs`): one syscall,
//! no wake-up of its task. That is the cheapest delivery when events are
//! sparse, and the most expensive when they are not: a syscall per delivery
//! where queued frames would have been written 16 to a syscall by each
//! connection's own task. So the thread writes through only while no other
//! job waits behind the current one (asked every 64 subscribers); once one
//! does, the rest of the broadcast is queued. Measured (BENCHMARKS.md,
//! fanout-2k-max): always writing through, the thread fell behind and p99
//! grew from 30 to 500 ms. Inline deliveries run with nothing queued, but
//! on the publisher's thread; for them and the thread alike, the node-wide
//! [`crate::write_through::Gate`] turns write-through off while the
//! process is CPU-saturated (publishers flat out), where batching wins.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use gyre_proto::protocol::{ClientInfo, Publication};
use tokio::sync::Notify;

use crate::hub::Hub;
use crate::metrics::Counters;

/// Pending publication deliveries allowed before publishers wait.
pub const PUBLICATION_BUDGET: usize = 1_000_000;
/// Pending join/leave deliveries allowed before joins and leaves wait.
pub const JOIN_LEAVE_BUDGET: usize = 100_000;
/// How long a publisher (or join/leave) waits for room.
pub const ROOM_WAIT: Duration = Duration::from_secs(5);

/// Channels with at most this many local subscribers are fanned out inline
/// when nothing is queued.
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lane {
    Publications,
    JoinLeave,
    None,
}

impl Job {
    fn lane(&self) -> Lane {
        match self {
            Job::Publication { .. } => Lane::Publications,
            Job::Join { .. } | Job::Leave { .. } => Lane::JoinLeave,
            Job::Barrier(_) => Lane::None,
        }
    }
}

/// Counters shared with the thread.
struct State {
    /// Jobs queued and not yet finished: inline delivery only at zero.
    jobs: AtomicUsize,
    /// Pending deliveries per lane.
    publications: AtomicUsize,
    join_leave: AtomicUsize,
    /// Budgets (constants in production; tests shrink them).
    publication_budget: AtomicUsize,
    join_leave_budget: AtomicUsize,
    /// Woken whenever the thread finishes a job and someone waits for room.
    room: Notify,
    /// Whether broadcasts may write through (from how busy broadcasting keeps the node).
    gate: crate::write_through::Gate,
    waiting: AtomicUsize,
    /// Tests: while set, the thread waits before each job.
    #[cfg(test)]
    stalled: std::sync::atomic::AtomicBool,
}

impl State {
    fn lane(&self, lane: Lane) -> Option<(&AtomicUsize, &AtomicUsize)> {
        match lane {
            Lane::Publications => Some((&self.publications, &self.publication_budget)),
            Lane::JoinLeave => Some((&self.join_leave, &self.join_leave_budget)),
            Lane::None => None,
        }
    }

    fn has_room(&self, lane: Lane) -> bool {
        self.lane(lane).is_none_or(|(n, max)| n.load(Ordering::Acquire) < max.load(Ordering::Relaxed))
    }

    fn finished(&self, lane: Lane, weight: usize) {
        if let Some((n, _)) = self.lane(lane) {
            n.fetch_sub(weight, Ordering::AcqRel);
        }
        self.jobs.fetch_sub(1, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.room.notify_waiters();
        }
    }
}

/// The hub's side of the broker events.
pub(crate) struct Fanout {
    hub: Arc<Hub>,
    counters: Arc<Counters>,
    /// `None`: inline mode (the thread could not be started).
    tx: Option<Sender<(Job, usize)>>,
    state: Arc<State>,
}

impl Fanout {
    /// Starts the fan-out thread. It ends when this value is dropped.
    pub(crate) fn start(hub: Arc<Hub>, counters: Arc<Counters>) -> Fanout {
        let (tx, rx) = channel();
        let state = Arc::new(State {
            jobs: AtomicUsize::new(0),
            publications: AtomicUsize::new(0),
            join_leave: AtomicUsize::new(0),
            publication_budget: AtomicUsize::new(PUBLICATION_BUDGET),
            join_leave_budget: AtomicUsize::new(JOIN_LEAVE_BUDGET),
            room: Notify::new(),
            gate: Default::default(),
            waiting: AtomicUsize::new(0),
            #[cfg(test)]
            stalled: std::sync::atomic::AtomicBool::new(false),
        });
        let (h, c, s) = (hub.clone(), counters.clone(), state.clone());
        let tx = match std::thread::Builder::new().name("gyre-fanout".into()).spawn(move || consume(&h, &c, &s, rx)) {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "fan-out thread not started; fanning out inline");
                None
            }
        };
        Fanout { hub, counters, tx, state }
    }

    /// Tests: shrinks the budgets.
    #[cfg(test)]
    pub(crate) fn set_budgets(&self, publications: usize, join_leave: usize) {
        self.state.publication_budget.store(publications, Ordering::Relaxed);
        self.state.join_leave_budget.store(join_leave, Ordering::Relaxed);
    }

    /// Tests: stalls the thread while the guard lives.
    #[cfg(test)]
    pub(crate) fn stall(&self) -> Stall<'_> {
        self.state.stalled.store(true, Ordering::SeqCst);
        Stall(&self.state)
    }

    /// Resolves once every event queued so far has been handed to the hub.
    pub(crate) async fn settled(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Barrier(tx));
        let _ = rx.await;
    }

    async fn room(&self, lane: Lane, wait: Duration) -> bool {
        if self.state.has_room(lane) {
            return true;
        }
        Counters::add(&self.counters.fanout_backpressure, 1);
        self.state.waiting.fetch_add(1, Ordering::AcqRel);
        let deadline = tokio::time::Instant::now() + wait;
        let ok = loop {
            let notified = self.state.room.notified();
            if self.state.has_room(lane) {
                break true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break self.state.has_room(lane);
            }
        };
        self.state.waiting.fetch_sub(1, Ordering::AcqRel);
        ok
    }

    /// Waits (up to [`ROOM_WAIT`]) until the publication lane is under its
    /// budget; false when it stayed full (the publish must fail).
    pub(crate) async fn publication_room(&self) -> bool {
        self.room(Lane::Publications, ROOM_WAIT).await
    }

    /// As [`Self::publication_room`] for joins and leaves.
    pub(crate) async fn join_leave_room(&self) -> bool {
        self.room(Lane::JoinLeave, ROOM_WAIT).await
    }

    /// For events from other nodes: waits up to [`ROOM_WAIT`] for room in
    /// both lanes, then lets the delivery proceed either way (see the policy
    /// in the module docs).
    pub(crate) async fn delivery_room(&self) {
        if !self.room(Lane::Publications, ROOM_WAIT).await || !self.room(Lane::JoinLeave, ROOM_WAIT).await {
            tracing::warn!("fan-out still full after the wait: delivering a remote event over budget");
        }
    }

    /// Queues an event or delivers it inline. Never waits.
    pub(crate) fn send(&self, job: Job) {
        let Some(tx) = &self.tx else {
            return run(&self.hub, &self.counters, &self.state, job);
        };
        let subscribers = match &job {
            Job::Publication { channel, .. } | Job::Join { channel, .. } | Job::Leave { channel, .. } => {
                self.hub.num_channel_subscribers(channel)
            }
            Job::Barrier(_) => usize::MAX,
        };
        if subscribers <= INLINE_MAX_SUBSCRIBERS && self.state.jobs.load(Ordering::Acquire) == 0 {
            return run(&self.hub, &self.counters, &self.state, job);
        }
        let lane = job.lane();
        let weight = if lane == Lane::None { 0 } else { subscribers.max(1) };
        if let Some((n, _)) = self.state.lane(lane) {
            n.fetch_add(weight, Ordering::AcqRel);
        }
        self.state.jobs.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = tx.send((job, weight)) {
            // The thread is gone (only if the hub panicked): deliver here
            // rather than lose the event.
            let (job, weight) = e.0;
            run(&self.hub, &self.counters, &self.state, job);
            self.state.finished(lane, weight);
        }
    }
}

/// Tests: the fan-out thread is stalled until this is dropped.
#[cfg(test)]
pub(crate) struct Stall<'a>(&'a State);

#[cfg(test)]
impl Drop for Stall<'_> {
    fn drop(&mut self) {
        self.0.stalled.store(false, Ordering::SeqCst);
    }
}

fn consume(hub: &Hub, counters: &Counters, state: &State, rx: Receiver<(Job, usize)>) {
    // The current job counts until it finishes: more than one is a backlog.
    let behind = || state.jobs.load(Ordering::Acquire) > 1 || !state.gate.allowed();
    while let Ok((job, weight)) = rx.recv() {
        #[cfg(test)]
        while state.stalled.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let lane = job.lane();
        run_with(hub, counters, &state.gate, job, &behind);
        state.finished(lane, weight);
    }
}

/// Delivers inline (nothing is queued: behind only by the gate).
fn run(hub: &Hub, counters: &Counters, state: &State, job: Job) {
    run_with(hub, counters, &state.gate, job, &|| !state.gate.allowed())
}

fn run_with(hub: &Hub, counters: &Counters, gate: &crate::write_through::Gate, job: Job, behind: &dyn Fn() -> bool) {
    let barrier = matches!(job, Job::Barrier(_));
    match job {
        Job::Publication { channel, publication, epoch, prev } => {
            let n = hub.broadcast_publication(&channel, &publication, &epoch, prev.as_ref(), behind);
            Counters::add(&counters.publications_received, 1);
            Counters::add(&counters.publications_sent, n as u64);
        }
        Job::Join { channel, info } => {
            let n = hub.broadcast_join(&channel, info, behind);
            Counters::add(&counters.join_leave_sent, n as u64);
        }
        Job::Leave { channel, info } => {
            let n = hub.broadcast_leave(&channel, info, behind);
            Counters::add(&counters.join_leave_sent, n as u64);
        }
        Job::Barrier(done) => {
            let _ = done.send(());
        }
    }
    if !barrier {
        gate.tick();
    }
}
