//! `auth.jwt.keys` as `JwtVerifier::new` builds them: every key problem named
//! and reported at once, and no secret ever printed.

use super::JwtKeyConfig;
use crate::authn::jwt::JwtVerifier;
use crate::authn::jwt::tests::{SECRET, config, hs_key, pk_key, rsa_key};

#[test]
fn new_reports_every_problem_at_once() {
    let mut short = hs_key(Some("short"));
    short.secret = Some("too-short".to_owned());
    let mut no_public = pk_key(Some("nopub"), "RS256", "rsa_public.pem", None);
    no_public.public_key_file = None;
    let mut cfg = config(vec![
        hs_key(Some("a")),
        JwtKeyConfig {
            alg: "HS512".to_owned(),
            ..hs_key(Some("b"))
        },
        short,
        no_public,
        pk_key(Some("p384"), "ES256", "ec_p384_public.pem", None),
        hs_key(Some("a")),
        pk_key(None, "EdDSA", "ed25519_public.pem", None),
        pk_key(Some("missing"), "RS256", "does-not-exist.pem", None),
        pk_key(
            Some("mismatch"),
            "EdDSA",
            "ed25519_public.pem",
            Some("ed25519_other_private.pem"),
        ),
        JwtKeyConfig {
            public_key_pem: Some("x".to_owned()),
            ..hs_key(Some("hspem"))
        },
    ]);
    cfg.leeway_secs = 3600;
    cfg.issuer = Some(String::new());
    let problems = JwtVerifier::new(&cfg).expect_err("invalid");
    let expected = [
        "auth.jwt.keys[1].alg: unsupported algorithm \"HS512\"",
        "auth.jwt.keys[2].secret: must be at least 32 bytes",
        "auth.jwt.keys[3].public_key_pem / public_key_file: one is required",
        "auth.jwt.keys[4].public_key_file: not a valid P-256 public key",
        "auth.jwt.keys[5].kid: duplicate kid \"a\" (also auth.jwt.keys[0])",
        "auth.jwt.keys[6].kid: required",
        "auth.jwt.keys[7].public_key_file: cannot read",
        "auth.jwt.keys[8].private_key_file:",
        "auth.jwt.keys[9].public_key_pem: not used by HS256 keys",
        "auth.jwt.leeway_secs: must be at most 300",
        "auth.jwt.issuer: must not be empty",
    ];
    for prefix in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(prefix)),
            "{prefix} missing from {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    assert!(
        problems.iter().any(|p| p.contains("does not match")),
        "{problems:#?}"
    );
    let all = problems.join("\n");
    assert!(!all.contains(SECRET) && !all.contains("too-short"), "{all}");
}

#[test]
fn new_hs256_secret_of_31_bytes_is_error_and_32_is_ok() {
    let mut key = hs_key(None);
    key.secret = Some("x".repeat(31));
    assert!(JwtVerifier::new(&config(vec![key.clone()])).is_err());
    key.secret = Some("x".repeat(32));
    assert!(JwtVerifier::new(&config(vec![key])).is_ok());
}

#[test]
fn new_public_key_of_wrong_type_is_error() {
    for (alg, file) in [
        ("RS256", "ec_p256_public.pem"),
        ("ES256", "rsa_public.pem"),
        ("EdDSA", "ec_p256_public.pem"),
        ("RS256", "rsa_private.pem"),
    ] {
        let problems =
            JwtVerifier::new(&config(vec![pk_key(None, alg, file, None)])).expect_err("invalid");
        assert!(
            problems[0].starts_with("auth.jwt.keys[0].public_key_file:"),
            "{alg} {file}: {problems:?}"
        );
    }
}

#[test]
fn debug_never_prints_the_secret() {
    let cfg = config(vec![hs_key(Some("hs")), rsa_key(Some("rsa"))]);
    let v = JwtVerifier::new(&cfg).expect("valid");
    for text in [
        format!("{cfg:?}"),
        format!("{:?}", cfg.keys[0]),
        format!("{v:?}"),
    ] {
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("BEGIN"), "{text}");
    }
    assert!(format!("{:?}", cfg.keys[0]).contains("<redacted>"));
}
