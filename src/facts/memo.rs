//! Remembered decisions: what a resource decision computed from its facts
//! (the user's status and effective role), stamped with the versions of the
//! facts it used (SPEC §5), so the next Check of the same user on the same
//! resource reads one entry instead of its ten facts.
//!
//! A remembered answer is trusted exactly when each of its facts would still
//! be served from L1: no invalidation of any of their buckets and no flush
//! since each fact's fill started, none of them past its TTL, and the change
//! feed trusted now. So it is never trusted past an invalidation, and it can
//! only answer what reading the facts again would answer. Only decisions that
//! read every fact from L1 are remembered: a fact read from Redis or Postgres
//! in the same decision may be one that was never cached (read through, or a
//! fill that raced an invalidation), and its stamp would vouch for nothing.
//!
//! A hit replays the facts into the decision's trace (and counts them as L1
//! hits), so `explain`, the recent decisions and the spans see the same facts
//! as on the L1 path.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use uuid::Uuid;

use super::{Entry, Fact, FactKey, FactSource, Facts, Source, Trace};
use crate::model::{Role, UserStatus};
use crate::store::Target;

/// What a resource decision computes from its facts: the user's status
/// (`None`: no such user) and, for an active user, the effective role.
pub type StatusAndRole = Option<(UserStatus, Option<Role>)>;

/// The memo's key: user and resource.
pub(super) type MemoKey = (Uuid, Target);

/// The stamps an L1 entry was trusted by when a decision read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The key's invalidation bucket.
    bucket: u32,
    /// The bucket's counter when the entry's fill started.
    stamp: u64,
    /// The cache epoch then.
    epoch: u64,
    /// When the entry stops being served.
    expires: u64,
}

impl Stamp {
    pub(super) fn of(key: &FactKey, entry: &Entry) -> Stamp {
        Stamp {
            bucket: key.bucket() as u32,
            stamp: entry.stamp,
            epoch: entry.epoch,
            expires: entry.expires,
        }
    }
}

/// A decision's answer with what it rests on.
pub(super) struct Remembered {
    value: StatusAndRole,
    /// (bucket, counter) of every fact used.
    deps: Box<[(u32, u64)]>,
    /// The cache epoch all of them were filled in.
    epoch: u64,
    /// The earliest expiry among them.
    expires: u64,
    /// The facts, in the order read, for the trace of a hit.
    uses: Box<[(FactKey, Fact)]>,
}

/// What one decision has read so far, while it may still be remembered.
#[derive(Default)]
pub(super) struct Deps {
    /// A read came from elsewhere than L1, or from another epoch than the
    /// first: the decision is not to be remembered.
    spoiled: bool,
    /// (bucket, counter) of each fact read.
    stamps: Vec<(u32, u64)>,
    /// The epoch of the first fact read.
    epoch: Option<u64>,
    /// The earliest expiry so far.
    expires: u64,
    /// The facts read, in order.
    uses: Vec<(FactKey, Fact)>,
}

impl Deps {
    /// Notes one fact read: from L1 with `stamp`, or (`None`) from elsewhere,
    /// which rules remembering out.
    pub(super) fn read(deps: &Mutex<Deps>, key: &FactKey, fact: &Fact, stamp: Option<Stamp>) {
        let mut deps = deps.lock().unwrap_or_else(|p| p.into_inner());
        if deps.spoiled {
            return;
        }
        let Some(stamp) = stamp else {
            deps.spoiled = true;
            return;
        };
        if *deps.epoch.get_or_insert(stamp.epoch) != stamp.epoch {
            deps.spoiled = true;
            return;
        }
        deps.expires = if deps.stamps.is_empty() {
            stamp.expires
        } else {
            deps.expires.min(stamp.expires)
        };
        deps.stamps.push((stamp.bucket, stamp.stamp));
        deps.uses.push((key.clone(), fact.clone()));
    }
}

impl<S: FactSource> Facts<S> {
    /// The remembered answer for `user` on `target`, if it is still
    /// trusted; its facts are replayed into `trace`.
    pub fn remembered(&self, user: Uuid, target: Target, trace: &Trace) -> Option<StatusAndRole> {
        let memo = self.memo.as_ref()?;
        let key = (user, target);
        let Some(entry) = memo.get(&key) else {
            self.metrics.memo_lookup(false);
            return None;
        };
        let now = Instant::now();
        // Epoch before buckets, as a fact's own check reads them.
        let trusted = self.freshness.trusted_at(now)
            && entry.epoch == self.epoch.load(Ordering::Acquire)
            && self.clock.at(now) < entry.expires
            && entry.deps.iter().all(|&(bucket, stamp)| {
                self.buckets[bucket as usize].load(Ordering::Acquire) == stamp
            });
        if !trusted {
            memo.invalidate(&key);
            self.metrics.memo_lookup(false);
            return None;
        }
        self.metrics.memo_lookup(true);
        for (key, fact) in &entry.uses {
            self.metrics.l1_hit(key.kind());
            trace.record(key, Source::L1, fact);
        }
        Some(entry.value)
    }

    /// Keeps `value` as the answer for `user` on `target` if `deps` says
    /// every fact behind it came from L1.
    pub(super) fn remember(&self, user: Uuid, target: Target, value: StatusAndRole, deps: Deps) {
        let Some(memo) = &self.memo else {
            return;
        };
        let Some(epoch) = deps.epoch.filter(|_| !deps.spoiled) else {
            return;
        };
        memo.insert(
            (user, target),
            std::sync::Arc::new(Remembered {
                value,
                deps: deps.stamps.into_boxed_slice(),
                epoch,
                expires: deps.expires,
                uses: deps.uses.into_boxed_slice(),
            }),
        );
    }
}
