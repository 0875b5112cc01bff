//! L2: facts shared by every sidecar through Redis (SPEC §5), over the shared
//! [`Redis`] client.
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
//! Redis trouble never reaches the proxy: every call goes through [`Redis`]'s
//! timeout and circuit breaker, and an open circuit means L1 + Postgres.
//! Redis Cluster: the scripts touch the entry, version and epoch keys together,
//! so put a hash tag in the prefix (`{velro}:`) to keep them in one slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::interfaces::KeysInterface;
use fred::types::Value;
use fred::types::scripts::Script;
use tokio::sync::Notify;

use super::{Fact, FactKey};
use crate::breaker::CircuitState;
use crate::metrics::Metrics;
use crate::redis::Redis;

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

/// Fact TTLs in Redis (`redis.ttl_secs`, `redis.negative_ttl_secs`).
#[derive(Debug, Clone, Copy)]
pub struct L2Settings {
    /// TTL of a present fact (safety net).
    pub ttl: Duration,
    /// TTL of a negative fact.
    pub negative_ttl: Duration,
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

/// The Redis tier.
pub struct L2 {
    /// The shared client (timeouts, breaker, reconnects).
    redis: Arc<Redis>,
    /// TTL of a present fact.
    ttl: Duration,
    /// TTL of a negative fact.
    negative_ttl: Duration,
    /// Bumped by every event after which L2 may hold what we failed to void.
    dirty: AtomicU64,
    /// The `dirty` value that the last successful epoch bump covered.
    clean: AtomicU64,
    /// Wakes the maintenance task.
    wake: Notify,
    /// The compare-and-set fill script.
    fill: Script,
    /// The delete-and-bump invalidation script.
    invalidate: Script,
    /// Fill results.
    metrics: Metrics,
}

impl L2 {
    /// The tier over `redis`; it distrusts Redis until its first epoch bump.
    pub fn new(redis: Arc<Redis>, settings: L2Settings, metrics: Metrics) -> Arc<L2> {
        Arc::new(L2 {
            redis,
            ttl: settings.ttl,
            negative_ttl: settings.negative_ttl,
            // Dirty until the first epoch bump: entries written while no
            // sidecar was listening may be stale.
            dirty: AtomicU64::new(1),
            clean: AtomicU64::new(0),
            wake: Notify::new(),
            fill: Script::from_lua(FILL),
            invalidate: Script::from_lua(INVALIDATE),
            metrics,
        })
    }

    /// Keeps L2 honest: bumps the epoch whenever this sidecar is dirty. Runs
    /// until `stop`.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        // Every (re)connection may be to a server that lost writes: a restart
        // from an old snapshot, a failover to a lagging replica. Entries it
        // holds may predate invalidations, so each one makes us dirty.
        // Subscribed before the task runs, so the first connection is seen.
        let mut reconnects = this.redis.reconnects();
        tokio::spawn(async move {
            let mut events_open = true;
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
        })
    }

    async fn maintain(&self) {
        let dirty = self.dirty.load(Ordering::Acquire);
        if self.clean.load(Ordering::Acquire) == dirty || !self.redis.up() {
            // Nothing to do, or Redis is away: the client's probe closes the
            // circuit, and the bump follows.
            return;
        }
        let bump = self.redis.client().incr::<i64, _>(self.redis.key("epoch"));
        match self.redis.call(bump).await {
            Ok(_) => {
                self.clean.fetch_max(dirty, Ordering::AcqRel);
                tracing::info!("redis epoch bumped: entries from before are void");
            }
            Err(e) => tracing::debug!(error = %e, "redis epoch bump failed"),
        }
    }

    /// True while reads and fills may use Redis.
    pub fn usable(&self) -> bool {
        self.clean.load(Ordering::Acquire) == self.dirty.load(Ordering::Acquire) && self.redis.up()
    }

    /// The Redis breaker's state.
    pub fn circuit(&self) -> CircuitState {
        self.redis.circuit()
    }

    /// True while the circuit is closed (Redis answering).
    pub fn up(&self) -> bool {
        self.redis.up()
    }

    /// Stop trusting L2 until the epoch has been bumped after this call.
    pub fn mark_dirty(&self) {
        self.dirty.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    fn fact_keys(&self, key: &FactKey) -> (String, String) {
        let id = key.redis_id();
        (
            self.redis.key(&format!("f:{}:{id}", key.kind())),
            self.redis.key(&format!("v:{}:{id}", key.kind())),
        )
    }

    /// Reads one fact: entry, version and epoch in one round trip.
    pub async fn get(&self, key: &FactKey) -> L2Get {
        if !self.usable() {
            return L2Get::Unavailable;
        }
        let (entry, version) = self.fact_keys(key);
        let read = self
            .redis
            .call(self.redis.client().mget::<Vec<Option<Vec<u8>>>, _>(vec![
                entry,
                version,
                self.redis.key("epoch"),
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
        let keys = vec![entry, version, self.redis.key("epoch")];
        let args: Vec<Value> = vec![
            ticket.version.into(),
            ticket.epoch.into(),
            Value::Bytes(value.into()),
            (ttl.as_millis() as i64).into(),
        ];
        match self.redis.eval::<i64>(&self.fill, keys, args).await {
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
        if !self.redis.up() {
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
            .redis
            .eval::<i64>(&self.invalidate, redis_keys, vec![version_ttl.into()])
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "redis invalidation failed; L2 distrusted until the epoch is bumped");
            self.mark_dirty();
        }
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
