//! Servers a cluster test can kill: a throwaway `redis-server` and Postgres
//! cluster on spare ports, restarted on the same ports. Everything else the
//! cluster tests use (sidecar processes, databases, Checks) is the test kit's,
//! shared with the freshness benchmark.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use velro_authz::testkit::procs::{TempDir, free_port, run, tail, wait_for};

/// The sidecar binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_velro-authz");

fn is_root() -> bool {
    // `id -u` rather than libc: the tests use no unsafe code and no extra crate.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
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

/// "Cannot decide" on gRPC (SPEC §4): UNAVAILABLE or DEADLINE_EXCEEDED.
pub fn is_cannot_decide(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}
