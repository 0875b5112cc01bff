use std::sync::atomic::AtomicUsize;

use super::*;
use crate::facts::freshness::FreshnessSettings;
use crate::model::UserStatus;
use crate::store::{StoreError, Target};
use crate::testkit::{Held, Hold, MemorySource};

/// The cache under test: over facts in memory, any read of which can be held.
type TestFacts = Facts<Held<MemorySource>>;

fn cache_config() -> CacheSettings {
    CacheSettings {
        max_facts: 1000,
        ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_secs(30),
        max_decisions: 100,
    }
}

fn facts(source: &Held<MemorySource>) -> Arc<TestFacts> {
    let config = cache_config();
    Arc::new(Facts::new(source.clone(), &config, Metrics::new()))
}

/// A cache over `source` that trusts its facts only while its feed is live
/// (connected and just proven), serving stale for `serve_stale` when it is not.
fn behind_a_live_feed(source: &Held<MemorySource>, serve_stale: Duration) -> TestFacts {
    let metrics = Metrics::new();
    let freshness = Arc::new(Freshness::new(
        FreshnessSettings {
            max_silence: Duration::from_secs(60),
            serve_stale_on_outage: serve_stale,
        },
        metrics.clone(),
    ));
    freshness.connected_now();
    freshness.proven(Instant::now());
    Facts::new(source.clone(), &cache_config(), metrics).with_freshness(freshness)
}

/// A source holding one user row, armed to hold the next read once it has
/// the row (`reached`: row read, fill held; then `release`).
fn armed(status: UserStatus) -> (Held<MemorySource>, Uuid, Hold) {
    let source = Held::new(MemorySource::new());
    let id = Uuid::new_v4();
    source.inner().user(id, status);
    let hold = source.hold_next("user");
    (source, id, hold)
}

/// Starts a fill of user `id` in the background.
fn spawn_fill(
    facts: &Arc<TestFacts>,
    id: Uuid,
) -> tokio::task::JoinHandle<Result<Option<User>, FactError>> {
    let facts = facts.clone();
    tokio::spawn(async move { facts.user(id, &Trace::off()).await })
}

#[tokio::test]
async fn fill_that_raced_with_invalidation_is_never_served() {
    let (source, id, hold) = armed(UserStatus::Active);
    let facts = facts(&source);

    // 1. A fill reads the old row (active) and is held before it lands.
    let filler = spawn_fill(&facts, id);
    hold.reached().await;
    // 2. The change commits and its invalidation is applied.
    source.inner().user(id, UserStatus::Suspended);
    facts.invalidate(&FactKey::User(id)).await;
    // 3. The fill lands.
    hold.release();
    let _ = filler.await.expect("join");

    // Every read after the invalidation sees the new row.
    for _ in 0..3 {
        let user = facts
            .user(id, &Trace::off())
            .await
            .expect("fact")
            .expect("row");
        assert_eq!(user.status, UserStatus::Suspended);
    }
}

#[tokio::test]
async fn flush_voids_fill_in_flight() {
    let (source, id, hold) = armed(UserStatus::Active);
    let facts = facts(&source);

    let filler = spawn_fill(&facts, id);
    hold.reached().await;
    source.inner().remove(&FactKey::User(id));
    facts.flush();
    hold.release();
    let _ = filler.await.expect("join");

    assert_eq!(facts.user(id, &Trace::off()).await.expect("fact"), None);
}

#[tokio::test]
async fn cached_fact_is_served_without_a_second_load() {
    let source = Held::new(MemorySource::new());
    let id = Uuid::new_v4();
    source.inner().user(id, UserStatus::Active);
    let facts = facts(&source);
    let trace = Trace::recording();
    facts.user(id, &trace).await.expect("fact");
    facts.user(id, &trace).await.expect("fact");
    assert_eq!(source.inner().loads(), 1);
    let sources: Vec<_> = trace.into_uses().iter().map(|u| u.source).collect();
    assert_eq!(sources, vec![Source::Postgres, Source::L1]);
}

#[tokio::test]
async fn concurrent_misses_on_one_key_run_one_load() {
    let (source, id, hold) = armed(UserStatus::Active);
    let facts = facts(&source);

    let tasks: Vec<_> = (0..32).map(|_| spawn_fill(&facts, id)).collect();
    hold.reached().await;
    // Let the other 31 callers reach the in-flight fill before it completes.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    hold.release();
    for t in tasks {
        assert!(t.await.expect("join").expect("fact").is_some());
    }
    assert_eq!(source.inner().loads(), 1);
}

#[tokio::test]
async fn negative_entry_is_cached_until_invalidated() {
    let source = Held::new(MemorySource::new());
    let id = Uuid::new_v4();
    let facts = facts(&source);
    assert_eq!(facts.user(id, &Trace::off()).await.expect("fact"), None);
    source.inner().user(id, UserStatus::Active);
    assert_eq!(
        facts.user(id, &Trace::off()).await.expect("fact"),
        None,
        "served from L1"
    );
    facts.invalidate(&FactKey::User(id)).await;
    assert!(facts.user(id, &Trace::off()).await.expect("fact").is_some());
    assert_eq!(source.inner().loads(), 2);
}

#[tokio::test]
async fn negative_entry_past_its_ttl_is_a_miss() {
    let source = Held::new(MemorySource::new());
    let id = Uuid::new_v4();
    let facts = facts(&source);
    let negative_ttl = cache_config().negative_ttl;
    assert_eq!(facts.user(id, &Trace::off()).await.expect("fact"), None);
    source.inner().user(id, UserStatus::Active);

    facts.clock.advance(negative_ttl - Duration::from_millis(1));
    assert_eq!(
        facts.user(id, &Trace::off()).await.expect("fact"),
        None,
        "within its TTL: served from L1"
    );
    assert_eq!(source.inner().loads(), 1);

    facts.clock.advance(Duration::from_millis(1));
    let trace = Trace::recording();
    assert!(
        facts.user(id, &trace).await.expect("fact").is_some(),
        "at its TTL: read again"
    );
    assert_eq!(source.inner().loads(), 2);
    let sources: Vec<_> = trace.into_uses().iter().map(|u| u.source).collect();
    assert_eq!(sources, vec![Source::Postgres]);
}

#[tokio::test]
async fn negative_entry_past_its_ttl_is_not_served_stale() {
    let source = Held::new(MemorySource::new());
    let id = Uuid::new_v4();
    let facts = behind_a_live_feed(&source, Duration::from_secs(600));
    assert_eq!(facts.user(id, &Trace::off()).await.expect("fact"), None);

    // The feed is lost and Postgres is down: cached facts answer, stale.
    facts.freshness().lost();
    source.inner().set_down(true);
    assert_eq!(
        facts.user(id, &Trace::off()).await.expect("served stale"),
        None
    );
    // Not the negative entry past its TTL.
    facts.clock.advance(cache_config().negative_ttl);
    assert!(facts.user(id, &Trace::off()).await.is_err());
}

#[tokio::test]
async fn present_entry_outlives_the_negative_ttl() {
    let source = Held::new(MemorySource::new());
    let id = Uuid::new_v4();
    source.inner().user(id, UserStatus::Active);
    let facts = facts(&source);
    facts.user(id, &Trace::off()).await.expect("fact");
    facts.clock.advance(cache_config().negative_ttl * 2);
    let trace = Trace::recording();
    assert!(facts.user(id, &trace).await.expect("fact").is_some());
    assert_eq!(source.inner().loads(), 1);
    let sources: Vec<_> = trace.into_uses().iter().map(|u| u.source).collect();
    assert_eq!(sources, vec![Source::L1]);
}

#[tokio::test]
async fn present_entry_past_the_ttl_is_a_miss() {
    let source = Held::new(MemorySource::new());
    let id = Uuid::new_v4();
    source.inner().user(id, UserStatus::Active);
    let facts = facts(&source);
    facts.user(id, &Trace::off()).await.expect("fact");
    source.inner().user(id, UserStatus::Suspended);
    facts
        .clock
        .advance(cache_config().ttl - Duration::from_millis(1));
    let user = facts.user(id, &Trace::off()).await.expect("fact");
    assert_eq!(user.map(|u| u.status), Some(UserStatus::Active), "from L1");

    facts.clock.advance(Duration::from_millis(1));
    let user = facts.user(id, &Trace::off()).await.expect("fact");
    assert_eq!(
        user.map(|u| u.status),
        Some(UserStatus::Suspended),
        "read again"
    );
    assert_eq!(source.inner().loads(), 2);
}

#[tokio::test]
async fn postgres_down_serves_cached_facts_and_fails_fast_for_the_rest() {
    // Every user a read below asks for exists and is active.
    let source = MemorySource::new();
    let (cached, probe, after) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for id in [cached, probe, after] {
        source.user(id, UserStatus::Active);
    }
    let config = cache_config();
    let breaker = BreakerConfig {
        failures: 3,
        open_for: Duration::from_millis(50),
    };
    let facts = Facts::with_tiers(source.clone(), &config, None, breaker, Metrics::new());
    assert!(
        facts
            .user(cached, &Trace::off())
            .await
            .expect("up")
            .is_some()
    );

    source.set_down(true);
    // Cached: still answered, without touching the source.
    let loads = source.loads();
    for _ in 0..10 {
        assert!(
            facts
                .user(cached, &Trace::off())
                .await
                .expect("cached")
                .is_some()
        );
    }
    assert_eq!(source.loads(), loads);
    // Uncached: errors ("cannot decide"), and after 3 the circuit opens and
    // the source is no longer called at all.
    for _ in 0..10 {
        assert!(facts.user(Uuid::new_v4(), &Trace::off()).await.is_err());
    }
    assert_eq!(source.loads(), loads + 3);
    assert_eq!(facts.breaker().state(), crate::breaker::CircuitState::Open);

    // Back up: after open_for one probe closes the circuit again.
    source.set_down(false);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(
        facts
            .user(probe, &Trace::off())
            .await
            .expect("probe")
            .is_some()
    );
    assert_eq!(
        facts.breaker().state(),
        crate::breaker::CircuitState::Closed
    );
    assert!(facts.user(after, &Trace::off()).await.is_ok());
}

/// A source that always answers, after `delay`: slow but healthy.
struct SlowSource {
    delay: Duration,
    loads: AtomicUsize,
    done: AtomicUsize,
}

impl FactSource for Arc<SlowSource> {
    async fn load(&self, key: &FactKey) -> Result<Fact, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.done.fetch_add(1, Ordering::SeqCst);
        let FactKey::User(id) = key else {
            unreachable!("test uses users only")
        };
        Ok(Fact::User(Some(User {
            id: *id,
            status: UserStatus::Active,
        })))
    }
}

/// A breaker that opens at the first failure and stays open.
fn touchy() -> BreakerConfig {
    BreakerConfig {
        failures: 1,
        open_for: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn query_past_our_own_timeout_opens_the_breaker() {
    let source = Held::new(MemorySource::new());
    let _hold = source.hold_next("user");
    let facts = Facts::with_tiers(source, &cache_config(), None, touchy(), Metrics::new())
        .with_query_timeout(Duration::from_millis(50));
    // The read hangs; our own bound abandons it and says so.
    let started = Instant::now();
    let err = facts
        .user(Uuid::new_v4(), &Trace::off())
        .await
        .expect_err("hung query");
    assert!(started.elapsed() >= Duration::from_millis(50), "{err}");
    assert_eq!(facts.breaker().state(), crate::breaker::CircuitState::Open);
}

#[tokio::test]
async fn query_hung_past_our_timeout_counts_even_when_its_caller_left_first() {
    let source = Held::new(MemorySource::new());
    let _hold = source.hold_next("user");
    let facts = Facts::with_tiers(source, &cache_config(), None, touchy(), Metrics::new())
        .with_query_timeout(Duration::from_millis(50));
    // The caller's own deadline (5 ms) is far shorter than ours: its leaving
    // proves nothing, but the query then hangs past our bound, which does.
    let left = tokio::time::timeout(
        Duration::from_millis(5),
        facts.user(Uuid::new_v4(), &Trace::off()),
    )
    .await;
    assert!(left.is_err(), "the caller gave up");
    assert_eq!(
        facts.breaker().state(),
        crate::breaker::CircuitState::Closed,
        "not yet: only our own timeout may count"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(facts.breaker().state(), crate::breaker::CircuitState::Open);
}

#[tokio::test]
async fn cancelled_callers_never_open_the_breaker_of_a_slow_healthy_source() {
    let source = Arc::new(SlowSource {
        delay: Duration::from_millis(50),
        loads: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    let facts = Arc::new(
        Facts::with_tiers(
            source.clone(),
            &cache_config(),
            None,
            touchy(),
            Metrics::new(),
        )
        .with_query_timeout(Duration::from_millis(500)),
    );
    // Callers whose own deadline (1 ms) expires mid-query ...
    for _ in 0..20 {
        let gone = tokio::time::timeout(
            Duration::from_millis(1),
            facts.user(Uuid::new_v4(), &Trace::off()),
        )
        .await;
        assert!(
            gone.is_err(),
            "the caller's deadline is shorter than the query"
        );
    }
    // ... and callers dropped mid-flight (a client reset).
    let dropped: Vec<_> = (0..20)
        .map(|_| {
            let facts = facts.clone();
            tokio::spawn(async move { facts.user(Uuid::new_v4(), &Trace::off()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for task in &dropped {
        task.abort();
    }
    // Every abandoned query still ran to its (successful) end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while source.done.load(Ordering::SeqCst) < source.loads.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "queries still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(source.loads.load(Ordering::SeqCst) >= 40);
    assert_eq!(
        facts.breaker().state(),
        crate::breaker::CircuitState::Closed,
        "40 callers left, Postgres never failed"
    );
    assert!(facts.user(Uuid::new_v4(), &Trace::off()).await.is_ok());
}

/// Buckets spread even ids that differ only in their low bits (the weakest
/// input for a multiplicative hash), and the kind is part of the bucket.
#[test]
fn buckets_spread_sequential_ids_and_separate_kinds() {
    use std::collections::HashSet;
    let ids: Vec<Uuid> = (0..10_000u128).map(Uuid::from_u128).collect();
    let buckets: HashSet<usize> = ids.iter().map(|id| FactKey::User(*id).bucket()).collect();
    // 10,000 keys in 65,536 buckets: about 9,270 distinct if spread at random.
    assert!(
        buckets.len() > 9_000,
        "only {} distinct buckets",
        buckets.len()
    );
    assert!(buckets.iter().all(|b| *b < fact::BUCKETS));
    let id = ids[42];
    let kinds = [
        FactKey::User(id),
        FactKey::Team(id),
        FactKey::Memberships(id),
        FactKey::Project(id),
        FactKey::Generation(id),
        FactKey::Shares(crate::model::ResourceKind::Generation, id),
        FactKey::Shares(crate::model::ResourceKind::Project, id),
        FactKey::Session(id),
    ];
    let per_kind: HashSet<usize> = kinds.iter().map(FactKey::bucket).collect();
    assert_eq!(per_kind.len(), kinds.len());
    let key = FactKey::ApiKey("ab".repeat(32).into());
    assert_eq!(key.bucket(), key.clone().bucket());
}

/// What a decision on a generation reads through a [`Gather`]: its user and
/// the generation row, remembered as (status, no role) when `remember`.
async fn decide_on(facts: &TestFacts, user: Uuid, generation: Uuid, remember: bool) {
    let target = Some(Target::Generation(generation));
    let trace = Trace::off();
    let gather = facts.gather(user, target, &trace);
    let status = gather.user(user).await.expect("user").map(|u| u.status);
    gather.generation(generation).await.expect("generation");
    if remember {
        gather.remember(status.map(|s| (s, None)));
    }
}

/// An active user owning a generation, in memory.
fn memo_source() -> (Held<MemorySource>, Uuid, Uuid) {
    let source = Held::new(MemorySource::new());
    let (user, generation) = (Uuid::new_v4(), Uuid::new_v4());
    source
        .inner()
        .user(user, UserStatus::Active)
        .generation(generation, user);
    (source, user, generation)
}

/// [`memo_source`], both facts read into L1 by one decision.
async fn memo_world() -> (Held<MemorySource>, Arc<TestFacts>, Uuid, Uuid) {
    let (source, user, generation) = memo_source();
    let facts = facts(&source);
    // Read from the source: nothing to remember yet.
    decide_on(&facts, user, generation, true).await;
    (source, facts, user, generation)
}

fn remembered(facts: &TestFacts, user: Uuid, generation: Uuid) -> Option<StatusAndRole> {
    facts.remembered(user, Target::Generation(generation), &Trace::off())
}

#[tokio::test]
async fn a_decision_is_remembered_only_when_every_fact_came_from_l1() {
    let (_source, facts, user, generation) = memo_world().await;
    // The first decision filled L1 from the source: its facts carry no
    // stamps that vouch for them, so it was not kept.
    assert_eq!(remembered(&facts, user, generation), None);
    // The second read both from L1.
    decide_on(&facts, user, generation, true).await;
    let trace = Trace::recording();
    let known = facts.remembered(user, Target::Generation(generation), &trace);
    assert_eq!(known, Some(Some((UserStatus::Active, None))));
    // A hit replays the facts it rests on, as L1 reads, in the order read.
    let uses: Vec<(FactKey, Source)> = trace
        .into_uses()
        .into_iter()
        .map(|u| (u.key, u.source))
        .collect();
    assert_eq!(
        uses,
        vec![
            (FactKey::User(user), Source::L1),
            (FactKey::Generation(generation), Source::L1)
        ]
    );
}

#[tokio::test]
async fn an_invalidation_of_any_fact_a_remembered_decision_used_voids_it() {
    for which in 0..2 {
        let (_source, facts, user, generation) = memo_world().await;
        decide_on(&facts, user, generation, true).await;
        assert!(remembered(&facts, user, generation).is_some());
        let key = [FactKey::User(user), FactKey::Generation(generation)][which].clone();
        facts.invalidate(&key).await;
        assert_eq!(remembered(&facts, user, generation), None, "{key:?}");
        // Another user's change voids nothing here.
        let (_other_source, other, other_user, other_generation) = memo_world().await;
        decide_on(&other, other_user, other_generation, true).await;
        other.invalidate(&FactKey::User(Uuid::new_v4())).await;
        assert!(remembered(&other, other_user, other_generation).is_some());
    }
}

#[tokio::test]
async fn a_flush_a_ttl_or_an_untrusted_feed_voids_a_remembered_decision() {
    let (_source, facts, user, generation) = memo_world().await;
    decide_on(&facts, user, generation, true).await;
    facts.flush_local();
    assert_eq!(remembered(&facts, user, generation), None);

    let (_source, facts, user, generation) = memo_world().await;
    decide_on(&facts, user, generation, true).await;
    facts.clock.advance(cache_config().ttl);
    assert_eq!(remembered(&facts, user, generation), None);

    let (source, user, generation) = memo_source();
    let facts = behind_a_live_feed(&source, Duration::ZERO);
    decide_on(&facts, user, generation, true).await;
    decide_on(&facts, user, generation, true).await;
    assert!(remembered(&facts, user, generation).is_some());
    facts.freshness().lost();
    assert_eq!(remembered(&facts, user, generation), None);
}

#[tokio::test]
async fn a_decision_that_raced_an_invalidation_is_remembered_with_the_old_stamp_and_never_trusted()
{
    let (_source, facts, user, generation) = memo_world().await;
    // The decision reads both facts from L1, then an invalidation lands
    // before it is remembered: the entry it keeps is void from the start.
    let trace = Trace::off();
    let gather = facts.gather(user, Some(Target::Generation(generation)), &trace);
    let status = gather.user(user).await.expect("user").map(|u| u.status);
    gather.generation(generation).await.expect("generation");
    facts.invalidate(&FactKey::Generation(generation)).await;
    gather.remember(status.map(|s| (s, None)));
    assert_eq!(remembered(&facts, user, generation), None);
}
