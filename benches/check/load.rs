//! The load client: N HTTP/2 connections × M concurrent streams each, sending
//! one Check over and over for a fixed time; client-observed latency of every
//! Check, answers counted by gRPC code, and the server process's CPU time and
//! memory from `/proc/<pid>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::{Channel, Endpoint};

/// One load shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// HTTP/2 connections.
    pub conns: usize,
    /// Concurrent streams (Checks in flight) on each connection.
    pub streams: usize,
    /// How long Checks are sent (after `warmup`, which is not counted).
    pub duration: Duration,
    /// Load before measuring, so connections, caches and the allocator settle.
    pub warmup: Duration,
}

/// What one run saw.
pub struct Run {
    /// Answers that were OK Checks with an OK (allowed) status inside.
    pub allowed: u64,
    /// Everything else: `"grpc <code>"` for RPC errors, `"denied <code>"` for
    /// a CheckResponse that was not an allow.
    pub failures: BTreeMap<String, u64>,
    /// Latency of every Check answered in the measured window, sorted.
    pub latencies: Vec<Duration>,
    /// The measured window.
    pub elapsed: Duration,
    /// Server CPU time (user + system) during the window.
    pub server_cpu: Duration,
    /// This process's CPU time (the client) during the window.
    pub client_cpu: Duration,
    /// Server resident memory before warm-up and after the window, bytes.
    pub server_rss: (u64, u64),
}

/// What both load clients' runs report, for the tables against the floor.
pub trait Measured {
    /// Answers per second.
    fn rate(&self) -> f64;
    /// Server CPU per answered Check.
    fn cpu_per_check(&self) -> Duration;
}

impl Measured for Run {
    fn rate(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_check(&self) -> Duration {
        self.server_cpu.div_f64(self.total().max(1) as f64)
    }
}

impl Run {
    /// Every answer in the window.
    pub fn total(&self) -> u64 {
        self.allowed + self.failures.values().sum::<u64>()
    }

    /// Latency at quantile `q` (0..=1).
    pub fn at(&self, q: f64) -> Duration {
        let s = &self.latencies;
        if s.is_empty() {
            return Duration::ZERO;
        }
        s[((s.len() as f64 * q) as usize).min(s.len() - 1)]
    }

    /// Mean latency.
    pub fn mean(&self) -> Duration {
        let n = self.latencies.len().max(1) as u32;
        self.latencies.iter().sum::<Duration>() / n
    }

    /// Largest latency.
    pub fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    /// One line: rate, percentiles, CPU, failures.
    pub fn line(&self) -> String {
        let failures = if self.failures.is_empty() {
            "0 errors".to_owned()
        } else {
            format!("errors {:?}", self.failures)
        };
        format!(
            "{:>8.0} /s  p50 {:>8.1?}  p99 {:>8.1?}  mean {:>8.1?}  max {:>8.1?}  server CPU {:>5.1} µs/Check  client CPU {:>5.1} µs/Check  {failures}",
            self.rate(),
            self.at(0.5),
            self.at(0.99),
            self.mean(),
            self.max(),
            self.cpu_per_check().as_secs_f64() * 1e6,
            self.client_cpu.as_secs_f64() * 1e6 / self.total().max(1) as f64,
        )
    }
}

/// CPU time (user + system) of process `pid` so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (3);
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ = 100 on Linux).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let total = ticks(14).unwrap_or(0) + ticks(15).unwrap_or(0);
    Duration::from_millis(total * 10)
}

/// Resident memory of process `pid`, bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs `shape` against the server at `addr` (process `pid`), sending `check`.
pub async fn run(
    addr: SocketAddr,
    pid: u32,
    check: &CheckRequest,
    shape: Shape,
) -> Result<Run, Box<dyn std::error::Error>> {
    let rss_before = rss(pid);
    let mut channels = Vec::with_capacity(shape.conns);
    for _ in 0..shape.conns {
        channels.push(connect(addr).await?);
    }
    let start = Instant::now() + shape.warmup;
    let end = start + shape.duration;
    let mut tasks = Vec::with_capacity(shape.conns * shape.streams);
    for channel in &channels {
        for _ in 0..shape.streams {
            let mut client = AuthorizationClient::new(channel.clone());
            let check = check.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Tally::default();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        return seen;
                    }
                    let answer = client.check(check.clone()).await;
                    let done = Instant::now();
                    if sent < start {
                        continue;
                    }
                    seen.latencies.push(done - sent);
                    match answer {
                        Ok(r) => match r.get_ref().status.as_ref().map(|s| s.code) {
                            Some(0) => seen.allowed += 1,
                            code => {
                                *seen
                                    .failures
                                    .entry(format!("denied {}", code.unwrap_or(-1)))
                                    .or_default() += 1
                            }
                        },
                        Err(status) => {
                            *seen
                                .failures
                                .entry(format!("grpc {:?}", status.code()))
                                .or_default() += 1
                        }
                    }
                }
            }));
        }
    }
    tokio::time::sleep_until(start.into()).await;
    let (server_cpu, client_cpu) = (cpu_time(pid), cpu_time(std::process::id()));
    tokio::time::sleep_until(end.into()).await;
    let (server_cpu, client_cpu) = (
        cpu_time(pid).saturating_sub(server_cpu),
        cpu_time(std::process::id()).saturating_sub(client_cpu),
    );
    let elapsed = shape.duration;
    let server_rss = (rss_before, rss(pid));
    let mut run = Run {
        allowed: 0,
        failures: BTreeMap::new(),
        latencies: Vec::new(),
        elapsed,
        server_cpu,
        client_cpu,
        server_rss,
    };
    for t in tasks {
        let seen = t.await?;
        run.allowed += seen.allowed;
        for (k, v) in seen.failures {
            *run.failures.entry(k).or_default() += v;
        }
        run.latencies.extend(seen.latencies);
    }
    run.latencies.sort_unstable();
    Ok(run)
}

/// Sequential Checks on one connection, `n` of them (the callgrind runs).
pub async fn sequential(
    addr: SocketAddr,
    check: &CheckRequest,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = AuthorizationClient::new(connect(addr).await?);
    for _ in 0..n {
        let r = client.check(check.clone()).await?;
        if r.get_ref().status.as_ref().map(|s| s.code) != Some(0) {
            return Err("a Check was not allowed".into());
        }
    }
    Ok(())
}

/// What one stream saw.
#[derive(Default)]
struct Tally {
    allowed: u64,
    failures: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

/// One HTTP/2 connection, without Nagle's delay.
async fn connect(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
}

/// What one `h2load` run saw (nghttp2's load client: C, one thread, far
/// lighter than the tonic client above, so more of the 2 cores is left to
/// the server).
pub struct H2loadRun {
    /// Requests answered with HTTP 200 (gRPC answers come as 200 with the
    /// status in the trailers: the caller checks the decisions themselves).
    pub succeeded: u64,
    /// Requests that failed, errored or timed out.
    pub failed: u64,
    /// Answers per second over the run.
    pub rate: f64,
    /// Mean and largest request time.
    pub mean: Duration,
    pub max: Duration,
    /// Server CPU time (user + system) during the run.
    pub server_cpu: Duration,
}

impl Measured for H2loadRun {
    fn rate(&self) -> f64 {
        self.rate
    }

    fn cpu_per_check(&self) -> Duration {
        self.server_cpu.div_f64(self.succeeded.max(1) as f64)
    }
}

impl H2loadRun {
    /// One line: rate, latency, CPU, failures.
    pub fn line(&self) -> String {
        format!(
            "{:>8.0} /s  mean {:>8.1?}  max {:>8.1?}  server CPU {:>5.1} µs/Check  {} failed",
            self.rate,
            self.mean,
            self.max,
            self.cpu_per_check().as_secs_f64() * 1e6,
            self.failed,
        )
    }
}

/// Whether `tool --version` runs (valgrind, h2load).
pub fn installed(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `h2load` for `seconds` with `conns` × `streams`, each request the
/// gRPC message body in the file `body`, against the server at `addr`
/// (process `pid`). No warm-up of its own: run it on a warm server.
pub fn h2load(
    addr: SocketAddr,
    pid: u32,
    body: &std::path::Path,
    conns: usize,
    streams: usize,
    seconds: u64,
) -> Result<H2loadRun, Box<dyn std::error::Error>> {
    let cpu_before = cpu_time(pid);
    let out = std::process::Command::new("h2load")
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-c", &conns.to_string(), "-m", &streams.to_string()])
        .args(["-D", &seconds.to_string()])
        .arg(format!(
            "http://{addr}/envoy.service.auth.v3.Authorization/Check"
        ))
        .output()?;
    let server_cpu = cpu_time(pid).saturating_sub(cpu_before);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("h2load failed: {text}").into());
    }
    parse_h2load(&text, server_cpu).ok_or_else(|| format!("h2load said: {text}").into())
}

/// The figures of an `h2load` report.
fn parse_h2load(text: &str, server_cpu: Duration) -> Option<H2loadRun> {
    let line = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix));
    // "finished in 10.00s, 7396.75 req/s, 1.2MB/s"
    let rate = line("finished in ")?
        .split(", ")
        .nth(1)?
        .strip_suffix(" req/s")?
        .parse()
        .ok()?;
    // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    let requests = line("requests: ")?;
    let count = |what: &str| -> Option<u64> {
        requests
            .split(", ")
            .find_map(|part| part.strip_suffix(what))?
            .trim()
            .parse()
            .ok()
    };
    let succeeded = count(" succeeded")?;
    let failed = count(" failed")? + count(" errored")? + count(" timeout")?;
    // "time for request:  min  max  mean  sd  +/- sd"
    let times: Vec<&str> = line("time for request:")?.split_whitespace().collect();
    let duration = |v: &str| -> Option<Duration> {
        let (number, scale) = if let Some(n) = v.strip_suffix("us") {
            (n, 1e-6)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1e-3)
        } else {
            (v.strip_suffix('s')?, 1.0)
        };
        Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
    };
    Some(H2loadRun {
        succeeded,
        failed,
        rate,
        max: duration(times.get(1)?)?,
        mean: duration(times.get(2)?)?,
        server_cpu,
    })
}
