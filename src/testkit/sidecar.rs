//! The `velro-authz` binary as a process: started with a config of its own
//! on free ports, ready once `/readyz` says LISTEN is connected, killed on
//! drop (printing the tail of its logs first when a test panics), plus its
//! `/metrics` scraped. For the cluster tests and the freshness benchmark.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use super::http::try_send;
use super::procs::{TempDir, free_port, run, tail};
use super::{Check, Verdict, verdict};
use crate::authn::jwt::JwtVerifier;
use crate::config::{Config, ENV_DATABASE_URL};

/// The `auth:` section every sidecar gets; tokens are minted with the same
/// keys. The HS256 secret is for these tests only, like demo/config.yaml's.
pub const AUTH_YAML: &str = "auth:\n  jwt:\n    issuer: velro\n    audience: velro-api\n    keys:\n      - kid: cluster\n        alg: HS256\n        secret: cluster-test-secret-zBYDmLvHGPEVKXSxiR0IcykaQPDBLkIU\n";

/// A JWT verifier/minter with the sidecars' keys.
pub fn jwt() -> Arc<JwtVerifier> {
    let config = Config::from_yaml(AUTH_YAML, |k| {
        (k == ENV_DATABASE_URL).then(|| "postgres://unused@127.0.0.1/unused".to_owned())
    })
    .expect("auth config");
    config.jwt.clone()
}

// ------------------------------------------------------------------ sidecars

/// How to start one sidecar.
#[derive(Clone, Debug)]
pub struct SidecarOptions {
    /// The `velro-authz` binary (`env!("CARGO_BIN_EXE_velro-authz")`, which
    /// only a test or bench crate can name).
    pub bin: PathBuf,
    /// Name in logs and failure reports.
    pub name: String,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `REDIS_URL` and `redis.key_prefix`; `None` = no L2.
    pub redis: Option<(String, String)>,
    /// `decision.deadline_ms`.
    pub deadline_ms: u64,
    /// `database.acquire_timeout_ms` and `statement_timeout_ms`.
    pub db_timeout_ms: u64,
    /// `breaker.failures` / `breaker.open_ms`.
    pub breaker: (u32, u64),
    /// `freshness.serve_stale_on_outage_ms`; `None` = the default (never).
    pub serve_stale_ms: Option<u64>,
    /// `decision.max_in_flight`; `None` = the default.
    pub max_in_flight: Option<u64>,
    /// A command the binary runs under (e.g. `valgrind --tool=callgrind …`);
    /// empty = run it directly.
    pub wrap: Vec<String>,
    /// How long to wait for `/readyz` (slower under a wrapper).
    pub ready_within: Duration,
}

impl SidecarOptions {
    /// `bin` with defaults for `database_url`, no Redis.
    pub fn new(bin: impl AsRef<Path>, name: &str, database_url: &str) -> SidecarOptions {
        SidecarOptions {
            bin: bin.as_ref().to_owned(),
            name: name.to_owned(),
            database_url: database_url.to_owned(),
            redis: None,
            deadline_ms: 500,
            db_timeout_ms: 2_000,
            breaker: (5, 1_000),
            serve_stale_ms: None,
            max_in_flight: None,
            wrap: Vec::new(),
            ready_within: Duration::from_secs(30),
        }
    }

    /// With L2 on `url`, keys under `prefix`.
    pub fn redis(mut self, url: &str, prefix: &str) -> SidecarOptions {
        self.redis = Some((url.to_owned(), prefix.to_owned()));
        self
    }

    /// The YAML config file for these options (addresses and URLs come from the env).
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "log_format: json\n{AUTH_YAML}listener:\n  reconnect_min_ms: 20\n  reconnect_max_ms: 200\ndatabase:\n  acquire_timeout_ms: {t}\n  statement_timeout_ms: {t}\ndecision:\n  deadline_ms: {d}\n  allow_log_sample: 0\n",
            t = self.db_timeout_ms,
            d = self.deadline_ms,
        );
        if let Some(n) = self.max_in_flight {
            y.push_str(&format!("  max_in_flight: {n}\n"));
        }
        if let Some((_, prefix)) = &self.redis {
            y.push_str(&format!(
                "redis:\n  key_prefix: \"{prefix}\"\n  timeout_ms: 100\n  hmac_key: \"cluster-test-l2-hmac-key-0123456789abcdef\"\n"
            ));
        }
        y.push_str(&format!(
            "breaker:\n  failures: {}\n  open_ms: {}\n",
            self.breaker.0, self.breaker.1
        ));
        if let Some(ms) = self.serve_stale_ms {
            y.push_str(&format!("freshness:\n  serve_stale_on_outage_ms: {ms}\n"));
        }
        y
    }
}

/// A running `velro-authz serve` process with a connected ext_authz client.
pub struct Sidecar {
    /// Name in reports.
    pub name: String,
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// HTTP address (/readyz, /metrics).
    pub http_addr: SocketAddr,
    /// ext_authz client on one HTTP/2 connection.
    pub client: AuthorizationClient<Channel>,
    /// From spawning the process to its first `/readyz` 200 (polled every
    /// 2 ms, so up to 2 ms late): the cold start.
    pub ready_in: Duration,
    /// The process.
    child: Child,
    /// Its config and logs.
    dir: TempDir,
}

/// Removes inherited settings that would change what a sidecar does.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("VELRO_AUTHZ_") || k == "REDIS_URL" || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
}

/// `velro-authz migrate` (`bin`) on `database_url`.
pub fn migrate(bin: impl AsRef<Path>, database_url: &str) {
    let dir = TempDir::new("migrate");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        SidecarOptions::new(&bin, "migrate", database_url).yaml(),
    )
    .expect("write config");
    let mut cmd = Command::new(bin.as_ref());
    clean_env(&mut cmd);
    run(
        cmd.arg("--config")
            .arg(&path)
            .arg("migrate")
            .env("DATABASE_URL", database_url),
        "velro-authz migrate",
    );
}

impl Sidecar {
    /// Starts `velro-authz serve` and waits (≤ 30 s) until `/readyz` is 200 with
    /// the listener connected, so no change is missed from then on. Retries on a
    /// port taken between picking and binding.
    pub async fn start(options: &SidecarOptions) -> Sidecar {
        for attempt in 1..=3 {
            let dir = TempDir::new(&format!("sidecar-{}", options.name));
            let config = dir.path().join("config.yaml");
            std::fs::write(&config, options.yaml()).expect("write config");
            let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut cmd = match options.wrap.split_first() {
                Some((wrapper, args)) => {
                    let mut cmd = Command::new(wrapper);
                    cmd.args(args).arg(&options.bin);
                    cmd
                }
                None => Command::new(&options.bin),
            };
            clean_env(&mut cmd);
            cmd.arg("--config")
                .arg(&config)
                .arg("serve")
                .env("DATABASE_URL", &options.database_url)
                .env("VELRO_AUTHZ_GRPC_ADDR", grpc.to_string())
                .env("VELRO_AUTHZ_HTTP_ADDR", http.to_string())
                .env("VELRO_AUTHZ_LOG_FORMAT", "json")
                .stdin(Stdio::null())
                .stdout(File::create(dir.path().join("stdout.log")).expect("log"))
                .stderr(File::create(dir.path().join("stderr.log")).expect("log"));
            if let Some((url, _)) = &options.redis {
                cmd.env("REDIS_URL", url);
            }
            let spawned = Instant::now();
            let child = cmd.spawn().expect("spawn velro-authz serve");
            let client = lazy_client(grpc);
            let mut sidecar = Sidecar {
                name: options.name.clone(),
                grpc_addr: grpc,
                http_addr: http,
                client,
                ready_in: Duration::ZERO,
                child,
                dir,
            };
            match sidecar.wait_ready(options.ready_within).await {
                Ok(()) => {
                    sidecar.ready_in = spawned.elapsed();
                    return sidecar;
                }
                Err(exited) => {
                    let logs = sidecar.logs(40);
                    if attempt < 3 && logs.to_lowercase().contains("address") {
                        eprintln!(
                            "{}: exited early ({exited}), retrying on other ports:\n{logs}",
                            options.name
                        );
                        continue;
                    }
                    panic!("{}: not ready: {exited}\n{logs}", options.name);
                }
            }
        }
        unreachable!("three attempts either return or panic")
    }

    /// Until `/readyz` is 200 with LISTEN connected, or why not.
    async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("process exited with {status}"));
            }
            if let Ok((200, body)) = self.readyz().await
                && body["listener_connected"] == serde_json::Value::Bool(true)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let last = self.readyz().await;
                return Err(format!("/readyz after {within:?}: {last:?}"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The process id (CPU time and memory from `/proc/<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process with SIGTERM (a graceful shutdown, and a wrapper
    /// such as callgrind writes its output) and waits for it to exit.
    pub fn terminate(mut self) -> std::io::Result<std::process::ExitStatus> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        self.child.wait()
    }

    /// `GET /readyz`: status and JSON body.
    pub async fn readyz(&self) -> Result<(u16, serde_json::Value), String> {
        let reply = try_send(self.http_addr, "GET", "/readyz", &[], Vec::new()).await?;
        Ok((
            reply.status,
            serde_json::from_slice(&reply.body).unwrap_or_default(),
        ))
    }

    /// `GET /metrics`, parsed.
    pub async fn metrics(&self) -> Scrape {
        let reply = try_send(self.http_addr, "GET", "/metrics", &[], Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{}: GET /metrics: {e}", self.name));
        assert_eq!(reply.status, 200, "{}: GET /metrics", self.name);
        Scrape::parse(&reply.text())
    }

    /// One Check; the client gives up after `timeout` (reported as DEADLINE_EXCEEDED).
    pub async fn check(&self, check: &Check, timeout: Duration) -> Result<Verdict, tonic::Status> {
        verdict(&self.client, check, timeout).await
    }

    /// The config file it was started with (`--config`): a test may
    /// rewrite it and send SIGHUP.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Sends the process SIGHUP (`kill -HUP`): reload the configuration.
    pub fn hangup(&self) {
        run(
            Command::new("kill")
                .arg("-HUP")
                .arg(self.child.id().to_string()),
            "kill -HUP",
        );
    }

    /// The tail of stdout and stderr.
    pub fn logs(&self, lines: usize) -> String {
        format!(
            "---- {} stderr ----\n{}\n---- {} stdout ----\n{}",
            self.name,
            tail(&self.dir.path().join("stderr.log"), lines),
            self.name,
            tail(&self.dir.path().join("stdout.log"), lines)
        )
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs(40));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ext_authz client that connects on first use (the sidecar may not be
/// listening yet), without Nagle's delay.
fn lazy_client(addr: SocketAddr) -> AuthorizationClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    AuthorizationClient::new(channel)
}

// ------------------------------------------------------------------ metrics

/// A parsed Prometheus text exposition: `(name, labels, value)` per sample.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Every sample, in the order scraped.
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses `name{k="v",...} value` lines; comments and junk are skipped.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(p) => p,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, HashMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Scrape { samples }
    }

    /// Sum over the series of `name` carrying every label in `labels`; `None`
    /// when no such series exists.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (n, ls, v) in &self.samples {
            if n == name
                && labels
                    .iter()
                    .all(|(k, want)| ls.get(*k).is_some_and(|got| got == want))
            {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

/// `k="v",...` of a sample, with `\\`, `\"` and `\n` unescaped.
fn parse_labels(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_owned(), value);
    }
}
