//! The ring itself, then what [`Authorizer::check`] records in it and how a
//! past decision reads: typed JSON, no request text, no credential.

use std::sync::Arc;

use uuid::Uuid;

use super::*;
use crate::authn::apikey;
use crate::authz::{Authorizer, Headers};
use crate::facts::{Fact, FactKey};
use crate::model::{ApiKey, UserStatus};
use crate::testkit::{AuthorizerBuilder, Check, MemorySource, Token, config};

fn record(n: u128) -> Recorded {
    let decision = Decision::adapter_deny(DenyReason::NoRoute);
    let mut r = Recorded::new(&decision, "GET", None, Vec::new());
    r.id = n;
    r
}

#[test]
fn recent_decisions_keep_the_last_capacity_records() {
    let ring = RecentDecisions::new(3);
    assert!(ring.is_empty());
    for n in 1..=5 {
        ring.push(record(n));
    }
    assert_eq!((ring.len(), ring.capacity()), (3, 3));
    for gone in [1u128, 2] {
        assert!(ring.get(&format!("{gone:032x}")).is_none(), "{gone}");
    }
    for kept in [3u128, 4, 5] {
        let r = ring.get(&format!("{kept:032x}")).expect("kept");
        assert_eq!(r.id, kept);
        assert_eq!(r.decision_id(), format!("{kept:032x}"));
    }
}

#[test]
fn recent_decisions_refuse_ids_that_are_not_32_hex_digits() {
    let ring = RecentDecisions::new(2);
    ring.push(record(7));
    for bad in [
        "",
        "7",
        &format!("{:031x}", 7),
        &format!("{:032x}0", 7),
        "zz",
    ] {
        assert!(ring.get(bad).is_none(), "{bad:?}");
    }
    assert!(ring.get(&format!("{:032X}", 7u128)).is_some(), "upper case");
}

#[test]
fn recorded_method_is_never_request_text() {
    let decision = Decision::adapter_deny(DenyReason::NoRoute);
    assert_eq!(
        Recorded::new(&decision, "PATCH", None, vec![]).method,
        "PATCH"
    );
    assert_eq!(
        Recorded::new(&decision, "get /secret?token=x", None, vec![]).method,
        "OTHER"
    );
    assert_eq!(
        parse_id(&decision.decision_id),
        Some(Recorded::new(&decision, "GET", None, vec![]).id)
    );
}

/// An active user, a generation of someone else, and an authorizer keeping
/// recent decisions with `yaml`.
fn world(yaml: &str) -> (Arc<Authorizer<MemorySource>>, Uuid, Uuid) {
    let source = MemorySource::new();
    let (user, other, generation) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    source
        .user(user, UserStatus::Active)
        .user(other, UserStatus::Active)
        .generation(generation, other);
    (
        AuthorizerBuilder::yaml(yaml).build(source),
        user,
        generation,
    )
}

fn check_of(user: Uuid, path: &str) -> Check {
    Check::new("GET", path).bearer(&Token::new(user).mint(&config("").jwt))
}

#[tokio::test]
async fn check_deny_is_recorded_with_typed_facts_and_explained_by_its_id() {
    let (authorizer, user, generation) = world("");
    let path = format!("/api/v1/generations/{generation}?access_token=secret-in-query");
    let check = check_of(user, &path);
    let decision = check.decide(&authorizer, None).await.expect("decided");
    assert_eq!(decision.outcome, Outcome::Deny(DenyReason::NotFound));

    let recorded = authorizer
        .recorded(&decision.decision_id)
        .expect("a deny is always recorded");
    let json = recorded.summary().to_json();
    assert_eq!(json["decision_id"], decision.decision_id.as_str());
    assert_eq!(json["method"], "GET");
    assert_eq!(json["route"], "GET /api/v1/generations/{id}");
    assert_eq!(json["resource_id"], generation.to_string());
    assert_eq!(
        (json["allowed"].clone(), json["status"].clone()),
        (false.into(), 404.into())
    );
    assert_eq!(json["reason"], "not_found");
    assert_eq!(json["principal"]["user_id"], user.to_string());
    assert_eq!(json["principal"]["auth"], "jwt");
    assert!(
        json["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{json}"
    );
    let facts = json["facts"].as_array().expect("facts");
    let user_fact = facts
        .iter()
        .find(|f| f["kind"] == "user")
        .expect("user fact");
    assert_eq!(user_fact["key"], user.to_string());
    assert_eq!(user_fact["source"], "postgres");
    assert_eq!(
        user_fact["value"],
        serde_json::json!({"id": user.to_string(), "status": "active"})
    );
    let generation_fact = facts
        .iter()
        .find(|f| f["kind"] == "generation")
        .expect("generation fact");
    assert_eq!(generation_fact["value"]["status"], "completed");
    let text = json.to_string();
    for leak in ["Some(", "Bearer", "secret-in-query", "eyJ"] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
}

#[tokio::test]
async fn check_allow_is_recorded_only_when_the_decision_log_samples_it() {
    let (never, user, _) = world("decision:\n  allow_log_sample: 0\n");
    let profile = check_of(user, "/api/v1/users/profile");
    let allow = profile.decide(&never, None).await.expect("decided");
    assert!(matches!(allow.outcome, Outcome::Allow(Some(_))));
    assert!(never.recorded(&allow.decision_id).is_none(), "not sampled");

    let (always, user, _) = world("decision:\n  allow_log_sample: 1\n");
    let profile = check_of(user, "/api/v1/users/profile");
    let allow = profile.decide(&always, None).await.expect("decided");
    let summary = always
        .recorded(&allow.decision_id)
        .expect("sampled")
        .summary();
    assert!(summary.allowed);
    assert_eq!(
        summary.headers.get("x-velro-user-id").map(String::as_str),
        Some(user.to_string().as_str()),
        "the identity headers it answered with"
    );
}

#[tokio::test]
async fn recent_decisions_zero_keeps_none() {
    let (authorizer, user, _) = world("explain:\n  recent_decisions: 0\n");
    let deny = check_of(user, "/api/v1/nothing-here")
        .decide(&authorizer, None)
        .await
        .expect("decided");
    assert_eq!(deny.outcome, Outcome::Deny(DenyReason::NoRoute));
    assert!(authorizer.recent_decisions().is_none());
    assert!(authorizer.recorded(&deny.decision_id).is_none());
}

#[tokio::test]
async fn explain_shows_an_api_key_fact_without_its_hash() {
    let source = MemorySource::new();
    let (user, key_id) = (Uuid::new_v4(), Uuid::new_v4());
    let key = apikey::generate();
    source.user(user, UserStatus::Active).set(
        FactKey::ApiKey(key.hash.as_str().into()),
        Fact::ApiKey(Some(Arc::new(ApiKey {
            id: key_id,
            user_id: user,
            key_hash: key.hash.clone(),
            scopes: Some(vec!["read".to_owned()]),
            expires_at: None,
            revoked_at: None,
        }))),
    );
    let authorizer = AuthorizerBuilder::yaml("").build(source);
    let headers = Headers::from_pairs([("x-api-key", key.plain.as_str())]);
    let request = headers.request("GET", "/api/v1/users/profile", &[]);
    let summary = authorizer
        .explain(&request)
        .await
        .summary()
        .expect("decided");
    let json = summary.to_json();
    assert_eq!(json["principal"]["api_key_id"], key_id.to_string());
    assert_eq!(json["principal"]["scopes"], serde_json::json!(["read"]));
    let fact = &json["facts"][0];
    assert_eq!(fact["kind"], "api_key");
    assert_eq!(fact["value"]["id"], key_id.to_string());
    assert_eq!(fact["value"]["scopes"], serde_json::json!(["read"]));
    let text = json.to_string();
    assert!(!text.contains(&key.hash), "the whole hash: {text}");
    assert!(!text.contains(&key.plain), "the key: {text}");
    assert!(
        text.contains(&key.hash[..12]),
        "its prefix names it: {text}"
    );
}
