//! The README's commands, run the way a new user runs them: `scripts/demo.sh`
//! in one terminal, then every `sh` block of README.md, in order, in another.
//!
//! The second terminal is one `bash -euo pipefail` with a fresh terminal's
//! environment (`PATH`, `HOME`, `USER`: no `DATABASE_URL`, no `VELRO_AUTHZ_*`),
//! its working directory a copy of the checkout's layout made of symlinks
//! (`demo/`, `scripts/`, `tests/`, `.dev/venv` with the pinned grpcurl, and
//! `target/release/velro-authz` → this build's binary). There
//! `scripts/demo.sh` runs as written, pointed at a database and Redis key
//! prefix of this test's own through the variables it honours (`DATABASE_URL`,
//! `REDIS_URL`, `VELRO_AUTHZ_REDIS_PREFIX`; `VELRO_DEMO_PREBUILT=1` instead of
//! a release build), so the README's commands find them the way a user's do:
//! through the `.dev/demo.env` it writes.
//!
//! A block the test must not run says why in a `<!-- not run by
//! tests/readme.rs: … -->` line right above it; every other `sh` block runs,
//! and any that fails fails the test. A code block must name its language, so
//! a command cannot slip past as an unnamed block.
//!
//! The README's commands name the demo's fixed ports (9191, 8181, 9192): the
//! test fails at once, saying which, when one is taken (a `scripts/demo.sh`
//! still running, say). Like the integration tests it needs Postgres at
//! `DATABASE_URL` and Redis at `REDIS_URL`, and fails without them; grpcurl
//! comes from `.dev/venv` (`scripts/pyenv.sh`, which `scripts/test.sh` runs).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use velro_authz::testkit::http::try_send;
use velro_authz::testkit::procs::{RedisPrefix, TempDir, TestDb, tail};

/// The ports the README's commands and `demo/config.yaml` name.
const DEMO_PORTS: [(u16, &str); 3] = [
    (9191, "ext_authz (grpc_addr)"),
    (8181, "health and metrics (http_addr)"),
    (9192, "the admin service (admin.addr)"),
];

/// The line that keeps the next block out of the run; a reason must follow.
const NOT_RUN: &str = "<!-- not run by tests/readme.rs:";

/// What the README's commands must print: the `occurrence`-th (from 1) block
/// containing `command` prints every one of `output`. A README edit that
/// drops such a command fails the test too.
struct Expect {
    command: &'static str,
    occurrence: usize,
    output: &'static [&'static str],
    what: &'static str,
}

const EXPECTED: &[Expect] = &[
    Expect {
        command: "envoy.service.auth.v3.Authorization/Check",
        occurrence: 1,
        output: &[
            "\"okResponse\"",
            "\"x-velro-user-id\"",
            "\"10000000-0000-4000-8000-000000000002\"",
            "\"x-velro-role\"",
            "\"value\": \"member\"",
        ],
        what: "the first Check after start-up allows bob on generation 07 as a member",
    },
    Expect {
        command: "admin explain \\\n  --token \"$TOKEN\" /api/v1/generations/40000000-0000-4000-8000-000000000007",
        occurrence: 1,
        output: &[
            "\"allowed\": true",
            "\"role\": \"member\"",
            "\"kind\": \"memberships\"",
            "\"kind\": \"generation\"",
            "\"source\": \"",
        ],
        what: "Explain shows the facts behind the allow and where each came from",
    },
    Expect {
        command: "DELETE FROM team_members",
        occurrence: 1,
        output: &["DELETE 1"],
        what: "the revoke deletes bob's membership",
    },
    Expect {
        command: "envoy.service.auth.v3.Authorization/Check",
        occurrence: 2,
        output: &[
            "\"deniedResponse\"",
            "\"code\": 5",
            "\"reason\": \"not_found\"",
            "velro_authz_invalidations_total{table=\"team_members\"} 1",
        ],
        what: "after the revoke the same Check denies (404 not_found), the invalidation counted",
    },
    Expect {
        command: "check --explain",
        occurrence: 1,
        output: &["\"allowed\": true", "\"source\": \"postgres\"", "\"facts\""],
        what: "the command-line check decides from Postgres and explains",
    },
    Expect {
        command: "apikey create",
        occurrence: 1,
        output: &["only its hash is stored"],
        what: "an API key is created",
    },
    Expect {
        command: "/api/v1/projects/30000000-0000-4000-8000-000000000003\n",
        occurrence: 1,
        output: &[
            "\"reason\": \"not_found\"",
            "\"kind\": \"project\"",
            "\"fact_entries\"",
            "\"redis_trusted\"",
        ],
        what: "admin explain says why a 404, cache-stats answers",
    },
    Expect {
        command: "localhost:9191 list",
        occurrence: 1,
        output: &[
            "envoy.service.auth.v3.Authorization",
            "grpc.health.v1.Health",
            "\"status\": \"SERVING\"",
            "\"reason\": \"not_found\"",
        ],
        what: "grpcurl lists the Check port's services, health, and the admin Explain",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_commands_run_as_written_against_scripts_demo_sh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let blocks = code_blocks(&readme);
    let run: Vec<&Block> = blocks.iter().filter(|b| b.runs()).collect();
    let expectations: Vec<(&Expect, usize)> =
        EXPECTED.iter().map(|e| (e, block_of(&run, e))).collect();

    for (port, what) in DEMO_PORTS {
        if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
            panic!(
                "127.0.0.1:{port} ({what}) is taken ({e}): the README's commands name it, so this \
                 test runs the demo there. A scripts/demo.sh still running? Stop it and re-run."
            );
        }
    }
    let grpcurl = root.join(".dev/venv/bin/grpcurl");
    assert!(
        grpcurl.exists(),
        "{} is missing: run scripts/pyenv.sh (scripts/test.sh and scripts/demo.sh do)",
        grpcurl.display()
    );
    let redis_url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("REDIS_URL must point at a running Redis (scripts/test.sh sets it)");
    let db = TestDb::from_env("readme").await;
    let redis = RedisPrefix::new(&redis_url, "readme");
    let checkout = checkout(root);

    let mut demo = Demo::start(checkout.path(), &db.url, &redis_url, &redis.prefix);
    let ready = demo.wait_ready(Duration::from_secs(120)).await;
    // Straight on: the first Check the README makes is the first this sidecar
    // answers, as a new user's is.
    let script = script(&run);
    let out = terminal(checkout.path(), &script);

    if let Some(failed) = &out.failed {
        let block = out.outputs.len().checked_sub(1).map(|i| run[i]);
        let output = out.outputs.last().map_or("", String::as_str);
        if output.contains("DeadlineExceeded") {
            panic!(
                "a README command answered DEADLINE_EXCEEDED right after start-up (README.md line \
                 {}): the cold path is slower than decision.deadline_ms\n{output}\n{}",
                block.map_or(0, |b| b.line),
                demo.logs()
            );
        }
        panic!(
            "README.md's commands stopped ({failed}) in the block at line {}:\n{}\n---- its output \
             ----\n{output}\n{}",
            block.map_or(0, |b| b.line),
            block.map_or("", |b| b.text.as_str()),
            demo.logs()
        );
    }
    assert_eq!(out.outputs.len(), run.len(), "one output per block");
    assert_eq!(
        ready["redis"],
        serde_json::Value::Bool(true),
        "the demo runs with the Redis tier on and up: /readyz {ready}"
    );
    for (expect, index) in expectations {
        let output = &out.outputs[index];
        for wanted in expect.output {
            assert!(
                output.contains(wanted),
                "{}: README.md line {} printed no {wanted:?}:\n{}\n---- output ----\n{output}",
                expect.what,
                run[index].line,
                run[index].text
            );
        }
    }
    let admin_in_list = out
        .outputs
        .iter()
        .zip(&run)
        .find(|(_, b)| b.text.contains("localhost:9191 list"))
        .is_some_and(|(o, _)| o.lines().any(|l| l.trim() == "velro.authz.admin.v1.Admin"));
    assert!(
        !admin_in_list,
        "the admin service must not be served on the Check port"
    );

    next_steps_are_the_readmes(&demo.stdout(), &run);
    secrets_are_the_users_alone(checkout.path());
}

/// What README.md says of `.dev/`: readable by the user only; the key and
/// the token are in files of their own, not in `demo.env`.
fn secrets_are_the_users_alone(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    for file in ["demo.env", "admin-token", "redis-hmac-key"] {
        let path = dir.join(".dev").join(file);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
    }
    let env = std::fs::read_to_string(dir.join(".dev/demo.env")).expect("demo.env");
    for secret in ["admin-token", "redis-hmac-key"] {
        let value = std::fs::read_to_string(dir.join(".dev").join(secret)).expect("secret");
        assert!(
            !env.contains(value.trim()),
            "demo.env holds the {secret} itself"
        );
    }
}

/// `scripts/demo.sh` prints the next three things to try: numbered 1 to 3,
/// and each command line word for word a line of a block this test ran.
fn next_steps_are_the_readmes(printed: &str, run: &[&Block]) {
    let after = printed
        .split_once("Next, in another terminal")
        .unwrap_or_else(|| panic!("scripts/demo.sh printed no next steps:\n{printed}"))
        .1;
    for n in 1..=3 {
        assert!(
            after.lines().any(|l| l.starts_with(&format!("{n}. "))),
            "scripts/demo.sh's next steps have no {n}.:\n{after}"
        );
    }
    let readme_lines: Vec<&str> = run.iter().flat_map(|b| b.text.lines()).collect();
    let commands: Vec<&str> = after
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .collect();
    assert!(
        commands.len() >= 5,
        "too few commands in scripts/demo.sh's next steps:\n{after}"
    );
    for command in commands {
        assert!(
            readme_lines.contains(&command),
            "scripts/demo.sh suggests a line that no block of README.md that runs has: \
             {command:?}"
        );
    }
}

// ------------------------------------------------------------------ README

/// A fenced code block of README.md.
#[derive(Debug)]
struct Block {
    /// Line of the opening fence, from 1.
    line: usize,
    /// The fence's language.
    lang: String,
    /// The lines between the fences, each ending in `\n`.
    text: String,
    /// Why it is not run, when marked so.
    not_run: Option<String>,
}

impl Block {
    /// A shell block that is not marked to stay out.
    fn runs(&self) -> bool {
        matches!(self.lang.as_str(), "sh" | "bash" | "shell") && self.not_run.is_none()
    }
}

/// Every fenced block; panics on a fence without a language, an unclosed
/// one, or a marker that keeps no shell block out or gives no reason.
fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    let mut previous = "";
    while let Some((i, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            if !line.trim().is_empty() {
                previous = line;
            }
            continue;
        };
        let lang = info.split_whitespace().next().unwrap_or("").to_owned();
        assert!(
            !lang.is_empty(),
            "README.md:{}: a code block without a language: name it (`sh` blocks are run by \
             tests/readme.rs, `text` for anything else)",
            i + 1
        );
        let not_run = previous.trim().strip_prefix(NOT_RUN).map(|rest| {
            let reason = rest.trim().trim_end_matches("-->").trim();
            assert!(
                !reason.is_empty(),
                "README.md:{}: say why the block is not run",
                i + 1
            );
            reason.to_owned()
        });
        let mut text = String::new();
        let mut closed = false;
        for (_, inner) in lines.by_ref() {
            if inner.starts_with("```") {
                closed = true;
                break;
            }
            text.push_str(inner);
            text.push('\n');
        }
        assert!(closed, "README.md:{}: the code block is not closed", i + 1);
        let block = Block {
            line: i + 1,
            lang,
            text,
            not_run,
        };
        assert!(
            block.not_run.is_none() || matches!(block.lang.as_str(), "sh" | "bash" | "shell"),
            "README.md:{}: `{NOT_RUN}` above a {} block, which never runs",
            block.line,
            block.lang
        );
        blocks.push(block);
        previous = "";
    }
    blocks
}

/// The index (among the blocks that run) of the block `expect` is about.
fn block_of(run: &[&Block], expect: &Expect) -> usize {
    run.iter()
        .enumerate()
        .filter(|(_, b)| b.text.contains(expect.command))
        .nth(expect.occurrence - 1)
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            panic!(
                "README.md has no block to run with {:?} (occurrence {}), which this test checks: \
                 {}",
                expect.command, expect.occurrence, expect.what
            )
        })
}

/// The blocks as one script, a marker line before each so their outputs can
/// be told apart.
fn script(run: &[&Block]) -> String {
    let mut script = String::new();
    for (i, block) in run.iter().enumerate() {
        script.push_str(&format!("echo '{}'\n", marker(i)));
        script.push_str(&block.text);
    }
    script
}

fn marker(i: usize) -> String {
    format!("@@ tests/readme.rs: block {i} @@")
}

// ------------------------------------------------------------------ the terminals

/// A directory laid out like the checkout, everything the README's commands
/// touch symlinked (the demo writes its `.dev/` files here, not in the real
/// checkout).
fn checkout(root: &Path) -> TempDir {
    use std::os::unix::fs::symlink;
    let dir = TempDir::new("readme");
    let at = |p: &str| dir.path().join(p);
    for d in ["demo", "scripts", "tests"] {
        symlink(root.join(d), at(d)).expect("symlink");
    }
    std::fs::create_dir_all(at(".dev")).expect("mkdir .dev");
    symlink(root.join(".dev/venv"), at(".dev/venv")).expect("symlink .dev/venv");
    std::fs::create_dir_all(at("target/release")).expect("mkdir target/release");
    symlink(
        env!("CARGO_BIN_EXE_velro-authz"),
        at("target/release/velro-authz"),
    )
    .expect("symlink the binary");
    dir
}

/// What a fresh terminal has: no settings of this project.
fn fresh(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for name in ["PATH", "HOME", "USER"] {
        if let Ok(value) = std::env::var(name) {
            cmd.env(name, value);
        }
    }
    cmd
}

/// The second terminal's run: each block's output (stdout and stderr
/// together), and why it stopped early, if it did.
struct Terminal {
    outputs: Vec<String>,
    failed: Option<String>,
}

fn terminal(dir: &Path, script: &str) -> Terminal {
    let path = dir.join("readme-commands.sh");
    std::fs::write(&path, script).expect("write the script");
    let log = dir.join("readme-commands.log");
    let file = File::create(&log).expect("log");
    let status = fresh(&mut Command::new("bash"))
        .args(["-euo", "pipefail"])
        .arg(&path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .status()
        .expect("run bash");
    let text = std::fs::read_to_string(&log).expect("read log");
    let mut outputs: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        if line.trim_end() == marker(outputs.len()) {
            outputs.push(String::new());
        } else if let Some(output) = outputs.last_mut() {
            output.push_str(line);
        }
    }
    Terminal {
        outputs,
        failed: (!status.success()).then(|| status.to_string()),
    }
}

/// `scripts/demo.sh`, running until dropped.
struct Demo {
    child: Child,
    dir: PathBuf,
}

impl Demo {
    /// Starts `scripts/demo.sh` in `dir`, on this test's database and prefix.
    fn start(dir: &Path, database_url: &str, redis_url: &str, prefix: &str) -> Demo {
        let child = fresh(&mut Command::new("scripts/demo.sh"))
            .current_dir(dir)
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .env("VELRO_AUTHZ_REDIS_PREFIX", prefix)
            .env("VELRO_DEMO_PREBUILT", "1")
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("demo.stdout")).expect("log"))
            .stderr(File::create(dir.join("demo.stderr")).expect("log"))
            .spawn()
            .expect("start scripts/demo.sh");
        Demo {
            child,
            dir: dir.to_owned(),
        }
    }

    /// Waits until `/readyz` answers 200, as someone watching the demo's
    /// output would start the moment it says it serves; returns its body.
    async fn wait_ready(&mut self, within: Duration) -> serde_json::Value {
        let addr: SocketAddr = ([127, 0, 0, 1], 8181).into();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("scripts/demo.sh exited with {status}\n{}", self.logs());
            }
            if let Ok(reply) = try_send(addr, "GET", "/readyz", &[], Vec::new()).await
                && reply.status == 200
            {
                return serde_json::from_slice(&reply.body).unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "scripts/demo.sh not ready within {within:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("demo.stdout")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "---- scripts/demo.sh stdout ----\n{}\n---- scripts/demo.sh stderr ----\n{}",
            tail(&self.dir.join("demo.stdout"), 40),
            tail(&self.dir.join("demo.stderr"), 40)
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // demo.sh has exec'd `velro-authz serve` by now: this ends the sidecar.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
