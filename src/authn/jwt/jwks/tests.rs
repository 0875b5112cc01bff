//! The JWKS file through `JwtVerifier`: keys of every algorithm, a kid the set
//! lacks rereading the file (at most once per interval), forced reloads, and
//! which entries are refused or skipped.

use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::authn::AuthnError;
use crate::authn::jwt::tests::{
    NOW, SECRET, TempFile, b64, claims, config, fixture, hs_key, sign, user, verifier,
};
use crate::authn::jwt::{JwtConfig, JwtVerifier};

fn jwks_config(path: PathBuf, reload_secs: u64) -> JwtConfig {
    JwtConfig {
        jwks_file: Some(path),
        jwks_reload_min_interval_secs: reload_secs,
        ..config(Vec::new())
    }
}

// ---- valid tokens ----

#[test]
fn verify_jwks_file_tokens_of_every_algorithm_are_accepted() {
    let v = JwtVerifier::new(&jwks_config(fixture("jwks.json"), 10)).expect("valid");
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-2025"),
        (Algorithm::ES256, "ec-2025"),
        (Algorithm::EdDSA, "ed-2025"),
    ] {
        let token = sign(alg, Some(kid), &claims());
        assert_eq!(
            v.verify_at(&token, NOW).map(|t| t.subject),
            Ok(user()),
            "{kid}"
        );
    }
}

#[test]
fn verify_static_and_jwks_keys_together_are_both_used() {
    let mut cfg = jwks_config(fixture("jwks.json"), 10);
    cfg.keys = vec![hs_key(Some("hs"))];
    let v = JwtVerifier::new(&cfg).expect("valid");
    assert!(
        v.verify_at(&sign(Algorithm::HS256, Some("hs"), &claims()), NOW)
            .is_ok()
    );
    assert!(
        v.verify_at(&sign(Algorithm::ES256, Some("ec-2025"), &claims()), NOW)
            .is_ok()
    );
}

// ---- kid selection and reload ----

#[test]
fn verify_no_kid_with_one_jwks_key_is_accepted() {
    let file = TempFile::new("one.json", &crate::testkit::fixture_jwks(&["ec-2025"]));
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 10)).expect("valid");
    assert!(
        v.verify_at(&sign(Algorithm::ES256, None, &claims()), NOW)
            .is_ok()
    );
}

#[test]
fn verify_no_kid_with_several_jwks_keys_is_invalid_token() {
    let v = JwtVerifier::new(&jwks_config(fixture("jwks.json"), 10)).expect("valid");
    let token = sign(Algorithm::ES256, None, &claims());
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
}

#[test]
fn verify_unknown_kid_rereads_jwks_file_and_finds_new_key() {
    let file = TempFile::new("rotate.json", &crate::testkit::fixture_jwks(&["rsa-2025"]));
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 0)).expect("valid");
    let token = sign(Algorithm::ES256, Some("ec-2025"), &claims());
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));

    file.write(&crate::testkit::fixture_jwks(&["rsa-2025", "ec-2025"]));
    assert_eq!(v.verify_at(&token, NOW).map(|t| t.subject), Ok(user()));
}

#[test]
fn verify_unknown_kid_within_reload_interval_does_not_reread() {
    let file = TempFile::new(
        "ratelimit.json",
        &crate::testkit::fixture_jwks(&["rsa-2025"]),
    );
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 3600)).expect("valid");
    file.write(&crate::testkit::fixture_jwks(&["rsa-2025", "ec-2025"]));
    let token = sign(Algorithm::ES256, Some("ec-2025"), &claims());
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
    // An explicit reload ignores the rate limit.
    assert_eq!(v.reload_jwks().map(|r| r.keys), Ok(2));
    assert!(v.verify_at(&token, NOW).is_ok());
}

#[test]
fn reload_jwks_broken_file_keeps_previous_keys() {
    let file = TempFile::new("broken.json", &crate::testkit::fixture_jwks(&["rsa-2025"]));
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 0)).expect("valid");
    file.write(b"{ \"keys\": [ truncated");
    let problems = v.reload_jwks().expect_err("broken file");
    assert!(problems[0].contains("not a JWKS document"), "{problems:?}");
    // The unknown kid triggers a reread, which fails too; old keys still work.
    assert_eq!(
        v.verify_at(&sign(Algorithm::ES256, Some("ec-2025"), &claims()), NOW),
        Err(AuthnError::InvalidToken)
    );
    assert!(
        v.verify_at(&sign(Algorithm::RS256, Some("rsa-2025"), &claims()), NOW)
            .is_ok()
    );
}

#[test]
fn reload_jwks_without_jwks_file_is_error() {
    let v = verifier(vec![hs_key(None)]);
    assert!(v.reload_jwks().is_err());
}

// ---- config ----

#[test]
fn new_jwks_file_problems_are_reported() {
    let missing = JwtVerifier::new(&jwks_config(fixture("nope.json"), 10)).expect_err("missing");
    assert!(
        missing[0].starts_with("auth.jwt.jwks_file: cannot read"),
        "{missing:?}"
    );

    let rsa = &serde_json::from_slice::<Value>(&crate::testkit::fixture_jwks(&["rsa-2025"]))
        .expect("json")["keys"][0];
    let mut no_kid = rsa.clone();
    no_kid.as_object_mut().expect("object").remove("kid");
    let mut short_n = rsa.clone();
    short_n["n"] = json!(b64(&[0xff; 128]));
    let mut wrong_kty = rsa.clone();
    wrong_kty["alg"] = json!("ES256");
    wrong_kty["kid"] = json!("wrong-kty");
    let bad = json!({ "keys": [
        no_kid,
        { "kty": "oct", "kid": "sym", "k": b64(SECRET.as_bytes()) },
        short_n,
        wrong_kty,
        rsa.clone(),
        { "kty": "EC", "kid": "ec-bad", "alg": "ES256", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32]) },
        { "kty": "OKP", "kid": "ed-short", "crv": "Ed25519", "x": b64(&[1; 16]) },
    ]});
    let file = TempFile::new("bad.json", bad.to_string().as_bytes());
    let mut cfg = jwks_config(file.0.clone(), 10);
    cfg.keys = vec![hs_key(Some("rsa-2025"))];
    let problems = JwtVerifier::new(&cfg).expect_err("invalid");
    for needle in [
        "keys[0]: a kid is required",
        "keys[1]: symmetric (oct) keys",
        "keys[2]: RSA modulus must be 2048 to 4096 bits (got 1024)",
        "keys[3]: alg ES256 needs kty \"EC\"",
        "keys[4]: kid \"rsa-2025\" is also a key in auth.jwt.keys",
        "keys[5]: not a valid P-256 public key",
        "keys[6]: not an Ed25519 public key",
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("auth.jwt.jwks_file: ") && p.contains(needle)),
            "{needle} missing from {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 7, "{problems:#?}");
}

#[test]
fn new_jwks_entries_not_for_signing_are_skipped() {
    let rsa = &serde_json::from_slice::<Value>(&crate::testkit::fixture_jwks(&["rsa-2025"]))
        .expect("json")["keys"][0];
    let mut enc = rsa.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc-key");
    let mut ps256 = rsa.clone();
    ps256["alg"] = json!("PS256");
    ps256["kid"] = json!("pss-key");
    let mut no_alg = rsa.clone();
    no_alg.as_object_mut().expect("object").remove("alg");
    let doc = json!({ "keys": [enc, ps256, { "kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA" }, no_alg] });
    let file = TempFile::new("skip.json", doc.to_string().as_bytes());
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 10)).expect("valid");
    // The RSA key without `alg` is taken as RS256; the others are ignored.
    assert!(
        v.verify_at(&sign(Algorithm::RS256, Some("rsa-2025"), &claims()), NOW)
            .is_ok()
    );
    assert_eq!(
        v.verify_at(&sign(Algorithm::RS256, Some("pss-key"), &claims()), NOW),
        Err(AuthnError::InvalidToken)
    );

    let only_enc =
        json!({ "keys": [{ "kty": "RSA", "use": "enc", "kid": "e", "n": "AQAB", "e": "AQAB" }] });
    let file = TempFile::new("enc.json", only_enc.to_string().as_bytes());
    let problems = JwtVerifier::new(&jwks_config(file.0.clone(), 10)).expect_err("no usable key");
    assert!(
        problems[0].contains("no usable signing key"),
        "{problems:?}"
    );
}

// ---- rotation: reloads and what they void ----

#[test]
fn reload_jwks_new_kid_is_reported_and_verifies_after_reload() {
    let file = TempFile::new("add.json", &crate::testkit::fixture_jwks(&["rsa-2025"]));
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 3600)).expect("valid");
    let token = sign(Algorithm::ES256, Some("ec-2025"), &claims());
    file.write(&crate::testkit::fixture_jwks(&["rsa-2025", "ec-2025"]));
    // The unknown-kid reread is rate-limited away: only the reload finds it.
    assert_eq!(v.verify_at(&token, NOW), Err(AuthnError::InvalidToken));
    let reload = v.reload_jwks().expect("reload");
    assert_eq!(reload.added, vec!["ec-2025".to_owned()]);
    assert!(reload.removed.is_empty() && reload.replaced.is_empty());
    assert_eq!((reload.keys, reload.generation), (2, 1));
    let verified = v.verify_at(&token, NOW).expect("new kid verifies");
    assert_eq!(verified.kid.as_deref(), Some("ec-2025"));
    assert_eq!(verified.jwks_generation, Some(1));
}

#[test]
fn reload_jwks_removed_kid_voids_its_verifications_and_no_other() {
    let file = TempFile::new(
        "remove.json",
        &crate::testkit::fixture_jwks(&["rsa-2025", "ec-2025"]),
    );
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 3600)).expect("valid");
    let ec = sign(Algorithm::ES256, Some("ec-2025"), &claims());
    let rsa = sign(Algorithm::RS256, Some("rsa-2025"), &claims());
    let ec_verified = v.verify_at(&ec, NOW).expect("valid");
    let rsa_verified = v.verify_at(&rsa, NOW).expect("valid");
    assert!(v.still_trusted(&ec_verified) && v.still_trusted(&rsa_verified));

    file.write(&crate::testkit::fixture_jwks(&["rsa-2025"]));
    let reload = v.reload_jwks().expect("reload");
    assert_eq!(reload.removed, vec!["ec-2025".to_owned()]);
    assert!(
        !v.still_trusted(&ec_verified),
        "the removed kid's result is void"
    );
    assert!(v.still_trusted(&rsa_verified), "other kids' results stay");
    assert_eq!(v.verify_at(&ec, NOW), Err(AuthnError::InvalidToken));
    assert!(v.verify_at(&rsa, NOW).is_ok());
}

#[test]
fn reload_jwks_replaced_key_under_same_kid_voids_its_verifications() {
    let file = TempFile::new("replace.json", &crate::testkit::fixture_jwks(&["rsa-2025"]));
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 3600)).expect("valid");
    let verified = v
        .verify_at(&sign(Algorithm::RS256, Some("rsa-2025"), &claims()), NOW)
        .expect("valid");
    // The same kid now names the EC key.
    let mut doc: Value =
        serde_json::from_slice(&crate::testkit::fixture_jwks(&["ec-2025"])).expect("json");
    doc["keys"][0]["kid"] = json!("rsa-2025");
    file.write(doc.to_string().as_bytes());
    let reload = v.reload_jwks().expect("reload");
    assert_eq!(reload.replaced, vec!["rsa-2025".to_owned()]);
    assert!(!v.still_trusted(&verified));
}

#[test]
fn reload_jwks_unchanged_file_keeps_generation_and_results() {
    let file = TempFile::new(
        "same.json",
        &crate::testkit::fixture_jwks(&["rsa-2025", "ec-2025"]),
    );
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 3600)).expect("valid");
    let verified = v
        .verify_at(&sign(Algorithm::ES256, Some("ec-2025"), &claims()), NOW)
        .expect("valid");
    let reload = v.reload_jwks().expect("reload");
    assert!(!reload.changed());
    assert_eq!(reload.generation, 0);
    assert!(v.still_trusted(&verified));
    // A change elsewhere in the set leaves this kid's results alone.
    file.write(&crate::testkit::fixture_jwks(&["ec-2025"]));
    assert_eq!(v.reload_jwks().expect("reload").generation, 1);
    assert!(v.still_trusted(&verified));
}

#[test]
fn reload_jwks_kid_removed_then_restored_voids_results_from_before() {
    let file = TempFile::new(
        "restore.json",
        &crate::testkit::fixture_jwks(&["rsa-2025", "ec-2025"]),
    );
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 3600)).expect("valid");
    let verified = v
        .verify_at(&sign(Algorithm::ES256, Some("ec-2025"), &claims()), NOW)
        .expect("valid");
    file.write(&crate::testkit::fixture_jwks(&["rsa-2025"]));
    v.reload_jwks().expect("reload");
    file.write(&crate::testkit::fixture_jwks(&["rsa-2025", "ec-2025"]));
    v.reload_jwks().expect("reload");
    // A result from before the removal is not revived; verifying again works.
    assert!(!v.still_trusted(&verified));
    assert!(
        v.verify_at(&sign(Algorithm::ES256, Some("ec-2025"), &claims()), NOW)
            .is_ok()
    );
}

#[test]
fn reload_jwks_empty_document_removes_every_key() {
    let file = TempFile::new("empty.json", &crate::testkit::fixture_jwks(&["rsa-2025"]));
    let v = JwtVerifier::new(&jwks_config(file.0.clone(), 3600)).expect("valid");
    file.write(b"{\"keys\": []}");
    let reload = v.reload_jwks().expect("a valid, empty key set");
    assert_eq!(
        (reload.keys, reload.removed),
        (0, vec!["rsa-2025".to_owned()])
    );
    assert_eq!(
        v.verify_at(&sign(Algorithm::RS256, Some("rsa-2025"), &claims()), NOW),
        Err(AuthnError::InvalidToken)
    );
}

#[test]
fn still_trusted_static_key_results_are_always_trusted() {
    let mut cfg = jwks_config(fixture("jwks.json"), 3600);
    cfg.keys = vec![hs_key(Some("hs"))];
    let v = JwtVerifier::new(&cfg).expect("valid");
    let verified = v
        .verify_at(&sign(Algorithm::HS256, Some("hs"), &claims()), NOW)
        .expect("valid");
    assert_eq!(
        (verified.kid.as_deref(), verified.jwks_generation),
        (Some("hs"), None)
    );
    assert!(v.still_trusted(&verified));
}

#[test]
fn jwks_refresh_defaults_to_60_seconds_and_0_switches_it_off() {
    let v = JwtVerifier::new(&jwks_config(fixture("jwks.json"), 10)).expect("valid");
    assert_eq!(v.jwks_refresh(), Some(std::time::Duration::from_secs(60)));
    let mut cfg = jwks_config(fixture("jwks.json"), 10);
    cfg.jwks_refresh_secs = 0;
    assert_eq!(JwtVerifier::new(&cfg).expect("valid").jwks_refresh(), None);
    assert_eq!(verifier(vec![hs_key(None)]).jwks_refresh(), None);
}
