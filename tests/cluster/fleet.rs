//! What the storm and the fault tests share: a database with the world in it,
//! sidecars over it, client traffic, and the comparison with the oracle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use velro_authz::authn::apikey;
use velro_authz::testkit::procs::TestDb;
use velro_authz::testkit::sidecar::{Sidecar, SidecarOptions, jwt, migrate};
use velro_authz::testkit::{Check, Verdict};

use super::oracle::Snapshot;
use super::support::BIN;
use super::world::{Principal, Route, Sizes, World, call, credential};

/// A migrated, seeded database and the sidecars over it.
pub struct Fleet {
    /// The sidecars (declared before `db`, so they stop before it is dropped).
    pub sidecars: Vec<Sidecar>,
    /// The world in the database.
    pub world: Arc<World>,
    /// Every principal of the world.
    pub principals: Vec<Principal>,
    /// Each principal's credential header, minted once: a sidecar verifies a
    /// token once and then caches it, as it would for a real client.
    credentials: HashMap<Principal, (String, String)>,
    /// A pool for writers and the oracle.
    pub pool: PgPool,
    /// The database.
    pub db: TestDb,
}

impl Fleet {
    /// Migrates `db` with the binary, seeds a world from `seed` and starts one
    /// sidecar per option set, all at once.
    pub async fn start(db: TestDb, seed: u64, options: Vec<SidecarOptions>) -> Fleet {
        let url = db.url.clone();
        tokio::task::spawn_blocking(move || migrate(BIN, &url))
            .await
            .expect("migrate");
        let pool = db.pool().await;
        let world = Arc::new(World::seed(&pool, seed, Sizes::STORM).await);
        let starts: Vec<_> = options
            .into_iter()
            .map(|o| tokio::spawn(async move { Sidecar::start(&o).await }))
            .collect();
        let mut sidecars = Vec::new();
        for s in starts {
            sidecars.push(s.await.expect("sidecar start"));
        }
        let principals = world.principals(seed);
        let jwt = jwt();
        let credentials = principals
            .iter()
            .map(|p| (p.clone(), credential(&jwt, p)))
            .collect();
        Fleet {
            sidecars,
            world,
            principals,
            credentials,
            pool,
            db,
        }
    }

    /// `n` sampled pairs and the requests for them.
    pub fn sample(&self, n: usize, seed: u64) -> (Vec<(Principal, Route)>, Arc<Vec<Check>>) {
        let pairs = self.world.sample(&self.principals, n, seed);
        let calls = self.calls(&pairs);
        (pairs, calls)
    }

    /// The requests for `pairs` (principals of this world).
    pub fn calls(&self, pairs: &[(Principal, Route)]) -> Arc<Vec<Check>> {
        Arc::new(
            pairs
                .iter()
                .map(|(p, r)| call(&self.credentials[p], r))
                .collect(),
        )
    }

    /// The oracle's answers for `pairs`, from a snapshot taken now.
    pub async fn expected(&self, pairs: &[(Principal, Route)]) -> Vec<Verdict> {
        let snapshot = Snapshot::load(&self.pool).await;
        pairs.iter().map(|(p, r)| snapshot.expected(p, r)).collect()
    }
}

/// A principal for reports, without its secret: API keys by a hash prefix.
pub fn describe(p: &Principal, r: &Route) -> String {
    let who = match p {
        Principal::Jwt { user, sid, scope } => format!(
            "jwt(sub={user}{}{})",
            sid.map(|s| format!(", sid={s}")).unwrap_or_default(),
            scope
                .as_ref()
                .map(|s| format!(", scope={s:?}"))
                .unwrap_or_default()
        ),
        Principal::ApiKey { plain } => format!("api_key(sha256:{}…)", &apikey::hash(plain)[..12]),
    };
    format!("{who} {} {}", r.method, r.path)
}

/// One answer that differs from the oracle.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// Which sidecar.
    pub sidecar: usize,
    /// Index into the sample.
    pub index: usize,
    /// When the Check was sent, after the comparison's reference instant.
    pub asked_at: Duration,
    /// What it answered (or the RPC error).
    pub got: Result<Verdict, String>,
}

/// One answer from [`ask`]: index, when it was sent (after `since`), result.
pub type Asked = (usize, Duration, Result<Verdict, tonic::Status>);

/// Asks `sidecar` every call in `indices`, `concurrency` at a time, noting
/// when each was sent.
pub async fn ask(
    sidecar: &Sidecar,
    calls: &Arc<Vec<Check>>,
    indices: &[usize],
    concurrency: usize,
    since: Instant,
) -> Vec<Asked> {
    let chunks: Vec<Vec<usize>> = (0..concurrency)
        .map(|k| {
            indices
                .iter()
                .copied()
                .skip(k)
                .step_by(concurrency)
                .collect()
        })
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let client = sidecar.client.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(chunk.len());
                for i in chunk {
                    let sent = since.elapsed();
                    let got =
                        velro_authz::testkit::verdict(&client, &calls[i], Duration::from_secs(10))
                            .await;
                    out.push((i, sent, got));
                }
                out
            })
        })
        .collect();
    let mut out = Vec::with_capacity(indices.len());
    for t in tasks {
        out.extend(t.await.expect("ask task"));
    }
    out
}

/// Asks every sidecar its pending indices (all sidecars at once) and returns
/// the differences.
async fn round(
    sidecars: &[Sidecar],
    calls: &Arc<Vec<Check>>,
    expected: &[Verdict],
    pending: &[Vec<usize>],
    since: Instant,
) -> Vec<Mismatch> {
    let asks: Vec<_> = sidecars
        .iter()
        .zip(pending)
        .map(|(s, idx)| ask(s, calls, idx, 8, since))
        .collect();
    let mut out = Vec::new();
    for (k, a) in asks.into_iter().enumerate() {
        for (i, asked_at, got) in a.await {
            let got = got.map_err(|s| format!("RPC error {:?}: {}", s.code(), s.message()));
            if got.as_ref() != Ok(&expected[i]) {
                out.push(Mismatch {
                    sidecar: k,
                    index: i,
                    asked_at,
                    got,
                });
            }
        }
    }
    out
}

/// How long [`converge`] keeps re-asking wrong answers after the window (or
/// after its first round, if that ends later), only to tell a late
/// invalidation from a lost one in the report.
const DIAGNOSE_FOR: Duration = Duration::from_secs(5);

/// Result of [`converge`].
pub struct Convergence {
    /// Failures: the first wrong answer of each (sidecar, pair) asked after
    /// the window, and anything wrong in the confirming round.
    pub mismatches: Vec<Mismatch>,
    /// Per round: (asks, wrong answers, when it ended after `since`). The first
    /// and the confirming last round ask everything.
    pub rounds: Vec<(usize, usize, Duration)>,
    /// When every answer was right (the end of the round that found none),
    /// after `since`; `None` if some were still wrong `DIAGNOSE_FOR` later:
    /// an invalidation lost, not late.
    pub all_right_at: Option<Duration>,
}

impl std::fmt::Display for Convergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, (asks, wrong, at)) in self.rounds.iter().enumerate() {
            let sep = if k > 0 { "; " } else { "" };
            write!(
                f,
                "{sep}round {k}: {asks} asks, {wrong} wrong, done at +{at:.2?}"
            )?;
        }
        match self.all_right_at {
            Some(at) => write!(f, "; every answer right at +{at:.2?}"),
            None => write!(f, "; some answers STILL WRONG at the end"),
        }
    }
}

/// Compares every sidecar with `expected` on every call. The rule: every
/// answer asked `within` or later after `since` must equal the oracle's; an
/// answer asked earlier may still lag and is asked again. Then everything is
/// asked once more (the truth no longer changes, so nothing may flip back).
///
/// Thousands of Checks against debug-build sidecars on 2 cores take seconds,
/// longer than `within`: so the rule is applied per answer, by the time it was
/// asked, not per round. A stale answer 3 s after the last commit fails even if
/// a later retry is right; wrong answers are still re-asked for a while, so the
/// report says whether they were late or never came right.
pub async fn converge(
    sidecars: &[Sidecar],
    calls: &Arc<Vec<Check>>,
    expected: &[Verdict],
    since: Instant,
    within: Duration,
) -> Convergence {
    let all: Vec<usize> = (0..calls.len()).collect();
    let mut pending: Vec<Vec<usize>> = vec![all.clone(); sidecars.len()];
    let mut rounds = Vec::new();
    let mut failures: Vec<Mismatch> = Vec::new();
    let mut give_up = None;
    let all_right_at = loop {
        let mismatches = round(sidecars, calls, expected, &pending, since).await;
        let asks = pending.iter().map(Vec::len).sum();
        rounds.push((asks, mismatches.len(), since.elapsed()));
        if mismatches.is_empty() {
            break Some(since.elapsed());
        }
        for m in &mismatches {
            let seen = failures
                .iter()
                .any(|f| f.sidecar == m.sidecar && f.index == m.index);
            if m.asked_at >= within && !seen {
                failures.push(m.clone());
            }
        }
        let give_up = *give_up.get_or_insert(since.elapsed().max(within) + DIAGNOSE_FOR);
        if since.elapsed() > give_up {
            break None;
        }
        pending = vec![Vec::new(); sidecars.len()];
        for m in &mismatches {
            pending[m.sidecar].push(m.index);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if all_right_at.is_some() {
        let confirm = round(sidecars, calls, expected, &vec![all; sidecars.len()], since).await;
        rounds.push((calls.len() * sidecars.len(), confirm.len(), since.elapsed()));
        failures.extend(confirm);
    }
    Convergence {
        mismatches: failures,
        rounds,
        all_right_at,
    }
}

/// Each sidecar's invalidation lag (commit → applied) from its histogram:
/// count, mean, and how many took over 50 ms (the SPEC target) and over 1 s.
pub async fn lag_report(sidecars: &[Sidecar]) -> String {
    let mut out = Vec::new();
    for s in sidecars {
        let m = s.metrics().await;
        let name = "velro_authz_invalidation_lag_seconds";
        let count = m.sum(&format!("{name}_count"), &[]).unwrap_or(0.0);
        let sum = m.sum(&format!("{name}_sum"), &[]).unwrap_or(0.0);
        let within = |le: &str| {
            m.sum(&format!("{name}_bucket"), &[("le", le)])
                .unwrap_or(0.0)
        };
        out.push(format!(
            "{}: {count} applied, mean {:.1} ms, {} over 50 ms, {} over 1 s",
            s.name,
            if count > 0.0 { sum / count * 1e3 } else { 0.0 },
            count - within("0.05"),
            count - within("1"),
        ));
    }
    out.join("; ")
}

/// Asks each sidecar every call in `indices` and panics, with a report, on
/// any answer that is not `expected`.
pub async fn expect_all(
    what: &str,
    sidecars: &[Sidecar],
    calls: &Arc<Vec<Check>>,
    indices: &[usize],
    pairs: &[(Principal, Route)],
    expected: &[Verdict],
) {
    let pending = vec![indices.to_vec(); sidecars.len()];
    let mismatches = round(sidecars, calls, expected, &pending, Instant::now()).await;
    assert!(
        mismatches.is_empty(),
        "{what}: {}",
        report(&mismatches, sidecars, pairs, expected)
    );
}

/// Up to 10 mismatches, readable.
pub fn report(
    mismatches: &[Mismatch],
    sidecars: &[Sidecar],
    pairs: &[(Principal, Route)],
    expected: &[Verdict],
) -> String {
    let mut out = format!("{} mismatches", mismatches.len());
    for m in mismatches.iter().take(10) {
        let (p, r) = &pairs[m.index];
        let got = match &m.got {
            Ok(a) => a.to_string(),
            Err(e) => e.clone(),
        };
        out.push_str(&format!(
            "\n  {} (asked at +{:.2?}): {} → got {got}, want {}",
            sidecars[m.sidecar].name,
            m.asked_at,
            describe(p, r),
            expected[m.index]
        ));
    }
    out
}

/// Client tasks sending Checks to every sidecar until stopped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    problems: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// `per_sidecar` tasks per sidecar, each walking `calls` from its own offset.
    /// With `expected`, every answer must equal it; without, it must be a
    /// well-formed allow or deny (200, 401, 403, 404). Any RPC error is a problem.
    pub fn start(
        sidecars: &[Sidecar],
        calls: Arc<Vec<Check>>,
        expected: Option<Arc<Vec<Verdict>>>,
        per_sidecar: usize,
        timeout: Duration,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for s in sidecars {
            for k in 0..per_sidecar {
                let (client, name) = (s.client.clone(), s.name.clone());
                let (calls, expected) = (calls.clone(), expected.clone());
                let (stop, sent, problems) = (stop.clone(), sent.clone(), problems.clone());
                let offset = k * calls.len() / per_sidecar.max(1);
                tasks.push(tokio::spawn(async move {
                    let mut i = offset;
                    while !stop.load(Ordering::Relaxed) {
                        let idx = i % calls.len();
                        i += 1;
                        let got =
                            velro_authz::testkit::verdict(&client, &calls[idx], timeout).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        let problem = match (&got, &expected) {
                            (Err(e), _) => {
                                Some(format!("RPC error {:?}: {}", e.code(), e.message()))
                            }
                            (Ok(a), Some(want)) if *a != want[idx] => {
                                Some(format!("got {a}, want {}", want[idx]))
                            }
                            (Ok(a), None) if ![200, 401, 403, 404].contains(&a.status) => {
                                Some(format!("unexpected answer {a}"))
                            }
                            _ => None,
                        };
                        if let Some(p) = problem {
                            let mut ps = problems.lock().unwrap_or_else(|e| e.into_inner());
                            ps.push(format!(
                                "{name}: {} {} (call #{idx}): {p}",
                                calls[idx].method, calls[idx].path
                            ));
                        }
                    }
                }));
            }
        }
        Traffic {
            stop,
            sent,
            problems,
            tasks,
        }
    }

    /// Checks sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops and returns (checks sent, problems).
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("traffic task");
        }
        let problems =
            std::mem::take(&mut *self.problems.lock().unwrap_or_else(|e| e.into_inner()));
        (self.sent.load(Ordering::Relaxed), problems)
    }
}

/// Panics with up to 10 problems when there are any.
pub fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problems, first ones:\n  {}",
        problems.len(),
        problems
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
