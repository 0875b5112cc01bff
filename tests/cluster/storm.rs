//! Convergence storm: three sidecar processes over one Postgres and one Redis,
//! thousands of random changes committed as fast as one connection allows while
//! clients ask all three at once; then, for every pair of a large sample, every
//! answer a sidecar gives 1 s or more after the last commit must be the one
//! computed straight from Postgres (see `fleet::converge`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use velro_authz::answer::Outcome;
use velro_authz::app::App;
use velro_authz::authz::AuthzRequest;
use velro_authz::config::Config;
use velro_authz::metrics::Metrics;

use super::fleet::{Fleet, Traffic, assert_no_problems, converge, describe, lag_report, report};
use super::support::{AUTH_YAML, Answer, Call, RedisPrefix, SidecarOptions, TestDb};
use super::world::write_storm;

const SEED: u64 = 0x5707_2026;
/// Changes applied by the writer (≥ 2,000).
const WRITES: u64 = 2_400;
/// Pairs compared with the oracle (≥ 2,000).
const SAMPLE: usize = 2_000;
/// How long after the last commit the sidecars have to agree with Postgres.
const CONVERGE_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_three_sidecars_agree_with_postgres_within_1s_after_2400_random_changes() {
    let started = Instant::now();
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| {
        panic!("REDIS_URL must name a reachable Redis: eval \"$(scripts/services.sh env)\"; export REDIS_URL")
    });
    // One L2 namespace shared by the three sidecars, used by no other test,
    // removed at the end.
    let prefix = RedisPrefix::new(&redis_url, "velro-authz-storm");
    let db = TestDb::from_env("storm").await;
    // No faults here, so no "cannot decide" is acceptable: a generous deadline
    // keeps a busy 2-core machine from turning slowness into RPC errors.
    let options = (1..=3)
        .map(|n| {
            let mut o = SidecarOptions::new(&format!("storm-{n}"), &db.url)
                .redis(&redis_url, &prefix.prefix);
            o.deadline_ms = 5_000;
            o
        })
        .collect();
    let fleet = Fleet::start(db, SEED, options).await;
    let ready = started.elapsed();

    // Clients ask the very pairs compared afterwards, so what is compared is
    // what the sidecars cached (and had to invalidate) during the storm.
    let (pairs, calls) = fleet.sample(SAMPLE, SEED + 1);
    let traffic = Traffic::start(
        &fleet.sidecars,
        calls.clone(),
        None,
        2,
        Duration::from_secs(10),
    );

    let writer = {
        let (pool, world) = (fleet.pool.clone(), fleet.world.clone());
        tokio::spawn(
            async move { write_storm(&pool, &world, WRITES, SEED + 2, Duration::ZERO).await },
        )
    };
    let writes = writer.await.expect("writer");
    let stopped = Instant::now();
    let (checks, problems) = traffic.finish().await;
    let storm_took = stopped.duration_since(started) - ready;

    // The truth once the writer stopped, then the comparison.
    let expected = fleet.expected(&pairs).await;
    let conv = converge(&fleet.sidecars, &calls, &expected, stopped, CONVERGE_WITHIN).await;

    let allows = expected.iter().filter(|a| a.allowed()).count();
    println!(
        "storm: sidecars ready in {ready:.1?}; {} commits ({} changes, {} refused cycles) in {storm_took:.1?} \
         while {checks} Checks went to 3 sidecars; then {} pairs × 3 compared with Postgres \
         ({allows} allows): {conv}; {}\nstorm: invalidation lag: {}",
        writes.commits,
        writes.ops,
        writes.rejected,
        pairs.len(),
        report(&conv.mismatches, &fleet.sidecars, &pairs, &expected),
        lag_report(&fleet.sidecars).await,
    );
    assert!(
        writes.ops >= WRITES,
        "writer applied only {} changes",
        writes.ops
    );
    // Debug-build sidecars refilling from a busy Postgres answer a few hundred
    // Checks a second on 2 cores: this only proves traffic overlapped the storm.
    assert!(checks >= 300, "only {checks} Checks during the storm");
    assert_no_problems("Checks during the storm", &problems);
    assert!(
        allows > pairs.len() / 10 && allows < pairs.len() * 9 / 10,
        "sample is too one-sided to mean much: {allows} allows of {}",
        pairs.len()
    );
    assert!(
        conv.mismatches.is_empty(),
        "sidecars disagree with Postgres {CONVERGE_WITHIN:?} after the last commit: {}",
        report(&conv.mismatches, &fleet.sidecars, &pairs, &expected)
    );

    // Cross-check the oracle with the library's own decision path, caches
    // flushed before each decision so every fact is read from Postgres: a
    // difference here is a disagreement about the spec, not about freshness.
    let library = library_oracle(&fleet.db.url, &calls).await;
    let disagreements: Vec<String> = library
        .iter()
        .zip(&expected)
        .enumerate()
        .filter(|(_, (lib, want))| lib != want)
        .map(|(i, (lib, want))| {
            format!(
                "{} → library {lib}, oracle {want}",
                describe(&pairs[i].0, &pairs[i].1)
            )
        })
        .collect();
    assert!(
        disagreements.is_empty(),
        "library (uncached) and oracle disagree on {} of {} pairs:\n  {}",
        disagreements.len(),
        pairs.len(),
        disagreements
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    println!(
        "storm: the library's uncached decisions agree with the oracle on all {} pairs; total {:.1?}",
        pairs.len(),
        started.elapsed()
    );
}

/// Decides every call in-process with the library, every cache flushed first.
async fn library_oracle(database_url: &str, calls: &Arc<Vec<Call>>) -> Vec<Answer> {
    let yaml = format!("{AUTH_YAML}decision:\n  deadline_ms: 10000\n");
    let config = Config::from_yaml(&yaml, |k| {
        (k == "DATABASE_URL").then(|| database_url.to_owned())
    })
    .expect("library oracle config");
    let app = App::build(config, Metrics::new()).expect("library oracle");
    let authorizer = app.authorizer.clone();
    let mut out = Vec::with_capacity(calls.len());
    for call in calls.iter() {
        let header = |name: &str| {
            call.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let req = AuthzRequest {
            method: &call.method,
            path: &call.path,
            authorization: header("authorization"),
            api_key: header("x-api-key"),
            largest_header: call.headers.iter().map(|(_, v)| v.len()).max().unwrap_or(0),
            ..Default::default()
        };
        authorizer.facts().flush();
        authorizer.flush_credentials();
        let decision = authorizer.check(&req, None).await.expect("library decides");
        out.push(match decision.outcome {
            Outcome::Allow(identity) => {
                Answer::allow(identity.and_then(|i| i.role).map(|r| r.as_str()))
            }
            Outcome::Deny(d) => Answer::deny(d.http_status(), d.code()),
        });
    }
    out
}
