//! SPEC §4 step 4: gathers the facts an effective role rests on and hands them
//! to the pure [`policy`] functions.

use uuid::Uuid;

use crate::facts::{FactError, FactSource, Facts, Trace};
use crate::model::{GenerationStatus, Grantee, ResourceKind, Role, Share};
use crate::policy::{self, GenerationFacts, ProjectFacts, ShareFact, ShareGrantee, Subject};
use crate::routes::TargetKind;

/// The user's effective role on the resource `kind`/`id`; `None` when the
/// resource does not exist or the user has no role on it.
pub(super) async fn effective_role<S: FactSource>(
    facts: &Facts<S>,
    user_id: Uuid,
    kind: TargetKind,
    id: Uuid,
    trace: &Trace,
) -> Result<Option<Role>, FactError> {
    let memberships = facts.memberships(user_id, trace).await?;
    let subject = Subject {
        user_id,
        memberships: &memberships,
    };
    Ok(match kind {
        TargetKind::Team => {
            let chain = facts.team_chain(id, trace).await?;
            policy::role_in_team(&subject, &chain)
        }
        TargetKind::Project => match project_facts(facts, id, trace).await? {
            Some(p) => policy::role_on_project(&subject, &p),
            None => None,
        },
        TargetKind::Generation => {
            let Some(generation) = facts.generation(id, trace).await? else {
                return Ok(None);
            };
            if generation.status == GenerationStatus::Deleted {
                return Ok(None);
            }
            let chain = facts.generation_chain(generation.clone(), trace).await?;
            let project = match policy::project_of(&chain) {
                Some(pid) => project_facts(facts, pid, trace).await?,
                None => None,
            };
            let shares = share_facts(facts, ResourceKind::Generation, id, trace).await?;
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
    facts: &Facts<S>,
    id: Uuid,
    trace: &Trace,
) -> Result<Option<ProjectFacts>, FactError> {
    let Some(project) = facts.project(id, trace).await? else {
        return Ok(None);
    };
    let team_chain = match project.team_id {
        Some(team) => facts.team_chain(team, trace).await?,
        None => Vec::new(),
    };
    let shares = share_facts(facts, ResourceKind::Project, id, trace).await?;
    Ok(Some(ProjectFacts {
        project,
        team_chain,
        shares,
    }))
}

/// The shares on a resource, each team grantee with its ancestor chain.
async fn share_facts<S: FactSource>(
    facts: &Facts<S>,
    kind: ResourceKind,
    id: Uuid,
    trace: &Trace,
) -> Result<Vec<ShareFact>, FactError> {
    let shares = facts.shares(kind, id, trace).await?;
    let mut out = Vec::with_capacity(shares.len());
    for Share { grantee, role } in shares.iter().copied() {
        let grantee = match grantee {
            Grantee::User(u) => ShareGrantee::User(u),
            Grantee::Team(t) => ShareGrantee::Team {
                chain: facts.team_chain(t, trace).await?,
            },
        };
        out.push(ShareFact { grantee, role });
    }
    Ok(out)
}
