//! L2: facts shared by every sidecar through Redis (SPEC §5), and the Redis
//! side of rate limiting.
//!
//! Three kinds of key live under the configured prefix:
//!
//! - `f:<kind>:<id>` — a fact, encoded with postcard behind a format byte, with
//!   the key version and epoch its fill started under;
//! - `v:<kind>:<id>` — the key's version, bumped (with the entry deleted, in one
//!   script) by every invalidation;
//! - `epoch` — bumped after any moment in which this sidecar may have missed an
//!   invalidation (a LISTEN gap, an invalidation that did not reach Redis, a
//!   flush).
//!
//! Why no stale entry survives:
//! - A fill reads the version and epoch *before* it queries Postgres and writes
//!   only if both are unchanged (compare-and-set in a script). An invalidation
//!   that lands between the read and the write bumps the version, so the write
//!   is refused; one that lands after the write deletes it.
//! - A read trusts an entry only if its version and epoch equal the current
//!   ones, so a bumped epoch voids every entry at once, for every sidecar.
//! - While this sidecar may have missed an invalidation (it is "dirty"), it
//!   neither reads nor writes L2 until it has bumped the epoch; a bump that
//!   started before the latest dirtying event does not count. Dirtying events:
//!   start-up, a LISTEN gap, a flush, an invalidation that did not reach Redis,
//!   and every Redis (re)connection (the server may have restarted from an old
//!   snapshot or failed over to a replica that missed writes).
//!
//! Redis trouble never reaches the proxy: every call has a timeout, failures
//! feed a circuit breaker, and an open circuit means L1 + Postgres.
//! Redis Cluster: the scripts touch the entry, version and epoch keys together,
//! so put a hash tag in the prefix (`{velro}:`) to keep them in one slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, KeysInterface};
use fred::types::Value;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use fred::types::scripts::Script;
use tokio::sync::Notify;

use crate::breaker::{Breaker, BreakerConfig, CircuitState};
use crate::facts::{Fact, FactKey};
use crate::metrics::Metrics;

/// First byte of every stored value; a different byte (another release's
/// format) reads as a miss.
const FORMAT: u8 = 1;

/// Compare-and-set fill. KEYS: entry, version, epoch. ARGV: version and epoch
/// seen before the Postgres read, value, TTL in ms.
const FILL: &str = r#"
local v = redis.call('GET', KEYS[2]) or '0'
local e = redis.call('GET', KEYS[3]) or '0'
if v == ARGV[1] and e == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
"#;

/// Invalidation. KEYS: entry1, version1, entry2, version2, ... ARGV: version TTL
/// in ms. Deleting and bumping in one step is what lets readers skip a
/// separate version check race.
const INVALIDATE: &str = r#"
for i = 1, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  redis.call('INCR', KEYS[i + 1])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
end
return #KEYS / 2
"#;

/// GCRA in one round trip (see `ratelimit`). KEYS: the principal's TAT key.
/// ARGV: emission interval µs, burst. Returns {allowed, remaining,
/// retry_after_µs, reset_µs}. Time comes from Redis so sidecars' clocks do not
/// matter.
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

/// L2 settings.
#[derive(Clone)]
pub struct RedisSettings {
    /// `REDIS_URL` (may carry a password; never logged unredacted).
    pub url: String,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Per-call timeout.
    pub timeout: Duration,
    /// TTL of a present fact (safety net).
    pub ttl: Duration,
    /// TTL of a negative fact.
    pub negative_ttl: Duration,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &crate::config::redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// What a read found.
#[derive(Debug)]
pub enum L2Get {
    /// A trusted entry.
    Hit(Fact),
    /// No trusted entry; fill with this ticket after reading Postgres.
    Miss(Ticket),
    /// L2 not usable now (circuit open, dirty, error): go to Postgres.
    Unavailable,
}

/// The version and epoch a fill started under.
#[derive(Debug, Clone)]
pub struct Ticket {
    version: String,
    epoch: String,
}

/// A GCRA verdict from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraVerdict {
    /// Let it through.
    pub allowed: bool,
    /// Requests left in the burst.
    pub remaining: u64,
    /// Wait before the next request would be allowed (denies).
    pub retry_after: Duration,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// The Redis tier.
pub struct L2 {
    client: Client,
    prefix: String,
    timeout: Duration,
    ttl: Duration,
    negative_ttl: Duration,
    breaker: Breaker,
    /// Bumped by every event after which L2 may hold what we failed to void.
    dirty: AtomicU64,
    /// The `dirty` value that the last successful epoch bump covered.
    clean: AtomicU64,
    /// Wakes the maintenance task.
    wake: Notify,
    fill: Script,
    invalidate: Script,
    gcra: Script,
    metrics: Metrics,
}

/// A Redis failure (timeout, connection, protocol); logged, never sent to a client.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct L2Error(String);

impl L2 {
    /// Builds the client. Connecting happens in the background (`spawn_maintenance`):
    /// start-up never waits for Redis.
    pub fn new(settings: &RedisSettings, metrics: Metrics) -> Result<Arc<L2>, String> {
        let config = RedisConfig::from_url(&settings.url)
            .map_err(|e| format!("redis.url / REDIS_URL: {}", e.details()))?;
        let timeout = settings.timeout;
        let client = fred::types::Builder::from_config(config)
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(1);
                c.internal_command_timeout = Duration::from_secs(1);
                // A timed-out call is not retried: the breaker decides.
                c.max_command_attempts = 1;
                c.max_command_buffer_len = 10_000;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| format!("redis.url / REDIS_URL: {}", e.details()))?;
        metrics.dependency_up.with_label_values(&["redis"]).set(0);
        Ok(Arc::new(L2 {
            client,
            prefix: settings.key_prefix.clone(),
            timeout,
            ttl: settings.ttl,
            negative_ttl: settings.negative_ttl,
            breaker: Breaker::new("redis", settings.breaker, metrics.clone()),
            // Dirty until the first epoch bump: entries written while no
            // sidecar was listening may be stale.
            dirty: AtomicU64::new(1),
            clean: AtomicU64::new(0),
            wake: Notify::new(),
            fill: Script::from_lua(FILL),
            invalidate: Script::from_lua(INVALIDATE),
            gcra: Script::from_lua(GCRA),
            metrics,
        }))
    }

    /// Connects and keeps L2 honest: bumps the epoch whenever this sidecar is
    /// dirty, and probes Redis while the circuit is open. Runs until `stop`.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Every (re)connection may be to a server that lost writes: a restart
            // from an old snapshot, a failover to a lagging replica. Entries it
            // holds may predate invalidations, so each one makes us dirty.
            let mut reconnects = this.client.reconnect_rx();
            let mut events_open = true;
            // Reconnects are fred's job from here on.
            let _connection = this.client.connect();
            loop {
                this.maintain().await;
                tokio::select! {
                    _ = this.wake.notified() => {}
                    r = reconnects.recv(), if events_open => match r {
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            tracing::info!("redis connected; distrusting L2 until the epoch is bumped");
                            this.mark_dirty();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => events_open = false,
                    },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => break,
                }
            }
            let _ = this.client.quit().await;
        })
    }

    async fn maintain(&self) {
        let dirty = self.dirty.load(Ordering::Acquire);
        let needs_bump = self.clean.load(Ordering::Acquire) != dirty;
        let state = self.breaker.state();
        if !needs_bump && state == CircuitState::Closed {
            return;
        }
        if state != CircuitState::Closed && !self.breaker.allow() {
            return;
        }
        let probe = async {
            if needs_bump {
                let _: i64 = self.client.incr(self.key("epoch")).await?;
            } else {
                let _: Value = self.client.ping(None).await?;
            }
            Ok::<_, fred::error::Error>(())
        };
        match self.call(probe).await {
            Ok(()) => {
                if needs_bump {
                    self.clean.fetch_max(dirty, Ordering::AcqRel);
                    tracing::info!("redis epoch bumped: entries from before are void");
                }
            }
            Err(e) => tracing::debug!(error = %e, "redis maintenance call failed"),
        }
    }

    /// True while reads and fills may use Redis.
    pub fn usable(&self) -> bool {
        self.clean.load(Ordering::Acquire) == self.dirty.load(Ordering::Acquire)
            && self.breaker.state() == CircuitState::Closed
    }

    /// The breaker's state.
    pub fn circuit(&self) -> CircuitState {
        self.breaker.state()
    }

    /// True while the circuit is closed (Redis answering).
    pub fn up(&self) -> bool {
        self.breaker.state() == CircuitState::Closed
    }

    /// Stop trusting L2 until the epoch has been bumped after this call.
    pub fn mark_dirty(&self) {
        self.dirty.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Runs one Redis call with the timeout, feeding the breaker.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, L2Error> {
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(L2Error(e.details().to_owned())),
            Err(_) => Err(L2Error(format!("timed out after {:?}", self.timeout))),
        };
        let up = result.is_ok();
        if up {
            self.breaker.success();
        } else {
            self.breaker.failure();
        }
        self.metrics
            .dependency_up
            .with_label_values(&["redis"])
            .set(i64::from(self.up()));
        result
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn fact_keys(&self, key: &FactKey) -> (String, String) {
        let id = key.redis_id();
        (
            format!("{}f:{}:{id}", self.prefix, key.kind()),
            format!("{}v:{}:{id}", self.prefix, key.kind()),
        )
    }

    /// Reads one fact: entry, version and epoch in one round trip.
    pub async fn get(&self, key: &FactKey) -> L2Get {
        if !self.usable() {
            return L2Get::Unavailable;
        }
        let (entry, version) = self.fact_keys(key);
        let read = self
            .call(self.client.mget::<Vec<Option<Vec<u8>>>, _>(vec![
                entry,
                version,
                self.key("epoch"),
            ]))
            .await;
        let Ok(mut values) = read else {
            return L2Get::Unavailable;
        };
        if values.len() != 3 {
            return L2Get::Unavailable;
        }
        let epoch = text(values.pop().flatten());
        let version = text(values.pop().flatten());
        if let Some(Some(bytes)) = values.pop()
            && let Some(fact) = decode(&bytes, key, &version, &epoch)
        {
            return L2Get::Hit(fact);
        }
        L2Get::Miss(Ticket { version, epoch })
    }

    /// Writes a fact read from Postgres, unless an invalidation or epoch bump
    /// happened since `ticket` was taken.
    pub async fn put(&self, key: &FactKey, ticket: Ticket, fact: &Fact) {
        if !self.usable() {
            return;
        }
        let Some(value) = encode(fact, &ticket) else {
            return;
        };
        let ttl = if fact.is_negative() {
            self.negative_ttl
        } else {
            self.ttl
        };
        let (entry, version) = self.fact_keys(key);
        let keys = vec![entry, version, self.key("epoch")];
        let args: Vec<Value> = vec![
            ticket.version.into(),
            ticket.epoch.into(),
            Value::Bytes(value.into()),
            (ttl.as_millis() as i64).into(),
        ];
        match self
            .call(
                self.fill
                    .evalsha_with_reload::<i64, _, _>(&self.client, keys, args),
            )
            .await
        {
            Ok(1) => self.metrics.l2_fills.with_label_values(&["written"]).inc(),
            Ok(_) => self.metrics.l2_fills.with_label_values(&["refused"]).inc(),
            Err(e) => tracing::debug!(error = %e, "redis fill failed"),
        }
    }

    /// Voids facts for every sidecar. Idempotent: N sidecars applying the same
    /// notification only bump the versions N times. If Redis cannot be told,
    /// this sidecar turns dirty so nobody trusts what it failed to void.
    pub async fn invalidate(&self, keys: &[FactKey]) {
        if keys.is_empty() {
            return;
        }
        if self.breaker.state() != CircuitState::Closed {
            self.mark_dirty();
            return;
        }
        let mut redis_keys = Vec::with_capacity(keys.len() * 2);
        for key in keys {
            let (entry, version) = self.fact_keys(key);
            redis_keys.push(entry);
            redis_keys.push(version);
        }
        // Versions must outlive any entry and any fill in flight.
        let version_ttl = (self.ttl.max(self.negative_ttl) * 2).as_millis() as i64;
        let result = self
            .call(self.invalidate.evalsha_with_reload::<i64, _, _>(
                &self.client,
                redis_keys,
                vec![version_ttl],
            ))
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "redis invalidation failed; L2 distrusted until the epoch is bumped");
            self.mark_dirty();
        }
    }

    /// One GCRA step for `key`; `None` when Redis cannot answer (the caller
    /// falls back to its local limiter).
    pub async fn gcra(&self, key: &str, interval: Duration, burst: u32) -> Option<GcraVerdict> {
        if !self.up() {
            return None;
        }
        let keys = vec![self.key(&format!("rl:{key}"))];
        let args: Vec<i64> = vec![interval.as_micros().max(1) as i64, i64::from(burst)];
        let reply = self
            .call(
                self.gcra
                    .evalsha_with_reload::<Vec<i64>, _, _>(&self.client, keys, args),
            )
            .await
            .ok()?;
        let [allowed, remaining, retry_us, reset_us] = reply[..] else {
            return None;
        };
        Some(GcraVerdict {
            allowed: allowed == 1,
            remaining: remaining.max(0) as u64,
            retry_after: Duration::from_micros(retry_us.max(0) as u64),
            reset: Duration::from_micros(reset_us.max(0) as u64),
        })
    }
}

fn text(value: Option<Vec<u8>>) -> String {
    value
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_else(|| "0".to_owned())
}

/// What goes into Redis: format byte, then postcard of (version, epoch, fact).
fn encode(fact: &Fact, ticket: &Ticket) -> Option<Vec<u8>> {
    let mut out = vec![FORMAT];
    let body = postcard::to_allocvec(&(&ticket.version, &ticket.epoch, fact)).ok()?;
    out.extend_from_slice(&body);
    Some(out)
}

/// The stored fact, if it is in our format, for this kind of key, and stamped
/// with the current version and epoch.
fn decode(bytes: &[u8], key: &FactKey, version: &str, epoch: &str) -> Option<Fact> {
    let (&format, body) = bytes.split_first()?;
    if format != FORMAT {
        return None;
    }
    let (v, e, fact): (String, String, Fact) = postcard::from_bytes(body).ok()?;
    (v == version && e == epoch && fact.matches(key)).then_some(fact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::User;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn ticket(v: &str, e: &str) -> Ticket {
        Ticket {
            version: v.to_owned(),
            epoch: e.to_owned(),
        }
    }

    #[test]
    fn encode_decode_round_trip_checks_stamps_and_kind() {
        let id = Uuid::new_v4();
        let key = FactKey::User(id);
        let fact = Fact::User(None);
        let bytes = encode(&fact, &ticket("3", "7")).expect("encodes");
        assert_eq!(decode(&bytes, &key, "3", "7"), Some(fact.clone()));
        assert_eq!(decode(&bytes, &key, "4", "7"), None, "newer version");
        assert_eq!(decode(&bytes, &key, "3", "8"), None, "newer epoch");
        assert_eq!(
            decode(&bytes, &FactKey::Team(id), "3", "7"),
            None,
            "fact of another kind"
        );
        let mut other_format = bytes.clone();
        other_format[0] = FORMAT + 1;
        assert_eq!(decode(&other_format, &key, "3", "7"), None);
    }

    #[test]
    fn encoding_is_compact() {
        let user = User {
            id: Uuid::new_v4(),
            status: crate::model::UserStatus::Active,
        };
        let bytes = encode(&Fact::User(Some(user)), &ticket("12", "3")).expect("encodes");
        assert!(bytes.len() < 40, "{} bytes", bytes.len());
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let key = FactKey::User(Uuid::nil());
            let _ = decode(&bytes, &key, "0", "0");
        }
    }
}
