//! Per-principal rate limiting (SPEC §6) over real sockets: shared through
//! Redis by every sidecar, local without it, with 429 answers carrying
//! `retry-after` and the `ratelimit-*` headers.

use std::time::Duration;

use fred::interfaces::KeysInterface;
use sqlx::PgPool;
use velro_authz::testkit::Answer;

use super::support::{
    attach, config, demo::*, redis_client, redis_yaml, start_with, unique_prefix,
};

/// How far ahead of now the principal's GCRA time in Redis is: the
/// allowance taken from Redis and not yet refilled (Redis runs on this
/// machine, on this clock).
async fn taken_ahead(prefix: &str, user: &str) -> Duration {
    let tat: String = redis_client()
        .await
        .get(format!("{prefix}rl:u:{user}"))
        .await
        .expect("GET");
    let tat: u64 = tat.parse().expect("µs");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64;
    Duration::from_micros(tat.saturating_sub(now))
}

const LIMIT: &str = "rate_limit:\n  per_second: 0.5\n  burst: 3\n";

fn assert_limited(answer: &Answer) {
    assert_eq!(
        (answer.status, answer.reason.as_str()),
        (429, "rate_limited"),
        "{answer:?}"
    );
    let retry: u64 = answer.headers["retry-after"]
        .parse()
        .expect("retry-after seconds");
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert_eq!(answer.headers["ratelimit-limit"], "3");
    assert_eq!(answer.headers["ratelimit-remaining"], "0");
    let reset: u64 = answer.headers["ratelimit-reset"]
        .parse()
        .expect("reset seconds");
    assert!((1..=6).contains(&reset), "ratelimit-reset {reset}");
    assert!(!answer.headers.contains_key("www-authenticate"));
}

#[sqlx::test(migrations = "./migrations")]
async fn rate_limit_is_shared_by_sidecars_through_redis(pool: PgPool) {
    let prefix = unique_prefix("rl");
    let yaml = format!("{}{LIMIT}", redis_yaml(&prefix));
    let a = start_with(pool.clone(), config(&yaml)).await;
    let b = attach(pool, config(&yaml)).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    // Three allowed in all, whichever sidecar answers.
    assert_eq!(a.check_as(BOB, "GET", &path).await.status, 200);
    assert_eq!(b.check_as(BOB, "GET", &path).await.status, 200);
    assert_eq!(a.check_as(BOB, "GET", &path).await.status, 200);
    assert_limited(&b.check_as(BOB, "GET", &path).await);
    assert_limited(&a.check_as(BOB, "GET", &path).await);
    // Another principal has its own allowance.
    assert_eq!(a.check_as(ALICE, "GET", &path).await.status, 200);
    let text = b.running.metrics.render();
    assert!(
        text.contains(r#"velro_authz_rate_limited_total{backend="redis"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"velro_authz_decisions_total{outcome="deny",reason="rate_limited",status="429"} 1"#
        ),
        "{text}"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn rate_limit_without_redis_is_enforced_per_sidecar(pool: PgPool) {
    let a = start_with(pool.clone(), config(LIMIT)).await;
    let b = attach(pool, config(LIMIT)).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    for _ in 0..3 {
        assert_eq!(a.check_as(BOB, "GET", &path).await.status, 200);
    }
    assert_limited(&a.check_as(BOB, "GET", &path).await);
    // B counts on its own.
    assert_eq!(b.check_as(BOB, "GET", &path).await.status, 200);
    let text = a.running.metrics.render();
    assert!(
        text.contains(r#"velro_authz_rate_limited_total{backend="local"} 1"#),
        "{text}"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn rate_limit_keys_api_keys_apart_from_their_owner_and_skips_public_routes(pool: PgPool) {
    let h = start_with(
        pool.clone(),
        config("rate_limit:\n  per_second: 0.5\n  burst: 1\n"),
    )
    .await;
    let store = velro_authz::store::Store::new(pool);
    let key = velro_authz::authn::apikey::generate();
    store
        .insert_api_key(
            BOB.parse().expect("uuid"),
            &key.hash,
            &key.display_prefix,
            None,
            None,
        )
        .await
        .expect("api key");
    let plain = key.plain;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    assert_eq!(h.check_as(BOB, "GET", &path).await.status, 200);
    assert_limited_status(&h.check_as(BOB, "GET", &path).await);
    // The key is its own principal for limiting.
    let key_answer = h.check("GET", &path, &[("x-api-key", &plain)]).await;
    assert_eq!(key_answer.status, 200, "{key_answer:?}");
    assert_limited_status(&h.check("GET", &path, &[("x-api-key", &plain)]).await);
    // Public routes need no principal and are never limited here.
    for _ in 0..5 {
        assert_eq!(h.check("GET", "/health/status", &[]).await.status, 200);
    }
    // The allowance comes back.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(h.check_as(BOB, "GET", &path).await.status, 200);
}

fn assert_limited_status(answer: &Answer) {
    assert_eq!(
        (answer.status, answer.reason.as_str()),
        (429, "rate_limited"),
        "{answer:?}"
    );
}

/// A slow limit with leases of 4: ten requests in all, one per 100 s after.
const LEASED: &str = "rate_limit:\n  per_second: 0.01\n  burst: 10\n  lease: 4\n";

#[sqlx::test(migrations = "./migrations")]
async fn rate_limit_leases_never_admit_more_than_the_shared_limit(pool: PgPool) {
    let prefix = unique_prefix("rl-lease");
    let yaml = format!("{}{LEASED}", redis_yaml(&prefix));
    let a = start_with(pool.clone(), config(&yaml)).await;
    let b = attach(pool, config(&yaml)).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    // One Check takes a whole lease from Redis: four requests of 100 s each.
    assert_eq!(a.check_as(BOB, "GET", &path).await.status, 200);
    let ahead = taken_ahead(&prefix, BOB).await;
    assert!(
        ahead > Duration::from_secs(350) && ahead <= Duration::from_secs(400),
        "{ahead:?}"
    );
    let mut allowed = 1;
    for i in 1..40 {
        let sidecar = if i % 2 == 0 { &a } else { &b };
        let answer = sidecar.check_as(BOB, "GET", &path).await;
        match answer.status {
            200 => allowed += 1,
            429 => assert_eq!(answer.reason, "rate_limited", "{answer:?}"),
            _ => panic!("{answer:?}"),
        }
    }
    // Each sidecar admits only what Redis leased it, and whatever one held
    // in stock it spent before it refused: exactly the burst, in all.
    assert_eq!(allowed, 10);
}

#[sqlx::test(migrations = "./migrations")]
async fn rate_limit_gives_back_an_expired_lease(pool: PgPool) {
    let prefix = unique_prefix("rl-back");
    let yaml = format!(
        "{}rate_limit:\n  per_second: 0.01\n  burst: 5\n  lease: 5\n",
        redis_yaml(&prefix)
    );
    let a = start_with(pool.clone(), config(&yaml)).await;
    let b = attach(pool, config(&yaml)).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    // A leases all five and spends one.
    assert_eq!(a.check_as(BOB, "GET", &path).await.status, 200);
    assert_limited_status(&b.check_as(BOB, "GET", &path).await);
    // A's stock expires; its next lease request gives the four back and
    // takes them again.
    tokio::time::sleep(velro_authz::ratelimit::LEASE_TTL + Duration::from_millis(200)).await;
    for _ in 0..4 {
        assert_eq!(a.check_as(BOB, "GET", &path).await.status, 200);
    }
    assert_limited_status(&a.check_as(BOB, "GET", &path).await);
}
