//! Whether the change feed may be trusted now (SPEC §5 "bounded staleness").
//!
//! Cached facts are only as fresh as the feed that voids them. The listener
//! proves the feed alive by hearing its own heartbeats back through Postgres,
//! which covers the whole path (connection, server, notification queue). A
//! heartbeat sent at `t` and heard back proves every change committed before
//! `t` has been heard. So cached facts are trusted while the feed is connected
//! and the latest proof is younger than `max_silence`; otherwise decisions read
//! through to Postgres. An operator may choose availability over freshness
//! with `serve_stale_on_outage`: while the feed is untrusted *and* Postgres
//! cannot answer, cached facts are served up to that long after the last proof.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// `freshness.*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshnessSettings {
    /// Longest time cached facts are trusted without a proof that the feed is
    /// live; heartbeats go out four times per period.
    pub max_silence: Duration,
    /// How long after the last proof cached facts may still answer while
    /// Postgres is unreachable; zero (the default) = never.
    pub serve_stale_on_outage: Duration,
}

impl Default for FreshnessSettings {
    fn default() -> Self {
        FreshnessSettings {
            max_silence: Duration::from_millis(2_000),
            serve_stale_on_outage: Duration::ZERO,
        }
    }
}

impl FreshnessSettings {
    /// How often the listener sends itself a heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.max_silence / 4).max(Duration::from_millis(10))
    }
}

/// The feed's state, written by the listener, read by every fact lookup.
pub struct Freshness {
    /// Settings.
    settings: FreshnessSettings,
    /// Origin of the millisecond clock below.
    origin: Instant,
    /// When the latest heard heartbeat was sent, in ms since `origin` + 1
    /// (0 = never proven).
    proven_at_ms: AtomicU64,
    /// False from the moment the feed is known lost until the gap is handled.
    connected: AtomicBool,
    /// Whether the last look found the feed trusted, to log and count flips once.
    last_trusted: AtomicBool,
    /// `feed_trusted`.
    metrics: Metrics,
}

impl Freshness {
    /// A feed not yet proven: nothing cached is trusted until the listener
    /// connects and hears its first heartbeat.
    pub fn new(settings: FreshnessSettings, metrics: Metrics) -> Freshness {
        metrics.feed_trusted.set(0);
        Freshness {
            settings,
            origin: Instant::now(),
            proven_at_ms: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_trusted: AtomicBool::new(false),
            metrics,
        }
    }

    /// A feed that is always trusted: for caches with no listener (unit
    /// tests, benchmarks of the cache alone).
    pub fn always_trusted(metrics: Metrics) -> Freshness {
        let f = Freshness::new(
            FreshnessSettings {
                max_silence: Duration::MAX / 4,
                serve_stale_on_outage: Duration::ZERO,
            },
            metrics,
        );
        f.connected.store(true, Ordering::SeqCst);
        f.proven_at_ms.store(1, Ordering::SeqCst);
        f
    }

    /// The settings.
    pub fn settings(&self) -> FreshnessSettings {
        self.settings
    }

    /// The feed is connected and LISTEN is in place (the gap is handled).
    pub fn connected_now(&self) {
        self.connected.store(true, Ordering::SeqCst);
    }

    /// The feed is lost: trust nothing cached from now on.
    pub fn lost(&self) {
        self.connected.store(false, Ordering::SeqCst);
        self.observe();
    }

    /// A heartbeat sent at `sent_at` was heard: every change committed before
    /// it has been heard too.
    pub fn proven(&self, sent_at: Instant) {
        let ms = self.ms(sent_at);
        self.proven_at_ms.fetch_max(ms, Ordering::SeqCst);
        self.observe();
    }

    /// Whether cached facts may be used now.
    pub fn trusted(&self) -> bool {
        self.trusted_at(Instant::now())
    }

    /// Whether cached facts may be used at `now`.
    pub fn trusted_at(&self, now: Instant) -> bool {
        let trusted = self.connected.load(Ordering::SeqCst)
            && self
                .silence_at(now)
                .is_some_and(|s| s <= self.settings.max_silence);
        if trusted != self.last_trusted.load(Ordering::Relaxed) {
            self.flip(trusted);
        }
        trusted
    }

    /// Whether a cached fact may answer although the feed is untrusted,
    /// because Postgres cannot (the operator's explicit availability choice).
    pub fn may_serve_stale(&self) -> bool {
        self.may_serve_stale_at(Instant::now())
    }

    /// [`Freshness::may_serve_stale`] at `now`.
    pub fn may_serve_stale_at(&self, now: Instant) -> bool {
        !self.settings.serve_stale_on_outage.is_zero()
            && self
                .silence_at(now)
                .is_some_and(|s| s <= self.settings.serve_stale_on_outage)
    }

    /// Time since the latest proof; `None` before the first.
    pub fn silence(&self) -> Option<Duration> {
        self.silence_at(Instant::now())
    }

    fn silence_at(&self, now: Instant) -> Option<Duration> {
        match self.proven_at_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(Duration::from_millis(self.ms(now).saturating_sub(ms))),
        }
    }

    /// Re-evaluates trust, so the gauge and log follow a silent feed too
    /// (the listener calls this on every tick).
    pub fn observe(&self) {
        let _ = self.trusted();
    }

    fn flip(&self, trusted: bool) {
        if self.last_trusted.swap(trusted, Ordering::Relaxed) == trusted {
            return;
        }
        self.metrics.feed_trusted.set(i64::from(trusted));
        if trusted {
            tracing::info!("change feed proven live: cached facts trusted again");
        } else {
            tracing::warn!(
                max_silence_ms = self.settings.max_silence.as_millis() as u64,
                "change feed down or silent: cached facts untrusted, decisions read through to Postgres"
            );
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(silence_ms: u64, stale_ms: u64) -> FreshnessSettings {
        FreshnessSettings {
            max_silence: Duration::from_millis(silence_ms),
            serve_stale_on_outage: Duration::from_millis(stale_ms),
        }
    }

    #[test]
    fn freshness_untrusted_until_connected_and_proven() {
        let f = Freshness::new(settings(1_000, 0), Metrics::new());
        assert!(!f.trusted(), "never proven");
        f.proven(Instant::now());
        assert!(!f.trusted(), "proven but not connected");
        f.connected_now();
        assert!(f.trusted());
    }

    #[test]
    fn freshness_lost_feed_is_untrusted_at_once() {
        let f = Freshness::new(settings(60_000, 0), Metrics::new());
        f.connected_now();
        f.proven(Instant::now());
        assert!(f.trusted());
        f.lost();
        assert!(
            !f.trusted(),
            "a known-lost feed is not trusted for a moment"
        );
    }

    #[test]
    fn freshness_silent_feed_turns_untrusted_after_max_silence() {
        let metrics = Metrics::new();
        let f = Freshness::new(settings(30, 0), metrics.clone());
        f.connected_now();
        let t0 = Instant::now();
        f.proven(t0);
        assert!(f.trusted_at(t0 + Duration::from_millis(20)));
        assert_eq!(metrics.feed_trusted.get(), 1);
        assert!(
            !f.trusted_at(t0 + Duration::from_millis(60)),
            "no proof for longer than max_silence"
        );
        assert_eq!(metrics.feed_trusted.get(), 0);
    }

    #[test]
    fn freshness_serve_stale_is_off_by_default_and_bounded_when_set() {
        let off = Freshness::new(settings(10, 0), Metrics::new());
        let t0 = Instant::now();
        off.proven(t0);
        assert!(!off.may_serve_stale_at(t0));
        let on = Freshness::new(settings(10, 40), Metrics::new());
        assert!(!on.may_serve_stale_at(t0), "never proven: nothing to serve");
        on.proven(t0);
        assert!(on.may_serve_stale_at(t0 + Duration::from_millis(20)));
        assert!(
            !on.may_serve_stale_at(t0 + Duration::from_millis(60)),
            "past the operator's bound"
        );
    }

    #[test]
    fn freshness_older_proof_never_moves_trust_back() {
        let f = Freshness::new(settings(100, 0), Metrics::new());
        f.connected_now();
        let t0 = Instant::now();
        f.proven(t0 + Duration::from_millis(50));
        f.proven(t0);
        assert!(
            f.trusted_at(t0 + Duration::from_millis(140)),
            "the later proof still counts"
        );
    }
}
