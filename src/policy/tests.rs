//! Table-driven tests of every policy rule (SPEC §3, §4 steps 3–5, §9 "Roles and
//! resources"). Each table row's name says subject, condition and expectation;
//! a failing run lists every failing row, not just the first.

use std::collections::HashMap;

use uuid::Uuid;

use super::*;
use crate::model::{
    Action, Generation, GenerationStatus, Membership, Project, Role, Scopes, UserStatus, Visibility,
};

// The subject of every decision below, and someone else who owns things.
const U: Uuid = Uuid::from_u128(0x1);
const OTHER: Uuid = Uuid::from_u128(0x2);

// Team tree: ROOT ─ MID ─ LEAF ─ DESC, and SIB, a sibling of MID under ROOT.
const ROOT: Uuid = Uuid::from_u128(0x100);
const MID: Uuid = Uuid::from_u128(0x101);
const LEAF: Uuid = Uuid::from_u128(0x102);
const SIB: Uuid = Uuid::from_u128(0x103);
const DESC: Uuid = Uuid::from_u128(0x104);

// Projects and generations.
const P: Uuid = Uuid::from_u128(0x200);
const P_PARENT: Uuid = Uuid::from_u128(0x201);
const P_PUBLIC: Uuid = Uuid::from_u128(0x202);
const G: Uuid = Uuid::from_u128(0x300);

/// A team followed by its ancestors, as the facts layer hands it over.
fn chain_of(team: Uuid) -> Vec<Uuid> {
    match team {
        ROOT => vec![ROOT],
        MID => vec![MID, ROOT],
        LEAF => vec![LEAF, MID, ROOT],
        DESC => vec![DESC, LEAF, MID, ROOT],
        SIB => vec![SIB, ROOT],
        other => panic!("team {other} is not in the fixture tree"),
    }
}

fn member(team_id: Uuid, role: Role) -> Membership {
    Membership { team_id, role }
}

fn user_share(user: Uuid, role: Role) -> ShareFact {
    ShareFact {
        grantee: ShareGrantee::User(user),
        role,
    }
}

fn team_share(team: Uuid, role: Role) -> ShareFact {
    ShareFact {
        grantee: ShareGrantee::Team {
            chain: chain_of(team),
        },
        role,
    }
}

fn project(owner_id: Uuid, team_id: Option<Uuid>, visibility: Visibility) -> ProjectFacts {
    project_with_id(P, owner_id, team_id, visibility)
}

fn project_with_id(
    id: Uuid,
    owner_id: Uuid,
    team_id: Option<Uuid>,
    visibility: Visibility,
) -> ProjectFacts {
    ProjectFacts {
        project: Project {
            id,
            owner_id,
            team_id,
            visibility,
        },
        team_chain: team_id.map(chain_of).unwrap_or_default(),
        shares: Vec::new(),
    }
}

fn private_project() -> ProjectFacts {
    project(OTHER, None, Visibility::Private)
}

fn team_project(team: Uuid) -> ProjectFacts {
    project(OTHER, Some(team), Visibility::Private)
}

fn with_shares(mut facts: ProjectFacts, shares: Vec<ShareFact>) -> ProjectFacts {
    facts.shares = shares;
    facts
}

fn generation(user_id: Uuid, status: GenerationStatus) -> Generation {
    Generation {
        id: G,
        user_id,
        project_id: None,
        parent_id: None,
        status,
    }
}

fn gen_facts(
    user_id: Uuid,
    status: GenerationStatus,
    shares: Vec<ShareFact>,
    project: Option<ProjectFacts>,
) -> GenerationFacts {
    let mut generation = generation(user_id, status);
    generation.project_id = project.as_ref().map(|p| p.project.id);
    GenerationFacts {
        generation,
        shares,
        project,
    }
}

/// Fails once, listing every row whose actual value differs from the expected one.
fn assert_rows<T: std::fmt::Debug + PartialEq>(
    rows: impl IntoIterator<Item = (&'static str, T, T)>,
) {
    let failures: Vec<String> = rows
        .into_iter()
        .filter(|(_, actual, expected)| actual != expected)
        .map(|(name, actual, expected)| format!("{name}: got {actual:?}, want {expected:?}"))
        .collect();
    assert!(
        failures.is_empty(),
        "failing rows:\n{}",
        failures.join("\n")
    );
}

struct ProjectCase {
    name: &'static str,
    memberships: Vec<Membership>,
    project: ProjectFacts,
    expected: Option<Role>,
}

#[test]
fn role_on_project_each_rule_gives_expected_role() {
    use Role::*;
    let cases = vec![
        ProjectCase {
            name: "project_owner_with_nothing_else_gets_owner",
            memberships: vec![],
            project: project(U, None, Visibility::Private),
            expected: Some(Owner),
        },
        ProjectCase {
            name: "stranger_on_private_project_gets_nothing",
            memberships: vec![],
            project: private_project(),
            expected: None,
        },
        ProjectCase {
            name: "viewer_of_project_team_gets_viewer",
            memberships: vec![member(LEAF, Viewer)],
            project: team_project(LEAF),
            expected: Some(Viewer),
        },
        ProjectCase {
            name: "member_of_project_team_gets_member",
            memberships: vec![member(LEAF, Member)],
            project: team_project(LEAF),
            expected: Some(Member),
        },
        ProjectCase {
            name: "admin_of_project_team_gets_admin",
            memberships: vec![member(LEAF, Admin)],
            project: team_project(LEAF),
            expected: Some(Admin),
        },
        ProjectCase {
            name: "owner_of_project_team_gets_owner",
            memberships: vec![member(LEAF, Owner)],
            project: team_project(LEAF),
            expected: Some(Owner),
        },
        ProjectCase {
            name: "member_of_parent_team_gets_member_on_project_in_child_team",
            memberships: vec![member(MID, Member)],
            project: team_project(LEAF),
            expected: Some(Member),
        },
        ProjectCase {
            name: "admin_of_grandparent_team_gets_admin_on_project_in_grandchild_team",
            memberships: vec![member(ROOT, Admin)],
            project: team_project(LEAF),
            expected: Some(Admin),
        },
        ProjectCase {
            name: "member_of_descendant_team_gets_nothing_on_project_in_ancestor_team",
            memberships: vec![member(LEAF, Owner)],
            project: team_project(MID),
            expected: None,
        },
        ProjectCase {
            name: "member_of_sibling_team_gets_nothing",
            memberships: vec![member(SIB, Owner)],
            project: team_project(MID),
            expected: None,
        },
        ProjectCase {
            name: "team_member_on_project_without_team_gets_nothing",
            memberships: vec![member(ROOT, Owner), member(LEAF, Owner)],
            project: private_project(),
            expected: None,
        },
        ProjectCase {
            name: "viewer_in_team_and_admin_in_ancestor_gets_admin_highest_wins",
            memberships: vec![member(LEAF, Viewer), member(ROOT, Admin)],
            project: team_project(LEAF),
            expected: Some(Admin),
        },
        ProjectCase {
            name: "owner_in_team_and_viewer_in_ancestor_gets_owner_highest_wins",
            memberships: vec![member(LEAF, Owner), member(ROOT, Viewer)],
            project: team_project(LEAF),
            expected: Some(Owner),
        },
        ProjectCase {
            name: "team_member_with_admin_user_share_gets_admin_highest_wins",
            memberships: vec![member(LEAF, Member)],
            project: with_shares(team_project(LEAF), vec![user_share(U, Admin)]),
            expected: Some(Admin),
        },
        ProjectCase {
            name: "team_admin_with_viewer_user_share_gets_admin_highest_wins",
            memberships: vec![member(LEAF, Admin)],
            project: with_shares(team_project(LEAF), vec![user_share(U, Viewer)]),
            expected: Some(Admin),
        },
        ProjectCase {
            name: "project_owner_with_viewer_team_role_and_share_gets_owner_highest_wins",
            memberships: vec![member(LEAF, Viewer)],
            project: with_shares(
                project(U, Some(LEAF), Visibility::Public),
                vec![user_share(U, Member)],
            ),
            expected: Some(Owner),
        },
        ProjectCase {
            name: "user_share_on_project_gives_share_role",
            memberships: vec![],
            project: with_shares(private_project(), vec![user_share(U, Member)]),
            expected: Some(Member),
        },
        ProjectCase {
            name: "user_share_to_someone_else_gives_nothing",
            memberships: vec![],
            project: with_shares(private_project(), vec![user_share(OTHER, Owner)]),
            expected: None,
        },
        ProjectCase {
            name: "two_user_shares_give_the_higher_role",
            memberships: vec![],
            project: with_shares(
                private_project(),
                vec![
                    user_share(U, Viewer),
                    user_share(U, Admin),
                    user_share(U, Member),
                ],
            ),
            expected: Some(Admin),
        },
        ProjectCase {
            name: "team_share_reaches_direct_member_of_grantee_team_with_share_role",
            memberships: vec![member(MID, Viewer)],
            project: with_shares(private_project(), vec![team_share(MID, Admin)]),
            expected: Some(Admin),
        },
        ProjectCase {
            name: "team_share_reaches_member_of_ancestor_of_grantee_team_with_share_role",
            memberships: vec![member(ROOT, Viewer)],
            project: with_shares(private_project(), vec![team_share(MID, Member)]),
            expected: Some(Member),
        },
        ProjectCase {
            name: "team_share_gives_share_role_not_higher_team_role",
            memberships: vec![member(MID, Owner)],
            project: with_shares(private_project(), vec![team_share(MID, Viewer)]),
            expected: Some(Viewer),
        },
        ProjectCase {
            name: "team_share_skips_member_of_descendant_of_grantee_team",
            memberships: vec![member(LEAF, Owner), member(DESC, Owner)],
            project: with_shares(private_project(), vec![team_share(MID, Admin)]),
            expected: None,
        },
        ProjectCase {
            name: "team_share_skips_member_of_sibling_of_grantee_team",
            memberships: vec![member(SIB, Owner)],
            project: with_shares(private_project(), vec![team_share(MID, Admin)]),
            expected: None,
        },
        ProjectCase {
            name: "stranger_on_public_project_gets_viewer_only",
            memberships: vec![],
            project: project(OTHER, None, Visibility::Public),
            expected: Some(Viewer),
        },
        ProjectCase {
            name: "team_member_on_public_project_keeps_member",
            memberships: vec![member(LEAF, Member)],
            project: project(OTHER, Some(LEAF), Visibility::Public),
            expected: Some(Member),
        },
        ProjectCase {
            name: "member_of_unrelated_team_on_public_project_gets_viewer_only",
            memberships: vec![member(SIB, Owner)],
            project: project(OTHER, Some(LEAF), Visibility::Public),
            expected: Some(Viewer),
        },
    ];
    assert_rows(cases.into_iter().map(|case| {
        let subject = Subject {
            user_id: U,
            memberships: &case.memberships,
        };
        (
            case.name,
            role_on_project(&subject, &case.project),
            case.expected,
        )
    }));
}

struct TeamCase {
    name: &'static str,
    memberships: Vec<Membership>,
    chain: Vec<Uuid>,
    expected: Option<Role>,
}

#[test]
fn role_in_team_membership_in_chain_gives_highest_role() {
    use Role::*;
    let case = |name, memberships, chain, expected| TeamCase {
        name,
        memberships,
        chain,
        expected,
    };
    let cases = vec![
        case("user_in_no_team_gets_none", vec![], chain_of(LEAF), None),
        case(
            "member_on_empty_chain_gets_none",
            vec![member(ROOT, Owner)],
            vec![],
            None,
        ),
        case(
            "direct_member_gets_own_role",
            vec![member(LEAF, Member)],
            chain_of(LEAF),
            Some(Member),
        ),
        case(
            "ancestor_member_gets_ancestor_role",
            vec![member(ROOT, Viewer)],
            chain_of(DESC),
            Some(Viewer),
        ),
        case(
            "descendant_member_gets_none",
            vec![member(DESC, Owner)],
            chain_of(LEAF),
            None,
        ),
        case(
            "sibling_member_gets_none",
            vec![member(SIB, Owner)],
            chain_of(LEAF),
            None,
        ),
        case(
            "member_of_several_teams_in_chain_gets_highest",
            vec![member(MID, Admin), member(LEAF, Member), member(SIB, Owner)],
            chain_of(LEAF),
            Some(Admin),
        ),
    ];
    assert_rows(cases.into_iter().map(|case| {
        let subject = Subject {
            user_id: U,
            memberships: &case.memberships,
        };
        (
            case.name,
            role_in_team(&subject, &case.chain),
            case.expected,
        )
    }));
}

struct GenerationCase {
    name: &'static str,
    memberships: Vec<Membership>,
    facts: GenerationFacts,
    expected: Option<Role>,
}

#[test]
fn role_on_generation_each_rule_gives_expected_role() {
    use GenerationStatus::*;
    use Role::*;
    let cases = vec![
        GenerationCase {
            name: "generation_owner_without_project_gets_owner",
            memberships: vec![],
            facts: gen_facts(U, Completed, vec![], None),
            expected: Some(Owner),
        },
        GenerationCase {
            name: "generation_owner_in_others_private_project_gets_owner",
            memberships: vec![],
            facts: gen_facts(U, Completed, vec![], Some(private_project())),
            expected: Some(Owner),
        },
        GenerationCase {
            name: "stranger_on_generation_without_project_gets_nothing",
            memberships: vec![member(ROOT, Owner)],
            facts: gen_facts(OTHER, Completed, vec![], None),
            expected: None,
        },
        GenerationCase {
            name: "stranger_on_generation_in_private_project_gets_nothing",
            memberships: vec![],
            facts: gen_facts(OTHER, Completed, vec![], Some(private_project())),
            expected: None,
        },
        GenerationCase {
            name: "stranger_on_generation_in_public_project_gets_viewer_only",
            memberships: vec![],
            facts: gen_facts(
                OTHER,
                Completed,
                vec![],
                Some(project(OTHER, None, Visibility::Public)),
            ),
            expected: Some(Viewer),
        },
        GenerationCase {
            name: "project_owner_gets_owner_on_generation",
            memberships: vec![],
            facts: gen_facts(
                OTHER,
                Completed,
                vec![],
                Some(project(U, None, Visibility::Private)),
            ),
            expected: Some(Owner),
        },
        GenerationCase {
            name: "project_team_member_gets_member_on_generation",
            memberships: vec![member(LEAF, Member)],
            facts: gen_facts(OTHER, Completed, vec![], Some(team_project(LEAF))),
            expected: Some(Member),
        },
        GenerationCase {
            name: "grandparent_team_admin_gets_admin_on_generation_in_grandchild_team_project",
            memberships: vec![member(ROOT, Admin)],
            facts: gen_facts(OTHER, Completed, vec![], Some(team_project(LEAF))),
            expected: Some(Admin),
        },
        GenerationCase {
            name: "descendant_team_member_gets_nothing_on_generation_in_ancestor_team_project",
            memberships: vec![member(DESC, Owner)],
            facts: gen_facts(OTHER, Completed, vec![], Some(team_project(LEAF))),
            expected: None,
        },
        GenerationCase {
            name: "user_share_on_generation_gives_share_role",
            memberships: vec![],
            facts: gen_facts(OTHER, Completed, vec![user_share(U, Member)], None),
            expected: Some(Member),
        },
        GenerationCase {
            name: "user_share_on_project_gives_share_role_on_generation",
            memberships: vec![],
            facts: gen_facts(
                OTHER,
                Completed,
                vec![],
                Some(with_shares(private_project(), vec![user_share(U, Admin)])),
            ),
            expected: Some(Admin),
        },
        GenerationCase {
            name: "team_share_on_generation_reaches_direct_member_of_grantee",
            memberships: vec![member(MID, Viewer)],
            facts: gen_facts(OTHER, Completed, vec![team_share(MID, Member)], None),
            expected: Some(Member),
        },
        GenerationCase {
            name: "team_share_on_generation_reaches_member_of_ancestor_of_grantee",
            memberships: vec![member(ROOT, Viewer)],
            facts: gen_facts(OTHER, Completed, vec![team_share(LEAF, Admin)], None),
            expected: Some(Admin),
        },
        GenerationCase {
            name: "team_share_on_generation_skips_member_of_descendant_of_grantee",
            memberships: vec![member(DESC, Owner)],
            facts: gen_facts(OTHER, Completed, vec![team_share(LEAF, Admin)], None),
            expected: None,
        },
        GenerationCase {
            name: "team_share_on_generation_skips_member_of_sibling_of_grantee",
            memberships: vec![member(SIB, Owner)],
            facts: gen_facts(OTHER, Completed, vec![team_share(MID, Admin)], None),
            expected: None,
        },
        GenerationCase {
            name: "team_share_on_project_reaches_member_of_ancestor_on_generation",
            memberships: vec![member(ROOT, Viewer)],
            facts: gen_facts(
                OTHER,
                Completed,
                vec![],
                Some(with_shares(
                    private_project(),
                    vec![team_share(MID, Member)],
                )),
            ),
            expected: Some(Member),
        },
        GenerationCase {
            name: "viewer_generation_share_and_admin_project_team_gives_admin_highest_wins",
            memberships: vec![member(LEAF, Admin)],
            facts: gen_facts(
                OTHER,
                Completed,
                vec![user_share(U, Viewer)],
                Some(team_project(LEAF)),
            ),
            expected: Some(Admin),
        },
        GenerationCase {
            name: "admin_generation_share_in_public_project_gives_admin_highest_wins",
            memberships: vec![],
            facts: gen_facts(
                OTHER,
                Completed,
                vec![user_share(U, Admin)],
                Some(project(OTHER, None, Visibility::Public)),
            ),
            expected: Some(Admin),
        },
        GenerationCase {
            name: "generation_owner_with_viewer_share_gets_owner_highest_wins",
            memberships: vec![member(LEAF, Member)],
            facts: gen_facts(
                U,
                Completed,
                vec![user_share(U, Viewer)],
                Some(team_project(LEAF)),
            ),
            expected: Some(Owner),
        },
        GenerationCase {
            name: "deleted_generation_gives_owner_nothing",
            memberships: vec![],
            facts: gen_facts(U, Deleted, vec![], None),
            expected: None,
        },
        GenerationCase {
            name: "deleted_generation_gives_project_owner_nothing",
            memberships: vec![],
            facts: gen_facts(
                OTHER,
                Deleted,
                vec![],
                Some(project(U, None, Visibility::Private)),
            ),
            expected: None,
        },
        GenerationCase {
            name: "deleted_generation_gives_team_member_and_share_holder_nothing",
            memberships: vec![member(LEAF, Owner)],
            facts: gen_facts(
                OTHER,
                Deleted,
                vec![user_share(U, Owner), team_share(LEAF, Owner)],
                Some(team_project(LEAF)),
            ),
            expected: None,
        },
        GenerationCase {
            name: "deleted_generation_in_public_project_gives_stranger_nothing",
            memberships: vec![],
            facts: gen_facts(
                OTHER,
                Deleted,
                vec![],
                Some(project(OTHER, None, Visibility::Public)),
            ),
            expected: None,
        },
        GenerationCase {
            name: "pending_generation_gives_owner_owner",
            memberships: vec![],
            facts: gen_facts(U, Pending, vec![], None),
            expected: Some(Owner),
        },
        GenerationCase {
            name: "failed_generation_gives_owner_owner",
            memberships: vec![],
            facts: gen_facts(U, Failed, vec![], None),
            expected: Some(Owner),
        },
        GenerationCase {
            name: "pending_generation_gives_team_member_member",
            memberships: vec![member(LEAF, Member)],
            facts: gen_facts(OTHER, Pending, vec![], Some(team_project(LEAF))),
            expected: Some(Member),
        },
        GenerationCase {
            name: "failed_generation_in_public_project_gives_stranger_viewer",
            memberships: vec![],
            facts: gen_facts(
                OTHER,
                Failed,
                vec![],
                Some(project(OTHER, None, Visibility::Public)),
            ),
            expected: Some(Viewer),
        },
        GenerationCase {
            name: "pending_generation_share_gives_share_role",
            memberships: vec![],
            facts: gen_facts(OTHER, Pending, vec![user_share(U, Admin)], None),
            expected: Some(Admin),
        },
    ];
    assert_rows(cases.into_iter().map(|case| {
        let subject = Subject {
            user_id: U,
            memberships: &case.memberships,
        };
        (
            case.name,
            role_on_generation(&subject, &case.facts),
            case.expected,
        )
    }));
}

/// Ids of a made-up parent chain: hop `i` is generation `0x1000 + i`.
fn hop_id(hop: usize) -> Uuid {
    Uuid::from_u128(0x1000 + hop as u128)
}

/// An honest chain of `len` generations (hops `0..len`), each linked to the next,
/// with `project` set on hop `project_at` only; every hop owned by `OTHER`.
fn linear_chain(len: usize, project_at: Option<(usize, Uuid)>) -> Vec<Generation> {
    (0..len)
        .map(|hop| Generation {
            id: hop_id(hop),
            user_id: OTHER,
            project_id: project_at.and_then(|(at, p)| (at == hop).then_some(p)),
            parent_id: (hop + 1 < len).then(|| hop_id(hop + 1)),
            status: GenerationStatus::Completed,
        })
        .collect()
}

/// `chain` with its hop `hop` changed by `edit`.
fn edited(
    mut chain: Vec<Generation>,
    hop: usize,
    edit: impl FnOnce(&mut Generation),
) -> Vec<Generation> {
    edit(&mut chain[hop]);
    chain
}

#[test]
fn project_of_parent_chain_finds_nearest_project_within_bounds() {
    let p_other = Uuid::from_u128(0x299);
    let cases: Vec<(&'static str, Vec<Generation>, Option<Uuid>)> = vec![
        ("empty_chain_has_no_project", vec![], None),
        (
            "lone_generation_without_project_has_none",
            linear_chain(1, None),
            None,
        ),
        (
            "generation_with_own_project_gets_it_at_hop_0",
            linear_chain(1, Some((0, P))),
            Some(P),
        ),
        (
            "own_project_wins_over_parents_project",
            edited(linear_chain(2, Some((1, p_other))), 0, |g| {
                g.project_id = Some(P)
            }),
            Some(P),
        ),
        (
            "generation_without_project_gets_parents_project",
            linear_chain(2, Some((1, P))),
            Some(P),
        ),
        (
            "nearest_parent_project_wins_over_farther_one",
            edited(linear_chain(4, Some((3, p_other))), 2, |g| {
                g.project_id = Some(P)
            }),
            Some(P),
        ),
        (
            "chain_without_any_project_has_none",
            linear_chain(17, None),
            None,
        ),
        (
            "project_at_hop_16_is_found",
            linear_chain(MAX_PARENT_HOPS + 1, Some((MAX_PARENT_HOPS, P))),
            Some(P),
        ),
        (
            "project_at_hop_17_is_past_the_limit_so_none",
            linear_chain(MAX_PARENT_HOPS + 2, Some((MAX_PARENT_HOPS + 1, P))),
            None,
        ),
        (
            "overlong_chain_with_project_near_start_still_finds_it",
            linear_chain(40, Some((3, P))),
            Some(P),
        ),
        (
            "self_parent_cycle_has_no_project",
            vec![
                Generation {
                    parent_id: Some(hop_id(0)),
                    ..linear_chain(1, None)[0].clone()
                },
                Generation {
                    project_id: Some(P),
                    parent_id: Some(hop_id(0)),
                    ..linear_chain(1, None)[0].clone()
                },
            ],
            None,
        ),
        (
            "two_generation_cycle_has_no_project_even_if_repeated_row_claims_one",
            {
                let mut chain = linear_chain(3, None);
                chain[1].parent_id = Some(hop_id(0));
                chain[2] = Generation {
                    project_id: Some(P),
                    ..chain[0].clone()
                };
                chain
            },
            None,
        ),
        (
            "cycle_back_to_middle_hop_has_no_project",
            {
                let mut chain = linear_chain(4, None);
                chain[2].parent_id = Some(hop_id(1));
                chain[3] = Generation {
                    project_id: Some(P),
                    ..chain[1].clone()
                };
                chain
            },
            None,
        ),
        (
            "broken_link_at_hop_1_stops_walk",
            edited(linear_chain(2, Some((1, P))), 1, |g| {
                g.id = Uuid::from_u128(0xdead)
            }),
            None,
        ),
        (
            "broken_link_after_a_good_hop_stops_walk",
            edited(linear_chain(3, Some((2, P))), 2, |g| {
                g.id = Uuid::from_u128(0xdead)
            }),
            None,
        ),
        (
            "row_after_generation_without_parent_is_ignored",
            edited(linear_chain(2, Some((1, P))), 0, |g| g.parent_id = None),
            None,
        ),
        (
            "project_before_a_broken_link_is_still_found",
            edited(linear_chain(3, Some((1, P))), 2, |g| {
                g.id = Uuid::from_u128(0xdead)
            }),
            Some(P),
        ),
    ];
    assert_rows(
        cases
            .into_iter()
            .map(|(name, chain, expected)| (name, project_of(&chain), expected)),
    );
}

/// What the facts layer does with a parent chain: `project_of` picks the project,
/// and only G's own row and G's own shares go into `GenerationFacts`.
fn role_via_parent_chain(
    subject: &Subject<'_>,
    chain: &[Generation],
    shares: &HashMap<Uuid, Vec<ShareFact>>,
    projects: &[ProjectFacts],
) -> Option<Role> {
    let generation = chain.first()?.clone();
    let project = project_of(chain)
        .and_then(|id| projects.iter().find(|p| p.project.id == id))
        .cloned();
    let facts = GenerationFacts {
        shares: shares.get(&generation.id).cloned().unwrap_or_default(),
        generation,
        project,
    };
    role_on_generation(subject, &facts)
}

struct ParentChainCase {
    name: &'static str,
    memberships: Vec<Membership>,
    chain: Vec<Generation>,
    shares: HashMap<Uuid, Vec<ShareFact>>,
    expected: Option<Role>,
}

#[test]
fn role_on_generation_via_parent_chain_inherits_project_only() {
    use Role::*;
    let projects = vec![
        project_with_id(P_PARENT, OTHER, Some(LEAF), Visibility::Private),
        project_with_id(P_PUBLIC, OTHER, None, Visibility::Public),
    ];
    let no_shares = HashMap::new;
    let cases = vec![
        ParentChainCase {
            name: "team_member_of_parents_project_gets_member_on_child_without_project",
            memberships: vec![member(LEAF, Member)],
            chain: linear_chain(2, Some((1, P_PARENT))),
            shares: no_shares(),
            expected: Some(Member),
        },
        ParentChainCase {
            name: "ancestor_team_admin_of_grandparents_project_gets_admin_on_grandchild",
            memberships: vec![member(ROOT, Admin)],
            chain: linear_chain(3, Some((2, P_PARENT))),
            shares: no_shares(),
            expected: Some(Admin),
        },
        ParentChainCase {
            name: "stranger_on_child_of_generation_in_public_project_gets_viewer",
            memberships: vec![],
            chain: linear_chain(2, Some((1, P_PUBLIC))),
            shares: no_shares(),
            expected: Some(Viewer),
        },
        ParentChainCase {
            name: "team_member_reaches_project_at_hop_16",
            memberships: vec![member(LEAF, Member)],
            chain: linear_chain(MAX_PARENT_HOPS + 1, Some((MAX_PARENT_HOPS, P_PARENT))),
            shares: no_shares(),
            expected: Some(Member),
        },
        ParentChainCase {
            name: "team_member_gets_nothing_from_project_at_hop_17",
            memberships: vec![member(LEAF, Member)],
            chain: linear_chain(MAX_PARENT_HOPS + 2, Some((MAX_PARENT_HOPS + 1, P_PARENT))),
            shares: no_shares(),
            expected: None,
        },
        ParentChainCase {
            name: "stranger_gets_nothing_from_public_project_behind_a_cycle",
            memberships: vec![],
            chain: {
                let mut chain = linear_chain(3, None);
                chain[1].parent_id = Some(hop_id(0));
                chain[2] = Generation {
                    project_id: Some(P_PUBLIC),
                    ..chain[0].clone()
                };
                chain
            },
            shares: no_shares(),
            expected: None,
        },
        ParentChainCase {
            name: "team_member_gets_nothing_from_project_behind_a_broken_link",
            memberships: vec![member(LEAF, Member)],
            chain: edited(linear_chain(2, Some((1, P_PARENT))), 1, |g| {
                g.id = Uuid::from_u128(0xdead);
            }),
            shares: no_shares(),
            expected: None,
        },
        ParentChainCase {
            name: "owner_of_parent_generation_gets_nothing_on_child",
            memberships: vec![],
            chain: edited(linear_chain(2, None), 1, |g| g.user_id = U),
            shares: no_shares(),
            expected: None,
        },
        ParentChainCase {
            name: "owner_of_parent_generation_in_private_project_gets_nothing_on_child",
            memberships: vec![],
            chain: edited(linear_chain(2, Some((1, P_PARENT))), 1, |g| g.user_id = U),
            shares: no_shares(),
            expected: None,
        },
        ParentChainCase {
            name: "user_share_on_parent_generation_gives_nothing_on_child",
            memberships: vec![],
            chain: linear_chain(2, Some((1, P_PARENT))),
            shares: HashMap::from([(hop_id(1), vec![user_share(U, Owner)])]),
            expected: None,
        },
        ParentChainCase {
            name: "team_share_on_parent_generation_gives_nothing_on_child",
            memberships: vec![member(MID, Viewer)],
            chain: linear_chain(2, None),
            shares: HashMap::from([(hop_id(1), vec![team_share(MID, Admin)])]),
            expected: None,
        },
        ParentChainCase {
            name: "parent_owner_with_team_viewer_role_gets_viewer_not_owner_on_child",
            memberships: vec![member(LEAF, Viewer)],
            chain: edited(linear_chain(2, Some((1, P_PARENT))), 1, |g| g.user_id = U),
            shares: HashMap::from([(hop_id(1), vec![user_share(U, Admin)])]),
            expected: Some(Viewer),
        },
        ParentChainCase {
            name: "child_owner_gets_owner_when_chain_has_no_project",
            memberships: vec![],
            chain: edited(linear_chain(3, None), 0, |g| g.user_id = U),
            shares: no_shares(),
            expected: Some(Owner),
        },
        ParentChainCase {
            name: "share_on_child_itself_still_counts_with_inherited_project",
            memberships: vec![],
            chain: linear_chain(2, Some((1, P_PARENT))),
            shares: HashMap::from([(hop_id(0), vec![user_share(U, Member)])]),
            expected: Some(Member),
        },
    ];
    assert_rows(cases.into_iter().map(|case| {
        let subject = Subject {
            user_id: U,
            memberships: &case.memberships,
        };
        let actual = role_via_parent_chain(&subject, &case.chain, &case.shares, &projects);
        (case.name, actual, case.expected)
    }));
}

/// SPEC §4 step 5, written out literally (not derived from `role_allows`):
/// viewer → read; member → read, write; admin → all five; owner → all.
const SPEC_ROLE_TABLE: [(Role, Action, bool); 20] = [
    (Role::Viewer, Action::Read, true),
    (Role::Viewer, Action::Write, false),
    (Role::Viewer, Action::Delete, false),
    (Role::Viewer, Action::Share, false),
    (Role::Viewer, Action::Manage, false),
    (Role::Member, Action::Read, true),
    (Role::Member, Action::Write, true),
    (Role::Member, Action::Delete, false),
    (Role::Member, Action::Share, false),
    (Role::Member, Action::Manage, false),
    (Role::Admin, Action::Read, true),
    (Role::Admin, Action::Write, true),
    (Role::Admin, Action::Delete, true),
    (Role::Admin, Action::Share, true),
    (Role::Admin, Action::Manage, true),
    (Role::Owner, Action::Read, true),
    (Role::Owner, Action::Write, true),
    (Role::Owner, Action::Delete, true),
    (Role::Owner, Action::Share, true),
    (Role::Owner, Action::Manage, true),
];

#[test]
fn spec_role_table_covers_every_role_and_action_once() {
    for role in Role::ALL {
        for action in Action::ALL {
            let rows = SPEC_ROLE_TABLE
                .iter()
                .filter(|(r, a, _)| *r == role && *a == action)
                .count();
            assert_eq!(rows, 1, "{role} {action} appears {rows} times in the table");
        }
    }
}

#[test]
fn role_allows_every_role_and_action_matches_spec_table() {
    for (role, action, allowed) in SPEC_ROLE_TABLE {
        assert_eq!(
            role_allows(role, action),
            allowed,
            "role_allows({role}, {action})"
        );
    }
}

#[test]
fn decide_active_user_every_role_and_action_matches_spec_table() {
    let all_scopes = Scopes::from_tokens(["read", "write", "delete", "share", "manage", "ops"]);
    for (role, action, allowed) in SPEC_ROLE_TABLE {
        let expected = if allowed {
            Verdict::Allow(role)
        } else {
            Verdict::Deny(DenyReason::InsufficientRole)
        };
        assert_eq!(
            decide(UserStatus::Active, Some(role), action, None),
            expected,
            "{role} {action}, no scopes"
        );
        // Every scope granted: scopes never widen past the role.
        assert_eq!(
            decide(UserStatus::Active, Some(role), action, Some(all_scopes)),
            expected,
            "{role} {action}, all scopes"
        );
    }
}

struct DecideCase {
    name: &'static str,
    status: UserStatus,
    role: Option<Role>,
    action: Action,
    scopes: Option<Scopes>,
    expected: Verdict,
}

#[test]
fn decide_each_rule_in_spec_order_gives_expected_verdict() {
    use Action::*;
    use DenyReason::*;
    use Role::*;
    use UserStatus::*;
    let none = || Some(Scopes::default());
    let scopes = |claim: &str| Some(Scopes::from_claim(claim));
    let cases = vec![
        DecideCase {
            name: "active_owner_read_no_scopes_allows_owner",
            status: Active,
            role: Some(Owner),
            action: Read,
            scopes: None,
            expected: Verdict::Allow(Owner),
        },
        DecideCase {
            name: "suspended_owner_denies_user_inactive",
            status: Suspended,
            role: Some(Owner),
            action: Read,
            scopes: None,
            expected: Verdict::Deny(UserInactive),
        },
        DecideCase {
            name: "deleted_user_owner_denies_user_inactive",
            status: Deleted,
            role: Some(Owner),
            action: Read,
            scopes: None,
            expected: Verdict::Deny(UserInactive),
        },
        DecideCase {
            name: "suspended_user_without_role_denies_user_inactive_not_not_found",
            status: Suspended,
            role: None,
            action: Read,
            scopes: None,
            expected: Verdict::Deny(UserInactive),
        },
        DecideCase {
            name: "deleted_user_without_role_and_empty_scopes_denies_user_inactive",
            status: Deleted,
            role: None,
            action: Manage,
            scopes: none(),
            expected: Verdict::Deny(UserInactive),
        },
        DecideCase {
            name: "suspended_viewer_on_write_denies_user_inactive_not_insufficient_role",
            status: Suspended,
            role: Some(Viewer),
            action: Write,
            scopes: none(),
            expected: Verdict::Deny(UserInactive),
        },
        DecideCase {
            name: "active_user_without_role_denies_not_found",
            status: Active,
            role: None,
            action: Read,
            scopes: None,
            expected: Verdict::Deny(NotFound),
        },
        DecideCase {
            name: "active_user_without_role_and_empty_scopes_denies_not_found",
            status: Active,
            role: None,
            action: Read,
            scopes: none(),
            expected: Verdict::Deny(NotFound),
        },
        DecideCase {
            name: "active_user_without_role_and_all_scopes_denies_not_found",
            status: Active,
            role: None,
            action: Read,
            scopes: scopes("read write delete share manage ops"),
            expected: Verdict::Deny(NotFound),
        },
        DecideCase {
            name: "viewer_write_denies_insufficient_role",
            status: Active,
            role: Some(Viewer),
            action: Write,
            scopes: None,
            expected: Verdict::Deny(InsufficientRole),
        },
        DecideCase {
            name: "viewer_write_with_write_scope_denies_insufficient_role_scopes_never_widen",
            status: Active,
            role: Some(Viewer),
            action: Write,
            scopes: scopes("write"),
            expected: Verdict::Deny(InsufficientRole),
        },
        DecideCase {
            name: "member_delete_with_empty_scopes_denies_insufficient_role_before_scope",
            status: Active,
            role: Some(Member),
            action: Delete,
            scopes: none(),
            expected: Verdict::Deny(InsufficientRole),
        },
        DecideCase {
            name: "owner_read_with_empty_scopes_denies_insufficient_scope",
            status: Active,
            role: Some(Owner),
            action: Read,
            scopes: none(),
            expected: Verdict::Deny(InsufficientScope),
        },
        DecideCase {
            name: "admin_delete_with_read_write_scopes_denies_insufficient_scope",
            status: Active,
            role: Some(Admin),
            action: Delete,
            scopes: scopes("read write"),
            expected: Verdict::Deny(InsufficientScope),
        },
        DecideCase {
            name: "owner_manage_with_only_ops_scope_denies_insufficient_scope",
            status: Active,
            role: Some(Owner),
            action: Manage,
            scopes: scopes("ops"),
            expected: Verdict::Deny(InsufficientScope),
        },
        DecideCase {
            name: "member_write_with_write_scope_allows_member",
            status: Active,
            role: Some(Member),
            action: Write,
            scopes: scopes("write"),
            expected: Verdict::Allow(Member),
        },
        DecideCase {
            name: "owner_share_with_share_scope_allows_owner",
            status: Active,
            role: Some(Owner),
            action: Share,
            scopes: scopes("read share"),
            expected: Verdict::Allow(Owner),
        },
        DecideCase {
            name: "viewer_read_with_read_scope_allows_viewer",
            status: Active,
            role: Some(Viewer),
            action: Read,
            scopes: scopes("read"),
            expected: Verdict::Allow(Viewer),
        },
    ];
    assert_rows(cases.into_iter().map(|case| {
        let actual = decide(case.status, case.role, case.action, case.scopes);
        (case.name, actual, case.expected)
    }));
}

#[test]
fn deny_reason_each_variant_gives_stable_code() {
    assert_rows([
        (
            "user_inactive",
            DenyReason::UserInactive.code(),
            "user_inactive",
        ),
        ("not_found", DenyReason::NotFound.code(), "not_found"),
        (
            "insufficient_role",
            DenyReason::InsufficientRole.code(),
            "insufficient_role",
        ),
        (
            "insufficient_scope",
            DenyReason::InsufficientScope.code(),
            "insufficient_scope",
        ),
    ]);
}
