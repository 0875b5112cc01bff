//! What the L1 caches cost in memory: RSS growth per cached entry, by kind,
//! and the whole process's RSS with 1,000,000 cached facts.
//!
//!     cargo bench --bench memory
//!
//! Each figure comes from a process of its own (this binary runs itself once
//! per part), so memory one part freed is never reused by the next one and
//! hidden from its figure. A part fills a cache through the real code paths:
//! the facts through `Facts` (one typed read per key, each a miss filled from
//! the source), the verified tokens and the mix through `Authorizer` (whole
//! decisions). RSS is read from `/proc/self/statm` before and after the fill.
//!
//! The source makes each fact from its key (ids carry the index that decides
//! owner, project, team...), so it holds nothing itself: every fact is a
//! fresh allocation, as a row read from Postgres is, and the whole process's
//! RSS is the caches, the runtime and this binary.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;
use velro_authz::answer::Outcome;
use velro_authz::facts::{CacheSettings, Fact, FactKey, FactSource, Facts, Trace};
use velro_authz::metrics::Metrics;
use velro_authz::model::{
    ApiKey, Generation, GenerationStatus, Grantee, Membership, Project, ResourceKind, Role,
    Session, Share, Team, User, UserStatus, Visibility,
};
use velro_authz::store::StoreError;
use velro_authz::testkit::procs::rss_bytes;
use velro_authz::testkit::{AuthorizerBuilder, Check, Token, config};

/// Entries per kind in the per-kind parts.
const PER_KIND: u64 = 100_000;
/// Facts in the mix.
const MIX_FACTS: u64 = 1_000_000;
/// The mix's users (each with a token naming a session).
const MIX_USERS: u64 = 50_000;
/// The mix's projects.
const MIX_PROJECTS: u64 = 5_000;
/// The mix's teams: the first `ORGS` have no parent, every other one is a
/// child of one of them.
const MIX_TEAMS: u64 = 1_000;
const ORGS: u64 = 100;
/// One resource in this many has a share (the rest have none).
const SHARED_ONE_IN: u64 = 10;

/// The parts, in table order: (name, what one entry is).
const PARTS: &[(&str, &str)] = &[
    ("user", "user row"),
    ("team", "team row with a parent"),
    ("memberships", "a user's memberships (2)"),
    ("project", "project row in a team"),
    ("generation", "generation row in a project"),
    ("shares", "a generation's shares (1 in 10 has one)"),
    ("session", "session row"),
    ("api_key", "API key row (no scopes)"),
    ("api_key_absent", "no such API key (negative entry)"),
    ("token", "verified token (JWT, no kid)"),
    (
        "moka_floor",
        "moka alone: `u64` key, `()` value, one moka entry per item",
    ),
];

/// What kind of thing an id names; the top byte of the id.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Tag {
    User = 1,
    Team,
    Project,
    Generation,
    Session,
}

fn id(tag: Tag, index: u64) -> Uuid {
    Uuid::from_u128(((tag as u128) << 120) | u128::from(index))
}

fn index(id: Uuid) -> u64 {
    id.as_u128() as u64
}

/// The hex SHA-256-shaped hash of API key `index`; absent keys start with `f`.
fn key_hash(index: u64, present: bool) -> Arc<str> {
    let lead = if present { 'a' } else { 'f' };
    format!("{lead}{index:063x}").into()
}

/// Facts made from their keys; nothing stored.
struct Synth {
    /// Users, for owners and session holders.
    users: u64,
    /// Projects, for generations.
    projects: u64,
}

impl Synth {
    fn team(t: u64) -> Team {
        Team {
            id: id(Tag::Team, t),
            parent_id: (t >= ORGS).then(|| id(Tag::Team, t % ORGS)),
        }
    }

    fn fact(&self, key: &FactKey) -> Fact {
        match key {
            FactKey::User(u) => Fact::User(Some(User {
                id: *u,
                status: UserStatus::Active,
            })),
            FactKey::Team(t) => Fact::Team(Some(Synth::team(index(*t)))),
            FactKey::Memberships(u) => {
                let u = index(*u);
                Fact::Memberships(Arc::from(vec![
                    Membership {
                        team_id: id(Tag::Team, u % MIX_TEAMS),
                        role: Role::Member,
                    },
                    Membership {
                        team_id: id(Tag::Team, (u * 7 + 3) % MIX_TEAMS),
                        role: Role::Viewer,
                    },
                ]))
            }
            FactKey::Project(p) => {
                let n = index(*p);
                Fact::Project(Some(Project {
                    id: *p,
                    owner_id: id(Tag::User, n % self.users),
                    team_id: Some(id(Tag::Team, ORGS + n % (MIX_TEAMS - ORGS))),
                    visibility: Visibility::Private,
                }))
            }
            FactKey::Generation(g) => {
                let n = index(*g);
                Fact::Generation(Some(Generation {
                    id: *g,
                    user_id: id(Tag::User, n % self.users),
                    project_id: Some(id(Tag::Project, n % self.projects)),
                    parent_id: None,
                    status: GenerationStatus::Completed,
                }))
            }
            FactKey::Shares(_, r) => {
                let n = index(*r);
                let shares = if n.is_multiple_of(SHARED_ONE_IN) {
                    vec![Share {
                        grantee: Grantee::User(id(Tag::User, (n + 1) % self.users)),
                        role: Role::Viewer,
                    }]
                } else {
                    Vec::new()
                };
                Fact::Shares(shares.into())
            }
            FactKey::Session(s) => Fact::Session(Some(Session {
                id: *s,
                user_id: id(Tag::User, index(*s) % self.users),
                expires_at: Utc::now() + chrono::Duration::hours(1),
                revoked_at: None,
            })),
            FactKey::ApiKey(hash) if hash.starts_with('a') => {
                Fact::ApiKey(Some(Arc::new(ApiKey {
                    id: Uuid::new_v4(),
                    user_id: id(Tag::User, 0),
                    key_hash: hash.to_string(),
                    scopes: None,
                    expires_at: None,
                    revoked_at: None,
                })))
            }
            FactKey::ApiKey(_) => Fact::ApiKey(None),
        }
    }
}

impl FactSource for Synth {
    async fn load(&self, key: &FactKey) -> Result<Fact, StoreError> {
        Ok(self.fact(key))
    }
}

fn settings(max_facts: u64) -> CacheSettings {
    CacheSettings {
        max_facts,
        ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_secs(30),
        max_decisions: 0,
    }
}

/// One part's result line: `filled cached rss_before rss_after` (entries
/// put in the cache, and the cache's own count of them at the end).
fn report(filled: u64, cached: u64, before: u64, after: u64) {
    println!("{filled} {cached} {before} {after}");
}

/// Fills a bare fact cache with `PER_KIND` facts of `kind`.
async fn facts_part(kind: &str) {
    let source = Synth {
        users: PER_KIND,
        projects: PER_KIND,
    };
    let facts = Facts::new(source, &settings(2 * PER_KIND), Metrics::new());
    let trace = Trace::off();
    let before = rss_bytes();
    for n in 0..PER_KIND {
        let got = match kind {
            "user" => facts.user(id(Tag::User, n), &trace).await.map(|_| ()),
            "team" => facts.team(id(Tag::Team, n), &trace).await.map(|_| ()),
            "memberships" => facts
                .memberships(id(Tag::User, n), &trace)
                .await
                .map(|_| ()),
            "project" => facts.project(id(Tag::Project, n), &trace).await.map(|_| ()),
            "generation" => facts
                .generation(id(Tag::Generation, n), &trace)
                .await
                .map(|_| ()),
            "shares" => facts
                .shares(ResourceKind::Generation, id(Tag::Generation, n), &trace)
                .await
                .map(|_| ()),
            "session" => facts.session(id(Tag::Session, n), &trace).await.map(|_| ()),
            "api_key" => facts.api_key(key_hash(n, true), &trace).await.map(|_| ()),
            "api_key_absent" => facts.api_key(key_hash(n, false), &trace).await.map(|_| ()),
            other => panic!("unknown part {other}"),
        };
        got.expect("fact");
    }
    let after = rss_bytes();
    // Counted after moka's pending bookkeeping (after the RSS reading).
    facts.settle().await;
    report(PER_KIND, facts.entry_count(), before, after);
}

/// What moka itself keeps per entry, built as L1's groups are (bounded, no
/// expiry of its own): why L1 keeps many facts to one entry.
async fn moka_floor_part() {
    let cache: moka::future::Cache<u64, ()> = moka::future::Cache::builder()
        .max_capacity(2 * PER_KIND)
        .build();
    let before = rss_bytes();
    for n in 0..PER_KIND {
        cache.insert(n, ()).await;
    }
    cache.run_pending_tasks().await;
    let after = rss_bytes();
    report(PER_KIND, cache.entry_count(), before, after);
}

/// Fills the verified-token cache: `PER_KIND` distinct tokens of one user
/// (a scope entry of their own makes them distinct; unknown scope entries
/// are ignored), each used by one decision on the same generation (so the
/// facts stay the same few).
async fn token_part() {
    let yaml = format!(
        "explain:\n  recent_decisions: 0\ndecision:\n  allow_log_sample: 0\ncache:\n  max_credentials: {}\n",
        2 * PER_KIND
    );
    let source = Synth {
        users: 1,
        projects: 1,
    };
    let authorizer = AuthorizerBuilder::yaml(&yaml).build(source);
    let jwt = config("").jwt;
    let (user, generation) = (id(Tag::User, 0), id(Tag::Generation, 0));
    let path = format!("/api/v1/generations/{generation}");
    let decide = async |n: u64| {
        let token = Token::new(user)
            .ttl(Duration::from_secs(3600))
            .scope(Some(&format!("read t{n}")))
            .mint(&jwt);
        let decision = Check::new("GET", &path)
            .bearer(&token)
            .decide(&authorizer, None)
            .await
            .expect("decided");
        assert!(matches!(decision.outcome, Outcome::Allow(_)), "the owner");
    };
    // The facts and the runtime's first allocations before the baseline.
    decide(0).await;
    let before = rss_bytes();
    for n in 1..=PER_KIND {
        decide(n).await;
    }
    let after = rss_bytes();
    report(PER_KIND, authorizer.credential_entries() - 1, before, after);
}

/// The mix: `MIX_USERS` users, each with a token naming a session, deciding
/// on their own generations (in projects in teams under orgs, one in ten
/// shared) until the cache holds `MIX_FACTS` facts.
async fn mix_part() {
    // Facts per user (user, memberships, session), per project (project,
    // shares), per generation (generation, shares), plus every team.
    let fixed = 3 * MIX_USERS + 2 * MIX_PROJECTS + MIX_TEAMS;
    let generations = (MIX_FACTS - fixed) / 2;
    let yaml = format!(
        "explain:\n  recent_decisions: 0\ndecision:\n  allow_log_sample: 0\ncache:\n  max_facts: {}\n  max_credentials: {}\n",
        2 * MIX_FACTS,
        2 * MIX_USERS
    );
    let source = Synth {
        users: MIX_USERS,
        projects: MIX_PROJECTS,
    };
    let authorizer = AuthorizerBuilder::yaml(&yaml).build(source);
    let jwt = config("").jwt;
    let start = rss_bytes();
    let started = Instant::now();
    for u in 0..MIX_USERS {
        let token = Token::new(id(Tag::User, u))
            .sid(Some(id(Tag::Session, u)))
            .ttl(Duration::from_secs(3600))
            .mint(&jwt);
        // Generation g belongs to user g % MIX_USERS.
        for g in (u..generations).step_by(MIX_USERS as usize) {
            let path = format!("/api/v1/generations/{}", id(Tag::Generation, g));
            let decision = Check::new("GET", &path)
                .bearer(&token)
                .decide(&authorizer, None)
                .await
                .expect("decided");
            assert!(matches!(decision.outcome, Outcome::Allow(_)), "the owner");
        }
    }
    let after = rss_bytes();
    eprintln!("mix: {generations} decisions in {:?}", started.elapsed());
    let facts: &Arc<Facts<Synth>> = authorizer.facts();
    facts.settle().await;
    println!(
        "{} {} {} {}",
        facts.entry_count(),
        authorizer.credential_entries(),
        start,
        after
    );
}

fn run_part(part: &str) -> Vec<u64> {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .args(["--bench", "--part", part])
        .output()
        .expect("run a part");
    assert!(
        out.status.success(),
        "part {part} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().expect("number"))
        .collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("benchmark: run it with `cargo bench --bench memory`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(part) = args
        .iter()
        .position(|a| a == "--part")
        .map(|i| &args[i + 1])
    {
        match part.as_str() {
            "token" => runtime.block_on(token_part()),
            "mix" => runtime.block_on(mix_part()),
            "moka_floor" => runtime.block_on(moka_floor_part()),
            kind => runtime.block_on(facts_part(kind)),
        }
        return;
    }
    println!(
        "size_of: FactKey {} B, Fact {} B\n",
        std::mem::size_of::<FactKey>(),
        std::mem::size_of::<Fact>()
    );
    println!("| kind | one entry | filled (cached at the end) | RSS growth | bytes per entry |");
    println!("|---|---|---|---|---|");
    for (part, what) in PARTS {
        let r = run_part(part);
        let (filled, cached, before, after) = (r[0], r[1], r[2], r[3]);
        println!(
            "| {part} | {what} | {filled} ({cached}) | {:.1} MiB | {} |",
            mib(after - before),
            (after - before) / filled.max(1)
        );
    }
    let r = run_part("mix");
    let (facts, tokens, start, after) = (r[0], r[1], r[2], r[3]);
    println!(
        "\nmix: {facts} facts + {tokens} verified tokens: process RSS {:.1} MiB ({:.1} MiB before the fill, +{:.1} MiB = {} bytes per entry)",
        mib(after),
        mib(start),
        mib(after - start),
        (after - start) / (facts + tokens).max(1)
    );
}
