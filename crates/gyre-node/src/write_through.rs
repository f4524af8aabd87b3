//! When broadcasters may write frames straight to sockets (write-through,
//! see `shared.rs`): while the process has CPU to spare. A leaf: it knows
//! nothing of the hub or of sockets.
//!
//! Write-through costs one syscall per delivery and saves the connection's
//! task a wake-up: the cheapest path for latency while the server has
//! headroom, and the wrong one once it is saturated, where queued frames are
//! written several to a syscall by each connection's own task and the same
//! core delivers twice as much. Measured (BENCHMARKS.md, chan10-10k-pubmax:
//! 1,000 channels of 10, publishers flat out): writing through on the
//! publishers' thread halved the publications accepted per second (33.8k →
//! 15.3k). Timing the broadcasts themselves was tried first and did not
//! work: on a shared core their wall time includes the other threads'.
//!
//! The rule: once per [`WINDOW`] (250 ms), the process's CPU time over the window
//! (from `/proc/self/stat`, in USER_HZ ticks of 10 ms) is compared with the
//! cores it may use. While writing through, a window above [`OFF_ABOVE`]
//! of them turns it off; while queueing, a window under [`ON_BELOW`] turns
//! it back on; the gap keeps a load in between from flapping. Where
//! `/proc` cannot be read, write-through stays on. The window is checked
//! when a broadcast ends, so an idle node does no work for it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long one measurement window is: long enough to average a 10,000
/// subscriber broadcast (~60 ms of one core) with the quiet between
/// publications, short enough that a saturated node switches within a
/// quarter of a second. CPU time comes in 10 ms ticks: 4 % of a window.
pub const WINDOW: Duration = Duration::from_millis(250);
/// CPU use (of the cores the process may use) that turns write-through off.
pub const OFF_ABOVE: f64 = 0.8;
/// CPU use (while queueing) that turns it back on.
pub const ON_BELOW: f64 = 0.6;

/// Whether write-through stays allowed after a window with `cpu` use
/// (a fraction of the usable cores), given whether it was allowed.
pub fn decide(allowed: bool, cpu: f64) -> bool {
    if allowed { cpu <= OFF_ABOVE } else { cpu < ON_BELOW }
}

/// The node's write-through switch.
#[derive(Debug)]
pub struct Gate {
    window_start_ns: AtomicU64,
    ticks_at_start: AtomicU64,
    allowed: AtomicBool,
    cores: f64,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            window_start_ns: AtomicU64::new(0),
            ticks_at_start: AtomicU64::new(0),
            allowed: AtomicBool::new(true),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        }
    }
}

fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// This process's user + system CPU time in USER_HZ ticks (utime and
/// stime, fields 14 and 15 of `/proc/self/stat`).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ').skip(11);
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// USER_HZ: 100 on every Linux architecture Gyre builds for.
const TICKS_PER_SEC: f64 = 100.0;

impl Gate {
    /// Whether broadcasts may write through now.
    pub fn allowed(&self) -> bool {
        self.allowed.load(Ordering::Relaxed)
    }

    /// Called when a broadcast ends: closes the window if it is over. The
    /// first call opens the first window (what the process did before its
    /// first broadcast, such as accepting its connections, does not count).
    pub fn tick(&self) {
        let now = now_ns().max(1);
        let start = self.window_start_ns.load(Ordering::Relaxed);
        if start == 0 {
            if self.window_start_ns.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                self.ticks_at_start.store(cpu_ticks().unwrap_or(0), Ordering::Relaxed);
            }
            return;
        }
        let elapsed = now.saturating_sub(start);
        if elapsed < WINDOW.as_nanos() as u64 {
            return;
        }
        // One broadcaster closes the window; the others go on.
        if self.window_start_ns.compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return;
        }
        let Some(ticks) = cpu_ticks() else { return };
        let used = ticks.saturating_sub(self.ticks_at_start.swap(ticks, Ordering::Relaxed));
        let cpu = used as f64 / TICKS_PER_SEC / (elapsed as f64 / 1e9) / self.cores;
        let on = self.allowed.load(Ordering::Relaxed);
        let next = decide(on, cpu);
        if next != on {
            tracing::debug!(cpu, write_through = next, "write-through switched");
        }
        self.allowed.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (CPU use of each window) → allowed after the last, starting allowed.
    #[test]
    fn the_switch_follows_cpu_use_with_a_gap() {
        let table: &[(&[f64], bool)] = &[
            (&[0.0], true),
            (&[0.35], true),
            (&[0.8], true),
            (&[0.95], false),
            (&[0.95, 0.7], false),
            (&[0.95, 0.7, 0.59], true),
            (&[1.0, 0.3, 0.79], true),
            (&[1.0, 0.3, 0.81], false),
        ];
        for &(windows, want) in table {
            let got = windows.iter().fold(true, |on, &cpu| decide(on, cpu));
            assert_eq!(got, want, "{windows:?}");
        }
    }

    #[test]
    fn cpu_time_is_read_from_proc() {
        let a = cpu_ticks().expect("/proc/self/stat");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_ticks().expect("/proc/self/stat") >= a);
    }
}
