//! Real processes for the cluster tests and the freshness benchmark: the
//! `velro-authz` binary run as sidecars, and throwaway `redis-server` and
//! Postgres clusters on spare ports that a test can kill and restart.
//!
//! Everything here cleans up on drop (kill the process, stop the cluster,
//! remove the temp dir) and, when dropped during a panic, prints the tail of
//! each process's log first, so a failing test shows what the sidecars saw.
//! Shared with `benches/freshness.rs` through `#[path]`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use sqlx::{Connection as _, PgConnection};
use tonic::transport::Channel;
use velro_authz::authn::jwt::{JwtVerifier, MintClaims};
use velro_authz::config::Config;

/// The sidecar binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_velro-authz");

/// The `auth:` section every sidecar gets; tokens are minted with the same
/// keys. The HS256 secret is for these tests only, like demo/config.yaml's.
pub const AUTH_YAML: &str = "auth:\n  jwt:\n    issuer: velro\n    audience: velro-api\n    keys:\n      - kid: cluster\n        alg: HS256\n        secret: cluster-test-secret-0123456789abcdef0123\n";

// ------------------------------------------------------------------ basics

/// A name no other test (or run) uses: `<tag>_<pid>_<n>_<nanos>`, lower case,
/// safe as a database name and a Redis key prefix.
pub fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{tag}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP port nothing listens on right now (the kernel's pick for port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A directory under the system temp dir, removed on drop. Mode 0755 so the
/// `postgres` user can reach what we put inside when the tests run as root.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/velro-<unique>`.
    pub fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("velro-{}", unique(tag)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last `lines` lines of a file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn is_root() -> bool {
    // `id -u` rather than libc: the tests use no unsafe code and no extra crate.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command to completion; panics with its output when it fails.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------------ redis

/// A throwaway `redis-server` (from PATH) on its own port, no persistence.
/// Killed with SIGKILL and restarted on the same port by fault tests.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
            starts: 0,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, no goodbye: clients see their connections reset.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("redis log"))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server from PATH ({e}): install redis-server (scripts/services.sh does)")
            });
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(10), "redis-server answers PING", || {
            redis_ping(port).then_some(())
        });
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in 1..=self.starts {
                let log = self.dir.path().join(format!("redis-{n}.log"));
                eprintln!(
                    "---- redis :{} start {n} ----\n{}",
                    self.port,
                    tail(&log, 20)
                );
            }
        }
        self.kill9();
    }
}

/// A Redis key prefix of its own on a shared server, whose keys are deleted
/// on drop: L2 entries expire by themselves, but the epoch key has no TTL.
/// Best effort (with `redis-cli`): leftovers are harmless, only untidy.
pub struct RedisPrefix {
    url: String,
    /// `<tag>_<unique>:`.
    pub prefix: String,
}

impl RedisPrefix {
    /// A fresh prefix on the server at `url`.
    pub fn new(url: &str, tag: &str) -> RedisPrefix {
        RedisPrefix {
            url: url.to_owned(),
            prefix: format!("{}:", unique(tag)),
        }
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let Ok(out) = Command::new("redis-cli")
            .args(["-u", &self.url, "--scan", "--pattern"])
            .arg(format!("{}*", self.prefix))
            .stdin(Stdio::null())
            .output()
        else {
            return;
        };
        let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        for chunk in keys.chunks(200) {
            let _ = Command::new("redis-cli")
                .args(["-u", &self.url, "DEL"])
                .args(chunk)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status();
        }
    }
}

// ------------------------------------------------------------------ postgres

/// A throwaway Postgres cluster (initdb + pg_ctl from /usr/lib/postgresql/*/bin)
/// in its own temp dir, on its own port, trust auth, fsync off. Stopped with
/// `pg_ctl stop -m fast` and started again on the same data dir by fault tests.
/// As root, the server tools run as the `postgres` user (Postgres refuses root),
/// like scripts/services.sh does.
pub struct PgCluster {
    bin: PathBuf,
    port: u16,
    /// Base dir (0755, ours); `data/`, `run/` (socket, log) belong to the server user.
    dir: TempDir,
    as_postgres: bool,
}

impl PgCluster {
    /// initdb + start; panics with the tools' output when that fails.
    pub fn start() -> PgCluster {
        let bin = pg_bin();
        let dir = TempDir::new("pg");
        let as_postgres = is_root();
        let (data, run_dir) = (dir.path().join("data"), dir.path().join("run"));
        for d in [&data, &run_dir] {
            std::fs::create_dir(d).expect("mkdir");
        }
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
                .expect("chmod data");
        }
        if as_postgres {
            run(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&data)
                    .arg(&run_dir),
                "chown the cluster dirs to postgres",
            );
        }
        let cluster = PgCluster {
            bin,
            port: free_port(),
            dir,
            as_postgres,
        };
        cluster.tool(
            "initdb",
            &[
                "-N".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-locale".as_ref(),
            ],
        );
        let conf = format!(
            "\n# velro-authz cluster test\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 200\nshared_buffers = 32MB\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            cluster.port,
            run_dir.display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("append postgresql.conf");
        cluster.start_again();
        cluster
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// `pg_ctl stop -m fast`: every connection is terminated, new ones refused.
    pub fn stop_fast(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "30", "stop"]);
    }

    /// `pg_ctl start` on the same data dir and port.
    pub fn start_again(&self) {
        let log = self.dir.path().join("run").join("postgres.log");
        let log = log.to_string_lossy().into_owned();
        self.pg_ctl(&["-l", &log, "-w", "-t", "30", "start"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let mut all: Vec<&std::ffi::OsStr> = vec!["-D".as_ref(), data.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        self.tool("pg_ctl", &all);
    }

    fn tool(&self, name: &str, args: &[&std::ffi::OsStr]) -> String {
        let exe = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // From / : the caller's directory may not be readable by postgres.
        cmd.args(args).current_dir("/");
        for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS"] {
            cmd.env_remove(var);
        }
        run(&mut cmd, name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.dir.path().join("run").join("postgres.log");
            eprintln!("---- postgres :{} ----\n{}", self.port, tail(&log, 30));
        }
        let data = self.dir.path().join("data");
        if data.join("postmaster.pid").exists() {
            let exe = self.bin.join("pg_ctl");
            let mut cmd = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&exe);
                c
            } else {
                Command::new(&exe)
            };
            let _ = cmd
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .current_dir("/")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The newest `/usr/lib/postgresql/<v>/bin` with initdb and pg_ctl.
fn pg_bin() -> PathBuf {
    static BIN_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN_DIR
        .get_or_init(|| {
            let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    (bin.join("initdb").exists() && bin.join("pg_ctl").exists())
                        .then_some((version, bin))
                })
                .collect();
            found.sort();
            found.pop().map(|(_, b)| b)
        })
        .clone()
        .expect("no /usr/lib/postgresql/*/bin with initdb and pg_ctl: install the postgresql package (scripts/services.sh does)")
}

// ------------------------------------------------------------------ databases

/// A database of its own on some server, dropped on drop.
pub struct TestDb {
    /// URL of the new database.
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// `CREATE DATABASE <unique>` on the server of `server_url` (whose own
    /// database must exist: it is used for the admin connection).
    pub async fn create(server_url: &str, tag: &str) -> TestDb {
        let name = unique(&format!("velro_cluster_{tag}"));
        let mut admin = PgConnection::connect(server_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {server_url}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let _ = admin.close().await;
        TestDb {
            url: with_database(server_url, &name),
            name,
            admin_url: server_url.to_owned(),
        }
    }

    /// On the server named by `DATABASE_URL` (scripts/services.sh sets it).
    pub async fn from_env(tag: &str) -> TestDb {
        let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
            panic!("DATABASE_URL must name a reachable Postgres: eval \"$(scripts/services.sh env)\"; export DATABASE_URL")
        });
        TestDb::create(&base, tag).await
    }

    /// A pool on the database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("test pool")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop is synchronous: a short-lived runtime on its own thread.
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut c = PgConnection::connect(&admin).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut c)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// `postgres://u@h:p/old?x` → `postgres://u@h:p/<db>?x`.
pub fn with_database(url: &str, db: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (url, None),
    };
    let scheme_end = main.find("://").map_or(0, |i| i + 3);
    let server = match main[scheme_end..].find('/') {
        Some(i) => &main[..scheme_end + i],
        None => main,
    };
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

// ------------------------------------------------------------------ sidecars

/// How to start one sidecar.
#[derive(Clone, Debug)]
pub struct SidecarOptions {
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
}

impl SidecarOptions {
    /// Defaults for `database_url`, no Redis.
    pub fn new(name: &str, database_url: &str) -> SidecarOptions {
        SidecarOptions {
            name: name.to_owned(),
            database_url: database_url.to_owned(),
            redis: None,
            deadline_ms: 500,
            db_timeout_ms: 2_000,
            breaker: (5, 1_000),
            serve_stale_ms: None,
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
    child: Child,
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

/// `velro-authz migrate` on `database_url`.
pub fn migrate(database_url: &str) {
    let dir = TempDir::new("migrate");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, SidecarOptions::new("migrate", database_url).yaml())
        .expect("write config");
    let mut cmd = Command::new(BIN);
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
            let mut cmd = Command::new(BIN);
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
            let child = cmd.spawn().expect("spawn velro-authz serve");
            let client = lazy_client(grpc);
            let mut sidecar = Sidecar {
                name: options.name.clone(),
                grpc_addr: grpc,
                http_addr: http,
                client,
                child,
                dir,
            };
            match sidecar.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return sidecar,
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
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /readyz`: status and JSON body.
    pub async fn readyz(&self) -> std::io::Result<(u16, serde_json::Value)> {
        let (status, body) = http_get(self.http_addr, "/readyz").await?;
        Ok((status, serde_json::from_str(&body).unwrap_or_default()))
    }

    /// `GET /metrics`, parsed.
    pub async fn metrics(&self) -> Scrape {
        let (status, body) = http_get(self.http_addr, "/metrics")
            .await
            .unwrap_or_else(|e| panic!("{}: GET /metrics: {e}", self.name));
        assert_eq!(status, 200, "{}: GET /metrics", self.name);
        Scrape::parse(&body)
    }

    /// One Check; the client gives up after `timeout` (reported as DEADLINE_EXCEEDED).
    pub async fn check(&self, call: &Call, timeout: Duration) -> Result<Answer, tonic::Status> {
        check(&self.client, call, timeout).await
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

fn lazy_client(addr: SocketAddr) -> AuthorizationClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    AuthorizationClient::new(channel)
}

/// `GET path` on a plain HTTP/1.1 socket (the tests have no HTTP client
/// crate; this is all /readyz and /metrics need).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| bad("no header end"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok((status, body))
    })
    .await
    .map_err(std::io::Error::other)?
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

// ------------------------------------------------------------------ metrics

/// A parsed Prometheus text exposition: `(name, labels, value)` per sample.
#[derive(Debug, Default)]
pub struct Scrape {
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

// ------------------------------------------------------------------ checks

/// A JWT verifier/minter with the sidecars' keys.
pub fn jwt() -> std::sync::Arc<JwtVerifier> {
    let config = Config::from_yaml(AUTH_YAML, |k| {
        (k == "DATABASE_URL").then(|| "postgres://unused@127.0.0.1/unused".to_owned())
    })
    .expect("auth config");
    config.jwt.clone()
}

/// A one-hour token for `user`, with optional `sid` and `scope`.
pub fn token(
    jwt: &JwtVerifier,
    user: uuid::Uuid,
    sid: Option<uuid::Uuid>,
    scope: Option<&str>,
) -> String {
    jwt.mint(&MintClaims {
        subject: user.to_string(),
        session_id: sid,
        scope: scope.map(str::to_owned),
        ttl: Duration::from_secs(3600),
        kid: None,
    })
    .expect("mint")
}

/// One request as the proxy describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Call {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Request headers (lower-case names).
    pub headers: Vec<(String, String)>,
}

impl Call {
    /// `method path` with `authorization: Bearer <token>`.
    pub fn bearer(method: &str, path: &str, token: &str) -> Call {
        Call {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: vec![("authorization".to_owned(), format!("Bearer {token}"))],
        }
    }
}

/// What a Check answered, in the terms the tests compare.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Answer {
    /// 200 for allow, else the deny's HTTP status.
    pub status: u16,
    /// Deny reason code, or `ok`.
    pub reason: String,
    /// `x-velro-role` on allow (resource routes), else `None`.
    pub role: Option<String>,
}

impl Answer {
    /// An allow with `role`.
    pub fn allow(role: Option<&str>) -> Answer {
        Answer {
            status: 200,
            reason: "ok".to_owned(),
            role: role.map(str::to_owned),
        }
    }

    /// A deny.
    pub fn deny(status: u16, reason: &str) -> Answer {
        Answer {
            status,
            reason: reason.to_owned(),
            role: None,
        }
    }

    /// Allowed?
    pub fn allowed(&self) -> bool {
        self.status == 200
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.role {
            Some(role) => write!(f, "{} {} role={role}", self.status, self.reason),
            None => write!(f, "{} {}", self.status, self.reason),
        }
    }
}

/// Sends one Check. The client stops waiting after `timeout` and reports
/// DEADLINE_EXCEEDED; the server gets the same deadline as `grpc-timeout`.
pub async fn check(
    client: &AuthorizationClient<Channel>,
    call: &Call,
    timeout: Duration,
) -> Result<Answer, tonic::Status> {
    let http = HttpRequest {
        method: call.method.clone(),
        path: call.path.clone(),
        headers: call.headers.iter().cloned().collect(),
        ..Default::default()
    };
    let mut request = tonic::Request::new(CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    request.set_timeout(timeout);
    let response = match tokio::time::timeout(timeout, client.clone().check(request)).await {
        Ok(r) => r?.into_inner(),
        Err(_) => return Err(tonic::Status::deadline_exceeded("client-side timeout")),
    };
    Ok(match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => Answer {
            status: 200,
            reason: "ok".to_owned(),
            role: ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "x-velro-role")
                .map(|h| h.value.clone()),
        },
        Some(HttpResponse::DeniedResponse(denied)) => {
            let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap_or_default();
            Answer {
                status: denied.status.map_or(0, |s| s.code as u16),
                reason: body["reason"].as_str().unwrap_or("<no reason>").to_owned(),
                role: None,
            }
        }
        Some(HttpResponse::ErrorResponse(_)) | None => Answer::deny(0, "<no ok/denied response>"),
    })
}

/// "Cannot decide" on gRPC (SPEC §4): UNAVAILABLE or DEADLINE_EXCEEDED.
pub fn is_cannot_decide(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

/// Percentiles of a sample: `n p50 p90 p99 max`.
pub fn summary(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "n=0".to_owned();
    }
    let mut s = samples.to_vec();
    s.sort();
    let at = |q: f64| s[((s.len() as f64 * q) as usize).min(s.len() - 1)];
    format!(
        "n={:>5}  p50={:>9.2?}  p90={:>9.2?}  p99={:>9.2?}  max={:>9.2?}",
        s.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        s[s.len() - 1]
    )
}
