//! The fill/invalidation race against real Postgres and the real LISTEN loop:
//! a fill reads the old row, the change commits and its notification is
//! applied, then the fill lands. The next decision must use the new row.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use velro_authz::answer::Outcome;
use velro_authz::invalidate;
use velro_authz::metrics::Metrics;
use velro_authz::store::Store;
use velro_authz::testkit::{AuthorizerBuilder, Held, Token};

use super::support::{config, decide_get, demo::*};

#[sqlx::test(migrations = "./migrations")]
async fn race_fill_holding_old_row_lands_after_invalidation_and_is_not_used(pool: PgPool) {
    velro_authz::demo::seed(&pool).await.expect("seed");
    let cfg = config("");
    let metrics = Metrics::new();
    let source = Held::new(Store::new(pool.clone()));
    let token = Token::new(BOB).bearer(&cfg.jwt);
    let authorizer = AuthorizerBuilder::new(cfg.clone())
        .metrics(&metrics)
        .build(source.clone());
    let facts = authorizer.facts().clone();

    let (connected_tx, mut connected) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let listener = tokio::spawn(invalidate::run(
        pool.clone(),
        facts.clone(),
        metrics.clone(),
        cfg.listener,
        connected_tx,
        stop,
    ));
    tokio::time::timeout(Duration::from_secs(10), connected.wait_for(|c| *c))
        .await
        .expect("listener")
        .expect("channel");

    let path = format!("/api/v1/generations/{GEN_CHILD}");
    let check = || decide_get(authorizer.clone(), token.clone(), path.clone());

    // 1. A decision starts; the statement that reads all its facts reads
    //    bob's membership and is held.
    let hold = source.hold_next("decision");
    let first = tokio::spawn(check());
    hold.reached().await;

    // 2. The membership is removed in Postgres and the invalidation is applied.
    let applied = metrics
        .invalidations
        .with_label_values(&["team_members"])
        .get();
    sqlx::query("DELETE FROM team_members WHERE user_id = $1")
        .bind(BOB.parse::<uuid::Uuid>().expect("uuid"))
        .execute(&pool)
        .await
        .expect("delete");
    for _ in 0..1000 {
        if metrics
            .invalidations
            .with_label_values(&["team_members"])
            .get()
            > applied
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        metrics
            .invalidations
            .with_label_values(&["team_members"])
            .get()
            > applied,
        "invalidation applied"
    );

    // 3. The held read lands (with the old row). The decision in flight may
    //    use it: it started before the change was heard.
    hold.release();
    let _ = first.await.expect("join");

    // Every decision after the invalidation sees the new truth.
    for _ in 0..3 {
        match check().await {
            Outcome::Deny(d) => assert_eq!((d.http_status(), d.code()), (404, "not_found")),
            other => panic!("stale allow after the invalidation: {other:?}"),
        }
    }
    stop_tx.send_replace(true);
    listener.await.expect("listener ends");
}
