use chrono::{Duration, TimeZone as _};
use proptest::prelude::*;

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0)
        .single()
        .expect("valid date")
}

fn user() -> Uuid {
    Uuid::parse_str("7d4e1f0a-3b2c-4d5e-8f9a-0b1c2d3e4f50").expect("uuid")
}

fn session(user_id: Uuid) -> Session {
    Session {
        id: Uuid::parse_str("11111111-2222-4333-8444-555555555555").expect("uuid"),
        user_id,
        expires_at: now() + Duration::hours(1),
        revoked_at: None,
    }
}

// ---- extract_credential ----

#[test]
fn extract_bearer_token_returns_token() {
    assert_eq!(
        extract_credential(Some("Bearer abc.def.ghi"), None),
        Ok(Some(Credential::Bearer("abc.def.ghi")))
    );
}

#[test]
fn extract_bearer_scheme_any_case_returns_token() {
    for value in ["bearer t0k", "BEARER t0k", "BeArEr t0k"] {
        assert_eq!(
            extract_credential(Some(value), None),
            Ok(Some(Credential::Bearer("t0k"))),
            "{value}"
        );
    }
}

#[test]
fn extract_bearer_several_spaces_returns_token() {
    assert_eq!(
        extract_credential(Some("Bearer    t0k"), None),
        Ok(Some(Credential::Bearer("t0k")))
    );
}

#[test]
fn extract_bearer_surrounding_whitespace_is_ignored() {
    assert_eq!(
        extract_credential(Some("  Bearer t0k \t"), None),
        Ok(Some(Credential::Bearer("t0k")))
    );
}

#[test]
fn extract_two_joined_authorization_values_is_invalid_token() {
    assert_eq!(
        extract_credential(Some("Bearer a.b.c,Bearer d.e.f"), None),
        Err(AuthnError::InvalidToken)
    );
    assert_eq!(
        extract_credential(Some("Bearer a, b"), None),
        Err(AuthnError::InvalidToken)
    );
}

#[test]
fn extract_non_bearer_scheme_is_invalid_token() {
    for value in [
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "Bearerx abc",
        "Digest a=b",
    ] {
        assert_eq!(
            extract_credential(Some(value), None),
            Err(AuthnError::InvalidToken),
            "{value}"
        );
    }
}

#[test]
fn extract_empty_or_missing_token_is_invalid_token() {
    for value in ["", " ", "Bearer", "Bearer ", "Bearer    ", "bearer\t"] {
        assert_eq!(
            extract_credential(Some(value), None),
            Err(AuthnError::InvalidToken),
            "{value:?}"
        );
    }
}

#[test]
fn extract_token_with_inner_space_or_tab_is_invalid_token() {
    for value in ["Bearer a b", "Bearer\tabc", "Bearer a\tb", "Bearer a\u{7f}"] {
        assert_eq!(
            extract_credential(Some(value), None),
            Err(AuthnError::InvalidToken),
            "{value:?}"
        );
    }
}

#[test]
fn extract_both_headers_is_ambiguous() {
    assert_eq!(
        extract_credential(Some("Bearer t"), Some("velro_key")),
        Err(AuthnError::AmbiguousCredentials)
    );
    // Presence is what counts, not validity.
    assert_eq!(
        extract_credential(Some(""), Some("")),
        Err(AuthnError::AmbiguousCredentials)
    );
}

#[test]
fn extract_no_headers_is_none() {
    assert_eq!(extract_credential(None, None), Ok(None));
}

#[test]
fn extract_api_key_returns_key() {
    let key = apikey::generate();
    assert_eq!(
        extract_credential(None, Some(&key.plain)),
        Ok(Some(Credential::ApiKey(key.plain.as_str())))
    );
}

#[test]
fn extract_malformed_api_key_is_invalid_api_key() {
    let too_long = "k".repeat(513);
    let key = apikey::generate().plain;
    let two = format!("{key},{key}");
    let other_prefix = key.replacen("velro_", "vk_", 1);
    let longer = format!("{key}A");
    for value in [
        "",
        "a b",
        "a,b",
        "key\n",
        "clé",
        too_long.as_str(),
        "vk_unknown",
        "velro_",
        two.as_str(),
        other_prefix.as_str(),
        &key[..key.len() - 1],
        longer.as_str(),
    ] {
        assert_eq!(
            extract_credential(None, Some(value)),
            Err(AuthnError::InvalidApiKey),
            "{value:?}"
        );
    }
}

#[test]
fn credential_debug_never_prints_the_secret() {
    let bearer = format!("{:?}", Credential::Bearer("secret-token-value"));
    let key = format!("{:?}", Credential::ApiKey("velro_secret-key-value"));
    assert!(!bearer.contains("secret-token-value"), "{bearer}");
    assert!(!key.contains("secret-key-value"), "{key}");
}

// ---- check_session ----

#[test]
fn check_session_live_session_of_user_is_ok() {
    assert_eq!(check_session(Some(&session(user())), user(), now()), Ok(()));
}

#[test]
fn check_session_missing_is_session_revoked() {
    assert_eq!(
        check_session(None, user(), now()),
        Err(AuthnError::SessionRevoked)
    );
}

#[test]
fn check_session_of_other_user_is_session_revoked() {
    let other = Uuid::parse_str("99999999-2222-4333-8444-555555555555").expect("uuid");
    assert_eq!(
        check_session(Some(&session(other)), user(), now()),
        Err(AuthnError::SessionRevoked)
    );
}

#[test]
fn check_session_revoked_is_session_revoked() {
    let mut s = session(user());
    s.revoked_at = Some(now() - Duration::minutes(5));
    assert_eq!(
        check_session(Some(&s), user(), now()),
        Err(AuthnError::SessionRevoked)
    );
}

#[test]
fn check_session_expired_or_expiring_now_is_session_revoked() {
    let mut s = session(user());
    s.expires_at = now();
    assert_eq!(
        check_session(Some(&s), user(), now()),
        Err(AuthnError::SessionRevoked)
    );
    s.expires_at = now() - Duration::seconds(1);
    assert_eq!(
        check_session(Some(&s), user(), now()),
        Err(AuthnError::SessionRevoked)
    );
    s.expires_at = now() + Duration::seconds(1);
    assert_eq!(check_session(Some(&s), user(), now()), Ok(()));
}

// ---- AuthnError ----

#[test]
fn authn_error_reasons_are_stable_codes() {
    let expected = [
        (AuthnError::MissingCredentials, "missing_credentials"),
        (AuthnError::InvalidToken, "invalid_token"),
        (AuthnError::TokenExpired, "token_expired"),
        (AuthnError::AmbiguousCredentials, "ambiguous_credentials"),
        (AuthnError::UnknownUser, "unknown_user"),
        (AuthnError::SessionRevoked, "session_revoked"),
        (AuthnError::InvalidApiKey, "invalid_api_key"),
        (AuthnError::ApiKeyRevoked, "api_key_revoked"),
        (AuthnError::ApiKeyExpired, "api_key_expired"),
    ];
    for (error, reason) in expected {
        assert_eq!(error.reason(), reason);
        let message = error.to_string();
        assert!(!message.is_empty() && !message.contains('_'), "{message}");
    }
}

// ---- properties ----

proptest! {
    #[test]
    fn extract_credential_never_panics_and_bearer_token_is_clean(
        authorization in proptest::option::of(".{0,64}"),
        api_key in proptest::option::of(".{0,64}"),
    ) {
        match extract_credential(authorization.as_deref(), api_key.as_deref()) {
            Ok(Some(Credential::Bearer(token))) => {
                prop_assert!(!token.is_empty());
                prop_assert!(token.bytes().all(|b| b.is_ascii_graphic() && b != b','));
                prop_assert!(api_key.is_none());
            }
            Ok(Some(Credential::ApiKey(key))) => {
                prop_assert!(!key.is_empty());
                prop_assert!(authorization.is_none());
            }
            Ok(None) => prop_assert!(authorization.is_none() && api_key.is_none()),
            Err(_) => {}
        }
    }

    #[test]
    fn extract_bearer_prefix_with_scheme_variants_round_trips(
        scheme in "[bB][eE][aA][rR][eE][rR]",
        spaces in " {1,4}",
        token in "[A-Za-z0-9._~+/=-]{1,64}",
    ) {
        let value = format!("{scheme}{spaces}{token}");
        prop_assert_eq!(
            extract_credential(Some(&value), None),
            Ok(Some(Credential::Bearer(token.as_str())))
        );
    }
}

// ---- the verified-token cache and JWKS rotation ----

mod rotation {
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    use super::*;
    use crate::authn::jwt::tests::{AUD, ISS, TempFile, USER, sign};
    use crate::authn::jwt::{JwtConfig, JwtVerifier};

    /// An authenticator over a JWKS file that only explicit reloads reread.
    fn authenticator(file: &TempFile) -> (Authenticator, Arc<JwtVerifier>) {
        let jwt = Arc::new(
            JwtVerifier::new(&JwtConfig {
                issuer: Some(ISS.to_owned()),
                audience: Some(AUD.to_owned()),
                jwks_file: Some(file.0.clone()),
                jwks_reload_min_interval_secs: 3600,
                ..JwtConfig::default()
            })
            .expect("valid"),
        );
        (Authenticator::new(jwt.clone(), 100), jwt)
    }

    /// A token valid now (the cache reads the system clock).
    fn token(alg: Algorithm, kid: &str) -> String {
        let now = Utc::now().timestamp();
        let claims = json!({ "sub": USER, "iss": ISS, "aud": AUD, "iat": now, "exp": now + 300 });
        sign(alg, Some(kid), &claims)
    }

    /// `verify_token` for a file key set, which can always decide.
    async fn verify(authn: &Authenticator, token: &str) -> Result<Arc<VerifiedToken>, AuthnError> {
        authn
            .verify_token(token)
            .await
            .expect("a file key set can decide")
    }

    #[tokio::test]
    async fn verify_token_cached_result_of_removed_kid_is_invalid_token_after_reload() {
        let file = TempFile::new(
            "cache-remove.json",
            &crate::testkit::fixture_jwks(&["rsa-2025", "ec-2025"]),
        );
        let (authn, jwt) = authenticator(&file);
        let ec = token(Algorithm::ES256, "ec-2025");
        let rsa = token(Algorithm::RS256, "rsa-2025");
        assert!(verify(&authn, &ec).await.is_ok());
        assert!(verify(&authn, &rsa).await.is_ok());
        authn.tokens.run_pending_tasks();
        assert_eq!(authn.cached_tokens(), 2, "both results are cached");

        file.write(&crate::testkit::fixture_jwks(&["rsa-2025"]));
        jwt.reload_jwks().expect("reload");
        assert_eq!(
            verify(&authn, &ec).await.map(|_| ()),
            Err(AuthnError::InvalidToken),
            "a cached verification must not outlive its key"
        );
        assert!(verify(&authn, &rsa).await.is_ok(), "other kids stay cached");
    }

    #[tokio::test]
    async fn verify_token_new_kid_verifies_after_reload() {
        let file = TempFile::new(
            "cache-add.json",
            &crate::testkit::fixture_jwks(&["rsa-2025"]),
        );
        let (authn, jwt) = authenticator(&file);
        let ed = token(Algorithm::EdDSA, "ed-2025");
        assert_eq!(
            verify(&authn, &ed).await.map(|_| ()),
            Err(AuthnError::InvalidToken)
        );
        file.write(&crate::testkit::fixture_jwks(&["rsa-2025", "ed-2025"]));
        jwt.reload_jwks().expect("reload");
        assert_eq!(
            verify(&authn, &ed).await.map(|v| v.kid.clone()),
            Ok(Some("ed-2025".to_owned()))
        );
    }
}
