//! What tests that leave the process share: unique names, free ports, temp
//! dirs, commands run to completion, databases and Redis key prefixes of
//! their own. Everything here cleans up on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};

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
    /// The directory.
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

/// Runs a command to completion; panics with its output when it fails.
pub fn run(cmd: &mut Command, what: &str) -> String {
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

/// This process's resident memory, bytes (for benches measuring what a
/// fill or a ring costs).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Percentiles of a sample of latencies, one line:
/// `n p50 p90 p99 p99.9 max`.
pub fn percentiles(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "n=0".to_owned();
    }
    let mut s = samples.to_vec();
    s.sort();
    let at = |q: f64| s[((s.len() as f64 * q) as usize).min(s.len() - 1)];
    format!(
        "n={:>6}  p50={:>9.1?}  p90={:>9.1?}  p99={:>9.1?}  p99.9={:>9.1?}  max={:>9.1?}",
        s.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        s[s.len() - 1]
    )
}

// ------------------------------------------------------------------ databases

/// A database of its own on some server, dropped on drop.
pub struct TestDb {
    /// URL of the new database.
    pub url: String,
    /// Its name.
    pub name: String,
    /// The server's own database, to drop this one from.
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

// ------------------------------------------------------------------ redis

/// A Redis key prefix of its own on a shared server, whose keys are deleted
/// on drop: L2 entries expire by themselves, but the epoch key has no TTL.
/// Best effort (with `redis-cli`): leftovers are harmless, only untidy.
pub struct RedisPrefix {
    /// The server.
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
