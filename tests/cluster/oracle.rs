//! The oracle: what the answer must be, computed straight from Postgres.
//!
//! Why an independent evaluation and not the library's `Authorizer` with its
//! caches flushed: the cluster tests are about *convergence*, and an oracle that
//! shares `src/policy.rs` and `src/facts.rs` with the sidecars would agree with
//! them on any bug in those (a mis-walked team tree, a share that reaches the
//! wrong people), hiding it. So this is a second, deliberately naive reading of
//! SPEC §4/§9 over a consistent snapshot of all eight tables (one REPEATABLE
//! READ transaction): every pair of a sample is judged against the same instant,
//! and 2,000+ judgements cost microseconds instead of ~20,000 queries. The storm
//! additionally cross-checks this oracle against the library's `Authorizer`
//! (caches flushed before each decision) on the same sample, so a disagreement
//! in the reading of the spec shows up as such, not as a convergence failure.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;
use velro_authz::authn::apikey;
use velro_authz::testkit::Verdict;

use super::world::{Kind, Need, Principal, Route};

const RANKS: [&str; 4] = ["viewer", "member", "admin", "owner"];

fn rank(role: &str) -> u8 {
    RANKS
        .iter()
        .position(|r| *r == role)
        .map_or(0, |i| i as u8 + 1)
}

fn role_name(rank: u8) -> &'static str {
    RANKS[usize::from(rank) - 1]
}

struct Project {
    owner: Uuid,
    team: Option<Uuid>,
    public: bool,
}

struct Generation {
    owner: Uuid,
    project: Option<Uuid>,
    parent: Option<Uuid>,
    deleted: bool,
}

struct ShareRow {
    user: Option<Uuid>,
    team: Option<Uuid>,
    rank: u8,
}

struct SessionRow {
    user: Uuid,
    expires: DateTime<Utc>,
    revoked: bool,
}

struct KeyRow {
    user: Uuid,
    scopes: Option<Vec<String>>,
    expires: Option<DateTime<Utc>>,
    revoked: bool,
}

/// Every authorization row at one instant.
pub struct Snapshot {
    users: HashMap<Uuid, String>,
    team_parent: HashMap<Uuid, Option<Uuid>>,
    /// user → [(team, rank)]
    members: HashMap<Uuid, Vec<(Uuid, u8)>>,
    projects: HashMap<Uuid, Project>,
    generations: HashMap<Uuid, Generation>,
    /// (kind, resource) → shares
    shares: HashMap<(String, Uuid), Vec<ShareRow>>,
    sessions: HashMap<Uuid, SessionRow>,
    keys: HashMap<String, KeyRow>,
    now: DateTime<Utc>,
}

impl Snapshot {
    /// Reads all eight tables in one REPEATABLE READ, READ ONLY transaction.
    pub async fn load(pool: &PgPool) -> Snapshot {
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .expect("isolation");
        let all = |sql: &'static str| sqlx::query(sql);
        let mut snap = Snapshot {
            users: HashMap::new(),
            team_parent: HashMap::new(),
            members: HashMap::new(),
            projects: HashMap::new(),
            generations: HashMap::new(),
            shares: HashMap::new(),
            sessions: HashMap::new(),
            keys: HashMap::new(),
            now: Utc::now(),
        };
        for r in all("SELECT id, status FROM users")
            .fetch_all(&mut *tx)
            .await
            .expect("users")
        {
            snap.users.insert(r.get(0), r.get(1));
        }
        for r in all("SELECT id, parent_id FROM teams")
            .fetch_all(&mut *tx)
            .await
            .expect("teams")
        {
            snap.team_parent.insert(r.get(0), r.get(1));
        }
        for r in all("SELECT user_id, team_id, role FROM team_members")
            .fetch_all(&mut *tx)
            .await
            .expect("members")
        {
            let role: String = r.get(2);
            snap.members
                .entry(r.get(0))
                .or_default()
                .push((r.get(1), rank(&role)));
        }
        for r in all("SELECT id, owner_id, team_id, visibility FROM projects")
            .fetch_all(&mut *tx)
            .await
            .expect("projects")
        {
            let visibility: String = r.get(3);
            snap.projects.insert(
                r.get(0),
                Project {
                    owner: r.get(1),
                    team: r.get(2),
                    public: visibility == "public",
                },
            );
        }
        for r in all("SELECT id, user_id, project_id, parent_id, status FROM generations")
            .fetch_all(&mut *tx)
            .await
            .expect("generations")
        {
            let status: String = r.get(4);
            snap.generations.insert(
                r.get(0),
                Generation {
                    owner: r.get(1),
                    project: r.get(2),
                    parent: r.get(3),
                    deleted: status == "deleted",
                },
            );
        }
        for r in all(
            "SELECT resource_kind, resource_id, grantee_user_id, grantee_team_id, role FROM shares",
        )
        .fetch_all(&mut *tx)
        .await
        .expect("shares")
        {
            let role: String = r.get(4);
            snap.shares
                .entry((r.get(0), r.get(1)))
                .or_default()
                .push(ShareRow {
                    user: r.get(2),
                    team: r.get(3),
                    rank: rank(&role),
                });
        }
        for r in all("SELECT id, user_id, expires_at, revoked_at IS NOT NULL FROM sessions")
            .fetch_all(&mut *tx)
            .await
            .expect("sessions")
        {
            snap.sessions.insert(
                r.get(0),
                SessionRow {
                    user: r.get(1),
                    expires: r.get(2),
                    revoked: r.get(3),
                },
            );
        }
        for r in all(
            "SELECT key_hash, user_id, scopes, expires_at, revoked_at IS NOT NULL FROM api_keys",
        )
        .fetch_all(&mut *tx)
        .await
        .expect("api_keys")
        {
            snap.keys.insert(
                r.get(0),
                KeyRow {
                    user: r.get(1),
                    scopes: r.get(2),
                    expires: r.get(3),
                    revoked: r.get(4),
                },
            );
        }
        tx.commit().await.expect("commit");
        snap
    }

    /// The answer SPEC §4/§9 gives for `principal` on `route`.
    pub fn expected(&self, principal: &Principal, route: &Route) -> Verdict {
        // 2. Authenticate. Scopes: None = no narrowing (and no `ops`).
        let (user, scopes): (Uuid, Option<HashSet<String>>) = match principal {
            Principal::Jwt { user, sid, scope } => {
                if let Some(sid) = sid {
                    let ok = self
                        .sessions
                        .get(sid)
                        .is_some_and(|s| s.user == *user && !s.revoked && s.expires > self.now);
                    if !ok {
                        return Verdict::deny(401, "session_revoked");
                    }
                }
                let scopes = scope.as_ref().map(|s| {
                    s.split(' ')
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect()
                });
                (*user, scopes)
            }
            Principal::ApiKey { plain } => {
                let Some(key) = self.keys.get(&apikey::hash(plain)) else {
                    return Verdict::deny(401, "invalid_api_key");
                };
                if key.revoked {
                    return Verdict::deny(401, "api_key_revoked");
                }
                if key.expires.is_some_and(|e| e <= self.now) {
                    return Verdict::deny(401, "api_key_expired");
                }
                (
                    key.user,
                    key.scopes.as_ref().map(|s| s.iter().cloned().collect()),
                )
            }
        };
        // 3. An existing, active user.
        let Some(status) = self.users.get(&user) else {
            return Verdict::deny(401, "unknown_user");
        };
        if status != "active" {
            return Verdict::deny(403, "user_inactive");
        }
        match route.need {
            Need::Authenticated { ops } => {
                if ops && !scopes.as_ref().is_some_and(|s| s.contains("ops")) {
                    return Verdict::deny(403, "insufficient_scope");
                }
                Verdict::allow(None)
            }
            Need::Resource { kind, action } => {
                let id = route.id.expect("resource route has an id");
                // 4. Effective role.
                let rank = match kind {
                    Kind::Team => self.team_rank(user, id),
                    Kind::Project => self.project_rank(user, id),
                    Kind::Generation => self.generation_rank(user, id),
                };
                if rank == 0 {
                    return Verdict::deny(404, "not_found");
                }
                // 5. Action allowed by role, then by scopes.
                let allowed = match role_name(rank) {
                    "viewer" => action == "read",
                    "member" => action == "read" || action == "write",
                    _ => true,
                };
                if !allowed {
                    return Verdict::deny(403, "insufficient_role");
                }
                if scopes.as_ref().is_some_and(|s| !s.contains(action)) {
                    return Verdict::deny(403, "insufficient_scope");
                }
                Verdict::allow(Some(role_name(rank)))
            }
        }
    }

    /// Highest role of `user` in `team` through membership of it or of any
    /// ancestor; 0 = none (or no such team).
    fn team_rank(&self, user: Uuid, team: Uuid) -> u8 {
        let mut ancestors = HashSet::new();
        let mut at = Some(team);
        while let Some(t) = at {
            let Some(parent) = self.team_parent.get(&t) else {
                break;
            };
            if !ancestors.insert(t) {
                break;
            }
            at = *parent;
        }
        self.members
            .get(&user)
            .into_iter()
            .flatten()
            .filter(|(t, _)| ancestors.contains(t))
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    }

    fn share_rank(&self, user: Uuid, kind: &str, id: Uuid) -> u8 {
        self.shares
            .get(&(kind.to_owned(), id))
            .into_iter()
            .flatten()
            .filter(|s| s.user == Some(user) || s.team.is_some_and(|t| self.team_rank(user, t) > 0))
            .map(|s| s.rank)
            .max()
            .unwrap_or(0)
    }

    fn project_rank(&self, user: Uuid, id: Uuid) -> u8 {
        let Some(p) = self.projects.get(&id) else {
            return 0;
        };
        let mut best = self.share_rank(user, "project", id);
        if p.owner == user {
            best = best.max(rank("owner"));
        }
        if let Some(team) = p.team {
            best = best.max(self.team_rank(user, team));
        }
        if p.public {
            best = best.max(rank("viewer"));
        }
        best
    }

    fn generation_rank(&self, user: Uuid, id: Uuid) -> u8 {
        let Some(g) = self.generations.get(&id) else {
            return 0;
        };
        if g.deleted {
            return 0;
        }
        let mut best = self.share_rank(user, "generation", id);
        if g.owner == user {
            best = best.max(rank("owner"));
        }
        // The project: G's own, else the nearest parent's; G is hop 0, at most
        // 16 parent hops; a missing parent or a repeated id ends the walk.
        let mut seen = HashSet::new();
        let mut at = Some(id);
        let mut hops = 0;
        while let Some(gid) = at {
            let Some(row) = self.generations.get(&gid) else {
                break;
            };
            if hops > 16 || !seen.insert(gid) {
                break;
            }
            if let Some(project) = row.project {
                best = best.max(self.project_rank(user, project));
                break;
            }
            at = row.parent;
            hops += 1;
        }
        best
    }
}
