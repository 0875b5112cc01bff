//! L1's storage: facts kept in moka several to an entry.
//!
//! moka keeps ≈ 300 bytes of its own per entry (the hash table's slot, the
//! entry and its info with timestamps, the key behind an `Arc`, the node of
//! its access-order queue, the frequency sketch): more than twice what a fact
//! with its stamps takes (≈ 120 bytes). So L1 keeps facts in *groups*: a key
//! belongs to one of `max_facts / GROUP` groups by a hash of the key, moka
//! holds one entry per group that has a fact, weighed by the facts in it, and
//! its bound is still `cache.max_facts` facts. With the cache half full a
//! group holds about 16 facts, so moka's share of a fact is ≈ 20 bytes
//! (`cargo bench --bench memory` measures it: docs/performance.md).
//!
//! A group is immutable: a write builds the group anew (copy on write, under
//! moka's per-entry compute lock, so two writes to one group never lose each
//! other), and a read takes no lock of ours: moka's read (an `Arc` clone), a
//! scan of the group's keys, a clone of the entry. Eviction takes a whole
//! group, its least-used one by moka's policy. Each fact keeps its own stamps,
//! so freshness stays per fact ([`super::Facts::trusted`]).

use std::sync::Arc;

use moka::future::Cache;
use moka::ops::compute::Op;

use super::{Entry, FactKey};

/// Facts per group when the cache is full (the mean; a hash spreads them).
const GROUP: u64 = 32;
/// Most facts one group holds: past it a write drops the group's oldest
/// fact. Only keys that hash to one group this unevenly meet it, or a cache
/// bound below it.
const GROUP_MAX: usize = 4 * GROUP as usize;

/// The facts of one group, each with its key, oldest first.
#[derive(Clone)]
struct Group(Arc<[(FactKey, Entry)]>);

/// Facts in groups in moka ([module docs](self)). Cloned, it is the same
/// cache.
#[derive(Clone)]
pub(super) struct L1 {
    groups: Cache<u64, Group>,
    /// How many groups keys spread over.
    count: u64,
    /// Most facts in one group: [`GROUP_MAX`], or the whole bound when
    /// that is smaller.
    group_max: usize,
}

impl L1 {
    /// Room for `max_facts` facts.
    pub(super) fn new(max_facts: u64) -> L1 {
        let groups = Cache::builder()
            .max_capacity(max_facts)
            .weigher(|_, group: &Group| u32::try_from(group.0.len()).unwrap_or(u32::MAX))
            .build();
        L1 {
            groups,
            count: max_facts.div_ceil(GROUP).max(1),
            group_max: usize::try_from(max_facts)
                .unwrap_or(usize::MAX)
                .clamp(1, GROUP_MAX),
        }
    }

    fn group(&self, key: &FactKey) -> u64 {
        key.group(self.count)
    }

    /// The entry kept for `key`, trusted or not.
    pub(super) async fn get(&self, key: &FactKey) -> Option<Entry> {
        let group = self.groups.get(&self.group(key)).await?;
        group
            .0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, entry)| entry.clone())
    }

    /// Keeps `entry` for `key`, in place of any entry it had.
    pub(super) async fn insert(&self, key: FactKey, entry: Entry) {
        let group_max = self.group_max;
        self.groups
            .entry(self.group(&key))
            .and_compute_with(|current| {
                let kept = current.as_ref().map_or(&[][..], |c| &c.value().0[..]);
                let others: Vec<_> = kept.iter().filter(|(k, _)| *k != key).collect();
                // Room for the new one: the oldest go first.
                let skip = others.len().saturating_sub(group_max - 1);
                let group: Arc<[(FactKey, Entry)]> = others[skip..]
                    .iter()
                    .map(|&slot| slot.clone())
                    .chain(std::iter::once((key, entry)))
                    .collect();
                std::future::ready(Op::Put(Group(group)))
            })
            .await;
    }

    /// Drops the entry of `key`, if any.
    pub(super) async fn remove(&self, key: &FactKey) {
        self.groups
            .entry(self.group(key))
            .and_compute_with(|current| {
                let op = match current {
                    None => Op::Nop,
                    Some(current) => {
                        let kept = &current.value().0;
                        if !kept.iter().any(|(k, _)| k == key) {
                            Op::Nop
                        } else if kept.len() == 1 {
                            Op::Remove
                        } else {
                            let group: Arc<[(FactKey, Entry)]> =
                                kept.iter().filter(|(k, _)| k != key).cloned().collect();
                            Op::Put(Group(group))
                        }
                    }
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Drops every entry.
    pub(super) fn clear(&self) {
        self.groups.invalidate_all();
    }

    /// Facts kept (approximate: moka counts after its pending work).
    pub(super) fn len(&self) -> u64 {
        self.groups.weighted_size()
    }

    /// Groups kept, and moka's pending work done first (benchmarks).
    pub(super) async fn settle(&self) {
        self.groups.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests;
