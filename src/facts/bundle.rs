//! A decision's facts in at most two round trips (SPEC §5).
//!
//! The walk of `authz::role` asks for facts one at a time: the user, their
//! memberships, the generation, its parents, the project, its team and that
//! team's ancestors, the shares and their teams' ancestors. On a cold cache
//! that used to be one round trip per fact, in sequence. A [`Gather`] answers
//! the same questions, but at the first fact that is not in L1 it loads every
//! fact the decision may need at once, into a bundle the rest of the walk
//! reads from:
//!
//! - with Redis usable: one `MGET` for the facts known up front (user,
//!   memberships, target row and shares) and the target's chain hint (the
//!   keys of its generation, project and team chains, written by the last
//!   decision that read them), then one for every key the hint and the hits
//!   name; one more per level only for what a missing or stale hint did not
//!   cover. A fact the walk needs that Redis lacks ends it;
//! - from Postgres, one statement ([`FactSource::load_decision`]) for all of
//!   them, recursive over the generation and team chains. The Redis fills for
//!   what Redis lacked are written by a task of their own after that,
//!   compare-and-set as always, never on the decision's critical path.
//!
//! The bundle only saves round trips: any fact the walk asks for and the
//! bundle lacks (a source without the query, a fact an invalidation voided
//! meanwhile) is read on its own through [`Facts::get`], so correctness never
//! rests on the bundle being complete. The trace records each fact with the
//! tier it came from.
//!
//! # Why a bundled fact may be used and cached
//!
//! A single fill stamps its entry with its key's bucket counter before it
//! reads, so an invalidation that lands meanwhile voids it. The keys of a
//! bundle are not known before the query, so their buckets cannot be read
//! then. Instead, before any read, the global sequence `s0` (the source of
//! every bucket value, strictly increasing) and the epoch are read. After the
//! read, a key is kept only if its bucket value is still `<= s0` and the epoch
//! is unchanged, and its entry is stamped with that bucket value:
//!
//! - An invalidation applied after `s0` was read takes a sequence value
//!   `> s0` and raises its bucket to it: a key whose bucket is `<= s0` after
//!   the read had none applied since before the read began. A change
//!   committed after the query's snapshot is announced after its commit, so
//!   its invalidation is applied after the read began: it either shows in
//!   the bucket (the key is dropped) or comes later and raises the bucket
//!   past the stamp (the entry is then never trusted).
//! - An invalidation that took its value `<= s0` was applied (at least its
//!   sequence step) before the read began, so the change it announces was
//!   committed before the snapshot: the read saw it.
//! - An invalidation in flight across the check (value taken, bucket not yet
//!   raised) raises the bucket past the stamp when it completes.
//! - A flush bumps the epoch: a changed epoch drops the whole bundle, and an
//!   entry stamped with the old epoch is never trusted.
//!
//! The Redis part keeps its own rule (a value is trusted only under its key's
//! current version and epoch; a fill is written only if neither moved since
//! its ticket was read, before the Postgres read), and the `s0` check above
//! also covers Redis hits: an invalidation's L1 step precedes its Redis step,
//! and L2 is not read while a Redis step is pending.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::OnceCell;
use uuid::Uuid;

use super::l2::{L2, L2Get, Ticket};
use super::memo::{Deps, StatusAndRole};
use super::{
    Fact, FactError, FactKey, FactSource, Facts, FillTask, Source, Stamp, Trace, detached,
};
use crate::model::{
    Generation, Grantee, MAX_PARENT_HOPS, Membership, Project, ResourceKind, Share, Team, User,
};
use crate::store::Target;
use crate::telemetry::traces::Fetch;

/// Redis levels read at most: the longest generation chain, then its
/// project, then the longest team chain, with room to spare.
const MAX_LEVELS: usize = MAX_PARENT_HOPS + super::MAX_TEAM_DEPTH + 4;

/// The facts one decision reads: from L1 while they are there, else from a
/// bundle loaded at the first miss, else each on its own.
pub struct Gather<'a, S> {
    /// The cache and the tiers below.
    facts: &'a Facts<S>,
    /// Records every fact used, with its source.
    trace: &'a Trace,
    /// The principal.
    user: Uuid,
    /// The resource; `None` when the decision reads no more than the user.
    target: Option<Target>,
    /// Loaded at the first L1 miss; empty when loading was not possible.
    bundle: OnceCell<Bundle>,
    /// What the facts read so far rest on, while the decision may be
    /// remembered ([`Gather::remember`]); `None` when it may not.
    deps: Option<Mutex<Deps>>,
}

/// Facts read for one decision, each with the tier it came from.
#[derive(Default)]
struct Bundle {
    /// Only facts safe to use: see the module comment.
    facts: HashMap<FactKey, (Fact, Source)>,
}

impl<S: FactSource> Facts<S> {
    /// The facts of one decision for `user`, on `target` if any.
    pub fn gather<'a>(
        &'a self,
        user: Uuid,
        target: Option<Target>,
        trace: &'a Trace,
    ) -> Gather<'a, S> {
        Gather {
            facts: self,
            trace,
            user,
            target,
            bundle: OnceCell::new(),
            deps: (target.is_some() && self.memo.is_some()).then(Mutex::default),
        }
    }

    /// Every fact of the decision: from Redis if it holds them all, else from
    /// Postgres in one statement (Redis filled afterwards, in the background).
    async fn load_bundle(
        &self,
        user: Uuid,
        target: Target,
        trace: &Trace,
    ) -> Result<Bundle, FactError> {
        // Before any read: see the module comment.
        let epoch = self.epoch.load(Ordering::Acquire);
        let s0 = self.seq.load(Ordering::Acquire);

        let mut tickets = Vec::new();
        let mut hits = HashSet::new();
        let mut hint = None;
        if let Some(l2) = self.l2.as_ref().filter(|l2| l2.usable()) {
            let levels = self.read_levels(l2, user, target, trace).await;
            if levels.complete {
                self.spawn_hint(l2, user, target, levels.hint.as_deref(), levels.hits.keys());
                let facts = levels.hits.into_iter().map(|(k, f)| (k, f, Source::L2));
                return Ok(self.keep(facts, s0, epoch).await);
            }
            hits = levels.hits.into_keys().collect();
            tickets = levels.tickets;
            hint = levels.hint;
        }

        let source = self.source.clone();
        let mut span = trace.fetch_many(Fetch::PostgresQuery, "decision");
        let loaded = self
            .run("decision", async move {
                source.load_decision(user, target).await
            })
            .await;
        if let (Some(span), Err(_)) = (&mut span, &loaded) {
            span.failed("store_unavailable");
        }
        drop(span);
        let loaded = loaded?;
        let Some(loaded) = loaded else {
            return Ok(Bundle::default());
        };
        if let Some(l2) = self.l2.as_ref().filter(|l2| l2.usable()) {
            self.spawn_fills(l2, user, target, &loaded, &hits, tickets);
            let read = loaded.iter().filter(|(_, f)| f.cacheable()).map(|(k, _)| k);
            self.spawn_hint(l2, user, target, hint.as_deref(), read);
        }
        let facts = loaded.into_iter().map(|(k, f)| (k, f, Source::Postgres));
        Ok(self.keep(facts, s0, epoch).await)
    }

    /// Keeps the facts no invalidation or flush since `s0`/`epoch` touched,
    /// and puts the cacheable ones in L1 stamped with their bucket's value.
    async fn keep(
        &self,
        facts: impl Iterator<Item = (FactKey, Fact, Source)>,
        s0: u64,
        epoch: u64,
    ) -> Bundle {
        let mut bundle = Bundle::default();
        for (key, fact, source) in facts {
            let stamp = self.buckets[key.bucket()].load(Ordering::Acquire);
            // After the bucket: a flush after this load voids the entry by
            // its epoch stamp, one before it drops the fact here.
            if stamp > s0 || self.epoch.load(Ordering::Acquire) != epoch {
                continue;
            }
            if fact.cacheable() {
                let entry = self.entry(fact.clone(), stamp, epoch);
                self.cache.insert(key.clone(), entry).await;
            }
            bundle.facts.insert(key, (fact, source));
        }
        bundle
    }

    /// Redis level by level, until a fact the walk needs is missing or
    /// nothing is left. The first level also reads the target's chain hint
    /// ([`L2::put_hint`]): with one, the second level asks for every key of
    /// the chain at once, so a decision whose facts Redis holds costs two
    /// round trips however deep its chains are. A stale hint only costs the
    /// levels it did not cover; what it named and the walk does not reach is
    /// dropped.
    async fn read_levels(&self, l2: &L2, user: Uuid, target: Target, trace: &Trace) -> Levels {
        let mut levels = Levels {
            hits: HashMap::new(),
            tickets: Vec::new(),
            complete: false,
            hint: None,
        };
        let first = first_keys(user, target);
        let mut asked: HashSet<FactKey> = HashSet::new();
        let mut frontier = first.clone();
        let mut hint = Some(target);
        for _ in 0..MAX_LEVELS {
            if frontier.is_empty() {
                levels.complete = true;
                break;
            }
            let mut span = trace.fetch_many(Fetch::RedisGet, "decision");
            let (answers, hinted) = l2.get_many_hinted(&frontier, hint.take()).await;
            if let Some(span) = &mut span {
                let all = answers.iter().all(|a| matches!(a, L2Get::Hit(_)));
                span.result(if all { "hit" } else { "miss" });
            }
            drop(span);
            let mut failed = HashSet::new();
            for (key, answer) in frontier.into_iter().zip(answers) {
                let kind = key.kind();
                match answer {
                    L2Get::Hit(fact) => {
                        self.count("l2", kind, "hit");
                        levels.hits.insert(key.clone(), fact);
                    }
                    L2Get::Miss(ticket) => {
                        self.count("l2", kind, "miss");
                        levels.tickets.push((key.clone(), ticket));
                        failed.insert(key.clone());
                    }
                    L2Get::Unavailable => {
                        self.count("l2", kind, "error");
                        failed.insert(key.clone());
                    }
                }
                asked.insert(key);
            }
            let needed = reachable(&first, &levels.hits);
            if needed.iter().any(|k| failed.contains(k)) {
                break;
            }
            let mut next: Vec<FactKey> =
                needed.into_iter().filter(|k| !asked.contains(k)).collect();
            if let Some(hinted) = hinted {
                next.extend(hinted.iter().filter(|k| !asked.contains(k)).cloned());
                levels.hint = Some(hinted);
            }
            next.sort_unstable_by_key(FactKey::bucket);
            next.dedup();
            frontier = next;
        }
        // What a stale hint named and the walk does not reach is not kept.
        let needed = reachable(&first, &levels.hits);
        levels.hits.retain(|k, _| needed.contains(k));
        levels.tickets.retain(|(k, _)| needed.contains(k));
        levels
    }

    /// After the answer: writes the chain hint of `target` when the one read
    /// (if any) did not name exactly the facts beyond the first level that
    /// this decision read.
    fn spawn_hint<'k>(
        &self,
        l2: &Arc<L2>,
        user: Uuid,
        target: Target,
        read: Option<&[FactKey]>,
        keys: impl Iterator<Item = &'k FactKey>,
    ) {
        let first = first_keys(user, target);
        let mut chain: Vec<FactKey> = keys
            .filter(|k| !first.contains(k) && in_chain(k))
            .cloned()
            .collect();
        chain.sort_unstable_by_key(FactKey::bucket);
        chain.dedup();
        if chain.is_empty() {
            return;
        }
        if let Some(read) = read {
            let read: HashSet<&FactKey> = read.iter().collect();
            if read.len() == chain.len() && chain.iter().all(|k| read.contains(k)) {
                return;
            }
        }
        let l2 = l2.clone();
        let task = FillTask::start(&self.fills);
        tokio::spawn(async move {
            let _task = task;
            l2.put_hint(target, &chain).await;
        });
    }

    /// After the answer: writes to Redis what it lacked. A key with a ticket
    /// (read before the Postgres statement) gets the fact that statement
    /// read. The rest of the bundle was never looked up in Redis: those keys
    /// are read now, and for the ones missing, the statement runs again after
    /// their tickets are taken, and its facts are written under them.
    fn spawn_fills(
        &self,
        l2: &Arc<L2>,
        user: Uuid,
        target: Target,
        loaded: &[(FactKey, Fact)],
        hits: &HashSet<FactKey>,
        tickets: Vec<(FactKey, Ticket)>,
    ) {
        let by_key: HashMap<&FactKey, &Fact> = loaded.iter().map(|(k, f)| (k, f)).collect();
        let now: Vec<(FactKey, Ticket, Fact)> = tickets
            .into_iter()
            .filter_map(|(k, t)| {
                let fact = (*by_key.get(&k)?).clone();
                Some((k, t, fact))
            })
            .collect();
        let ticketed: HashSet<&FactKey> = now.iter().map(|(k, _, _)| k).collect();
        let rest: Vec<FactKey> = loaded
            .iter()
            .filter(|(k, f)| f.cacheable() && !hits.contains(k) && !ticketed.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        if now.is_empty() && rest.is_empty() {
            return;
        }
        let (l2, source, breaker, metrics, bound) = (
            l2.clone(),
            self.source.clone(),
            self.breaker.clone(),
            self.metrics.clone(),
            self.query_timeout,
        );
        let task = FillTask::start(&self.fills);
        tokio::spawn(async move {
            let _task = task;
            for (key, ticket, fact) in &now {
                l2.put(key, ticket.clone(), fact).await;
            }
            if rest.is_empty() {
                return;
            }
            let mut later = Vec::new();
            for (key, answer) in rest.iter().zip(l2.get_many(&rest).await) {
                if let L2Get::Miss(ticket) = answer {
                    later.push((key, ticket));
                }
            }
            if later.is_empty() {
                return;
            }
            let load = async move { source.load_decision(user, target).await };
            let Ok(Some(again)) = detached(&breaker, &metrics, bound, "decision", load).await
            else {
                return;
            };
            let again: HashMap<FactKey, Fact> = again.into_iter().collect();
            for (key, ticket) in later {
                if let Some(fact) = again.get(key) {
                    l2.put(key, ticket, fact).await;
                }
            }
        });
    }
}

/// What the Redis levels found.
struct Levels {
    /// Trusted entries.
    hits: HashMap<FactKey, Fact>,
    /// The misses, with the tickets their fills must be written under.
    tickets: Vec<(FactKey, Ticket)>,
    /// Every fact the walk needs was a hit.
    complete: bool,
    /// The target's chain hint, when Redis had one.
    hint: Option<Vec<FactKey>>,
}

/// The keys every decision on `target` reads first.
fn first_keys(user: Uuid, target: Target) -> Vec<FactKey> {
    let mut keys = vec![FactKey::User(user), FactKey::Memberships(user)];
    match target {
        Target::Team(id) => keys.push(FactKey::Team(id)),
        Target::Project(id) => {
            keys.push(FactKey::Project(id));
            keys.push(FactKey::Shares(ResourceKind::Project, id));
        }
        Target::Generation(id) => {
            keys.push(FactKey::Generation(id));
            keys.push(FactKey::Shares(ResourceKind::Generation, id));
        }
    }
    keys
}

/// Every key the walk reads, as far as `hits` tell: the first keys and,
/// from each hit, the keys it leads to.
fn reachable(first: &[FactKey], hits: &HashMap<FactKey, Fact>) -> HashSet<FactKey> {
    let mut seen: HashSet<FactKey> = first.iter().cloned().collect();
    let mut todo: Vec<FactKey> = first.to_vec();
    while let Some(key) = todo.pop() {
        if let Some(fact) = hits.get(&key) {
            for next in next_keys(fact) {
                if seen.insert(next.clone()) {
                    todo.push(next);
                }
            }
        }
    }
    seen
}

/// Whether `key` can be part of a target's chains (what a hint names).
fn in_chain(key: &FactKey) -> bool {
    matches!(
        key,
        FactKey::Generation(_) | FactKey::Project(_) | FactKey::Team(_) | FactKey::Shares(..)
    )
}

/// The keys the walk reads after `fact`: a generation's parent or project,
/// a project's team and shares, a team's parent, a share's team.
fn next_keys(fact: &Fact) -> Vec<FactKey> {
    match fact {
        Fact::Generation(Some(g)) => match (g.project_id, g.parent_id) {
            (Some(p), _) => vec![
                FactKey::Project(p),
                FactKey::Shares(ResourceKind::Project, p),
            ],
            (None, Some(parent)) => vec![FactKey::Generation(parent)],
            (None, None) => Vec::new(),
        },
        Fact::Project(Some(p)) => p.team_id.map(FactKey::Team).into_iter().collect(),
        Fact::Team(Some(t)) => t.parent_id.map(FactKey::Team).into_iter().collect(),
        Fact::Shares(shares) => shares
            .iter()
            .filter_map(|s| match s.grantee {
                Grantee::Team(t) => Some(FactKey::Team(t)),
                Grantee::User(_) => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl<S: FactSource> Gather<'_, S> {
    /// One fact: L1, else the bundle (loaded now if not yet), else on its own.
    pub async fn get(&self, key: FactKey) -> Result<Fact, FactError> {
        let (fact, stamp) = self.read(&key).await?;
        if let Some(deps) = &self.deps {
            Deps::read(deps, &key, &fact, stamp);
        }
        Ok(fact)
    }

    /// One fact, and its stamps when it came from L1.
    async fn read(&self, key: &FactKey) -> Result<(Fact, Option<Stamp>), FactError> {
        if let Some(bundle) = self.bundle.get() {
            return Ok((self.bundled(bundle, key.clone()).await?, None));
        }
        let Some(target) = self.target.filter(|_| S::LOADS_DECISIONS) else {
            return self.facts.get_stamped(key.clone(), self.trace).await;
        };
        let now = Instant::now();
        if !self.facts.freshness.trusted_at(now) {
            // Nothing is cached while the feed is untrusted: each fact is
            // read through (and may be served stale) on its own.
            return self.facts.get_stamped(key.clone(), self.trace).await;
        }
        if let Some((fact, stamp)) = self.facts.cached(key, self.trace, now).await {
            return Ok((fact, Some(stamp)));
        }
        let bundle = self
            .bundle
            .get_or_try_init(|| Box::pin(self.facts.load_bundle(self.user, target, self.trace)))
            .await?;
        Ok((self.bundled(bundle, key.clone()).await?, None))
    }

    /// Keeps `value`, what this decision computed from the facts it read, as
    /// the answer for its user on its target — if every one of them came
    /// from L1 ([`Facts::remembered`] answers it from then on, while they
    /// would still be served).
    pub fn remember(self, value: StatusAndRole) {
        if let (Some(deps), Some(target)) = (self.deps, self.target) {
            let deps = deps.into_inner().unwrap_or_else(|p| p.into_inner());
            self.facts.remember(self.user, target, value, deps);
        }
    }

    async fn bundled(&self, bundle: &Bundle, key: FactKey) -> Result<Fact, FactError> {
        match bundle.facts.get(&key) {
            Some((fact, source)) => {
                // Not in L1 when this decision began: an L1 miss, answered
                // by the decision's one load.
                self.facts.lookup(key.kind(), "miss");
                self.trace.record(&key, *source, fact);
                Ok(fact.clone())
            }
            None => self.facts.get(key, self.trace).await,
        }
    }

    /// A user's row.
    pub async fn user(&self, id: Uuid) -> Result<Option<User>, FactError> {
        match self.get(FactKey::User(id)).await? {
            Fact::User(v) => Ok(v),
            other => Err(super::mismatch("user", &other)),
        }
    }

    /// A user's direct memberships.
    pub async fn memberships(&self, user: Uuid) -> Result<Arc<[Membership]>, FactError> {
        match self.get(FactKey::Memberships(user)).await? {
            Fact::Memberships(v) => Ok(v),
            other => Err(super::mismatch("memberships", &other)),
        }
    }

    /// A project's row.
    pub async fn project(&self, id: Uuid) -> Result<Option<Project>, FactError> {
        match self.get(FactKey::Project(id)).await? {
            Fact::Project(v) => Ok(v),
            other => Err(super::mismatch("project", &other)),
        }
    }

    /// A generation's row.
    pub async fn generation(&self, id: Uuid) -> Result<Option<Generation>, FactError> {
        match self.get(FactKey::Generation(id)).await? {
            Fact::Generation(v) => Ok(v),
            other => Err(super::mismatch("generation", &other)),
        }
    }

    /// A team's row.
    pub async fn team(&self, id: Uuid) -> Result<Option<Team>, FactError> {
        match self.get(FactKey::Team(id)).await? {
            Fact::Team(v) => Ok(v),
            other => Err(super::mismatch("team", &other)),
        }
    }

    /// Shares on a resource.
    pub async fn shares(&self, kind: ResourceKind, id: Uuid) -> Result<Arc<[Share]>, FactError> {
        match self.get(FactKey::Shares(kind, id)).await? {
            Fact::Shares(v) => Ok(v),
            other => Err(super::mismatch("shares", &other)),
        }
    }

    /// The team followed by its ancestors, nearest first; cycle-safe and
    /// bounded by [`super::MAX_TEAM_DEPTH`]. Empty when the team does not exist.
    pub async fn team_chain(&self, team: Uuid) -> Result<Vec<Uuid>, FactError> {
        let mut chain = Vec::new();
        let mut next = Some(team);
        while let Some(id) = next {
            if chain.contains(&id) || chain.len() >= super::MAX_TEAM_DEPTH {
                break;
            }
            match self.team(id).await? {
                Some(t) => {
                    chain.push(id);
                    next = t.parent_id;
                }
                None => break,
            }
        }
        Ok(chain)
    }

    /// The generation followed by its parents until one has a project, for
    /// at most [`MAX_PARENT_HOPS`] hops; stops at a missing row or a repeated
    /// id. `policy::project_of` applies the rules to the result.
    pub async fn generation_chain(&self, first: Generation) -> Result<Vec<Generation>, FactError> {
        let mut chain = vec![first];
        loop {
            let last = &chain[chain.len() - 1];
            if last.project_id.is_some() || chain.len() > MAX_PARENT_HOPS {
                break;
            }
            let Some(parent) = last.parent_id else { break };
            if chain.iter().any(|g| g.id == parent) {
                break;
            }
            match self.generation(parent).await? {
                Some(g) => chain.push(g),
                None => break,
            }
        }
        Ok(chain)
    }
}

#[cfg(test)]
mod tests;
