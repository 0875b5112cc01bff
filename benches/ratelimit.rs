//! What per-principal rate limiting costs a hot Check (issue: the Redis
//! round trip on the hot path), in process:
//!
//!     REDIS_URL=redis://127.0.0.1:6379 cargo bench --bench ratelimit
//!
//! One principal's allowed Check (the owner reads a generation, facts warm
//! in L1), decided over and over: rate limiting off; on with Redis and
//! `lease: 1` (one script call per Check, exact); on with Redis and leases
//! of 100 (the default for 1,000 per second). The limit is far above what
//! the loop reaches, so every Check is admitted and all of them do the same
//! work. Latency per Check and Redis round trips per Check, sequential
//! (each Check waits for the one before, as a 1 × 1 client does) and with 64
//! in flight at once, on two runtime threads as the sidecar runs (a lease's
//! background refill runs beside the Checks). Keys go under a random prefix and expire by
//! themselves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;
use velro_authz::answer::Outcome;
use velro_authz::app;
use velro_authz::authz::Authorizer;
use velro_authz::facts::Facts;
use velro_authz::metrics::Metrics;
use velro_authz::model::UserStatus;
use velro_authz::redis::Redis;
use velro_authz::testkit::{Check, MemorySource, Token, config};

const SEQUENTIAL: usize = 20_000;
const CONCURRENT: usize = 100_000;
const IN_FLIGHT: usize = 64;

struct Variant {
    name: &'static str,
    authorizer: Arc<Authorizer<MemorySource>>,
    redis: Option<Arc<Redis>>,
}

impl Variant {
    fn redis_calls(&self) -> u64 {
        self.redis.as_ref().map_or(0, |r| r.calls())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn sequential(v: &Variant, check: &Check) {
    let calls = v.redis_calls();
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let started = Instant::now();
        let d = check.decide(&v.authorizer, None).await.expect("decided");
        samples.push(started.elapsed());
        assert!(matches!(d.outcome, Outcome::Allow(_)), "{:?}", d.outcome);
    }
    samples.sort();
    println!(
        "| {} | one at a time | p50 {:.1?}, p99 {:.1?} | {:.3} |",
        v.name,
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        (v.redis_calls() - calls) as f64 / SEQUENTIAL as f64
    );
}

async fn concurrent(v: &Variant, check: &Arc<Check>) {
    let calls = v.redis_calls();
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (authorizer, check) = (v.authorizer.clone(), check.clone());
            tokio::spawn(async move {
                for _ in 0..CONCURRENT / IN_FLIGHT {
                    let d = check.decide(&authorizer, None).await.expect("decided");
                    assert!(matches!(d.outcome, Outcome::Allow(_)));
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = started.elapsed();
    let done = (CONCURRENT / IN_FLIGHT * IN_FLIGHT) as f64;
    println!(
        "| {} | {IN_FLIGHT} in flight | {:.0} Checks/s | {:.3} |",
        v.name,
        done / elapsed.as_secs_f64(),
        (v.redis_calls() - calls) as f64 / done
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run it with `cargo bench --bench ratelimit`");
        return Ok(());
    }
    let redis_url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .ok_or("REDIS_URL must point at a Redis server")?;
    let source = MemorySource::new();
    let (owner, generation) = (Uuid::new_v4(), Uuid::new_v4());
    source
        .user(owner, UserStatus::Active)
        .generation(generation, owner);
    let jwt = config("").jwt;
    let check = Arc::new(
        Check::new("GET", &format!("/api/v1/generations/{generation}"))
            .bearer(&Token::new(owner).ttl(Duration::from_secs(3600)).mint(&jwt)),
    );

    let (_stop_tx, stop) = watch::channel(false);
    let prefix = format!("bench:rl:{}:", Uuid::new_v4().simple());
    let build = |limit: &str, with_redis: bool| -> Result<Variant, String> {
        let cfg = config(&format!(
            "decision:\n  allow_log_sample: 0\nredis:\n  url: {redis_url}\n  key_prefix: \"{prefix}\"\n  hmac_key: \"bench-ratelimit-hmac-key-0123456789abcdef01\"\n{limit}"
        ));
        let metrics = Metrics::new();
        let redis = if with_redis {
            let redis = Redis::new(cfg.redis.as_ref().ok_or("redis settings")?, metrics.clone())?;
            redis.spawn_connection(stop.clone());
            Some(redis)
        } else {
            None
        };
        let facts = Arc::new(Facts::new(source.clone(), &cfg.cache, metrics.clone()));
        Ok(Variant {
            name: "",
            authorizer: Arc::new(app::authorizer(&cfg, facts, redis.clone(), &metrics)),
            redis,
        })
    };
    let limit = |lease: u32| {
        format!("rate_limit:\n  per_second: 1000000\n  burst: 1000000\n  lease: {lease}\n")
    };
    let variants = [
        Variant {
            name: "off",
            ..build("", false)?
        },
        Variant {
            name: "Redis, `lease: 1` (exact)",
            ..build(&limit(1), true)?
        },
        Variant {
            name: "Redis, `lease: 100`",
            ..build(&limit(100), true)?
        },
    ];
    for v in &variants {
        if let Some(redis) = &v.redis {
            let connected = async {
                while !redis.up() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), connected)
                .await
                .map_err(|_| "Redis never connected")?;
        }
        for _ in 0..2_000 {
            check.decide(&v.authorizer, None).await.expect("warm");
        }
    }
    // Markdown between markers: scripts/bench.sh copies it into
    // docs/performance.md.
    println!("<!-- bench:ratelimit -->");
    println!("| rate limiting | Checks | latency or throughput | Redis round trips per Check |");
    println!("|---|---|---|---|");
    for v in &variants {
        sequential(v, &check).await;
    }
    for v in &variants {
        concurrent(v, &check).await;
    }
    println!("<!-- /bench:ratelimit -->");
    Ok(())
}
