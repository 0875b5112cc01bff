//! Decision traces end to end: a sidecar configured with `tracing:` (through
//! the config parser) exports over OTLP/gRPC to a real receiver run by the
//! test; Checks carry the proxy's `traceparent`. Spans are flushed by the
//! sidecar's own shutdown, so nothing here waits on a clock.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sqlx::PgPool;
use velro_authz::telemetry::traces::DECISION_SPAN;
use velro_authz::testkit::otlp::{ReceivedSpan, Receiver};
use velro_authz::testkit::procs::free_port;
use velro_authz::testkit::{self, Check, send_check};

use super::support::{Harness, config, demo::*, redis_yaml, start_with, unique_prefix};

/// The proxy's trace: sampled, then not sampled.
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PROXY_SPAN: &str = "b7ad6b7169203331";
const TRACE_UNSAMPLED: &str = "11111111111111111111111111111111";
const TRACE_HTTP: &str = "22222222222222222222222222222222";
const TRACE_DENY: &str = "33333333333333333333333333333333";
/// Envoy's span of the Check call, in the call's metadata.
const TRACE_ENVOY: &str = "44444444444444444444444444444444";
const ENVOY_SPAN: &str = "e457b5a2e4d86bd1";

fn traceparent(trace: &str, flags: &str) -> String {
    format!("00-{trace}-{PROXY_SPAN}-{flags}")
}

fn tracing_yaml(receiver: &Receiver, ratio: &str) -> String {
    format!(
        "tracing:\n  otlp_endpoint: {}\n  sample_ratio: {ratio}\n  service_name: velro-authz-under-test\n",
        receiver.endpoint()
    )
}

/// One gRPC Check of `path` by `user` with `traceparent`, if any; returns the
/// decision id.
async fn check(h: &Harness, user: &str, path: &str, traceparent: Option<&str>) -> (u16, String) {
    let auth = format!("Bearer {}", h.token(user));
    let mut check = Check::new("GET", path).header("authorization", &auth);
    if let Some(tp) = traceparent {
        check = check.header("traceparent", tp);
    }
    let answer = testkit::Answer::read(
        send_check(&h.client, &check, Some(Duration::from_secs(10)))
            .await
            .expect("Check answers"),
    );
    (answer.status, answer.metadata_decision_id)
}

fn decision_spans(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.name == DECISION_SPAN).collect()
}

fn children<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id)
        .collect()
}

/// No attribute of any span holds a secret or a raw id.
fn assert_nothing_secret(spans: &[ReceivedSpan], secrets: &[&str]) {
    for span in spans {
        for (key, value) in &span.attributes {
            for secret in secrets {
                assert!(
                    !value.contains(secret),
                    "{}: attribute {key} = {value:?} holds {secret:?}",
                    span.name
                );
            }
        }
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn traceparent_in_the_check_request_starts_the_exported_decision_trace(pool: PgPool) {
    let receiver = Receiver::start().await;
    // Ratio 0: only requests the proxy sampled are traced.
    let h = start_with(pool, config(&tracing_yaml(&receiver, "0"))).await;
    let path = format!("/api/v1/generations/{GEN_GRANDCHILD}");

    // Cold: L1 is empty, every fact comes from Postgres.
    let (status, decision_id) = check(&h, BOB, &path, Some(&traceparent(TRACE, "01"))).await;
    assert_eq!(status, 200);
    // Not sampled by the proxy, and no trace at all: no span at ratio 0.
    check(&h, BOB, &path, Some(&traceparent(TRACE_UNSAMPLED, "00"))).await;
    check(&h, BOB, &path, None).await;
    // A deny, warm.
    let (status, deny_id) = check(
        &h,
        ERIN,
        &format!("/api/v1/generations/{GEN_BOB}"),
        Some(&traceparent(TRACE_DENY, "01")),
    )
    .await;
    assert_eq!(status, 404);
    // The HTTP door (Envoy http_service) reads the same header.
    let token = h.token(BOB);
    let auth = format!("Bearer {token}");
    let tp = traceparent(TRACE_HTTP, "01");
    let reply = testkit::http::send(
        h.running.http_addr,
        "GET",
        &format!("/v1/check{path}"),
        &[("authorization", &auth), ("traceparent", &tp)],
        Vec::new(),
    )
    .await;
    assert_eq!(reply.status, 200);
    // Envoy's ext_authz client sends its own span as gRPC metadata: that is
    // the parent then, over the original request's header.
    let check = Check::new("GET", &path)
        .header("authorization", &auth)
        .header("traceparent", &traceparent(TRACE_UNSAMPLED, "01"));
    let mut request = tonic::Request::new(check.request());
    let envoy_tp = format!("00-{TRACE_ENVOY}-{ENVOY_SPAN}-01");
    request
        .metadata_mut()
        .insert("traceparent", envoy_tp.parse().expect("metadata value"));
    h.client
        .clone()
        .check(request)
        .await
        .expect("Check answers");
    let metrics = h.running.metrics.clone();

    // Shutdown flushes the batch exporter.
    h.running.shutdown().await;
    let spans = receiver.spans();
    let decisions = decision_spans(&spans);
    let traces: BTreeSet<&str> = decisions.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces,
        BTreeSet::from([TRACE, TRACE_DENY, TRACE_HTTP, TRACE_ENVOY]),
        "one decision span per sampled request, none for the others: {decisions:#?}"
    );
    assert_eq!(decisions.len(), 4, "{decisions:#?}");

    let cold = decisions
        .iter()
        .find(|s| s.trace_id == TRACE)
        .expect("cold span");
    assert_eq!(
        cold.parent_span_id, PROXY_SPAN,
        "continues the proxy's span"
    );
    assert_eq!(cold.service_name, "velro-authz-under-test");
    let attr = |s: &ReceivedSpan, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(attr(cold, "http.route"), "/api/v1/generations/{id}");
    assert_eq!(attr(cold, "http.request.method"), "GET");
    assert_eq!(attr(cold, "velro_authz.outcome"), "allow");
    assert_eq!(attr(cold, "velro_authz.reason"), "ok");
    assert_eq!(attr(cold, "http.response.status_code"), "200");
    assert_eq!(attr(cold, "velro_authz.decision_id"), decision_id);
    assert_eq!(attr(cold, "velro_authz.tiers"), "[postgres]");

    // Every fact of the cold decision is a Postgres fetch under it.
    let fetches = children(&spans, cold);
    let kinds: BTreeSet<String> = fetches
        .iter()
        .map(|s| {
            assert_eq!(s.name, "postgres.query", "{s:#?}");
            assert_eq!(s.trace_id, TRACE);
            assert_eq!(attr(s, "db.system.name"), "postgresql");
            attr(s, "velro_authz.fact_kind")
        })
        .collect();
    // The whole decision is one statement (the bundle): one fetch, kind `decision`.
    assert_eq!(kinds, BTreeSet::from(["decision".to_owned()]), "{spans:#?}");

    let deny = decisions
        .iter()
        .find(|s| s.trace_id == TRACE_DENY)
        .expect("deny span");
    assert_eq!(attr(deny, "velro_authz.outcome"), "deny");
    assert_eq!(attr(deny, "velro_authz.reason"), "not_found");
    assert_eq!(attr(deny, "http.response.status_code"), "404");
    assert_eq!(attr(deny, "velro_authz.decision_id"), deny_id);

    // Warm: everything from L1, nothing fetched.
    let http = decisions
        .iter()
        .find(|s| s.trace_id == TRACE_HTTP)
        .expect("http span");
    assert_eq!(attr(http, "velro_authz.tiers"), "[l1]");
    assert!(children(&spans, http).is_empty(), "{spans:#?}");

    let envoy = decisions
        .iter()
        .find(|s| s.trace_id == TRACE_ENVOY)
        .expect("envoy span");
    assert_eq!(envoy.parent_span_id, ENVOY_SPAN);

    assert_nothing_secret(&spans, &[&token, BOB, ERIN, GEN_GRANDCHILD, GEN_BOB]);
    assert!(metrics.trace_spans.with_label_values(&["exported"]).get() >= spans.len() as u64);
}

#[sqlx::test(migrations = "./migrations")]
async fn cold_decision_with_redis_shows_redis_and_postgres_fetches(pool: PgPool) {
    let receiver = Receiver::start().await;
    let prefix = unique_prefix("traces");
    // Ratio 1: requests with no traceparent start a root trace.
    let yaml = format!("{}{}", tracing_yaml(&receiver, "1"), redis_yaml(&prefix));
    let h = start_with(pool, config(&yaml)).await;
    let l2 = h
        .running
        .authorizer
        .facts()
        .l2()
        .cloned()
        .expect("L2 configured");
    h.eventually(Duration::from_secs(10), || {
        let l2 = l2.clone();
        async move { l2.usable() }
    })
    .await;
    let path = format!("/api/v1/generations/{GEN_BOB}");

    // Cold everywhere: Redis misses, Postgres answers, Redis is filled.
    let (status, first) = check(&h, BOB, &path, None).await;
    assert_eq!(status, 200);
    // Redis is filled after the answer: wait for it, then drop L1: Redis answers.
    h.running.authorizer.facts().fills_settled().await;
    h.running.authorizer.facts().flush_local();
    let (_, second) = check(&h, BOB, &path, None).await;
    h.running.shutdown().await;

    let spans = receiver.spans();
    let by_decision: HashMap<String, &ReceivedSpan> = decision_spans(&spans)
        .into_iter()
        .map(|s| (s.attributes["velro_authz.decision_id"].clone(), s))
        .collect();
    let cold = by_decision.get(&first).expect("first decision traced");
    assert!(cold.parent_span_id.is_empty(), "a root: {cold:#?}");
    assert_eq!(cold.attributes["velro_authz.tiers"], "[postgres]");
    let names: BTreeSet<(&str, &str)> = children(&spans, cold)
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.attributes
                    .get("velro_authz.result")
                    .map_or("-", String::as_str),
            )
        })
        .collect();
    assert_eq!(
        names,
        // Redis is filled after the answer, outside the decision's span.
        BTreeSet::from([("postgres.query", "-"), ("redis.get", "miss")]),
        "{spans:#?}"
    );

    let warm = by_decision.get(&second).expect("second decision traced");
    assert_eq!(warm.attributes["velro_authz.tiers"], "[l2]");
    let names: BTreeSet<(&str, &str)> = children(&spans, warm)
        .iter()
        .map(|s| (s.name.as_str(), s.attributes["velro_authz.result"].as_str()))
        .collect();
    assert_eq!(names, BTreeSet::from([("redis.get", "hit")]), "{spans:#?}");
    for fetch in spans.iter().filter(|s| s.name.starts_with("redis.")) {
        assert_eq!(fetch.attributes["db.system.name"], "redis");
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn unreachable_collector_counts_failed_spans_and_never_blocks_a_decision(pool: PgPool) {
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let yaml = format!("tracing:\n  otlp_endpoint: {endpoint}\n  sample_ratio: 1\n");
    let h = start_with(pool, config(&yaml)).await;
    let (status, _) = check(&h, BOB, &format!("/api/v1/generations/{GEN_BOB}"), None).await;
    assert_eq!(status, 200);
    let metrics = h.running.metrics.clone();
    h.running.shutdown().await;
    let failed = metrics.trace_spans.with_label_values(&["failed"]).get();
    assert!(failed >= 1, "the failed export is counted: {failed}");
    assert_eq!(
        metrics.trace_spans.with_label_values(&["exported"]).get(),
        0
    );
}
