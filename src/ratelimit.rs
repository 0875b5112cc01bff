//! Rate limiting per principal (SPEC §6): a user (JWT) or an API key gets
//! `per_second` requests with bursts of `burst`, by GCRA.
//!
//! With Redis the limit is shared by every sidecar (one script call per
//! request, time from Redis); without it, or while Redis is failing, each
//! sidecar enforces the same limit on its own (governor). A Redis failure never
//! denies a request by itself.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter as Gcra};
use uuid::Uuid;

use crate::l2::L2;
use crate::metrics::Metrics;

/// Limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per principal.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: u32,
}

/// Who is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// A user authenticated by JWT.
    User(Uuid),
    /// An API key, by its id (never the key itself).
    ApiKey(Uuid),
}

impl LimitKey {
    fn redis_suffix(&self) -> String {
        match self {
            LimitKey::User(id) => format!("u:{id}"),
            LimitKey::ApiKey(id) => format!("k:{id}"),
        }
    }
}

/// One verdict, with what the rate-limit headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// Let it through.
    pub allowed: bool,
    /// `ratelimit-limit`: the burst.
    pub limit: u32,
    /// `ratelimit-remaining`.
    pub remaining: u64,
    /// `ratelimit-reset`: seconds until the bucket is full again (rounded up).
    pub reset_secs: u64,
    /// `retry-after` on a deny: seconds, rounded up, at least 1.
    pub retry_after_secs: u64,
}

type LocalLimiter = Gcra<
    LimitKey,
    governor::state::keyed::DefaultKeyedStateStore<LimitKey>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// The limiter.
pub struct RateLimiter {
    config: RateLimitConfig,
    interval: Duration,
    local: LocalLimiter,
    l2: Option<Arc<L2>>,
    metrics: Metrics,
}

impl RateLimiter {
    /// A limiter shared through `l2` when given.
    pub fn new(config: RateLimitConfig, l2: Option<Arc<L2>>, metrics: Metrics) -> RateLimiter {
        let interval = Duration::from_secs_f64(1.0 / config.per_second.max(1e-6));
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        RateLimiter {
            config,
            interval,
            local: Gcra::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            l2,
            metrics,
        }
    }

    /// Spends one request of `key`'s allowance.
    pub async fn check(&self, key: LimitKey) -> RateLimitInfo {
        if let Some(l2) = &self.l2
            && let Some(v) = l2
                .gcra(&key.redis_suffix(), self.interval, self.config.burst)
                .await
        {
            let info = RateLimitInfo {
                allowed: v.allowed,
                limit: self.config.burst,
                remaining: v.remaining,
                reset_secs: ceil_secs(v.reset),
                retry_after_secs: ceil_secs(v.retry_after).max(1),
            };
            if !info.allowed {
                self.metrics
                    .rate_limited
                    .with_label_values(&["redis"])
                    .inc();
            }
            return info;
        }
        self.check_local(key)
    }

    fn check_local(&self, key: LimitKey) -> RateLimitInfo {
        match self.local.check_key(&key) {
            Ok(snapshot) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                let used = u64::from(self.config.burst).saturating_sub(remaining);
                RateLimitInfo {
                    allowed: true,
                    limit: self.config.burst,
                    remaining,
                    reset_secs: ceil_secs(self.interval * used as u32),
                    retry_after_secs: 0,
                }
            }
            Err(not_until) => {
                self.metrics
                    .rate_limited
                    .with_label_values(&["local"])
                    .inc();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                RateLimitInfo {
                    allowed: false,
                    limit: self.config.burst,
                    remaining: 0,
                    reset_secs: ceil_secs(self.interval * self.config.burst),
                    retry_after_secs: ceil_secs(wait).max(1),
                }
            }
        }
    }

    /// Drops idle principals' state so memory stays bounded; the maintenance
    /// loop calls this periodically.
    pub fn forget_idle(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
    }

    /// Principals with local state.
    pub fn tracked(&self) -> usize {
        self.local.len()
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> (RateLimiter, Metrics) {
        let metrics = Metrics::new();
        (
            RateLimiter::new(RateLimitConfig { per_second, burst }, None, metrics.clone()),
            metrics,
        )
    }

    #[tokio::test]
    async fn local_burst_then_deny_with_retry_after() {
        let (rl, metrics) = limiter(1.0, 3);
        let key = LimitKey::User(Uuid::new_v4());
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let v = rl.check(key).await;
            assert!(v.allowed);
            remaining.push(v.remaining);
        }
        assert_eq!(remaining, vec![2, 1, 0]);
        let denied = rl.check(key).await;
        assert!(!denied.allowed);
        assert_eq!(denied.limit, 3);
        assert_eq!(denied.remaining, 0);
        assert_eq!(denied.retry_after_secs, 1);
        assert_eq!(metrics.rate_limited.with_label_values(&["local"]).get(), 1);
    }

    #[tokio::test]
    async fn principals_are_limited_separately() {
        let (rl, _) = limiter(1.0, 1);
        let user = Uuid::new_v4();
        assert!(rl.check(LimitKey::User(user)).await.allowed);
        assert!(!rl.check(LimitKey::User(user)).await.allowed);
        assert!(
            rl.check(LimitKey::ApiKey(user)).await.allowed,
            "same uuid, other kind"
        );
        assert!(rl.check(LimitKey::User(Uuid::new_v4())).await.allowed);
    }

    #[tokio::test]
    async fn allowance_refills_over_time() {
        let (rl, _) = limiter(50.0, 1);
        let key = LimitKey::User(Uuid::new_v4());
        assert!(rl.check(key).await.allowed);
        assert!(!rl.check(key).await.allowed);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(rl.check(key).await.allowed);
    }

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
    }
}
