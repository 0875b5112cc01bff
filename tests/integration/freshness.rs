//! Freshness (SPEC §5): a change committed in Postgres is reflected by the next
//! Checks within the notification delay; a lost LISTEN connection is noticed,
//! re-established, and L1 is discarded; a fully cached Check touches nothing.

use std::time::Duration;

use sqlx::PgPool;
use velro_authz::authn::apikey;
use velro_authz::store::Store;

use super::support::{Harness, config, demo::*, http_get, start, start_with};

/// Notification delay budget in tests (SPEC target p99 < 50 ms; CI machines are busy).
const WITHIN: Duration = Duration::from_secs(1);

async fn status_of(h: &Harness, user: &str, method: &str, path: &str) -> (u16, String) {
    let a = h.check_as(user, method, path).await;
    (a.status, a.reason)
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .expect(sql);
}

/// Asserts `before`, warms the cache, applies `sql`, then polls for `after`.
async fn flips(
    h: &Harness,
    user: &str,
    method: &str,
    path: &str,
    before: (u16, &str),
    sql: &str,
    after: (u16, &str),
) {
    for _ in 0..2 {
        let got = status_of(h, user, method, path).await;
        assert_eq!((got.0, got.1.as_str()), before, "before: {sql}");
    }
    exec(&h.pool, sql).await;
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let got = status_of(h, user, method, path).await;
        if (got.0, got.1.as_str()) == after {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {sql}: still {got:?}, want {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn freshness_membership_visibility_share_and_status_changes_apply_within_1s(pool: PgPool) {
    let h = start(pool).await;
    let gen_child = format!("/api/v1/generations/{GEN_CHILD}");
    let gen_public = format!("/api/v1/generations/{GEN_PUBLIC}");
    let gen_shared = format!("/api/v1/generations/{GEN_SHARED_ERIN}");
    let team = format!("/api/v1/teams/{TEAM_RESEARCH}/members");

    // Membership removed: bob loses the inherited project.
    flips(
        &h,
        BOB,
        "GET",
        &gen_child,
        (200, "ok"),
        &format!("DELETE FROM team_members WHERE user_id = '{BOB}'"),
        (404, "not_found"),
    )
    .await;
    // Share revoked.
    flips(&h, ERIN, "GET", &gen_shared, (200, "ok"),
        &format!("DELETE FROM shares WHERE resource_kind = 'generation' AND resource_id = '{GEN_SHARED_ERIN}'"), (404, "not_found")).await;
    // Share granted with a higher role.
    flips(&h, ERIN, "DELETE", &gen_shared, (404, "not_found"),
        &format!("INSERT INTO shares (resource_kind, resource_id, grantee_user_id, role) VALUES ('generation', '{GEN_SHARED_ERIN}', '{ERIN}', 'admin')"), (200, "ok")).await;
    // Membership added (and role raised): erin joins acme as admin → admin in the child team.
    flips(&h, ERIN, "POST", &format!("/api/v1/teams/{TEAM_RESEARCH}/invite"), (404, "not_found"),
        &format!("INSERT INTO team_members (team_id, user_id, role) VALUES ('{TEAM_ACME}', '{ERIN}', 'admin')"), (200, "ok")).await;
    // Team tree change: acme-research detached from acme → carol loses it.
    flips(
        &h,
        CAROL,
        "GET",
        &team,
        (200, "ok"),
        &format!("UPDATE teams SET parent_id = NULL WHERE id = '{TEAM_RESEARCH}'"),
        (404, "not_found"),
    )
    .await;
    // Visibility: public-gallery goes private.
    flips(
        &h,
        CAROL,
        "GET",
        &gen_public,
        (200, "ok"),
        &format!("UPDATE projects SET visibility = 'private' WHERE id = '{PROJECT_GALLERY}'"),
        (404, "not_found"),
    )
    .await;
    // User suspended.
    flips(
        &h,
        ALICE,
        "GET",
        &gen_child,
        (200, "ok"),
        &format!("UPDATE users SET status = 'suspended' WHERE id = '{ALICE}'"),
        (403, "user_inactive"),
    )
    .await;
    // Generation deleted (status).
    flips(
        &h,
        CAROL,
        "GET",
        &format!("/api/v1/generations/{GEN_GRANDCHILD}"),
        (200, "ok"),
        &format!("UPDATE generations SET status = 'deleted' WHERE id = '{GEN_GRANDCHILD}'"),
        (404, "not_found"),
    )
    .await;
    // Generation re-parented: 04 loses its parent, so bob's inherited role goes.
    exec(
        &h.pool,
        &format!("UPDATE users SET status = 'active' WHERE id = '{ALICE}'"),
    )
    .await;
    exec(&h.pool, &format!("INSERT INTO team_members (team_id, user_id, role) VALUES ('{TEAM_RESEARCH}', '{BOB}', 'member')")).await;
    h.eventually(WITHIN, || async {
        status_of(&h, BOB, "GET", &gen_child).await.0 == 200
    })
    .await;
    flips(
        &h,
        BOB,
        "GET",
        &gen_child,
        (200, "ok"),
        &format!("UPDATE generations SET parent_id = NULL WHERE id = '{GEN_CHILD}'"),
        (404, "not_found"),
    )
    .await;
}

#[sqlx::test(migrations = "./migrations")]
async fn freshness_session_and_api_key_revocations_apply_within_1s(pool: PgPool) {
    let h = start(pool.clone()).await;
    let path = format!("/api/v1/generations/{GEN_BOB}");

    let token = format!("Bearer {}", h.token_with(ALICE, Some(SESSION_ALICE), None));
    assert_eq!(
        h.check("GET", &path, &[("authorization", &token)])
            .await
            .status,
        200
    );
    exec(
        &pool,
        &format!("UPDATE sessions SET revoked_at = now() WHERE id = '{SESSION_ALICE}'"),
    )
    .await;
    h.eventually(WITHIN, || async {
        h.check("GET", &path, &[("authorization", &token)])
            .await
            .reason
            == "session_revoked"
    })
    .await;

    let key = apikey::generate();
    Store::new(pool.clone())
        .insert_api_key(
            ALICE.parse().expect("uuid"),
            &key.hash,
            &key.display_prefix,
            None,
            None,
        )
        .await
        .expect("insert");
    assert_eq!(
        h.check("GET", &path, &[("x-api-key", &key.plain)])
            .await
            .status,
        200
    );
    exec(
        &pool,
        &format!(
            "UPDATE api_keys SET revoked_at = now() WHERE key_hash = '{}'",
            key.hash
        ),
    )
    .await;
    h.eventually(WITHIN, || async {
        h.check("GET", &path, &[("x-api-key", &key.plain)])
            .await
            .reason
            == "api_key_revoked"
    })
    .await;
    let lag = h
        .running
        .metrics
        .invalidation_lag_seconds
        .get_sample_count();
    assert!(lag >= 2, "invalidation lag recorded ({lag} samples)");
}

#[sqlx::test(migrations = "./migrations")]
async fn freshness_cached_check_does_not_touch_postgres(pool: PgPool) {
    let h = start(pool).await;
    let path = format!("/api/v1/generations/{GEN_GRANDCHILD}");
    let first = h.check_as(BOB, "GET", &path).await;
    assert_eq!(first.status, 200);
    let queries = h.running.metrics.store_queries_total();
    assert!(queries > 0, "the first Check read facts from Postgres");
    for _ in 0..50 {
        assert_eq!(h.check_as(BOB, "GET", &path).await.status, 200);
    }
    assert_eq!(
        h.running.metrics.store_queries_total(),
        queries,
        "cached Checks ran no query"
    );
    let hits = h
        .running
        .metrics
        .cache_lookups
        .with_label_values(&["l1", "generation", "hit"])
        .get();
    assert!(hits >= 50, "L1 generation hits: {hits}");
}

#[sqlx::test(migrations = "./migrations")]
async fn freshness_listener_terminated_reconnects_flushes_and_stays_correct(pool: PgPool) {
    let h = start(pool.clone()).await;
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    assert_eq!(status_of(&h, BOB, "GET", &path).await.0, 200);
    let flushes_before = h
        .running
        .metrics
        .flushes
        .with_label_values(&["listener_gap"])
        .get();

    // Kill the LISTEN backend, and change data while the sidecar may be deaf.
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate");
    assert!(!killed.is_empty(), "found the listener backend");
    exec(
        &pool,
        &format!("DELETE FROM team_members WHERE user_id = '{BOB}'"),
    )
    .await;

    // It reconnects (counted), flushes L1, and answers from the new truth.
    h.eventually(Duration::from_secs(5), || async {
        h.running.metrics.listener_reconnects.get() >= 1
            && h.running
                .metrics
                .flushes
                .with_label_values(&["listener_gap"])
                .get()
                > flushes_before
            && *h.running.listener.borrow()
    })
    .await;
    assert_eq!(
        status_of(&h, BOB, "GET", &path).await,
        (404, "not_found".to_owned())
    );
    // And it hears changes again.
    exec(&pool, &format!("INSERT INTO team_members (team_id, user_id, role) VALUES ('{TEAM_RESEARCH}', '{BOB}', 'member')")).await;
    h.eventually(WITHIN, || async {
        status_of(&h, BOB, "GET", &path).await.0 == 200
    })
    .await;
}

/// The silence bound these tests run with: short, so a test takes seconds.
const MAX_SILENCE: Duration = Duration::from_millis(400);

fn bounded() -> velro_authz::config::Config {
    config(&format!(
        "freshness:\n  max_silence_ms: {}\n",
        MAX_SILENCE.as_millis()
    ))
}

/// The pid of this database's LISTEN backend.
async fn listener_pid(pool: &PgPool) -> i32 {
    let pids: Vec<(i32,)> = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(pool)
    .await
    .expect("pg_stat_activity");
    assert_eq!(pids.len(), 1, "one listener backend: {pids:?}");
    pids[0].0
}

/// Sends a signal to a Postgres backend (the tests run as root, or as the
/// server's own user).
fn signal(pid: i32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Resumes a stopped backend however the test ends.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// Asks until `deadline` after `committed`, timing each request from its
/// start: an allow that *started* more than `MAX_SILENCE` after the revoking
/// commit rests on a fact older than the bound, and fails the test. Returns
/// the allows seen within the bound (the feed's delay, not a failure).
async fn no_allow_past_the_bound(
    h: &Harness,
    path: &str,
    committed: std::time::Instant,
    deadline: Duration,
) -> usize {
    let mut early_allows = 0;
    let mut stale = Vec::new();
    while committed.elapsed() < deadline {
        let asked = committed.elapsed();
        let (status, reason) = status_of(h, BOB, "GET", path).await;
        match status {
            200 if asked > MAX_SILENCE => stale.push(asked),
            200 => early_allows += 1,
            404 => assert_eq!(reason, "not_found"),
            other => panic!("unexpected answer {other} {reason}"),
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale allows asked more than max_silence ({MAX_SILENCE:?}) after the revocation, \
         the first {:?} after it",
        stale.len(),
        stale.first()
    );
    early_allows
}

#[sqlx::test(migrations = "./migrations")]
async fn freshness_silent_feed_is_untrusted_after_max_silence(pool: PgPool) {
    let h = start_with(pool.clone(), bounded()).await;
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    for _ in 0..2 {
        assert_eq!(status_of(&h, BOB, "GET", &path).await.0, 200);
    }

    // The LISTEN backend hangs: no reset, no error, no notification; the
    // connection looks alive. Then the permission is revoked.
    let pid = listener_pid(&pool).await;
    signal(pid, "-STOP");
    let resume = Resume(pid);
    exec(
        &pool,
        &format!("DELETE FROM team_members WHERE user_id = '{BOB}'"),
    )
    .await;
    let committed = std::time::Instant::now();
    let early = no_allow_past_the_bound(&h, &path, committed, MAX_SILENCE * 3).await;
    eprintln!("allows within the bound while the feed was silent: {early}");
    assert_eq!(
        h.running.metrics.feed_trusted.get(),
        0,
        "the feed is untrusted"
    );
    let (status, body) = http_get(h.running.http_addr, "/readyz").await;
    assert_eq!(status, 200, "still deciding: {body}");
    assert!(body.contains("\"feed\":\"silent\""), "{body}");
    assert!(body.contains("\"status\":\"degraded\""), "{body}");

    // The backend resumes: the queued notification and heartbeats arrive,
    // the feed is proven again, and the answer stays right.
    drop(resume);
    h.eventually(Duration::from_secs(5), || async {
        h.running.metrics.feed_trusted.get() == 1
    })
    .await;
    assert_eq!(
        status_of(&h, BOB, "GET", &path).await,
        (404, "not_found".to_owned())
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn freshness_listener_killed_while_revoking_never_allows_past_max_silence(pool: PgPool) {
    // Reconnecting takes longer than the bound, so cached facts must stop
    // answering because the feed is lost, not because it came back.
    let mut slow = bounded();
    slow.listener.reconnect_min = Duration::from_secs(2);
    slow.listener.reconnect_max = Duration::from_secs(4);
    let h = start_with(pool.clone(), slow).await;
    let path = format!("/api/v1/generations/{GEN_CHILD}");
    for _ in 0..2 {
        assert_eq!(status_of(&h, BOB, "GET", &path).await.0, 200);
    }

    // Only the LISTEN connection dies (Postgres stays up); the permission is
    // revoked while the sidecar is deaf, so its notification is lost.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .execute(&pool)
    .await
    .expect("terminate the listener");
    exec(
        &pool,
        &format!("DELETE FROM team_members WHERE user_id = '{BOB}'"),
    )
    .await;
    let committed = std::time::Instant::now();
    let early = no_allow_past_the_bound(&h, &path, committed, MAX_SILENCE * 3).await;
    eprintln!("allows within the bound around the listener kill: {early}");
    h.eventually(Duration::from_secs(5), || async {
        h.running.metrics.listener_reconnects.get() >= 1 && *h.running.listener.borrow()
    })
    .await;
    assert_eq!(
        status_of(&h, BOB, "GET", &path).await,
        (404, "not_found".to_owned())
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn freshness_postgres_unreachable_fails_closed_unless_stale_serving_is_chosen(pool: PgPool) {
    // The feed goes silent and Postgres stops answering this sidecar (its
    // backends hang and the database takes no new connections: to the
    // sidecar, a partition). By default cached facts stop answering once the
    // bound has passed: "cannot decide", never a possibly stale answer. With
    // `serve_stale_on_outage_ms` the cached allow goes on, counted.
    let mut admin = pool.acquire().await.expect("admin connection");
    let (db,): (String,) = sqlx::query_as("SELECT current_database()")
        .fetch_one(&mut *admin)
        .await
        .expect("database name");
    // A database cannot refuse connections from inside itself.
    let mut outside = <sqlx::PgConnection as sqlx::Connection>::connect(
        &std::env::var("DATABASE_URL").expect("DATABASE_URL"),
    )
    .await
    .expect("connect to the server's maintenance database");
    for (stale_ms, expect_cached) in [(0u64, false), (60_000, true)] {
        let h = start_with(
            pool.clone(),
            config(&format!(
                "freshness:\n  max_silence_ms: {}\n  serve_stale_on_outage_ms: {stale_ms}\n\
                 breaker:\n  failures: 2\n  open_ms: 60000\n",
                MAX_SILENCE.as_millis()
            )),
        )
        .await;
        let path = format!("/api/v1/generations/{GEN_CHILD}");
        for _ in 0..2 {
            assert_eq!(status_of(&h, BOB, "GET", &path).await.0, 200);
        }
        let allow = |on: bool| {
            sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {on}"))
        };
        sqlx::query(allow(false))
            .execute(&mut outside)
            .await
            .expect("refuse new connections");
        let pids: Vec<(i32,)> = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut *admin)
        .await
        .expect("pg_stat_activity");
        let resumes: Vec<Resume> = pids
            .iter()
            .map(|(pid,)| {
                signal(*pid, "-STOP");
                Resume(*pid)
            })
            .collect();
        tokio::time::sleep(MAX_SILENCE * 2).await;
        let bearer = format!("Bearer {}", h.token(BOB));
        let mut served = false;
        for _ in 0..10 {
            let answer = h
                .raw_check("GET", &path, &[("authorization", &bearer)])
                .await;
            match answer {
                Ok(response) => {
                    assert!(
                        expect_cached,
                        "an answer with the feed silent and Postgres away: {response:?}"
                    );
                    assert_eq!(response.status.map(|s| s.code), Some(0), "the cached allow");
                    served = true;
                    break;
                }
                Err(status) => assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ),
                    "{status:?}"
                ),
            }
        }
        assert_eq!(
            served, expect_cached,
            "serve_stale_on_outage_ms = {stale_ms}"
        );
        assert_eq!(
            h.running
                .metrics
                .stale_served
                .with_label_values(&["generation"])
                .get()
                > 0,
            expect_cached
        );
        drop(resumes);
        sqlx::query(allow(true))
            .execute(&mut outside)
            .await
            .expect("accept connections again");
        let Harness { running, .. } = h;
        running.shutdown().await;
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn freshness_generation_asked_before_it_exists_is_allowed_right_after_its_silent_insert(
    pool: PgPool,
) {
    // Generation inserts are not announced (migrations/0003: the platform's
    // hottest write). So nothing may cache that a generation does not exist.
    let h = start(pool.clone()).await;
    let id = uuid::Uuid::new_v4();
    let path = format!("/api/v1/generations/{id}");
    for _ in 0..3 {
        assert_eq!(
            status_of(&h, BOB, "GET", &path).await,
            (404, "not_found".to_owned())
        );
    }
    let invalidations = h
        .running
        .metrics
        .invalidations
        .with_label_values(&["generations"])
        .get();
    exec(
        &pool,
        &format!(
            "INSERT INTO generations (id, user_id, status) VALUES ('{id}', '{BOB}', 'pending')"
        ),
    )
    .await;
    assert_eq!(
        status_of(&h, BOB, "GET", &path).await,
        (200, "ok".to_owned()),
        "the very next Check sees the new generation"
    );
    assert_eq!(
        h.running
            .metrics
            .invalidations
            .with_label_values(&["generations"])
            .get(),
        invalidations,
        "the insert announced nothing"
    );
}

/// Issue 12, item 11: junk NOTIFYed on the change channel from an ordinary
/// connection is counted as junk, flushes (fail-safe: it might be a newer
/// trigger's format) under its own cause, and is not counted as an
/// invalidation; a real change after it is applied as usual.
#[sqlx::test(migrations = "./migrations")]
async fn freshness_junk_notification_is_counted_apart_and_flushes(pool: PgPool) {
    let h = start(pool).await;
    let m = &h.running.metrics;
    let path = format!("/api/v1/generations/{GEN_BOB}");
    assert_eq!(status_of(&h, BOB, "GET", &path).await.0, 200);
    let invalidations = || m.invalidations.with_label_values(&["users"]).get();
    let before = (
        invalidations(),
        m.flushes.with_label_values(&["notification"]).get(),
    );

    for junk in [
        "not json",
        r#"{"t":"users","op":"UPDATE","ts":1,"keys":[{"id":"nope"}]}"#,
    ] {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(velro_authz::invalidate::CHANNEL)
            .bind(junk)
            .execute(&h.pool)
            .await
            .expect("NOTIFY junk");
    }
    h.eventually(WITHIN, || async { m.invalidation_junk.get() == 2 })
        .await;
    assert!(m.flushes.with_label_values(&["junk"]).get() >= 1);
    assert_eq!(
        (
            invalidations(),
            m.flushes.with_label_values(&["notification"]).get()
        ),
        before,
        "junk is neither an invalidation nor a trigger's flush"
    );

    // A real change is still heard, and counted as one.
    flips(
        &h,
        BOB,
        "GET",
        &path,
        (200, "ok"),
        &format!("UPDATE users SET status = 'suspended' WHERE id = '{BOB}'"),
        (403, "user_inactive"),
    )
    .await;
    h.eventually(WITHIN, || async { invalidations() == before.0 + 1 })
        .await;
    assert_eq!(m.invalidation_junk.get(), 2);
}
