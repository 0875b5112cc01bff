use std::collections::HashMap;

use super::*;

const HMAC_KEY: &str = "l2-hmac-key-for-tests-0123456789abcdef";
const SECRET: &str = "config-unit-secret-AztFVDvplic45EOkALPPusMl3R2GoYgT";

fn env(map: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = map
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn config_defaults_with_env_are_valid() {
    let cfg = Config::from_yaml(
        "",
        env(&[
            ("DATABASE_URL", "postgres://u:pw@localhost/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ]),
    )
    .expect("valid");
    assert_eq!(cfg.grpc_addr.to_string(), "127.0.0.1:9191");
    assert_eq!(cfg.http_addr.to_string(), "127.0.0.1:8181");
    assert_eq!(cfg.cache.ttl, Duration::from_secs(300));
    assert_eq!(cfg.cache.negative_ttl, Duration::from_secs(30));
    assert!(!cfg.decision.dry_run);
}

#[test]
fn config_metrics_addr_is_off_by_default_and_set_by_file_or_env() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    let off = Config::from_yaml("", env(&base)).expect("valid");
    assert_eq!(off.metrics_addr, None);
    let file = Config::from_yaml("metrics_addr: 0.0.0.0:9464\n", env(&base)).expect("valid");
    assert_eq!(
        file.metrics_addr,
        Some("0.0.0.0:9464".parse().expect("addr"))
    );
    let mut with = base.to_vec();
    with.push(("VELRO_AUTHZ_METRICS_ADDR", "127.0.0.1:9465"));
    let over = Config::from_yaml("metrics_addr: 0.0.0.0:9464\n", env(&with)).expect("valid");
    assert_eq!(
        over.metrics_addr,
        Some("127.0.0.1:9465".parse().expect("addr"))
    );
}

#[test]
fn config_metrics_addr_must_be_an_address_of_its_own() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    for yaml in ["metrics_addr: nope\n", "metrics_addr: 127.0.0.1:8181\n"] {
        let err = Config::from_yaml(yaml, env(&base)).expect_err(yaml);
        assert!(
            err.to_string()
                .contains("metrics_addr / VELRO_AUTHZ_METRICS_ADDR"),
            "{err}"
        );
    }
}

#[test]
fn config_reports_every_error_at_once() {
    let yaml = "grpc_addr: nope\ncache:\n  max_facts: 0\ndecision:\n  allow_log_sample: 2\n";
    let err = Config::from_yaml(yaml, env(&[])).expect_err("invalid");
    let text = err.to_string();
    for setting in [
        "grpc_addr",
        "DATABASE_URL",
        "cache.max_facts",
        "decision.allow_log_sample",
        "auth.jwt",
    ] {
        assert!(text.contains(setting), "{setting} missing from {text}");
    }
}

#[test]
fn config_redis_is_off_without_url_and_on_with_redis_url() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    let off = Config::from_yaml("", env(&base)).expect("valid");
    assert!(off.redis.is_none());
    assert!(off.rate_limit.is_none());
    let mut with = base.to_vec();
    with.push(("REDIS_URL", "redis://:hunter2@cache:6379/0"));
    with.push(("VELRO_AUTHZ_REDIS_HMAC_KEY", HMAC_KEY));
    let on = Config::from_yaml("redis:\n  key_prefix: \"{v}:\"\n", env(&with)).expect("valid");
    let redis = on.redis.as_ref().expect("redis on");
    assert_eq!(redis.key_prefix, "{v}:");
    assert_eq!(redis.timeout, Duration::from_millis(100));
    assert_eq!(on.l2.ttl, Duration::from_secs(900));
    assert_eq!(on.l2.negative_ttl, Duration::from_secs(30));
    assert!(!format!("{on:?}").contains("hunter2"), "password redacted");
    assert!(on.l2.hmac_key.is_some());
    assert!(!format!("{on:?}").contains(HMAC_KEY), "hmac key redacted");
}

#[test]
fn config_redis_breaker_and_rate_limit_errors_name_their_settings() {
    let yaml = "redis:\n  url: http://cache\n  timeout_ms: 0\nbreaker:\n  failures: 0\nrate_limit:\n  per_second: -1\n  burst: 0\ndecision:\n  max_in_flight: 0\n";
    let err = Config::from_yaml(
        yaml,
        env(&[
            ("DATABASE_URL", "postgres://x@h/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ]),
    )
    .expect_err("invalid");
    let text = err.to_string();
    for setting in [
        "redis.url / REDIS_URL",
        "redis.timeout_ms",
        "breaker.failures",
        "rate_limit.per_second",
        "rate_limit.burst",
        "decision.max_in_flight",
    ] {
        assert!(text.contains(setting), "{setting} missing from {text}");
    }
}

#[test]
fn config_failed_auth_limit_is_on_by_default_and_alone_enables_no_principal_limit() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    let default = Config::from_yaml("", env(&base)).expect("valid");
    assert_eq!(default.failed_auth_per_minute, 600);
    let off =
        Config::from_yaml("rate_limit:\n  failed_auth_per_minute: 0\n", env(&base)).expect("valid");
    assert_eq!(off.failed_auth_per_minute, 0);
    assert!(off.rate_limit.is_none(), "per-principal limits stay off");
    let err = Config::from_yaml("rate_limit:\n  burst: 5\n", env(&base)).expect_err("burst alone");
    assert!(
        err.to_string()
            .contains("rate_limit.burst: needs rate_limit.per_second"),
        "{err}"
    );
}

#[test]
fn config_rate_limit_burst_defaults_to_one_second_of_rate() {
    let cfg = Config::from_yaml(
        "rate_limit:\n  per_second: 20.5\n",
        env(&[
            ("DATABASE_URL", "postgres://x@h/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ]),
    )
    .expect("valid");
    let rl = cfg.rate_limit.expect("on");
    assert_eq!((rl.per_second, rl.burst, rl.lease), (20.5, 21, 2));
}

#[test]
fn config_rate_limit_lease_defaults_to_a_tenth_of_a_second_within_the_burst() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    let lease = |yaml: &str| {
        Config::from_yaml(yaml, env(&base))
            .expect("valid")
            .rate_limit
            .expect("on")
            .lease
    };
    assert_eq!(lease("rate_limit:\n  per_second: 0.5\n"), 1);
    assert_eq!(lease("rate_limit:\n  per_second: 1000\n"), 100);
    assert_eq!(lease("rate_limit:\n  per_second: 1000\n  burst: 40\n"), 40);
    assert_eq!(lease("rate_limit:\n  per_second: 1000\n  lease: 1\n"), 1);
    for yaml in [
        "rate_limit:\n  per_second: 10\n  lease: 0\n",
        "rate_limit:\n  per_second: 10\n  burst: 5\n  lease: 6\n",
        "rate_limit:\n  lease: 5\n",
    ] {
        let err = Config::from_yaml(yaml, env(&base)).expect_err(yaml);
        assert!(
            err.to_string().contains("rate_limit.lease"),
            "{yaml}: {err}"
        );
    }
}

#[test]
fn config_load_database_needs_no_jwt_secret() {
    let db = Config::load_database(None, env(&[("DATABASE_URL", "postgres://x@h/db")]))
        .expect("migrate needs only the database");
    assert_eq!(db.url, "postgres://x@h/db");
    let err = Config::load_database(None, env(&[])).expect_err("no url");
    assert!(err.to_string().contains("DATABASE_URL"), "{err}");
}

#[test]
fn config_forward_auth_headers_default_and_override() {
    let env = env(&[
        ("DATABASE_URL", "postgres://u@localhost/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ]);
    let cfg = Config::from_yaml("", &env).expect("valid");
    assert_eq!(cfg.forward_auth, ForwardAuthSettings::default());
    assert_eq!(cfg.forward_auth.original_uri_header, "x-original-uri");
    let yaml = "forward_auth:\n  original_method_header: X-Orig-Method\n  original_uri_header: X-Orig-Uri\n";
    let cfg = Config::from_yaml(yaml, &env).expect("valid");
    assert_eq!(cfg.forward_auth.original_method_header, "x-orig-method");
    assert_eq!(cfg.forward_auth.original_uri_header, "x-orig-uri");
}

#[test]
fn config_forward_auth_bad_header_names_are_reported_by_setting() {
    let yaml =
        "forward_auth:\n  original_method_header: \"X Method\"\n  original_uri_header: \"\"\n";
    let err = Config::from_yaml(yaml, env(&[])).expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("forward_auth.original_method_header"),
        "{text}"
    );
    assert!(text.contains("forward_auth.original_uri_header"), "{text}");
}

#[test]
fn config_jwt_section_without_issuer_or_audience_names_both() {
    let yaml = format!("auth:\n  jwt:\n    keys:\n      - alg: HS256\n        secret: {SECRET}\n");
    let err = Config::from_yaml(&yaml, env(&[("DATABASE_URL", "postgres://x@h/db")]))
        .expect_err("issuer and audience are required");
    let text = err.to_string();
    assert!(text.contains("auth.jwt.issuer: required"), "{text}");
    assert!(text.contains("auth.jwt.audience: required"), "{text}");
    let any = format!(
        "auth:\n  jwt:\n    issuer: any\n    audience: any\n    keys:\n      - alg: HS256\n        secret: {SECRET}\n"
    );
    Config::from_yaml(&any, env(&[("DATABASE_URL", "postgres://x@h/db")]))
        .expect("`any` is an explicit choice");
}

#[test]
fn config_placeholder_or_guessable_secret_is_refused_naming_its_setting() {
    let base = [("DATABASE_URL", "postgres://x@h/db")];
    for (secret, why) in [
        ("CHANGE-ME-to-at-least-32-random-bytes", "placeholder"),
        (crate::authn::jwt::DEMO_SECRET, "demo secret"),
        ("0123456789abcdef0123456789abcdef", "too predictable"),
        ("passwordpasswordpasswordpassword", "too predictable"),
    ] {
        let mut with = base.to_vec();
        with.push(("VELRO_AUTHZ_JWT_SECRET", secret));
        let text = Config::from_yaml("", env(&with))
            .expect_err(secret)
            .to_string();
        assert!(
            text.contains("VELRO_AUTHZ_JWT_SECRET (auth.jwt.keys[0].secret): "),
            "{text}"
        );
        assert!(text.contains(why), "{why} missing from {text}");
        assert!(!text.contains(secret), "the secret is printed: {text}");

        let yaml = format!(
            "auth:\n  jwt:\n    issuer: i\n    audience: a\n    keys:\n      - alg: HS256\n        secret: {secret}\n"
        );
        let text = Config::from_yaml(&yaml, env(&base))
            .expect_err(secret)
            .to_string();
        assert!(text.contains("auth.jwt.keys[0].secret: "), "{text}");
        assert!(!text.contains("VELRO_AUTHZ_JWT_SECRET"), "{text}");
        assert!(!text.contains(secret), "the secret is printed: {text}");
    }
}

#[test]
fn config_demo_secret_needs_allow_demo_secret_and_the_shipped_demo_config_sets_it() {
    let demo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/config.yaml"))
            .expect("demo config");
    assert!(demo.contains(crate::authn::jwt::DEMO_SECRET));
    let env = env(&[("DATABASE_URL", "postgres://x@h/db")]);
    Config::from_yaml(&demo, &env).expect("the demo config starts");
    let without = demo.replace("allow_demo_secret: true", "allow_demo_secret: false");
    let text = Config::from_yaml(&without, &env)
        .expect_err("demo secret without the flag")
        .to_string();
    assert!(
        text.contains("auth.jwt.keys[0].secret: is the demo secret"),
        "{text}"
    );
}

#[test]
fn config_unknown_field_is_rejected() {
    let err = Config::from_yaml("grpc_adr: 1.2.3.4:1\n", env(&[])).expect_err("invalid");
    assert!(err.to_string().contains("grpc_adr"), "{err}");
}

#[test]
fn config_debug_never_prints_secrets() {
    let cfg = Config::from_yaml(
        "",
        env(&[
            ("DATABASE_URL", "postgres://u:hunter2hunter2@localhost/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ]),
    )
    .expect("valid");
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("hunter2hunter2"), "{debug}");
    assert!(!debug.contains(SECRET), "{debug}");
}

proptest::proptest! {
    /// Whatever the file says, loading it answers Ok or a config error.
    #[test]
    fn config_from_arbitrary_yaml_never_panics(text in ".{0,400}") {
        let _ = Config::from_yaml(&text, env(&[("VELRO_AUTHZ_JWT_SECRET", SECRET)]));
    }

    #[test]
    fn config_from_yamlish_text_never_panics(
        key in "(grpc_addr|database|cache|decision|auth|routes_file|listener|log_format)",
        value in "[ -~]{0,60}",
    ) {
        let _ = Config::from_yaml(&format!("{key}: {value}\n"), env(&[]));
    }
}

#[test]
fn redact_url_hides_password_only() {
    assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
    assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
}

#[test]
fn config_admin_is_off_unless_configured_and_needs_a_token_file() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    assert!(
        Config::from_yaml("", env(&base))
            .expect("valid")
            .admin
            .is_none()
    );
    let err = Config::from_yaml("admin:\n  addr: 127.0.0.1:9192\n", env(&base))
        .expect_err("no token file");
    assert!(err.to_string().contains("admin.token_file"), "{err}");

    let path = std::env::temp_dir().join(format!("velro-admin-{}", uuid::Uuid::new_v4()));
    let token = "admin-token-0123456789abcdef0123456789";
    std::fs::write(&path, format!("{token}\n")).expect("write");
    let yaml = format!("admin:\n  token_file: {}\n", path.display());
    let cfg = Config::from_yaml(&yaml, env(&base)).expect("valid");
    let admin = cfg.admin.as_ref().expect("on");
    assert_eq!(
        admin.addr.to_string(),
        DEFAULT_ADMIN_ADDR,
        "loopback by default"
    );
    assert!(admin.token.verify(token.as_bytes()), "newline trimmed");
    assert!(!format!("{cfg:?}").contains(token), "token never printed");
    let clash = format!("{yaml}  addr: 127.0.0.1:9191\n");
    let err = Config::from_yaml(&clash, env(&base)).expect_err("the Check port");
    assert!(err.to_string().contains("admin.addr"), "{err}");

    std::fs::write(&path, "short\n").expect("write");
    let err = Config::from_yaml(&yaml, env(&base)).expect_err("short token");
    assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    assert!(!err.to_string().contains("short\n"), "{err}");
    std::fs::remove_file(&path).expect("remove");
}

#[test]
fn config_redis_hmac_key_file_is_read_without_its_newline() {
    let path = std::env::temp_dir().join(format!("velro-hmac-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, format!("{HMAC_KEY}\n")).expect("write");
    let file = path.display().to_string();
    let cfg = Config::from_yaml(
        "",
        env(&[
            ("DATABASE_URL", "postgres://x@h/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("VELRO_AUTHZ_REDIS_HMAC_KEY_FILE", &file),
        ]),
    )
    .expect("valid");
    assert_eq!(cfg.l2.hmac_key.expect("key").len(), HMAC_KEY.len());
    std::fs::remove_file(&path).expect("remove");
    let err = Config::from_yaml(
        &format!("redis:\n  hmac_key_file: {file}\n"),
        env(&[
            ("DATABASE_URL", "postgres://x@h/db"),
            ("VELRO_AUTHZ_JWT_SECRET", SECRET),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ]),
    )
    .expect_err("missing file");
    assert!(err.to_string().contains("redis.hmac_key_file"), "{err}");
}

#[test]
fn config_redis_needs_an_hmac_key_unless_values_are_trusted_by_name() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ];
    let err = Config::from_yaml("", env(&base)).expect_err("no key");
    assert!(err.to_string().contains("redis.hmac_key"), "{err}");
    let trusted = Config::from_yaml("redis:\n  allow_unauthenticated_values: true\n", env(&base))
        .expect("Redis trusted by name");
    assert!(trusted.l2.hmac_key.is_none());
    let short =
        Config::from_yaml("redis:\n  hmac_key: too-short\n", env(&base)).expect_err("short key");
    assert!(short.to_string().contains("at least 32 bytes"), "{short}");
    assert!(!short.to_string().contains("too-short"), "{short}");
    let both = Config::from_yaml(
        &format!("redis:\n  hmac_key: {HMAC_KEY}\n  allow_unauthenticated_values: true\n"),
        env(&base),
    )
    .expect_err("contradiction");
    assert!(both.to_string().contains("contradicts"), "{both}");
    // No Redis, no key needed.
    let no_redis = [base[0], base[1]];
    assert!(Config::from_yaml("", env(&no_redis)).is_ok());
}

#[test]
fn config_remote_redis_without_password_is_refused_unless_allowed() {
    let load = |yaml: &str, url: &str| {
        Config::from_yaml(
            yaml,
            env(&[
                ("DATABASE_URL", "postgres://x@h/db"),
                ("VELRO_AUTHZ_JWT_SECRET", SECRET),
                ("VELRO_AUTHZ_REDIS_HMAC_KEY", HMAC_KEY),
                ("REDIS_URL", url),
            ]),
        )
    };
    let err = load("", "redis://cache:6379/0").expect_err("refused");
    assert!(err.to_string().contains("no password"), "{err}");
    assert!(err.to_string().contains("rediss://"), "{err}");
    assert!(load("redis:\n  allow_insecure: true\n", "redis://cache:6379").is_ok());
    for ok in [
        "redis://:pw@cache:6379/0",
        "rediss://:pw@cache:6380",
        "redis://127.0.0.1:6379",
        "redis://localhost:6379",
    ] {
        assert!(load("", ok).is_ok(), "{ok}");
    }
}

#[test]
fn config_tracing_is_off_without_endpoint_and_on_with_file_or_env() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    let off = Config::from_yaml("tracing:\n  sample_ratio: 0.5\n", env(&base)).expect("valid");
    assert_eq!(off.tracing, None);
    let on = Config::from_yaml(
        "tracing:\n  otlp_endpoint: http://otel-agent:4317\n",
        env(&base),
    )
    .expect("valid");
    assert_eq!(
        on.tracing,
        Some(TraceSettings {
            otlp_endpoint: "http://otel-agent:4317".to_owned(),
            sample_ratio: 0.01,
            service_name: "velro-authz".to_owned(),
        })
    );
    let mut with = base.to_vec();
    with.push(("VELRO_AUTHZ_OTLP_ENDPOINT", "http://127.0.0.1:4317"));
    let over = Config::from_yaml(
        "tracing:\n  otlp_endpoint: http://otel-agent:4317\n  sample_ratio: 1\n  service_name: authz-eu\n",
        env(&with),
    )
    .expect("valid");
    let t = over.tracing.expect("on");
    assert_eq!(t.otlp_endpoint, "http://127.0.0.1:4317");
    assert_eq!((t.sample_ratio, t.service_name.as_str()), (1.0, "authz-eu"));
}

#[test]
fn config_tracing_errors_name_their_settings_and_never_echo_credentials() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    let cases = [
        (
            "otlp_endpoint: https://collector:4317",
            "https is not supported",
        ),
        (
            "otlp_endpoint: http://user:hunter2@collector:4317",
            "must not carry credentials",
        ),
        ("otlp_endpoint: collector:4317", "expected http://host:port"),
        (
            "otlp_endpoint: http://collector",
            "expected http://host:port",
        ),
        (
            "otlp_endpoint: http://collector:4317/v1/traces",
            "expected http://host:port",
        ),
        (
            "otlp_endpoint: http://c:4317\n  sample_ratio: 1.5",
            "tracing.sample_ratio",
        ),
        (
            "otlp_endpoint: http://c:4317\n  sample_ratio: -0.1",
            "tracing.sample_ratio",
        ),
        (
            "otlp_endpoint: http://c:4317\n  service_name: ' '",
            "tracing.service_name",
        ),
    ];
    for (yaml, expected) in cases {
        let err = Config::from_yaml(&format!("tracing:\n  {yaml}\n"), env(&base))
            .expect_err(yaml)
            .to_string();
        assert!(err.contains(expected), "{yaml}: {err}");
        assert!(!err.contains("hunter2"), "{yaml}: {err}");
    }
    let err = Config::from_yaml("tracing:\n  endpoint: http://c:4317\n", env(&base))
        .expect_err("unknown field")
        .to_string();
    assert!(err.contains("endpoint"), "{err}");
}

#[test]
fn config_identity_token_is_off_by_default_and_on_with_a_key_file() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    let off = Config::from_yaml("", env(&base)).expect("valid");
    assert!(off.identity_token.is_none());
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keys/ed25519_private.pem"
    );
    let on = Config::from_yaml(
        &format!("identity_token:\n  key_file: {key}\n  audience: velro-app\n"),
        env(&base),
    )
    .expect("valid");
    let signer = on.identity_token.expect("signer");
    assert_eq!(signer.audience(), "velro-app");
    assert_eq!(signer.issuer(), "velro-authz");
}

#[test]
fn config_identity_token_errors_name_their_settings() {
    let base = [
        ("DATABASE_URL", "postgres://x@h/db"),
        ("VELRO_AUTHZ_JWT_SECRET", SECRET),
    ];
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keys/ec_p256_private.pem"
    );
    for (yaml, expected) in [
        (
            "identity_token:\n  audience: velro-app\n".to_owned(),
            "identity_token.key_file: required",
        ),
        (
            format!("identity_token:\n  key_file: {key}\n  audience: velro-app\n"),
            "not an Ed25519 private key",
        ),
        (
            format!("identity_token:\n  key_file: {key}\n"),
            "identity_token.audience: required",
        ),
        (
            "identity_token:\n  key_file: /nonexistent/velro.pem\n  audience: a\n".to_owned(),
            "identity_token.key_file /nonexistent/velro.pem: entity not found",
        ),
        ("identity_token:\n  secret: s\n".to_owned(), "unknown field"),
    ] {
        let err = Config::from_yaml(&yaml, env(&base)).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains(expected), "{yaml}: {text}");
    }
}
