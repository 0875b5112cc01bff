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

use fred::types::Value;
use fred::types::scripts::Script;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter as Gcra};
use uuid::Uuid;

use crate::answer::RateLimitInfo;
use crate::metrics::Metrics;
use crate::redis::Redis;

/// GCRA in one round trip. KEYS: the principal's TAT key. ARGV: emission
/// interval µs, burst. Returns {allowed, remaining, retry_after_µs, reset_µs}.
/// Time comes from Redis so sidecars' clocks do not matter.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval), 0, math.ceil(new_tat - now)}
"#;

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
    /// Shared limits through Redis, when configured.
    redis: Option<Arc<Redis>>,
    /// The GCRA script.
    gcra: Script,
    metrics: Metrics,
}

impl RateLimiter {
    /// A limiter shared through `redis` when given.
    pub fn new(
        config: RateLimitConfig,
        redis: Option<Arc<Redis>>,
        metrics: Metrics,
    ) -> RateLimiter {
        let interval = Duration::from_secs_f64(1.0 / config.per_second.max(1e-6));
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        RateLimiter {
            config,
            interval,
            local: Gcra::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            redis,
            gcra: Script::from_lua(GCRA),
            metrics,
        }
    }

    /// Spends one request of `key`'s allowance.
    pub async fn check(&self, key: LimitKey) -> RateLimitInfo {
        if let Some(info) = self.check_redis(key).await {
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

    /// One GCRA step in Redis; `None` when Redis cannot answer (the caller
    /// falls back to the local limiter).
    async fn check_redis(&self, key: LimitKey) -> Option<RateLimitInfo> {
        let redis = self.redis.as_ref().filter(|r| r.up())?;
        let keys = vec![redis.key(&format!("rl:{}", key.redis_suffix()))];
        let args: Vec<Value> = vec![
            (self.interval.as_micros().max(1) as i64).into(),
            i64::from(self.config.burst).into(),
        ];
        let reply = redis.eval::<Vec<i64>>(&self.gcra, keys, args).await.ok()?;
        let [allowed, remaining, retry_us, reset_us] = reply[..] else {
            return None;
        };
        Some(RateLimitInfo {
            allowed: allowed == 1,
            limit: self.config.burst,
            remaining: remaining.max(0) as u64,
            reset_secs: ceil_secs(Duration::from_micros(reset_us.max(0) as u64)),
            retry_after_secs: ceil_secs(Duration::from_micros(retry_us.max(0) as u64)).max(1),
        })
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
