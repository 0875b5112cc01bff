//! The decision's cost, in one run on one machine, against a real Postgres:
//!
//!     scripts/bench.sh            (starts Postgres, runs this in release mode,
//!                                  writes the figures into docs/performance.md)
//!
//! 1. In process: `Authorizer::check` with every fact in L1 (the hot path),
//!    with L1 flushed before each call (every fact from Postgres), and with
//!    Redis as the only warm tier when REDIS_URL is set.
//! 2. Cold start: `velro-authz serve` (the release binary) from spawn to its
//!    first `/readyz` 200, Postgres up, five times.
//! 3. Over gRPC, process against process: the sidecar and the floor (a no-op
//!    ext_authz server, `check/floor.rs`, its own process) under the same load
//!    client (`check/load.rs`: N connections × M streams), 1×1 and 16×16,
//!    rounds alternating between the two; throughput, latency percentiles and
//!    server CPU per Check from `/proc/<pid>/stat`, and the ratios to the floor.
//!    3b. When `h2load` (nghttp2's load client) is installed, the same
//!    shapes and 100 × 100 again with it: a lighter client than tonic's.
//! 4. Overload: 100 connections × 100 streams against the sidecar for 60 s:
//!    errors by code, mean and max latency, RSS before and after; then the
//!    same against the floor, whose max / mean is the load's own.
//! 5. Instructions per hot Check (callgrind, when valgrind is installed):
//!    the sidecar and the floor each run under callgrind for two counts of
//!    sequential Checks; the difference over the difference in Checks is the
//!    stable figure (wall-clock numbers on a shared 2-core machine are not).
//!
//! The decision measured everywhere: the deepest of the demo data,
//! `GET /api/v1/generations/…07` as bob (10 facts, one verified HS256 token),
//! all of it — JWT, route, policy — on every Check.
//!
//! Settings: `VELRO_BENCH_SECONDS` (each 1×1 / 16×16 run, default 10),
//! `VELRO_BENCH_ROUNDS` (default 3), `VELRO_BENCH_SOAK_SECONDS` (default 60),
//! `VELRO_BENCH_SIDECAR_PRELOAD=<lib.so>` runs the sidecar (not the floor)
//! with that library preloaded, for an allocator A/B without a rebuild.
//! `VELRO_BENCH_HOLD=<dir>` runs none of the steps: it starts the sidecar and
//! the floor, writes the Check as a gRPC body for `h2load` to
//! `<dir>/check.grpc`, and holds both for a profiler until interrupted.
//! `VELRO_BENCH_CALLGRIND=0` to skip step 5, `=only` to run step 5 alone
//! (printing its figure, not the doc section; `VELRO_BENCH_CALLGRIND_DIR`
//! keeps the profiles for `callgrind_annotate`). The last lines printed are a
//! Markdown section between `<!-- bench:check -->` markers, which
//! scripts/bench.sh puts into docs/performance.md.
//!
//! Each run creates and drops its own database, so it never touches real data.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use velro_authz::answer::Outcome;
use velro_authz::app::App;
use velro_authz::authz::AuthzRequest;
use velro_authz::metrics::Metrics;
use velro_authz::testkit::procs::{TempDir, TestDb, percentiles};
use velro_authz::testkit::sidecar::{Sidecar, SidecarOptions, jwt};
use velro_authz::testkit::{Check, Token, config};

#[path = "check/floor.rs"]
mod floor;
#[path = "check/load.rs"]
mod load;

use load::{Measured as _, Shape};

/// The sidecar binary measured.
const BIN: &str = env!("CARGO_BIN_EXE_velro-authz");
const BOB: &str = "10000000-0000-4000-8000-000000000002";
/// Generation 07: two parent hops, a team project, shares: the deepest demo decision.
const PATH: &str = "/api/v1/generations/40000000-0000-4000-8000-000000000007";

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("floor") {
        return floor::serve();
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench
    // targets too (in debug, without it): measure nothing there.
    if !args.iter().any(|a| a == "--bench") {
        println!("benchmark: run it with `cargo bench --bench check` (scripts/bench.sh)");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

fn setting(name: &str, default: u64) -> Result<u64, BoxError> {
    match std::env::var(name) {
        Ok(v) => Ok(v
            .parse()
            .map_err(|_| format!("{name}: not a whole number: {v:?}"))?),
        Err(_) => Ok(default),
    }
}

fn p50(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn bench() -> Result<(), BoxError> {
    let seconds = setting("VELRO_BENCH_SECONDS", 10)?;
    let rounds = setting("VELRO_BENCH_ROUNDS", 3)?;
    let soak = setting("VELRO_BENCH_SOAK_SECONDS", 60)?;
    // `only`: step 5 alone (the regression figure, ≈ 1 min), for a quick A/B.
    let callgrind_only = std::env::var("VELRO_BENCH_CALLGRIND").is_ok_and(|v| v == "only");
    let callgrind = callgrind_only || setting("VELRO_BENCH_CALLGRIND", 1)? == 1;
    let db = TestDb::from_env("bench").await;
    let mut doc = String::new();
    if let Ok(dir) = std::env::var("VELRO_BENCH_HOLD") {
        return hold(&db, Path::new(&dir)).await;
    }
    if callgrind_only {
        let pool = db.pool().await;
        velro_authz::store::MIGRATOR.run(&pool).await?;
        velro_authz::demo::seed(&pool).await?;
        pool.close().await;
        let options = SidecarOptions::new(BIN, "bench", &db.url);
        let (ours, floor) = instructions(&options, &bench_check()).await?;
        println!(
            "| instructions per hot gRPC Check (callgrind, whole server process) | **{:.0}k** (floor {:.0}k: **{:.2}×**) |",
            ours / 1e3,
            floor / 1e3,
            ours / floor
        );
        return Ok(());
    }

    println!(
        "machine: {} cores; decision: GET {PATH} as bob (member via team, 2 parent hops)\n",
        std::thread::available_parallelism()?
    );
    let inproc = in_process(&db.url).await?;
    doc.push_str(&inproc);

    // 2. Cold start to ready, Postgres up (migrated and seeded by step 1).
    let mut options = SidecarOptions::new(BIN, "bench", &db.url);
    options.max_in_flight = std::env::var("VELRO_BENCH_MAX_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok());
    // An allocator A/B without a rebuild: the sidecar (not the floor) runs
    // with `LD_PRELOAD` set to this library (e.g. Debian's libjemalloc2).
    if let Ok(lib) = std::env::var("VELRO_BENCH_SIDECAR_PRELOAD") {
        options.wrap = vec!["env".to_owned(), format!("LD_PRELOAD={lib}")];
        println!("sidecar allocator: LD_PRELOAD={lib}\n");
    }
    let mut starts = Vec::new();
    for _ in 0..5 {
        let sidecar = Sidecar::start(&options).await;
        starts.push(sidecar.ready_in);
    }
    starts.sort();
    println!(
        "cold start to ready (spawn → /readyz 200, 5 starts): min {:.0} ms, median {:.0} ms, max {:.0} ms\n",
        ms(starts[0]),
        ms(starts[2]),
        ms(starts[4])
    );

    // 3. Sidecar and floor, process against process, rounds alternating.
    let sidecar = Sidecar::start(&options).await;
    let floor = Floor::start(None)?;
    let check = bench_check();
    let duration = Duration::from_secs(seconds);
    let mut table = Vec::new();
    for (conns, streams) in [(1usize, 1usize), (16, 16)] {
        let shape = Shape {
            conns,
            streams,
            duration,
            warmup: Duration::from_secs(1),
        };
        let (mut ours, mut floors) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let f = load::run(floor.addr, floor.pid(), &check, shape).await?;
            println!(
                "{conns:>2}×{streams:<2} round {round} floor:   {}",
                f.line()
            );
            let s = load::run(sidecar.grpc_addr, sidecar.pid(), &check, shape).await?;
            println!(
                "{conns:>2}×{streams:<2} round {round} sidecar: {}",
                s.line()
            );
            floors.push(f);
            ours.push(s);
        }
        table.push(((conns, streams), floors, ours));
    }

    // 3b. The same with h2load (when installed), and 10,000 streams at once.
    let h2load = if load::installed("h2load") {
        // (conns, streams, seconds, rounds): the long one once.
        let shapes = [
            (1, 1, seconds, rounds.min(2)),
            (16, 16, seconds, rounds.min(2)),
            (100, 100, soak, 1),
        ];
        Some(h2load_runs(&sidecar, &floor, &shapes).await?)
    } else {
        println!("h2load: skipped (not installed; Debian: apt-get install nghttp2-client)\n");
        None
    };

    // 4. 10,000 streams at once.
    let shape = Shape {
        conns: 100,
        streams: 100,
        duration: Duration::from_secs(soak),
        warmup: Duration::from_secs(2),
    };
    let before = sidecar.metrics().await;
    let overload = load::run(sidecar.grpc_addr, sidecar.pid(), &check, shape).await?;
    let after = sidecar.metrics().await;
    // Time inside the decision (from the handler's start) vs the client's:
    // what is left is waiting to be scheduled, in the kernel and in h2.
    let histogram = |scrape: &velro_authz::testkit::sidecar::Scrape, le: Option<&str>| {
        match le {
            Some(le) => scrape.sum(
                "velro_authz_decision_duration_seconds_bucket",
                &[("le", le)],
            ),
            None => scrape.sum("velro_authz_decision_duration_seconds_count", &[]),
        }
        .unwrap_or(0.0)
    };
    let decided = histogram(&after, None) - histogram(&before, None);
    let within_1ms = histogram(&after, Some("0.001")) - histogram(&before, Some("0.001"));
    let slow_decisions = decided - within_1ms;
    println!("  decisions in the handler over 1 ms: {slow_decisions:.0} of {decided:.0}");
    println!(
        "100×100 sidecar, {soak} s: {}\n  RSS {:.0} MB → {:.0} MB",
        overload.line(),
        overload.server_rss.0 as f64 / 1e6,
        overload.server_rss.1 as f64 / 1e6
    );
    let shed = after.sum("velro_authz_decisions_shed_total", &[]);
    drop(sidecar);
    // The same load on the floor: what of the tail is the client, the
    // kernel and h2 on 2 shared cores, not the decision.
    let floor_overload = load::run(floor.addr, floor.pid(), &check, shape).await?;
    println!("100×100 floor, {soak} s: {}", floor_overload.line());
    drop(floor);

    // 5. Instructions per Check.
    let per_check = if callgrind && load::installed("valgrind") {
        Some(instructions(&options, &check).await?)
    } else {
        println!("callgrind: skipped (VELRO_BENCH_CALLGRIND=0 or no valgrind)");
        None
    };

    // The doc section.
    writeln!(
        doc,
        "| cold start to ready (spawn → `/readyz` 200, Postgres up, 5 starts) | {:.0} ms median ({:.0}–{:.0} ms) |",
        ms(starts[2]),
        ms(starts[0]),
        ms(starts[4])
    )?;
    if let Some((ours, floor)) = per_check {
        writeln!(
            doc,
            "| instructions per hot gRPC Check (callgrind, whole server process) | **{:.0}k** (floor {:.0}k: **{:.2}×**) |",
            ours / 1e3,
            floor / 1e3,
            ours / floor
        )?;
    }
    writeln!(doc)?;
    writeln!(
        doc,
        "gRPC, process against process, {seconds} s per run after 1 s of warm-up, {rounds} rounds alternating floor / sidecar:\n"
    )?;
    writeln!(
        doc,
        "| load | floor Checks/s | sidecar Checks/s | **ratio** | floor CPU/Check | sidecar CPU/Check | **ratio** | sidecar p50 / p99 | errors |"
    )?;
    writeln!(doc, "|---|---|---|---|---|---|---|---|---|")?;
    for ((conns, streams), floors, ours) in &table {
        let errors: u64 = ours.iter().map(|r| r.failures.values().sum::<u64>()).sum();
        let median = &ours[ours.len() / 2];
        writeln!(
            doc,
            "| {conns}×{streams} | {} | {:.0} / {:.0} µs | {errors} |",
            against_floor(floors, ours),
            us(median.at(0.5)),
            us(median.at(0.99)),
        )?;
    }
    writeln!(doc)?;
    writeln!(
        doc,
        "100 connections × 100 streams (10,000 Checks in flight), {soak} s: {:.0} Checks/s, {}, mean {:.0} ms, p99 {:.0} ms, max {:.0} ms ({:.1}× the mean), server RSS {:.0} → {:.0} MB, shed (`velro_authz_decisions_shed_total`) {}; decisions that took over 1 ms inside the handler: {slow_decisions:.0} of {decided:.0}.",
        overload.rate(),
        if overload.failures.is_empty() {
            "**0 errors**".to_owned()
        } else {
            format!("errors {:?}", overload.failures)
        },
        ms(overload.mean()),
        ms(overload.at(0.99)),
        ms(overload.max()),
        overload.max().as_secs_f64() / overload.mean().as_secs_f64().max(1e-9),
        overload.server_rss.0 as f64 / 1e6,
        overload.server_rss.1 as f64 / 1e6,
        shed.unwrap_or(0.0)
    )?;
    writeln!(
        doc,
        "The floor under the same load, same length: {:.0} Checks/s, {}, mean {:.0} ms, p99 {:.0} ms, max {:.0} ms (**{:.1}× the mean**).",
        floor_overload.rate(),
        if floor_overload.failures.is_empty() {
            "0 errors".to_owned()
        } else {
            format!("errors {:?}", floor_overload.failures)
        },
        ms(floor_overload.mean()),
        ms(floor_overload.at(0.99)),
        ms(floor_overload.max()),
        floor_overload.max().as_secs_f64() / floor_overload.mean().as_secs_f64().max(1e-9),
    )?;
    if let Some(tables) = &h2load {
        writeln!(doc)?;
        writeln!(
            doc,
            "The same servers with `h2load` (nghttp2's load client: C, one thread, lighter than the tonic client), no warm-up of its own, {} round(s) alternating (the 100×100 run once); latency mean / max of the run with the largest max / mean:\n",
            rounds.min(2)
        )?;
        writeln!(
            doc,
            "| load | floor Checks/s | sidecar Checks/s | **ratio** | floor CPU/Check | sidecar CPU/Check | **ratio** | floor mean / max | sidecar mean / max | sidecar failed |"
        )?;
        writeln!(doc, "|---|---|---|---|---|---|---|---|---|---|")?;
        for ((conns, streams, secs, _), floors, ours) in tables {
            let failed: u64 = ours.iter().map(|r| r.failed).sum();
            writeln!(
                doc,
                "| {conns}×{streams}, {secs} s | {} | {} | {} | {failed} |",
                against_floor(floors, ours),
                tail(floors),
                tail(ours),
            )?;
        }
    }
    println!("\n<!-- bench:check -->\n{doc}<!-- /bench:check -->");
    Ok(())
}

/// `VELRO_BENCH_HOLD=<dir>`: the sidecar and the floor as step 3 runs them,
/// held until this process is killed, for a profiler or another load client
/// (`perf stat -p`, `h2load`). Writes the bench Check as a gRPC message body
/// to `<dir>/check.grpc` and prints both servers' addresses and pids.
async fn hold(db: &TestDb, dir: &Path) -> Result<(), BoxError> {
    let pool = db.pool().await;
    velro_authz::store::MIGRATOR.run(&pool).await?;
    velro_authz::demo::seed(&pool).await?;
    pool.close().await;
    let options = SidecarOptions::new(BIN, "bench", &db.url);
    let sidecar = Sidecar::start(&options).await;
    let floor = Floor::start(None)?;
    let path = write_grpc_body(dir)?;
    println!("sidecar grpc {} pid {}", sidecar.grpc_addr, sidecar.pid());
    println!("floor grpc {} pid {}", floor.addr, floor.pid());
    let h2load = format!(
        "h2load -d {} -H 'content-type: application/grpc' -H 'te: trailers' -m 1 -c 1 -D 10",
        path.display()
    );
    println!("load: {h2load} http://<addr>/envoy.service.auth.v3.Authorization/Check");
    tokio::signal::ctrl_c().await?;
    drop(sidecar);
    drop(floor);
    Ok(())
}

/// The cells both gRPC tables share: Checks/s of the floor and the sidecar
/// (lowest–highest), the ratio of the best of each, the lowest server CPU
/// per Check of each, and their ratio.
fn against_floor<R: load::Measured>(floors: &[R], ours: &[R]) -> String {
    let best = |runs: &[R]| runs.iter().map(R::rate).fold(f64::MIN, f64::max);
    let range = |runs: &[R]| {
        let lo = runs.iter().map(R::rate).fold(f64::MAX, f64::min);
        format!("{lo:.0}–{:.0}", best(runs))
    };
    let cpu = |runs: &[R]| {
        runs.iter()
            .map(|r| us(r.cpu_per_check()))
            .fold(f64::MAX, f64::min)
    };
    format!(
        "{} | {} | **{:.2}×** | {:.1} µs | {:.1} µs | **{:.2}×**",
        range(floors),
        range(ours),
        best(ours) / best(floors),
        cpu(floors),
        cpu(ours),
        cpu(ours) / cpu(floors),
    )
}

/// Mean / max latency of the h2load run with the largest max / mean.
fn tail(runs: &[load::H2loadRun]) -> String {
    let spread = |r: &load::H2loadRun| r.max.as_secs_f64() / r.mean.as_secs_f64().max(1e-9);
    let Some(r) = runs.iter().max_by(|a, b| spread(a).total_cmp(&spread(b))) else {
        return String::new();
    };
    let (mean, max) = (r.mean.as_secs_f64(), r.max.as_secs_f64());
    let (scale, unit) = if mean < 0.01 {
        (1e6, "µs")
    } else {
        (1e3, "ms")
    };
    format!(
        "{:.0} / {:.0} {unit} ({:.1}×)",
        mean * scale,
        max * scale,
        max / mean.max(1e-9)
    )
}

/// Writes the bench Check as a gRPC message body (what `h2load -d` sends)
/// to `<dir>/check.grpc`, and returns that path.
fn write_grpc_body(dir: &Path) -> Result<std::path::PathBuf, BoxError> {
    use prost::Message as _;
    let message = bench_check().encode_to_vec();
    // gRPC framing: uncompressed, 4-byte big-endian length, the message.
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    body.extend_from_slice(&message);
    let path = dir.join("check.grpc");
    std::fs::write(&path, body)?;
    Ok(path)
}

/// Step 3b: `shapes` with h2load, rounds alternating floor / sidecar;
/// returns, per shape, the floor's runs and the sidecar's. h2load counts an
/// HTTP 200 as a success, and a gRPC error comes as a 200 too: so a
/// sidecar's decision that was not an allow, or an answer with no allow
/// behind it (by its metrics), counts as failed.
async fn h2load_runs(
    sidecar: &Sidecar,
    floor: &Floor,
    shapes: &[(usize, usize, u64, u64)],
) -> Result<Vec<H2loadTable>, BoxError> {
    let dir = TempDir::new("h2load");
    let body = write_grpc_body(dir.path())?;
    let mut tables = Vec::new();
    for &(conns, streams, seconds, rounds) in shapes {
        let (mut floors, mut ours) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let f = load::h2load(floor.addr, floor.pid(), &body, conns, streams, seconds)?;
            println!(
                "{conns:>2}×{streams:<2} round {round} h2load floor:   {}",
                f.line()
            );
            let decisions = |scrape: &velro_authz::testkit::sidecar::Scrape| {
                let all = scrape
                    .sum("velro_authz_decisions_total", &[])
                    .unwrap_or(0.0);
                let allowed = scrape
                    .sum("velro_authz_decisions_total", &[("outcome", "allow")])
                    .unwrap_or(0.0);
                (all, allowed)
            };
            let before = decisions(&sidecar.metrics().await);
            let mut s = load::h2load(
                sidecar.grpc_addr,
                sidecar.pid(),
                &body,
                conns,
                streams,
                seconds,
            )?;
            let after = decisions(&sidecar.metrics().await);
            let (all, allowed) = (after.0 - before.0, after.1 - before.1);
            // A decision the sidecar made may be one h2load stopped waiting
            // for at the end (it counts those as neither): more allows than
            // answers is expected, an answer without an allow is not.
            let not_allowed =
                (all - allowed).max(0.0) as u64 + (s.succeeded as f64 - allowed).max(0.0) as u64;
            s.failed += not_allowed;
            s.succeeded = s.succeeded.saturating_sub(not_allowed);
            println!(
                "{conns:>2}×{streams:<2} round {round} h2load sidecar: {}",
                s.line()
            );
            floors.push(f);
            ours.push(s);
        }
        tables.push(((conns, streams, seconds, rounds), floors, ours));
    }
    Ok(tables)
}

/// One shape's h2load runs: (conns, streams, seconds, rounds), the floor's,
/// the sidecar's.
type H2loadTable = (
    (usize, usize, u64, u64),
    Vec<load::H2loadRun>,
    Vec<load::H2loadRun>,
);

/// The Check every gRPC step sends: bob's token, generation 07.
fn bench_check() -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    let authorization = Token::new(BOB)
        .ttl(Duration::from_secs(24 * 3600))
        .bearer(&jwt());
    Check::new("GET", PATH)
        .header("authorization", &authorization)
        .request()
}

/// Step 1; returns the doc's table rows.
async fn in_process(url: &str) -> Result<String, BoxError> {
    let redis = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    // A long deadline: on a busy machine a decision reading ten facts from
    // Postgres can take longer than the default 500 ms, and this measures it.
    let mut yaml = "decision:\n  allow_log_sample: 0\n  deadline_ms: 10000\n".to_owned();
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
    let mut doc = String::new();

    // Hot path: every fact and the verified token in L1.
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
    hot.sort();
    writeln!(
        doc,
        "| hot decision in process, all facts in L1 (200,000 calls) | p50 {:.1} µs, p99 {:.1} µs |",
        us(hot[hot.len() / 2]),
        us(hot[hot.len() * 99 / 100])
    )?;

    // Baseline: L1 flushed before every decision, so every fact comes from Postgres.
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
    writeln!(
        doc,
        "| same decision, L1 flushed before each call (every fact from Postgres) | p50 {:.2} ms |",
        ms(p50(&cold))
    )?;

    // With Redis: L1 dropped before every decision, facts from the shared tier.
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
        writeln!(
            doc,
            "| same decision, L1 flushed before each call, facts from Redis | p50 {:.2} ms |",
            ms(p50(&warm))
        )?;
    }
    let queries = running.metrics.store_queries_total();
    println!(
        "Postgres fact queries in process: {queries} (all from the flushed baseline and the first call)\n"
    );
    running.shutdown().await;
    Ok(doc)
}

/// The floor server, as its own process.
struct Floor {
    addr: SocketAddr,
    child: Child,
}

impl Floor {
    /// Starts this bench binary as `check floor`, under `wrap` when given.
    fn start(wrap: Option<&[String]>) -> Result<Floor, BoxError> {
        let me = std::env::current_exe()?;
        let mut cmd = match wrap {
            Some(wrap) => {
                let mut cmd = Command::new(&wrap[0]);
                cmd.args(&wrap[1..]).arg(&me);
                cmd
            }
            None => Command::new(&me),
        };
        let mut child = cmd
            .arg("floor")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("floor: no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("floor said {line:?}"))?
            .parse()?;
        Ok(Floor { addr, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (callgrind writes its output), then wait.
    fn terminate(mut self) -> Result<(), BoxError> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The instruction total callgrind wrote to `file`.
fn callgrind_total(file: &Path) -> Result<f64, BoxError> {
    let text = std::fs::read_to_string(file)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{}: no summary line", file.display()).into())
}

/// Step 5: instructions per Check for the sidecar and the floor, each the
/// difference between a run of `MANY` and one of `FEW` sequential Checks
/// (start-up, readiness and shutdown cancel out).
async fn instructions(
    options: &SidecarOptions,
    check: &envoy_types::pb::envoy::service::auth::v3::CheckRequest,
) -> Result<(f64, f64), BoxError> {
    const FEW: usize = 1_000;
    const MANY: usize = 5_000;
    let dir = TempDir::new("callgrind");
    // `VELRO_BENCH_CALLGRIND_DIR`: keep the profiles there, for
    // `callgrind_annotate` (the temporary directory goes away).
    let out = std::env::var_os("VELRO_BENCH_CALLGRIND_DIR")
        .map_or_else(|| dir.path().to_owned(), std::path::PathBuf::from);
    let wrap = |name: &str| {
        vec![
            "valgrind".to_owned(),
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.join(name).display()),
        ]
    };
    let mut totals = Vec::new();
    for (what, n) in [
        ("sidecar", FEW),
        ("sidecar", MANY),
        ("floor", FEW),
        ("floor", MANY),
    ] {
        let name = format!("{what}-{n}.out");
        if what == "sidecar" {
            let mut options = options.clone();
            options.wrap = wrap(&name);
            options.ready_within = Duration::from_secs(300);
            // Under valgrind a Check runs ~50× slower: no deadline may cut it.
            options.deadline_ms = 60_000;
            let sidecar = Sidecar::start(&options).await;
            load::sequential(sidecar.grpc_addr, check, n).await?;
            sidecar.terminate()?;
        } else {
            let floor = Floor::start(Some(&wrap(&name)))?;
            load::sequential(floor.addr, check, n).await?;
            floor.terminate()?;
        }
        let total = callgrind_total(&out.join(&name))?;
        println!("callgrind {what}, {n} Checks: {total:.0} instructions in all");
        totals.push(total);
    }
    let per = |few: f64, many: f64| (many - few) / (MANY - FEW) as f64;
    let (ours, floor) = (per(totals[0], totals[1]), per(totals[2], totals[3]));
    println!(
        "instructions per hot Check: sidecar {ours:.0}, floor {floor:.0} ({:.2}×)\n",
        ours / floor
    );
    Ok((ours, floor))
}
