//! The retry policy: how many attempts, and how long to wait between them.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per series, the first included: 3 retries = 4 attempts.
    pub max_attempts: i32,
    /// Wait after the first failed attempt; each later wait is `factor` times longer.
    pub base: Duration,
    pub factor: u32,
    /// Each wait is scaled by a random factor in `[1 - jitter, 1 + jitter]`, so commands that
    /// failed together do not retry together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// About 0.5 s, 2 s and 8 s, with ±20 % jitter.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_millis(500),
            factor: 4,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before the attempt after `failed_attempt` (1-based).
    pub fn backoff(&self, failed_attempt: i32) -> Duration {
        let exponent = failed_attempt.clamp(1, 16) as u32 - 1;
        let nominal = self
            .base
            .saturating_mul(self.factor.saturating_pow(exponent));
        let scale = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        nominal.mul_f64(scale.max(0.0))
    }

    /// The longest wait this policy can produce (for "terminates within" bounds, G2).
    pub fn max_backoff(&self) -> Duration {
        self.base
            .saturating_mul(
                self.factor
                    .saturating_pow((self.max_attempts - 2).max(0) as u32),
            )
            .mul_f64(1.0 + self.jitter)
    }

    pub fn exhausted(&self, attempt: i32) -> bool {
        attempt >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_by_the_factor_within_the_jitter() {
        let policy = RetryPolicy::default();
        for (attempt, nominal_ms) in [(1, 500.0), (2, 2000.0), (3, 8000.0)] {
            for _ in 0..100 {
                let ms = policy.backoff(attempt).as_secs_f64() * 1000.0;
                assert!(
                    ms >= nominal_ms * 0.8 - 1e-6 && ms <= nominal_ms * 1.2 + 1e-6,
                    "{attempt}: {ms}"
                );
            }
        }
        assert_eq!(policy.max_backoff(), Duration::from_millis(9600));
    }

    #[test]
    fn jitter_spreads_retries() {
        let policy = RetryPolicy::default();
        let waits: std::collections::HashSet<_> = (0..20).map(|_| policy.backoff(1)).collect();
        assert!(
            waits.len() > 10,
            "jitter produced only {} distinct waits",
            waits.len()
        );
    }

    #[test]
    fn four_attempts_then_exhausted() {
        let policy = RetryPolicy::default();
        assert!(!policy.exhausted(3));
        assert!(policy.exhausted(4));
    }
}
