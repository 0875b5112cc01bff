//! The cold decision: latency and round trips when the facts are not in L1.
//!
//!     DATABASE_URL=... REDIS_URL=... cargo bench --bench cold
//!
//! Measures, in one run, in-process `Authorizer::check` of the deepest demo
//! decision (bob, `GET /api/v1/generations/…07`: ten facts) with L1 emptied
//! before each call, in three settings:
//!
//! 1. Postgres only;
//! 2. Redis on, both tiers miss (the decision's Redis entries deleted before
//!    each call; versions and epoch stay, so Redis stays usable);
//! 3. Redis on, L1 miss, Redis hit.
//!
//! Each setting runs twice, interleaved call by call: "bundle" is the
//! sidecar as it is (one statement, Redis level by level, fills after the
//! answer); "fact by fact" is the same sidecar over a source without the
//! one-statement read (`LOADS_DECISIONS` false), which takes the path every
//! decision took before: one sequential round trip per fact, per tier, and
//! Redis fills on the critical path. It also
//! counts Postgres queries and Redis round trips per decision: on the
//! critical path, and in the fills left running after the answer (awaited
//! between calls, outside the timing).
//!
//! Then SPEC §9's existence oracle: on a cold cache (Postgres only), "no such
//! generation" vs "exists, no role" (erin on generation 01), interleaved.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does a smoke
//! run of a few calls each. Its own database (created and dropped) and its own
//! Redis key prefix, so it never touches real data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use tokio::sync::watch;
use velro_authz::answer::Outcome;
use velro_authz::authz::{Authorizer, AuthzRequest};
use velro_authz::facts::l2::L2;
use velro_authz::facts::{Fact, FactKey, FactSource};
use velro_authz::metrics::Metrics;
use velro_authz::redis::Redis;
use velro_authz::store::{Store, StoreError};
use velro_authz::testkit::procs::{TestDb, percentiles};
use velro_authz::testkit::{AuthorizerBuilder, Token, config};

const BOB: &str = "10000000-0000-4000-8000-000000000002";
const ERIN: &str = "10000000-0000-4000-8000-000000000005";
/// Two parent hops, a team project with a parent team, shares: ten facts.
const DEEP: &str = "/api/v1/generations/40000000-0000-4000-8000-000000000007";
/// Exists (research-notebook), erin has no role on it.
const NO_ROLE: &str = "/api/v1/generations/40000000-0000-4000-8000-000000000001";
/// Does not exist.
const MISSING: &str = "/api/v1/generations/40000000-0000-4000-8000-0000000000ff";
const HMAC_KEY: &str = "bench-cold-l2-hmac-key-0123456789abcdef0123";

/// Postgres fact by fact: the sidecar's path before the one-statement read.
struct FactByFact(Store);

impl FactSource for FactByFact {
    async fn load(&self, key: &FactKey) -> Result<Fact, StoreError> {
        self.0.load(key).await
    }
}

/// One way of deciding, with what its calls cost.
struct Variant<S: FactSource> {
    name: &'static str,
    authorizer: Arc<Authorizer<S>>,
    metrics: Metrics,
    l2: Option<Arc<L2>>,
    samples: Vec<Duration>,
    /// Postgres queries and Redis round trips: on the critical path, after it.
    queries: (u64, u64),
    round_trips: (u64, u64),
}

impl<S: FactSource> Variant<S> {
    fn new(name: &'static str, authorizer: Arc<Authorizer<S>>, metrics: Metrics) -> Self {
        let l2 = authorizer.facts().l2().cloned();
        Variant {
            name,
            authorizer,
            metrics,
            l2,
            samples: Vec::new(),
            queries: (0, 0),
            round_trips: (0, 0),
        }
    }

    fn round_trips_now(&self) -> u64 {
        self.l2.as_ref().map_or(0, |l2| l2.round_trips())
    }

    /// One timed call with L1 empty; then its background fills, untimed.
    async fn call(&mut self, req: &AuthzRequest<'_>, expect: u16) {
        let facts = self.authorizer.facts();
        facts.flush_local();
        let (q0, r0) = (self.metrics.store_queries_total(), self.round_trips_now());
        let t = Instant::now();
        let decision = self.authorizer.check(req, None).await.expect("decides");
        self.samples.push(t.elapsed());
        let (q1, r1) = (self.metrics.store_queries_total(), self.round_trips_now());
        facts.fills_settled().await;
        let (q2, r2) = (self.metrics.store_queries_total(), self.round_trips_now());
        self.queries.0 += q1 - q0;
        self.queries.1 += q2 - q1;
        self.round_trips.0 += r1 - r0;
        self.round_trips.1 += r2 - r1;
        let status = match decision.outcome {
            Outcome::Allow(_) => 200,
            Outcome::Deny(d) => d.http_status(),
        };
        assert_eq!(status, expect, "{}: {}", self.name, req.path);
    }

    fn report(&mut self, setting: &str) {
        let n = self.samples.len().max(1) as f64;
        println!(
            "{setting:<28} {:<13} {}  pg/decision {:.1} (+{:.1} after)  redis/decision {:.1} (+{:.1} after)",
            self.name,
            percentiles(&self.samples),
            self.queries.0 as f64 / n,
            self.queries.1 as f64 / n,
            self.round_trips.0 as f64 / n,
            self.round_trips.1 as f64 / n,
        );
        self.samples.clear();
        self.queries = (0, 0);
        self.round_trips = (0, 0);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench
    // targets too (`test = false` does not stop it) but without it: then
    // this is a smoke run, so the benchmark cannot rot unnoticed.
    let measuring = std::env::args().any(|a| a == "--bench");
    let iterations: usize = match std::env::var("VELRO_COLD_ITERATIONS") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("VELRO_COLD_ITERATIONS: not a number: {v:?}"))?,
        Err(_) if measuring => 2_000,
        Err(_) => 5,
    };
    if std::env::var("DATABASE_URL").is_err() {
        return Err("DATABASE_URL must be set".into());
    }
    let redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let db = TestDb::from_env("cold").await;
    let pool = db.pool().await;
    velro_authz::store::MIGRATOR.run(&pool).await?;
    velro_authz::demo::seed(&pool).await?;
    println!(
        "machine: {} cores; {iterations} calls per variant and setting, interleaved; L1 emptied before each call\n",
        std::thread::available_parallelism()?
    );

    let cfg = config("decision:\n  allow_log_sample: 0\n");
    let bob = Token::new(BOB)
        .ttl(Duration::from_secs(3600))
        .bearer(&cfg.jwt);
    let erin = Token::new(ERIN)
        .ttl(Duration::from_secs(3600))
        .bearer(&cfg.jwt);
    let request = |path: &'static str, token: &'static str| AuthzRequest {
        method: "GET",
        path,
        authorization: Some(token),
        largest_header: token.len(),
        ..Default::default()
    };
    let bob: &'static str = Box::leak(bob.into_boxed_str());
    let erin: &'static str = Box::leak(erin.into_boxed_str());
    let deep = request(DEEP, bob);

    // 1. Postgres only.
    let pg = |name| {
        let metrics = Metrics::new();
        (
            name,
            AuthorizerBuilder::new(cfg.clone()).metrics(&metrics),
            metrics,
        )
    };
    let (name, builder, metrics) = pg("bundle");
    let mut bundle = Variant::new(name, builder.build(Store::new(pool.clone())), metrics);
    let (name, builder, metrics) = pg("fact by fact");
    let mut by_fact = Variant::new(
        name,
        builder.build(FactByFact(Store::new(pool.clone()))),
        metrics,
    );
    for _ in 0..iterations.min(100) {
        bundle.call(&deep, 200).await;
        by_fact.call(&deep, 200).await;
    }
    bundle.samples.clear();
    by_fact.samples.clear();
    (bundle.queries, by_fact.queries) = ((0, 0), (0, 0));
    for _ in 0..iterations {
        bundle.call(&deep, 200).await;
        by_fact.call(&deep, 200).await;
    }
    bundle.report("postgres only");
    by_fact.report("postgres only");

    // 4. The existence oracle (SPEC §9), Postgres only, cold.
    let (missing, no_role) = (request(MISSING, erin), request(NO_ROLE, erin));
    let mut oracle = [Vec::new(), Vec::new()];
    for _ in 0..iterations {
        for (i, req) in [&missing, &no_role].into_iter().enumerate() {
            bundle.call(req, 404).await;
            oracle[i].extend(bundle.samples.pop());
        }
    }
    println!(
        "\ncold 404, no such generation:  {}\ncold 404, exists, no role:     {}\nPostgres queries per 404: {:.1}\n",
        percentiles(&oracle[0]),
        percentiles(&oracle[1]),
        bundle.queries.0 as f64 / (2 * iterations) as f64,
    );

    // 2–3. Redis on.
    let Some(redis_url) = redis_url else {
        println!("REDIS_URL not set: the Redis settings are skipped");
        return Ok(());
    };
    let prefix = format!("bench:cold:{}:", uuid::Uuid::new_v4().simple());
    let yaml = format!(
        "decision:\n  allow_log_sample: 0\nredis:\n  url: {redis_url}\n  key_prefix: \"{prefix}\"\n  hmac_key: \"{HMAC_KEY}\"\n"
    );
    let cfg = config(&yaml);
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut with_redis = |metrics: &Metrics| -> Result<AuthorizerBuilder, String> {
        let client = Redis::new(cfg.redis.as_ref().ok_or("redis settings")?, metrics.clone())?;
        let l2 = L2::new(
            client.clone(),
            cfg.l2.clone(),
            cfg.freshness.max_silence,
            metrics.clone(),
        );
        tasks.push(l2.spawn_maintenance(stop.clone()));
        tasks.push(client.spawn_connection(stop.clone()));
        Ok(AuthorizerBuilder::new(cfg.clone()).metrics(metrics).l2(l2))
    };
    let metrics = Metrics::new();
    let mut bundle = Variant::new(
        "bundle",
        with_redis(&metrics)?.build(Store::new(pool.clone())),
        metrics,
    );
    let metrics = Metrics::new();
    let mut by_fact = Variant::new(
        "fact by fact",
        with_redis(&metrics)?.build(FactByFact(Store::new(pool.clone()))),
        metrics,
    );
    // Each starts distrusting Redis; a flush makes it bump the epoch.
    for l2 in [&bundle.l2, &by_fact.l2].into_iter().flatten() {
        l2.mark_dirty();
        let usable = async {
            while !l2.usable() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), usable)
            .await
            .map_err(|_| "Redis tier never became usable")?;
    }
    let raw = Client::new(
        fred::types::config::Config::from_url(&redis_url)?,
        None,
        None,
        None,
    );
    raw.init().await?;
    let entries = deep_entries(&prefix);

    // 2. Both tiers miss.
    for round in 0..iterations + iterations.min(100) {
        if round == iterations.min(100) {
            bundle.samples.clear();
            by_fact.samples.clear();
            (bundle.queries, by_fact.queries) = ((0, 0), (0, 0));
            (bundle.round_trips, by_fact.round_trips) = ((0, 0), (0, 0));
        }
        let _: i64 = raw.del(entries.clone()).await?;
        bundle.call(&deep, 200).await;
        let _: i64 = raw.del(entries.clone()).await?;
        by_fact.call(&deep, 200).await;
    }
    bundle.report("redis on, both tiers miss");
    by_fact.report("redis on, both tiers miss");

    // 3. L1 miss, Redis hit (Redis filled by the last call).
    bundle.call(&deep, 200).await;
    for round in 0..iterations + iterations.min(100) {
        if round == iterations.min(100) {
            bundle.samples.clear();
            by_fact.samples.clear();
            (bundle.queries, by_fact.queries) = ((0, 0), (0, 0));
            (bundle.round_trips, by_fact.round_trips) = ((0, 0), (0, 0));
        }
        bundle.call(&deep, 200).await;
        by_fact.call(&deep, 200).await;
    }
    bundle.report("redis on, L1 miss, L2 hit");
    by_fact.report("redis on, L1 miss, L2 hit");

    let _: i64 = raw.del(entries).await?;
    stop_tx.send_replace(true);
    for task in tasks {
        task.await?;
    }
    Ok(())
}

/// The Redis entries of the deep decision's ten facts (versions and epoch
/// stay: deleting an entry makes a miss, nothing else).
fn deep_entries(prefix: &str) -> Vec<String> {
    let [g7, g4, g1] = [
        "40000000-0000-4000-8000-000000000007",
        "40000000-0000-4000-8000-000000000004",
        "40000000-0000-4000-8000-000000000001",
    ];
    let project = "30000000-0000-4000-8000-000000000001";
    [
        format!("user:{BOB}"),
        format!("memberships:{BOB}"),
        format!("generation:{g7}"),
        format!("generation:{g4}"),
        format!("generation:{g1}"),
        format!("project:{project}"),
        format!("shares:generation:{g7}"),
        format!("shares:project:{project}"),
        "team:20000000-0000-4000-8000-000000000001".to_owned(),
        "team:20000000-0000-4000-8000-000000000002".to_owned(),
    ]
    .into_iter()
    .map(|k| format!("{prefix}f:{k}"))
    .collect()
}
