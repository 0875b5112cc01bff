//! The Postgres circuit breaker counts Postgres's failures only (SPEC §6):
//! callers that leave early — a 1 ms `grpc-timeout`, a stream reset mid-flight
//! — against a slow but healthy Postgres never open it, or any client could
//! open it for everyone; a query still running at our own decision deadline
//! does, so a hung Postgres still fails fast.
//!
//! Postgres is made slow, not broken, by a transaction holding an exclusive
//! lock on `users`: every user read waits for it, then answers.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use sqlx::PgPool;

use super::support::{Harness, config, demo::*, start_with};

/// A Check for `GET path` as `user`.
fn check_request(h: &Harness, user: &str, path: &str) -> CheckRequest {
    let http = HttpRequest {
        method: "GET".to_owned(),
        path: path.to_owned(),
        headers: [(
            "authorization".to_owned(),
            format!("Bearer {}", h.token(user)),
        )]
        .into(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Holds `ACCESS EXCLUSIVE` on `users` until the transaction drops.
async fn lock_users(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock users");
    tx
}

fn circuit(h: &Harness) -> i64 {
    h.running
        .metrics
        .circuit_state
        .with_label_values(&["postgres"])
        .get()
}

fn opened(h: &Harness) -> u64 {
    h.running
        .metrics
        .circuit_transitions
        .with_label_values(&["postgres", "open"])
        .get()
}

#[sqlx::test(migrations = "./migrations")]
async fn breaker_callers_leaving_early_never_open_it_against_a_slow_healthy_postgres(pool: PgPool) {
    // Two failures would open it, for a minute.
    let h = start_with(
        pool.clone(),
        config("breaker:\n  failures: 2\n  open_ms: 60000\n"),
    )
    .await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    let queries = h.running.metrics.store_queries_total();

    let lock = lock_users(&pool).await;
    // Callers whose own deadline is 1 ms (`grpc-timeout: 1m`) ...
    for user in [ALICE, BOB, CAROL, DAVE, ERIN] {
        let mut request = tonic::Request::new(check_request(&h, user, &path));
        request.set_timeout(Duration::from_millis(1));
        let status = h
            .client
            .clone()
            .check(request)
            .await
            .expect_err("1 ms is not enough");
        assert!(
            matches!(
                status.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            "{status:?}"
        );
    }
    // ... and callers that reset the stream mid-flight.
    for user in [ALICE, BOB, CAROL] {
        let mut client = h.client.clone();
        let request = check_request(&h, user, &path);
        let gone = tokio::time::timeout(Duration::from_millis(30), client.check(request)).await;
        assert!(gone.is_err(), "Postgres is held: no answer yet");
    }
    // Every one of them reached Postgres: the queries are in flight.
    let issued = h.running.metrics.store_queries_total() - queries;
    assert!(issued >= 3, "{issued} queries issued");
    // Postgres answers them all, well within our deadline (500 ms).
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(lock);
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(circuit(&h), 0, "the breaker is closed");
    assert_eq!(opened(&h), 0, "and never opened");
    assert_eq!(h.check_as(BOB, "GET", &path).await.status, 200);
}

#[sqlx::test(migrations = "./migrations")]
async fn breaker_opens_when_a_query_outlives_our_own_deadline(pool: PgPool) {
    let h = start_with(
        pool.clone(),
        config("decision:\n  deadline_ms: 200\nbreaker:\n  failures: 2\n  open_ms: 60000\n"),
    )
    .await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    let lock = lock_users(&pool).await;
    // Postgres holds every user read past our 200 ms deadline: a hang.
    for user in [ALICE, BOB] {
        let err = h
            .raw_check(
                "GET",
                &path,
                &[("authorization", &format!("Bearer {}", h.token(user)))],
            )
            .await
            .expect_err("cannot decide");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    }
    h.eventually(Duration::from_secs(2), || async { circuit(&h) == 2 })
        .await;
    // Open: the next Check that needs Postgres fails at once, not at the deadline.
    let started = Instant::now();
    let err = h
        .raw_check(
            "GET",
            &path,
            &[("authorization", &format!("Bearer {}", h.token(CAROL)))],
        )
        .await
        .expect_err("cannot decide");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    drop(lock);
}
