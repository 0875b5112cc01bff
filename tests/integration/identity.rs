//! The signed identity header (`x-velro-identity`) through the real doors:
//! an allow carries a token that verifies with the JWKS the ops port
//! publishes, naming the same user and role as the plain headers; a
//! client-sent one never reaches the upstream; a deny carries none.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sqlx::PgPool;
use velro_authz::testkit;

use super::support::{config, demo::*, http_get, start_with};

const KEY: &str = "tests/fixtures/keys/ed25519_private.pem";
const AUDIENCE: &str = "velro-app";

fn identity_config() -> velro_authz::config::Config {
    config(&format!(
        "metrics_addr: 127.0.0.1:0\nidentity_token:\n  key_file: {KEY}\n  audience: {AUDIENCE}\n  ttl_secs: 30\n"
    ))
}

/// Verifies `token` as an application would: key by `kid` from `jwks`,
/// EdDSA pinned, `aud`, `iss` and `exp` required and checked.
fn verify(jwks: &str, token: &str) -> serde_json::Value {
    let set: JwkSet = serde_json::from_str(jwks).expect("jwks json");
    let header = jsonwebtoken::decode_header(token).expect("token header");
    let kid = header.kid.expect("kid");
    let key = DecodingKey::from_jwk(set.find(&kid).expect("kid in the JWKS")).expect("key");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&["velro-authz"]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .expect("token verifies")
        .claims
}

#[sqlx::test(migrations = "./migrations")]
async fn check_allow_carries_identity_token_that_verifies_with_published_jwks(pool: PgPool) {
    let h = start_with(pool, identity_config()).await;
    let metrics_addr = h.running.metrics_addr.expect("metrics listener");
    let (status, jwks) = http_get(metrics_addr, "/.well-known/velro-identity-jwks.json").await;
    assert_eq!(status, 200, "{jwks}");

    let token = format!("Bearer {}", h.token(BOB));
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    let a = h
        .check(
            "GET",
            &path,
            &[
                ("authorization", &token),
                ("x-velro-identity", "forged.by.client"),
                ("x_velro_identity", "forged.by.client"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    let signed = a.headers.get("x-velro-identity").expect("identity token");
    assert_ne!(signed, "forged.by.client");
    let claims = verify(&jwks, signed);
    assert_eq!(claims["sub"], BOB);
    assert_eq!(claims["role"], "member");
    assert_eq!(claims["auth"], "jwt");
    assert_eq!(
        claims["sub"].as_str(),
        a.headers.get("x-velro-user-id").map(String::as_str)
    );
    assert_eq!(
        claims["role"].as_str(),
        a.headers.get("x-velro-role").map(String::as_str)
    );
    assert_eq!(
        claims["jti"].as_str(),
        Some(a.metadata_decision_id.as_str())
    );
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        30
    );
    // Ours overwrites the exact name; the underscore alias is removed.
    assert_eq!(a.headers_to_remove, vec!["x_velro_identity".to_owned()]);

    // Authenticated-only route: a token without a role.
    let a = h
        .check("GET", "/api/v1/users/profile", &[("authorization", &token)])
        .await;
    assert_eq!(a.status, 200);
    let claims = verify(&jwks, a.headers.get("x-velro-identity").expect("token"));
    assert_eq!(claims["sub"], BOB);
    assert!(claims.get("role").is_none(), "{claims}");

    // The HTTP door (Envoy http_service) carries it too.
    let reply = testkit::http::send(
        h.running.http_addr,
        "GET",
        &format!("/v1/check{path}"),
        &[("authorization", &token)],
        Vec::new(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let signed = reply
        .headers
        .get("x-velro-identity")
        .and_then(|v| v.to_str().ok())
        .expect("identity token over HTTP");
    assert_eq!(verify(&jwks, signed)["sub"], BOB);
}

#[sqlx::test(migrations = "./migrations")]
async fn check_deny_and_public_route_carry_no_identity_token_and_strip_clients(pool: PgPool) {
    let h = start_with(pool, identity_config()).await;
    // A deny: no token, whatever the client sent.
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    let d = h
        .check("GET", &path, &[("x-velro-identity", "forged")])
        .await;
    assert_eq!((d.status, d.reason.as_str()), (401, "missing_credentials"));
    assert!(
        !d.headers.contains_key("x-velro-identity"),
        "{:?}",
        d.headers
    );

    // A user with no role on the resource: 404, no token.
    let token = format!("Bearer {}", h.token(ERIN));
    let d = h
        .check(
            "GET",
            &format!("/api/v1/generations/{GEN_BOB}"),
            &[("authorization", &token)],
        )
        .await;
    assert_eq!(d.status, 404);
    assert!(!d.headers.contains_key("x-velro-identity"));

    // A public route issues none, and removes the client's.
    let a = h
        .check("GET", "/health/status", &[("x-velro-identity", "forged")])
        .await;
    assert_eq!(a.status, 200);
    assert!(!a.headers.contains_key("x-velro-identity"));
    assert_eq!(a.headers_to_remove, vec!["x-velro-identity".to_owned()]);
}

#[sqlx::test(migrations = "./migrations")]
async fn identity_token_off_by_default_strips_client_header_and_publishes_no_key(pool: PgPool) {
    let h = start_with(pool, config("")).await;
    let token = format!("Bearer {}", h.token(BOB));
    let a = h
        .check(
            "GET",
            &format!("/api/v1/generations/{GEN_CHILD}"),
            &[("authorization", &token), ("X-Velro-Identity", "forged")],
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(!a.headers.contains_key("x-velro-identity"));
    assert_eq!(a.headers_to_remove, vec!["X-Velro-Identity".to_owned()]);
    let (status, body) =
        http_get(h.running.http_addr, "/.well-known/velro-identity-jwks.json").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("identity_token_off"), "{body}");
}

#[sqlx::test(migrations = "./migrations")]
async fn identity_jwks_command_prints_the_served_key_and_refuses_when_off(pool: PgPool) {
    let h = start_with(pool, identity_config()).await;
    let (_, served) = http_get(h.running.http_addr, "/.well-known/velro-identity-jwks.json").await;
    let dir = std::env::temp_dir().join(format!("velro-ident-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let on = dir.join("on.yaml");
    std::fs::write(
        &on,
        format!("identity_token:\n  key_file: {KEY}\n  audience: {AUDIENCE}\n"),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_velro-authz"))
        .args(["--config", on.to_str().expect("utf-8"), "identity-jwks"])
        .output()
        .expect("run velro-authz identity-jwks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let served: serde_json::Value = serde_json::from_str(&served).expect("json");
    assert_eq!(printed, served);

    // Off: exit 64 naming the setting. A wrong key type: exit 64 too.
    let off = dir.join("off.yaml");
    std::fs::write(&off, "log_format: text\n").expect("write");
    let wrong = dir.join("wrong.yaml");
    std::fs::write(
        &wrong,
        "identity_token:\n  key_file: tests/fixtures/keys/rsa_private.pem\n  audience: a\n",
    )
    .expect("write");
    for (config, expected) in [
        (&off, "identity_token.key_file is not set"),
        (&wrong, "not an Ed25519 private key"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_velro-authz"))
            .args(["--config", config.to_str().expect("utf-8"), "identity-jwks"])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
