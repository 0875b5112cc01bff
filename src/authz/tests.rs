//! The decision spine in-process, over facts in memory: SPEC §4's steps in
//! their order, every deny reason the core gives, dry-run, and "cannot
//! decide" (deadline, store down) never turning into an answer.

use std::collections::HashSet;

use chrono::Utc;
use uuid::Uuid;

use super::*;
use crate::authn::apikey;
use crate::facts::{Fact, FactKey};
use crate::model::{ApiKey, Grantee, ResourceKind, Session, Share};
use crate::testkit::{AuthorizerBuilder, Check, Held, MemorySource, SECRET, Token, config};

/// The people and the one generation of these tests, as facts in memory.
struct World {
    /// Every fact below.
    source: MemorySource,
    /// Active, owns `generation`.
    owner: Uuid,
    /// Active, a viewer of `generation` by a share.
    viewer: Uuid,
    /// Active, no role on anything.
    stranger: Uuid,
    /// Suspended, owns `generation` too.
    suspended: Uuid,
    /// A completed generation, in no project.
    generation: Uuid,
}

fn world() -> World {
    let source = MemorySource::new();
    let (owner, viewer, stranger, suspended, generation) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    source
        .user(owner, UserStatus::Active)
        .user(viewer, UserStatus::Active)
        .user(stranger, UserStatus::Active)
        .user(suspended, UserStatus::Suspended)
        .generation(generation, owner)
        .set(
            FactKey::Shares(ResourceKind::Generation, generation),
            Fact::Shares(Arc::from([Share {
                grantee: Grantee::User(viewer),
                role: Role::Viewer,
            }])),
        );
    World {
        source,
        owner,
        viewer,
        stranger,
        suspended,
        generation,
    }
}

impl World {
    /// `GET`, `PUT`... of the generation.
    fn generation(&self, method: &str) -> Check {
        Check::new(method, &format!("/api/v1/generations/{}", self.generation))
    }

    /// An API key of `owner` with the given state, stored; its plain text.
    fn api_key(&self, revoked: bool, expired: bool) -> String {
        let key = apikey::generate();
        let past = Some(Utc::now() - chrono::Duration::hours(1));
        self.source.set(
            FactKey::ApiKey(key.hash.as_str().into()),
            Fact::ApiKey(Some(Arc::new(ApiKey {
                id: Uuid::new_v4(),
                user_id: self.owner,
                key_hash: key.hash.clone(),
                scopes: None,
                expires_at: if expired { past } else { None },
                revoked_at: if revoked { past } else { None },
            }))),
        );
        key.plain
    }
}

/// A token for `user` under the kit's key.
fn token(user: Uuid) -> String {
    Token::new(user).mint(&config("").jwt)
}

/// An HS256 token under the kit's secret (and the default `iss` and `aud`)
/// that expired an hour ago: minting cannot go back in time.
fn expired_token(user: Uuid) -> String {
    let now = Utc::now().timestamp();
    let claims = serde_json::json!({
        "sub": user.to_string(),
        "iss": "velro",
        "aud": "velro-api",
        "iat": now - 7200,
        "exp": now - 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// The decision, which must be made.
async fn decide<S: FactSource>(authorizer: &Authorizer<S>, check: &Check) -> Decision {
    check
        .decide(authorizer, None)
        .await
        .unwrap_or_else(|e| panic!("{} {}: cannot decide: {e}", check.method, check.path))
}

/// The deny reason of the decision; panics on an allow.
async fn denied<S: FactSource>(authorizer: &Authorizer<S>, check: &Check) -> DenyReason {
    match decide(authorizer, check).await.outcome {
        Outcome::Deny(reason) => reason,
        allow => panic!("{} {}: {allow:?}, want a deny", check.method, check.path),
    }
}

#[tokio::test]
async fn check_owner_of_generation_allows_with_identity_role_and_route() {
    let w = world();
    let authorizer = AuthorizerBuilder::yaml("").build(w.source.clone());
    let decision = decide(&authorizer, &w.generation("GET").bearer(&token(w.owner))).await;
    assert_eq!(
        decision.outcome,
        Outcome::Allow(Some(Identity {
            user_id: w.owner,
            auth: crate::answer::AuthKind::Jwt,
            role: Some(Role::Owner),
        }))
    );
    assert_eq!(
        decision.route.as_deref(),
        Some("GET /api/v1/generations/{id}")
    );
    assert_eq!(decision.principal.map(|p| p.user_id), Some(w.owner));
    assert_eq!(decision.role, Some(Role::Owner));
    assert_eq!(decision.dry_run_deny, None);
    assert_eq!(decision.decision_id.len(), 32);
    assert!(decision.decision_id.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[tokio::test]
async fn check_authenticated_route_allows_any_active_user_without_a_role() {
    let w = world();
    let authorizer = AuthorizerBuilder::yaml("").build(w.source.clone());
    let check = Check::new("GET", "/api/v1/users/profile").bearer(&token(w.stranger));
    let decision = decide(&authorizer, &check).await;
    match decision.outcome {
        Outcome::Allow(Some(identity)) => {
            assert_eq!((identity.user_id, identity.role), (w.stranger, None));
        }
        other => panic!("{other:?}"),
    }
    // A viewer reads the generation shared with it.
    let read = w.generation("GET").bearer(&token(w.viewer));
    assert_eq!(decide(&authorizer, &read).await.role, Some(Role::Viewer));
}

#[tokio::test]
async fn check_api_key_and_session_token_allow_their_user() {
    let w = world();
    let authorizer = AuthorizerBuilder::yaml("").build(w.source.clone());
    let key = w.api_key(false, false);
    let by_key = decide(&authorizer, &w.generation("GET").header("x-api-key", &key)).await;
    assert!(matches!(
        by_key.outcome,
        Outcome::Allow(Some(Identity {
            auth: crate::answer::AuthKind::ApiKey,
            ..
        }))
    ));
    assert!(by_key.principal.and_then(|p| p.api_key_id).is_some());

    let sid = Uuid::new_v4();
    w.source.set(
        FactKey::Session(sid),
        Fact::Session(Some(Session {
            id: sid,
            user_id: w.owner,
            expires_at: Utc::now() + chrono::Duration::hours(1),
            revoked_at: None,
        })),
    );
    let jwt = config("").jwt;
    let with_session = Token::new(w.owner).sid(Some(sid)).mint(&jwt);
    let by_session = decide(&authorizer, &w.generation("GET").bearer(&with_session)).await;
    assert!(matches!(by_session.outcome, Outcome::Allow(Some(_))));
}

#[tokio::test]
async fn check_public_route_allows_without_credentials_or_any_fact() {
    let w = world();
    let authorizer = AuthorizerBuilder::yaml("").build(w.source.clone());
    let decision = decide(&authorizer, &Check::new("GET", "/health/status")).await;
    assert_eq!(decision.outcome, Outcome::Allow(None));
    assert_eq!(decision.principal, None);
    assert_eq!(w.source.loads(), 0);
}

#[tokio::test]
async fn check_every_deny_reason_of_the_core_is_reachable_in_process() {
    let w = world();
    let authorizer = AuthorizerBuilder::yaml("").build(w.source.clone());
    let jwt = config("").jwt;
    let owner = token(w.owner);
    let read_scoped = Token::new(w.owner).scope(Some("read")).mint(&jwt);
    let unknown_session = Token::new(w.owner).sid(Some(Uuid::new_v4())).mint(&jwt);
    let well_formed_unknown_key = apikey::generate().plain;
    let cases: Vec<(Check, DenyReason)> = vec![
        (
            Check::new("GET", "/api/v1/../users/profile").bearer(&owner),
            DenyReason::BadPath,
        ),
        (
            Check::new("GET", "/api/v1/generations/not-a-uuid").bearer(&owner),
            DenyReason::InvalidId,
        ),
        (Check::new("GET", "/nope"), DenyReason::NoRoute),
        (
            w.generation("GET")
                .bearer(&owner)
                .header("x-big", &"a".repeat(MAX_HEADER_BYTES + 1)),
            DenyReason::TooLarge,
        ),
        (w.generation("GET"), DenyReason::MissingCredentials),
        (
            w.generation("GET").header("authorization", "Bearer a.b.c"),
            DenyReason::InvalidToken,
        ),
        (
            w.generation("GET").bearer(&expired_token(w.owner)),
            DenyReason::TokenExpired,
        ),
        (
            w.generation("GET")
                .bearer(&owner)
                .header("x-api-key", &w.api_key(false, false)),
            DenyReason::AmbiguousCredentials,
        ),
        (
            w.generation("GET").bearer(&token(Uuid::new_v4())),
            DenyReason::UnknownUser,
        ),
        (
            w.generation("GET").bearer(&unknown_session),
            DenyReason::SessionRevoked,
        ),
        (
            w.generation("GET")
                .header("x-api-key", &well_formed_unknown_key),
            DenyReason::InvalidApiKey,
        ),
        (
            w.generation("GET")
                .header("x-api-key", &w.api_key(true, false)),
            DenyReason::ApiKeyRevoked,
        ),
        (
            w.generation("GET")
                .header("x-api-key", &w.api_key(false, true)),
            DenyReason::ApiKeyExpired,
        ),
        (
            Check::new("GET", "/api/v1/users/profile").bearer(&token(w.suspended)),
            DenyReason::UserInactive,
        ),
        (
            w.generation("GET").bearer(&token(w.stranger)),
            DenyReason::NotFound,
        ),
        (
            Check::new("GET", &format!("/api/v1/generations/{}", Uuid::new_v4())).bearer(&owner),
            DenyReason::NotFound,
        ),
        (
            w.generation("PUT").bearer(&token(w.viewer)),
            DenyReason::InsufficientRole,
        ),
        (
            w.generation("PUT").bearer(&read_scoped),
            DenyReason::InsufficientScope,
        ),
        (
            Check::new("GET", "/health/metrics").bearer(&owner),
            DenyReason::InsufficientScope,
        ),
    ];
    let mut seen = HashSet::new();
    for (check, want) in &cases {
        let got = denied(&authorizer, check).await;
        assert_eq!(got, *want, "{} {}", check.method, check.path);
        seen.insert(got);
    }

    let limited = AuthorizerBuilder::yaml("rate_limit:\n  per_second: 0.01\n  burst: 1\n")
        .build(w.source.clone());
    let profile = Check::new("GET", "/api/v1/users/profile").bearer(&owner);
    assert!(matches!(
        decide(&limited, &profile).await.outcome,
        Outcome::Allow(_)
    ));
    let over = decide(&limited, &profile).await;
    assert_eq!(over.outcome, Outcome::Deny(DenyReason::RateLimited));
    assert!(over.rate_limit.is_some_and(|rl| !rl.allowed));
    seen.insert(DenyReason::RateLimited);

    // Every reason but the two only a forward-auth adapter decides.
    assert_eq!(seen.len(), 18, "{seen:?}");
    assert!(!seen.contains(&DenyReason::MissingOriginalRequest));
    assert!(!seen.contains(&DenyReason::AmbiguousOriginalRequest));
}

#[tokio::test]
async fn check_steps_run_in_spec_order_and_a_deny_stops_the_rest() {
    let w = world();
    let authorizer = AuthorizerBuilder::yaml("rate_limit:\n  per_second: 0.01\n  burst: 1\n")
        .build(w.source.clone());

    // 1 before 2: no route, and a malformed id, win over missing credentials.
    assert_eq!(
        denied(&authorizer, &Check::new("GET", "/nope")).await,
        DenyReason::NoRoute
    );
    let bad_id = Check::new("GET", "/api/v1/generations/x");
    assert_eq!(denied(&authorizer, &bad_id).await, DenyReason::InvalidId);
    // 2 reads no fact for a token that does not verify.
    let forged = w.generation("GET").header("authorization", "Bearer a.b.c");
    assert_eq!(denied(&authorizer, &forged).await, DenyReason::InvalidToken);
    assert_eq!(w.source.loads(), 0);

    // 2b before 3 and 4: once over the limit, no more facts are read.
    let owner = token(w.owner);
    let profile = Check::new("GET", "/api/v1/users/profile").bearer(&owner);
    assert!(matches!(
        decide(&authorizer, &profile).await.outcome,
        Outcome::Allow(_)
    ));
    let loads = w.source.loads();
    let limited = decide(&authorizer, &w.generation("GET").bearer(&owner)).await;
    assert_eq!(limited.outcome, Outcome::Deny(DenyReason::RateLimited));
    assert_eq!(limited.role, None);
    assert_eq!(w.source.loads(), loads, "a limited request read facts");

    // 3 before 4: an inactive owner is user_inactive, and no role is looked up.
    let unlimited = AuthorizerBuilder::yaml("").build(w.source.clone());
    let inactive = decide(&unlimited, &w.generation("GET").bearer(&token(w.suspended))).await;
    assert_eq!(inactive.outcome, Outcome::Deny(DenyReason::UserInactive));
    assert_eq!(inactive.role, None);
    assert_eq!(inactive.principal.map(|p| p.user_id), Some(w.suspended));
}

#[tokio::test]
async fn check_in_dry_run_turns_a_deny_into_an_allow_and_keeps_the_deny() {
    let w = world();
    let authorizer =
        AuthorizerBuilder::yaml("decision:\n  dry_run: true\n").build(w.source.clone());
    let anonymous = decide(&authorizer, &w.generation("GET")).await;
    assert_eq!(anonymous.outcome, Outcome::Allow(None));
    assert_eq!(anonymous.dry_run_deny, Some(DenyReason::MissingCredentials));
    assert!(
        anonymous
            .identity_headers()
            .iter()
            .all(|(k, _)| *k == crate::answer::DECISION_ID)
    );

    let stranger = decide(&authorizer, &w.generation("GET").bearer(&token(w.stranger))).await;
    assert_eq!(
        stranger.outcome,
        Outcome::Allow(None),
        "no identity granted"
    );
    assert_eq!(stranger.dry_run_deny, Some(DenyReason::NotFound));

    let owner = decide(&authorizer, &w.generation("GET").bearer(&token(w.owner))).await;
    assert!(matches!(owner.outcome, Outcome::Allow(Some(_))));
    assert_eq!(owner.dry_run_deny, None);
}

#[tokio::test]
async fn check_past_deadline_with_a_held_source_is_deadline_exceeded() {
    let w = world();
    let source = Held::new(w.source.clone());
    let authorizer =
        AuthorizerBuilder::yaml("decision:\n  deadline_ms: 1000\n").build(source.clone());
    let check = w.generation("GET").bearer(&token(w.owner));

    // The caller's deadline, sooner than the configured one.
    let hold = source.hold_next("user");
    let started = Instant::now();
    let err = check
        .decide(&authorizer, Some(Duration::from_millis(50)))
        .await
        .expect_err("cannot decide");
    assert!(matches!(err, CheckError::DeadlineExceeded), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "the caller's 50 ms, not the configured 1 s"
    );
    assert_eq!(err.reason(), "deadline_exceeded");
    hold.reached().await;

    // The configured deadline when the caller sets none.
    let hold = source.hold_next("user");
    let err = check
        .decide(&authorizer, None)
        .await
        .expect_err("cannot decide");
    assert!(matches!(err, CheckError::DeadlineExceeded), "{err:?}");
    hold.release();
}

#[tokio::test]
async fn check_past_max_in_flight_is_overloaded_at_once_and_counted() {
    let w = world();
    let source = Held::new(w.source.clone());
    let metrics = crate::metrics::Metrics::new();
    let authorizer = AuthorizerBuilder::yaml("decision:\n  max_in_flight: 1\n")
        .metrics(&metrics)
        .build(source.clone());
    let check = w.generation("GET").bearer(&token(w.owner));

    // One Check in flight, held inside its fact load.
    let hold = source.hold_next("user");
    let first = {
        let (authorizer, check) = (authorizer.clone(), check.clone());
        tokio::spawn(async move { check.decide(&authorizer, None).await })
    };
    hold.reached().await;

    // The next is refused before any work: never an allow, never a deny.
    for _ in 0..3 {
        let err = check
            .decide(&authorizer, None)
            .await
            .expect_err("overloaded");
        assert!(matches!(err, CheckError::Overloaded), "{err:?}");
        assert_eq!(err.reason(), "overloaded");
    }
    assert_eq!(metrics.decisions_shed.get(), 3);
    assert_eq!(
        metrics
            .decisions
            .with_label_values(&["error", "503", "overloaded"])
            .get(),
        3
    );

    // Its place is given back when it completes, and on an error too.
    hold.release();
    let first = first.await.expect("task").expect("decided");
    assert!(matches!(first.outcome, Outcome::Allow(Some(_))));
    let again = decide(&authorizer, &check).await;
    assert!(matches!(again.outcome, Outcome::Allow(Some(_))));
    authorizer.facts().flush();
    w.source.set_down(true);
    let down = check.decide(&authorizer, None).await.expect_err("down");
    assert!(matches!(down, CheckError::Unavailable(_)), "{down:?}");
    w.source.set_down(false);
    let after = decide(&authorizer, &check).await;
    assert!(matches!(after.outcome, Outcome::Allow(Some(_))));
    assert_eq!(metrics.decisions_shed.get(), 3);
}

#[test]
fn decision_ids_are_random_v4_uuids_in_32_lower_hex_digits() {
    let ids: HashSet<String> = (0..1_000).map(|_| new_decision_id()).collect();
    assert_eq!(ids.len(), 1_000, "no repeats");
    for id in &ids {
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
        let uuid = Uuid::try_parse(id).expect("a uuid");
        assert_eq!(uuid.get_version_num(), 4, "{id}");
    }
}

#[tokio::test]
async fn check_with_source_down_is_unavailable_never_an_allow_or_a_deny() {
    let w = world();
    let authorizer = AuthorizerBuilder::yaml("").build(w.source.clone());
    let key = w.api_key(false, false);
    w.source.set_down(true);
    for check in [
        w.generation("GET").bearer(&token(w.owner)),
        Check::new("GET", "/api/v1/users/profile").bearer(&token(w.owner)),
        w.generation("GET").header("x-api-key", &key),
    ] {
        let err = check
            .decide(&authorizer, None)
            .await
            .expect_err("cannot decide");
        assert!(matches!(err, CheckError::Unavailable(_)), "{err:?}");
        assert_eq!(err.reason(), "store_unavailable");
    }
    // What needs no fact is still decided.
    let public = decide(&authorizer, &Check::new("GET", "/health/status")).await;
    assert_eq!(public.outcome, Outcome::Allow(None));
}

#[tokio::test]
async fn a_remembered_decision_answers_until_a_fact_it_used_is_invalidated() {
    let w = world();
    let metrics = Metrics::new();
    let authorizer = AuthorizerBuilder::yaml("")
        .metrics(&metrics)
        .build(w.source.clone());
    let check = w.generation("GET").bearer(&token(w.viewer));
    let memo = |result: &str| {
        metrics
            .cache_lookups
            .with_label_values(&["memo", "decision", result])
            .get()
    };
    // From the source, then from L1 (remembered then), then remembered.
    for _ in 0..3 {
        assert_eq!(decide(&authorizer, &check).await.role, Some(Role::Viewer));
    }
    assert_eq!((memo("miss"), memo("hit")), (2, 1));
    let loads = w.source.loads();

    // The share is revoked; until its invalidation is applied the cached
    // facts (and so the remembered answer) stand, as they would without it.
    let shares = FactKey::Shares(ResourceKind::Generation, w.generation);
    w.source.set(shares.clone(), Fact::Shares(Arc::from([])));
    assert_eq!(decide(&authorizer, &check).await.role, Some(Role::Viewer));
    assert_eq!(w.source.loads(), loads);
    authorizer.facts().invalidate(&shares).await;
    assert_eq!(denied(&authorizer, &check).await, DenyReason::NotFound);
    assert_eq!(w.source.loads(), loads + 1);

    // The owner, suspended: the user row's invalidation voids theirs too.
    let owner = w.generation("GET").bearer(&token(w.owner));
    for _ in 0..3 {
        assert_eq!(decide(&authorizer, &owner).await.role, Some(Role::Owner));
    }
    w.source.user(w.owner, UserStatus::Suspended);
    authorizer.facts().invalidate(&FactKey::User(w.owner)).await;
    assert_eq!(denied(&authorizer, &owner).await, DenyReason::UserInactive);
}
