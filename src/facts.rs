//! Facts and the L1 cache (SPEC §5).
//!
//! A fact is one row-shaped piece of truth (a user's status, a generation's
//! owner/project/parent, a user's memberships, ...). Facts are read from the
//! [`FactSource`] (Postgres today; a Redis tier slots in as another source) and
//! held in moka, several to a moka entry ([`l1`]), bounded, with single-flight
//! fills.
//!
//! Freshness does not rest on deleting entries in time. Every entry is stamped,
//! when its fill *starts*, with the invalidation counter of its key's bucket and
//! with the cache epoch; a read trusts an entry only while both are unchanged.
//! So a fill that read an old row, raced with an invalidation and landed after
//! it is never used: the invalidation bumped the bucket before the fill could be
//! read. A listener gap bumps the epoch, which voids every entry at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;
use uuid::Uuid;

use crate::breaker::{Breaker, BreakerConfig};
use crate::metrics::Metrics;
use crate::model::{
    ApiKey, Generation, Membership, Project, ResourceKind, Session, Share, Team, User,
};
use crate::store::StoreError;
use crate::telemetry::traces::Fetch;

mod bundle;
mod fact;
pub mod freshness;
mod l1;
pub mod l2;
mod memo;

pub use bundle::Gather;
use fact::BUCKETS;
pub use fact::{Fact, FactError, FactKey, FactSource, FactUse, Source, Trace};
pub use memo::{Stamp, StatusAndRole};

use freshness::Freshness;
use l1::L1;
use l2::{L2, L2Get};

/// How long Postgres may take before a cached fact answers instead, when the
/// feed is untrusted and the operator chose `serve_stale_on_outage`.
const STALE_PROBE: Duration = Duration::from_millis(100);
/// Fills retried when each one raced with an invalidation, before reading uncached.
const MAX_FILL_ATTEMPTS: usize = 3;
/// Team-tree walk bound; the database rejects cycles, this keeps us safe anyway.
pub const MAX_TEAM_DEPTH: usize = 64;
/// How long a query of a bare cache may run before it counts as a failure
/// (the sidecar sets its decision deadline instead: [`Facts::with_query_timeout`]).
const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// L1 cache settings (SPEC §5 defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSettings {
    /// Maximum cached facts.
    pub max_facts: u64,
    /// Safety-net TTL of a present fact; invalidation is what keeps facts fresh.
    pub ttl: Duration,
    /// TTL of a negative entry (row not found).
    pub negative_ttl: Duration,
    /// Remembered resource decisions (status and role by user and
    /// resource, stamped with their facts: [`memo`]); 0 turns them off.
    pub max_decisions: u64,
}

/// Why a fill put nothing in L1.
enum Fill {
    /// The fact could not be read.
    Failed(FactError),
    /// Read, but not to be kept: the waiters of this fill get it, nobody else.
    Uncached(Fact, Source),
    /// Read and put in L1: the waiters of this fill get the entry from here.
    Kept(Entry),
}

/// A cached fact with the stamps that say whether it may still be trusted.
///
/// Held inline in its group ([`l1`]) and cloned out on a hit, which costs
/// what cloning the fact costs.
#[derive(Debug, Clone)]
struct Entry {
    fact: Fact,
    /// Bucket counter when the fill started.
    stamp: u64,
    /// Cache epoch when the fill started.
    epoch: u64,
    /// Served until then ([`Clock::at`]): the TTL, shorter for a negative
    /// entry.
    expires: u64,
}

/// The time entries expire by: nanoseconds since the cache was made.
///
/// The TTLs are checked on read, against the instant the lookup reads for
/// the feed's freshness anyway, rather than kept by moka: moka's expiry
/// costs a node per entry (a timer-wheel node for per-entry TTLs, a
/// write-order node for one TTL), about a tenth of what an entry costs. An
/// expired entry is never served; its memory waits for the size bound (or
/// the next read of its key) instead of a timer.
struct Clock {
    /// When the cache was made.
    origin: Instant,
    /// Added to the elapsed time: how a test moves this clock forward.
    #[cfg(test)]
    skew: AtomicU64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            origin: Instant::now(),
            #[cfg(test)]
            skew: AtomicU64::new(0),
        }
    }

    /// `now` on this clock (584 years fit).
    fn at(&self, now: Instant) -> u64 {
        let at = now.saturating_duration_since(self.origin).as_nanos() as u64;
        #[cfg(test)]
        let at = at + self.skew.load(Ordering::Relaxed);
        at
    }

    /// Moves this clock `by` forward.
    #[cfg(test)]
    fn advance(&self, by: Duration) {
        self.skew.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// A typed accessor: one key variant in, the matching fact variant out.
macro_rules! typed_fact {
    ($(#[$doc:meta])* $name:ident($arg:ident: $arg_ty:ty) -> $ret:ty = $variant:ident) => {
        $(#[$doc])*
        pub async fn $name(&self, $arg: $arg_ty, trace: &Trace) -> Result<$ret, FactError> {
            match self.get(FactKey::$variant($arg), trace).await? {
                Fact::$variant(v) => Ok(v),
                other => Err(mismatch(stringify!($name), &other)),
            }
        }
    };
}

/// The L1 fact cache over a source.
pub struct Facts<S> {
    /// Shared with the detached query tasks, which outlive a caller that left.
    source: Arc<S>,
    /// The shared Redis tier, when configured.
    l2: Option<Arc<L2>>,
    /// Guards the source: an open circuit fails fast instead of queueing on a
    /// dead pool. Shared with the detached query tasks, which report to it.
    breaker: Arc<Breaker>,
    /// Our own bound on one query: past it, the query counts as a failure
    /// (no caller of ours waits longer).
    query_timeout: Duration,
    /// L1: facts in groups in moka.
    cache: L1,
    /// Fills under way, one per key: moka's single-flight, over a cache that
    /// never keeps a value (a fill hands its entry to its waiters as the
    /// `Err` side, which moka does not store), since the facts live in
    /// `cache`.
    flights: Cache<FactKey, Entry>,
    /// Remembered decisions, when `max_decisions` is not 0.
    memo: Option<moka::sync::Cache<memo::MemoKey, Arc<memo::Remembered>>>,
    /// How long an entry is served.
    ttl: Duration,
    /// How long a negative entry is served.
    negative_ttl: Duration,
    /// What entries expire by.
    clock: Clock,
    /// Invalidation counters, one per bucket of keys.
    buckets: Box<[AtomicU64]>,
    /// Source of bucket counter values; strictly increasing.
    seq: AtomicU64,
    /// Bumped by a full flush; entries from an older epoch are void.
    epoch: AtomicU64,
    /// Whether the change feed may be trusted now; when not, lookups read
    /// through to the source.
    freshness: Arc<Freshness>,
    /// Redis fills running after their decision answered.
    fills: Arc<Fills>,
    metrics: Metrics,
}

/// Counts the background Redis fills, so a test or benchmark can wait for
/// them ([`Facts::fills_settled`]).
#[derive(Default)]
struct Fills {
    /// Fill tasks not finished yet.
    running: std::sync::atomic::AtomicUsize,
    /// Woken when `running` drops to zero.
    idle: tokio::sync::Notify,
}

/// One running fill task; finishing (or panicking) counts it out.
struct FillTask(Arc<Fills>);

impl FillTask {
    fn start(fills: &Arc<Fills>) -> FillTask {
        fills.running.fetch_add(1, Ordering::SeqCst);
        FillTask(fills.clone())
    }
}

impl Drop for FillTask {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl<S: FactSource> Facts<S> {
    /// An empty cache bounded by `config`.
    pub fn new(source: S, config: &CacheSettings, metrics: Metrics) -> Facts<S> {
        Facts::with_tiers(source, config, None, BreakerConfig::default(), metrics)
    }

    /// An empty cache over `l2` (if any) and `source`, the source guarded by a
    /// breaker with `breaker` settings.
    pub fn with_tiers(
        source: S,
        config: &CacheSettings,
        l2: Option<Arc<L2>>,
        breaker: BreakerConfig,
        metrics: Metrics,
    ) -> Facts<S> {
        Facts {
            source: Arc::new(source),
            l2,
            breaker: Arc::new(Breaker::new("postgres", breaker, metrics.clone())),
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            cache: L1::new(config.max_facts),
            flights: Cache::builder().build(),
            memo: (config.max_decisions > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(config.max_decisions)
                    .build()
            }),
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
            clock: Clock::new(),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            seq: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            freshness: Arc::new(Freshness::always_trusted(metrics.clone())),
            fills: Arc::default(),
            metrics,
        }
    }

    /// Trusts cached facts only while `freshness` says the feed is live (the
    /// sidecar's wiring; without it, as for a cache with no listener, cached
    /// facts are always trusted).
    pub fn with_freshness(mut self, freshness: Arc<Freshness>) -> Facts<S> {
        self.freshness = freshness;
        self
    }

    /// Bounds each query by `timeout`: one still running then is abandoned
    /// and counts as a breaker failure. The sidecar passes its configured
    /// decision deadline, the longest any caller of ours waits.
    pub fn with_query_timeout(mut self, timeout: Duration) -> Facts<S> {
        self.query_timeout = timeout;
        self
    }

    /// The feed's state.
    pub fn freshness(&self) -> &Arc<Freshness> {
        &self.freshness
    }

    /// The source below L1.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The Redis tier, when configured.
    pub fn l2(&self) -> Option<&Arc<L2>> {
        self.l2.as_ref()
    }

    /// Waits until the Redis fills that decisions left running (written
    /// after their answer) have finished: for tests and benchmarks.
    pub async fn fills_settled(&self) {
        loop {
            // Registered before the check: a wake-up between the two is kept.
            let idle = self.fills.idle.notified();
            if self.fills.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// The source's circuit breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Number of cached facts (approximate, for stats), expired ones
    /// included until the size bound or a read of their key reclaims them.
    pub fn entry_count(&self) -> u64 {
        self.cache.len()
    }

    /// Lets L1 finish its pending bookkeeping, so that [`Facts::entry_count`]
    /// counts every write so far (benchmarks and tests).
    pub async fn settle(&self) {
        self.cache.settle().await;
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Voids one fact: any entry, or in-flight fill, that started before this call
    /// is never trusted again, here or (when configured) in Redis.
    pub async fn invalidate(&self, key: &FactKey) {
        self.invalidate_keys(std::slice::from_ref(key)).await;
    }

    /// Voids several facts, with one Redis round trip.
    ///
    /// L1 first, at once: a slow or dead Redis never delays it. Until the Redis
    /// side is done this sidecar does not read or fill L2 (the `pending` guard),
    /// so an L1 refill in between goes to Postgres instead of picking the old
    /// value up from Redis.
    pub async fn invalidate_keys(&self, keys: &[FactKey]) {
        self.invalidate_keys_now(keys).await;
    }

    /// [`Facts::invalidate_keys`] in two parts: L1 is voided before this
    /// returns; the returned future carries the Redis side (this sidecar does
    /// not use Redis until it completes), so a caller can let it run while it
    /// applies the next change instead of waiting out a slow Redis.
    pub fn invalidate_keys_now(
        &self,
        keys: &[FactKey],
    ) -> impl std::future::Future<Output = ()> + Send + 'static + use<S> {
        let pending = self
            .l2
            .as_ref()
            .map(|l2| (l2.clone(), l2.begin_invalidation()));
        for key in keys {
            let value = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
            self.buckets[key.bucket()].fetch_max(value, Ordering::AcqRel);
        }
        let keys = keys.to_vec();
        let cache = self.cache.clone();
        async move {
            // Freeing memory only: correctness came from the bucket stamps.
            for key in &keys {
                cache.remove(key).await;
            }
            if let Some((l2, pending)) = pending {
                l2.invalidate(&keys).await;
                drop(pending);
            }
        }
    }

    /// Voids everything (listener gap, admin flush, TRUNCATE): L1 at once, and
    /// L2 for everyone through an epoch bump, which this sidecar waits for
    /// before it trusts L2 again.
    pub fn flush(&self) -> u64 {
        if let Some(l2) = &self.l2 {
            l2.mark_dirty();
        }
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.cache.clear();
        if let Some(memo) = &self.memo {
            // Freeing memory only: the epoch voids them.
            memo.invalidate_all();
        }
        epoch
    }

    /// Voids L1 only, leaving Redis to the shared tier's own rules: after a
    /// LISTEN gap (the tier rejoins the fleet's coverage, or bumps the epoch),
    /// and in benchmarks that measure the Redis tier.
    pub fn flush_local(&self) -> u64 {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.cache.clear();
        if let Some(memo) = &self.memo {
            // Freeing memory only: the epoch voids them.
            memo.invalidate_all();
        }
        epoch
    }

    fn stamps(&self, key: &FactKey) -> (u64, u64) {
        // Epoch first: a flush between the two loads then voids this stamp too.
        let epoch = self.epoch.load(Ordering::Acquire);
        let stamp = self.buckets[key.bucket()].load(Ordering::Acquire);
        (stamp, epoch)
    }

    /// Whether `entry` may answer for `key` at `now`: no invalidation or
    /// flush since its fill started, and not past its TTL.
    fn trusted(&self, key: &FactKey, entry: &Entry, now: Instant) -> bool {
        let (stamp, epoch) = self.stamps(key);
        entry.stamp == stamp && entry.epoch == epoch && self.clock.at(now) < entry.expires
    }

    /// The fact of `key` if L1 holds a trusted entry (a hit is counted and
    /// traced), with the stamps it was trusted by; `None` otherwise,
    /// counting nothing.
    async fn cached(&self, key: &FactKey, trace: &Trace, now: Instant) -> Option<(Fact, Stamp)> {
        let entry = self.cache.get(key).await?;
        if !self.trusted(key, &entry, now) {
            return None;
        }
        // A handle resolved at start: no label hashing per fact.
        self.metrics.l1_hit(key.kind());
        trace.record(key, Source::L1, &entry.fact);
        let stamp = Stamp::of(key, &entry);
        Some((entry.fact, stamp))
    }

    /// `fact` as an L1 entry stamped `stamp`/`epoch`, its TTL from now.
    fn entry(&self, fact: Fact, stamp: u64, epoch: u64) -> Entry {
        let ttl = if fact.is_negative() {
            self.negative_ttl
        } else {
            self.ttl
        };
        let expires = self
            .clock
            .at(Instant::now())
            .saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
        Entry {
            fact,
            stamp,
            epoch,
            expires,
        }
    }

    /// One fact, from L1 when trusted, else from the source (one query for all
    /// concurrent callers of the same key).
    pub async fn get(&self, key: FactKey, trace: &Trace) -> Result<Fact, FactError> {
        Ok(self.get_stamped(key, trace).await?.0)
    }

    /// [`Facts::get`], and on an L1 hit the stamps the entry was trusted by
    /// (what a remembered decision rests on: [`memo`]).
    pub(crate) async fn get_stamped(
        &self,
        key: FactKey,
        trace: &Trace,
    ) -> Result<(Fact, Option<Stamp>), FactError> {
        let kind = key.kind();
        let now = Instant::now();
        if !self.freshness.trusted_at(now) {
            // Boxed: keep the cold path's future off the hot one.
            return Ok((Box::pin(self.read_through(key, trace)).await?, None));
        }
        if let Some((fact, stamp)) = self.cached(&key, trace, now).await {
            return Ok((fact, Some(stamp)));
        }
        // An untrusted entry is not removed first: it is never served, and
        // the fill below replaces it (a removal would rebuild its group once
        // more).
        self.lookup(kind, "miss");

        for _ in 0..MAX_FILL_ATTEMPTS {
            let filled_from = Mutex::new(None);
            let entry = self
                .flights
                .try_get_with(key.clone(), async {
                    let (stamp, epoch) = self.stamps(&key);
                    // Boxed: the Redis and Postgres futures are large, and
                    // inline they would make every L1 hit's future as big.
                    let (fact, source) = Box::pin(self.fill(&key, trace))
                        .await
                        .map_err(Fill::Failed)?;
                    if !fact.cacheable() {
                        // Answers this fill's waiters only; moka keeps no entry.
                        return Err(Fill::Uncached(fact, source));
                    }
                    *filled_from.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
                    let entry = self.entry(fact, stamp, epoch);
                    self.cache.insert(key.clone(), entry.clone()).await;
                    // Never `Ok`: `flights` keeps no value (see its field).
                    Err::<Entry, _>(Fill::Kept(entry))
                })
                .await;
            let entry = match entry {
                Ok(entry) => entry,
                Err(fill) => match &*fill {
                    Fill::Failed(e) => return Err(e.clone()),
                    Fill::Uncached(fact, source) => {
                        trace.record(&key, *source, fact);
                        return Ok((fact.clone(), None));
                    }
                    Fill::Kept(entry) => entry.clone(),
                },
            };
            if self.trusted(&key, &entry, Instant::now()) {
                let filled = *filled_from.lock().unwrap_or_else(|p| p.into_inner());
                let source = filled.unwrap_or(Source::Coalesced);
                if source == Source::Coalesced {
                    self.lookup(kind, "coalesced");
                }
                trace.record(&key, source, &entry.fact);
                return Ok((entry.fact, None));
            }
            // The fill raced with an invalidation: what it read may predate the
            // change. Read again (the next fill replaces this entry, which
            // is never served meanwhile).
        }
        // Invalidations keep landing on this key: answer from a fresh read
        // without caching it.
        let fact = self.query(&key, trace).await?;
        trace.record(&key, Source::Postgres, &fact);
        Ok((fact, None))
    }

    /// The feed is down or silent: cached facts may be stale, so read the
    /// source (bounded by its breaker and the decision deadline) and cache
    /// nothing. Only if the source cannot answer, and the operator chose
    /// availability, may a cached fact answer (`serve_stale_on_outage`).
    async fn read_through(&self, key: FactKey, trace: &Trace) -> Result<Fact, FactError> {
        let kind = key.kind();
        self.lookup(kind, "untrusted");
        // With stale serving chosen and a cached fact at hand, Postgres gets a
        // short chance only: a healthy one answers a fact in a millisecond,
        // and a dead one must not eat the decision's deadline first.
        let stale = if self.freshness.may_serve_stale() {
            self.cache
                .get(&key)
                .await
                .filter(|entry| self.trusted(&key, entry, Instant::now()))
        } else {
            None
        };
        let fresh = match &stale {
            Some(_) => tokio::time::timeout(STALE_PROBE, self.query(&key, trace))
                .await
                .unwrap_or_else(|_| {
                    Err(FactError {
                        kind,
                        message: format!("no answer within {STALE_PROBE:?}"),
                    })
                }),
            None => self.query(&key, trace).await,
        };
        match (fresh, stale) {
            (Ok(fact), _) => {
                trace.record(&key, Source::Postgres, &fact);
                Ok(fact)
            }
            (Err(_), Some(entry)) => {
                self.metrics.stale_served.with_label_values(&[kind]).inc();
                trace.record(&key, Source::Stale, &entry.fact);
                Ok(entry.fact)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Below L1: Redis when usable, else (or on a Redis miss) Postgres, filling
    /// Redis on the way up — except "no such API key": anyone can send random
    /// well-formed keys, which never repeat, so caching their absence in the
    /// fleet-shared Redis would only let a client fill it (a write and an
    /// entry per guess). L1 keeps them, bounded by `cache.max_facts` and
    /// `cache.negative_ttl`, where a deleted key retried by a client still
    /// costs one query per sidecar per negative TTL.
    async fn fill(&self, key: &FactKey, trace: &Trace) -> Result<(Fact, Source), FactError> {
        let Some(l2) = &self.l2 else {
            return Ok((self.query(key, trace).await?, Source::Postgres));
        };
        let kind = key.kind();
        let mut span = trace.fetch(Fetch::RedisGet, key);
        let got = l2.get(key).await;
        let result = match &got {
            L2Get::Hit(_) => "hit",
            L2Get::Miss(_) => "miss",
            L2Get::Unavailable => "error",
        };
        if let Some(span) = &mut span {
            span.result(result);
        }
        drop(span);
        self.count("l2", kind, result);
        match got {
            L2Get::Hit(fact) => Ok((fact, Source::L2)),
            L2Get::Miss(ticket) => {
                let fact = self.query(key, trace).await?;
                if !matches!(fact, Fact::ApiKey(None)) {
                    let _span = trace.fetch(Fetch::RedisPut, key);
                    l2.put(key, ticket, &fact).await;
                }
                Ok((fact, Source::Postgres))
            }
            L2Get::Unavailable => Ok((self.query(key, trace).await?, Source::Postgres)),
        }
    }

    /// One query, run in a task of its own so that only the query's own
    /// outcome reaches the breaker. A caller that goes away (a client reset,
    /// its short `grpc-timeout`) abandons the wait, not the query: counting
    /// that as a failure would let any client open the breaker for everyone.
    /// A query still running at our own bound ([`Facts::with_query_timeout`])
    /// is abandoned and counts, so a hung server still opens the breaker; an
    /// error from Postgres (including its `statement_timeout`, or the pool's
    /// acquire timeout) counts when it is transient.
    async fn query(&self, key: &FactKey, trace: &Trace) -> Result<Fact, FactError> {
        let mut span = trace.fetch(Fetch::PostgresQuery, key);
        let result = self.query_untraced(key).await;
        if let (Some(span), Err(_)) = (&mut span, &result) {
            span.failed("store_unavailable");
        }
        result
    }

    async fn query_untraced(&self, key: &FactKey) -> Result<Fact, FactError> {
        let (source, key) = (self.source.clone(), key.clone());
        let kind = key.kind();
        self.run(kind, async move { source.load(&key).await }).await
    }

    /// Runs `load` as [`Facts::query`] runs one fact's query: guarded by the
    /// breaker, bounded, in a task of its own; counted under `kind`.
    async fn run<T: Send + 'static>(
        &self,
        kind: &'static str,
        load: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, FactError> {
        detached(&self.breaker, &self.metrics, self.query_timeout, kind, load).await
    }

    fn lookup(&self, kind: &'static str, result: &'static str) {
        self.count("l1", kind, result);
    }

    fn count(&self, tier: &'static str, kind: &'static str, result: &'static str) {
        self.metrics
            .cache_lookups
            .with_label_values(&[tier, kind, result])
            .inc();
    }

    typed_fact!(
        /// A user's row.
        user(id: Uuid) -> Option<User> = User
    );
    typed_fact!(
        /// A user's direct memberships.
        memberships(user: Uuid) -> Arc<[Membership]> = Memberships
    );
    typed_fact!(
        /// A project's row.
        project(id: Uuid) -> Option<Project> = Project
    );
    typed_fact!(
        /// A generation's row.
        generation(id: Uuid) -> Option<Generation> = Generation
    );
    typed_fact!(
        /// A team's row.
        team(id: Uuid) -> Option<Team> = Team
    );
    typed_fact!(
        /// A session's row.
        session(id: Uuid) -> Option<Session> = Session
    );
    typed_fact!(
        /// An API key's row, by the hex SHA-256 of the key.
        api_key(hash: Arc<str>) -> Option<Arc<ApiKey>> = ApiKey
    );

    /// Shares on a resource.
    pub async fn shares(
        &self,
        kind: ResourceKind,
        id: Uuid,
        trace: &Trace,
    ) -> Result<Arc<[Share]>, FactError> {
        match self.get(FactKey::Shares(kind, id), trace).await? {
            Fact::Shares(v) => Ok(v),
            other => Err(mismatch("shares", &other)),
        }
    }
}

/// One query in a task of its own, so that only the query's own outcome
/// reaches the breaker (see [`Facts::query`]); a free function so that
/// spawned work (Redis fills after a decision) can run one too.
async fn detached<T: Send + 'static>(
    breaker: &Arc<Breaker>,
    metrics: &Metrics,
    bound: Duration,
    kind: &'static str,
    load: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, FactError> {
    if !breaker.allow() {
        metrics.store_errors.with_label_values(&[kind]).inc();
        return Err(FactError {
            kind,
            message: "postgres circuit open".to_owned(),
        });
    }
    metrics.store_queries.with_label_values(&[kind]).inc();
    let (task_breaker, task_metrics) = (breaker.clone(), metrics.clone());
    let task = tokio::spawn(async move {
        let outcome = tokio::time::timeout(bound, load).await;
        match &outcome {
            Ok(Ok(_)) => task_breaker.success(),
            Ok(Err(e)) => {
                task_metrics.store_errors.with_label_values(&[kind]).inc();
                if e.is_transient() {
                    task_breaker.failure();
                } else {
                    // The database answered: it is up, the query is wrong.
                    task_breaker.success();
                }
            }
            Err(_) => {
                task_metrics.store_errors.with_label_values(&[kind]).inc();
                task_breaker.failure();
            }
        }
        outcome
    });
    match task.await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(FactError {
            kind,
            message: e.to_string(),
        }),
        Ok(Err(_)) => Err(FactError {
            kind,
            message: format!("query still running after {bound:?}"),
        }),
        // The task panicked (or the runtime is shutting down): count it.
        Err(e) => {
            breaker.failure();
            Err(FactError {
                kind,
                message: format!("query task failed: {e}"),
            })
        }
    }
}

fn mismatch(kind: &'static str, got: &Fact) -> FactError {
    FactError {
        kind,
        message: format!("source answered a different fact kind: {got:?}"),
    }
}

#[cfg(test)]
mod tests;
