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
    key.secret = Some("V21AAaTGyFVwvpC2YWU09Sq6HyAVciek".to_owned());
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

// ---- HS256 secrets: placeholders and guessable values ----

use super::{DEMO_SECRET, check_hs256_secret, estimated_entropy_bits};

/// Secrets as commonly generated: 32 random bytes, base64 or hex.
const GOOD: [&str; 3] = [
    "3q2+7wAAAAC0x8gXnLkU4m1Qe9sRvTtZ2pYfA0bcHdI=",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "V21AAaTGyFVwvpC2YWU09Sq6HyAVciek",
];

#[test]
fn check_hs256_secret_random_secrets_are_accepted() {
    for secret in GOOD {
        assert_eq!(check_hs256_secret(secret, false), Ok(()), "{secret}");
    }
}

#[test]
fn check_hs256_secret_placeholders_are_refused_even_with_allow_demo_secret() {
    for secret in [
        "CHANGE-ME-to-at-least-32-random-bytes",
        "please_change_me_V21AAaTGyFVwvpC2YWU09Sq",
        "replace-me-with-V21AAaTGyFVwvpC2YWU09Sq6",
        "Placeholder.V21AAaTGyFVwvpC2YWU09Sq6HyAVc",
        "velro-demo-only-secret-V21AAaTGyFVwvpC2YWU",
    ] {
        for allow in [false, true] {
            let why = check_hs256_secret(secret, allow).expect_err(secret);
            assert!(why.starts_with("is a placeholder"), "{secret}: {why}");
            assert!(!why.contains(secret), "{why}");
        }
    }
}

#[test]
fn check_hs256_secret_demo_secret_only_with_allow_demo_secret() {
    let why = check_hs256_secret(DEMO_SECRET, false).expect_err("demo secret");
    assert!(why.contains("auth.jwt.allow_demo_secret"), "{why}");
    assert!(!why.contains(DEMO_SECRET), "{why}");
    assert_eq!(check_hs256_secret(DEMO_SECRET, true), Ok(()));
}

#[test]
fn check_hs256_secret_guessable_secrets_are_refused() {
    for secret in [
        "x".repeat(32),
        "ab".repeat(20),
        "passwordpasswordpasswordpassword".to_owned(),
        "0123456789abcdef0123456789abcdef".to_owned(),
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".to_owned(),
        "0123456789".repeat(4),
        // A random half repeated: the repeat adds nothing.
        "V21AAaTGyFVwvpC2V21AAaTGyFVwvpC2V21AAaTG".to_owned(),
        // Long runs of one character.
        "11111111112222222222333333333344444444445".to_owned(),
    ] {
        let why = check_hs256_secret(&secret, true).expect_err(&secret);
        assert!(why.starts_with("too predictable"), "{secret}: {why}");
        assert!(!why.contains(&secret), "{why}");
    }
}

#[test]
fn new_guessable_secret_names_the_key_and_never_prints_it() {
    let mut key = hs_key(Some("hs"));
    key.secret = Some("0123456789abcdef0123456789abcdef".to_owned());
    let problems = JwtVerifier::new(&config(vec![key])).expect_err("guessable");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("auth.jwt.keys[0].secret: too predictable"),
        "{problems:?}"
    );
    assert!(
        !problems[0].contains("0123456789abcdef0123"),
        "{problems:?}"
    );
}

#[test]
fn estimated_entropy_bits_of_repo_test_secrets_pass() {
    // The secrets the test suites use must start the service.
    assert!(estimated_entropy_bits(SECRET.as_bytes()) >= 128.0);
}

proptest::proptest! {
    /// Every secret made the way the docs say (32 random bytes, base64) passes.
    #[test]
    fn check_hs256_secret_32_random_bytes_in_base64_always_pass(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD.encode(bytes);
        proptest::prop_assert_eq!(check_hs256_secret(&secret, false), Ok(()), "{}", secret);
    }

    #[test]
    fn estimated_entropy_bits_never_panics(secret in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let bits = estimated_entropy_bits(&secret);
        proptest::prop_assert!(bits.is_finite() && bits >= 0.0);
    }
}
