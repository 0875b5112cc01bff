use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use uuid::Uuid;

use super::*;
use crate::answer::{AuthKind, Identity};
use crate::model::Role;

const USER: Uuid = Uuid::from_u128(0x10000000_0000_4000_8000_000000000002);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn settings(key: &str) -> IdentitySettings {
    IdentitySettings {
        key_file: fixture(key),
        audience: "velro-app".to_owned(),
        issuer: DEFAULT_ISSUER.to_owned(),
        ttl: DEFAULT_TTL,
    }
}

fn signer(key: &str) -> IdentitySigner {
    IdentitySigner::load(&settings(key)).expect("signer")
}

fn identity(role: Option<Role>) -> Identity {
    Identity {
        user_id: USER,
        auth: AuthKind::ApiKey,
        role,
    }
}

/// Verifies `token` as an application does: the key from the published JWKS
/// by `kid`, EdDSA only, `aud`, `iss` and `exp` checked.
fn verify(jwks: &str, token: &str, audience: &str) -> Result<serde_json::Value, String> {
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| e.to_string())?;
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or("unknown kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[DEFAULT_ISSUER]);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("{:?}", e.kind()))
}

#[test]
fn sign_then_verify_with_published_jwks_gives_the_identity() {
    let signer = signer("ed25519_private.pem");
    let token = signer
        .sign(&identity(Some(Role::Member)), "d-1")
        .expect("sign");
    let claims = verify(signer.jwks(), &token, "velro-app").expect("verifies");
    assert_eq!(claims["sub"], USER.to_string());
    assert_eq!(claims["role"], "member");
    assert_eq!(claims["auth"], "api_key");
    assert_eq!(claims["jti"], "d-1");
    assert_eq!(claims["iss"], "velro-authz");
    assert_eq!(claims["aud"], "velro-app");
    let (iat, exp) = (
        claims["iat"].as_u64().expect("iat"),
        claims["exp"].as_u64().expect("exp"),
    );
    assert_eq!(exp - iat, 60);
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(signer.kid()));
}

#[test]
fn token_on_authenticated_only_route_has_no_role_claim() {
    let signer = signer("ed25519_private.pem");
    let token = signer.sign(&identity(None), "d-2").expect("sign");
    let claims = verify(signer.jwks(), &token, "velro-app").expect("verifies");
    assert!(claims.get("role").is_none(), "{claims}");
}

#[test]
fn expired_token_fails_verification() {
    let signer = signer("ed25519_private.pem");
    let token = signer
        .sign_at(&identity(None), "d", unix_now() - 3_600)
        .expect("sign");
    assert_eq!(
        verify(signer.jwks(), &token, "velro-app").expect_err("expired"),
        "ExpiredSignature"
    );
}

#[test]
fn token_for_another_audience_fails_verification() {
    let signer = signer("ed25519_private.pem");
    let token = signer.sign(&identity(None), "d").expect("sign");
    assert_eq!(
        verify(signer.jwks(), &token, "billing-app").expect_err("other aud"),
        "InvalidAudience"
    );
}

#[test]
fn tampered_token_fails_verification() {
    let signer = signer("ed25519_private.pem");
    let token = signer
        .sign(&identity(Some(Role::Viewer)), "d")
        .expect("sign");
    // Swap the claims for ones naming the owner role, keep the signature.
    let parts: Vec<&str> = token.split('.').collect();
    let forged = signer
        .sign(&identity(Some(Role::Owner)), "d")
        .expect("sign");
    let forged_claims = forged.split('.').nth(1).expect("claims");
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_eq!(
        verify(signer.jwks(), &tampered, "velro-app").expect_err("tampered"),
        "InvalidSignature"
    );
}

#[test]
fn token_signed_by_another_key_fails_verification() {
    let ours = signer("ed25519_private.pem");
    let other = signer("ed25519_other_private.pem");
    assert_ne!(ours.kid(), other.kid(), "kid is the key's thumbprint");
    let token = other.sign(&identity(None), "d").expect("sign");
    assert_eq!(
        verify(ours.jwks(), &token, "velro-app").expect_err("other key"),
        "unknown kid"
    );
    // Even under our kid, the signature does not verify with our key.
    let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
    header.kid = Some(ours.kid().to_owned());
    let claims = serde_json::json!({
        "iss": DEFAULT_ISSUER, "aud": "velro-app", "sub": USER.to_string(),
        "auth": "jwt", "iat": unix_now(), "exp": unix_now() + 60, "jti": "d",
    });
    let key = EncodingKey::from_ed_pem(
        &std::fs::read(fixture("ed25519_other_private.pem")).expect("pem"),
    )
    .expect("key");
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
    assert_eq!(
        verify(ours.jwks(), &token, "velro-app").expect_err("other key"),
        "InvalidSignature"
    );
}

#[test]
fn kid_is_stable_for_one_key_and_jwks_holds_only_the_public_key() {
    let a = signer("ed25519_private.pem");
    let b = signer("ed25519_private.pem");
    assert_eq!(a.kid(), b.kid());
    assert_eq!(a.jwks(), b.jwks());
    let jwks: serde_json::Value = serde_json::from_str(a.jwks()).expect("json");
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kid"], a.kid());
    assert!(key.get("d").is_none(), "no private part: {key}");
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));
}

#[test]
fn debug_shows_no_key_material() {
    let text = format!("{:?}", signer("ed25519_private.pem"));
    let pem = std::fs::read_to_string(fixture("ed25519_private.pem")).expect("pem");
    let body = pem.lines().nth(1).expect("pem body");
    assert!(!text.contains(body), "{text}");
    assert!(text.contains("kid"), "{text}");
}

#[test]
fn bad_settings_are_config_errors_naming_the_setting() {
    let secret_dir = std::env::temp_dir().join(format!("velro-ident-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&secret_dir).expect("dir");
    let secret = secret_dir.join("hs256.secret");
    std::fs::write(&secret, "a-shared-secret-0123456789abcdef0123456789").expect("write");

    let with = |key: PathBuf, f: &dyn Fn(&mut IdentitySettings)| {
        let mut s = IdentitySettings {
            key_file: key,
            ..settings("ed25519_private.pem")
        };
        f(&mut s);
        IdentitySigner::load(&s).expect_err("config error")
    };
    let cases: Vec<(String, &str)> = vec![
        (
            with(fixture("missing.pem"), &|_| {}),
            "identity_token.key_file",
        ),
        (
            with(fixture("ec_p256_private.pem"), &|_| {}),
            "not an Ed25519 private key",
        ),
        (
            with(fixture("rsa_private.pem"), &|_| {}),
            "not an Ed25519 private key",
        ),
        (
            with(fixture("ed25519_public.pem"), &|_| {}),
            "public keys, RSA and EC keys are refused",
        ),
        (
            with(secret.clone(), &|_| {}),
            "shared secrets (HS256) are refused",
        ),
        (
            with(fixture("ed25519_private.pem"), &|s| s.audience.clear()),
            "identity_token.audience: required",
        ),
        (
            with(fixture("ed25519_private.pem"), &|s| {
                s.ttl = Duration::from_secs(4)
            }),
            "identity_token.ttl_secs: between 5 and 600 (got 4)",
        ),
        (
            with(fixture("ed25519_private.pem"), &|s| {
                s.ttl = Duration::from_secs(601)
            }),
            "identity_token.ttl_secs",
        ),
        (
            with(fixture("ed25519_private.pem"), &|s| {
                s.issuer = " ".to_owned()
            }),
            "identity_token.issuer",
        ),
    ];
    for (error, expected) in &cases {
        assert!(
            error.contains(expected),
            "{error:?} should say {expected:?}"
        );
    }
    // The secret's content never appears in the error.
    assert!(!cases[4].0.contains("a-shared-secret"), "{}", cases[4].0);
    assert!(cases[0].0.contains("not found"), "{}", cases[0].0);
    std::fs::remove_dir_all(&secret_dir).expect("cleanup");
}
