//! Link costs from measured round-trip times: a link with no configured
//! `cost` costs its RTT in milliseconds, as QUIC estimates it, smoothed,
//! and re-advertised only when it moved for real, so routes do not flap on
//! jitter.
//!
//! The rule ([`MeasuredCost`]): samples (one per second from the runtime,
//! or from the simulator's links) feed an exponentially weighted average
//! with gain 1/8 (RFC 6298's for SRTT). The advertised cost follows the
//! average only when it differs from the advertised one by more than 20 %
//! and at least 2 ms, and at most once every [`MeasuredCost::HOLD`]. Until
//! the first sample a link costs [`Cost::default`] (100, as if 100 ms).

use std::time::{Duration, Instant};

use mqlink_topology::{Cost, RegionName};

use super::Agent;

/// The measured cost of one link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasuredCost {
    /// Smoothed RTT, ms.
    smoothed: f64,
    /// What our LSA says.
    advertised: Cost,
    /// When `advertised` last changed.
    changed: Instant,
}

impl MeasuredCost {
    /// Weight of a new sample in the average.
    pub const GAIN: f64 = 0.125;
    /// Relative change of the average that is re-advertised.
    pub const RELATIVE: f64 = 0.2;
    /// Smallest change re-advertised, ms.
    pub const MIN_STEP: f64 = 2.0;
    /// Shortest time between two changes of the advertised cost.
    pub const HOLD: Duration = Duration::from_secs(10);

    /// A link whose first sample is `rtt`, taken at `now`.
    pub fn new(now: Instant, rtt: Duration) -> Self {
        let ms = millis(rtt);
        Self {
            smoothed: ms,
            advertised: cost_of(ms),
            changed: now,
        }
    }

    /// What the link costs now.
    pub fn cost(&self) -> Cost {
        self.advertised
    }

    /// The smoothed RTT in ms.
    pub fn smoothed_ms(&self) -> f64 {
        self.smoothed
    }

    /// Take a sample; true when the advertised cost changed.
    pub fn sample(&mut self, now: Instant, rtt: Duration) -> bool {
        self.smoothed += Self::GAIN * (millis(rtt) - self.smoothed);
        let current = f64::from(self.advertised.get());
        let step = (self.smoothed - current).abs();
        let moved = step > (current * Self::RELATIVE).max(Self::MIN_STEP);
        if !moved || now.saturating_duration_since(self.changed) < Self::HOLD {
            return false;
        }
        let next = cost_of(self.smoothed);
        if next == self.advertised {
            return false;
        }
        self.advertised = next;
        self.changed = now;
        true
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A cost from milliseconds: rounded up, at least 1.
fn cost_of(ms: f64) -> Cost {
    let v = ms.ceil().clamp(1.0, f64::from(Cost::MAX)) as u64;
    Cost::new(v).unwrap_or_default()
}

impl Agent {
    /// QUIC's RTT estimate for the link to `region` (the lowest over its
    /// connections), sampled by the runtime about once a second. Only
    /// links without a configured cost use it; when their advertised cost
    /// moves (see [`MeasuredCost`]) our LSA is re-originated.
    pub fn handle_rtt(&mut self, now: Instant, region: &RegionName, rtt: Duration) {
        self.last_now = now;
        let measured = self
            .cfg
            .links
            .iter()
            .any(|l| l.region == *region && l.cost.is_none());
        if !measured {
            return;
        }
        let changed = match self.measured.get_mut(region) {
            Some(m) => m.sample(now, rtt),
            None => {
                self.measured
                    .insert(region.clone(), MeasuredCost::new(now, rtt));
                true
            }
        };
        if changed {
            self.originate(now);
        }
    }

    /// What the link to `region` costs now: configured, measured, or the
    /// default before the first measurement.
    pub fn link_cost(&self, region: &RegionName) -> Cost {
        let configured = self
            .cfg
            .links
            .iter()
            .find(|l| l.region == *region)
            .and_then(|l| l.cost);
        configured
            .or_else(|| self.measured.get(region).map(MeasuredCost::cost))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn jitter_does_not_move_the_cost_and_a_real_change_does_once() {
        let t0 = Instant::now();
        let mut m = MeasuredCost::new(t0, ms(40));
        assert_eq!(m.cost().get(), 40);
        // A minute of jitter between 30 and 50 ms: the cost stays.
        for i in 0..60u64 {
            let rtt = if i % 2 == 0 { ms(30) } else { ms(50) };
            assert!(
                !m.sample(t0 + Duration::from_secs(i + 1), rtt),
                "sample {i}"
            );
        }
        assert_eq!(m.cost().get(), 40);
        // The path moves to 120 ms: one change once the average is there
        // (no change within the hold time of the last one).
        let mut changes = Vec::new();
        for i in 0..60u64 {
            let now = t0 + Duration::from_secs(61 + i);
            if m.sample(now, ms(120)) {
                changes.push((i, m.cost().get()));
            }
        }
        assert!(!changes.is_empty() && changes.len() <= 3, "{changes:?}");
        // Within the hysteresis (20 %) of the new RTT.
        assert!((96..=120).contains(&m.cost().get()), "{}", m.cost().get());
        // One spike (twice the RTT) is smoothed away.
        let mut steady = MeasuredCost::new(t0, ms(40));
        for i in 1..20u64 {
            assert!(!steady.sample(t0 + Duration::from_secs(i), ms(40)));
        }
        assert!(!steady.sample(t0 + Duration::from_secs(100), ms(80)));
        assert_eq!(steady.cost().get(), 40);
    }

    #[test]
    fn small_rtts_need_a_step_of_two_ms() {
        let t0 = Instant::now();
        let mut m = MeasuredCost::new(t0, Duration::from_micros(300));
        assert_eq!(m.cost().get(), 1, "at least 1");
        for i in 1..100u64 {
            assert!(!m.sample(t0 + Duration::from_secs(i * 20), Duration::from_micros(900)));
        }
    }
}
