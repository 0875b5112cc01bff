//! The fact vocabulary: what a fact is ([`FactKey`], [`Fact`]), where it
//! comes from ([`FactSource`], [`Source`]), and how a decision's use of facts
//! is recorded for `--explain` and for decision traces ([`Trace`]).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::model::MAX_PARENT_HOPS;
use crate::model::{
    ApiKey, Generation, Membership, Project, ResourceKind, Session, Share, Team, User,
};
use crate::store::{Store, StoreError, Target};
use crate::telemetry::traces::{DecisionSpan, Fetch, FetchSpan, Tier};

/// Number of invalidation buckets; a collision only costs a spurious refill.
pub(super) const BUCKETS: usize = 1 << 16;

/// Facts a decision records room for at once: the deepest demo decision
/// reads 10, so one allocation instead of a vector growing 4 → 8 → 16.
const USES_CAPACITY: usize = 16;

/// The identity of one fact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FactKey {
    User(Uuid),
    Team(Uuid),
    Memberships(Uuid),
    Project(Uuid),
    Generation(Uuid),
    Shares(ResourceKind, Uuid),
    /// By the hex SHA-256 of the key.
    ApiKey(Arc<str>),
    Session(Uuid),
}

/// A fact's value; `None` / empty is a negative entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Fact {
    User(Option<User>),
    Team(Option<Team>),
    Memberships(Arc<[Membership]>),
    Project(Option<Project>),
    Generation(Option<Generation>),
    Shares(Arc<[Share]>),
    /// Shared, not inline: the row (two strings, a list, two timestamps) is
    /// the largest, and inline it would size every cached fact for it.
    ApiKey(Option<Arc<ApiKey>>),
    Session(Option<Session>),
}

/// Where a fact came from, for `--explain` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// In-process cache hit.
    L1,
    /// Shared Redis tier hit (this request filled L1 from it).
    L2,
    /// This request ran the query.
    Postgres,
    /// Another request's in-flight fill answered this one.
    Coalesced,
    /// The feed was untrusted and Postgres could not answer: a cached fact
    /// served within `freshness.serve_stale_on_outage_ms`.
    Stale,
}

impl Source {
    /// Label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::L1 => "l1",
            Source::L2 => "l2",
            Source::Postgres => "postgres",
            Source::Coalesced => "coalesced",
            Source::Stale => "stale",
        }
    }
}

/// Failure to obtain a fact: always "cannot decide", never a deny.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fact {kind} unavailable: {message}")]
pub struct FactError {
    /// Fact kind label.
    pub kind: &'static str,
    /// Cause, for logs only (never sent to clients).
    pub message: String,
}

/// One fact used by a decision: which, from where, and what it said. Kept
/// as values (cheap clones: ids, small rows, `Arc`ed lists), rendered to JSON
/// only when someone asks ([`FactUse::to_json`]).
#[derive(Debug, Clone)]
pub struct FactUse {
    /// The fact's identity.
    pub key: FactKey,
    /// Where it came from.
    pub source: Source,
    /// Its value as the decision read it.
    pub fact: Fact,
}

impl FactUse {
    /// Fact kind label (`user`, `generation`, ...).
    pub fn kind(&self) -> &'static str {
        self.key.kind()
    }

    /// The key as an operator reads it: a UUID, `generation/<uuid>` for
    /// shares, `sha256:<first 12 hex>…` for an API key (never the whole hash).
    pub fn key_text(&self) -> String {
        self.key.render()
    }

    /// The value as typed JSON: the row's fields (`null` when there is no
    /// row), a list for memberships and shares. An API key shows its hash
    /// only as the same short prefix as its key.
    pub fn value_json(&self) -> serde_json::Value {
        use serde_json::{Value, json, to_value};
        let value = match &self.fact {
            Fact::User(row) => to_value(row),
            Fact::Team(row) => to_value(row),
            Fact::Memberships(list) => to_value(list),
            Fact::Project(row) => to_value(row),
            Fact::Generation(row) => to_value(row),
            Fact::Shares(list) => to_value(list),
            Fact::Session(row) => to_value(row),
            Fact::ApiKey(row) => Ok(row.as_ref().map_or(Value::Null, |k| {
                json!({
                    "id": k.id,
                    "user_id": k.user_id,
                    "key_hash": self.key.render(),
                    "scopes": k.scopes,
                    "expires_at": k.expires_at,
                    "revoked_at": k.revoked_at,
                })
            })),
        };
        // Plain rows of ids, enums and timestamps always serialize.
        value.unwrap_or(Value::Null)
    }

    /// `{"kind", "key", "source", "value"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind(),
            "key": self.key_text(),
            "source": self.source.as_str(),
            "value": self.value_json(),
        })
    }
}

impl serde::Serialize for FactUse {
    fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        self.to_json().serialize(serializer)
    }
}

/// What one decision's use of facts is recorded into: the facts themselves
/// when explaining or keeping recent decisions (per decision, so its lock is
/// never contended), the tiers and fetches when the decision is traced;
/// nothing on the hot path.
#[derive(Default)]
pub struct Trace {
    /// The facts used, when explaining.
    uses: Option<Mutex<Vec<FactUse>>>,
    /// The decision's span, when this decision is sampled for tracing.
    span: Option<DecisionSpan>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("uses", &self.uses)
            .field("traced", &self.span.is_some())
            .finish()
    }
}

impl Trace {
    /// A trace that records.
    pub fn recording() -> Trace {
        Trace {
            uses: Some(Mutex::new(Vec::with_capacity(USES_CAPACITY))),
            span: None,
        }
    }

    /// A trace that records nothing.
    pub fn off() -> Trace {
        Trace {
            uses: None,
            span: None,
        }
    }

    /// Records into the decision span `span`: the tiers that answered, and a
    /// child span per fetch on a miss.
    pub fn traced(span: DecisionSpan) -> Trace {
        Trace {
            uses: None,
            span: Some(span),
        }
    }

    /// This trace, also recording the facts used.
    pub fn and_recording(mut self) -> Trace {
        self.uses = Some(Mutex::new(Vec::with_capacity(USES_CAPACITY)));
        self
    }

    /// The recorded uses and the decision span (to end it).
    pub fn into_parts(self) -> (Vec<FactUse>, Option<DecisionSpan>) {
        let uses = self
            .uses
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .unwrap_or_default();
        (uses, self.span)
    }

    /// A child span for a fetch of `key` from Redis or Postgres, when traced.
    pub(super) fn fetch(&self, fetch: Fetch, key: &FactKey) -> Option<FetchSpan> {
        self.span.as_ref().map(|s| s.fetch(fetch, key.kind()))
    }

    /// A child span for a fetch of several facts at once (`kind` names what:
    /// `decision` for a decision's facts in one read), when traced.
    pub(super) fn fetch_many(&self, fetch: Fetch, kind: &'static str) -> Option<FetchSpan> {
        self.span.as_ref().map(|s| s.fetch(fetch, kind))
    }

    pub(super) fn record(&self, key: &FactKey, source: Source, fact: &Fact) {
        if let Some(span) = &self.span {
            span.tier(match source {
                Source::L1 => Tier::L1,
                Source::L2 => Tier::L2,
                Source::Postgres => Tier::Postgres,
                Source::Coalesced => Tier::Coalesced,
                Source::Stale => Tier::Stale,
            });
        }
        if let Some(uses) = &self.uses {
            let mut uses = uses.lock().unwrap_or_else(|p| p.into_inner());
            uses.push(FactUse {
                key: key.clone(),
                source,
                fact: fact.clone(),
            });
        }
    }

    /// The recorded uses.
    pub fn into_uses(self) -> Vec<FactUse> {
        self.into_parts().0
    }
}

/// Where facts come from on an L1 miss.
pub trait FactSource: Send + Sync + 'static {
    /// Loads one fact from the tier below.
    fn load(
        &self,
        key: &FactKey,
    ) -> impl std::future::Future<Output = Result<Fact, StoreError>> + Send;

    /// Whether [`FactSource::load_decision`] reads anything: when not, a
    /// decision reads its facts one by one, from each tier.
    const LOADS_DECISIONS: bool = false;

    /// Loads, in one round trip, the facts a decision on `target` for `user`
    /// may rest on (negative ones included), as the walk in `authz::role`
    /// would ask for them. `None`: this source has no such query, and each
    /// fact is loaded on its own. The answer needs not be complete: whatever
    /// the walk finds missing is loaded on its own.
    fn load_decision(
        &self,
        user: Uuid,
        target: Target,
    ) -> impl std::future::Future<Output = Result<Option<Vec<(FactKey, Fact)>>, StoreError>> + Send
    {
        let _ = (user, target);
        async { Ok(None) }
    }
}

impl FactSource for Store {
    async fn load(&self, key: &FactKey) -> Result<Fact, StoreError> {
        Ok(match key {
            FactKey::User(id) => Fact::User(self.user(*id).await?),
            FactKey::Team(id) => Fact::Team(self.team(*id).await?),
            FactKey::Memberships(id) => Fact::Memberships(self.memberships(*id).await?.into()),
            FactKey::Project(id) => Fact::Project(self.project(*id).await?),
            FactKey::Generation(id) => Fact::Generation(self.generation(*id).await?),
            FactKey::Shares(kind, id) => Fact::Shares(self.shares(*kind, *id).await?.into()),
            FactKey::ApiKey(hash) => Fact::ApiKey(self.api_key_by_hash(hash).await?.map(Arc::new)),
            FactKey::Session(id) => Fact::Session(self.session(*id).await?),
        })
    }

    const LOADS_DECISIONS: bool = true;

    async fn load_decision(
        &self,
        user: Uuid,
        target: Target,
    ) -> Result<Option<Vec<(FactKey, Fact)>>, StoreError> {
        let rows = self
            .decision_rows(user, target, MAX_PARENT_HOPS, super::MAX_TEAM_DEPTH)
            .await?;
        let mut facts = Vec::with_capacity(
            2 + rows.generations.len() + rows.projects.len() + rows.shares.len() + rows.teams.len(),
        );
        facts.push((FactKey::User(user), Fact::User(rows.user)));
        facts.push((
            FactKey::Memberships(user),
            Fact::Memberships(rows.memberships.into()),
        ));
        for (id, row) in rows.generations {
            facts.push((FactKey::Generation(id), Fact::Generation(row)));
        }
        for (id, row) in rows.projects {
            facts.push((FactKey::Project(id), Fact::Project(row)));
        }
        for (kind, id, list) in rows.shares {
            facts.push((FactKey::Shares(kind, id), Fact::Shares(list.into())));
        }
        for (id, row) in rows.teams {
            facts.push((FactKey::Team(id), Fact::Team(row)));
        }
        Ok(Some(facts))
    }
}

impl FactKey {
    /// Metric label and explain kind.
    pub fn kind(&self) -> &'static str {
        match self {
            FactKey::User(_) => "user",
            FactKey::Team(_) => "team",
            FactKey::Memberships(_) => "memberships",
            FactKey::Project(_) => "project",
            FactKey::Generation(_) => "generation",
            FactKey::Shares(..) => "shares",
            FactKey::ApiKey(_) => "api_key",
            FactKey::Session(_) => "session",
        }
    }

    pub(crate) fn render(&self) -> String {
        match self {
            FactKey::User(id)
            | FactKey::Team(id)
            | FactKey::Memberships(id)
            | FactKey::Project(id)
            | FactKey::Generation(id)
            | FactKey::Session(id) => id.to_string(),
            FactKey::Shares(kind, id) => format!("{kind}/{id}"),
            // A prefix of the hash identifies the key to an operator without
            // making the log a lookup table.
            FactKey::ApiKey(hash) => format!("sha256:{}…", &hash[..hash.len().min(12)]),
        }
    }

    /// The key's id part in Redis key names.
    pub fn redis_id(&self) -> String {
        match self {
            FactKey::Shares(kind, id) => format!("{kind}:{id}"),
            FactKey::ApiKey(hash) => hash.to_string(),
            other => other.render(),
        }
    }

    /// The key's invalidation bucket. Every L1 read stamps or checks one, so
    /// this is a multiply-and-fold of the id (a few instructions) rather than
    /// SipHash: the ids are random UUIDs already, and a collision only costs
    /// a spurious refill. Deterministic within a process, like the SipHash
    /// with fixed keys it replaces.
    pub(super) fn bucket(&self) -> usize {
        (self.hash() >> (64 - BUCKETS.trailing_zeros())) as usize
    }

    /// Which of `groups` groups L1 keeps this key's fact in ([`super::l1`]):
    /// the key's hash mixed once more (so that a group's keys are not one
    /// bucket's), onto `0..groups` by a multiply-shift.
    pub(super) fn group(&self, groups: u64) -> u64 {
        let h = self.hash();
        let h = (h ^ (h >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let h = h ^ (h >> 29);
        ((u128::from(h) * u128::from(groups)) >> 64) as u64
    }

    /// The multiply-and-fold hash behind [`FactKey::bucket`]: its top bits
    /// are the well-mixed ones.
    fn hash(&self) -> u64 {
        let (tag, id): (u64, u128) = match self {
            FactKey::User(id) => (1, id.as_u128()),
            FactKey::Team(id) => (2, id.as_u128()),
            FactKey::Memberships(id) => (3, id.as_u128()),
            FactKey::Project(id) => (4, id.as_u128()),
            FactKey::Generation(id) => (5, id.as_u128()),
            FactKey::Shares(ResourceKind::Generation, id) => (6, id.as_u128()),
            FactKey::Shares(ResourceKind::Project, id) => (7, id.as_u128()),
            FactKey::Session(id) => (8, id.as_u128()),
            FactKey::ApiKey(hash) => {
                let mut h = DefaultHasher::new();
                hash.hash(&mut h);
                (9, u128::from(h.finish()))
            }
        };
        // Fold the 128 bits, mix in the kind, multiply.
        let folded = (id as u64) ^ ((id >> 64) as u64) ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        folded.wrapping_mul(0xD6E8_FEB8_6659_FD93)
    }
}

impl Fact {
    /// Whether this is the fact `key` asks for: the same kind and, where the
    /// row carries its id, that id (an API key by its hash). Memberships and
    /// shares carry no owner id; in Redis their key is bound by the value's
    /// tag instead. Negative entries carry nothing to compare.
    pub fn matches(&self, key: &FactKey) -> bool {
        match (key, self) {
            (FactKey::User(id), Fact::User(row)) => row.as_ref().is_none_or(|r| r.id == *id),
            (FactKey::Team(id), Fact::Team(row)) => row.as_ref().is_none_or(|r| r.id == *id),
            (FactKey::Project(id), Fact::Project(row)) => row.as_ref().is_none_or(|r| r.id == *id),
            (FactKey::Generation(id), Fact::Generation(row)) => {
                row.as_ref().is_none_or(|r| r.id == *id)
            }
            (FactKey::Session(id), Fact::Session(row)) => row.as_ref().is_none_or(|r| r.id == *id),
            (FactKey::ApiKey(hash), Fact::ApiKey(row)) => {
                row.as_ref().is_none_or(|r| r.key_hash == **hash)
            }
            (FactKey::Memberships(_), Fact::Memberships(_))
            | (FactKey::Shares(..), Fact::Shares(_)) => true,
            _ => false,
        }
    }

    /// Whether the fact may be kept in L1 or Redis. "No such generation" may
    /// not: generation inserts are not announced (migrations/0003), so nothing
    /// cached may rest on a generation not existing.
    pub fn cacheable(&self) -> bool {
        !matches!(self, Fact::Generation(None))
    }

    /// A "row not found" entry (shorter TTL).
    pub fn is_negative(&self) -> bool {
        match self {
            Fact::User(v) => v.is_none(),
            Fact::Team(v) => v.is_none(),
            Fact::Project(v) => v.is_none(),
            Fact::Generation(v) => v.is_none(),
            Fact::ApiKey(v) => v.is_none(),
            Fact::Session(v) => v.is_none(),
            Fact::Memberships(_) | Fact::Shares(_) => false,
        }
    }
}
