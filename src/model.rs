//! Domain vocabulary shared by every layer: the rows of SPEC §3 as plain Rust
//! values, roles, actions and statuses. No I/O and no protocol types here.

use std::fmt;
use std::str::FromStr;

/// How many parent hops a generation's project lookup may take (SPEC §9): G is
/// hop 0, so a chain holds at most `MAX_PARENT_HOPS + 1` generations.
pub const MAX_PARENT_HOPS: usize = 16;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A role on a team, project or generation, ordered `viewer < member < admin < owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

/// What a route asks to do with a resource (SPEC §4 step 5), plus `ops`, which is
/// only ever granted by an explicit scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Read,
    Write,
    Delete,
    Share,
    Manage,
}

/// A user's account state; only `Active` users are ever allowed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Suspended,
    Deleted,
}

/// Project visibility; `Public` gives `viewer` to every authenticated active user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Private,
    Public,
}

/// Generation lifecycle; `Deleted` generations do not exist for anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationStatus {
    Pending,
    Completed,
    Failed,
    Deleted,
}

/// The kind of resource a share grants access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Generation,
    Project,
}

/// `users` row (only what decisions need).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub status: UserStatus,
}

/// `teams` row: the tree edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
}

/// One direct membership of a user (a `team_members` row seen from the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub team_id: Uuid,
    pub role: Role,
}

/// `projects` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub team_id: Option<Uuid>,
    pub visibility: Visibility,
}

/// `generations` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub id: Uuid,
    pub user_id: Uuid,
    pub project_id: Option<Uuid>,
    pub parent_id: Option<Uuid>,
    pub status: GenerationStatus,
}

/// Who a share is granted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grantee {
    User(Uuid),
    Team(Uuid),
}

/// One `shares` row seen from its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub grantee: Grantee,
    pub role: Role,
}

/// `api_keys` row, found by the hash of the presented key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub user_id: Uuid,
    /// Hex SHA-256 of the plain key, compared in constant time after lookup.
    pub key_hash: String,
    /// `None` = no narrowing of the five actions (never `ops`).
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `sessions` row, named by a JWT's `sid` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Returned when a database or config string names no known variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct ParseEnumError {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! text_enum {
    ($ty:ident, $kind:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The spelling used in Postgres, YAML, headers and metric labels.
            pub const fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(ParseEnumError { kind: $kind, value: s.to_owned() }),
                }
            }
        }
    };
}

text_enum!(Role, "role", { Viewer => "viewer", Member => "member", Admin => "admin", Owner => "owner" });
text_enum!(Action, "action", { Read => "read", Write => "write", Delete => "delete", Share => "share", Manage => "manage" });
text_enum!(UserStatus, "user status", { Active => "active", Suspended => "suspended", Deleted => "deleted" });
text_enum!(Visibility, "visibility", { Private => "private", Public => "public" });
text_enum!(GenerationStatus, "generation status", { Pending => "pending", Completed => "completed", Failed => "failed", Deleted => "deleted" });
text_enum!(ResourceKind, "resource kind", { Generation => "generation", Project => "project" });

impl Action {
    /// Every action, in the order of SPEC §4 step 5.
    pub const ALL: [Action; 5] = [
        Action::Read,
        Action::Write,
        Action::Delete,
        Action::Share,
        Action::Manage,
    ];
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Member, Role::Admin, Role::Owner];
}

/// What a credential's scopes allow (SPEC §9): the five action names plus `ops`.
/// `None` scopes on a credential mean "no narrowing of the five actions"; `ops`
/// is never implied and must be granted explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Scopes {
    bits: u8,
}

impl Scopes {
    const OPS: u8 = 1 << 5;

    /// Scopes from tokens; unknown tokens are ignored (scopes only ever narrow).
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        let mut bits = 0;
        for token in tokens {
            bits |= match token {
                "read" => 1 << 0,
                "write" => 1 << 1,
                "delete" => 1 << 2,
                "share" => 1 << 3,
                "manage" => 1 << 4,
                "ops" => Self::OPS,
                _ => 0,
            };
        }
        Scopes { bits }
    }

    /// JWT `scope` claim: a space-separated string.
    pub fn from_claim(claim: &str) -> Self {
        Self::from_tokens(claim.split(' ').filter(|t| !t.is_empty()))
    }

    /// Whether the scopes grant `action`.
    pub fn allows(self, action: Action) -> bool {
        let bit = match action {
            Action::Read => 1 << 0,
            Action::Write => 1 << 1,
            Action::Delete => 1 << 2,
            Action::Share => 1 << 3,
            Action::Manage => 1 << 4,
        };
        self.bits & bit != 0
    }

    /// Whether `ops` was granted explicitly.
    pub fn has_ops(self) -> bool {
        self.bits & Self::OPS != 0
    }
}
