//! The NOTIFY triggers themselves (migrations/0003): which statements announce
//! what, read from a real LISTEN connection and through the sidecar's own
//! parser, and the upgrade of a database that has 0002's triggers.
//!
//! "Silent" is shown without waiting for anything: after the statements under
//! test, a marker notification is committed; notifications arrive in commit
//! order, so whatever arrives before the marker is everything they sent.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;
use velro_authz::facts::FactKey;
use velro_authz::invalidate::{CHANNEL, Invalidation, parse};
use velro_authz::model::ResourceKind;
use velro_authz::store::MIGRATOR;

use super::support::demo::*;

/// A guard against a hang, not a timing assertion: the marker always comes.
const HANG: Duration = Duration::from_secs(60);

/// What one notification asked for, as the sidecar reads it.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    /// `op` and the set of facts to void.
    Keys(String, HashSet<FactKey>),
    /// A whole-cache flush, with the `op` that caused it (FLUSH, TRUNCATE).
    Flush(String),
}

struct Feed {
    listener: PgListener,
    pool: PgPool,
    markers: u32,
}

impl Feed {
    async fn listen(pool: &PgPool) -> Feed {
        let mut listener = PgListener::connect_with(pool).await.expect("listener");
        listener.listen(CHANNEL).await.expect("LISTEN");
        Feed {
            listener,
            pool: pool.clone(),
            markers: 0,
        }
    }

    /// Runs `sql` (one or more statements, autocommit each) and returns what
    /// it announced, in commit order.
    async fn after(&mut self, sql: &str) -> Vec<Heard> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        self.drain().await
    }

    /// Everything announced since the last drain (raw payloads).
    async fn drain_raw(&mut self) -> Vec<String> {
        self.markers += 1;
        let marker = format!("marker-{}", self.markers);
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&marker)
            .execute(&self.pool)
            .await
            .expect("marker");
        let mut heard = Vec::new();
        loop {
            let n = tokio::time::timeout(HANG, self.listener.recv())
                .await
                .expect("the marker notification arrives")
                .expect("recv");
            if n.payload() == marker {
                return heard;
            }
            heard.push(n.payload().to_owned());
        }
    }

    async fn drain(&mut self) -> Vec<Heard> {
        self.drain_raw().await.iter().map(|p| heard(p)).collect()
    }
}

/// Reads a payload the way the listener does, checking its shape on the way.
fn heard(payload: &str) -> Heard {
    assert!(
        payload.len() < 8000,
        "payload over NOTIFY's limit: {payload}"
    );
    let json: serde_json::Value = serde_json::from_str(payload).expect("payload is JSON");
    let op = json["op"].as_str().expect("op").to_owned();
    assert!(json["ts"].is_number(), "ts in {payload}");
    match parse(payload) {
        Invalidation::Keys { keys, .. } => Heard::Keys(op, keys.into_iter().collect()),
        Invalidation::Flush => {
            assert!(
                op == "FLUSH" || op == "TRUNCATE",
                "a {op} payload read as a flush: {payload}"
            );
            Heard::Flush(op)
        }
        Invalidation::Unreadable => panic!("a payload the parser could not read: {payload}"),
    }
}

fn keys(op: &str, keys: impl IntoIterator<Item = FactKey>) -> Vec<Heard> {
    vec![Heard::Keys(op.to_owned(), keys.into_iter().collect())]
}

fn id(s: &str) -> Uuid {
    s.parse().expect("uuid")
}

fn generation(s: &str) -> FactKey {
    FactKey::Generation(id(s))
}

fn memberships(s: &str) -> FactKey {
    FactKey::Memberships(id(s))
}

async fn seed(pool: &PgPool) {
    velro_authz::demo::seed(pool).await.expect("seed demo data");
}

#[sqlx::test(migrations = "./migrations")]
async fn triggers_generation_insert_and_status_without_deleted_are_silent(pool: PgPool) {
    seed(&pool).await;
    let mut feed = Feed::listen(&pool).await;
    let new = Uuid::new_v4();

    // The platform's write per AI generation: insert the job, complete it.
    assert_eq!(
        feed.after(&format!(
            "BEGIN; \
             INSERT INTO generations (id, user_id, project_id) VALUES ('{new}', '{BOB}', '{PROJECT_NOTEBOOK}'); \
             UPDATE generations SET status = 'completed' WHERE id = '{new}'; \
             COMMIT;"
        ))
        .await,
        vec![]
    );
    // Neither do other statuses, nor columns no decision reads, nor an
    // UPDATE that names decision columns without changing them.
    for sql in [
        format!("UPDATE generations SET status = 'failed' WHERE id = '{new}'"),
        format!("UPDATE generations SET status = 'pending' WHERE id = '{new}'"),
        format!("UPDATE generations SET created_at = now() WHERE id = '{new}'"),
        format!(
            "UPDATE generations SET user_id = user_id, project_id = project_id WHERE id = '{new}'"
        ),
        format!("UPDATE users SET email = 'bob-renamed@example.com' WHERE id = '{BOB}'"),
        format!("UPDATE projects SET name = 'renamed' WHERE id = '{PROJECT_NOTEBOOK}'"),
        format!("UPDATE teams SET name = 'renamed' WHERE id = '{TEAM_ACME}'"),
        format!("UPDATE team_members SET role = role WHERE user_id = '{BOB}'"),
        "UPDATE api_keys SET display_prefix = 'x'".to_owned(),
        format!("UPDATE sessions SET created_at = now() WHERE id = '{SESSION_ALICE}'"),
        format!("UPDATE shares SET role = role WHERE resource_id = '{GEN_SHARED_ERIN}'"),
        // Matches no row.
        format!(
            "DELETE FROM team_members WHERE user_id = '{}'",
            Uuid::new_v4()
        ),
    ] {
        assert_eq!(feed.after(&sql).await, vec![], "{sql}");
    }

    // Crossing `deleted`, either way, does.
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET status = 'deleted' WHERE id = '{new}'"
        ))
        .await,
        keys("UPDATE", [FactKey::Generation(new)])
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET status = 'completed' WHERE id = '{new}'"
        ))
        .await,
        keys("UPDATE", [FactKey::Generation(new)])
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn triggers_decision_changes_notify_their_keys(pool: PgPool) {
    seed(&pool).await;
    let mut feed = Feed::listen(&pool).await;
    let generation_keys = |s| keys("UPDATE", [generation(s)]);

    // Generations: project, parent, owner.
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET project_id = NULL WHERE id = '{GEN_BOB}'"
        ))
        .await,
        generation_keys(GEN_BOB)
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET parent_id = NULL WHERE id = '{GEN_GRANDCHILD}'"
        ))
        .await,
        generation_keys(GEN_GRANDCHILD)
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET user_id = '{ERIN}' WHERE id = '{GEN_BOB}'"
        ))
        .await,
        generation_keys(GEN_BOB)
    );

    // Memberships: grant, role change (also through ON CONFLICT), move, revoke.
    assert_eq!(
        feed.after(&format!("INSERT INTO team_members (team_id, user_id, role) VALUES ('{TEAM_ACME}', '{ERIN}', 'viewer')"))
            .await,
        keys("INSERT", [memberships(ERIN)])
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE team_members SET role = 'admin' WHERE user_id = '{ERIN}'"
        ))
        .await,
        keys("UPDATE", [memberships(ERIN)])
    );
    assert_eq!(
        feed.after(&format!(
            "INSERT INTO team_members (team_id, user_id, role) VALUES ('{TEAM_ACME}', '{ERIN}', 'owner') \
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = EXCLUDED.role"
        ))
        .await,
        keys("UPDATE", [memberships(ERIN)])
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE team_members SET user_id = '{ALICE}' WHERE user_id = '{ERIN}'"
        ))
        .await,
        keys("UPDATE", [memberships(ERIN), memberships(ALICE)])
    );
    assert_eq!(
        feed.after(&format!(
            "DELETE FROM team_members WHERE user_id = '{ALICE}'"
        ))
        .await,
        keys("DELETE", [memberships(ALICE)])
    );

    // Shares: grant, role change, revoke.
    let share_key = FactKey::Shares(ResourceKind::Generation, id(GEN_BOB_ALONE));
    assert_eq!(
        feed.after(&format!(
            "INSERT INTO shares (resource_kind, resource_id, grantee_user_id, role) \
             VALUES ('generation', '{GEN_BOB_ALONE}', '{ERIN}', 'viewer')"
        ))
        .await,
        keys("INSERT", [share_key.clone()])
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE shares SET role = 'admin' WHERE resource_id = '{GEN_BOB_ALONE}'"
        ))
        .await,
        keys("UPDATE", [share_key.clone()])
    );
    assert_eq!(
        feed.after(&format!(
            "DELETE FROM shares WHERE resource_id = '{GEN_BOB_ALONE}'"
        ))
        .await,
        keys("DELETE", [share_key])
    );

    // Users, teams, projects, sessions, API keys.
    assert_eq!(
        feed.after(&format!(
            "UPDATE users SET status = 'suspended' WHERE id = '{ERIN}'"
        ))
        .await,
        keys("UPDATE", [FactKey::User(id(ERIN))])
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE teams SET parent_id = NULL WHERE id = '{TEAM_RESEARCH}'"
        ))
        .await,
        keys("UPDATE", [FactKey::Team(id(TEAM_RESEARCH))])
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE projects SET visibility = 'public' WHERE id = '{PROJECT_NOTEBOOK}'"
        ))
        .await,
        keys("UPDATE", [FactKey::Project(id(PROJECT_NOTEBOOK))])
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE sessions SET revoked_at = now() WHERE id = '{SESSION_ALICE}'"
        ))
        .await,
        keys("UPDATE", [FactKey::Session(id(SESSION_ALICE))])
    );
    let hash = "cd".repeat(32);
    let api_key = FactKey::ApiKey(hash.as_str().into());
    assert_eq!(
        feed.after(&format!(
            "INSERT INTO api_keys (user_id, key_hash) VALUES ('{ERIN}', '{hash}')"
        ))
        .await,
        keys("INSERT", [api_key.clone()])
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE api_keys SET revoked_at = now() WHERE key_hash = '{hash}'"
        ))
        .await,
        keys("UPDATE", [api_key])
    );
    // Inserts that can void a cached "no such row" still notify.
    let (user, team, project, session) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    assert_eq!(
        feed.after(&format!(
            "INSERT INTO users (id, email) VALUES ('{user}', 'new@example.com')"
        ))
        .await,
        keys("INSERT", [FactKey::User(user)])
    );
    assert_eq!(
        feed.after(&format!(
            "INSERT INTO teams (id, name) VALUES ('{team}', 'new')"
        ))
        .await,
        keys("INSERT", [FactKey::Team(team)])
    );
    assert_eq!(
        feed.after(&format!(
            "INSERT INTO projects (id, owner_id, name) VALUES ('{project}', '{user}', 'new')"
        ))
        .await,
        keys("INSERT", [FactKey::Project(project)])
    );
    assert_eq!(
        feed.after(&format!(
            "INSERT INTO sessions (id, user_id, expires_at) VALUES ('{session}', '{user}', now() + interval '1 hour')"
        ))
        .await,
        keys("INSERT", [FactKey::Session(session)])
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn triggers_multi_row_statement_sends_one_notification_with_every_key(pool: PgPool) {
    seed(&pool).await;
    let mut feed = Feed::listen(&pool).await;

    // Every membership at once: one notification, every member.
    let members: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT user_id::text FROM team_members")
            .fetch_all(&pool)
            .await
            .expect("members");
    assert!(members.len() >= 3, "demo data has several members");
    assert_eq!(
        feed.after("UPDATE team_members SET role = 'owner'").await,
        keys("UPDATE", members.iter().map(|m| memberships(m)))
    );
    // Only the rows whose decision columns changed are named.
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET status = CASE WHEN id = '{GEN_BOB}' THEN 'deleted' ELSE 'completed' END \
             WHERE status <> 'deleted'"
        ))
        .await,
        keys("UPDATE", [generation(GEN_BOB)])
    );
    // One statement, one table: one notification, even when many rows cross.
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET status = 'deleted' WHERE id IN ('{GEN_PUBLIC}', '{GEN_CHILD}', '{GEN_GRANDCHILD}')"
        ))
        .await,
        keys(
            "UPDATE",
            [
                generation(GEN_PUBLIC),
                generation(GEN_CHILD),
                generation(GEN_GRANDCHILD)
            ]
        )
    );
    assert_eq!(
        feed.after(&format!(
            "DELETE FROM team_members WHERE user_id IN ('{BOB}', '{CAROL}')"
        ))
        .await,
        keys("DELETE", [memberships(BOB), memberships(CAROL)])
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn triggers_cascades_rollbacks_and_truncate(pool: PgPool) {
    seed(&pool).await;
    let mut feed = Feed::listen(&pool).await;

    // A rolled-back change announces nothing, whether the savepoint or the
    // statement (the cycle check rejects it) is undone.
    assert_eq!(
        feed.after(&format!(
            "BEGIN; SAVEPOINT s; UPDATE generations SET status = 'deleted' WHERE id = '{GEN_BOB}'; \
             ROLLBACK TO s; COMMIT;"
        ))
        .await,
        vec![]
    );
    assert!(
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "UPDATE generations SET parent_id = '{GEN_GRANDCHILD}' WHERE id = '{GEN_BOB}'"
        )))
        .execute(&pool)
        .await
        .is_err(),
        "a cycle is rejected"
    );
    assert_eq!(feed.drain().await, vec![]);

    // Deleting a generation: its shares go (0001's cascade), its child loses
    // its parent (ON DELETE SET NULL): every changed fact is named.
    let heard = feed
        .after(&format!("DELETE FROM generations WHERE id = '{GEN_BOB}'"))
        .await;
    let mut all = HashSet::new();
    for h in &heard {
        match h {
            Heard::Keys(_, k) => all.extend(k.iter().cloned()),
            Heard::Flush(op) => panic!("unexpected {op}"),
        }
    }
    assert_eq!(
        all,
        HashSet::from([generation(GEN_BOB), generation(GEN_CHILD)]),
        "{heard:?}"
    );

    // Deleting a user cascades through every table that refers to it.
    let heard = feed
        .after(&format!("DELETE FROM users WHERE id = '{ERIN}'"))
        .await;
    let all: HashSet<FactKey> = heard
        .iter()
        .flat_map(|h| match h {
            Heard::Keys(_, k) => k.clone(),
            Heard::Flush(op) => panic!("unexpected {op}"),
        })
        .collect();
    assert!(all.contains(&FactKey::User(id(ERIN))), "{heard:?}");
    assert!(
        all.contains(&FactKey::Shares(
            ResourceKind::Generation,
            id(GEN_SHARED_ERIN)
        )),
        "erin's share goes with her: {heard:?}"
    );

    assert_eq!(
        feed.after("TRUNCATE sessions").await,
        vec![Heard::Flush("TRUNCATE".into())]
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn triggers_statement_over_8000_bytes_sends_a_flush(pool: PgPool) {
    seed(&pool).await;
    let mut feed = Feed::listen(&pool).await;
    // 300 generations, inserted silently; ~45 bytes a key would be ~13 kB.
    assert_eq!(
        feed.after(&format!(
            "INSERT INTO generations (user_id, status) \
             SELECT '{ERIN}', 'pending' FROM generate_series(1, 300)"
        ))
        .await,
        vec![]
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET project_id = '{PROJECT_GALLERY}' WHERE user_id = '{ERIN}'"
        ))
        .await,
        vec![Heard::Flush("FLUSH".into())]
    );
    assert_eq!(
        feed.after(&format!("DELETE FROM generations WHERE user_id = '{ERIN}'"))
            .await,
        vec![Heard::Flush("FLUSH".into())]
    );
    // Just under the limit: still precise. 150 generation keys ≈ 6.9 kB.
    let ids: Vec<Uuid> = (0..150).map(|_| Uuid::new_v4()).collect();
    let values: Vec<String> = ids.iter().map(|g| format!("('{g}', '{ERIN}')")).collect();
    assert_eq!(
        feed.after(&format!(
            "INSERT INTO generations (id, user_id) VALUES {}",
            values.join(",")
        ))
        .await,
        vec![]
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE generations SET status = 'deleted' WHERE user_id = '{ERIN}'"
    )))
    .execute(&pool)
    .await
    .expect("delete 150");
    let raw = feed.drain_raw().await;
    assert_eq!(raw.len(), 1, "{raw:?}");
    assert_eq!(
        heard(&raw[0]),
        Heard::Keys(
            "UPDATE".into(),
            ids.iter().map(|g| FactKey::Generation(*g)).collect()
        )
    );
}

/// A database migrated to 0002, with data, then upgraded: the data is
/// untouched, 0002's triggers are gone, 0003's behave, and the parser reads
/// the payloads of both.
#[sqlx::test(migrations = false)]
async fn triggers_upgrade_from_0002_keeps_data_and_replaces_triggers(pool: PgPool) {
    MIGRATOR.run_to(2, &pool).await.expect("migrate to 0002");
    seed(&pool).await;
    let tables = [
        "users",
        "teams",
        "team_members",
        "projects",
        "generations",
        "shares",
        "api_keys",
        "sessions",
    ];
    let snapshot = |pool: PgPool| async move {
        let mut rows = Vec::new();
        for t in tables {
            let sql = format!(
                "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {t} t"
            );
            let digest: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .expect("digest");
            rows.push((t, digest));
        }
        rows
    };
    let before = snapshot(pool.clone()).await;

    // 0002: one notification per row, even for pending -> completed.
    let mut feed = Feed::listen(&pool).await;
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET status = 'completed' WHERE id = '{GEN_GRANDCHILD}'"
        ))
        .await,
        keys("UPDATE", [generation(GEN_GRANDCHILD)])
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET status = 'pending' WHERE id = '{GEN_GRANDCHILD}'"
        ))
        .await,
        keys("UPDATE", [generation(GEN_GRANDCHILD)])
    );

    MIGRATOR.run(&pool).await.expect("migrate to the latest");
    assert_eq!(snapshot(pool.clone()).await, before, "data intact");

    let old: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'velro_authz_notify' \
         UNION ALL SELECT count(*) FROM pg_proc WHERE proname = 'velro_authz_notify'",
    )
    .fetch_all(&pool)
    .await
    .expect("old triggers")
    .iter()
    .sum();
    assert_eq!(old, 0, "0002's trigger and function are gone");
    let unpinned: Vec<String> = sqlx::query_scalar(
        "SELECT proname::text FROM pg_proc \
         WHERE proname LIKE 'velro\\_authz\\_notify%' \
           AND NOT coalesce(proconfig, '{}') @> ARRAY['search_path=pg_catalog, pg_temp']",
    )
    .fetch_all(&pool)
    .await
    .expect("functions");
    assert_eq!(
        unpinned,
        Vec::<String>::new(),
        "functions without a fixed search_path"
    );

    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET status = 'completed' WHERE id = '{GEN_GRANDCHILD}'"
        ))
        .await,
        vec![]
    );
    assert_eq!(
        feed.after(&format!(
            "UPDATE generations SET status = 'deleted' WHERE id = '{GEN_GRANDCHILD}'"
        ))
        .await,
        keys("UPDATE", [generation(GEN_GRANDCHILD)])
    );
    assert_eq!(
        feed.after(&format!(
            "DELETE FROM team_members WHERE user_id = '{DAVE}'"
        ))
        .await,
        keys("DELETE", [memberships(DAVE)])
    );
}

/// Runs the integrity triggers of 0001 from a session that shadows their
/// tables with temporary ones (a session's temporary schema is searched first
/// for tables unless its search_path places it elsewhere, and PUBLIC may
/// create temporary tables). Returns, per statement, the SQLSTATE it failed
/// with (`None`: it succeeded), and how many real shares the cascade left on
/// the deleted generation.
async fn hostile_session(pool: &PgPool) -> (Vec<Option<String>>, i64) {
    let mut conn = pool.acquire().await.expect("connection");
    let fake = Uuid::new_v4();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TEMP TABLE generations (id uuid, parent_id uuid); \
         CREATE TEMP TABLE projects (id uuid); \
         CREATE TEMP TABLE teams (id uuid, parent_id uuid); \
         CREATE TEMP TABLE shares (resource_kind text, resource_id uuid); \
         INSERT INTO pg_temp.generations VALUES ('{fake}', NULL); \
         INSERT INTO pg_temp.projects VALUES ('{fake}');"
    )))
    .execute(&mut *conn)
    .await
    .expect("temporary tables");
    let statements = [
        // A share on a generation / project that exists only in the temp table.
        format!(
            "INSERT INTO public.shares (resource_kind, resource_id, grantee_user_id, role) \
             VALUES ('generation', '{fake}', '{ALICE}', 'viewer')"
        ),
        format!(
            "INSERT INTO public.shares (resource_kind, resource_id, grantee_user_id, role) \
             VALUES ('project', '{fake}', '{ALICE}', 'viewer')"
        ),
        // acme under its own child: a cycle the empty temp `teams` would hide.
        format!("UPDATE public.teams SET parent_id = '{TEAM_RESEARCH}' WHERE id = '{TEAM_ACME}'"),
        // A generation under its own grandchild.
        format!(
            "UPDATE public.generations SET parent_id = '{GEN_GRANDCHILD}' WHERE id = '{GEN_BOB}'"
        ),
        // Deleting a shared generation must delete its real shares.
        format!("DELETE FROM public.generations WHERE id = '{GEN_SHARED_ERIN}'"),
    ];
    let mut codes = Vec::new();
    for sql in statements {
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await;
        codes.push(result.err().map(|e| {
            e.as_database_error()
                .and_then(|d| d.code())
                .map(|c| c.into_owned())
                .unwrap_or_else(|| format!("not a database error: {e}"))
        }));
    }
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.shares \
         WHERE resource_kind = 'generation' AND resource_id = $1",
    )
    .bind(id(GEN_SHARED_ERIN))
    .fetch_one(&mut *conn)
    .await
    .expect("shares left");
    (codes, left)
}

/// What [`hostile_session`] must see: both shares refused as foreign key
/// violations, both cycles as check violations, the delete done and its
/// shares gone.
fn integrity_held() -> (Vec<Option<String>>, i64) {
    let code = |c: &str| Some(c.to_owned());
    (
        vec![
            code("23503"),
            code("23503"),
            code("23514"),
            code("23514"),
            None,
        ],
        0,
    )
}

/// Item 13 of issue 12: a session's search_path (here: temporary tables
/// named like ours) does not change what the integrity triggers check.
#[sqlx::test(migrations = "./migrations")]
async fn triggers_hostile_search_path_does_not_redirect_integrity_checks(pool: PgPool) {
    seed(&pool).await;
    assert_eq!(hostile_session(&pool).await, integrity_held());
}

/// A database migrated to 0003, with data, then upgraded to 0004: the data is
/// untouched, every velro_authz function has a fixed search_path, the
/// integrity triggers still refuse what they refused (hostile session or
/// not) and a root generation still inserts.
#[sqlx::test(migrations = false)]
async fn triggers_upgrade_from_0003_pins_every_search_path(pool: PgPool) {
    MIGRATOR.run_to(3, &pool).await.expect("migrate to 0003");
    seed(&pool).await;
    let digest = "SELECT string_agg(t::text, ',' ORDER BY t::text) FROM \
                  (SELECT * FROM teams) t UNION ALL \
                  SELECT string_agg(g::text, ',' ORDER BY g::text) FROM generations g UNION ALL \
                  SELECT string_agg(s::text, ',' ORDER BY s::text) FROM shares s";
    let before: Vec<String> = sqlx::query_scalar(digest)
        .fetch_all(&pool)
        .await
        .expect("digest");

    MIGRATOR.run(&pool).await.expect("migrate to the latest");
    let after: Vec<String> = sqlx::query_scalar(digest)
        .fetch_all(&pool)
        .await
        .expect("digest");
    assert_eq!(after, before, "data intact");

    let unpinned: Vec<String> = sqlx::query_scalar(
        "SELECT proname::text FROM pg_proc \
         WHERE proname LIKE 'velro\\_authz\\_%' \
           AND NOT EXISTS (SELECT 1 FROM unnest(proconfig) c WHERE c LIKE 'search\\_path=pg\\_catalog, %pg\\_temp') \
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("functions");
    assert_eq!(
        unpinned,
        Vec::<String>::new(),
        "functions without a fixed search_path"
    );

    assert_eq!(hostile_session(&pool).await, integrity_held());
    // A root generation (its cycle trigger's WHEN is false) and one with a
    // parent (the function runs) both insert.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO generations (user_id) VALUES ('{ALICE}'); \
         INSERT INTO generations (user_id, parent_id) VALUES ('{ALICE}', '{GEN_BOB}')"
    )))
    .execute(&pool)
    .await
    .expect("generations insert");
}
