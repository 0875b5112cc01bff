//! Reload in-process, over facts in memory: a valid configuration goes into
//! force for the next decision, an invalid one or one that changes a
//! restart-only setting leaves the running one, each counted; a decision
//! under way finishes on the snapshot it started with.

use std::sync::Arc;

use uuid::Uuid;

use super::*;
use crate::answer::{DenyReason, Outcome};
use crate::authz::Decision;
use crate::model::UserStatus;
use crate::testkit::procs::TempDir;
use crate::testkit::{AuthorizerBuilder, Check, Held, MemorySource, Token, config};

/// A route table with one public route and one resource route.
const ROUTES_A: &str = "routes:\n  - methods: [GET]\n    path: /open\n    access: public\n  - methods: [GET]\n    path: /g/{id}\n    access: resource\n    resource: generation\n    action: read\n";
/// The same without the public route.
const ROUTES_B: &str = "routes:\n  - methods: [GET]\n    path: /g/{id}\n    access: resource\n    resource: generation\n    action: read\n";

/// A reloader over `source` running `yaml`, and the metrics it counts into.
fn reloader<S: FactSource>(yaml: &str, source: S) -> (Reloader<S>, Metrics) {
    let metrics = Metrics::new();
    let running = config(yaml);
    let authorizer = AuthorizerBuilder::new(running.clone())
        .metrics(&metrics)
        .build(source);
    let reloader = Reloader::new(
        authorizer,
        running,
        ConfigSource::process(None),
        metrics.clone(),
    );
    (reloader, metrics)
}

fn reloads(metrics: &Metrics, result: &str) -> u64 {
    metrics.config_reloads.with_label_values(&[result]).get()
}

async fn decide<S: FactSource>(reloader: &Reloader<S>, check: &Check) -> Decision {
    check
        .decide(&reloader.authorizer, None)
        .await
        .expect("decided")
}

#[tokio::test]
async fn reload_with_new_routes_changes_the_next_answer() {
    let dir = TempDir::new("reload-routes");
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, ROUTES_A).expect("write routes");
    let yaml = format!("routes_file: {}\n", routes.display());
    let (reloader, metrics) = reloader(&yaml, MemorySource::new());
    let open = Check::new("GET", "/open");
    assert_eq!(decide(&reloader, &open).await.outcome, Outcome::Allow(None));

    std::fs::write(&routes, ROUTES_B).expect("rewrite routes");
    let reloaded = reloader
        .install(Ok(config(&yaml)), "test")
        .expect("applied");
    assert_eq!(reloaded.routes, routes.display().to_string());
    assert_eq!(
        decide(&reloader, &open).await.outcome,
        Outcome::Deny(DenyReason::NoRoute)
    );
    assert_eq!(reloads(&metrics, "applied"), 1);
}

#[tokio::test]
async fn reload_of_an_invalid_config_keeps_the_running_one_and_counts_an_error() {
    let dir = TempDir::new("reload-invalid");
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, ROUTES_A).expect("write routes");
    let yaml = format!("routes_file: {}\n", routes.display());
    let (reloader, metrics) = reloader(&yaml, MemorySource::new());

    // A broken route table and a bad setting: both reported, nothing applied.
    std::fs::write(&routes, "routes: [").expect("break routes");
    let next = Config::from_yaml(&format!("{yaml}decision:\n  allow_log_sample: 2\n"), |_| {
        Some("postgres://unused@127.0.0.1:1/x".to_owned())
    });
    let err = reloader.install(next, "test").expect_err("refused");
    let ReloadError::Invalid(problems) = &err else {
        panic!("want Invalid, got {err:?}");
    };
    let text = problems.to_string();
    assert!(text.contains("routes_file"), "{text}");
    assert!(text.contains("decision.allow_log_sample"), "{text}");
    assert_eq!(err.result(), "error");
    assert_eq!(
        decide(&reloader, &Check::new("GET", "/open")).await.outcome,
        Outcome::Allow(None),
        "the running routes stay"
    );
    assert_eq!(
        (reloads(&metrics, "error"), reloads(&metrics, "applied")),
        (1, 0)
    );
}

#[tokio::test]
async fn reload_that_changes_a_restart_only_setting_is_refused_naming_it() {
    let (reloader, metrics) = reloader("", MemorySource::new());
    let err = reloader
        .install(
            Ok(config(
                "cache:\n  max_facts: 7\ndecision:\n  dry_run: true\n",
            )),
            "test",
        )
        .expect_err("refused");
    assert!(
        matches!(&err, ReloadError::RestartRequired(names) if names == &["cache"]),
        "{err:?}"
    );
    assert!(
        !reloader.authorizer.snapshot().settings.dry_run,
        "nothing applied"
    );
    assert_eq!(reloads(&metrics, "restart_required"), 1);
    // The running configuration is what the next reload compares with.
    assert_eq!(reloader.current().cache.max_facts, 200_000);
}

#[tokio::test]
async fn reload_puts_new_jwt_keys_into_force_and_drops_tokens_of_the_old() {
    let (reloader, _) = reloader("", MemorySource::new());
    let user = Uuid::new_v4();
    let check = Check::new("GET", "/api/v1/users/profile");
    let old = Token::new(user).mint(&config("").jwt);
    // Verified (and cached) under the running key: then the user fact decides.
    let d = decide(&reloader, &check.clone().bearer(&old)).await;
    assert_eq!(d.outcome, Outcome::Deny(DenyReason::UnknownUser));

    let other = "auth:\n  jwt:\n    issuer: velro\n    audience: velro-api\n    keys:\n      - kid: next\n        alg: HS256\n        secret: reload-test-secret-5GvQ2xWkR9tLmB7pZcY3nJ8hD4fS6aE1\n";
    // The kit's environment would put its own secret into any HS256 key.
    let mut next = config("");
    next.jwt = Config::from_yaml(other, |name| {
        (name == crate::config::ENV_DATABASE_URL)
            .then(|| "postgres://unused@127.0.0.1:1/x".to_owned())
    })
    .expect("auth config")
    .jwt;
    let fresh = Token::new(user).mint(&next.jwt);
    reloader.install(Ok(next), "test").expect("applied");
    assert_eq!(
        decide(&reloader, &check.clone().bearer(&old)).await.outcome,
        Outcome::Deny(DenyReason::InvalidToken),
        "a token of the old key, cached before, fails at once"
    );
    assert_eq!(
        decide(&reloader, &check.bearer(&fresh)).await.outcome,
        Outcome::Deny(DenyReason::UnknownUser),
        "a token of the new key verifies"
    );
}

#[tokio::test]
async fn decision_under_way_finishes_on_the_snapshot_it_started_with() {
    let source = Held::new(MemorySource::new());
    let user = Uuid::new_v4();
    source.inner().user(user, UserStatus::Active);
    let (reloader, _) = reloader("", source.clone());
    let reloader = Arc::new(reloader);
    // No role on a generation that does not exist: 404, unless dry run.
    let check = Check::new("GET", &format!("/api/v1/generations/{}", Uuid::new_v4()))
        .bearer(&Token::new(user).mint(&config("").jwt));

    let hold = source.hold_next("user");
    let in_flight = tokio::spawn({
        let (reloader, check) = (reloader.clone(), check.clone());
        async move { decide(&reloader, &check).await }
    });
    hold.reached().await;
    reloader
        .install(Ok(config("decision:\n  dry_run: true\n")), "test")
        .expect("applied");
    hold.release();
    let started_before = in_flight.await.expect("join");
    assert_eq!(
        started_before.outcome,
        Outcome::Deny(DenyReason::NotFound),
        "started before the reload: not dry run"
    );
    let started_after = decide(&reloader, &check).await;
    assert_eq!(started_after.outcome, Outcome::Allow(None));
    assert_eq!(started_after.dry_run_deny, Some(DenyReason::NotFound));
}
