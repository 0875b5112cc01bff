//! Rate limiting per principal (SPEC §6): a user (JWT) or an API key gets
//! `per_second` requests with bursts of `burst`, by GCRA.
//!
//! With Redis the limit is shared by every sidecar (one script call per
//! request, time from Redis); without it, or while Redis is failing, each
//! sidecar enforces the same limit on its own (governor). A Redis failure never
//! denies a request by itself.
//!
//! Apart from that, [`FailedAuthLimiter`] bounds what an unauthenticated client
//! can make us do: failed authentications per client address, checked before
//! any credential lookup.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Default `rate_limit.failed_auth_per_minute`: ten a second sustained, in
/// bursts of 600. No honest client behind one address fails that often (an
/// expired token, the common honest failure, does not count); one hostile
/// address is held to ten credential lookups a second instead of thousands.
pub const DEFAULT_FAILED_AUTH_PER_MINUTE: u32 = 600;

/// Failed authentications per client address: each failure spends one of
/// `per_minute` (GCRA: a burst of `per_minute`, then one per `60 s /
/// per_minute`); an address that has spent them all is refused (429
/// `rate_limited`) before its next credential is even looked up, until the
/// next one refills.
///
/// Addresses are grouped as the network hands them out: an IPv4 address on
/// its own, IPv6 by /64 (one host commonly holds a whole /64), IPv4-mapped
/// IPv6 as IPv4. Local to each sidecar (governor); with N sidecars behind a
/// balancer an address gets up to N times the budget.
pub struct FailedAuthLimiter {
    /// Failures allowed per minute, and at once.
    per_minute: u32,
    /// One failure refills every this long.
    interval: Duration,
    /// Spent failures per address group.
    failures: Gcra<
        IpAddr,
        governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
        DefaultClock,
        StateInformationMiddleware,
    >,
    /// Groups that have spent their budget, with when the next failure
    /// refills: the check before a lookup reads this without spending.
    blocked: moka::sync::Cache<IpAddr, Instant>,
    metrics: Metrics,
}

impl FailedAuthLimiter {
    /// `per_minute` failures per address group (at least 1).
    pub fn new(per_minute: u32, metrics: Metrics) -> FailedAuthLimiter {
        let per_minute = per_minute.max(1);
        let interval = Duration::from_secs(60) / per_minute;
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        FailedAuthLimiter {
            per_minute,
            interval,
            failures: Gcra::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            // Bounded: a flood from many addresses cannot grow it without
            // limit; an address evicted from here is blocked again by its
            // next failure.
            blocked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(interval.max(Duration::from_secs(1)))
                .build(),
            metrics,
        }
    }

    /// Before any credential lookup: the 429's details when `addr` has no
    /// failures left, `None` when it may go on. Spends nothing.
    pub fn blocked(&self, addr: IpAddr) -> Option<RateLimitInfo> {
        let until = self.blocked.get(&group(addr))?;
        let wait = until.checked_duration_since(Instant::now())?;
        self.metrics
            .rate_limited
            .with_label_values(&["failed_auth"])
            .inc();
        Some(RateLimitInfo {
            allowed: false,
            limit: self.per_minute,
            remaining: 0,
            reset_secs: ceil_secs(self.interval * self.per_minute),
            retry_after_secs: ceil_secs(wait).max(1),
        })
    }

    /// After a failed authentication from `addr`: spends one failure; the
    /// last one blocks the group until the next refills.
    pub fn record_failure(&self, addr: IpAddr) {
        let key = group(addr);
        let until = match self.failures.check_key(&key) {
            Ok(snapshot) if snapshot.remaining_burst_capacity() > 0 => return,
            Ok(_) => Instant::now() + self.interval,
            Err(not_until) => {
                Instant::now() + not_until.wait_time_from(DefaultClock::default().now())
            }
        };
        self.blocked.insert(key, until);
    }

    /// Drops idle groups' state so memory stays bounded; the maintenance loop
    /// calls this periodically.
    pub fn forget_idle(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
    }

    /// Address groups with failures on record.
    pub fn tracked(&self) -> usize {
        self.failures.len()
    }
}

/// The unit an address is limited as: IPv4 alone, IPv6 by /64.
fn group(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
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

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn failed_auth_budget_spent_blocks_the_address_before_lookup() {
        let limiter = FailedAuthLimiter::new(3, Metrics::new());
        let addr = ip("203.0.113.7");
        for _ in 0..2 {
            limiter.record_failure(addr);
            assert_eq!(limiter.blocked(addr), None, "budget left");
        }
        limiter.record_failure(addr);
        let verdict = limiter
            .blocked(addr)
            .expect("third failure spends the last");
        assert!(!verdict.allowed);
        assert_eq!((verdict.limit, verdict.remaining), (3, 0));
        assert!((1..=20).contains(&verdict.retry_after_secs), "{verdict:?}");
        // Checking spends nothing and keeps saying no.
        assert!(limiter.blocked(addr).is_some());
        assert_eq!(limiter.blocked(ip("203.0.113.8")), None, "other addresses");
    }

    #[test]
    fn failed_auth_budget_refills_over_time() {
        let limiter = FailedAuthLimiter::new(600, Metrics::new());
        let addr = ip("198.51.100.1");
        for _ in 0..600 {
            limiter.record_failure(addr);
        }
        assert!(limiter.blocked(addr).is_some());
        // One failure refills every 100 ms.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(limiter.blocked(addr), None);
    }

    #[test]
    fn failed_auth_ipv6_is_limited_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = FailedAuthLimiter::new(1, Metrics::new());
        limiter.record_failure(ip("2001:db8:1:2::1"));
        assert!(
            limiter.blocked(ip("2001:db8:1:2:ffff::9")).is_some(),
            "same /64"
        );
        assert_eq!(limiter.blocked(ip("2001:db8:1:3::1")), None, "other /64");
        limiter.record_failure(ip("::ffff:192.0.2.1"));
        assert!(limiter.blocked(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
    }
}
