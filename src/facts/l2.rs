//! L2: facts shared by every sidecar through Redis (SPEC §5), over the shared
//! [`Redis`] client.
//!
//! Three kinds of key live under the configured prefix:
//!
//! - `f:<kind>:<id>` — a fact, encoded with postcard behind a format byte, with
//!   the key version and epoch its fill started under;
//! - `v:<kind>:<id>` — the key's version, bumped (with the entry deleted, in one
//!   script) by every invalidation;
//! - `epoch` — a random token, replaced (never incremented: a Redis that lost
//!   its data must never see an old epoch again) whenever entries may have
//!   missed an invalidation;
//! - `cover` — the change-feed position (a WAL LSN) through which every
//!   invalidation is known to have reached Redis under the current epoch.
//!
//! Why no stale entry survives:
//! - A fill reads the version and epoch *before* it queries Postgres and writes
//!   only if both are unchanged (compare-and-set in a script). An invalidation
//!   that lands between the read and the write bumps the version, so the write
//!   is refused; one that lands after the write deletes it.
//! - A read trusts an entry only if its version and epoch equal the current
//!   ones, so a bumped epoch voids every entry at once, for every sidecar.
//! - While this sidecar cannot vouch for L2 (it is "dirty"), it neither reads
//!   nor writes it until it has rejoined or bumped the epoch; a rejoin or bump
//!   that started before the latest dirtying event does not count.
//!
//! Restarts keep Redis warm. Every listening sidecar that hears its own
//! heartbeat back (after applying every invalidation queued before it) extends
//! `cover` to the heartbeat's position, provided its own LISTEN session began
//! at or before `cover`: coverage stays one unbroken stretch of the change
//! feed. A sidecar that starts, or whose LISTEN had a gap, or whose Redis
//! connection was re-established, *rejoins* once `cover` reaches a position at
//! which it was itself listening: then nothing committed before that position
//! was missed by everyone, and it covers what follows. Only if `cover` does not
//! get there within `freshness.max_silence_ms` (nobody else was listening, or
//! Redis lost its data) is the epoch bumped. An invalidation that did not reach
//! Redis, an admin flush and a TRUNCATE always bump.
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

/// Rejoin. KEYS: epoch, cover. ARGV: position. 1 when `cover` has reached
/// the position; -1 when there is no epoch at all (nothing to keep warm: bump
/// at once); 0 otherwise.
const JOIN: &str = r#"
local e = redis.call('GET', KEYS[1])
local w = redis.call('GET', KEYS[2])
if not e then
  return -1
end
if w and tonumber(w) >= tonumber(ARGV[1]) then
  return 1
end
return 0
"#;

/// Extend coverage. KEYS: cover. ARGV: the session's start, the position heard
/// through. Only an unbroken stretch may extend it.
const ADVANCE: &str = r#"
local w = redis.call('GET', KEYS[1])
if w and tonumber(ARGV[1]) <= tonumber(w) and tonumber(ARGV[2]) > tonumber(w) then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Bump. KEYS: epoch, cover. ARGV: a fresh random token, the position from
/// which this sidecar covers ('0': not listening, coverage left as it is —
/// an unbroken stretch stays one, whatever the epoch).
const BUMP: &str = r#"
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
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
    /// Bumped by every event after which this sidecar cannot vouch for L2.
    dirty: AtomicU64,
    /// The `dirty` value that the last successful rejoin or bump covered.
    clean: AtomicU64,
    /// The latest `dirty` value whose event requires an epoch bump (an
    /// invalidation that did not reach Redis, a flush).
    bump_needed: AtomicU64,
    /// Invalidations whose Redis side is in flight: L2 is not used meanwhile.
    pending: AtomicU64,
    /// Where this sidecar's current LISTEN session began (0: not listening yet).
    session_start: AtomicU64,
    /// The latest feed position this sidecar has heard (and applied) through.
    position: AtomicU64,
    /// The position `cover` must reach for a rejoin (0: not known yet).
    join_target: AtomicU64,
    /// When the current dirty spell began, for the rejoin's patience.
    dirty_since: std::sync::Mutex<Option<std::time::Instant>>,
    /// How long to wait for `cover` before bumping instead.
    join_patience: Duration,
    /// Wakes the maintenance task.
    wake: Notify,
    /// The compare-and-set fill script.
    fill: Script,
    /// The delete-and-bump invalidation script.
    invalidate: Script,
    /// The rejoin check.
    join: Script,
    /// The coverage extension.
    advance: Script,
    /// The epoch replacement.
    bump: Script,
    /// Fill results, trust transitions.
    metrics: Metrics,
}

/// While alive, this sidecar does not use L2 (an invalidation's Redis side is
/// in flight).
pub struct Pending<'a>(&'a AtomicU64);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl L2 {
    /// The tier over `redis`; it distrusts Redis until it has rejoined the
    /// fleet's coverage (or bumped the epoch) after its LISTEN starts.
    /// `join_patience` is how long a rejoin may wait for coverage.
    pub fn new(
        redis: Arc<Redis>,
        settings: L2Settings,
        join_patience: Duration,
        metrics: Metrics,
    ) -> Arc<L2> {
        Arc::new(L2 {
            redis,
            ttl: settings.ttl,
            negative_ttl: settings.negative_ttl,
            // Dirty until the first rejoin: this sidecar vouches for nothing yet.
            dirty: AtomicU64::new(1),
            clean: AtomicU64::new(0),
            bump_needed: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            session_start: AtomicU64::new(0),
            position: AtomicU64::new(0),
            join_target: AtomicU64::new(0),
            dirty_since: std::sync::Mutex::new(Some(std::time::Instant::now())),
            join_patience,
            wake: Notify::new(),
            fill: Script::from_lua(FILL),
            invalidate: Script::from_lua(INVALIDATE),
            join: Script::from_lua(JOIN),
            advance: Script::from_lua(ADVANCE),
            bump: Script::from_lua(BUMP),
            metrics,
        })
    }

    /// Keeps L2 honest: rejoins or bumps whenever this sidecar is dirty. Runs
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
                            tracing::info!("redis connected; distrusting L2 until rejoined");
                            this.redis_connected();
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
        let dirty = self.dirty.load(Ordering::SeqCst);
        if self.clean.load(Ordering::SeqCst) == dirty || !self.redis.up() {
            // Nothing to do, or Redis is away: the client's probe closes the
            // circuit, and the rejoin follows.
            return;
        }
        let target = self.join_target.load(Ordering::SeqCst);
        let must_bump = self.bump_needed.load(Ordering::SeqCst) > self.clean.load(Ordering::SeqCst);
        if target == 0 && !must_bump {
            // Not listening yet: no position to rejoin at.
            return;
        }
        if !must_bump {
            let joined = self
                .redis
                .eval::<i64>(
                    &self.join,
                    vec![self.redis.key("epoch"), self.redis.key("cover")],
                    vec![target.to_string().into()],
                )
                .await;
            match joined {
                Ok(1) => {
                    self.now_clean(dirty, "joined");
                    return;
                }
                // No epoch: an empty (or wiped) Redis; nothing to wait for.
                Ok(-1) => {}
                Ok(_) => {
                    let waited = self
                        .dirty_since
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed();
                    if waited < self.join_patience {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "redis rejoin check failed");
                    return;
                }
            }
        }
        let token = format!("{:032x}", rand::random::<u128>());
        let from = self.position.load(Ordering::SeqCst).max(target);
        let bumped = self
            .redis
            .eval::<i64>(
                &self.bump,
                vec![self.redis.key("epoch"), self.redis.key("cover")],
                vec![token.into(), from.to_string().into()],
            )
            .await;
        match bumped {
            Ok(_) => {
                self.now_clean(dirty, "bumped");
                tracing::info!("redis epoch bumped: entries from before are void");
            }
            Err(e) => tracing::debug!(error = %e, "redis epoch bump failed"),
        }
    }

    fn now_clean(&self, dirty: u64, how: &'static str) {
        self.clean.fetch_max(dirty, Ordering::SeqCst);
        if self.clean.load(Ordering::SeqCst) == self.dirty.load(Ordering::SeqCst) {
            *self.dirty_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.metrics.l2_trust.with_label_values(&[how]).inc();
    }

    /// Redis (re)connected: it may have lost writes (a restart from an old
    /// snapshot, a failover to a lagging replica). Trust it again only once
    /// covered through where this sidecar is now; with no position to rejoin
    /// at (not listening), only after a bump. Before the first rejoin there is
    /// nothing to add: that rejoin already needs coverage from after it.
    fn redis_connected(&self) {
        let here = self
            .position
            .load(Ordering::SeqCst)
            .max(self.session_start.load(Ordering::SeqCst));
        if here == 0 {
            if self.clean.load(Ordering::SeqCst) == self.dirty.load(Ordering::SeqCst) {
                self.mark_dirty();
            }
            return;
        }
        self.join_target.fetch_max(here, Ordering::SeqCst);
        self.dirtied();
    }

    /// A LISTEN session began at feed position `start`: everything committed
    /// after it will be heard. What came before may have been missed by this
    /// sidecar, so it rejoins (or bumps) before it trusts L2 again.
    pub fn session_started(&self, start: u64) {
        self.session_start.store(start, Ordering::SeqCst);
        self.position.fetch_max(start, Ordering::SeqCst);
        self.join_target.fetch_max(start, Ordering::SeqCst);
        self.dirtied();
    }

    /// This sidecar has heard, and applied, every change through `through`
    /// (its own heartbeat came back): extend the fleet's coverage.
    pub async fn heard_through(&self, through: u64) {
        self.position.fetch_max(through, Ordering::SeqCst);
        let start = self.session_start.load(Ordering::SeqCst);
        if start == 0 || !self.usable() {
            return;
        }
        let advanced = self
            .redis
            .eval::<i64>(
                &self.advance,
                vec![self.redis.key("cover")],
                vec![start.to_string().into(), through.to_string().into()],
            )
            .await;
        if let Err(e) = advanced {
            tracing::debug!(error = %e, "redis coverage extension failed");
        }
    }

    /// L2 is not used until the returned guard drops (an invalidation's
    /// Redis side is in flight).
    pub fn begin_invalidation(&self) -> Pending<'_> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        Pending(&self.pending)
    }

    /// True while reads and fills may use Redis.
    pub fn usable(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
            && self.clean.load(Ordering::SeqCst) == self.dirty.load(Ordering::SeqCst)
            && self.redis.up()
    }

    /// The Redis breaker's state.
    pub fn circuit(&self) -> CircuitState {
        self.redis.circuit()
    }

    /// True while the circuit is closed (Redis answering).
    pub fn up(&self) -> bool {
        self.redis.up()
    }

    /// Stop trusting L2 until the epoch has been bumped after this call (an
    /// invalidation did not reach Redis; a flush).
    pub fn mark_dirty(&self) {
        // Before the dirtying itself: a maintain() that already sees the new
        // `dirty` must also see that it calls for a bump.
        let next = self.dirty.load(Ordering::SeqCst) + 1;
        self.bump_needed.fetch_max(next, Ordering::SeqCst);
        self.dirtied();
    }

    /// Stop trusting L2 until a rejoin or bump after this call.
    fn dirtied(&self) {
        self.dirty_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(std::time::Instant::now);
        self.dirty.fetch_add(1, Ordering::SeqCst);
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
        // No epoch: Redis lost its data since the last rejoin or bump. Nothing
        // is trusted or written until one of them sets a fresh token.
        let Some(epoch) = values
            .pop()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
        else {
            return L2Get::Unavailable;
        };
        let version = text(values.pop().flatten());
        if let Some(Some(bytes)) = values.pop()
            && let Some(fact) = decode(&bytes, key, &version, &epoch)
        {
            return L2Get::Hit(fact);
        }
        L2Get::Miss(Ticket { version, epoch })
    }

    /// Writes a fact read from Postgres, unless an invalidation or epoch bump
    /// happened since `ticket` was taken, or the fact may not be kept.
    pub async fn put(&self, key: &FactKey, ticket: Ticket, fact: &Fact) {
        if !self.usable() || !fact.cacheable() {
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
    (v == version && e == epoch && fact.matches(key) && fact.cacheable()).then_some(fact)
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
