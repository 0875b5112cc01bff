//! What keeping recent decisions costs (`explain.recent_decisions`): CPU per
//! recorded decision on the hot path, and memory per kept decision.
//!
//!     cargo bench --bench recent
//!
//! In-process, facts in memory and warm in L1, no log subscriber (so the
//! decision log line itself costs next to nothing and the difference is the
//! trace and the ring). The decision is a deny (`not_found`, four facts: user,
//! generation, its shares and the user's memberships), which is always
//! recorded, and an allow by the owner (traced while deciding, then not kept:
//! allows unsampled here); the same decisions with the ring off are the
//! floor. Rounds alternate off/on so drift on a shared machine hits both.

use std::time::{Duration, Instant};

use uuid::Uuid;
use velro_authz::answer::Outcome;
use velro_authz::authz::{Authorizer, RecentDecisions, Recorded};
use velro_authz::model::UserStatus;
use velro_authz::testkit::procs::rss_bytes;
use velro_authz::testkit::{AuthorizerBuilder, Check, MemorySource, Token, config};

const N: usize = 200_000;
const ROUNDS: usize = 5;

async fn per_check(
    authorizer: &Authorizer<MemorySource>,
    check: &Check,
    allowed: bool,
) -> Duration {
    let started = Instant::now();
    for _ in 0..N {
        let d = check.decide(authorizer, None).await.expect("decided");
        assert_eq!(matches!(d.outcome, Outcome::Allow(_)), allowed);
    }
    started.elapsed() / N as u32
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run it with `cargo bench --bench recent`");
        return;
    }
    let source = MemorySource::new();
    let (user, owner, generation) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    source
        .user(user, UserStatus::Active)
        .user(owner, UserStatus::Active)
        .generation(generation, owner);
    let check = Check::new("GET", &format!("/api/v1/generations/{generation}")).bearer(
        &Token::new(user)
            .ttl(Duration::from_secs(3600))
            .mint(&config("").jwt),
    );
    let owned = Check::new("GET", &format!("/api/v1/generations/{generation}")).bearer(
        &Token::new(owner)
            .ttl(Duration::from_secs(3600))
            .mint(&config("").jwt),
    );
    // Allows unsampled, so an allow shows what tracing costs when nothing is kept.
    let off = AuthorizerBuilder::yaml(
        "explain:\n  recent_decisions: 0\ndecision:\n  allow_log_sample: 0\n",
    )
    .build(source.clone());
    let on = AuthorizerBuilder::yaml("decision:\n  allow_log_sample: 0\n").build(source.clone());
    for a in [&off, &on] {
        for _ in 0..10_000 {
            check.decide(a, None).await.expect("warm");
            owned.decide(a, None).await.expect("warm");
        }
    }
    for (what, check, allowed) in [
        ("deny (not_found, recorded)", &check, false),
        ("allow (owner, traced, not recorded)", &owned, true),
    ] {
        let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            t_off.push(per_check(&off, check, allowed).await);
            t_on.push(per_check(&on, check, allowed).await);
        }
        t_off.sort();
        t_on.sort();
        let (m_off, m_on) = (t_off[ROUNDS / 2], t_on[ROUNDS / 2]);
        println!(
            "{what}, L1 warm, {N} × {ROUNDS} rounds, median round:\n  ring off: {m_off:?}/check\n  ring on:  {m_on:?}/check ({:+.0} ns)",
            m_on.as_nanos() as f64 - m_off.as_nanos() as f64
        );
    }

    // Memory: fill a ring of 100,000 with copies of that decision's record.
    let decision = check.decide(&on, None).await.expect("decided");
    let template = on
        .recorded(&decision.decision_id)
        .expect("a deny is recorded");
    let count = 100_000;
    let ring = RecentDecisions::new(count);
    let before = rss_bytes();
    for n in 0..count {
        let mut r: Recorded = (*template).clone();
        r.id = n as u128 + 1;
        ring.push(r);
    }
    let after = rss_bytes();
    println!(
        "memory: {} facts per record; {count} records: RSS +{:.1} MiB = {} bytes per kept decision",
        template.facts.len(),
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) / count as u64
    );
}
