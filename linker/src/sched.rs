//! The agent's CPU scheduling policy: `SCHED_BATCH` unless told otherwise.
//!
//! An agent sits between processes that wake each other for every message
//! at moderate rates: its broker wakes it, it wakes the peer agent, which
//! wakes its broker. Under the default policy a woken process preempts the
//! one that woke it, in the middle of its work (a `sendmsg` that wakes the
//! peer returned into a context switch: 0.3-0.4 involuntary switches per
//! message on each agent at 3,800 msgs/s, `/proc/<pid>/status`), and both
//! pay for it with cold caches. `SCHED_BATCH` (no privilege needed) keeps
//! fair sharing and nice levels but does not preempt on wake-up: the
//! waker finishes its turn, then the woken one runs, on an idle core if
//! there is one. Measured with `mqlink bench --compare` on 2 cores
//! (agents A / B, µs of CPU per message): 40.5 / 35.3 -> 32.1 / 30.5 at
//! 3,800 msgs/s with p50 0.141 -> 0.125 ms, 8.4 / 7.4 -> 7.7 / 6.5 at
//! 38,000; QoS 1 flat out 0.79-0.81x -> 0.97-1.04x the bridge's rate
//! (five runs).
//!
//! A policy set from outside (systemd's `CPUSchedulingPolicy=`, `chrt`)
//! other than the default is left alone; `MQLINK_SCHED=normal` keeps the
//! default policy. Threads inherit the policy of the thread that starts
//! them, so [`prefer_batch`] runs first thing in `mqlink run`.

/// What [`prefer_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The calling thread now runs as `SCHED_BATCH`.
    Batch,
    /// Asked not to (`MQLINK_SCHED=normal`).
    OptedOut,
    /// Another policy was chosen from outside; left as it was.
    LeftAlone,
    /// The system refused (the policy stays the default).
    Refused,
}

/// Switch the calling thread (and the threads it starts afterwards) from
/// the default policy to `SCHED_BATCH`, unless `opt_out` or a policy was
/// set from outside.
pub fn prefer_batch(opt_out: bool) -> Outcome {
    if opt_out {
        return Outcome::OptedOut;
    }
    // SAFETY: plain system calls about the calling thread (0), with a live
    // parameter.
    #[allow(unsafe_code)]
    unsafe {
        if libc::sched_getscheduler(0) != libc::SCHED_OTHER {
            return Outcome::LeftAlone;
        }
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0 {
            Outcome::Batch
        } else {
            Outcome::Refused
        }
    }
}

/// Whether the environment opts out (`MQLINK_SCHED=normal`).
pub fn opted_out() -> bool {
    std::env::var("MQLINK_SCHED").is_ok_and(|v| v.eq_ignore_ascii_case("normal"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The calling thread's policy.
    fn policy() -> libc::c_int {
        // SAFETY: a query about the calling thread.
        #[allow(unsafe_code)]
        unsafe {
            libc::sched_getscheduler(0)
        }
    }

    // Each case on a thread of its own: the policy is per thread.
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn the_default_policy_becomes_batch_and_threads_started_later_inherit_it() {
        let (outcome, mine, child) = on_thread(|| {
            let outcome = prefer_batch(false);
            let child = std::thread::spawn(policy).join().unwrap();
            (outcome, policy(), child)
        });
        assert_eq!(outcome, Outcome::Batch);
        assert_eq!((mine, child), (libc::SCHED_BATCH, libc::SCHED_BATCH));
    }

    #[test]
    fn an_opt_out_or_a_policy_from_outside_is_respected() {
        let (outcome, p) = on_thread(|| (prefer_batch(true), policy()));
        assert_eq!((outcome, p), (Outcome::OptedOut, libc::SCHED_OTHER));
        let (outcome, p) = on_thread(|| {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: about the calling thread, with a live parameter.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            assert_eq!(rc, 0);
            (prefer_batch(false), policy())
        });
        assert_eq!((outcome, p), (Outcome::LeftAlone, libc::SCHED_IDLE));
    }
}
