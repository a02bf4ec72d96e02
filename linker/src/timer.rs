//! A one-shot timer with microsecond precision (Linux `timerfd`).
//!
//! tokio's timer wheel counts whole milliseconds: a 200 µs sleep waits
//! 1-2 ms. The read linger (`broker.batch_delay`) and the bench's paced
//! publishers need sub-millisecond waits, so they arm a `timerfd` instead:
//! the kernel's high-resolution timer makes the descriptor readable at the
//! deadline, and tokio's reactor wakes the task like any other readiness
//! (one wake-up, no helper thread). Where no `timerfd` can be made, the
//! timer falls back to tokio's (whole milliseconds).

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// A one-shot timer: [`Self::arm`], then [`Self::fired`] resolves at the
/// deadline (never while disarmed).
#[derive(Debug)]
pub struct PreciseTimer {
    fd: Option<AsyncFd<OwnedFd>>,
    /// The armed deadline (`None`: disarmed).
    deadline: Option<Instant>,
}

impl PreciseTimer {
    /// A disarmed timer (needs a tokio runtime with I/O enabled).
    pub fn new() -> Self {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(std::io::Error::from)
        .and_then(register);
        let fd = match fd {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!(error = %e, "no timerfd; timers count whole milliseconds");
                None
            }
        };
        Self { fd, deadline: None }
    }

    /// Fire `after` from now (re-arming moves the deadline).
    pub fn arm(&mut self, after: Duration) {
        let after = after.max(Duration::from_nanos(1));
        self.deadline = Some(Instant::now() + after);
        if let Some(fd) = &self.fd {
            set(fd, after);
        }
    }

    /// Stop: [`Self::fired`] stays pending until the next [`Self::arm`].
    pub fn disarm(&mut self) {
        if self.deadline.take().is_some()
            && let Some(fd) = &self.fd
        {
            set(fd, Duration::ZERO);
        }
    }

    /// Whether a deadline is set.
    pub fn armed(&self) -> bool {
        self.deadline.is_some()
    }

    /// Resolves at the deadline, and disarms. Cancel-safe: dropped before
    /// the deadline, the timer stays armed.
    pub async fn fired(&mut self) {
        let Some(deadline) = self.deadline else {
            return std::future::pending().await;
        };
        match &self.fd {
            None => tokio::time::sleep_until(deadline).await,
            Some(fd) => loop {
                let Ok(mut ready) = fd.readable().await else {
                    // The reactor is gone (runtime shutting down).
                    return std::future::pending().await;
                };
                let mut expirations = [0u8; 8];
                let fired = matches!(rustix::io::read(fd.get_ref(), &mut expirations), Ok(8));
                // Read or not, the descriptor is drained now: the next
                // expiry is a new edge (no read wasted on stale readiness).
                ready.clear_ready();
                if fired {
                    break;
                }
            },
        }
        self.deadline = None;
    }
}

impl Default for PreciseTimer {
    fn default() -> Self {
        Self::new()
    }
}

/// Register the timer with the runtime's reactor.
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that stays open, and is
    // the same descriptor, until it is dropped, which only the `AsyncFd`
    // does (it owns it).
    #[allow(unsafe_code)]
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    fd.map_err(std::io::Error::from)
}

/// Arm (or, with zero, disarm) the descriptor; a failure leaves the
/// timer to fire late or not at all, so it is logged.
fn set(fd: &AsyncFd<OwnedFd>, after: Duration) {
    let value = Timespec {
        tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(after.subsec_nanos()),
    };
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: value,
    };
    if let Err(e) = timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec) {
        tracing::warn!(error = %e, "timerfd_settime");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_once_after_arming_and_never_while_disarmed() {
        let mut t = PreciseTimer::new();
        assert!(t.fd.is_some(), "Linux has timerfd");
        // Disarmed: pending.
        let idle = tokio::time::timeout(Duration::from_millis(20), t.fired()).await;
        assert!(idle.is_err());
        let start = std::time::Instant::now();
        t.arm(Duration::from_micros(300));
        assert!(t.armed());
        t.fired().await;
        assert!(start.elapsed() >= Duration::from_micros(300));
        assert!(!t.armed());
        // Fired once: pending again.
        let again = tokio::time::timeout(Duration::from_millis(20), t.fired()).await;
        assert!(again.is_err());
    }

    #[tokio::test]
    async fn disarming_cancels_and_rearming_moves_the_deadline() {
        let mut t = PreciseTimer::new();
        t.arm(Duration::from_millis(5));
        t.disarm();
        let cancelled = tokio::time::timeout(Duration::from_millis(30), t.fired()).await;
        assert!(cancelled.is_err());
        t.arm(Duration::from_secs(3600));
        let start = std::time::Instant::now();
        t.arm(Duration::from_micros(100));
        t.fired().await;
        assert!(start.elapsed() >= Duration::from_micros(100));
    }
}
