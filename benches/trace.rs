//! What decision tracing costs the hot path, in process:
//!
//!     DATABASE_URL=postgres://... cargo bench --bench trace
//!
//! The deepest demo decision (`GET /api/v1/generations/…07` as bob, 10 facts
//! and a verified token, all in L1), decided by four authorizers that differ
//! only in tracing, every request carrying the same headers:
//!
//! | mode | tracing | the request's `traceparent` |
//! |---|---|---|
//! | `off` | off (no `tracing.otlp_endpoint`) | sampled (never read) |
//! | `on, no traceparent` | on, `sample_ratio: 0` | none |
//! | `on, proxy not sampled` | on, `sample_ratio: 0` | flag `00` |
//! | `on, sampled` | on | flag `01`: a span per decision, exported |
//!
//! The sampled spans go to a real OTLP receiver in this process (the test
//! kit's), through the sidecar's own batch exporter. Modes are interleaved in
//! rounds, so drift of the shared machine hits every mode alike. The run
//! creates and drops its own database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use velro_authz::answer::Outcome;
use velro_authz::authz::{Authorizer, Headers};
use velro_authz::metrics::Metrics;
use velro_authz::store::Store;
use velro_authz::telemetry::traces::{TracePipeline, TraceSettings};
use velro_authz::testkit::otlp::Receiver;
use velro_authz::testkit::procs::percentiles;
use velro_authz::testkit::{AuthorizerBuilder, Token, config};

const BOB: &str = "10000000-0000-4000-8000-000000000002";
const PATH: &str = "/api/v1/generations/40000000-0000-4000-8000-000000000007";
const ROUNDS: usize = 10;
const PER_ROUND: usize = 20_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo test --all-targets` runs bench targets too (in debug, without
    // `--bench`): measure nothing there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run it with `cargo bench --bench trace`");
        return Ok(());
    }
    let base = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL must be set")?;
    let db = format!("velro_bench_trace_{}", std::process::id());
    let mut admin = PgConnection::connect(&base).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await?;
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => return Err("DATABASE_URL has no database part".into()),
    };
    let result = run(&url).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    result
}

struct Mode {
    name: &'static str,
    authorizer: Arc<Authorizer<Store>>,
    headers: Headers,
    samples: Vec<Duration>,
    round_p50s: Vec<Duration>,
}

async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let pool = PgPool::connect(url).await?;
    velro_authz::store::MIGRATOR.run(&pool).await?;
    velro_authz::demo::seed(&pool).await?;
    let config = config("decision:\n  allow_log_sample: 0\n");
    let authorization = Token::new(BOB)
        .ttl(Duration::from_secs(3600))
        .bearer(&config.jwt);
    let receiver = Receiver::start().await;
    let metrics = Metrics::new();
    // Ratio 0: only the proxy's sampled flag makes a span.
    let traces = TracePipeline::start(
        &TraceSettings {
            otlp_endpoint: receiver.endpoint(),
            sample_ratio: 0.0,
            service_name: "velro-authz-bench".to_owned(),
        },
        &metrics,
    )?;
    let build = |tracer| {
        let builder = AuthorizerBuilder::new(config.clone());
        match tracer {
            Some(t) => builder.tracer(t),
            None => builder,
        }
        .build(Store::new(pool.clone()))
    };
    let headers = |traceparent: Option<&str>| {
        let mut pairs = vec![("authorization", authorization.as_str())];
        if let Some(tp) = traceparent {
            pairs.push(("traceparent", tp));
        }
        Headers::from_pairs(pairs)
    };
    let sampled_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let unsampled_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let mut modes = [
        ("off", build(None), headers(Some(sampled_tp))),
        (
            "on, no traceparent",
            build(Some(traces.tracer())),
            headers(None),
        ),
        (
            "on, proxy not sampled",
            build(Some(traces.tracer())),
            headers(Some(unsampled_tp)),
        ),
        (
            "on, sampled",
            build(Some(traces.tracer())),
            headers(Some(sampled_tp)),
        ),
    ]
    .map(|(name, authorizer, headers)| Mode {
        name,
        authorizer,
        headers,
        samples: Vec::with_capacity(ROUNDS * PER_ROUND),
        round_p50s: Vec::with_capacity(ROUNDS),
    });

    // Warm every L1 and check the decision is the expected allow.
    for mode in &modes {
        for _ in 0..5_000 {
            let req = mode.headers.request("GET", PATH, &[]);
            let d = mode.authorizer.check(&req, None).await?;
            assert!(
                matches!(d.outcome, Outcome::Allow(Some(_))),
                "{}: must allow",
                mode.name
            );
        }
    }

    for _ in 0..ROUNDS {
        for mode in &mut modes {
            let req = mode.headers.request("GET", PATH, &[]);
            let mut round = Vec::with_capacity(PER_ROUND);
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                mode.authorizer.check(&req, None).await?;
                round.push(t.elapsed());
            }
            round.sort();
            mode.round_p50s.push(round[round.len() / 2]);
            mode.samples.extend(round);
        }
    }

    println!(
        "machine: {} cores; decision: GET {PATH} as bob, all facts in L1; {ROUNDS} rounds x {PER_ROUND} per mode, interleaved\n",
        std::thread::available_parallelism()?
    );
    let off_p50 = p50(&modes[0].samples);
    for mode in &modes {
        let p = p50(&mode.samples);
        let mut rounds = mode.round_p50s.clone();
        rounds.sort();
        println!(
            "{:<22} {}  mean={:>7.2?}  p50 vs off: {:+.1}%  round p50s {:.2?}..{:.2?}",
            mode.name,
            percentiles(&mode.samples),
            mean(&mode.samples),
            (p.as_secs_f64() / off_p50.as_secs_f64() - 1.0) * 100.0,
            rounds[0],
            rounds[rounds.len() - 1],
        );
    }
    drop(modes);
    traces.shutdown().await;
    let exported = metrics.trace_spans.with_label_values(&["exported"]).get();
    let failed = metrics.trace_spans.with_label_values(&["failed"]).get();
    println!(
        "\nsampled decisions (warm-up included): {}; spans the collector received: {} \
         ({exported} exported, {failed} failed; the rest dropped at the full queue)",
        5_000 + ROUNDS * PER_ROUND,
        receiver.count(),
    );
    Ok(())
}

fn p50(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn mean(samples: &[Duration]) -> Duration {
    samples.iter().sum::<Duration>() / samples.len() as u32
}
