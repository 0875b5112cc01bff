//! Postgres, the source of truth (SPEC §3). One query per fact kind, each
//! returning domain values; errors say whether they are transient so the
//! adapters can answer "cannot decide" rather than deny.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::model::{
    ApiKey, Generation, Grantee, Membership, Project, ResourceKind, Role, Session, Share, Team,
    User,
};

/// The embedded migrations (`migrations/`), applied by `velro-authz migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Postgres connection settings.
#[derive(Clone, PartialEq)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`; may carry a password, so `Debug` redacts it.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Connections opened before the sidecar reports ready and kept open, so
    /// the first Checks never wait for a connection to be made.
    pub min_connections: u32,
    /// How long a query waits for a pooled connection.
    pub acquire_timeout: Duration,
    /// Per-statement timeout (`statement_timeout` on each connection).
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &crate::secret::redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// A failed store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection refused, pool timeout, statement timeout: retrying later may work.
    #[error("postgres unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database answered something we cannot interpret (schema drift).
    #[error("postgres returned unexpected data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the caller may retry (it maps to "cannot decide", never to a deny).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
            other => StoreError::Unavailable(other),
        }
    }
}

/// The resource a decision is about (SPEC §4 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Team(Uuid),
    Project(Uuid),
    Generation(Uuid),
}

/// What [`Store::decision_rows`] read: each looked-up id with its row, or
/// `None` when there is none.
#[derive(Debug)]
pub struct DecisionRows {
    /// The user's row.
    pub user: Option<User>,
    /// The user's direct memberships.
    pub memberships: Vec<Membership>,
    /// The target generation and its parents, nearest first.
    pub generations: Vec<(Uuid, Option<Generation>)>,
    /// The target project, or the project the generation chain ends in.
    pub projects: Vec<(Uuid, Option<Project>)>,
    /// Every share list read (possibly empty), by resource.
    pub shares: Vec<(ResourceKind, Uuid, Vec<Share>)>,
    /// Every team of every ancestor chain read.
    pub teams: Vec<(Uuid, Option<Team>)>,
}

/// The statement behind [`Store::decision_rows`]. $1 user, $2 target kind,
/// $3 target id, $4 parent-hop bound, $5 team-depth bound. Each output row is
/// (tag, id, uuid a, uuid b, uuid c, text): a NULL text marks an id looked
/// for and not found. Every recursion carries the path it walked, so a cycle
/// (which the triggers reject anyway) ends it, as does the depth bound.
const DECISION_ROWS: &str = r#"
WITH RECURSIVE
gen_chain(id, hop, path) AS (
    SELECT $3::uuid, 0, ARRAY[$3::uuid] WHERE $2::text = 'generation'
  UNION ALL
    SELECT g.parent_id, c.hop + 1, c.path || g.parent_id
    FROM gen_chain c JOIN generations g ON g.id = c.id
    WHERE g.project_id IS NULL AND g.parent_id IS NOT NULL
      AND NOT g.parent_id = ANY (c.path)
      AND c.hop < $4::int
      AND (c.hop > 0 OR g.status <> 'deleted')
),
gen_rows AS (
    SELECT c.id, c.hop, g.user_id, g.project_id, g.parent_id, g.status
    FROM gen_chain c LEFT JOIN generations g ON g.id = c.id
),
live_target AS (
    SELECT 1 FROM gen_rows WHERE hop = 0 AND status IS NOT NULL AND status <> 'deleted'
),
project_ids(id) AS (
    SELECT $3::uuid WHERE $2::text = 'project'
  UNION
    SELECT project_id FROM gen_rows
    WHERE project_id IS NOT NULL AND EXISTS (SELECT 1 FROM live_target)
),
project_rows AS (
    SELECT i.id, p.owner_id, p.team_id, p.visibility
    FROM project_ids i LEFT JOIN projects p ON p.id = i.id
),
share_targets(kind, id) AS (
    SELECT 'generation'::text, $3::uuid WHERE EXISTS (SELECT 1 FROM live_target)
  UNION ALL
    SELECT 'project'::text, id FROM project_rows WHERE visibility IS NOT NULL
),
share_rows AS (
    SELECT s.resource_kind, s.resource_id, s.grantee_user_id, s.grantee_team_id, s.role
    FROM share_targets t
    JOIN shares s ON s.resource_kind = t.kind AND s.resource_id = t.id
),
team_roots(id) AS (
    SELECT $3::uuid WHERE $2::text = 'team'
  UNION
    SELECT team_id FROM project_rows WHERE team_id IS NOT NULL
  UNION
    SELECT grantee_team_id FROM share_rows WHERE grantee_team_id IS NOT NULL
),
team_chain(id, depth, path) AS (
    SELECT id, 1, ARRAY[id] FROM team_roots
  UNION ALL
    SELECT t.parent_id, c.depth + 1, c.path || t.parent_id
    FROM team_chain c JOIN teams t ON t.id = c.id
    WHERE t.parent_id IS NOT NULL AND NOT t.parent_id = ANY (c.path) AND c.depth < $5::int
),
team_rows AS (
    SELECT DISTINCT c.id, t.id IS NOT NULL AS found, t.parent_id
    FROM team_chain c LEFT JOIN teams t ON t.id = c.id
)
SELECT 'user'::text, $1::uuid, NULL::uuid, NULL::uuid, NULL::uuid, u.status
    FROM (VALUES (1)) AS one (x) LEFT JOIN users u ON u.id = $1::uuid
UNION ALL
SELECT 'membership', team_id, NULL, NULL, NULL, role FROM team_members WHERE user_id = $1::uuid
UNION ALL
SELECT 'generation', id, user_id, project_id, parent_id, status FROM gen_rows
UNION ALL
SELECT 'project', id, owner_id, team_id, NULL, visibility FROM project_rows
UNION ALL
SELECT 'shares', id, NULL, NULL, NULL, kind FROM share_targets
UNION ALL
SELECT 'share', resource_id, grantee_user_id, grantee_team_id, NULL, resource_kind || ':' || role
    FROM share_rows
UNION ALL
SELECT 'team', id, parent_id, NULL, NULL, CASE WHEN found THEN 'found' END FROM team_rows
"#;

/// Read access to the authorization tables.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

/// Connects a pool with the configured bounds; each connection gets a
/// `statement_timeout` so one slow query cannot hold a decision past its deadline.
pub fn connect(config: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let timeout_ms = config.statement_timeout.as_millis().to_string();
    let options = PgConnectOptions::from_str(&config.url)?
        .application_name("velro-authz")
        .options([("statement_timeout", timeout_ms.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

/// Opens `n` pooled connections at once (they stay idle in the pool): done
/// before readiness, so the first Checks after start find them open. Gives
/// up after `within` (a pool shared with others may have no room).
pub async fn warm(pool: &PgPool, n: u32, within: Duration) {
    let started = std::time::Instant::now();
    let mut acquires = tokio::task::JoinSet::new();
    for _ in 0..n {
        let pool = pool.clone();
        // Each holds its connection until all are open, so they are n
        // different connections, opened concurrently.
        acquires.spawn(async move { pool.acquire().await });
    }
    let mut opened = Vec::with_capacity(n as usize);
    let _ = tokio::time::timeout(within, async {
        while let Some(r) = acquires.join_next().await {
            opened.push(r);
        }
    })
    .await;
    acquires.abort_all();
    let ok = opened.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    drop(opened);
    tracing::info!(
        connections = ok,
        wanted = n,
        took_ms = started.elapsed().as_millis() as u64,
        "database pool warmed"
    );
}

fn parse<T: FromStr>(text: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e: T::Err| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Wraps a pool.
    pub fn new(pool: PgPool) -> Store {
        Store { pool }
    }

    /// The underlying pool (CLI commands, readiness, pool metrics).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `users` row by id.
    pub async fn user(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT status FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(User {
                id,
                status: parse(r.try_get::<&str, _>(0)?)?,
            })
        })
        .transpose()
    }

    /// `teams` row by id (its parent edge).
    pub async fn team(&self, id: Uuid) -> Result<Option<Team>, StoreError> {
        let row = sqlx::query("SELECT parent_id FROM teams WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Team {
                id,
                parent_id: r.try_get(0)?,
            })
        })
        .transpose()
    }

    /// A user's direct team memberships.
    pub async fn memberships(&self, user_id: Uuid) -> Result<Vec<Membership>, StoreError> {
        let rows = sqlx::query("SELECT team_id, role FROM team_members WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Membership {
                    team_id: r.try_get(0)?,
                    role: parse(r.try_get::<&str, _>(1)?)?,
                })
            })
            .collect()
    }

    /// `projects` row by id.
    pub async fn project(&self, id: Uuid) -> Result<Option<Project>, StoreError> {
        let row = sqlx::query("SELECT owner_id, team_id, visibility FROM projects WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Project {
                id,
                owner_id: r.try_get(0)?,
                team_id: r.try_get(1)?,
                visibility: parse(r.try_get::<&str, _>(2)?)?,
            })
        })
        .transpose()
    }

    /// `generations` row by id.
    pub async fn generation(&self, id: Uuid) -> Result<Option<Generation>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id, project_id, parent_id, status FROM generations WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Generation {
                id,
                user_id: r.try_get(0)?,
                project_id: r.try_get(1)?,
                parent_id: r.try_get(2)?,
                status: parse(r.try_get::<&str, _>(3)?)?,
            })
        })
        .transpose()
    }

    /// Every share on one resource.
    pub async fn shares(&self, kind: ResourceKind, id: Uuid) -> Result<Vec<Share>, StoreError> {
        let rows = sqlx::query(
            "SELECT grantee_user_id, grantee_team_id, role FROM shares \
             WHERE resource_kind = $1 AND resource_id = $2",
        )
        .bind(kind.as_str())
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let user: Option<Uuid> = r.try_get(0)?;
                let team: Option<Uuid> = r.try_get(1)?;
                let grantee = match (user, team) {
                    (Some(u), None) => Grantee::User(u),
                    (None, Some(t)) => Grantee::Team(t),
                    _ => {
                        return Err(StoreError::Corrupt(
                            "share without exactly one grantee".into(),
                        ));
                    }
                };
                Ok(Share {
                    grantee,
                    role: parse::<Role>(r.try_get::<&str, _>(2)?)?,
                })
            })
            .collect()
    }

    /// Every row a decision on `target` for `user` may rest on, in one
    /// statement (one round trip, one snapshot): the user and their
    /// memberships; for a generation its parent chain up to the first one in
    /// a project (at most `max_parent_hops` hops, stopping at a missing row or
    /// a repeated id) and its shares; the project (the target, or the chain's)
    /// with its shares; and the ancestor chain (at most `max_team_depth` teams,
    /// cycle-safe) of the target team, the project's team and every team a
    /// share names. Ids looked for and not found come back as `None`, so a
    /// missing resource costs the same one statement as one the user has no
    /// role on. Nothing is read past a target generation that is missing or
    /// deleted, as the walk reads nothing past it either.
    pub async fn decision_rows(
        &self,
        user: Uuid,
        target: Target,
        max_parent_hops: usize,
        max_team_depth: usize,
    ) -> Result<DecisionRows, StoreError> {
        let (kind, id) = match target {
            Target::Team(id) => ("team", id),
            Target::Project(id) => ("project", id),
            Target::Generation(id) => ("generation", id),
        };
        let bound = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let rows = sqlx::query(DECISION_ROWS)
            .bind(user)
            .bind(kind)
            .bind(id)
            .bind(bound(max_parent_hops))
            .bind(bound(max_team_depth))
            .fetch_all(&self.pool)
            .await?;
        let mut out = DecisionRows {
            user: None,
            memberships: Vec::new(),
            generations: Vec::new(),
            projects: Vec::new(),
            shares: Vec::new(),
            teams: Vec::new(),
        };
        for r in &rows {
            let tag: &str = r.try_get(0)?;
            let id: Uuid = r.try_get(1)?;
            let (a, b, c): (Option<Uuid>, Option<Uuid>, Option<Uuid>) =
                (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
            let text: Option<&str> = r.try_get(5)?;
            let missing = || StoreError::Corrupt(format!("{tag} row without its columns"));
            match tag {
                "user" => {
                    out.user = text
                        .map(|s| {
                            Ok::<_, StoreError>(User {
                                id,
                                status: parse(s)?,
                            })
                        })
                        .transpose()?;
                }
                "membership" => out.memberships.push(Membership {
                    team_id: id,
                    role: parse(text.ok_or_else(missing)?)?,
                }),
                "generation" => {
                    let row = match text {
                        Some(status) => Some(Generation {
                            id,
                            user_id: a.ok_or_else(missing)?,
                            project_id: b,
                            parent_id: c,
                            status: parse(status)?,
                        }),
                        None => None,
                    };
                    out.generations.push((id, row));
                }
                "project" => {
                    let row = match text {
                        Some(visibility) => Some(Project {
                            id,
                            owner_id: a.ok_or_else(missing)?,
                            team_id: b,
                            visibility: parse(visibility)?,
                        }),
                        None => None,
                    };
                    out.projects.push((id, row));
                }
                "team" => out
                    .teams
                    .push((id, text.map(|_| Team { id, parent_id: a }))),
                "shares" => out
                    .shares
                    .push((parse(text.ok_or_else(missing)?)?, id, Vec::new())),
                "share" => {
                    let (kind, role) = text.and_then(|t| t.split_once(':')).ok_or_else(missing)?;
                    let kind: ResourceKind = parse(kind)?;
                    let grantee = match (a, b) {
                        (Some(u), None) => Grantee::User(u),
                        (None, Some(t)) => Grantee::Team(t),
                        _ => {
                            return Err(StoreError::Corrupt(
                                "share without exactly one grantee".into(),
                            ));
                        }
                    };
                    let share = Share {
                        grantee,
                        role: parse::<Role>(role)?,
                    };
                    match out
                        .shares
                        .iter_mut()
                        .find(|(k, r, _)| *k == kind && *r == id)
                    {
                        Some((_, _, list)) => list.push(share),
                        None => out.shares.push((kind, id, vec![share])),
                    }
                }
                other => return Err(StoreError::Corrupt(format!("unknown row tag {other}"))),
            }
        }
        Ok(out)
    }

    /// `api_keys` row by the hex SHA-256 of the presented key.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(
            "SELECT id, user_id, key_hash, scopes, expires_at, revoked_at FROM api_keys \
             WHERE key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ApiKey {
                id: r.try_get(0)?,
                user_id: r.try_get(1)?,
                key_hash: r.try_get(2)?,
                scopes: r.try_get(3)?,
                expires_at: r.try_get(4)?,
                revoked_at: r.try_get(5)?,
            })
        })
        .transpose()
    }

    /// `sessions` row by id (a JWT `sid`).
    pub async fn session(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT user_id, expires_at, revoked_at FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Session {
                id,
                user_id: r.try_get(0)?,
                expires_at: r.try_get(1)?,
                revoked_at: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// A user id by email, or the id itself when `who` is a UUID (CLI convenience).
    pub async fn resolve_user(&self, who: &str) -> Result<Option<Uuid>, StoreError> {
        if let Ok(id) = Uuid::parse_str(who) {
            return Ok(Some(id));
        }
        let row = sqlx::query("SELECT id FROM users WHERE email = $1")
            .bind(who)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Stores a new API key's hash (the plain key is never stored).
    pub async fn insert_api_key(
        &self,
        user_id: Uuid,
        key_hash: &str,
        display_prefix: &str,
        scopes: Option<&[String]>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Uuid, StoreError> {
        let row = sqlx::query(
            "INSERT INTO api_keys (user_id, key_hash, display_prefix, scopes, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(user_id)
        .bind(key_hash)
        .bind(display_prefix)
        .bind(scopes)
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Opens a session for a user (the `token --session` CLI).
    pub async fn insert_session(
        &self,
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<Uuid, StoreError> {
        let row =
            sqlx::query("INSERT INTO sessions (user_id, expires_at) VALUES ($1, $2) RETURNING id")
                .bind(user_id)
                .bind(expires_at)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get(0)?)
    }
}
