use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use proptest::prelude::*;
use serde_json::json;

use super::*;

pub(super) const SECRET: &str = "an-hs256-test-secret-of-more-than-32-bytes";
pub(crate) const ISS: &str = "https://id.velro.test";
pub(crate) const AUD: &str = "velro-api";
pub(crate) const USER: &str = "7d4e1f0a-3b2c-4d5e-8f9a-0b1c2d3e4f50";
const SID: &str = "11111111-2222-4333-8444-555555555555";
/// The verification clock of most tests (2027-01-15).
pub(super) const NOW: i64 = 1_800_000_000;

// ---- helpers ----

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

pub(crate) fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture readable")
}

pub(super) fn hs_key(kid: Option<&str>) -> JwtKeyConfig {
    JwtKeyConfig {
        kid: kid.map(str::to_owned),
        alg: "HS256".to_owned(),
        secret: Some(SECRET.to_owned()),
        public_key_pem: None,
        public_key_file: None,
        private_key_file: None,
    }
}

/// A public-key key config from fixture files (private one optional).
pub(super) fn pk_key(
    kid: Option<&str>,
    alg: &str,
    public: &str,
    private: Option<&str>,
) -> JwtKeyConfig {
    JwtKeyConfig {
        kid: kid.map(str::to_owned),
        alg: alg.to_owned(),
        secret: None,
        public_key_pem: None,
        public_key_file: Some(fixture(public)),
        private_key_file: private.map(fixture),
    }
}

pub(super) fn rsa_key(kid: Option<&str>) -> JwtKeyConfig {
    pk_key(kid, "RS256", "rsa_public.pem", Some("rsa_private.pem"))
}

pub(super) fn config(keys: Vec<JwtKeyConfig>) -> JwtConfig {
    JwtConfig {
        issuer: Some(ISS.to_owned()),
        audience: Some(AUD.to_owned()),
        keys,
        ..JwtConfig::default()
    }
}

pub(super) fn verifier(keys: Vec<JwtKeyConfig>) -> JwtVerifier {
    JwtVerifier::new(&config(keys)).expect("valid config")
}

pub(super) fn claims() -> Value {
    json!({ "sub": USER, "iss": ISS, "aud": AUD, "iat": NOW, "exp": NOW + 300 })
}

/// `claims()` with `changes` applied; a `null` in `changes` removes the claim.
fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    let (Value::Object(base), Value::Object(changes)) = (&mut claims, changes) else {
        panic!("objects expected");
    };
    for (name, value) in changes {
        if value.is_null() {
            base.remove(&name);
        } else {
            base.insert(name, value);
        }
    }
    claims
}

fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&read_fixture("rsa_private.pem")).expect("rsa")
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&read_fixture("ec_p256_private.pem")).expect("ec")
        }
        Algorithm::EdDSA => {
            EncodingKey::from_ed_pem(&read_fixture("ed25519_private.pem")).expect("ed")
        }
        other => panic!("no test key for {other:?}"),
    }
}

/// Signs `claims` with the fixture key of `alg`.
pub(crate) fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg)).expect("sign")
}

pub(super) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A hand-made token: any header JSON, HMAC-SHA256 over it with `secret`.
fn hmac_token(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("hmac");
    format!("{message}.{signature}")
}

/// A temporary file that is removed on drop.
pub(crate) struct TempFile(pub(crate) PathBuf);

impl TempFile {
    pub(crate) fn new(name: &str, contents: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "velro-authz-{}-{}-{name}",
            std::process::id(),
            Uuid::new_v4()
        ));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }

    pub(crate) fn write(&self, contents: &[u8]) {
        std::fs::write(&self.0, contents).expect("rewrite temp file");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) fn user() -> Uuid {
    Uuid::parse_str(USER).expect("uuid")
}

// ---- valid tokens ----

#[test]
fn verify_hs256_valid_token_returns_its_claims() {
    let v = verifier(vec![hs_key(None)]);
    let token = sign(Algorithm::HS256, None, &claims());
    assert_eq!(
        v.verify_at(&token, NOW),
        Ok(VerifiedToken {
            subject: user(),
            session_id: None,
            scopes: None,
            expires_at: NOW + 300,
            kid: None,
            jwks_generation: None,
            issuer: 0,
        })
    );
}

#[test]
fn verify_rs256_valid_token_is_accepted() {
    let v = verifier(vec![rsa_key(Some("rsa"))]);
    let token = sign(Algorithm::RS256, Some("rsa"), &claims());
    assert_eq!(v.verify_at(&token, NOW).map(|t| t.subject), Ok(user()));
}

#[test]
fn verify_es256_valid_token_is_accepted() {
    let v = verifier(vec![pk_key(
        Some("ec"),
        "ES256",
        "ec_p256_public.pem",
        None,
    )]);
    let token = sign(Algorithm::ES256, Some("ec"), &claims());
    assert_eq!(v.verify_at(&token, NOW).map(|t| t.subject), Ok(user()));
}

#[test]
fn verify_eddsa_valid_token_is_accepted() {
    let v = verifier(vec![pk_key(
        Some("ed"),
        "EdDSA",
        "ed25519_public.pem",
        None,
    )]);
    let token = sign(Algorithm::EdDSA, Some("ed"), &claims());
    assert_eq!(v.verify_at(&token, NOW).map(|t| t.subject), Ok(user()));
}

#[test]
fn verify_inline_public_key_pem_is_accepted() {
    let mut key = pk_key(Some("rsa"), "RS256", "rsa_public.pem", None);
    key.public_key_file = None;
    key.public_key_pem = Some(String::from_utf8(read_fixture("rsa_public.pem")).expect("utf8"));
    let v = verifier(vec![key]);
    let token = sign(Algorithm::RS256, Some("rsa"), &claims());
    assert!(v.verify_at(&token, NOW).is_ok());
}

#[test]
fn verify_now_uses_the_system_clock() {
    let v = verifier(vec![hs_key(None)]);
    let now = Utc::now().timestamp();
    let fresh = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "exp": now + 60 })),
    );
    let stale = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "exp": now - 3600 })),
    );
    assert!(v.verify(&fresh).is_ok());
    assert_eq!(v.verify(&stale), Err(AuthnError::TokenExpired));
}

// ---- signatures and algorithms ----

#[test]
fn verify_tampered_payload_is_invalid_token() {
    for (alg, kid, keys) in [
        (Algorithm::HS256, None, vec![hs_key(None)]),
        (Algorithm::RS256, Some("rsa"), vec![rsa_key(Some("rsa"))]),
    ] {
        let v = verifier(keys);
        let token = sign(alg, kid, &claims());
        let other_user = b64(claims_with(json!({ "sub": SID })).to_string().as_bytes());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], other_user, parts[2]);
        assert_eq!(
            v.verify_at(&forged, NOW),
            Err(AuthnError::InvalidToken),
            "{alg:?}"
        );
    }
}

#[test]
fn verify_hs256_with_wrong_secret_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    let token = hmac_token(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &claims(),
        b"another-secret-that-is-also-long-enough!",
    );
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_alg_none_token_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    let payload = b64(claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE", ""] {
        let header = b64(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.AAAA"),
            format!("{header}.{payload}"),
        ] {
            assert_eq!(
                v.verify_at(&token, NOW),
                Err(AuthnError::InvalidToken),
                "{alg} {token}"
            );
        }
    }
}

#[test]
fn verify_hs256_signed_with_rsa_public_key_is_invalid_token() {
    // Algorithm confusion: the attacker knows the RSA public key and uses its
    // PEM bytes as an HMAC secret, hoping the verifier does the same.
    let public_pem = read_fixture("rsa_public.pem");
    let single = verifier(vec![rsa_key(None)]);
    let forged = hmac_token(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &claims(),
        &public_pem,
    );
    assert_eq!(
        single.verify_at(&forged, NOW),
        Err(AuthnError::InvalidToken)
    );

    let with_kid = verifier(vec![rsa_key(Some("rsa")), hs_key(Some("hs"))]);
    let forged = hmac_token(
        &json!({ "alg": "HS256", "typ": "JWT", "kid": "rsa" }),
        &claims(),
        &public_pem,
    );
    assert_eq!(
        with_kid.verify_at(&forged, NOW),
        Err(AuthnError::InvalidToken)
    );
}

#[test]
fn verify_header_alg_other_than_the_keys_is_invalid_token() {
    let v = verifier(vec![rsa_key(Some("rsa")), hs_key(Some("hs"))]);
    // A genuine RS256 signature, but naming the HS256 key.
    let token = sign(Algorithm::RS256, Some("hs"), &claims());
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
    // ES256 against an RS256 key.
    let token = sign(Algorithm::ES256, Some("rsa"), &claims());
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_unsupported_algorithms_are_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    for alg in ["HS384", "HS512", "PS256", "RS512", "ES384"] {
        let token = hmac_token(&json!({ "alg": alg }), &claims(), SECRET.as_bytes());
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::InvalidToken),
            "{alg}"
        );
    }
}

#[test]
fn verify_crit_header_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    let token = hmac_token(
        &json!({ "alg": "HS256", "crit": ["exp"], "exp": 1 }),
        &claims(),
        SECRET.as_bytes(),
    );
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

// ---- kid selection ----

#[test]
fn verify_kid_selects_the_named_key() {
    let v = verifier(vec![hs_key(Some("hs")), rsa_key(Some("rsa"))]);
    assert!(
        v.verify_at(&sign(Algorithm::HS256, Some("hs"), &claims()), NOW)
            .is_ok()
    );
    assert!(
        v.verify_at(&sign(Algorithm::RS256, Some("rsa"), &claims()), NOW)
            .is_ok()
    );
}

#[test]
fn verify_unknown_kid_is_invalid_token() {
    let v = verifier(vec![hs_key(Some("hs")), rsa_key(Some("rsa"))]);
    let token = sign(Algorithm::HS256, Some("nope"), &claims());
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_kid_on_single_kidless_key_is_invalid_token() {
    // No fallback: a kid must name a configured key, even with one key.
    let v = verifier(vec![hs_key(None)]);
    let token = sign(Algorithm::HS256, Some("hs"), &claims());
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_no_kid_with_two_keys_is_invalid_token() {
    let v = verifier(vec![hs_key(Some("hs")), rsa_key(Some("rsa"))]);
    let token = sign(Algorithm::HS256, None, &claims());
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

// ---- exp / nbf ----

#[test]
fn verify_expired_beyond_leeway_is_token_expired() {
    let v = verifier(vec![hs_key(None)]);
    for exp in [NOW - 30, NOW - 31, NOW - 86_400, 0, -5] {
        let token = sign(Algorithm::HS256, None, &claims_with(json!({ "exp": exp })));
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::TokenExpired),
            "exp {exp}"
        );
    }
}

#[test]
fn verify_expired_within_leeway_is_accepted() {
    let v = verifier(vec![hs_key(None)]);
    for exp in [NOW - 29, NOW, NOW + 1] {
        let token = sign(Algorithm::HS256, None, &claims_with(json!({ "exp": exp })));
        assert!(v.verify_at(&token, NOW).is_ok(), "exp {exp}");
    }
}

#[test]
fn verify_zero_leeway_expires_at_exp() {
    let mut cfg = config(vec![hs_key(None)]);
    cfg.leeway_secs = 0;
    let v = JwtVerifier::new(&cfg).expect("valid");
    let token = sign(Algorithm::HS256, None, &claims_with(json!({ "exp": NOW })));
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::TokenExpired));
    assert!(v.verify_at(&token, NOW - 1).is_ok());
}

#[test]
fn verify_missing_or_malformed_exp_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    for exp in [
        Value::Null,
        json!("1800000300"),
        json!(true),
        json!([NOW + 300]),
        json!(1e300),
    ] {
        let mut claims = claims();
        if exp.is_null() {
            claims.as_object_mut().expect("object").remove("exp");
        } else {
            claims["exp"] = exp.clone();
        }
        let token = sign(Algorithm::HS256, None, &claims);
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::InvalidToken),
            "exp {exp}"
        );
    }
}

#[test]
fn verify_explicit_null_exp_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    let mut claims = claims();
    claims["exp"] = Value::Null;
    let token = sign(Algorithm::HS256, None, &claims);
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_fractional_exp_is_accepted_and_floored() {
    let v = verifier(vec![hs_key(None)]);
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "exp": (NOW + 300) as f64 + 0.75 })),
    );
    assert_eq!(
        v.verify_at(&token, NOW).map(|t| t.expires_at),
        Ok(NOW + 300)
    );
}

#[test]
fn verify_nbf_beyond_leeway_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "nbf": NOW + 31 })),
    );
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_nbf_within_leeway_or_past_is_accepted() {
    let v = verifier(vec![hs_key(None)]);
    for nbf in [NOW + 30, NOW, NOW - 1000] {
        let token = sign(Algorithm::HS256, None, &claims_with(json!({ "nbf": nbf })));
        assert!(v.verify_at(&token, NOW).is_ok(), "nbf {nbf}");
    }
}

#[test]
fn verify_malformed_nbf_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "nbf": "yesterday" })),
    );
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

// ---- iss / aud ----

#[test]
fn verify_wrong_missing_or_array_issuer_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    for iss in [
        json!("https://evil.test"),
        Value::Null,
        json!([ISS]),
        json!(42),
    ] {
        let token = sign(
            Algorithm::HS256,
            None,
            &claims_with(json!({ "iss": iss.clone() })),
        );
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::InvalidToken),
            "iss {iss}"
        );
    }
}

#[test]
fn verify_wrong_or_missing_audience_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    for aud in [
        json!("other-api"),
        Value::Null,
        json!(["other-api"]),
        json!([]),
        json!([AUD, 7]),
        json!(7),
    ] {
        let token = sign(
            Algorithm::HS256,
            None,
            &claims_with(json!({ "aud": aud.clone() })),
        );
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::InvalidToken),
            "aud {aud}"
        );
    }
}

#[test]
fn verify_audience_array_containing_ours_is_accepted() {
    let v = verifier(vec![hs_key(None)]);
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "aud": ["other-api", AUD] })),
    );
    assert!(v.verify_at(&token, NOW).is_ok());
}

#[test]
fn new_without_issuer_or_audience_is_error_naming_each() {
    let cfg = JwtConfig {
        keys: vec![hs_key(None)],
        ..JwtConfig::default()
    };
    let problems = JwtVerifier::new(&cfg).expect_err("issuer and audience are required");
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].starts_with("auth.jwt.issuer: required"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("auth.jwt.audience: required"),
        "{problems:?}"
    );
    assert!(problems.iter().all(|p| p.contains("`any`")), "{problems:?}");
}

#[test]
fn verify_issuer_and_audience_any_are_not_checked() {
    let cfg = JwtConfig {
        issuer: Some(ANY.to_owned()),
        audience: Some(ANY.to_owned()),
        keys: vec![hs_key(None)],
        ..JwtConfig::default()
    };
    let v = JwtVerifier::new(&cfg).expect("valid");
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "iss": "anyone", "aud": ["whoever"] })),
    );
    assert!(v.verify_at(&token, NOW).is_ok());
    let bare = sign(
        Algorithm::HS256,
        None,
        &json!({ "sub": USER, "exp": NOW + 60 }),
    );
    assert!(v.verify_at(&bare, NOW).is_ok());
}

#[test]
fn verify_issuer_any_still_checks_a_configured_audience() {
    let mut cfg = config(vec![hs_key(None)]);
    cfg.issuer = Some(ANY.to_owned());
    let v = JwtVerifier::new(&cfg).expect("valid");
    let other_issuer = sign(Algorithm::HS256, None, &claims_with(json!({ "iss": "x" })));
    assert!(v.verify_at(&other_issuer, NOW).is_ok());
    let other_audience = sign(Algorithm::HS256, None, &claims_with(json!({ "aud": "x" })));
    assert_eq!(
        v.verify_at(&other_audience, NOW),
        Err(AuthnError::InvalidToken)
    );
}

// ---- typ ----

fn typ_verifier(typ: &str) -> JwtVerifier {
    let mut cfg = config(vec![hs_key(None)]);
    cfg.typ = Some(typ.to_owned());
    JwtVerifier::new(&cfg).expect("valid")
}

#[test]
fn verify_typ_configured_matches_case_insensitively_with_or_without_prefix() {
    let v = typ_verifier("at+jwt");
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/At+JWT",
    ] {
        let token = hmac_token(
            &json!({ "alg": "HS256", "typ": typ }),
            &claims(),
            SECRET.as_bytes(),
        );
        assert!(v.verify_at(&token, NOW).is_ok(), "{typ}");
    }
}

#[test]
fn verify_typ_configured_other_or_missing_typ_is_invalid_token() {
    let v = typ_verifier("at+jwt");
    for header in [
        json!({ "alg": "HS256", "typ": "JWT" }),
        json!({ "alg": "HS256", "typ": "id+jwt" }),
        json!({ "alg": "HS256", "typ": "" }),
        json!({ "alg": "HS256" }),
    ] {
        let token = hmac_token(&header, &claims(), SECRET.as_bytes());
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::InvalidToken),
            "{header}"
        );
    }
}

#[test]
fn verify_typ_unconfigured_is_not_checked() {
    let v = verifier(vec![hs_key(None)]);
    for header in [
        json!({ "alg": "HS256", "typ": "whatever" }),
        json!({ "alg": "HS256" }),
    ] {
        let token = hmac_token(&header, &claims(), SECRET.as_bytes());
        assert!(v.verify_at(&token, NOW).is_ok(), "{header}");
    }
}

#[test]
fn new_empty_typ_is_error() {
    let mut cfg = config(vec![hs_key(None)]);
    cfg.typ = Some("application/".to_owned());
    let problems = JwtVerifier::new(&cfg).expect_err("invalid");
    assert!(problems[0].starts_with("auth.jwt.typ:"), "{problems:?}");
}

// ---- lifetime cap ----

#[test]
fn verify_lifetime_cap_defaults_to_24_hours() {
    assert_eq!(JwtConfig::default().max_lifetime_secs, 86_400);
    let v = verifier(vec![hs_key(None)]);
    let day = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "iat": NOW, "exp": NOW + 86_400 })),
    );
    assert!(v.verify_at(&day, NOW).is_ok());
    let longer = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "iat": NOW, "exp": NOW + 86_401 })),
    );
    assert_eq!(v.verify_at(&longer, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_lifetime_above_cap_is_invalid_token_even_when_issued_long_ago() {
    let mut cfg = config(vec![hs_key(None)]);
    cfg.max_lifetime_secs = 3600;
    let v = JwtVerifier::new(&cfg).expect("valid");
    // Issued a year ago for a year and a day: only a day left, still refused.
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "iat": NOW - 365 * 86_400, "exp": NOW + 600 })),
    );
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_lifetime_without_iat_is_measured_from_now_with_leeway() {
    let mut cfg = config(vec![hs_key(None)]);
    cfg.max_lifetime_secs = 3600;
    let v = JwtVerifier::new(&cfg).expect("valid");
    for (exp, ok) in [
        (NOW + 3630, true),
        (NOW + 3631, false),
        (NOW + 86_400 * 365, false),
    ] {
        let token = sign(
            Algorithm::HS256,
            None,
            &claims_with(json!({ "iat": null, "exp": exp })),
        );
        assert_eq!(v.verify_at(&token, NOW).is_ok(), ok, "exp {exp}");
    }
}

#[test]
fn verify_future_iat_does_not_stretch_the_cap() {
    let mut cfg = config(vec![hs_key(None)]);
    cfg.max_lifetime_secs = 3600;
    let v = JwtVerifier::new(&cfg).expect("valid");
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "iat": NOW + 86_400 * 30, "exp": NOW + 86_400 * 30 + 60 })),
    );
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_malformed_iat_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    for iat in [json!("1800000000"), json!(true), json!([NOW])] {
        let token = sign(Algorithm::HS256, None, &claims_with(json!({ "iat": iat })));
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::InvalidToken),
            "{iat}"
        );
    }
}

#[test]
fn verify_lifetime_cap_zero_is_no_cap() {
    let mut cfg = config(vec![hs_key(None)]);
    cfg.max_lifetime_secs = 0;
    let v = JwtVerifier::new(&cfg).expect("valid");
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "exp": NOW + 86_400 * 3650 })),
    );
    assert!(v.verify_at(&token, NOW).is_ok());
}

// ---- sub / sid / scope ----

#[test]
fn verify_sub_not_a_canonical_uuid_is_unknown_user() {
    let v = verifier(vec![hs_key(None)]);
    for sub in [
        json!("alice"),
        json!(format!("{{{USER}}}")),
        json!(format!("urn:uuid:{USER}")),
        json!(USER.replace('-', "")),
        json!(""),
        json!(42),
        Value::Null,
    ] {
        let token = sign(
            Algorithm::HS256,
            None,
            &claims_with(json!({ "sub": sub.clone() })),
        );
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::UnknownUser),
            "sub {sub}"
        );
    }
}

#[test]
fn verify_uppercase_sub_is_accepted() {
    let v = verifier(vec![hs_key(None)]);
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "sub": USER.to_uppercase() })),
    );
    assert_eq!(v.verify_at(&token, NOW).map(|t| t.subject), Ok(user()));
}

#[test]
fn verify_canonical_sid_is_returned() {
    let v = verifier(vec![hs_key(None)]);
    let token = sign(Algorithm::HS256, None, &claims_with(json!({ "sid": SID })));
    assert_eq!(
        v.verify_at(&token, NOW).map(|t| t.session_id),
        Ok(Some(Uuid::parse_str(SID).expect("uuid")))
    );
}

#[test]
fn verify_malformed_sid_is_session_revoked() {
    let v = verifier(vec![hs_key(None)]);
    for sid in [
        json!(format!("{{{SID}}}")),
        json!(SID.replace('-', "")),
        json!(format!("urn:uuid:{SID}")),
        json!("session-1"),
        json!(""),
        json!(12),
    ] {
        let token = sign(
            Algorithm::HS256,
            None,
            &claims_with(json!({ "sid": sid.clone() })),
        );
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::SessionRevoked),
            "sid {sid}"
        );
    }
    let mut claims = claims();
    claims["sid"] = Value::Null;
    let token = sign(Algorithm::HS256, None, &claims);
    assert_eq!(
        v.verify_at(&token, NOW),
        Err(AuthnError::SessionRevoked),
        "sid null"
    );
}

#[test]
fn verify_scope_string_becomes_scopes() {
    let v = verifier(vec![hs_key(None)]);
    let token = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "scope": "read  write ops" })),
    );
    let scopes = v
        .verify_at(&token, NOW)
        .expect("valid")
        .scopes
        .expect("scopes");
    assert!(scopes.allows(crate::model::Action::Read));
    assert!(scopes.allows(crate::model::Action::Write));
    assert!(!scopes.allows(crate::model::Action::Delete));
    assert!(scopes.has_ops());
}

#[test]
fn verify_empty_scope_narrows_to_nothing() {
    let v = verifier(vec![hs_key(None)]);
    let token = sign(Algorithm::HS256, None, &claims_with(json!({ "scope": "" })));
    assert_eq!(
        v.verify_at(&token, NOW).map(|t| t.scopes),
        Ok(Some(Scopes::default()))
    );
}

#[test]
fn verify_non_string_scope_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    for scope in [json!(["read"]), json!(1), json!({ "read": true })] {
        let token = sign(
            Algorithm::HS256,
            None,
            &claims_with(json!({ "scope": scope.clone() })),
        );
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::InvalidToken),
            "scope {scope}"
        );
    }
}

// ---- malformed tokens ----

#[test]
fn verify_malformed_tokens_are_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    let good = sign(Algorithm::HS256, None, &claims());
    let header = good.split('.').next().expect("header").to_owned();
    let not_json = b64(b"not json");
    let array_payload = hmac_token(
        &json!({ "alg": "HS256" }),
        &json!([1, 2]),
        SECRET.as_bytes(),
    );
    let duplicate_sub = {
        let body = format!(
            r#"{{"sub":"{USER}","sub":"{SID}","iss":"{ISS}","aud":"{AUD}","exp":{}}}"#,
            NOW + 60
        );
        let message = format!("{header}.{}", b64(body.as_bytes()));
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .expect("hmac");
        format!("{message}.{signature}")
    };
    for token in [
        String::new(),
        "abc".to_owned(),
        "a.b".to_owned(),
        "a.b.c".to_owned(),
        "a..c".to_owned(),
        format!("{good}.extra"),
        format!("{good}="),
        format!(" {good}"),
        good.replace('.', ".."),
        format!("{not_json}.{not_json}.{not_json}"),
        array_payload,
        duplicate_sub,
    ] {
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::InvalidToken),
            "{token}"
        );
    }
}

#[test]
fn verify_token_over_8_kib_is_invalid_token() {
    let v = verifier(vec![hs_key(None)]);
    let small = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "pad": "x".repeat(5000) })),
    );
    assert!(small.len() <= MAX_TOKEN_LEN);
    assert!(v.verify_at(&small, NOW).is_ok());
    let big = sign(
        Algorithm::HS256,
        None,
        &claims_with(json!({ "pad": "x".repeat(7000) })),
    );
    assert!(big.len() > MAX_TOKEN_LEN);
    assert_eq!(v.verify_at(&big, NOW), Err(AuthnError::InvalidToken));
}

// ---- config ----

#[test]
fn config_deserialize_applies_defaults() {
    let cfg: JwtConfig =
        serde_json::from_str(r#"{ "keys": [{ "alg": "HS256", "secret": "s" }] }"#).expect("parses");
    assert_eq!(cfg.leeway_secs, 30);
    assert_eq!(cfg.jwks_reload_min_interval_secs, 10);
    assert_eq!(JwtConfig::default().leeway_secs, 30);
    assert_eq!(JwtConfig::default().jwks_reload_min_interval_secs, 10);
}

#[test]
fn config_deserialize_unknown_field_is_rejected() {
    assert!(serde_json::from_str::<JwtConfig>(r#"{ "leeway": 5 }"#).is_err());
    assert!(
        serde_json::from_str::<JwtConfig>(r#"{ "keys": [{ "alg": "HS256", "secrt": "s" }] }"#)
            .is_err()
    );
}

#[test]
fn new_without_keys_or_jwks_file_is_error() {
    let cfg = JwtConfig {
        keys: Vec::new(),
        ..config(Vec::new())
    };
    let problems = JwtVerifier::new(&cfg).expect_err("invalid");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("auth.jwt:"), "{problems:?}");
}

#[test]
fn verifier_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JwtVerifier>();
}

// ---- mint ----

#[test]
fn mint_hs256_then_verify_round_trips() {
    let v = verifier(vec![hs_key(None)]);
    let token = v
        .mint(&MintClaims {
            subject: USER.to_owned(),
            session_id: Some(Uuid::parse_str(SID).expect("uuid")),
            scope: Some("read ops".to_owned()),
            ttl: Duration::from_secs(600),
            kid: None,
        })
        .expect("mint");
    let verified = v.verify(&token).expect("valid");
    assert_eq!(verified.subject, user());
    assert_eq!(
        verified.session_id,
        Some(Uuid::parse_str(SID).expect("uuid"))
    );
    assert!(verified.scopes.is_some_and(Scopes::has_ops));
    let now = Utc::now().timestamp();
    assert!((now + 590..=now + 610).contains(&verified.expires_at));
}

#[test]
fn mint_with_kid_uses_that_keys_private_key() {
    let v = verifier(vec![
        hs_key(Some("hs")),
        rsa_key(Some("rsa")),
        pk_key(
            Some("ec"),
            "ES256",
            "ec_p256_public.pem",
            Some("ec_p256_private.pem"),
        ),
        pk_key(
            Some("ed"),
            "EdDSA",
            "ed25519_public.pem",
            Some("ed25519_private.pem"),
        ),
    ]);
    for (kid, alg) in [
        ("rsa", Algorithm::RS256),
        ("ec", Algorithm::ES256),
        ("ed", Algorithm::EdDSA),
    ] {
        let claims = MintClaims {
            subject: USER.to_owned(),
            ttl: Duration::from_secs(60),
            kid: Some(kid.to_owned()),
            ..MintClaims::default()
        };
        let token = v.mint(&claims).expect("mint");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!((header.alg, header.kid.as_deref()), (alg, Some(kid)));
        assert_eq!(v.verify(&token).map(|t| t.subject), Ok(user()), "{kid}");
    }
}

#[test]
fn mint_without_signing_key_is_error() {
    let v = verifier(vec![pk_key(Some("rsa"), "RS256", "rsa_public.pem", None)]);
    let claims = MintClaims {
        subject: USER.to_owned(),
        ..MintClaims::default()
    };
    assert!(matches!(v.mint(&claims), Err(MintError::NoSigningKey)));
    let claims = MintClaims {
        kid: Some("rsa".to_owned()),
        ..claims
    };
    assert!(matches!(v.mint(&claims), Err(MintError::UnknownKid(kid)) if kid == "rsa"));
}

#[test]
fn mint_above_lifetime_cap_is_error() {
    let mut cfg = config(vec![hs_key(None)]);
    cfg.max_lifetime_secs = 600;
    let v = JwtVerifier::new(&cfg).expect("valid");
    let claims = MintClaims {
        subject: USER.to_owned(),
        ttl: Duration::from_secs(601),
        ..MintClaims::default()
    };
    assert!(matches!(
        v.mint(&claims),
        Err(MintError::TtlAboveMaxLifetime(600))
    ));
    let at_cap = MintClaims {
        ttl: Duration::from_secs(600),
        ..claims
    };
    assert!(v.verify(&v.mint(&at_cap).expect("mint")).is_ok());
}

#[test]
fn mint_writes_the_configured_typ() {
    let v = typ_verifier("at+jwt");
    let token = v
        .mint(&MintClaims {
            subject: USER.to_owned(),
            ttl: Duration::from_secs(60),
            ..MintClaims::default()
        })
        .expect("mint");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert!(v.verify(&token).is_ok());
}

#[test]
fn mint_huge_ttl_is_error() {
    let v = verifier(vec![hs_key(None)]);
    let claims = MintClaims {
        subject: USER.to_owned(),
        ttl: Duration::MAX,
        ..MintClaims::default()
    };
    assert!(matches!(v.mint(&claims), Err(MintError::TtlOutOfRange)));
}

// ---- properties ----

fn shared_verifier() -> &'static JwtVerifier {
    static VERIFIER: std::sync::OnceLock<JwtVerifier> = std::sync::OnceLock::new();
    VERIFIER.get_or_init(|| verifier(vec![hs_key(Some("hs")), rsa_key(Some("rsa"))]))
}

proptest! {
    #[test]
    fn verify_arbitrary_string_is_never_ok(token in ".{0,300}") {
        prop_assert!(shared_verifier().verify_at(&token, NOW).is_err());
    }

    #[test]
    fn verify_arbitrary_jws_shaped_string_is_never_ok(
        token in "[A-Za-z0-9_-]{1,80}\\.[A-Za-z0-9_-]{1,200}\\.[A-Za-z0-9_-]{1,100}",
    ) {
        prop_assert!(shared_verifier().verify_at(&token, NOW).is_err());
    }

    #[test]
    fn verify_arbitrary_header_json_is_never_ok(
        header in "\\{\"alg\":\"(HS256|RS256|none|ES256)\"(,\"kid\":\"(hs|rsa|x)\")?[^}]{0,20}\\}",
        payload in "[ -~]{0,80}",
        signature in "[A-Za-z0-9_-]{1,60}",
    ) {
        let token = format!("{}.{}.{signature}", b64(header.as_bytes()), b64(payload.as_bytes()));
        prop_assert!(shared_verifier().verify_at(&token, NOW).is_err());
    }

    #[test]
    fn verify_valid_token_with_one_changed_character_is_never_ok(
        index in 0usize..10_000,
        replacement in "[A-Za-z0-9_.-]",
    ) {
        let token = sign(Algorithm::HS256, Some("hs"), &claims());
        let index = index % token.len();
        let mut bytes = token.clone().into_bytes();
        let new = replacement.as_bytes()[0];
        prop_assume!(bytes[index] != new);
        bytes[index] = new;
        let changed = String::from_utf8(bytes).expect("ascii");
        prop_assert!(shared_verifier().verify_at(&changed, NOW).is_err());
    }
}

// ---- several issuers ----

const OTHER_ISS: &str = "https://other.test/";
const OTHER_AUD: &str = "other-api";

/// The top-level issuer (HS256, kid `hs`) plus `https://other.test/` (RS256).
fn two_issuers() -> JwtConfig {
    JwtConfig {
        issuers: vec![IssuerConfig {
            issuer: Some(OTHER_ISS.to_owned()),
            audience: Some(OTHER_AUD.to_owned()),
            keys: vec![rsa_key(Some("rsa"))],
            ..IssuerConfig::default()
        }],
        ..config(vec![hs_key(Some("hs"))])
    }
}

#[test]
fn verify_several_issuers_iss_picks_the_entry_whose_keys_and_audience_decide() {
    let v = JwtVerifier::new(&two_issuers()).expect("valid");
    let ours = sign(Algorithm::HS256, Some("hs"), &claims());
    assert_eq!(v.verify_at(&ours, NOW).map(|t| t.issuer), Ok(0));
    let other = claims_with(json!({ "iss": OTHER_ISS, "aud": OTHER_AUD }));
    let theirs = sign(Algorithm::RS256, Some("rsa"), &other);
    assert_eq!(v.verify_at(&theirs, NOW).map(|t| t.issuer), Ok(1));

    for (what, token) in [
        (
            "our audience on their issuer",
            sign(
                Algorithm::RS256,
                Some("rsa"),
                &claims_with(json!({ "iss": OTHER_ISS })),
            ),
        ),
        (
            "their key claiming our issuer",
            sign(
                Algorithm::RS256,
                Some("rsa"),
                &claims_with(json!({ "aud": OTHER_AUD })),
            ),
        ),
        (
            "our key claiming their issuer",
            sign(Algorithm::HS256, Some("hs"), &other),
        ),
        (
            "an issuer nobody configured",
            sign(
                Algorithm::HS256,
                Some("hs"),
                &claims_with(json!({ "iss": "https://evil.test" })),
            ),
        ),
        (
            "no iss",
            sign(
                Algorithm::HS256,
                Some("hs"),
                &claims_with(json!({ "iss": null })),
            ),
        ),
        (
            "iss not a string",
            sign(
                Algorithm::HS256,
                Some("hs"),
                &claims_with(json!({ "iss": 7 })),
            ),
        ),
    ] {
        assert_eq!(
            v.verify_at(&token, NOW),
            Err(AuthnError::InvalidToken),
            "{what}"
        );
    }
}

#[test]
fn mint_with_kid_of_another_issuer_uses_that_issuers_iss_and_aud() {
    let v = JwtVerifier::new(&two_issuers()).expect("valid");
    let token = v
        .mint(&MintClaims {
            subject: USER.to_owned(),
            ttl: Duration::from_secs(60),
            kid: Some("rsa".to_owned()),
            ..MintClaims::default()
        })
        .expect("mint");
    assert_eq!(v.verify(&token).map(|t| t.issuer), Ok(1));
}

#[test]
fn new_several_issuers_any_duplicates_and_missing_keys_are_errors_naming_each() {
    let mut cfg = two_issuers();
    cfg.issuers.push(IssuerConfig {
        issuer: Some(ISS.to_owned()),
        audience: Some(AUD.to_owned()),
        keys: vec![hs_key(None)],
        ..IssuerConfig::default()
    });
    cfg.issuers.push(IssuerConfig {
        issuer: Some(ANY.to_owned()),
        audience: Some(AUD.to_owned()),
        ..IssuerConfig::default()
    });
    cfg.issuers.push(IssuerConfig {
        issuer: Some("https://two-sources.test".to_owned()),
        audience: Some(AUD.to_owned()),
        jwks_file: Some(fixture("jwks.json")),
        jwks_url: Some("https://idp.test/jwks".to_owned()),
        ..IssuerConfig::default()
    });
    cfg.issuers.push(IssuerConfig {
        issuer: Some("https://plain.test".to_owned()),
        audience: None,
        jwks_url: Some("http://plain.test/jwks?key=s3cret".to_owned()),
        ..IssuerConfig::default()
    });
    let problems = JwtVerifier::new(&cfg).expect_err("invalid");
    for expected in [
        "auth.jwt.issuers[1].issuer: \"https://id.velro.test\" is also auth.jwt.issuer",
        "auth.jwt.issuers[2]: keys, jwks_file, jwks_url or oidc_issuer is required",
        "auth.jwt.issuers[2].issuer: `any` cannot be used with several issuers",
        "auth.jwt.issuers[3]: set one of jwks_file, jwks_url and oidc_issuer",
        "auth.jwt.issuers[4].audience: required",
        "auth.jwt.issuers[4].jwks_url: \"http://plain.test/jwks\" is not an https:// URL",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:#?}"
        );
    }
    assert!(
        problems.iter().all(|p| !p.contains("s3cret")),
        "a URL's query is never quoted: {problems:#?}"
    );
}

#[test]
fn new_with_issuers_and_top_level_issuer_without_keys_is_error() {
    let cfg = JwtConfig {
        keys: Vec::new(),
        ..two_issuers()
    };
    let problems = JwtVerifier::new(&cfg).expect_err("invalid");
    assert!(
        problems[0].starts_with("auth.jwt.issuer / audience: with auth.jwt.issuers"),
        "{problems:?}"
    );
    let cfg = JwtConfig {
        issuer: None,
        audience: None,
        ..cfg
    };
    assert!(JwtVerifier::new(&cfg).is_ok(), "issuers alone are enough");
}

#[test]
fn new_jwks_refresh_bounds_and_ca_file_are_checked() {
    let cfg = JwtConfig {
        jwks_refresh_min_secs: 600,
        jwks_refresh_max_secs: 60,
        jwks_ca_file: Some(fixture("rsa_public.pem")),
        ..config(vec![hs_key(None)])
    };
    let problems = JwtVerifier::new(&cfg).expect_err("invalid");
    assert!(
        problems.iter().any(
            |p| p.starts_with("auth.jwt.jwks_refresh_min_secs: must be at least 1 and at most")
        ),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("auth.jwt.jwks_ca_file: only used")),
        "{problems:?}"
    );
    let cfg = JwtConfig {
        jwks_url: Some("https://idp.test/jwks".to_owned()),
        jwks_ca_file: Some(fixture("rsa_public.pem")),
        ..config(Vec::new())
    };
    let problems = JwtVerifier::new(&cfg).expect_err("a key is no CA certificate");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("auth.jwt.jwks_ca_file: ") && p.contains("no PEM certificate")),
        "{problems:?}"
    );
}

/// A PEM CA certificate made now, so remote sets need no system roots.
fn test_ca_file() -> TempFile {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("cert");
    TempFile::new("ca.pem", cert.pem().as_bytes())
}

#[tokio::test]
async fn verify_fetching_issuer_whose_keys_never_came_cannot_decide() {
    let ca = test_ca_file();
    // Nothing listens on port 1: every fetch fails at once.
    let cfg = JwtConfig {
        issuers: vec![IssuerConfig {
            issuer: Some(OTHER_ISS.to_owned()),
            audience: Some(OTHER_AUD.to_owned()),
            jwks_url: Some("https://127.0.0.1:1/jwks".to_owned()),
            ..IssuerConfig::default()
        }],
        jwks_ca_file: Some(ca.0.clone()),
        ..config(vec![hs_key(Some("hs"))])
    };
    let v = JwtVerifier::new(&cfg).expect("valid");
    assert_eq!(v.issuers_without_keys(), vec![OTHER_ISS.to_owned()]);
    let now = Utc::now().timestamp();
    let theirs = sign(
        Algorithm::RS256,
        Some("rsa"),
        &claims_with(json!({ "iss": OTHER_ISS, "aud": OTHER_AUD, "iat": now, "exp": now + 300 })),
    );
    let err = v.verify_fetching(&theirs).await.expect_err("cannot decide");
    assert_eq!(err.issuer, OTHER_ISS);
    assert_eq!(
        v.verify(&theirs),
        Err(AuthnError::InvalidToken),
        "sync: never an allow"
    );
    // The other issuer is unaffected.
    let ours = sign(
        Algorithm::HS256,
        Some("hs"),
        &claims_with(json!({ "iat": now, "exp": now + 300 })),
    );
    assert!(matches!(v.verify_fetching(&ours).await, Ok(Ok(_))));
    // The failed fetch was counted under the issuer's name, no URL anywhere.
    let registry = prometheus::Registry::new();
    v.metrics().register(&registry).expect("register");
    let families = registry.gather();
    let fetches = families
        .iter()
        .find(|f| f.name() == "velro_authz_jwks_fetches_total")
        .expect("fetch counter");
    let labels: Vec<(String, String)> = fetches
        .get_metric()
        .iter()
        .flat_map(|m| {
            m.get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
        })
        .collect();
    assert!(
        labels.contains(&("result".to_owned(), "connect".to_owned())),
        "{labels:?}"
    );
    assert!(
        labels.iter().all(|(_, v)| !v.contains("127.0.0.1")),
        "{labels:?}"
    );
}
