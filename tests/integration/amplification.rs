//! What an unauthenticated client can make the sidecar do: a key that cannot
//! be ours costs no lookup; an unknown key leaves no entry in the shared
//! Redis; and an address that keeps failing is answered 429 before its next
//! credential is looked up — through the gRPC door (Envoy's source address)
//! and the HTTP door (the last `x-forwarded-for` hop).

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use sqlx::PgPool;
use velro_authz::authn::apikey;
use velro_authz::store::Store;

use velro_authz::testkit::Answer;
use velro_authz::testkit::http as http_client;

use super::support::{Harness, config, demo::*, redis_yaml, start, start_with, unique_prefix};

fn queries(h: &Harness) -> u64 {
    h.running.metrics.store_queries_total()
}

/// A Check as Envoy sends it, from client address `from`.
async fn check_from(h: &Harness, from: &str, headers: &[(&str, &str)]) -> Answer {
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: from.to_owned(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".to_owned(),
                    path: format!("/api/v1/generations/{GEN_BOB}"),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let response = h
        .client
        .clone()
        .check(request)
        .await
        .expect("Check RPC succeeds");
    Answer::read(response.into_inner())
}

fn unknown_key() -> String {
    apikey::generate().plain
}

#[sqlx::test(migrations = "./migrations")]
async fn check_api_key_that_cannot_be_ours_costs_no_lookup(pool: PgPool) {
    let h = start(pool).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    let real = unknown_key();
    let body = &real[apikey::PREFIX.len()..];
    let before = queries(&h);
    for junk in [
        "vk_unknown".to_owned(),
        format!("sk_{body}"),
        real[..real.len() - 1].to_owned(),
        format!("{real}x"),
        format!("{}!", &real[..real.len() - 1]),
        "velro_".to_owned() + &"A".repeat(200),
    ] {
        let a = h.check("GET", &path, &[("x-api-key", &junk)]).await;
        assert_eq!(
            (a.status, a.reason.as_str()),
            (401, "invalid_api_key"),
            "{junk:?}"
        );
    }
    assert_eq!(
        queries(&h),
        before,
        "no value of the wrong shape reached Postgres"
    );

    let a = h.check("GET", &path, &[("x-api-key", &real)]).await;
    assert_eq!((a.status, a.reason.as_str()), (401, "invalid_api_key"));
    assert_eq!(
        queries(&h),
        before + 1,
        "a well-formed unknown key is looked up"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn check_unknown_api_key_is_not_cached_in_redis(pool: PgPool) {
    let prefix = unique_prefix("negative-key");
    let h = start_with(pool, config(&redis_yaml(&prefix))).await;
    let l2 = h
        .running
        .authorizer
        .facts()
        .l2()
        .expect("redis configured")
        .clone();
    h.eventually(Duration::from_secs(10), || {
        let l2 = l2.clone();
        async move { l2.usable() }
    })
    .await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    let key = unknown_key();
    let before = queries(&h);
    for _ in 0..3 {
        let a = h.check("GET", &path, &[("x-api-key", &key)]).await;
        assert_eq!((a.status, a.reason.as_str()), (401, "invalid_api_key"));
    }
    assert_eq!(
        queries(&h),
        before + 1,
        "L1 still remembers the absence on this sidecar"
    );
    assert_eq!(
        h.running
            .metrics
            .l2_fills
            .with_label_values(&["written"])
            .get(),
        0,
        "no negative API-key entry in the shared Redis"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn check_failed_auth_per_address_is_429_before_lookup(pool: PgPool) {
    let h = start_with(
        pool.clone(),
        config("rate_limit:\n  failed_auth_per_minute: 3\n"),
    )
    .await;
    let attacker = "203.0.113.5";
    // A neighbour behind the same address authenticated before the attack.
    let live = apikey::generate();
    Store::new(pool)
        .insert_api_key(
            uuid::Uuid::parse_str(BOB).expect("uuid"),
            &live.hash,
            &live.display_prefix,
            None,
            None,
        )
        .await
        .expect("insert key");
    let used_token = h.token(BOB);
    assert_eq!(
        check_from(&h, attacker, &[("x-api-key", &live.plain)])
            .await
            .status,
        200
    );
    assert_eq!(
        check_from(
            &h,
            attacker,
            &[("authorization", &format!("Bearer {used_token}"))]
        )
        .await
        .status,
        200
    );

    // Honest failures spend nothing: no credentials at all.
    for _ in 0..5 {
        let a = check_from(&h, attacker, &[]).await;
        assert_eq!(a.reason, "missing_credentials");
    }
    for _ in 0..3 {
        let a = check_from(&h, attacker, &[("x-api-key", &unknown_key())]).await;
        assert_eq!((a.status, a.reason.as_str()), (401, "invalid_api_key"));
    }
    let before = queries(&h);
    let a = check_from(&h, attacker, &[("x-api-key", &unknown_key())]).await;
    assert_eq!((a.status, a.reason.as_str()), (429, "rate_limited"));
    assert!(a.headers.contains_key("retry-after"), "{:?}", a.headers);
    assert_eq!(queries(&h), before, "refused before the lookup");
    let fresh = h.token(ALICE);
    assert_eq!(
        check_from(
            &h,
            attacker,
            &[("authorization", &format!("Bearer {fresh}"))]
        )
        .await
        .reason,
        "rate_limited",
        "an unproven credential from the address waits too"
    );

    // Credentials that proved themselves still work from there.
    assert_eq!(
        check_from(&h, attacker, &[("x-api-key", &live.plain)])
            .await
            .status,
        200
    );
    assert_eq!(
        check_from(
            &h,
            attacker,
            &[("authorization", &format!("Bearer {used_token}"))]
        )
        .await
        .status,
        200
    );
    // Other addresses are not affected.
    let a = check_from(&h, "203.0.113.6", &[("x-api-key", &unknown_key())]).await;
    assert_eq!((a.status, a.reason.as_str()), (401, "invalid_api_key"));
    h.running.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn forward_failed_auth_is_counted_by_the_last_x_forwarded_for_hop(pool: PgPool) {
    let h = start_with(pool, config("rate_limit:\n  failed_auth_per_minute: 2\n")).await;
    let uri = format!("/api/v1/generations/{GEN_BOB}");
    let ask = |xff: &'static str| {
        let uri = uri.clone();
        let addr = h.running.http_addr;
        async move {
            let key = unknown_key();
            // As nginx's auth_request asks (Traefik's forwardAuth alike).
            let reply = http_client::send(
                addr,
                "GET",
                "/v1/auth",
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", &uri),
                    ("x-api-key", &key),
                    ("x-forwarded-for", xff),
                ],
                Vec::new(),
            )
            .await;
            (
                reply.status,
                reply.json()["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    // The client varies the hops it writes; the proxy's last hop is the same.
    for xff in ["10.0.0.1, 198.51.100.23", "10.0.0.2, 198.51.100.23"] {
        assert_eq!(ask(xff).await, (401, "invalid_api_key".to_owned()));
    }
    assert_eq!(
        ask("10.0.0.3, 198.51.100.23").await,
        (429, "rate_limited".to_owned())
    );
    // Writing the blocked address first does not move the client into it,
    // nor out of its own bucket.
    assert_eq!(
        ask("198.51.100.23, 192.0.2.77").await,
        (401, "invalid_api_key".to_owned())
    );
    h.running.shutdown().await;
}
