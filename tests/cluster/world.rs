//! A random but reproducible world (seeded RNG) over the schema of
//! migrations/0001: users, a nested team tree, memberships, projects with
//! visibility, generations with parent chains, shares, sessions and API keys;
//! the principals and routes to ask about; and a writer that changes it.

use std::collections::HashSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng, seq::IndexedRandom};
use sqlx::PgPool;
use uuid::Uuid;
use velro_authz::authn::apikey;
use velro_authz::authn::jwt::JwtVerifier;
use velro_authz::testkit::{Check, Token};

/// Sizes of a world.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Users (some suspended or deleted).
    pub users: usize,
    /// Teams, in a forest of four roots.
    pub teams: usize,
    /// Projects (some public, most in a team).
    pub projects: usize,
    /// Generations (most in a project, the rest reach one through parents).
    pub generations: usize,
    /// Shares tried (duplicates per grantee are skipped).
    pub shares: usize,
    /// Sessions (some revoked, some expired).
    pub sessions: usize,
    /// API keys (various scopes; some revoked, some expired).
    pub api_keys: usize,
}

impl Sizes {
    /// ≥ 200 users and ≥ 200 resources (teams + projects + generations).
    pub const STORM: Sizes = Sizes {
        users: 240,
        teams: 40,
        projects: 80,
        generations: 260,
        shares: 240,
        sessions: 150,
        api_keys: 80,
    };
}

const ROLES: [&str; 4] = ["viewer", "member", "admin", "owner"];

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A JWT with `sub`, optional `sid` and `scope`.
    Jwt {
        /// `sub`.
        user: Uuid,
        /// `sid`.
        sid: Option<Uuid>,
        /// `scope`.
        scope: Option<String>,
    },
    /// An API key.
    ApiKey {
        /// The plain key (never printed: see `fleet::describe`).
        plain: String,
    },
}

/// What a route needs (mirrors the default route table, written out here so the
/// oracle does not read the sidecar's own table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    /// Any active user; `ops` scope when `true`.
    Authenticated { ops: bool },
    /// `action` on a generation / project / team.
    Resource {
        /// What the path's id names.
        kind: Kind,
        /// `read`, `write`, `delete`, `share` or `manage`.
        action: &'static str,
    },
}

/// Resource kinds with routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Generation,
    Project,
    Team,
}

/// One route with its id filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path with the id filled in.
    pub path: String,
    /// What the route table says it needs.
    pub need: Need,
    /// The resource id, on resource routes.
    pub id: Option<Uuid>,
}

/// Every resource route of the default table for one id.
pub fn resource_routes(kind: Kind, id: Uuid) -> Vec<Route> {
    let r = |method, path: String, action| Route {
        method,
        path,
        need: Need::Resource { kind, action },
        id: Some(id),
    };
    match kind {
        Kind::Generation => {
            let p = format!("/api/v1/generations/{id}");
            vec![
                r("GET", p.clone(), "read"),
                r("PUT", p.clone(), "write"),
                r("PATCH", p.clone(), "write"),
                r("DELETE", p.clone(), "delete"),
                r("POST", format!("{p}/authorize"), "read"),
                r("PUT", format!("{p}/share"), "share"),
            ]
        }
        Kind::Project => vec![r("GET", format!("/api/v1/projects/{id}"), "read")],
        Kind::Team => {
            let p = format!("/api/v1/teams/{id}");
            vec![
                r("GET", format!("{p}/members"), "read"),
                r("GET", format!("{p}/permissions"), "read"),
                r("POST", format!("{p}/invite"), "manage"),
            ]
        }
    }
}

/// Authenticated-only routes (no resource).
pub fn authenticated_routes() -> Vec<Route> {
    let r = |method, path: &str, ops| Route {
        method,
        path: path.to_owned(),
        need: Need::Authenticated { ops },
        id: None,
    };
    vec![
        r("GET", "/api/v1/users/profile", false),
        r("PUT", "/api/v1/users/profile", false),
        r("GET", "/api/v1/users/sessions", false),
        r("POST", "/api/v1/auth/logout", false),
        r("GET", "/health/metrics", true),
        r("GET", "/health/cache", true),
    ]
}

/// The seeded world: ids by kind, credentials, and the per-user resources that
/// are likely to allow (so samples are not all 404s).
pub struct World {
    /// User ids.
    pub users: Vec<Uuid>,
    /// Team ids, parents before children.
    pub teams: Vec<Uuid>,
    /// Project ids.
    pub projects: Vec<Uuid>,
    /// Generation ids, parents before children.
    pub generations: Vec<Uuid>,
    /// (session id, its user).
    pub sessions: Vec<(Uuid, Uuid)>,
    /// (plain key, its user).
    pub api_keys: Vec<(String, Uuid)>,
    /// Per user index: (kind, id) of resources related to the user at seed time.
    related: Vec<Vec<(Kind, Uuid)>>,
}

fn new_id(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

fn sql_opt(id: Option<Uuid>) -> String {
    id.map_or("NULL".to_owned(), |i| format!("'{i}'"))
}

impl World {
    /// Generates a world from `seed` and inserts it (migrations applied already).
    pub async fn seed(pool: &PgPool, seed: u64, sizes: Sizes) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sql = String::new();

        let users: Vec<Uuid> = (0..sizes.users).map(|_| new_id(&mut rng)).collect();
        let mut rows = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let status = match rng.random_range(0..100) {
                0..88 => "active",
                88..96 => "suspended",
                _ => "deleted",
            };
            rows.push(format!("('{u}', 'u{i}-{u}@cluster.test', '{status}')"));
        }
        sql.push_str(&format!(
            "INSERT INTO users (id, email, status) VALUES {};\n",
            rows.join(",")
        ));

        // A forest: the first four are roots, later teams hang under an earlier one
        // (parents first, as the foreign key and the cycle check want).
        let teams: Vec<Uuid> = (0..sizes.teams).map(|_| new_id(&mut rng)).collect();
        let mut rows = Vec::new();
        for (i, t) in teams.iter().enumerate() {
            let parent = (i >= 4 && rng.random_bool(0.85)).then(|| teams[rng.random_range(0..i)]);
            rows.push(format!("('{t}', 'team{i}', {})", sql_opt(parent)));
        }
        sql.push_str(&format!(
            "INSERT INTO teams (id, name, parent_id) VALUES {};\n",
            rows.join(",")
        ));

        let mut related: Vec<Vec<(Kind, Uuid)>> = vec![Vec::new(); users.len()];
        let mut members_of_team: Vec<Vec<usize>> = vec![Vec::new(); teams.len()];
        let mut rows = Vec::new();
        for (ui, u) in users.iter().enumerate() {
            let n = [0, 1, 1, 2, 2, 3].choose(&mut rng).copied().unwrap_or(1);
            let mut picked = HashSet::new();
            for _ in 0..n {
                let ti = rng.random_range(0..teams.len());
                if picked.insert(ti) {
                    let role = ROLES.choose(&mut rng).copied().unwrap_or("member");
                    rows.push(format!("('{}', '{u}', '{role}')", teams[ti]));
                    members_of_team[ti].push(ui);
                    related[ui].push((Kind::Team, teams[ti]));
                }
            }
        }
        sql.push_str(&format!(
            "INSERT INTO team_members (team_id, user_id, role) VALUES {};\n",
            rows.join(",")
        ));

        let projects: Vec<Uuid> = (0..sizes.projects).map(|_| new_id(&mut rng)).collect();
        let mut project_team = Vec::new();
        let mut rows = Vec::new();
        for (i, p) in projects.iter().enumerate() {
            let owner = rng.random_range(0..users.len());
            let team = rng
                .random_bool(0.7)
                .then(|| rng.random_range(0..teams.len()));
            let visibility = if rng.random_bool(0.2) {
                "public"
            } else {
                "private"
            };
            rows.push(format!(
                "('{p}', '{}', {}, '{visibility}', 'project{i}')",
                users[owner],
                sql_opt(team.map(|t| teams[t]))
            ));
            related[owner].push((Kind::Project, *p));
            if let Some(t) = team {
                for &m in &members_of_team[t] {
                    related[m].push((Kind::Project, *p));
                }
            }
            project_team.push(team);
        }
        sql.push_str(&format!(
            "INSERT INTO projects (id, owner_id, team_id, visibility, name) VALUES {};\n",
            rows.join(",")
        ));

        // Generations: most in a project, the rest reach one through parents.
        // The last 18 form one long project-less chain under a project generation,
        // so hop 16 finds the project and hop 17 does not (SPEC §9).
        let chain_len = 18;
        let n_random = sizes.generations.saturating_sub(chain_len + 1);
        let generations: Vec<Uuid> = (0..sizes.generations).map(|_| new_id(&mut rng)).collect();
        let mut generation_project: Vec<Option<usize>> = Vec::new();
        let mut rows = Vec::new();
        for (i, g) in generations.iter().enumerate() {
            let owner = rng.random_range(0..users.len());
            let (project, parent) = if i < n_random {
                if i < 20 || rng.random_bool(0.6) {
                    let parent = (i > 0 && rng.random_bool(0.3))
                        .then(|| generations[rng.random_range(0..i)]);
                    (Some(rng.random_range(0..projects.len())), parent)
                } else {
                    let parent = rng
                        .random_bool(0.85)
                        .then(|| generations[rng.random_range(0..i)]);
                    (None, parent)
                }
            } else if i == n_random {
                (Some(rng.random_range(0..projects.len())), None)
            } else {
                (None, Some(generations[i - 1]))
            };
            let status = match rng.random_range(0..100) {
                0..4 => "deleted",
                4..40 => "pending",
                40..85 => "completed",
                _ => "failed",
            };
            rows.push(format!(
                "('{g}', '{}', {}, {}, '{status}')",
                users[owner],
                sql_opt(project.map(|p| projects[p])),
                sql_opt(parent)
            ));
            related[owner].push((Kind::Generation, *g));
            if let Some(p) = project
                && let Some(t) = project_team[p]
            {
                for &m in &members_of_team[t] {
                    related[m].push((Kind::Generation, *g));
                }
            }
            generation_project.push(project);
        }
        sql.push_str(&format!(
            "INSERT INTO generations (id, user_id, project_id, parent_id, status) VALUES {};\n",
            rows.join(",")
        ));

        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..sizes.shares {
            let (kind, resource, rkind) = if rng.random_bool(0.6) {
                let g = *generations.choose(&mut rng).expect("generations");
                ("generation", g, Kind::Generation)
            } else {
                let p = *projects.choose(&mut rng).expect("projects");
                ("project", p, Kind::Project)
            };
            let (user, team) = if rng.random_bool(0.6) {
                let ui = rng.random_range(0..users.len());
                related[ui].push((rkind, resource));
                (Some(users[ui]), None)
            } else {
                let ti = rng.random_range(0..teams.len());
                for &m in &members_of_team[ti] {
                    related[m].push((rkind, resource));
                }
                (None, Some(teams[ti]))
            };
            if !seen.insert((resource, user, team)) {
                continue;
            }
            let role = ROLES.choose(&mut rng).copied().unwrap_or("viewer");
            rows.push(format!(
                "('{}', '{kind}', '{resource}', {}, {}, '{role}')",
                new_id(&mut rng),
                sql_opt(user),
                sql_opt(team)
            ));
        }
        sql.push_str(&format!(
            "INSERT INTO shares (id, resource_kind, resource_id, grantee_user_id, grantee_team_id, role) VALUES {};\n",
            rows.join(",")
        ));

        // Sessions never expire during a run: far future or long past.
        let mut sessions = Vec::new();
        let mut rows = Vec::new();
        for _ in 0..sizes.sessions {
            let (id, user) = (new_id(&mut rng), *users.choose(&mut rng).expect("users"));
            let expires = if rng.random_bool(0.9) {
                "2099-01-01"
            } else {
                "2001-01-01"
            };
            let revoked = if rng.random_bool(0.15) {
                "now()"
            } else {
                "NULL"
            };
            rows.push(format!("('{id}', '{user}', '{expires}', {revoked})"));
            sessions.push((id, user));
        }
        sql.push_str(&format!(
            "INSERT INTO sessions (id, user_id, expires_at, revoked_at) VALUES {};\n",
            rows.join(",")
        ));

        let mut api_keys = Vec::new();
        let mut rows = Vec::new();
        for _ in 0..sizes.api_keys {
            use base64::Engine as _;
            let bytes: [u8; 32] = rng.random();
            let plain = format!(
                "{}{}",
                apikey::PREFIX,
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
            );
            let user = *users.choose(&mut rng).expect("users");
            let scopes = match rng.random_range(0..20) {
                0..10 => "NULL",
                10..14 => "'{read}'",
                14..17 => "'{read,write}'",
                17 => "'{}'",
                _ => "'{read,write,delete,share,manage,ops}'",
            };
            let expires = match rng.random_range(0..10) {
                0..7 => "NULL",
                7 => "'2001-01-01'",
                _ => "'2099-01-01'",
            };
            let revoked = if rng.random_bool(0.15) {
                "now()"
            } else {
                "NULL"
            };
            rows.push(format!(
                "('{}', '{user}', '{}', {scopes}, {expires}, {revoked})",
                new_id(&mut rng),
                apikey::hash(&plain)
            ));
            api_keys.push((plain, user));
        }
        sql.push_str(&format!(
            "INSERT INTO api_keys (id, user_id, key_hash, scopes, expires_at, revoked_at) VALUES {};\n",
            rows.join(",")
        ));

        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .expect("seed the world");
        World {
            users,
            teams,
            projects,
            generations,
            sessions,
            api_keys,
            related,
        }
    }

    /// Every principal worth asking about: a plain token per user, a token per
    /// session (its own user), some sessions presented by another user, scoped
    /// tokens, tokens for users that do not exist, and every API key.
    pub fn principals(&self, seed: u64) -> Vec<Principal> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let jwt = |user, sid, scope: Option<&str>| Principal::Jwt {
            user,
            sid,
            scope: scope.map(str::to_owned),
        };
        let mut out: Vec<Principal> = self.users.iter().map(|u| jwt(*u, None, None)).collect();
        out.extend(self.sessions.iter().map(|(s, u)| jwt(*u, Some(*s), None)));
        for _ in 0..15 {
            let (s, _) = *self.sessions.choose(&mut rng).expect("sessions");
            out.push(jwt(
                *self.users.choose(&mut rng).expect("users"),
                Some(s),
                None,
            ));
        }
        for scope in [
            "read",
            "read write",
            "ops read",
            "",
            "write delete share manage",
            "ops",
        ] {
            for _ in 0..8 {
                out.push(jwt(
                    *self.users.choose(&mut rng).expect("users"),
                    None,
                    Some(scope),
                ));
            }
        }
        for _ in 0..5 {
            out.push(jwt(new_id(&mut rng), None, None));
        }
        out.extend(self.api_keys.iter().map(|(plain, _)| Principal::ApiKey {
            plain: plain.clone(),
        }));
        out
    }

    /// The user a principal claims to be (for picking related resources).
    fn user_of(&self, p: &Principal) -> Option<Uuid> {
        match p {
            Principal::Jwt { user, .. } => Some(*user),
            Principal::ApiKey { plain } => self
                .api_keys
                .iter()
                .find(|(k, _)| k == plain)
                .map(|(_, u)| *u),
        }
    }

    /// `n` random (principal, route) pairs: most on resources related to the
    /// principal's user at seed time (likely allows), the rest anywhere, plus
    /// ids that do not exist and authenticated-only routes.
    pub fn sample(&self, principals: &[Principal], n: usize, seed: u64) -> Vec<(Principal, Route)> {
        let mut rng = StdRng::seed_from_u64(seed);
        let auth_routes = authenticated_routes();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let p = principals.choose(&mut rng).expect("principals").clone();
            let related = self
                .user_of(&p)
                .and_then(|u| self.users.iter().position(|x| *x == u))
                .map(|i| &self.related[i][..])
                .unwrap_or(&[]);
            let roll = rng.random_range(0..100);
            let (kind, id) = if roll < 70 && !related.is_empty() {
                *related.choose(&mut rng).expect("related")
            } else if roll < 92 {
                match rng.random_range(0..10) {
                    0..6 => (
                        Kind::Generation,
                        *self.generations.choose(&mut rng).expect("g"),
                    ),
                    6..8 => (Kind::Project, *self.projects.choose(&mut rng).expect("p")),
                    _ => (Kind::Team, *self.teams.choose(&mut rng).expect("t")),
                }
            } else if roll < 95 {
                let kind = [Kind::Generation, Kind::Project, Kind::Team]
                    .choose(&mut rng)
                    .copied()
                    .expect("kind");
                (kind, new_id(&mut rng))
            } else {
                out.push((p, auth_routes.choose(&mut rng).expect("route").clone()));
                continue;
            };
            let route = resource_routes(kind, id)
                .choose(&mut rng)
                .expect("route")
                .clone();
            out.push((p, route));
        }
        out
    }
}

/// The credential header a principal sends: a fresh one-hour token, or its key.
pub fn credential(jwt: &JwtVerifier, principal: &Principal) -> (String, String) {
    match principal {
        Principal::Jwt { user, sid, scope } => (
            "authorization".to_owned(),
            Token::new(user)
                .ttl(Duration::from_secs(3600))
                .sid(*sid)
                .scope(scope.as_deref())
                .bearer(jwt),
        ),
        Principal::ApiKey { plain } => ("x-api-key".to_owned(), plain.clone()),
    }
}

/// The request for `route` with a credential header.
pub fn call(credential: &(String, String), route: &Route) -> Check {
    Check::new(route.method, &route.path).header(&credential.0, &credential.1)
}

/// What the writer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteStats {
    /// Statements committed (each op is one statement; some run three to a transaction).
    pub ops: u64,
    /// Changes the database refused by design (a team move that would close a cycle).
    pub rejected: u64,
    /// Transactions committed.
    pub commits: u64,
}

/// Applies at least `ops` random changes, and keeps going until `at_least`
/// has passed: grants, revokes, role changes, visibility flips, suspensions
/// and reactivations, shares added and removed, sessions and keys revoked and
/// restored, generations deleted and restored or moved, teams moved. One in
/// eight commits batches three changes in a transaction. As fast as one
/// connection allows; every change goes through the NOTIFY triggers.
pub async fn write_storm(
    pool: &PgPool,
    world: &World,
    ops: u64,
    seed: u64,
    at_least: Duration,
) -> WriteStats {
    let started = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = WriteStats::default();
    let mut conn = pool.acquire().await.expect("writer connection");
    while stats.ops < ops || started.elapsed() < at_least {
        let batch = if rng.random_range(0..8) == 0 { 3 } else { 1 };
        let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
        let mut rejected = false;
        let mut done = 0;
        for _ in 0..batch {
            let (sql, binds) = random_change(&mut rng, world);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for b in binds {
                q = match b {
                    Bind::Id(id) => q.bind(id),
                    Bind::Text(t) => q.bind(t),
                };
            }
            match q.execute(&mut *tx).await {
                Ok(_) => done += 1,
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23514") => {
                    // A cycle in the team tree: refused by the trigger, as designed.
                    stats.rejected += 1;
                    rejected = true;
                    break;
                }
                Err(e) => panic!("writer: unexpected database error: {e}"),
            }
        }
        if rejected {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
            stats.commits += 1;
            stats.ops += done;
        }
    }
    stats
}

enum Bind {
    Id(Uuid),
    Text(&'static str),
}

fn random_change(rng: &mut StdRng, w: &World) -> (String, Vec<Bind>) {
    use Bind::{Id, Text};
    let role = |rng: &mut StdRng| Text(ROLES.choose(rng).copied().expect("role"));
    let team = |rng: &mut StdRng| Id(*w.teams.choose(rng).expect("t"));
    let project = |rng: &mut StdRng| Id(*w.projects.choose(rng).expect("p"));
    let generation = |rng: &mut StdRng| Id(*w.generations.choose(rng).expect("g"));
    let u = |rng: &mut StdRng| Id(*w.users.choose(rng).expect("u"));
    match rng.random_range(0..100) {
        // Grant or change a role (upsert).
        0..20 => (
            "INSERT INTO team_members (team_id, user_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = EXCLUDED.role"
                .into(),
            vec![team(rng), u(rng), role(rng)],
        ),
        // Revoke one of a user's memberships.
        20..35 => (
            "DELETE FROM team_members WHERE ctid = \
             (SELECT ctid FROM team_members WHERE user_id = $1 LIMIT 1)"
                .into(),
            vec![u(rng)],
        ),
        // Role change on an existing membership of a team.
        35..42 => (
            "UPDATE team_members SET role = $2 WHERE ctid = \
             (SELECT ctid FROM team_members WHERE team_id = $1 LIMIT 1)"
                .into(),
            vec![team(rng), role(rng)],
        ),
        // Share to a user or a team (upsert).
        42..50 => {
            let (kind, res) = if rng.random_bool(0.6) {
                ("generation", generation(rng))
            } else {
                ("project", project(rng))
            };
            let sql = if rng.random_bool(0.6) {
                format!(
                    "INSERT INTO shares (resource_kind, resource_id, grantee_user_id, role) \
                     VALUES ('{kind}', $1, $2, $3) \
                     ON CONFLICT ON CONSTRAINT shares_one_per_grantee DO UPDATE SET role = EXCLUDED.role"
                )
            } else {
                format!(
                    "INSERT INTO shares (resource_kind, resource_id, grantee_team_id, role) \
                     VALUES ('{kind}', $1, $2, $3) \
                     ON CONFLICT ON CONSTRAINT shares_one_per_grantee DO UPDATE SET role = EXCLUDED.role"
                )
            };
            let grantee = if sql.contains("grantee_user_id") {
                u(rng)
            } else {
                team(rng)
            };
            (sql, vec![res, grantee, role(rng)])
        }
        // Remove a share from a resource.
        50..58 => (
            "DELETE FROM shares WHERE id = (SELECT id FROM shares WHERE resource_id = $1 LIMIT 1)"
                .into(),
            vec![if rng.random_bool(0.6) {
                generation(rng)
            } else {
                project(rng)
            }],
        ),
        // Visibility flip.
        58..66 => (
            "UPDATE projects SET visibility = CASE visibility WHEN 'public' THEN 'private' ELSE 'public' END \
             WHERE id = $1"
                .into(),
            vec![project(rng)],
        ),
        // A project moves to another team, or to none.
        66..70 => {
            if rng.random_bool(0.8) {
                (
                    "UPDATE projects SET team_id = $2 WHERE id = $1".into(),
                    vec![project(rng), team(rng)],
                )
            } else {
                (
                    "UPDATE projects SET team_id = NULL WHERE id = $1".into(),
                    vec![project(rng)],
                )
            }
        }
        // Suspension / reactivation.
        70..78 => (
            "UPDATE users SET status = CASE status WHEN 'active' THEN $2 ELSE 'active' END WHERE id = $1"
                .into(),
            vec![
                u(rng),
                Text(if rng.random_bool(0.8) {
                    "suspended"
                } else {
                    "deleted"
                }),
            ],
        ),
        // Session revoked or restored.
        78..85 => {
            let (s, _) = *w.sessions.choose(rng).expect("s");
            (
                "UPDATE sessions SET revoked_at = CASE WHEN revoked_at IS NULL THEN now() END WHERE id = $1"
                    .into(),
                vec![Id(s)],
            )
        }
        // API key revoked or restored.
        85..92 => {
            let (plain, _) = w.api_keys.choose(rng).expect("k");
            (
                format!(
                    "UPDATE api_keys SET revoked_at = CASE WHEN revoked_at IS NULL THEN now() END \
                     WHERE key_hash = '{}'",
                    apikey::hash(plain)
                ),
                vec![],
            )
        }
        // A generation deleted or restored.
        92..96 => (
            "UPDATE generations SET status = CASE status WHEN 'deleted' THEN 'completed' ELSE 'deleted' END \
             WHERE id = $1"
                .into(),
            vec![generation(rng)],
        ),
        // A generation moves to another project.
        96..98 => (
            "UPDATE generations SET project_id = $2 WHERE id = $1".into(),
            vec![generation(rng), project(rng)],
        ),
        // A team moves under another (the trigger refuses cycles).
        _ => {
            if rng.random_bool(0.7) {
                (
                    "UPDATE teams SET parent_id = $2 WHERE id = $1".into(),
                    vec![team(rng), team(rng)],
                )
            } else {
                (
                    "UPDATE teams SET parent_id = NULL WHERE id = $1".into(),
                    vec![team(rng)],
                )
            }
        }
    }
}
