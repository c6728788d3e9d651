//! The fault injector: a command's input may ask for failures (`faults: {...}`), honoured only
//! when the server runs with `--fault-injection`. It makes retries, dead letters, crashes and
//! zombie attempts demonstrable and testable with the real binary.

use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Attempts 1..=N fail with a technical error after their writes (rolled back).
    pub fail_attempts: i32,
    /// Slow work before the first attempt's transaction; the heartbeat keeps the lease.
    pub delay: Option<Duration>,
    /// The first attempt stalls like a paused process: no heartbeat, then a late commit that
    /// must be fenced off.
    pub freeze: Option<Duration>,
    /// Attempts 1..=N abort the whole process.
    pub crash_attempts: i32,
}

impl Faults {
    /// The faults a command payload asks for (`payload.faults`), if any.
    pub fn from_payload(payload: &Value) -> Option<Faults> {
        let f = payload.get("faults")?.as_object()?;
        let int = |name: &str| f.get(name).and_then(Value::as_i64).unwrap_or(0).max(0);
        let ms = |name: &str| {
            Some(int(name))
                .filter(|&m| m > 0)
                .map(|m| Duration::from_millis(m as u64))
        };
        Some(Faults {
            fail_attempts: int("failAttempts").min(i32::MAX as i64) as i32,
            delay: ms("delayMs"),
            freeze: ms("freezeMs"),
            crash_attempts: int("crashAttempts").min(i32::MAX as i64) as i32,
        })
    }

    pub fn fails(&self, attempt: i32) -> bool {
        attempt <= self.fail_attempts
    }

    pub fn crashes(&self, attempt: i32) -> bool {
        attempt <= self.crash_attempts
    }

    /// The pause before the transaction, if this attempt has one (the first attempt only).
    pub fn pause(&self, attempt: i32) -> Option<(Duration, bool)> {
        if attempt != 1 {
            return None;
        }
        self.freeze
            .map(|d| (d, true))
            .or(self.delay.map(|d| (d, false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_faults_object() {
        let f =
            Faults::from_payload(&json!({"faults": {"failAttempts": 2, "freezeMs": 50}})).unwrap();
        assert!(f.fails(2) && !f.fails(3));
        assert_eq!(f.pause(1), Some((Duration::from_millis(50), true)));
        assert_eq!(f.pause(2), None);
        assert_eq!(f.delay, None);
        assert!(!f.crashes(1));
        assert_eq!(Faults::from_payload(&json!({"customerId": "c"})), None);
    }
}
