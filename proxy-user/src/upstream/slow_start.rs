//! Slow start: Istio's `loadBalancer.warmup` as Envoy's `slow_start_config`.
//!
//! For `duration` after an endpoint joined the cluster its balancing weight is scaled by
//! `max(minimumPercent / 100, time_factor ^ (1 / aggression))`, `time_factor` being the share of
//! the window elapsed (at least 1 ms of it, so a brand-new endpoint starts at the minimum, not at
//! zero). After the window the endpoint has its full weight. Envoy applies this to `ROUND_ROBIN`
//! and `LEAST_REQUEST` only ([`crate::upstream::ClusterPolicy::slow_start`]).
//!
//! Pure: the caller passes the endpoint's age.

use std::time::Duration;

use crate::policy::Warmup;

/// The factor (0..=1] a balancer multiplies an endpoint's weight by, for an endpoint that joined
/// `age` ago.
pub fn factor(warmup: &Warmup, age: Duration) -> f64 {
    if age >= warmup.duration || warmup.duration.is_zero() {
        return 1.0;
    }
    let elapsed = age.max(Duration::from_millis(1));
    let time_factor = elapsed.as_secs_f64() / warmup.duration.as_secs_f64();
    let ramp = if warmup.aggression == 1.0 {
        time_factor
    } else {
        time_factor.powf(1.0 / warmup.aggression)
    };
    let floor = (warmup.minimum_percent / 100.0).clamp(0.0, 1.0);
    ramp.max(floor).min(1.0)
}

/// Whether an endpoint that joined `age` ago is still warming up.
pub fn warming(warmup: &Warmup, age: Duration) -> bool {
    age < warmup.duration
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warmup(secs: u64, minimum_percent: f64, aggression: f64) -> Warmup {
        Warmup {
            duration: Duration::from_secs(secs),
            minimum_percent,
            aggression,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn linear_ramp_from_the_minimum_to_full_weight() {
        let w = warmup(100, 10.0, 1.0);
        // t = 0: the minimum percent.
        assert!(close(factor(&w, Duration::ZERO), 0.10));
        // Below the minimum the floor holds; above it the ramp is linear.
        assert!(close(factor(&w, Duration::from_secs(5)), 0.10));
        assert!(close(factor(&w, Duration::from_secs(25)), 0.25));
        assert!(close(factor(&w, Duration::from_secs(50)), 0.50));
        // End of the window and after: full weight, no longer warming.
        assert!(close(factor(&w, Duration::from_secs(100)), 1.0));
        assert!(close(factor(&w, Duration::from_secs(1000)), 1.0));
        assert!(warming(&w, Duration::from_secs(99)));
        assert!(!warming(&w, Duration::from_secs(100)));
    }

    #[test]
    fn aggression_bends_the_curve() {
        // aggression 2: sqrt(time_factor) — faster early.
        let w = warmup(100, 10.0, 2.0);
        assert!(close(factor(&w, Duration::from_secs(25)), 0.5));
        // aggression 0.5: time_factor squared — slower early, floor still applies.
        let w = warmup(100, 10.0, 0.5);
        assert!(close(factor(&w, Duration::from_secs(50)), 0.25));
        assert!(close(factor(&w, Duration::from_secs(20)), 0.10));
    }

    #[test]
    fn minimum_percent_zero_starts_near_zero() {
        let w = warmup(10, 0.0, 1.0);
        // 1 ms of 10 s.
        assert!(close(factor(&w, Duration::ZERO), 0.0001));
        let w = warmup(10, 100.0, 1.0);
        assert!(close(factor(&w, Duration::ZERO), 1.0));
    }
}
