//! The pure policy core: facts in, effective role and verdict out (SPEC §4 steps
//! 3–5 and the "Roles and resources" rules of §9).
//!
//! Nothing here does I/O or knows where facts come from; callers (the facts layer)
//! fetch rows and hand them over already shaped. Because of that, every function
//! treats its input as untrusted shape: chains are bounded and cycle-checked here
//! even though the database and the caller are meant to prevent both.

use uuid::Uuid;

use crate::answer::DenyReason;

use crate::model::{
    Action, Generation, GenerationStatus, Membership, Project, Role, Scopes, UserStatus, Visibility,
};

pub use crate::model::MAX_PARENT_HOPS;

/// The subject of a decision: the user and their direct team memberships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The authenticated principal's user id (JWT `sub` or the API key's owner).
    pub user_id: Uuid,
    /// Direct `team_members` rows only; inheritance down the team tree is
    /// computed here from the resource side's team chains.
    pub memberships: &'a [Membership],
}

/// Who a share reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareGrantee {
    /// A share to one user.
    User(Uuid),
    /// A share to a team; `chain` is the grantee team followed by its ancestors
    /// (nearest first), because members of an ancestor belong to the team too.
    Team {
        /// Grantee team first, then its ancestors up to the root.
        chain: Vec<Uuid>,
    },
}

/// One share on a generation or project, with the grantee's team tree resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareFact {
    /// Who the share reaches.
    pub grantee: ShareGrantee,
    /// The role the share gives, whatever role the grantee holds in the team.
    pub role: Role,
}

/// Everything a decision on a project needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFacts {
    /// The `projects` row (owner and visibility are read from it).
    pub project: Project,
    /// The project's team followed by its ancestors; empty when the project has
    /// no team.
    pub team_chain: Vec<Uuid>,
    /// Shares whose resource is this project.
    pub shares: Vec<ShareFact>,
}

/// Everything a decision on a generation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationFacts {
    /// The `generations` row (owner and status are read from it).
    pub generation: Generation,
    /// Shares whose resource is this generation (never its parents').
    pub shares: Vec<ShareFact>,
    /// The project found by [`project_of`], if any: the generation's own or the
    /// nearest parent's.
    pub project: Option<ProjectFacts>,
}

/// The outcome of a decision once the effective role is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the effective role goes to the upstream as `x-velro-role`.
    Allow(Role),
    /// Denied, with the stable reason code for the deny body.
    Deny(DenyReason),
}

/// SPEC §9: find a generation's project. `chain[0]` is G (hop 0), `chain[i+1]`
/// is what the caller fetched for `chain[i].parent_id`. Returns the first
/// `project_id` found walking from hop 0; `None` on a broken link, a cycle, or
/// past [`MAX_PARENT_HOPS`] hops.
pub fn project_of(chain: &[Generation]) -> Option<Uuid> {
    // The caller is supposed to stop at all of these, but a stale cache entry or
    // a bug there must not let a wrong project grant roles, so re-check each.
    for (hop, generation) in chain.iter().enumerate() {
        if hop > MAX_PARENT_HOPS {
            return None;
        }
        if hop > 0 && chain[hop - 1].parent_id != Some(generation.id) {
            // Not the parent we asked for: the walk ends here, with nothing found.
            return None;
        }
        // At most MAX_PARENT_HOPS + 1 entries are looked at, so a linear scan is
        // cheaper than a set.
        if chain[..hop].iter().any(|seen| seen.id == generation.id) {
            // SPEC §9: on a cycle G has no project, even if the repeated row
            // claims one.
            return None;
        }
        if let Some(project_id) = generation.project_id {
            return Some(project_id);
        }
    }
    None
}

/// U belongs to team T with role R when U is a member of T or of any ancestor of
/// T; R is the highest such role. `chain` = T then its ancestors. `None` when U
/// belongs to none of them.
pub fn role_in_team(subject: &Subject<'_>, chain: &[Uuid]) -> Option<Role> {
    subject
        .memberships
        .iter()
        .filter(|membership| chain.contains(&membership.team_id))
        .map(|membership| membership.role)
        .max()
}

/// SPEC §4 step 4 on a project: owner if `owner_id = U`; role in the project's
/// team chain; any share to U or to a team U belongs to; viewer if public.
/// Highest wins.
pub fn role_on_project(subject: &Subject<'_>, project: &ProjectFacts) -> Option<Role> {
    let owner = (project.project.owner_id == subject.user_id).then_some(Role::Owner);
    let team = role_in_team(subject, &project.team_chain);
    let shared = role_from_shares(subject, &project.shares);
    let public = (project.project.visibility == Visibility::Public).then_some(Role::Viewer);
    // `None < Some(_)` for `Option<Role>`, so `max` is "highest role, if any".
    owner.max(team).max(shared).max(public)
}

/// On a generation: `None` if its status is `Deleted`. Owner if
/// `generation.user_id = U`; plus everything [`role_on_project`] gives for its
/// project (if any); plus shares on the generation. Parents' owners and shares
/// are not inherited.
pub fn role_on_generation(subject: &Subject<'_>, generation: &GenerationFacts) -> Option<Role> {
    // A deleted generation does not exist for anyone, its owner included (404).
    if generation.generation.status == GenerationStatus::Deleted {
        return None;
    }
    let owner = (generation.generation.user_id == subject.user_id).then_some(Role::Owner);
    let project = generation
        .project
        .as_ref()
        .and_then(|project| role_on_project(subject, project));
    let shared = role_from_shares(subject, &generation.shares);
    owner.max(project).max(shared)
}

/// SPEC §4 step 5: viewer → read; member → read, write; admin and owner → all five.
pub fn role_allows(role: Role, action: Action) -> bool {
    match role {
        Role::Viewer => matches!(action, Action::Read),
        Role::Member => matches!(action, Action::Read | Action::Write),
        // SPEC §9: owner and admin allow the same five actions today.
        Role::Admin | Role::Owner => true,
    }
}

/// SPEC §9 order: inactive user → `UserInactive` (even when `role` is `None`);
/// no role → `NotFound`; role without the action → `InsufficientRole`; scopes
/// without the action → `InsufficientScope`; else `Allow(role)`. `scopes: None`
/// means no narrowing.
pub fn decide(
    status: UserStatus,
    role: Option<Role>,
    action: Action,
    scopes: Option<Scopes>,
) -> Verdict {
    // Step 3 precedes step 4, so an inactive user learns nothing about the
    // resource, not even whether it exists.
    if status != UserStatus::Active {
        return Verdict::Deny(DenyReason::UserInactive);
    }
    let Some(role) = role else {
        return Verdict::Deny(DenyReason::NotFound);
    };
    if !role_allows(role, action) {
        return Verdict::Deny(DenyReason::InsufficientRole);
    }
    // Checked last: scopes only narrow, and only once a role exists (otherwise
    // the answer is 404, not a scope error that would confirm existence).
    if let Some(scopes) = scopes
        && !scopes.allows(action)
    {
        return Verdict::Deny(DenyReason::InsufficientScope);
    }
    Verdict::Allow(role)
}

/// The highest role any of `shares` gives the subject: a user share to U, or a
/// team share to a team U belongs to (members of the team or of its ancestors).
fn role_from_shares(subject: &Subject<'_>, shares: &[ShareFact]) -> Option<Role> {
    shares
        .iter()
        .filter(|share| match &share.grantee {
            ShareGrantee::User(user_id) => *user_id == subject.user_id,
            ShareGrantee::Team { chain } => role_in_team(subject, chain).is_some(),
        })
        .map(|share| share.role)
        .max()
}

#[cfg(test)]
mod tests;
