//! A circuit breaker per dependency (SPEC §6): after `failures` consecutive
//! failures it opens and calls fail fast; after `open_for` one probe is let
//! through (half-open); its success closes the circuit, its failure re-opens it.
//!
//! Small on purpose: the state is a few words behind a mutex held for
//! nanoseconds, and every transition is logged and exported once — never per
//! request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// How long the circuit stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(1),
        }
    }
}

/// The state, as exported in `velro_authz_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// One probe call is in flight.
    HalfOpen,
    /// Calls fail fast.
    Open,
}

impl CircuitState {
    /// Gauge value.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }

    /// Label and log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
}

/// One dependency's breaker.
pub struct Breaker {
    dependency: &'static str,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    metrics: Metrics,
}

impl Breaker {
    /// A closed breaker for `dependency` (the metric label).
    pub fn new(dependency: &'static str, config: BreakerConfig, metrics: Metrics) -> Breaker {
        metrics
            .circuit_state
            .with_label_values(&[dependency])
            .set(0);
        Breaker {
            dependency,
            config,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                opened_at: None,
            }),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current state.
    pub fn state(&self) -> CircuitState {
        self.lock().state
    }

    /// May a call go out now? Closed: yes. Open: no, until `open_for` has
    /// passed, then exactly one caller gets `true` and the circuit is half-open
    /// until that caller reports. Half-open: no.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match inner.state {
            CircuitState::Closed => true,
            CircuitState::HalfOpen => false,
            CircuitState::Open => {
                let due = inner
                    .opened_at
                    .is_none_or(|t| t.elapsed() >= self.config.open_for);
                if due {
                    self.transition(&mut inner, CircuitState::HalfOpen);
                }
                due
            }
        }
    }

    /// The call succeeded.
    pub fn success(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        if inner.state != CircuitState::Closed {
            self.transition(&mut inner, CircuitState::Closed);
        }
    }

    /// The call failed (timeout, connection error — not a "no such row").
    pub fn failure(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let open = match inner.state {
            CircuitState::Closed => inner.consecutive_failures >= self.config.failures,
            CircuitState::HalfOpen => true,
            // A call admitted before the circuit opened: restart the wait.
            CircuitState::Open => true,
        };
        if open {
            inner.opened_at = Some(Instant::now());
            if inner.state != CircuitState::Open {
                self.transition(&mut inner, CircuitState::Open);
            }
        }
    }

    fn transition(&self, inner: &mut Inner, to: CircuitState) {
        let from = inner.state;
        inner.state = to;
        self.metrics
            .circuit_state
            .with_label_values(&[self.dependency])
            .set(to.gauge());
        self.metrics
            .circuit_transitions
            .with_label_values(&[self.dependency, to.as_str()])
            .inc();
        match to {
            CircuitState::Open => tracing::warn!(
                dependency = self.dependency,
                from = from.as_str(),
                failures = inner.consecutive_failures,
                open_for_ms = self.config.open_for.as_millis() as u64,
                "circuit opened: calls fail fast"
            ),
            CircuitState::HalfOpen => {
                tracing::info!(dependency = self.dependency, "circuit half-open: probing")
            }
            CircuitState::Closed => tracing::info!(
                dependency = self.dependency,
                from = from.as_str(),
                "circuit closed: dependency answering again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, open_ms: u64) -> (Breaker, Metrics) {
        let metrics = Metrics::new();
        let b = Breaker::new(
            "test",
            BreakerConfig {
                failures,
                open_for: Duration::from_millis(open_ms),
            },
            metrics.clone(),
        );
        (b, metrics)
    }

    fn gauge(m: &Metrics) -> i64 {
        m.circuit_state.with_label_values(&["test"]).get()
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let (b, m) = breaker(3, 60_000);
        b.failure();
        b.failure();
        b.success(); // resets the count
        b.failure();
        b.failure();
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.allow());
        b.failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(gauge(&m), 2);
        assert!(!b.allow(), "open circuit fails fast");
    }

    #[test]
    fn half_open_admits_one_probe_then_closes_on_success() {
        let (b, m) = breaker(1, 0);
        b.failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.allow(), "open_for elapsed: one probe");
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(gauge(&m), 1);
        assert!(!b.allow(), "only one probe at a time");
        b.success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(gauge(&m), 0);
        assert!(b.allow());
    }

    #[test]
    fn failed_probe_reopens() {
        let (b, _) = breaker(1, 0);
        b.failure();
        assert!(b.allow());
        b.failure();
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn open_waits_before_probing() {
        let (b, _) = breaker(1, 60_000);
        b.failure();
        for _ in 0..10 {
            assert!(!b.allow());
        }
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn transitions_are_counted_once_per_flip() {
        let (b, m) = breaker(2, 60_000);
        for _ in 0..50 {
            b.failure();
        }
        let opened = m
            .circuit_transitions
            .with_label_values(&["test", "open"])
            .get();
        assert_eq!(opened, 1, "50 failures, one flip");
    }
}
