//! Freshness: how long after a revocation commits in Postgres does each of
//! three sidecar processes deny?
//!
//!     scripts/bench-freshness.sh      (starts Postgres and Redis, runs this in release mode)
//!
//! Three `velro-authz serve` processes (the release binary) over one Postgres
//! and, when REDIS_URL is set and the binary accepts a `redis:` section, one
//! Redis. Each is warmed on three allowed (user, generation) pairs, one per
//! kind of revocation. Then, N times (default 1,000; `VELRO_FRESHNESS_ITERATIONS`):
//! commit a revocation (rotating: a team membership deleted, a share deleted,
//! a project made private), take the instant COMMIT returned, poll every
//! sidecar with Checks in a tight loop until it denies, record commit → denied
//! per sidecar; then re-grant and wait until all three allow again.
//!
//! The measured time includes one Check round trip (the poll that saw the
//! deny) and the client's scheduling on the same cores as the sidecars and
//! Postgres, so it is an upper bound of the invalidation delay.
//! Each run creates and drops its own database and Redis key prefix.
//!
//! `VELRO_FRESHNESS_DRILL` adds a fault while it measures:
//! - `none` (default);
//! - `listener-kill`: every 250 ms one sidecar's LISTEN connection is
//!   terminated (`pg_terminate_backend`; Postgres stays up), round robin;
//! - `redis-kill` (needs REDIS_URL): Redis alternately stops answering for
//!   300 ms (`CLIENT PAUSE 300 ALL`) and drops every client connection
//!   (`CLIENT KILL TYPE normal`), every 500 ms.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only does a
//! six-revocation smoke run.

use std::time::{Duration, Instant};

use velro_authz::testkit::procs::{RedisPrefix, TestDb, percentiles};
use velro_authz::testkit::sidecar::{Sidecar, SidecarOptions, jwt, migrate};
use velro_authz::testkit::{Check, Token, Verdict, verdict};

/// The sidecar binary measured.
const BIN: &str = env!("CARGO_BIN_EXE_velro-authz");

/// One kind of revocation: the SQL that takes access away and gives it back,
/// and the Check that shows which.
struct Kind {
    name: &'static str,
    revoke: String,
    grant: String,
    call: Check,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench
    // targets too (`test = false` does not stop it) but without it: then this
    // is a smoke run: the benchmark cannot rot unnoticed, for a few seconds.
    let measuring = std::env::args().any(|a| a == "--bench");
    let iterations: usize = match std::env::var("VELRO_FRESHNESS_ITERATIONS") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("VELRO_FRESHNESS_ITERATIONS: not a number: {v:?}"))?,
        Err(_) if measuring => 1_000,
        Err(_) => 6,
    };
    if std::env::var("DATABASE_URL").is_err() {
        return Err("DATABASE_URL must be set (scripts/bench-freshness.sh sets it)".into());
    }
    let redis = std::env::var("REDIS_URL").ok();
    let drill = std::env::var("VELRO_FRESHNESS_DRILL").unwrap_or_else(|_| "none".to_owned());
    if !matches!(drill.as_str(), "none" | "listener-kill" | "redis-kill") {
        return Err(format!(
            "VELRO_FRESHNESS_DRILL: {drill:?} is not none, listener-kill or redis-kill"
        )
        .into());
    }
    if drill == "redis-kill" && redis.is_none() {
        return Err("VELRO_FRESHNESS_DRILL=redis-kill needs REDIS_URL".into());
    }
    let db = TestDb::from_env("freshness").await;
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || migrate(BIN, &url)).await?;
    let pool = db.pool().await;

    let id = |n: u32| format!("{:08x}-0000-4000-8000-00000000f00d", n);
    let (owner, member, grantee, stranger) = (id(1), id(2), id(3), id(4));
    let team = id(10);
    let (p_team, p_private, p_public) = (id(20), id(21), id(22));
    let (g_team, g_shared, g_public) = (id(30), id(31), id(32));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (id, email) VALUES ('{owner}', 'owner@f'), ('{member}', 'member@f'), \
           ('{grantee}', 'grantee@f'), ('{stranger}', 'stranger@f');
         INSERT INTO teams (id, name) VALUES ('{team}', 'team');
         INSERT INTO team_members (team_id, user_id, role) VALUES ('{team}', '{member}', 'member');
         INSERT INTO projects (id, owner_id, team_id, visibility, name) VALUES
           ('{p_team}', '{owner}', '{team}', 'private', 'team project'),
           ('{p_private}', '{owner}', NULL, 'private', 'private project'),
           ('{p_public}', '{owner}', NULL, 'public', 'public project');
         INSERT INTO generations (id, user_id, project_id) VALUES
           ('{g_team}', '{owner}', '{p_team}'), ('{g_shared}', '{owner}', '{p_private}'),
           ('{g_public}', '{owner}', '{p_public}');
         INSERT INTO shares (resource_kind, resource_id, grantee_user_id, role)
           VALUES ('generation', '{g_shared}', '{grantee}', 'viewer');"
    )))
    .execute(&pool)
    .await?;

    let jwt = jwt();
    let get = |user: &str, generation: &str| {
        Check::new("GET", &format!("/api/v1/generations/{generation}"))
            .bearer(&Token::new(user).ttl(Duration::from_secs(3600)).mint(&jwt))
    };
    let kinds = [
        Kind {
            name: "membership deleted",
            revoke: format!(
                "DELETE FROM team_members WHERE team_id = '{team}' AND user_id = '{member}'"
            ),
            grant: format!(
                "INSERT INTO team_members (team_id, user_id, role) VALUES ('{team}', '{member}', 'member')"
            ),
            call: get(&member, &g_team),
        },
        Kind {
            name: "share deleted",
            revoke: format!(
                "DELETE FROM shares WHERE resource_kind = 'generation' AND resource_id = '{g_shared}'"
            ),
            grant: format!(
                "INSERT INTO shares (resource_kind, resource_id, grantee_user_id, role) VALUES ('generation', '{g_shared}', '{grantee}', 'viewer')"
            ),
            call: get(&grantee, &g_shared),
        },
        Kind {
            name: "project made private",
            revoke: format!("UPDATE projects SET visibility = 'private' WHERE id = '{p_public}'"),
            grant: format!("UPDATE projects SET visibility = 'public' WHERE id = '{p_public}'"),
            call: get(&stranger, &g_public),
        },
    ];

    // Removed at the end (declared before the sidecars, so dropped after them).
    let prefix = redis
        .as_ref()
        .map(|r| RedisPrefix::new(r, "velro-authz-freshness"));
    let mut sidecars = Vec::new();
    for n in 1..=3 {
        let mut options = SidecarOptions::new(BIN, &format!("sidecar-{n}"), &db.url);
        if let (Some(r), Some(p)) = (&redis, &prefix) {
            options = options.redis(r, &p.prefix);
        }
        sidecars.push(Sidecar::start(&options).await);
    }
    let l2 = redis.is_some();

    // Warm: every sidecar allows every pair (and has cached what it used).
    let allow = Verdict::allow(Some("viewer"));
    let member_allow = Verdict::allow(Some("member"));
    for s in &sidecars {
        for k in &kinds {
            let want = if k.name == "membership deleted" {
                &member_allow
            } else {
                &allow
            };
            for _ in 0..3 {
                let got = s.check(&k.call, Duration::from_secs(5)).await?;
                if got != *want {
                    return Err(
                        format!("{}: warm-up {}: got {got}, want {want}", s.name, k.name).into(),
                    );
                }
            }
        }
    }

    let stop_drill = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drill_task = match drill.as_str() {
        "listener-kill" => Some(tokio::spawn(listener_kills(
            pool.clone(),
            stop_drill.clone(),
        ))),
        "redis-kill" => Some(tokio::spawn(redis_faults(
            redis.clone().unwrap_or_default(),
            stop_drill.clone(),
        ))),
        _ => None,
    };

    let mut per_sidecar: Vec<Vec<Duration>> = vec![Vec::new(); sidecars.len()];
    let mut per_kind: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut poll_errors = 0u64;
    let started = Instant::now();
    for i in 0..iterations {
        let k = i % kinds.len();
        let kind = &kinds[k];
        sqlx::raw_sql(sqlx::AssertSqlSafe(kind.revoke.clone()))
            .execute(&pool)
            .await?;
        let committed = Instant::now();
        let polls: Vec<_> = sidecars
            .iter()
            .map(|s| {
                let (client, call) = (s.client.clone(), kind.call.clone());
                tokio::spawn(async move {
                    let mut errors = 0u64;
                    loop {
                        match verdict(&client, &call, Duration::from_secs(2)).await {
                            Ok(a) if a.status == 404 => return Ok((committed.elapsed(), errors)),
                            Ok(_) => {}
                            Err(_) => errors += 1,
                        }
                        if committed.elapsed() > Duration::from_secs(10) {
                            return Err(format!(
                                "still allowed 10 s after the commit ({errors} RPC errors)"
                            ));
                        }
                    }
                })
            })
            .collect();
        for (n, p) in polls.into_iter().enumerate() {
            let (took, errors) = p
                .await?
                .map_err(|e| format!("iteration {i}, {}: {}: {e}", kind.name, sidecars[n].name))?;
            per_sidecar[n].push(took);
            per_kind[k].push(took);
            poll_errors += errors;
        }
        // Give access back and wait until every sidecar allows again.
        sqlx::raw_sql(sqlx::AssertSqlSafe(kind.grant.clone()))
            .execute(&pool)
            .await?;
        let granted = Instant::now();
        for s in &sidecars {
            loop {
                if s.check(&kind.call, Duration::from_secs(2))
                    .await
                    .is_ok_and(|a| a.allowed())
                {
                    break;
                }
                if granted.elapsed() > Duration::from_secs(10) {
                    return Err(format!(
                        "iteration {i}, {}: {} still denies 10 s after the re-grant",
                        kind.name, s.name
                    )
                    .into());
                }
            }
        }
    }
    let took = started.elapsed();
    stop_drill.store(true, std::sync::atomic::Ordering::Relaxed);
    let drill_events = match drill_task {
        Some(t) => t.await??,
        None => 0,
    };

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or("?".to_owned(), |kb| {
            format!("{:.0} GiB", kb as f64 / 1_048_576.0)
        });
    if !measuring {
        println!(
            "velro-authz freshness: smoke run, {iterations} revocations denied by 3 sidecars in {took:.1?} \
             (not a measurement: run `cargo bench --bench freshness` or scripts/bench-freshness.sh)"
        );
        return Ok(());
    }
    println!(
        "velro-authz freshness: commit → denied, {iterations} revocations × 3 sidecar processes ({took:.1?})\n\
         machine: {} cores ({cpu}), {mem}; tiers: L1 + Postgres{}; drill: {drill} ({drill_events} faults)\n",
        std::thread::available_parallelism()?,
        if l2 {
            " + Redis L2"
        } else {
            " (no L2: REDIS_URL unset or not supported by this build)"
        },
    );
    let mut all = Vec::new();
    for (s, samples) in sidecars.iter().zip(&per_sidecar) {
        println!("{:<24} {}", s.name, percentiles(samples));
        all.extend_from_slice(samples);
    }
    println!("{:<24} {}\n", "all sidecars", percentiles(&all));
    for (k, samples) in kinds.iter().zip(&per_kind) {
        println!("{:<24} {}", k.name, percentiles(samples));
    }
    println!("\nRPC errors while polling: {poll_errors}");
    Ok(())
}

/// Terminates one sidecar's LISTEN connection every 250 ms, round robin,
/// until `stop`; returns how many it terminated.
async fn listener_kills(
    pool: sqlx::PgPool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<u64, String> {
    let mut killed = 0u64;
    let mut turn = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let pids: Vec<(i32,)> = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%' ORDER BY pid",
        )
        .fetch_all(&pool)
        .await
        .map_err(|e| format!("listener-kill drill: {e}"))?;
        if pids.is_empty() {
            continue;
        }
        let (pid,) = pids[turn % pids.len()];
        turn += 1;
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&pool)
            .await
            .map_err(|e| format!("listener-kill drill: {e}"))?;
        killed += 1;
    }
    Ok(killed)
}

/// Makes Redis stop answering for 300 ms, then drops every client connection,
/// alternating every 500 ms until `stop`; returns how many faults it caused.
async fn redis_faults(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<u64, String> {
    use fred::interfaces::ClientLike;
    let config = fred::types::config::Config::from_url(&url).map_err(|e| e.to_string())?;
    let client = fred::clients::Client::new(config, None, None, None);
    client
        .init()
        .await
        .map_err(|e| format!("redis-kill drill: {e}"))?;
    let mut faults = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let args: Vec<&str> = if faults.is_multiple_of(2) {
            vec!["PAUSE", "300", "ALL"]
        } else {
            vec!["KILL", "TYPE", "normal", "SKIPME", "yes"]
        };
        client
            .custom::<fred::types::Value, _>(fred::cmd!("CLIENT"), args)
            .await
            .map_err(|e| format!("redis-kill drill: {e}"))?;
        faults += 1;
    }
    let _ = client.quit().await;
    Ok(faults)
}
