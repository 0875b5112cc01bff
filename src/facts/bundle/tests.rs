//! The bundle against real Postgres, with its statement held mid-flight
//! ([`Held`]): an invalidation or flush that lands while it runs keeps what
//! it voided out of the decision and out of L1; the rest lands in L1.

use sqlx::PgPool;

use super::*;
use crate::facts::CacheSettings;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::testkit::{Held, MemorySource};

const BOB: Uuid = Uuid::from_u128(0x10000000_0000_4000_8000_000000000002);
/// No project, parent 01 (in research-notebook): one hop.
const GEN_CHILD: Uuid = Uuid::from_u128(0x40000000_0000_4000_8000_000000000004);

fn facts<S: FactSource>(source: S, metrics: &Metrics) -> Arc<Facts<S>> {
    let config = CacheSettings {
        max_facts: 1000,
        ttl: std::time::Duration::from_secs(300),
        negative_ttl: std::time::Duration::from_secs(30),
        max_decisions: 100,
    };
    Arc::new(Facts::new(source, &config, metrics.clone()))
}

fn queries(metrics: &Metrics, kind: &str) -> u64 {
    metrics.store_queries.with_label_values(&[kind]).get()
}

/// Bob's memberships and the generation, as one decision on it reads them,
/// with the trace.
async fn bob_reads(
    facts: Arc<Facts<Held<Store>>>,
) -> (
    Arc<[Membership]>,
    Option<Generation>,
    Vec<crate::facts::FactUse>,
) {
    let trace = Trace::recording();
    let gather = facts.gather(BOB, Some(Target::Generation(GEN_CHILD)), &trace);
    let memberships = gather.memberships(BOB).await.expect("memberships");
    let generation = gather.generation(GEN_CHILD).await.expect("generation");
    drop(gather);
    (memberships, generation, trace.into_uses())
}

async fn seeded(pool: &PgPool) -> Held<Store> {
    crate::demo::seed(pool).await.expect("seed");
    Held::new(Store::new(pool.clone()))
}

async fn remove_bobs_membership(pool: &PgPool) {
    sqlx::query("DELETE FROM team_members WHERE user_id = $1")
        .bind(BOB)
        .execute(pool)
        .await
        .expect("delete");
}

#[sqlx::test(migrations = "./migrations")]
async fn bundle_racing_with_an_invalidation_keeps_the_voided_fact_out(pool: PgPool) {
    let source = seeded(&pool).await;
    let metrics = Metrics::new();
    let facts = facts(source.clone(), &metrics);

    // 1. The decision's statement reads bob's membership and is held.
    let hold = source.hold_next("decision");
    let decision = tokio::spawn(bob_reads(facts.clone()));
    hold.reached().await;
    // 2. The membership goes and its invalidation is applied.
    remove_bobs_membership(&pool).await;
    facts.invalidate(&FactKey::Memberships(BOB)).await;
    // 3. The statement lands with the old row.
    hold.release();
    let (memberships, generation, uses) = decision.await.expect("join");

    // The voided fact was read again, on its own; the others came from the bundle.
    assert!(
        memberships.is_empty(),
        "stale membership used: {memberships:?}"
    );
    assert!(generation.is_some());
    assert_eq!(queries(&metrics, "decision"), 1);
    assert_eq!(queries(&metrics, "memberships"), 1);
    let sources: Vec<_> = uses.iter().map(|u| (u.kind(), u.source)).collect();
    assert_eq!(
        sources,
        vec![
            ("memberships", Source::Postgres),
            ("generation", Source::Postgres)
        ]
    );
    // Nothing stale in L1; the untouched facts are there.
    assert!(
        facts
            .memberships(BOB, &Trace::off())
            .await
            .expect("memberships")
            .is_empty()
    );
    let trace = Trace::recording();
    facts
        .generation(GEN_CHILD, &trace)
        .await
        .expect("generation");
    assert_eq!(trace.into_uses()[0].source, Source::L1);
}

#[sqlx::test(migrations = "./migrations")]
async fn bundle_racing_with_a_flush_is_dropped_whole(pool: PgPool) {
    let source = seeded(&pool).await;
    let metrics = Metrics::new();
    let facts = facts(source.clone(), &metrics);

    let hold = source.hold_next("decision");
    let decision = tokio::spawn(bob_reads(facts.clone()));
    hold.reached().await;
    remove_bobs_membership(&pool).await;
    facts.flush();
    hold.release();
    let (memberships, generation, _) = decision.await.expect("join");

    assert!(
        memberships.is_empty(),
        "stale membership used: {memberships:?}"
    );
    assert!(generation.is_some());
    // Each read on its own after the flush.
    assert_eq!(queries(&metrics, "memberships"), 1);
    assert_eq!(queries(&metrics, "generation"), 1);
}

#[sqlx::test(migrations = "./migrations")]
async fn bundled_facts_in_l1_are_voided_by_a_later_invalidation(pool: PgPool) {
    let source = seeded(&pool).await;
    let metrics = Metrics::new();
    let facts = facts(source, &metrics);
    let (memberships, _, _) = bob_reads(facts.clone()).await;
    assert_eq!(memberships.len(), 1);

    remove_bobs_membership(&pool).await;
    facts.invalidate(&FactKey::Memberships(BOB)).await;
    let trace = Trace::recording();
    let memberships = facts.memberships(BOB, &trace).await.expect("memberships");
    assert!(
        memberships.is_empty(),
        "stale membership used: {memberships:?}"
    );
    facts
        .generation(GEN_CHILD, &trace)
        .await
        .expect("generation");
    let sources: Vec<_> = trace.into_uses().iter().map(|u| u.source).collect();
    assert_eq!(
        sources,
        vec![Source::Postgres, Source::L1],
        "the voided fact read again, the untouched one still cached"
    );
}

#[tokio::test]
async fn source_without_the_statement_reads_fact_by_fact() {
    let source = MemorySource::new();
    source
        .user(BOB, crate::model::UserStatus::Active)
        .generation(GEN_CHILD, BOB);
    let metrics = Metrics::new();
    let facts = facts(source.clone(), &metrics);
    let trace = Trace::recording();
    let gather = facts.gather(BOB, Some(Target::Generation(GEN_CHILD)), &trace);
    assert!(gather.user(BOB).await.expect("user").is_some());
    assert!(gather.generation(GEN_CHILD).await.expect("gen").is_some());
    assert!(gather.memberships(BOB).await.expect("m").is_empty());
    assert_eq!(source.loads(), 3);
    assert_eq!(queries(&metrics, "decision"), 0);
}
