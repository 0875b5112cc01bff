//! Rate limiting per principal (SPEC §6): a user (JWT) or an API key gets
//! `per_second` requests with bursts of `burst`, by GCRA.
//!
//! With Redis the limit is shared by every sidecar, with time from Redis. A
//! sidecar takes a principal's allowance in **leases** of up to `lease`
//! requests per script call and admits them locally; it asks for the next
//! lease in the background when half the stock is spent, so a busy
//! principal's Checks do not wait on Redis. With `lease: 1` every request is
//! one script call (exact). Without Redis, or while Redis is failing, each
//! sidecar enforces the same limit on its own (governor). A Redis failure
//! never denies a request by itself.
//!
//! The error a lease allows, for one principal with N sidecars: in any
//! window, at most `burst + per_second × window` requests plus what the
//! sidecars held in stock when the window began (at most `N × lease`) are
//! admitted; a stock is good for [`LEASE_TTL`], and what is left of it then
//! is given back with the next lease request. A refusal from Redis is held
//! locally until its `retry-after`, so a principal over its limit costs no
//! Redis call per request either.
//!
//! Apart from that, [`FailedAuthLimiter`] bounds what an unauthenticated client
//! can make us do: failed authentications per client address, checked before
//! any credential lookup.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
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

/// GCRA lease in one round trip. KEYS: the principal's TAT key. ARGV:
/// emission interval µs, burst, requests wanted, requests given back (an
/// expired stock's unused part). Returns {granted, remaining,
/// retry_after_µs, reset_µs}: `granted` is between 0 (refused) and the
/// number wanted. Time comes from Redis so sidecars' clocks do not matter.
/// With one wanted and none given back it is the plain GCRA step.
const GCRA_LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local back = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
tat = tat - back * interval
if tat < now then tat = now end
local available = math.floor((now - tat) / interval) + burst
local granted = math.min(want, available)
if granted < 1 then
  return {0, 0, math.ceil(tat + interval - burst * interval - now), math.ceil(tat - now)}
end
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {granted, available - granted, 0, math.ceil(new_tat - now)}
"#;

/// How long a leased stock may be spent; its unused part is given back at
/// the next lease request after that.
pub const LEASE_TTL: Duration = Duration::from_secs(1);

/// Limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per principal.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: u32,
    /// Requests taken from Redis per script call (1 = every request).
    pub lease: u32,
}

impl RateLimitConfig {
    /// Default `lease`: a tenth of a second's allowance, at least 1 and at
    /// most the burst, so a sidecar's stock is a small part of the limit.
    pub fn default_lease(per_second: f64, burst: u32) -> u32 {
        ((per_second / 10.0).floor().clamp(1.0, 1e6) as u32).min(burst.max(1))
    }
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

/// What the limiter needs to ask Redis, shared with background lease
/// requests.
struct Shared {
    config: RateLimitConfig,
    interval: Duration,
    redis: Arc<Redis>,
    gcra: Script,
}

/// One reply of the lease script.
#[derive(Debug, Clone, Copy)]
struct Grant {
    granted: u32,
    remaining: u64,
    retry_after: Duration,
    reset: Duration,
}

impl Shared {
    /// Asks Redis for up to `want` requests of `key`'s allowance, giving back
    /// `back` unused ones; `None` when Redis cannot answer.
    async fn lease(&self, key: LimitKey, want: u32, back: u32) -> Option<Grant> {
        if !self.redis.up() {
            return None;
        }
        let keys = vec![self.redis.key(&format!("rl:{}", key.redis_suffix()))];
        let args: Vec<Value> = vec![
            (self.interval.as_micros().max(1) as i64).into(),
            i64::from(self.config.burst).into(),
            i64::from(want.max(1)).into(),
            i64::from(back).into(),
        ];
        let reply = self
            .redis
            .eval::<Vec<i64>>(&self.gcra, keys, args)
            .await
            .ok()?;
        let [granted, remaining, retry_us, reset_us] = reply[..] else {
            return None;
        };
        Some(Grant {
            granted: granted.clamp(0, i64::from(want.max(1))) as u32,
            remaining: remaining.max(0) as u64,
            retry_after: Duration::from_micros(retry_us.max(0) as u64),
            reset: Duration::from_micros(reset_us.max(0) as u64),
        })
    }
}

/// A principal's leased allowance on this sidecar.
#[derive(Debug)]
struct Stock {
    /// Requests leased and not yet admitted.
    tokens: u32,
    /// The stock may be spent until then.
    expires: Instant,
    /// Expired, unspent requests to give back with the next lease request.
    unused: u32,
    /// What Redis said was left beyond the lease, and when the bucket is
    /// full again (for the `ratelimit-*` headers).
    remaining: u64,
    reset_at: Instant,
    /// Redis refused: every request is refused here until then.
    refused_until: Option<Instant>,
    /// A background lease request is running.
    refilling: bool,
}

/// One principal's state: the stock, and a lock that makes one request at a
/// time ask Redis when the stock is empty.
struct Principal {
    stock: Mutex<Stock>,
    asking: tokio::sync::Mutex<()>,
}

impl Principal {
    fn new() -> Principal {
        let now = Instant::now();
        Principal {
            stock: Mutex::new(Stock {
                tokens: 0,
                expires: now,
                unused: 0,
                remaining: 0,
                reset_at: now,
                refused_until: None,
                refilling: false,
            }),
            asking: tokio::sync::Mutex::new(()),
        }
    }

    fn stock(&self) -> std::sync::MutexGuard<'_, Stock> {
        self.stock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The limiter.
pub struct RateLimiter {
    config: RateLimitConfig,
    interval: Duration,
    local: LocalLimiter,
    /// Shared limits through Redis, when configured.
    shared: Option<Arc<Shared>>,
    /// Leased stocks per principal (bounded; an idle one is dropped, and
    /// with it at most `lease` requests of that principal's allowance until
    /// Redis's bucket refills them).
    stocks: moka::sync::Cache<LimitKey, Arc<Principal>>,
    metrics: Metrics,
}

impl RateLimiter {
    /// A limiter shared through `redis` when given.
    pub fn new(
        config: RateLimitConfig,
        redis: Option<Arc<Redis>>,
        metrics: Metrics,
    ) -> RateLimiter {
        let config = RateLimitConfig {
            lease: config.lease.max(1),
            ..config
        };
        let interval = Duration::from_secs_f64(1.0 / config.per_second.max(1e-6));
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        RateLimiter {
            config,
            interval,
            local: Gcra::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            shared: redis.map(|redis| {
                Arc::new(Shared {
                    config,
                    interval,
                    redis,
                    gcra: Script::from_lua(GCRA_LEASE),
                })
            }),
            stocks: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(LEASE_TTL.max(Duration::from_secs(10)))
                .build(),
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

    /// Spends from the principal's leased stock, asking Redis when it is
    /// empty; `None` when Redis cannot answer (the caller falls back to the
    /// local limiter).
    async fn check_redis(&self, key: LimitKey) -> Option<RateLimitInfo> {
        let shared = self.shared.as_ref().filter(|s| s.redis.up())?;
        let principal = self.stocks.get_with(key, || Arc::new(Principal::new()));
        if let Some(info) = self.spend(shared, key, &principal) {
            return Some(info);
        }
        // Empty: one request at a time asks; the others find its lease.
        let _asking = principal.asking.lock().await;
        if let Some(info) = self.spend(shared, key, &principal) {
            return Some(info);
        }
        let unused = std::mem::take(&mut principal.stock().unused);
        let grant = shared.lease(key, self.config.lease, unused).await?;
        let now = Instant::now();
        let mut stock = principal.stock();
        stock.reset_at = now + grant.reset;
        stock.remaining = grant.remaining;
        if grant.granted == 0 {
            let retry = grant.retry_after.max(Duration::from_millis(1));
            stock.refused_until = Some(now + retry);
            return Some(self.refused(retry));
        }
        stock.tokens = grant.granted - 1;
        stock.expires = now + LEASE_TTL;
        stock.refused_until = None;
        Some(self.allowed(&stock, now))
    }

    /// Spends one request from the stock if it holds one (starting the next
    /// lease request in the background when half of it is gone), or answers
    /// a refusal Redis gave that still holds; `None` when the stock is empty.
    fn spend(
        &self,
        shared: &Arc<Shared>,
        key: LimitKey,
        principal: &Arc<Principal>,
    ) -> Option<RateLimitInfo> {
        let now = Instant::now();
        let (info, refill) = {
            let mut stock = principal.stock();
            match take(&mut stock, now, self.config.lease) {
                Some(refill) => (self.allowed(&stock, now), refill),
                None => match stock.refused_until {
                    Some(until) if until > now => (self.refused(until - now), false),
                    _ => return None,
                },
            }
        };
        if refill {
            self.refill(shared.clone(), key, principal.clone());
        }
        Some(info)
    }

    /// Tops the stock up to `lease` in the background. A failure or a
    /// refusal leaves the stock as it is: the request that finds it empty
    /// asks again.
    fn refill(&self, shared: Arc<Shared>, key: LimitKey, principal: Arc<Principal>) {
        let lease = self.config.lease;
        tokio::spawn(async move {
            let asking = principal.asking.try_lock();
            let want = {
                let mut stock = principal.stock();
                if asking.is_err() {
                    stock.refilling = false;
                    return;
                }
                lease.saturating_sub(stock.tokens)
            };
            let grant = if want > 0 {
                shared.lease(key, want, 0).await
            } else {
                None
            };
            let now = Instant::now();
            let mut stock = principal.stock();
            stock.refilling = false;
            if let Some(grant) = grant.filter(|g| g.granted > 0) {
                if stock.expires <= now {
                    stock.unused += stock.tokens;
                    stock.tokens = 0;
                }
                stock.tokens += grant.granted;
                stock.expires = now + LEASE_TTL;
                stock.remaining = grant.remaining;
                stock.reset_at = now + grant.reset;
            }
        });
    }

    fn allowed(&self, stock: &Stock, now: Instant) -> RateLimitInfo {
        RateLimitInfo {
            allowed: true,
            limit: self.config.burst,
            remaining: stock.remaining + u64::from(stock.tokens),
            reset_secs: ceil_secs(stock.reset_at.saturating_duration_since(now)),
            retry_after_secs: 0,
        }
    }

    /// A refusal: nothing left, `retry` until the next request refills.
    fn refused(&self, retry: Duration) -> RateLimitInfo {
        RateLimitInfo {
            allowed: false,
            limit: self.config.burst,
            remaining: 0,
            reset_secs: ceil_secs(self.interval * self.config.burst),
            retry_after_secs: ceil_secs(retry).max(1),
        }
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
                self.refused(not_until.wait_time_from(DefaultClock::default().now()))
            }
        }
    }

    /// Drops idle principals' state so memory stays bounded; the maintenance
    /// loop calls this periodically.
    pub fn forget_idle(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
        self.stocks.run_pending_tasks();
    }

    /// Principals with local state.
    pub fn tracked(&self) -> usize {
        self.local.len()
    }
}

/// Takes one request from `stock` when it holds an unexpired one; `Some`
/// tells whether a background refill should start (half of a lease of at
/// least two is spent, and none is running). An expired stock's rest is set
/// aside to be given back.
fn take(stock: &mut Stock, now: Instant, lease: u32) -> Option<bool> {
    if stock.tokens > 0 && stock.expires <= now {
        stock.unused += stock.tokens;
        stock.tokens = 0;
    }
    if stock.tokens == 0 {
        return None;
    }
    stock.tokens -= 1;
    let refill = lease >= 2 && !stock.refilling && stock.tokens <= lease / 2;
    if refill {
        stock.refilling = true;
    }
    Some(refill)
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
            RateLimiter::new(
                RateLimitConfig {
                    per_second,
                    burst,
                    lease: 1,
                },
                None,
                metrics.clone(),
            ),
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

    fn stock(tokens: u32, expires: Instant) -> Stock {
        Stock {
            tokens,
            expires,
            unused: 0,
            remaining: 0,
            reset_at: expires,
            refused_until: None,
            refilling: false,
        }
    }

    #[test]
    fn a_lease_is_spent_one_request_at_a_time_and_refilled_at_half() {
        let now = Instant::now();
        let mut s = stock(6, now + LEASE_TTL);
        // Lease of 8, 6 left: refill once 4 (half) are left, and only once.
        let refills: Vec<bool> = (0..6)
            .map(|_| take(&mut s, now, 8).expect("in stock"))
            .collect();
        assert_eq!(refills, [false, true, false, false, false, false]);
        assert_eq!(s.tokens, 0);
        assert_eq!(take(&mut s, now, 8), None, "empty: ask Redis");
    }

    #[test]
    fn a_lease_of_one_never_refills_in_the_background() {
        let now = Instant::now();
        let mut s = stock(1, now + LEASE_TTL);
        assert_eq!(take(&mut s, now, 1), Some(false));
        assert_eq!(take(&mut s, now, 1), None);
    }

    #[test]
    fn an_expired_stock_is_set_aside_to_be_given_back() {
        let now = Instant::now();
        let mut s = stock(3, now);
        assert_eq!(take(&mut s, now, 4), None);
        assert_eq!((s.tokens, s.unused), (0, 3));
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
