//! Authentication through the gRPC socket: every 401 reason, malformed and
//! hostile tokens, API keys, scopes and identity-header spoofing.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use sqlx::PgPool;
use velro_authz::authn::apikey;
use velro_authz::store::Store;
use velro_authz::testkit::SECRET;

use super::support::{config, demo::*, start, start_with};

const RSA_PRIVATE: &str = "tests/fixtures/keys/rsa_private.pem";
const RSA_PUBLIC: &str = "tests/fixtures/keys/rsa_public.pem";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A config with an HS256 key (kid `hs`) and an RS256 key (kid `rsa`).
fn two_key_config() -> velro_authz::config::Config {
    config(&format!(
        "auth:\n  jwt:\n    issuer: velro\n    audience: velro-api\n    keys:\n      - kid: hs\n        alg: HS256\n        secret: {SECRET}\n      - kid: rsa\n        alg: RS256\n        public_key_file: {RSA_PUBLIC}\n"
    ))
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "iss": "velro", "aud": "velro-api", "exp": now() + 600, "iat": now() })
}

fn hs(kid: &str, claims: &serde_json::Value, secret: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, &EncodingKey::from_secret(secret)).expect("encode")
}

fn rs(kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let pem = std::fs::read(RSA_PRIVATE).expect("rsa key");
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&pem).expect("pem"),
    )
    .expect("encode")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[sqlx::test(migrations = "./migrations")]
async fn check_each_bad_token_denies_with_its_reason(pool: PgPool) {
    let h = start_with(pool, two_key_config()).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    let rsa_public = std::fs::read(RSA_PUBLIC).expect("rsa public");
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"hs"}"#),
        URL_SAFE_NO_PAD.encode(claims(ALICE).to_string())
    );
    let mut expired = claims(ALICE);
    expired["exp"] = json!(now() - 120);
    let mut not_yet = claims(ALICE);
    not_yet["nbf"] = json!(now() + 600);
    let mut wrong_aud = claims(ALICE);
    wrong_aud["aud"] = json!("someone-else");
    let mut aud_array = claims(ALICE);
    aud_array["aud"] = json!(["other", "velro-api"]);
    let mut wrong_iss = claims(ALICE);
    wrong_iss["iss"] = json!("evil");
    let mut no_exp = claims(ALICE);
    no_exp.as_object_mut().expect("object").remove("exp");
    let mut revoked_sid = claims(BOB);
    revoked_sid["sid"] = json!(SESSION_BOB_REVOKED);
    let mut foreign_sid = claims(BOB);
    foreign_sid["sid"] = json!(SESSION_ALICE);
    let mut good_sid = claims(ALICE);
    good_sid["sid"] = json!(SESSION_ALICE);

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "valid HS256",
            hs("hs", &claims(ALICE), SECRET.as_bytes()),
            200,
            "ok",
        ),
        ("valid RS256", rs("rsa", &claims(ALICE)), 200, "ok"),
        (
            "aud array containing ours",
            hs("hs", &aud_array, SECRET.as_bytes()),
            200,
            "ok",
        ),
        (
            "live session",
            hs("hs", &good_sid, SECRET.as_bytes()),
            200,
            "ok",
        ),
        (
            "bad signature",
            hs(
                "hs",
                &claims(ALICE),
                b"another-secret-that-is-long-enough!!",
            ),
            401,
            "invalid_token",
        ),
        ("alg none", alg_none, 401, "invalid_token"),
        (
            "HS256 signed with the RSA public key (alg confusion)",
            hs("rsa", &claims(ALICE), &rsa_public),
            401,
            "invalid_token",
        ),
        (
            "expired",
            hs("hs", &expired, SECRET.as_bytes()),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            hs("hs", &not_yet, SECRET.as_bytes()),
            401,
            "invalid_token",
        ),
        (
            "wrong aud",
            hs("hs", &wrong_aud, SECRET.as_bytes()),
            401,
            "invalid_token",
        ),
        (
            "wrong iss",
            hs("hs", &wrong_iss, SECRET.as_bytes()),
            401,
            "invalid_token",
        ),
        (
            "no exp",
            hs("hs", &no_exp, SECRET.as_bytes()),
            401,
            "invalid_token",
        ),
        (
            "unknown kid",
            hs("nope", &claims(ALICE), SECRET.as_bytes()),
            401,
            "invalid_token",
        ),
        (
            "sub not a uuid",
            hs("hs", &claims("alice"), SECRET.as_bytes()),
            401,
            "unknown_user",
        ),
        (
            "sub names no user",
            hs(
                "hs",
                &claims("10000000-0000-4000-8000-0000000000aa"),
                SECRET.as_bytes(),
            ),
            401,
            "unknown_user",
        ),
        (
            "revoked session",
            hs("hs", &revoked_sid, SECRET.as_bytes()),
            401,
            "session_revoked",
        ),
        (
            "another user's session",
            hs("hs", &foreign_sid, SECRET.as_bytes()),
            401,
            "session_revoked",
        ),
        ("garbage", "not.a.jwt".to_owned(), 401, "invalid_token"),
        ("empty", String::new(), 401, "invalid_token"),
    ];
    for (name, token, status, reason) in cases {
        let a = h
            .check("GET", &path, &[("authorization", &bearer(&token))])
            .await;
        assert_eq!((a.status, a.reason.as_str()), (status, reason), "{name}");
        if status == 401 {
            assert_eq!(a.code, 16, "{name}: UNAUTHENTICATED");
            let challenge = a.headers.get("www-authenticate").expect("challenge");
            assert!(challenge.starts_with("Bearer "), "{name}: {challenge}");
            assert!(
                !a.body.to_string().contains(&token[..token.len().min(20)]) || token.is_empty(),
                "{name}: token echoed"
            );
        }
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn check_credential_header_rules(pool: PgPool) {
    let h = start(pool).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    let token = h.token(ALICE);
    let key = apikey::generate();
    let cases: Vec<(&str, Vec<(&str, String)>, u16, &str)> = vec![
        (
            "lower-case scheme, several spaces",
            vec![("authorization", format!("bearer    {token}"))],
            200,
            "ok",
        ),
        ("no credentials", vec![], 401, "missing_credentials"),
        (
            "two Authorization values joined by Envoy",
            vec![("authorization", format!("Bearer {token},Bearer {token}"))],
            401,
            "invalid_token",
        ),
        (
            "Basic scheme",
            vec![("authorization", "Basic YWxpY2U6cHc=".to_owned())],
            401,
            "invalid_token",
        ),
        (
            "both Authorization and x-api-key",
            vec![
                ("authorization", bearer(&token)),
                ("x-api-key", key.plain.clone()),
            ],
            401,
            "ambiguous_credentials",
        ),
        (
            "unknown API key",
            vec![("x-api-key", key.plain.clone())],
            401,
            "invalid_api_key",
        ),
        (
            "oversized header",
            vec![
                ("authorization", bearer(&token)),
                ("x-padding", "p".repeat(9 * 1024)),
            ],
            400,
            "too_large",
        ),
    ];
    for (name, headers, status, reason) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = h.check("GET", &path, &headers).await;
        assert_eq!((a.status, a.reason.as_str()), (status, reason), "{name}");
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn check_api_keys_by_state_and_scope(pool: PgPool) {
    let h = start(pool.clone()).await;
    let store = Store::new(pool.clone());
    let alice = ALICE.parse().expect("uuid");
    let path = format!("/api/v1/generations/{GEN_BOB}");

    let live = apikey::generate();
    store
        .insert_api_key(alice, &live.hash, &live.display_prefix, None, None)
        .await
        .expect("insert");
    let a = h
        .check("DELETE", &path, &[("x-api-key", &live.plain)])
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers.get("x-velro-auth").map(String::as_str),
        Some("api_key")
    );
    assert_eq!(
        a.headers.get("x-velro-user-id").map(String::as_str),
        Some(ALICE)
    );

    let revoked = apikey::generate();
    store
        .insert_api_key(alice, &revoked.hash, &revoked.display_prefix, None, None)
        .await
        .expect("insert");
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1")
        .bind(&revoked.hash)
        .execute(&pool)
        .await
        .expect("revoke");
    let a = h
        .check("GET", &path, &[("x-api-key", &revoked.plain)])
        .await;
    assert_eq!((a.status, a.reason.as_str()), (401, "api_key_revoked"));

    let expired = apikey::generate();
    let past = chrono::Utc::now() - chrono::Duration::minutes(1);
    store
        .insert_api_key(
            alice,
            &expired.hash,
            &expired.display_prefix,
            None,
            Some(past),
        )
        .await
        .expect("insert");
    let a = h
        .check("GET", &path, &[("x-api-key", &expired.plain)])
        .await;
    assert_eq!((a.status, a.reason.as_str()), (401, "api_key_expired"));

    let read_only = apikey::generate();
    store
        .insert_api_key(
            alice,
            &read_only.hash,
            &read_only.display_prefix,
            Some(&["read".to_owned()]),
            None,
        )
        .await
        .expect("insert");
    let a = h
        .check("GET", &path, &[("x-api-key", &read_only.plain)])
        .await;
    assert_eq!(a.status, 200, "read scope reads");
    let a = h
        .check("PUT", &path, &[("x-api-key", &read_only.plain)])
        .await;
    assert_eq!((a.status, a.reason.as_str()), (403, "insufficient_scope"));
    let a = h
        .check(
            "GET",
            &format!("/api/v1/generations/{GEN_BOB_ALONE}"),
            &[("x-api-key", &read_only.plain)],
        )
        .await;
    assert_eq!(
        (a.status, a.reason.as_str()),
        (404, "not_found"),
        "no role: scope never reveals existence"
    );
    let a = h
        .check(
            "GET",
            "/api/v1/users/profile",
            &[("x-api-key", &read_only.plain)],
        )
        .await;
    assert_eq!(
        a.status, 200,
        "scopes do not apply to authenticated-only routes"
    );
    let a = h
        .check("GET", "/health/metrics", &[("x-api-key", &read_only.plain)])
        .await;
    assert_eq!(
        (a.status, a.reason.as_str()),
        (403, "insufficient_scope"),
        "ops is never implied"
    );

    let nothing = apikey::generate();
    store
        .insert_api_key(
            alice,
            &nothing.hash,
            &nothing.display_prefix,
            Some(&[]),
            None,
        )
        .await
        .expect("insert");
    let a = h
        .check("GET", &path, &[("x-api-key", &nothing.plain)])
        .await;
    assert_eq!(
        (a.status, a.reason.as_str()),
        (403, "insufficient_scope"),
        "empty scopes narrow to nothing"
    );

    // JWT scope narrows the same way.
    let token = h.token_with(ALICE, None, Some("read"));
    let a = h
        .check("DELETE", &path, &[("authorization", &bearer(&token))])
        .await;
    assert_eq!((a.status, a.reason.as_str()), (403, "insufficient_scope"));
}

#[sqlx::test(migrations = "./migrations")]
async fn check_allow_overwrites_and_strips_spoofed_identity_headers(pool: PgPool) {
    let h = start(pool).await;
    let token = bearer(&h.token(BOB));
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    let a = h
        .check(
            "GET",
            &path,
            &[
                ("authorization", &token),
                ("x-velro-user-id", ALICE),
                ("x-velro-role", "owner"),
                ("x-velro-admin", "true"),
                ("X-Velro-Extra", "1"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers.get("x-velro-user-id").map(String::as_str),
        Some(BOB)
    );
    assert_eq!(
        a.headers.get("x-velro-role").map(String::as_str),
        Some("member")
    );
    assert_eq!(
        a.headers.get("x-velro-auth").map(String::as_str),
        Some("jwt")
    );
    let mut removed = a.headers_to_remove.clone();
    removed.sort();
    assert_eq!(
        removed,
        vec!["X-Velro-Extra".to_owned(), "x-velro-admin".to_owned()]
    );
    let id = a
        .headers
        .get("x-velro-decision-id")
        .expect("decision id header");
    assert_eq!(
        id, &a.metadata_decision_id,
        "same id in header and dynamic_metadata"
    );

    // A public route passes no identity and strips every spoofed header.
    let a = h
        .check("GET", "/health/status", &[("x-velro-user-id", ALICE)])
        .await;
    assert_eq!(a.status, 200);
    assert!(!a.headers.contains_key("x-velro-user-id"));
    assert_eq!(a.headers_to_remove, vec!["x-velro-user-id".to_owned()]);

    // Denies carry the id too, in the body as request_id.
    let d = h.check("GET", &path, &[]).await;
    assert_eq!(
        d.body["request_id"].as_str(),
        Some(d.metadata_decision_id.as_str())
    );
    assert_eq!(
        d.headers.get("x-velro-decision-id"),
        Some(&d.metadata_decision_id)
    );
    assert_eq!(
        d.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
}
