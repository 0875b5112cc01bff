//! The cold decision (SPEC §5): at its first fact missing from L1, a decision
//! reads every fact it may need in one statement. Against real Postgres: for
//! every demo user and resource, that statement decides as the fact-by-fact
//! walk does, in one query whether the resource exists or not, and the trace
//! still names every fact with where it came from.

use sqlx::PgPool;
use velro_authz::authz::AuthzRequest;
use velro_authz::facts::{Fact, FactKey, FactSource, Source};
use velro_authz::metrics::Metrics;
use velro_authz::store::{Store, StoreError};
use velro_authz::testkit::{AuthorizerBuilder, Token};

use super::support::{config, decide_get, demo::*};

/// Postgres read fact by fact (no one-statement read): the reference.
struct FactByFact(Store);

impl FactSource for FactByFact {
    async fn load(&self, key: &FactKey) -> Result<Fact, StoreError> {
        self.0.load(key).await
    }
}

/// Every resource of the demo, and one that does not exist of each kind.
fn paths() -> Vec<String> {
    let mut paths = Vec::new();
    for id in [
        GEN_BOB,
        GEN_PUBLIC,
        GEN_SHARED_ERIN,
        GEN_CHILD,
        GEN_DELETED,
        GEN_BOB_ALONE,
        GEN_GRANDCHILD,
        GEN_MISSING,
    ] {
        paths.push(format!("/api/v1/generations/{id}"));
    }
    for id in [
        PROJECT_NOTEBOOK,
        PROJECT_GALLERY,
        PROJECT_SKETCHES,
        "30000000-0000-4000-8000-0000000000ff",
    ] {
        paths.push(format!("/api/v1/projects/{id}"));
    }
    for id in [
        TEAM_ACME,
        TEAM_RESEARCH,
        "20000000-0000-4000-8000-0000000000ff",
    ] {
        paths.push(format!("/api/v1/teams/{id}/members"));
    }
    paths
}

#[sqlx::test(migrations = "./migrations")]
async fn cold_decision_is_one_statement_and_decides_as_the_fact_by_fact_walk(pool: PgPool) {
    velro_authz::demo::seed(&pool).await.expect("seed");
    let cfg = config("");
    let metrics = Metrics::new();
    let bundled = AuthorizerBuilder::new(cfg.clone())
        .metrics(&metrics)
        .build(Store::new(pool.clone()));
    let reference = AuthorizerBuilder::new(cfg.clone()).build(FactByFact(Store::new(pool.clone())));
    for user in [ALICE, BOB, CAROL, DAVE, ERIN] {
        let token = Token::new(user).bearer(&cfg.jwt);
        for path in paths() {
            bundled.facts().flush();
            reference.facts().flush();
            let before = metrics.store_queries_total();
            let outcome = decide_get(bundled.clone(), token.clone(), path.clone()).await;
            assert_eq!(
                metrics.store_queries_total() - before,
                1,
                "{user} {path}: one statement on a cold cache"
            );
            let expected = decide_get(reference.clone(), token.clone(), path.clone()).await;
            assert_eq!(outcome, expected, "{user} {path}");

            // Warm: from L1, no query (a generation that does not exist is
            // never cached: that one statement again, unless the user is
            // inactive and no resource is looked at).
            let before = metrics.store_queries_total();
            let again = decide_get(bundled.clone(), token.clone(), path.clone()).await;
            assert_eq!(again, expected, "{user} {path} from L1");
            let warm = u64::from(path.ends_with(GEN_MISSING) && user != DAVE);
            assert_eq!(
                metrics.store_queries_total() - before,
                warm,
                "{user} {path}: queries with L1 warm"
            );
        }
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn cold_decision_explain_names_every_fact_with_its_source(pool: PgPool) {
    velro_authz::demo::seed(&pool).await.expect("seed");
    let cfg = config("");
    let authorizer = AuthorizerBuilder::new(cfg.clone()).build(Store::new(pool.clone()));
    let token = Token::new(BOB).bearer(&cfg.jwt);
    let path = format!("/api/v1/generations/{GEN_GRANDCHILD}");
    let req = AuthzRequest {
        method: "GET",
        path: &path,
        authorization: Some(&token),
        largest_header: token.len(),
        ..Default::default()
    };
    let kinds = |facts: &[velro_authz::facts::FactUse]| {
        let mut kinds: Vec<_> = facts.iter().map(|f| f.kind()).collect();
        kinds.sort_unstable();
        kinds
    };
    // The deepest demo decision: the user, memberships, the generation and
    // its two parents, the project, its team and the parent team, and the
    // shares on the generation and on the project.
    let expected = vec![
        "generation",
        "generation",
        "generation",
        "memberships",
        "project",
        "shares",
        "shares",
        "team",
        "team",
        "user",
    ];

    let cold = authorizer.explain(&req).await;
    assert!(cold.decision.is_ok(), "{:?}", cold.decision);
    assert_eq!(kinds(&cold.facts), expected);
    assert!(
        cold.facts.iter().all(|f| f.source == Source::Postgres),
        "{:?}",
        cold.facts
    );

    let warm = authorizer.explain(&req).await;
    assert_eq!(kinds(&warm.facts), expected);
    assert!(
        warm.facts.iter().all(|f| f.source == Source::L1),
        "{:?}",
        warm.facts
    );
}
