//! SPEC §4 step 4: gathers the facts an effective role rests on and hands them
//! to the pure [`policy`] functions.

use uuid::Uuid;

use crate::facts::{FactError, FactSource, Gather};
use crate::model::{GenerationStatus, Grantee, ResourceKind, Role, Share};
use crate::policy::{self, GenerationFacts, ProjectFacts, ShareFact, ShareGrantee, Subject};
use crate::routes::TargetKind;
use crate::store::Target;

/// The resource `kind`/`id` as the fact tiers name it.
pub(super) fn target(kind: TargetKind, id: Uuid) -> Target {
    match kind {
        TargetKind::Team => Target::Team(id),
        TargetKind::Project => Target::Project(id),
        TargetKind::Generation => Target::Generation(id),
    }
}

/// The user's effective role on the resource `kind`/`id`; `None` when the
/// resource does not exist or the user has no role on it.
pub(super) async fn effective_role<S: FactSource>(
    facts: &Gather<'_, S>,
    user_id: Uuid,
    kind: TargetKind,
    id: Uuid,
) -> Result<Option<Role>, FactError> {
    let memberships = facts.memberships(user_id).await?;
    let subject = Subject {
        user_id,
        memberships: &memberships,
    };
    Ok(match kind {
        TargetKind::Team => {
            let chain = facts.team_chain(id).await?;
            policy::role_in_team(&subject, &chain)
        }
        TargetKind::Project => match project_facts(facts, id).await? {
            Some(p) => policy::role_on_project(&subject, &p),
            None => None,
        },
        TargetKind::Generation => {
            let Some(generation) = facts.generation(id).await? else {
                return Ok(None);
            };
            if generation.status == GenerationStatus::Deleted {
                return Ok(None);
            }
            let chain = facts.generation_chain(generation.clone()).await?;
            let project = match policy::project_of(&chain) {
                Some(pid) => project_facts(facts, pid).await?,
                None => None,
            };
            let shares = share_facts(facts, ResourceKind::Generation, id).await?;
            policy::role_on_generation(
                &subject,
                &GenerationFacts {
                    generation,
                    shares,
                    project,
                },
            )
        }
    })
}

/// A project's row, team chain and shares; `None` when it does not exist.
async fn project_facts<S: FactSource>(
    facts: &Gather<'_, S>,
    id: Uuid,
) -> Result<Option<ProjectFacts>, FactError> {
    let Some(project) = facts.project(id).await? else {
        return Ok(None);
    };
    let team_chain = match project.team_id {
        Some(team) => facts.team_chain(team).await?,
        None => Vec::new(),
    };
    let shares = share_facts(facts, ResourceKind::Project, id).await?;
    Ok(Some(ProjectFacts {
        project,
        team_chain,
        shares,
    }))
}

/// The shares on a resource, each team grantee with its ancestor chain.
async fn share_facts<S: FactSource>(
    facts: &Gather<'_, S>,
    kind: ResourceKind,
    id: Uuid,
) -> Result<Vec<ShareFact>, FactError> {
    let shares = facts.shares(kind, id).await?;
    let mut out = Vec::with_capacity(shares.len());
    for Share { grantee, role } in shares.iter().copied() {
        let grantee = match grantee {
            Grantee::User(u) => ShareGrantee::User(u),
            Grantee::Team(t) => ShareGrantee::Team {
                chain: facts.team_chain(t).await?,
            },
        };
        out.push(ShareFact { grantee, role });
    }
    Ok(out)
}
