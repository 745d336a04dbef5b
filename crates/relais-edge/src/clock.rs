//! Time as a parameter: everything that ages (freshness, grace, circuit breakers) reads an
//! injected [`Clock`] so tests move time forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;

    /// The time as of the kernel's last tick (1–4 ms ago): what the edge stamps on each request
    /// it records, as nginx stamps its cached time. Reading it costs a few nanoseconds where
    /// [`Clock::now`] costs 25 or more on a virtual machine, which counts on every cache hit.
    fn recent(&self) -> SystemTime {
        self.now()
    }

    /// [`Clock::recent`] in microseconds since the epoch (what a recorded request needs, without
    /// the conversions).
    fn recent_micros(&self) -> u64 {
        self.recent()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn recent(&self) -> SystemTime {
        let (secs, nanos) = realtime_coarse();
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn recent_micros(&self) -> u64 {
        let (secs, nanos) = realtime_coarse();
        secs * 1_000_000 + u64::from(nanos / 1000)
    }
}

/// The kernel's tick wall clock, as seconds and nanoseconds since the epoch.
fn realtime_coarse() -> (u64, u32) {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    (
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Milliseconds on a monotonic clock as of the kernel's last tick (1–4 ms of resolution): how
/// the edge times requests for statistics and W3C logs (`time-taken`), at a few nanoseconds per
/// reading. Only differences between two readings mean anything.
pub fn coarse_millis() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    t.tv_sec.max(0) as u64 * 1000 + t.tv_nsec.max(0) as u64 / 1_000_000
}

/// A clock that only moves when told to; shared by cloning.
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// Starts at the current real time (so HTTP dates look plausible).
    pub fn new() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            millis: Arc::new(AtomicU64::new(millis)),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.millis
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

pub type SharedClock = Arc<dyn Clock>;
