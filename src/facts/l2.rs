//! L2: facts shared by every sidecar through Redis (SPEC §5), over the shared
//! [`Redis`] client.
//!
//! Three kinds of key live under the configured prefix:
//!
//! - `f:<kind>:<id>` — a fact, encoded with postcard behind a format byte, with
//!   the key version and epoch its fill started under, and authenticated (see
//!   below);
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
//! Whoever can write to Redis must not be able to plant a fact. Every value
//! carries an HMAC-SHA256 tag, keyed by `redis.hmac_key` (shared by the fleet,
//! never stored in Redis), over the key prefix, the fact's kind and id, and
//! the body (version, epoch and fact): a value made without the key, or moved
//! from another key, fails and reads as a miss, counted in
//! `velro_authz_l2_rejected_total{reason}`, never an error. A decoded fact must
//! also be the key's own (its kind, and its row id where the row carries one).
//! What a tag cannot stop is a replay: an authentic value captured earlier and
//! written back under the same key, version and epoch. Versions and the epoch
//! bound that to facts that were true under the current epoch; an epoch bump
//! voids them all.
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
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

use super::{Fact, FactKey};
use crate::breaker::CircuitState;
use crate::metrics::Metrics;
use crate::model::ResourceKind;
use crate::redis::Redis;
use crate::store::Target;

/// First byte of an unauthenticated value: postcard of (version, epoch,
/// fact). Written only with `redis.allow_unauthenticated_values` (and by
/// releases before values were authenticated).
const FORMAT_PLAIN: u8 = 1;
/// First byte of an authenticated value: the 32-byte tag, then the body as
/// in [`FORMAT_PLAIN`].
const FORMAT_MAC: u8 = 2;
/// Length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// Domain separation: these tags authenticate L2 values of this layout, nothing else.
const MAC_LABEL: &[u8] = b"velro-authz/l2-value/v2";

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

/// Fact TTLs in Redis (`redis.ttl_secs`, `redis.negative_ttl_secs`) and the
/// key that authenticates values (`redis.hmac_key`).
#[derive(Debug, Clone, PartialEq)]
pub struct L2Settings {
    /// TTL of a present fact (safety net).
    pub ttl: Duration,
    /// TTL of a negative fact.
    pub negative_ttl: Duration,
    /// Authenticates every value; `None` only when the operator chose
    /// `redis.allow_unauthenticated_values` (Redis itself is then trusted).
    pub hmac_key: Option<L2Key>,
}

/// The secret behind the values' tags: shared by every sidecar of a fleet,
/// never written to Redis, never printed.
#[derive(Clone, PartialEq)]
pub struct L2Key(Arc<[u8]>);

impl L2Key {
    /// The shortest key accepted: 256 bits, the size of the tag.
    pub const MIN_LEN: usize = 32;

    /// A key from its bytes (length checked by the configuration).
    pub fn new(bytes: impl Into<Vec<u8>>) -> L2Key {
        L2Key(bytes.into().into())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for L2Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("L2Key(***)")
    }
}

/// Why a stored value was not trusted although its key exists (counted in
/// `velro_authz_l2_rejected_total{reason}`). An entry from before an
/// invalidation or epoch bump is not a rejection: it is simply stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A value without a tag where tags are required.
    Unauthenticated,
    /// The tag does not match: made without our key, or moved from another key.
    BadMac,
    /// Authentic (or unauthenticated) bytes that are not a fact of this release.
    Malformed,
    /// The fact is not the key's own (another kind, another row id).
    WrongFact,
    /// A format byte this release does not know.
    Format,
}

impl Rejection {
    /// Label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::BadMac => "bad_mac",
            Rejection::Malformed => "malformed",
            Rejection::WrongFact => "wrong_fact",
            Rejection::Format => "format",
        }
    }
}

/// What a stored value turned out to be.
#[derive(Debug, PartialEq)]
enum Opened {
    /// Trusted: authentic, this key's, current version and epoch.
    Fact(Fact),
    /// Authentic but from before an invalidation or epoch bump.
    Stale,
    /// Not trusted, for this reason.
    Rejected(Rejection),
}

/// Encodes and opens values: the key prefix they live under and, unless
/// values are unauthenticated, the keyed MAC.
#[derive(Clone)]
struct Codec {
    /// HMAC-SHA256 already keyed (cloned per value); `None`: unauthenticated.
    mac: Option<Hmac<Sha256>>,
    /// The Redis key prefix, bound into every tag: a value cannot be moved
    /// between fleets sharing a server under different prefixes.
    prefix: String,
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
    /// Encodes and authenticates values.
    codec: Codec,
    /// Fill results, trust transitions, rejected values.
    metrics: Metrics,
}

/// While alive, this sidecar does not use L2 (an invalidation's Redis side is
/// in flight).
pub struct Pending(Arc<L2>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
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
        let codec = Codec::new(settings.hmac_key.as_ref(), redis.prefix());
        Arc::new(L2 {
            codec,
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
    pub fn begin_invalidation(self: &Arc<Self>) -> Pending {
        self.pending.fetch_add(1, Ordering::SeqCst);
        Pending(Arc::clone(self))
    }

    /// True while reads and fills may use Redis.
    pub fn usable(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
            && self.clean.load(Ordering::SeqCst) == self.dirty.load(Ordering::SeqCst)
            && self.redis.up()
    }

    /// Redis calls this sidecar has made (round trips), for benchmarks.
    pub fn round_trips(&self) -> u64 {
        self.redis.calls()
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

    /// The epoch key is gone while this sidecar trusted Redis: Redis lost its
    /// data (a restart without persistence, a FLUSHALL, an eviction). Bump
    /// at once rather than wait for a reconnect that may never come.
    fn epoch_lost(&self) {
        if self.clean.load(Ordering::SeqCst) == self.dirty.load(Ordering::SeqCst) {
            tracing::info!("redis epoch missing (data lost?); bumping it");
            self.mark_dirty();
        }
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
        self.get_many(std::slice::from_ref(key))
            .await
            .pop()
            .unwrap_or(L2Get::Unavailable)
    }

    /// Reads several facts in one round trip (one `MGET` of every entry and
    /// version, and the epoch): one answer per key, in order.
    pub async fn get_many(&self, keys: &[FactKey]) -> Vec<L2Get> {
        self.get_many_hinted(keys, None).await.0
    }

    /// [`L2::get_many`], and in the same round trip the chain hint of
    /// `hint` if given (see [`L2::put_hint`]): `None` when there is none or
    /// it does not parse.
    pub async fn get_many_hinted(
        &self,
        keys: &[FactKey],
        hint: Option<Target>,
    ) -> (Vec<L2Get>, Option<Vec<FactKey>>) {
        let unavailable = || (keys.iter().map(|_| L2Get::Unavailable).collect(), None);
        if !self.usable() {
            return unavailable();
        }
        let extra = usize::from(hint.is_some());
        let mut names = Vec::with_capacity(keys.len() * 2 + 1 + extra);
        for key in keys {
            let (entry, version) = self.fact_keys(key);
            names.push(entry);
            names.push(version);
        }
        if let Some(target) = hint {
            names.push(self.hint_name(target));
        }
        names.push(self.redis.key("epoch"));
        let read = self
            .redis
            .call(self.redis.client().mget::<Vec<Option<Vec<u8>>>, _>(names))
            .await;
        let Ok(mut values) = read else {
            return unavailable();
        };
        if values.len() != keys.len() * 2 + 1 + extra {
            return unavailable();
        }
        let epoch = values.pop().flatten();
        let hinted = if hint.is_some() {
            values.pop().flatten().and_then(|v| parse_hint(&v))
        } else {
            None
        };
        values.push(epoch);
        (self.open_values(keys, values), hinted)
    }

    /// The answers of [`L2::get_many`] from the values read: entry and
    /// version of each key, then the epoch.
    fn open_values(&self, keys: &[FactKey], mut values: Vec<Option<Vec<u8>>>) -> Vec<L2Get> {
        let unavailable = || keys.iter().map(|_| L2Get::Unavailable).collect();
        // No epoch: Redis lost its data since the last rejoin or bump. Nothing
        // is trusted or written until a bump sets a fresh token (never an old
        // one: it is random), so entries restored from before the loss stay void.
        let Some(epoch) = values
            .pop()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
        else {
            self.epoch_lost();
            return unavailable();
        };
        let mut values = values.into_iter();
        keys.iter()
            .map(|key| {
                let (bytes, version) = (values.next().flatten(), text(values.next().flatten()));
                self.open_value(key, bytes, version, &epoch)
            })
            .collect()
    }

    /// One key's answer from its stored value, version and the epoch.
    fn open_value(
        &self,
        key: &FactKey,
        bytes: Option<Vec<u8>>,
        version: String,
        epoch: &str,
    ) -> L2Get {
        if let Some(bytes) = bytes {
            match self.codec.open(&bytes, key, &version, epoch) {
                Opened::Fact(fact) => return L2Get::Hit(fact),
                Opened::Stale => {}
                Opened::Rejected(reason) => {
                    // A miss: the fill that follows overwrites the value.
                    self.metrics
                        .l2_rejected
                        .with_label_values(&[reason.as_str()])
                        .inc();
                }
            }
        }
        L2Get::Miss(Ticket {
            version,
            epoch: epoch.to_owned(),
        })
    }

    /// Redis key of the chain hint of `target`.
    fn hint_name(&self, target: Target) -> String {
        self.redis.key(&match target {
            Target::Team(id) => format!("h:team:{id}"),
            Target::Project(id) => format!("h:project:{id}"),
            Target::Generation(id) => format!("h:generation:{id}"),
        })
    }

    /// Remembers which facts a decision on `target` read beyond the first
    /// ones (its generation, project and team chains), so that the next
    /// sidecar missing them in L1 reads them all in its second round trip
    /// instead of one level at a time. Only a hint: every fact read under it
    /// is verified as any other, and one the walk does not reach is dropped;
    /// a stale hint costs the levels it fails to cover, never an answer.
    pub async fn put_hint(&self, target: Target, keys: &[FactKey]) {
        if !self.usable() {
            return;
        }
        let Some(value) = encode_hint(keys) else {
            return;
        };
        let name = self.hint_name(target);
        let ttl = fred::types::Expiration::PX(self.ttl.as_millis() as i64);
        let set = self
            .redis
            .client()
            .set::<(), _, _>(name, value, Some(ttl), None, false);
        if let Err(e) = self.redis.call(set).await {
            tracing::debug!(error = %e, "redis hint write failed");
        }
    }

    /// Writes a fact read from Postgres, unless an invalidation or epoch bump
    /// happened since `ticket` was taken, or the fact may not be kept.
    pub async fn put(&self, key: &FactKey, ticket: Ticket, fact: &Fact) {
        if !self.usable() || !fact.cacheable() {
            return;
        }
        let Some(value) = self.codec.seal(key, fact, &ticket) else {
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

impl Codec {
    fn new(key: Option<&L2Key>, prefix: &str) -> Codec {
        Codec {
            // Any key length is accepted by HMAC; the configuration enforces the minimum.
            mac: key.and_then(|k| Hmac::<Sha256>::new_from_slice(&k.0).ok()),
            prefix: prefix.to_owned(),
        }
    }

    /// The tag of `body` stored under `key`: a domain label, then the prefix,
    /// kind and id (each length-prefixed, so no two field splits collide),
    /// then the body, which carries the version and epoch.
    fn tagger(&self, mac: &Hmac<Sha256>, key: &FactKey, body: &[u8]) -> Hmac<Sha256> {
        let mut m = mac.clone();
        m.update(MAC_LABEL);
        let id = key.redis_id();
        for field in [self.prefix.as_bytes(), key.kind().as_bytes(), id.as_bytes()] {
            m.update(&(field.len() as u64).to_be_bytes());
            m.update(field);
        }
        m.update(body);
        m
    }

    /// What goes into Redis: the format byte, the tag (when keyed), then
    /// postcard of (version, epoch, fact).
    fn seal(&self, key: &FactKey, fact: &Fact, ticket: &Ticket) -> Option<Vec<u8>> {
        let body = postcard::to_allocvec(&(&ticket.version, &ticket.epoch, fact)).ok()?;
        let mut out = Vec::with_capacity(1 + TAG_LEN + body.len());
        match &self.mac {
            Some(mac) => {
                out.push(FORMAT_MAC);
                out.extend_from_slice(&self.tagger(mac, key, &body).finalize().into_bytes());
            }
            None => out.push(FORMAT_PLAIN),
        }
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The stored fact, if the value is authentic (checked before anything
    /// is decoded), this key's own, and stamped with the current version and
    /// epoch. Unkeyed (`allow_unauthenticated_values`), tags are skipped, not
    /// checked: such a sidecar trusts Redis as it is.
    fn open(&self, bytes: &[u8], key: &FactKey, version: &str, epoch: &str) -> Opened {
        let Some((&format, rest)) = bytes.split_first() else {
            return Opened::Rejected(Rejection::Malformed);
        };
        let body = match (format, &self.mac) {
            (FORMAT_MAC, _) if rest.len() < TAG_LEN => {
                return Opened::Rejected(Rejection::Malformed);
            }
            (FORMAT_MAC, Some(mac)) => {
                let (tag, body) = rest.split_at(TAG_LEN);
                // Constant-time comparison.
                if self.tagger(mac, key, body).verify_slice(tag).is_err() {
                    return Opened::Rejected(Rejection::BadMac);
                }
                body
            }
            (FORMAT_MAC, None) => &rest[TAG_LEN..],
            (FORMAT_PLAIN, Some(_)) => return Opened::Rejected(Rejection::Unauthenticated),
            (FORMAT_PLAIN, None) => rest,
            _ => return Opened::Rejected(Rejection::Format),
        };
        let Ok((v, e, fact)) = postcard::from_bytes::<(String, String, Fact)>(body) else {
            return Opened::Rejected(Rejection::Malformed);
        };
        if v != version || e != epoch {
            return Opened::Stale;
        }
        if !fact.matches(key) {
            return Opened::Rejected(Rejection::WrongFact);
        }
        if !fact.cacheable() {
            // Never written by this release ("no such generation" is not
            // kept); one from an older sidecar is not trusted either.
            return Opened::Stale;
        }
        Opened::Fact(fact)
    }
}

/// At most this many keys in a chain hint (the longest chains of
/// `MAX_PARENT_HOPS` generations and `MAX_TEAM_DEPTH` teams, shares and
/// their teams, with room to spare); a longer hint is not written or read.
const MAX_HINT_KEYS: usize = 128;

/// A chain hint as text: `kind:uuid` (or `shares:kind:uuid`) per key,
/// space-separated. Only generation, project, team and shares keys belong
/// in one; `None` for anything else or too many keys.
fn encode_hint(keys: &[FactKey]) -> Option<String> {
    if keys.is_empty() || keys.len() > MAX_HINT_KEYS {
        return None;
    }
    let mut text = String::with_capacity(keys.len() * 48);
    for key in keys {
        if !text.is_empty() {
            text.push(' ');
        }
        match key {
            FactKey::Generation(_)
            | FactKey::Project(_)
            | FactKey::Team(_)
            | FactKey::Shares(..) => {
                text.push_str(key.kind());
                text.push(':');
                text.push_str(&key.redis_id());
            }
            _ => return None,
        }
    }
    Some(text)
}

/// The keys of a chain hint written by [`encode_hint`]; `None` for anything
/// else (it is then not used: one more level is read instead).
fn parse_hint(bytes: &[u8]) -> Option<Vec<FactKey>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut keys = Vec::new();
    for item in text.split(' ') {
        if keys.len() == MAX_HINT_KEYS {
            return None;
        }
        let (kind, rest) = item.split_once(':')?;
        let key = match kind {
            "generation" => FactKey::Generation(rest.parse().ok()?),
            "project" => FactKey::Project(rest.parse().ok()?),
            "team" => FactKey::Team(rest.parse().ok()?),
            "shares" => {
                let (on, id) = rest.split_once(':')?;
                FactKey::Shares(on.parse::<ResourceKind>().ok()?, id.parse().ok()?)
            }
            _ => return None,
        };
        keys.push(key);
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Membership, Role, Session, User, UserStatus};
    use proptest::prelude::*;
    use uuid::Uuid;

    const PREFIX: &str = "velro-authz:";

    fn ticket(v: &str, e: &str) -> Ticket {
        Ticket {
            version: v.to_owned(),
            epoch: e.to_owned(),
        }
    }

    fn keyed() -> Codec {
        Codec::new(
            Some(&L2Key::new(*b"0123456789abcdef0123456789abcdef")),
            PREFIX,
        )
    }

    fn unkeyed() -> Codec {
        Codec::new(None, PREFIX)
    }

    fn user(id: Uuid) -> Fact {
        Fact::User(Some(User {
            id,
            status: UserStatus::Active,
        }))
    }

    #[test]
    fn l2_value_round_trip_checks_stamps_and_kind() {
        for codec in [keyed(), unkeyed()] {
            let id = Uuid::new_v4();
            let key = FactKey::User(id);
            let fact = user(id);
            let bytes = codec.seal(&key, &fact, &ticket("3", "7")).expect("encodes");
            assert_eq!(
                codec.open(&bytes, &key, "3", "7"),
                Opened::Fact(fact.clone())
            );
            assert_eq!(
                codec.open(&bytes, &key, "4", "7"),
                Opened::Stale,
                "newer version"
            );
            assert_eq!(
                codec.open(&bytes, &key, "3", "8"),
                Opened::Stale,
                "newer epoch"
            );
            let mut other_format = bytes.clone();
            other_format[0] = FORMAT_MAC + 1;
            assert_eq!(
                codec.open(&other_format, &key, "3", "7"),
                Opened::Rejected(Rejection::Format)
            );
        }
    }

    #[test]
    fn l2_value_without_a_valid_tag_is_rejected() {
        let codec = keyed();
        let id = Uuid::new_v4();
        let key = FactKey::User(id);
        let bytes = codec
            .seal(&key, &user(id), &ticket("1", "e"))
            .expect("encodes");
        // Any bit flipped, in the tag or in the body.
        for i in 1..bytes.len() {
            let mut forged = bytes.clone();
            forged[i] ^= 0x01;
            assert!(
                matches!(
                    codec.open(&forged, &key, "1", "e"),
                    Opened::Rejected(Rejection::BadMac | Rejection::Malformed)
                ),
                "byte {i}"
            );
        }
        // Made with another key, or with none (an attacker's plain value).
        let other = Codec::new(Some(&L2Key::new(vec![7u8; 32])), PREFIX);
        let theirs = other
            .seal(&key, &user(id), &ticket("1", "e"))
            .expect("encodes");
        assert_eq!(
            codec.open(&theirs, &key, "1", "e"),
            Opened::Rejected(Rejection::BadMac)
        );
        let plain = unkeyed()
            .seal(&key, &user(id), &ticket("1", "e"))
            .expect("encodes");
        assert_eq!(
            codec.open(&plain, &key, "1", "e"),
            Opened::Rejected(Rejection::Unauthenticated)
        );
        // Truncated.
        assert_eq!(
            codec.open(&bytes[..20], &key, "1", "e"),
            Opened::Rejected(Rejection::Malformed)
        );
    }

    #[test]
    fn l2_authentic_value_moved_to_another_key_or_prefix_is_rejected() {
        let codec = keyed();
        let (bob, erin) = (Uuid::new_v4(), Uuid::new_v4());
        // Bob's memberships (the rows carry no user id) under Erin's key.
        let memberships = Fact::Memberships(
            vec![Membership {
                team_id: Uuid::new_v4(),
                role: Role::Owner,
            }]
            .into(),
        );
        let bobs = codec
            .seal(&FactKey::Memberships(bob), &memberships, &ticket("0", "e"))
            .expect("encodes");
        assert_eq!(
            codec.open(&bobs, &FactKey::Memberships(erin), "0", "e"),
            Opened::Rejected(Rejection::BadMac)
        );
        // Same kind and id, another kind of key with the same id.
        let session = Fact::Session(None);
        let sealed = codec
            .seal(&FactKey::Session(bob), &session, &ticket("0", "e"))
            .expect("encodes");
        assert_eq!(
            codec.open(&sealed, &FactKey::User(bob), "0", "e"),
            Opened::Rejected(Rejection::BadMac)
        );
        // Another fleet's prefix on the same server.
        let elsewhere = Codec::new(
            Some(&L2Key::new(*b"0123456789abcdef0123456789abcdef")),
            "other:",
        );
        assert_eq!(
            elsewhere.open(&bobs, &FactKey::Memberships(bob), "0", "e"),
            Opened::Rejected(Rejection::BadMac)
        );
    }

    #[test]
    fn l2_fact_for_another_id_is_rejected_even_when_authentic() {
        // A writer with the key (or an unauthenticated tier) stored a row
        // under the wrong key: the row's own id says so.
        for codec in [keyed(), unkeyed()] {
            let (mine, theirs) = (Uuid::new_v4(), Uuid::new_v4());
            let key = FactKey::User(mine);
            let bytes = codec
                .seal(&key, &user(theirs), &ticket("0", "e"))
                .expect("encodes");
            assert_eq!(
                codec.open(&bytes, &key, "0", "e"),
                Opened::Rejected(Rejection::WrongFact)
            );
            let session = Fact::Session(Some(Session {
                id: theirs,
                user_id: Uuid::new_v4(),
                expires_at: chrono::Utc::now(),
                revoked_at: None,
            }));
            let key = FactKey::Session(mine);
            let bytes = codec
                .seal(&key, &session, &ticket("0", "e"))
                .expect("encodes");
            assert_eq!(
                codec.open(&bytes, &key, "0", "e"),
                Opened::Rejected(Rejection::WrongFact)
            );
            // A kind mismatch too (unauthenticated: nothing else stops it).
            let key = FactKey::Team(mine);
            let bytes = codec
                .seal(&key, &user(mine), &ticket("0", "e"))
                .expect("encodes");
            assert_eq!(
                codec.open(&bytes, &key, "0", "e"),
                Opened::Rejected(Rejection::WrongFact)
            );
        }
    }

    #[test]
    fn l2_unkeyed_sidecar_reads_tagged_values_without_checking() {
        // During a rollout of `redis.hmac_key`: sidecars still without it read
        // what keyed ones write (they trust Redis as it is anyway).
        let id = Uuid::new_v4();
        let key = FactKey::User(id);
        let bytes = keyed()
            .seal(&key, &user(id), &ticket("0", "e"))
            .expect("encodes");
        assert_eq!(
            unkeyed().open(&bytes, &key, "0", "e"),
            Opened::Fact(user(id))
        );
    }

    #[test]
    fn l2_key_never_printed() {
        let key = L2Key::new(*b"supersecretsupersecretsupersecret");
        assert_eq!(format!("{key:?}"), "L2Key(***)");
    }

    #[test]
    fn encoding_is_compact() {
        let id = Uuid::new_v4();
        let bytes = keyed()
            .seal(&FactKey::User(id), &user(id), &ticket("12", "3"))
            .expect("encodes");
        assert!(bytes.len() < 40 + TAG_LEN, "{} bytes", bytes.len());
    }

    fn chain_key() -> impl Strategy<Value = FactKey> {
        let id = any::<u128>().prop_map(Uuid::from_u128);
        prop_oneof![
            id.clone().prop_map(FactKey::Generation),
            id.clone().prop_map(FactKey::Project),
            id.clone().prop_map(FactKey::Team),
            id.clone()
                .prop_map(|id| FactKey::Shares(ResourceKind::Generation, id)),
            id.prop_map(|id| FactKey::Shares(ResourceKind::Project, id)),
        ]
    }

    #[test]
    fn hints_name_only_chain_keys_and_no_more_than_the_bound() {
        let id = Uuid::new_v4();
        assert_eq!(encode_hint(&[]), None);
        assert_eq!(encode_hint(&[FactKey::User(id)]), None);
        assert_eq!(encode_hint(&[FactKey::ApiKey("ab".into())]), None);
        let long = vec![FactKey::Team(id); MAX_HINT_KEYS + 1];
        assert_eq!(encode_hint(&long), None);
        let text = vec![format!("team:{id}"); MAX_HINT_KEYS + 1].join(" ");
        assert_eq!(parse_hint(text.as_bytes()), None);
        for bad in [
            "",
            "team",
            "team:",
            "user:{id}",
            "shares:team:{id}",
            "team:{id}  team:{id}",
        ] {
            let bad = bad.replace("{id}", &id.to_string());
            assert_eq!(parse_hint(bad.as_bytes()), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn hints_round_trip(keys in proptest::collection::vec(chain_key(), 1..MAX_HINT_KEYS)) {
            let text = encode_hint(&keys).expect("chain keys encode");
            prop_assert_eq!(parse_hint(text.as_bytes()), Some(keys));
        }

        #[test]
        fn hint_parse_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_hint(&bytes);
        }

        #[test]
        fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let key = FactKey::User(Uuid::nil());
            for codec in [keyed(), unkeyed()] {
                let _ = codec.open(&bytes, &key, "0", "0");
            }
        }
    }
}
