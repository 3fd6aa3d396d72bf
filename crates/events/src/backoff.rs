use std::time::Duration;

/// Exponential back-off with full jitter off: deterministic doubling is easier to
/// reason about in logs, and the callers are few (one relay and a handful of
/// consumers per service), so there is no thundering herd to spread.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: None,
        }
    }

    /// The delay to wait now; each call doubles the next one, up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let next = match self.current {
            None => self.base,
            Some(d) => (d * 2).min(self.max),
        };
        self.current = Some(next);
        next
    }

    pub(crate) fn reset(&mut self) {
        self.current = None;
    }
}

/// `base * 2^(attempt-1)`, capped; `attempt` counts from 1.
pub(crate) fn exponential(base: Duration, attempt: u32, max: Duration) -> Duration {
    let shift = attempt.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let seq: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn exponential_by_attempt() {
        let s = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(exponential(s, 1, cap), s);
        assert_eq!(exponential(s, 3, cap), Duration::from_secs(4));
        assert_eq!(exponential(s, 100, cap), cap);
    }
}
