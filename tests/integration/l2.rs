//! The shared Redis tier (SPEC §5) against real Postgres and real Redis: facts
//! filled by one sidecar serve another, invalidations reach Redis, a fill that
//! read an old row cannot write it back after the invalidation, a LISTEN gap
//! voids what Redis holds, and a dead Redis costs nothing but speed.
//! Each test uses its own database and its own key prefix.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;
use velro_authz::answer::Outcome;
use velro_authz::facts::l2::{L2, L2Get};
use velro_authz::facts::{Fact, FactKey};
use velro_authz::metrics::Metrics;
use velro_authz::redis::Redis;
use velro_authz::store::Store;
use velro_authz::testkit::{AuthorizerBuilder, Held, Token};

use super::support::{
    Harness, attach, config, decide_get, demo::*, redis_client, redis_yaml, start_with,
    unique_prefix,
};

fn l2_of(h: &Harness) -> Arc<L2> {
    h.running
        .authorizer
        .facts()
        .l2()
        .expect("redis configured")
        .clone()
}

/// A Redis client and tier of `cfg`'s, outside any sidecar (the caller
/// starts their tasks).
fn redis_tier(cfg: &velro_authz::config::Config, metrics: &Metrics) -> (Arc<Redis>, Arc<L2>) {
    let client = Redis::new(cfg.redis.as_ref().expect("redis"), metrics.clone()).expect("redis");
    let l2 = L2::new(
        client.clone(),
        cfg.l2.clone(),
        cfg.freshness.max_silence,
        metrics.clone(),
    );
    (client, l2)
}

/// Waits until each sidecar has bumped the epoch after its start and trusts L2.
async fn until_usable(sidecars: &[&Harness]) {
    for h in sidecars {
        let l2 = l2_of(h);
        h.eventually(Duration::from_secs(10), || {
            let l2 = l2.clone();
            async move { l2.usable() }
        })
        .await;
    }
}

/// A GET Check's status, once the Redis fills it left running (written
/// after the answer) have landed.
async fn check(h: &Harness, user: &str, path: &str) -> u16 {
    let status = h.check_as(user, "GET", path).await.status;
    h.running.authorizer.facts().fills_settled().await;
    status
}

fn queries(h: &Harness) -> u64 {
    h.running.metrics.store_queries_total()
}

#[sqlx::test(migrations = "./migrations")]
async fn l2_facts_filled_by_one_sidecar_serve_another_without_postgres(pool: PgPool) {
    let prefix = unique_prefix("share");
    let a = start_with(pool.clone(), config(&redis_yaml(&prefix))).await;
    let b = attach(pool, config(&redis_yaml(&prefix))).await;
    until_usable(&[&a, &b]).await;

    let path = format!("/api/v1/generations/{GEN_CHILD}");
    assert_eq!(check(&a, BOB, &path).await, 200);
    let before = queries(&b);
    let answer = b.check_as(BOB, "GET", &path).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        queries(&b),
        before,
        "every fact B needed came from Redis, none from Postgres"
    );
    let text = b.running.metrics.render();
    assert!(
        text.contains(
            r#"velro_authz_cache_lookups_total{kind="memberships",result="hit",tier="l2"} 1"#
        ),
        "{text}"
    );
    let text = a.running.metrics.render();
    assert!(
        text.contains(
            r#"velro_authz_cache_lookups_total{kind="memberships",result="miss",tier="l2"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"velro_authz_l2_fills_total{result="written"}"#),
        "{text}"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn l2_invalidation_reaches_every_sidecar_and_redis(pool: PgPool) {
    let prefix = unique_prefix("inval");
    let a = start_with(pool.clone(), config(&redis_yaml(&prefix))).await;
    let b = attach(pool.clone(), config(&redis_yaml(&prefix))).await;
    until_usable(&[&a, &b]).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    // Both sidecars hold carol's facts in L1, and Redis holds them too.
    for h in [&a, &b] {
        assert_eq!(check(h, CAROL, &path).await, 200);
    }
    let key = FactKey::Memberships(CAROL.parse().expect("uuid"));
    assert!(matches!(l2_of(&a).get(&key).await, L2Get::Hit(_)));

    sqlx::query("DELETE FROM team_members WHERE user_id = $1")
        .bind(CAROL.parse::<Uuid>().expect("uuid"))
        .execute(&pool)
        .await
        .expect("delete");
    for h in [&a, &b] {
        h.eventually(Duration::from_secs(1), || async {
            check(h, CAROL, &path).await == 404
        })
        .await;
    }
    // Redis holds no trusted membership list with the old row.
    match l2_of(&b).get(&key).await {
        L2Get::Hit(Fact::Memberships(m)) => assert!(m.is_empty(), "stale entry in Redis: {m:?}"),
        L2Get::Hit(other) => panic!("wrong fact {other:?}"),
        L2Get::Miss(_) => {}
        L2Get::Unavailable => panic!("redis unavailable"),
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn l2_race_fill_reading_old_row_cannot_write_after_invalidation(pool: PgPool) {
    let prefix = unique_prefix("race");
    let cfg = config(&redis_yaml(&prefix));
    // B is a normal sidecar: its LISTEN loop applies the invalidation to Redis.
    let b = start_with(pool.clone(), cfg.clone()).await;

    // A: its own L1 over the held store and the same Redis; no listener of its
    // own, so only Redis's version check stands between its old row and Redis.
    let metrics = Metrics::new();
    let (client, l2) = redis_tier(&cfg, &metrics);
    let (stop_tx, stop) = watch::channel(false);
    let maintenance = l2.spawn_maintenance(stop.clone());
    let connection = client.spawn_connection(stop);
    let source = Held::new(Store::new(pool.clone()));
    let authorizer = AuthorizerBuilder::new(cfg.clone())
        .metrics(&metrics)
        .l2(l2.clone())
        .build(source.clone());
    let facts = authorizer.facts();
    // A starts dirty (it may have missed changes); one flush makes it bump.
    facts.flush();
    until_usable(&[&b]).await;
    b.eventually(Duration::from_secs(10), || {
        let l2 = l2.clone();
        async move { l2.usable() }
    })
    .await;
    let token = Token::new(BOB).bearer(&cfg.jwt);
    let path = format!("/api/v1/generations/{GEN_CHILD}");

    // 1. A's decision misses Redis (taking the versions), reads bob's
    //    membership from Postgres with its other facts, and is held there.
    let hold = source.hold_next("decision");
    let first = tokio::spawn(decide_get(authorizer.clone(), token, path.clone()));
    tokio::time::timeout(Duration::from_secs(10), hold.reached())
        .await
        .expect("fill reached Postgres");

    // 2. The membership goes; B hears it and voids it in Redis.
    let applied = b
        .running
        .metrics
        .invalidations
        .with_label_values(&["team_members"])
        .get();
    sqlx::query("DELETE FROM team_members WHERE user_id = $1")
        .bind(BOB.parse::<Uuid>().expect("uuid"))
        .execute(&pool)
        .await
        .expect("delete");
    b.eventually(Duration::from_secs(2), || async {
        b.running
            .metrics
            .invalidations
            .with_label_values(&["team_members"])
            .get()
            > applied
    })
    .await;

    // 3. A's read resumes with the old row; after the answer, A tries to
    //    write it to Redis.
    hold.release();
    let outcome = first.await.expect("join");
    assert!(
        matches!(outcome, Outcome::Allow(_)),
        "the decision in flight started before the change: {outcome:?}"
    );
    facts.fills_settled().await;
    let raw: Option<Vec<u8>> = redis_client()
        .await
        .get(format!("{prefix}f:memberships:{BOB}"))
        .await
        .expect("GET");
    assert!(raw.is_none(), "no stale entry survives in Redis");
    assert_eq!(
        metrics.l2_fills.with_label_values(&["refused"]).get(),
        1,
        "the version moved under the fill: Redis refused it"
    );
    // And every sidecar reading now sees the new truth.
    assert_eq!(check(&b, BOB, &path).await, 404);

    stop_tx.send_replace(true);
    maintenance.await.expect("maintenance ends");
    connection.await.expect("connection ends");
}

#[sqlx::test(migrations = "./migrations")]
async fn l2_listener_gap_voids_entries_written_before_it(pool: PgPool) {
    let prefix = unique_prefix("gap");
    // Slow reconnects, so a change can commit while nobody listens.
    let mut cfg = config(&redis_yaml(&prefix));
    cfg.listener.reconnect_min = Duration::from_millis(1_500);
    cfg.listener.reconnect_max = Duration::from_millis(3_000);
    let a = start_with(pool.clone(), cfg.clone()).await;
    let b = attach(pool.clone(), cfg).await;
    until_usable(&[&a, &b]).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    assert_eq!(check(&a, CAROL, &path).await, 200);
    let key = FactKey::Memberships(CAROL.parse().expect("uuid"));
    assert!(matches!(l2_of(&b).get(&key).await, L2Get::Hit(_)));

    // Every LISTEN connection drops; a change commits while nobody listens,
    // so its notification reaches no one.
    let reconnects = a.running.metrics.listener_reconnects.get();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .execute(&pool)
    .await
    .expect("terminate listeners");
    sqlx::query("DELETE FROM team_members WHERE user_id = $1")
        .bind(CAROL.parse::<Uuid>().expect("uuid"))
        .execute(&pool)
        .await
        .expect("a change in the gap");
    let raw = redis_client().await;
    let stored: Option<Vec<u8>> = raw
        .get(format!("{prefix}f:memberships:{CAROL}"))
        .await
        .expect("GET");
    assert!(
        stored.is_some(),
        "nobody listened: Redis still holds the old list (the premise)"
    );
    drop(raw);

    // On reconnect, nobody's coverage spans the change: the epoch is bumped.
    a.eventually(Duration::from_secs(10), || async {
        a.running.metrics.listener_reconnects.get() > reconnects && l2_of(&a).usable()
    })
    .await;
    assert!(
        !matches!(l2_of(&b).get(&key).await, L2Get::Hit(_)),
        "entries written before the gap are no longer trusted by anyone"
    );
    assert_eq!(check(&a, CAROL, &path).await, 404);
}

#[sqlx::test(migrations = "./migrations")]
async fn l2_unreachable_redis_costs_nothing_but_speed(pool: PgPool) {
    // Nothing listens on port 1.
    let h = start_with(
        pool,
        config("redis:\n  url: redis://127.0.0.1:1\n  timeout_ms: 50\n  allow_unauthenticated_values: true\nbreaker:\n  failures: 2\n  open_ms: 60000\n"),
    )
    .await;
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    for _ in 0..3 {
        assert_eq!(check(&h, BOB, &path).await, 200);
        assert_eq!(check(&h, ERIN, &path).await, 404);
        h.running.authorizer.facts().flush();
    }
    let l2 = l2_of(&h);
    h.eventually(Duration::from_secs(5), || {
        let l2 = l2.clone();
        async move { !l2.up() }
    })
    .await;
    let text = h.running.metrics.render();
    assert!(
        text.contains(r#"velro_authz_circuit_state{dependency="redis"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"velro_authz_dependency_up{dependency="redis"} 0"#),
        "{text}"
    );
    let (status, body) = super::support::http_get(h.running.http_addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["redis"], false);
    assert_eq!(body["postgres"], true);
}

#[sqlx::test(migrations = "./migrations")]
async fn l2_rolling_restart_keeps_entries_and_a_real_gap_voids_them(pool: PgPool) {
    let prefix = unique_prefix("rolling");
    let cfg = config(&redis_yaml(&prefix));
    let mut fleet = vec![start_with(pool.clone(), cfg.clone()).await];
    for _ in 0..2 {
        fleet.push(attach(pool.clone(), cfg.clone()).await);
    }
    until_usable(&fleet.iter().collect::<Vec<_>>()).await;
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    assert_eq!(check(&fleet[0], BOB, &path).await, 200);
    let key = FactKey::Memberships(BOB.parse().expect("uuid"));
    assert!(matches!(l2_of(&fleet[1]).get(&key).await, L2Get::Hit(_)));

    // Restart each sidecar in turn: the others listen the whole time, so each
    // newcomer rejoins their coverage and the entries stay trusted.
    for i in 0..fleet.len() {
        let Harness { running, .. } = fleet.remove(i);
        running.shutdown().await;
        let newcomer = attach(pool.clone(), cfg.clone()).await;
        until_usable(&[&newcomer]).await;
        let trust = |how| {
            newcomer
                .running
                .metrics
                .l2_trust
                .with_label_values(&[how])
                .get()
        };
        assert!(
            trust("joined") >= 1 && trust("bumped") == 0,
            "sidecar {i} rejoined without a bump: joined {}, bumped {}",
            trust("joined"),
            trust("bumped")
        );
        assert!(
            matches!(l2_of(&newcomer).get(&key).await, L2Get::Hit(_)),
            "entry written before the restart of sidecar {i} still trusted"
        );
        fleet.insert(i, newcomer);
    }
    let before = queries(&fleet[2]);
    assert_eq!(check(&fleet[2], BOB, &path).await, 200);
    assert!(
        fleet[2]
            .running
            .metrics
            .cache_lookups
            .with_label_values(&["l2", "memberships", "hit"])
            .get()
            >= 1,
        "the restarted sidecar answered from Redis"
    );
    assert!(queries(&fleet[2]) >= before);

    // A real gap: nobody listens while a change commits. The next sidecar
    // cannot rejoin anyone's coverage, so it bumps the epoch and the old
    // entries (here: bob's membership list, now wrong) are void.
    for h in fleet.drain(..) {
        h.running.shutdown().await;
    }
    sqlx::query("DELETE FROM team_members WHERE user_id = $1")
        .bind(BOB.parse::<Uuid>().expect("uuid"))
        .execute(&pool)
        .await
        .expect("a change nobody hears");
    let alone = attach(pool.clone(), cfg.clone()).await;
    until_usable(&[&alone]).await;
    assert!(
        alone
            .running
            .metrics
            .l2_trust
            .with_label_values(&["bumped"])
            .get()
            >= 1,
        "nobody's coverage to rejoin: the epoch is bumped"
    );
    assert!(
        !matches!(l2_of(&alone).get(&key).await, L2Get::Hit(_)),
        "entries from before the gap are void"
    );
    assert_eq!(check(&alone, BOB, &path).await, 404);
}

/// Deletes every key under `prefix`: Redis lost this fleet's data.
async fn wipe(redis: &Client, prefix: &str) {
    let keys: Vec<String> = redis
        .custom(fred::cmd!("KEYS"), vec![format!("{prefix}*")])
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis.del(keys).await.expect("DEL");
    }
}

fn rejected(h: &Harness, reason: &str) -> u64 {
    h.running
        .metrics
        .l2_rejected
        .with_label_values(&[reason])
        .get()
}

/// Whoever can write to Redis, without the fleet's `redis.hmac_key`, cannot
/// plant a fact: not a value of their own (untagged, as releases before tags
/// wrote them, or with a made-up tag), nor an authentic value moved from
/// another key. Each is a miss, counted, and the fill that follows puts the
/// truth back.
#[sqlx::test(migrations = "./migrations")]
async fn l2_planted_values_are_counted_misses_never_trusted(pool: PgPool) {
    let prefix = unique_prefix("forge");
    let h = start_with(pool, config(&redis_yaml(&prefix))).await;
    until_usable(&[&h]).await;
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    // Bob reads it as a member of its project's team; Erin has no role on it.
    assert_eq!(check(&h, BOB, &path).await, 200);
    assert_eq!(check(&h, ERIN, &path).await, 404);

    let redis = redis_client().await;
    let erins = format!("{prefix}f:memberships:{ERIN}");
    let bobs: Vec<u8> = redis
        .get(format!("{prefix}f:memberships:{BOB}"))
        .await
        .expect("bob's memberships are in Redis");
    let L2Get::Hit(bob_memberships) = l2_of(&h)
        .get(&FactKey::Memberships(BOB.parse().expect("uuid")))
        .await
    else {
        panic!("bob's memberships trusted in Redis");
    };
    let version: Option<String> = redis
        .get(format!("{prefix}v:memberships:{ERIN}"))
        .await
        .expect("GET");
    let epoch: String = redis.get(format!("{prefix}epoch")).await.expect("epoch");
    // The body an attacker can make: Bob's team memberships, stamped with
    // Erin's current version and the current epoch.
    let body = postcard::to_allocvec(&(
        version.unwrap_or_else(|| "0".to_owned()),
        epoch,
        &bob_memberships,
    ))
    .expect("postcard");
    let untagged = [&[1u8][..], &body].concat();
    let made_up_tag = [&[2u8][..], &[0u8; 32][..], &body].concat();
    for (what, value, reason) in [
        ("untagged", untagged, "unauthenticated"),
        ("made-up tag", made_up_tag, "bad_mac"),
        ("bob's authentic value moved to erin's key", bobs, "bad_mac"),
    ] {
        let before = rejected(&h, reason);
        let _: () = redis
            .set(&erins, value, None, None, false)
            .await
            .expect("SET");
        // L1 forgets, so the next decision reads Redis.
        h.running.authorizer.facts().flush_local();
        assert_eq!(
            check(&h, ERIN, &path).await,
            404,
            "{what}: planted memberships were trusted"
        );
        assert_eq!(
            rejected(&h, reason),
            before + 1,
            "{what}: counted as {reason}"
        );
    }
    // The fill after the last rejection wrote the truth back, tagged.
    assert!(matches!(
        l2_of(&h)
            .get(&FactKey::Memberships(ERIN.parse().expect("uuid")))
            .await,
        L2Get::Hit(Fact::Memberships(m)) if m.is_empty()
    ));
}

/// A sidecar with another key reads the fleet's values as forgeries: every
/// sidecar sharing a Redis needs the same `redis.hmac_key`.
#[sqlx::test(migrations = "./migrations")]
async fn l2_sidecar_with_another_key_trusts_nothing_the_fleet_wrote(pool: PgPool) {
    let prefix = unique_prefix("otherkey");
    let a = start_with(pool.clone(), config(&redis_yaml(&prefix))).await;
    let other = redis_yaml(&prefix).replace(
        super::support::L2_HMAC_KEY,
        "another-fleet-l2-hmac-key-0123456789abcdef",
    );
    let b = attach(pool, config(&other)).await;
    until_usable(&[&a, &b]).await;
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    assert_eq!(check(&a, BOB, &path).await, 200);
    let key = FactKey::Memberships(BOB.parse().expect("uuid"));
    assert!(matches!(l2_of(&a).get(&key).await, L2Get::Hit(_)));
    assert!(matches!(l2_of(&b).get(&key).await, L2Get::Miss(_)));
    assert!(rejected(&b, "bad_mac") >= 1);
}

/// Redis loses its data (a restart without persistence, a FLUSH), and an old
/// entry comes back (an old snapshot, or someone who kept a copy): the
/// sidecar notices the missing epoch by itself (no reconnect, no listener
/// gap), sets a fresh random one, and the restored entry, though authentic,
/// is never trusted again. (With an epoch counter, the bump after the loss
/// would restart it at the restored entry's value and trust it.)
#[sqlx::test(migrations = "./migrations")]
async fn l2_wiped_redis_gets_a_fresh_epoch_and_never_trusts_a_restored_entry(pool: PgPool) {
    let prefix = unique_prefix("wiped");
    let h = start_with(pool.clone(), config(&redis_yaml(&prefix))).await;
    until_usable(&[&h]).await;
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    assert_eq!(check(&h, BOB, &path).await, 200);
    let key = FactKey::Memberships(BOB.parse().expect("uuid"));
    let l2 = l2_of(&h);
    assert!(matches!(l2.get(&key).await, L2Get::Hit(_)));

    let redis = redis_client().await;
    let (entry, version) = (
        format!("{prefix}f:memberships:{BOB}"),
        format!("{prefix}v:memberships:{BOB}"),
    );
    let old_value: Vec<u8> = redis.get(&entry).await.expect("entry");
    let old_version: Option<String> = redis.get(&version).await.expect("version");
    let old_epoch: String = redis.get(format!("{prefix}epoch")).await.expect("epoch");
    // Bob leaves the team, unannounced (triggers off): only a trusted old
    // entry could still let him in.
    let mut conn = pool.acquire().await.expect("conn");
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .expect("replica role");
    sqlx::query("DELETE FROM team_members WHERE user_id = $1")
        .bind(BOB.parse::<Uuid>().expect("uuid"))
        .execute(&mut *conn)
        .await
        .expect("silent delete");
    drop(conn);
    let bumps = h
        .running
        .metrics
        .l2_trust
        .with_label_values(&["bumped"])
        .get();

    wipe(&redis, &prefix).await;
    let _: () = redis
        .set(&entry, old_value, None, None, false)
        .await
        .expect("restore the entry");
    if let Some(v) = old_version {
        let _: () = redis
            .set(&version, v, None, None, false)
            .await
            .expect("restore its version");
    }

    // The next read finds no epoch: nothing is trusted, and a bump follows.
    assert!(matches!(l2.get(&key).await, L2Get::Unavailable));
    h.eventually(Duration::from_secs(10), || {
        let l2 = l2.clone();
        let metrics = h.running.metrics.clone();
        async move { l2.usable() && metrics.l2_trust.with_label_values(&["bumped"]).get() > bumps }
    })
    .await;
    let new_epoch: String = redis
        .get(format!("{prefix}epoch"))
        .await
        .expect("a fresh epoch");
    assert_ne!(new_epoch, old_epoch, "an epoch never comes back");
    let got = l2.get(&key).await;
    assert!(
        matches!(got, L2Get::Miss(_)),
        "the restored entry is from before the loss: not trusted; got {got:?}"
    );
    // And the decision rests on Postgres, not on the restored membership.
    h.running.authorizer.facts().flush_local();
    assert_eq!(check(&h, BOB, &path).await, 404);
}

#[sqlx::test(migrations = "./migrations")]
async fn l2_a_deep_decision_from_redis_takes_two_round_trips_by_its_chain_hint(pool: PgPool) {
    let prefix = unique_prefix("hint");
    let cfg = config(&redis_yaml(&prefix));
    // A fills Redis (facts and the chain hint) from Postgres, once Q below
    // trusts Redis.
    let a = start_with(pool.clone(), cfg.clone()).await;
    until_usable(&[&a]).await;
    let path = format!("/api/v1/generations/{GEN_GRANDCHILD}");

    // Q: its own L1 over the same Redis, with no background Redis calls once
    // it trusts Redis, so its round trips are its decisions' own.
    let metrics = Metrics::new();
    let (client, l2) = redis_tier(&cfg, &metrics);
    let (stop_maintenance, stop) = watch::channel(false);
    let maintenance = l2.spawn_maintenance(stop);
    let (stop_connection, stop) = watch::channel(false);
    let connection = client.spawn_connection(stop);
    let authorizer = AuthorizerBuilder::new(cfg.clone())
        .metrics(&metrics)
        .l2(l2.clone())
        .build(Store::new(pool.clone()));
    let facts = authorizer.facts();
    // Q starts dirty (it may have missed changes); one flush makes it bump.
    facts.flush();
    a.eventually(Duration::from_secs(10), || {
        let l2 = l2.clone();
        async move { l2.usable() }
    })
    .await;
    stop_maintenance.send_replace(true);
    maintenance.await.expect("maintenance ends");
    assert_eq!(check(&a, BOB, &path).await, 200);
    let token = Token::new(BOB).bearer(&cfg.jwt);
    let decide = |what: &'static str| {
        let (authorizer, token, path, l2, metrics) = (
            authorizer.clone(),
            token.clone(),
            path.clone(),
            l2.clone(),
            metrics.clone(),
        );
        async move {
            authorizer.facts().flush_local();
            let (trips, queries) = (l2.round_trips(), metrics.store_queries_total());
            let outcome = decide_get(authorizer.clone(), token, path).await;
            assert!(matches!(outcome, Outcome::Allow(_)), "{what}: {outcome:?}");
            assert_eq!(
                metrics.store_queries_total(),
                queries,
                "{what}: every fact from Redis"
            );
            l2.round_trips() - trips
        }
    };

    // Ten facts over six levels of chains, in two round trips.
    assert_eq!(decide("hinted").await, 2);
    facts.fills_settled().await;

    // A hint naming other facts costs the levels it misses, not the answer,
    // and is written anew after it.
    let raw = redis_client().await;
    let name = format!("{prefix}h:generation:{GEN_GRANDCHILD}");
    let planted = format!("team:{}", Uuid::new_v4());
    let _: () = raw
        .set(&name, planted.as_str(), None, None, false)
        .await
        .expect("SET");
    assert!(decide("stale hint").await > 2);
    facts.fills_settled().await;
    let rewritten: String = raw.get(&name).await.expect("GET");
    assert_ne!(rewritten, planted);
    assert!(
        rewritten.contains(&format!("generation:{GEN_CHILD}")),
        "{rewritten}"
    );
    assert_eq!(decide("rewritten hint").await, 2);

    stop_connection.send_replace(true);
    connection.await.expect("connection ends");
}
