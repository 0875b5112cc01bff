//! Decision latency and throughput, against a real Postgres.
//!
//!     scripts/bench.sh            (starts Postgres, runs this in release mode)
//!
//! Measures, in one run on one machine:
//! 1. in-process `Authorizer::check` with every fact in L1 (the hot path);
//! 2. the same decision with L1 flushed before each call (every fact read from
//!    Postgres): the baseline the hot path is quoted against;
//! 3. Checks over the real gRPC socket from concurrent clients: throughput and
//!    client-observed latency.
//!
//! Each run creates and drops its own database, so it never touches real data.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sqlx::{Connection, PgConnection};
use velro_authz::answer::Outcome;
use velro_authz::app::App;
use velro_authz::authz::AuthzRequest;
use velro_authz::metrics::Metrics;
use velro_authz::testkit::procs::percentiles;
use velro_authz::testkit::{Check, Token, config};

const BOB: &str = "10000000-0000-4000-8000-000000000002";
/// Generation 07: two parent hops, a team project, shares: the deepest demo decision.
const PATH: &str = "/api/v1/generations/40000000-0000-4000-8000-000000000007";

fn p50(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[s.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench
    // targets too (in debug, without it): measure nothing there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run it with `cargo bench --bench check` (scripts/bench.sh)");
        return Ok(());
    }
    let base = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL must be set (scripts/bench.sh sets it)")?;
    let db = format!("velro_bench_{}", std::process::id());
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

async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let redis = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let mut yaml = "decision:\n  allow_log_sample: 0\n".to_owned();
    if let Some(url) = &redis {
        yaml.push_str(&format!(
            "redis:\n  url: {url}\n  key_prefix: \"bench:{}:\"\n  hmac_key: \"bench-l2-hmac-key-0123456789abcdef0123\"\n",
            std::process::id()
        ));
    }
    let mut config = config(&yaml);
    config.database.url = url.to_owned();
    let authorization = Token::new(BOB)
        .ttl(Duration::from_secs(3600))
        .bearer(&config.jwt);
    let app = App::build(config, Metrics::new())?;
    velro_authz::store::MIGRATOR.run(app.store.pool()).await?;
    velro_authz::demo::seed(app.store.pool()).await?;
    let authorizer = app.authorizer.clone();
    let running = app.spawn(None).await?;
    let mut listener = running.listener.clone();
    listener.wait_for(|up| *up).await?;

    let req = AuthzRequest {
        method: "GET",
        path: PATH,
        authorization: Some(&authorization),
        api_key: None,
        largest_header: authorization.len(),
        ..Default::default()
    };
    let decision = authorizer.check(&req, None).await?;
    assert!(
        matches!(decision.outcome, Outcome::Allow(Some(_))),
        "bench decision must be an allow"
    );

    println!(
        "machine: {} cores; decision: GET {PATH} as bob (member via team, 2 parent hops)\n",
        std::thread::available_parallelism()?
    );

    // 1. Hot path: every fact and the verified token in L1.
    for _ in 0..10_000 {
        authorizer.check(&req, None).await?;
    }
    let mut hot = Vec::with_capacity(200_000);
    for _ in 0..200_000 {
        let t = Instant::now();
        authorizer.check(&req, None).await?;
        hot.push(t.elapsed());
    }
    println!("in-process, L1 hot:          {}", percentiles(&hot));

    // 2. Baseline: L1 flushed before every decision, so every fact comes from Postgres.
    let mut cold = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        authorizer.facts().flush();
        let t = Instant::now();
        authorizer.check(&req, None).await?;
        cold.push(t.elapsed());
    }
    println!("in-process, L1 flushed (PG): {}", percentiles(&cold));
    println!(
        "hot path p50 is {:.0}x faster than the Postgres path p50\n",
        p50(&cold).as_secs_f64() / p50(&hot).as_secs_f64()
    );

    // 2b. With Redis: L1 dropped before every decision, facts from the shared tier.
    if let Some(l2) = authorizer.facts().l2().cloned() {
        while !l2.usable() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        authorizer.facts().flush_local();
        authorizer.check(&req, None).await?;
        let mut warm = Vec::with_capacity(2_000);
        for _ in 0..2_000 {
            authorizer.facts().flush_local();
            let t = Instant::now();
            authorizer.check(&req, None).await?;
            warm.push(t.elapsed());
        }
        println!("in-process, L1 flushed (Redis): {}", percentiles(&warm));
        println!(
            "Redis path p50 is {:.1}x faster than the Postgres path p50\n",
            p50(&cold).as_secs_f64() / p50(&warm).as_secs_f64()
        );
    }

    // 3. Over the gRPC socket: C concurrent clients on their own HTTP/2 connections.
    let endpoint = format!("http://{}", running.grpc_addr);
    let check = Check::new("GET", PATH)
        .header("authorization", &authorization)
        .request();
    for clients in [1usize, 16, 64] {
        let duration = Duration::from_secs(5);
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let mut client = AuthorizationClient::connect(endpoint.clone()).await?;
            let check = check.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let end = Instant::now() + duration;
                while Instant::now() < end {
                    let t = Instant::now();
                    let r = client.check(check.clone()).await.expect("check rpc");
                    assert_eq!(r.get_ref().status.as_ref().map(|s| s.code), Some(0));
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?);
        }
        println!(
            "gRPC, {clients:>2} clients, {:?}: {:>8.0} checks/s  {}",
            duration,
            all.len() as f64 / duration.as_secs_f64(),
            percentiles(&all)
        );
    }
    let queries = running.metrics.store_queries_total();
    println!(
        "\nPostgres fact queries during the run: {queries} (all from the flushed baseline and warm-up)"
    );
    running.shutdown().await;
    Ok(())
}
