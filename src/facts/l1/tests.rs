//! L1's groups: every fact is found under its own key, whatever else shares
//! its group; writes to one group never lose each other; the bound holds.

use std::sync::Arc;

use uuid::Uuid;

use super::*;
use crate::facts::Fact;

/// An entry told apart by `n` (its stamp).
fn entry(n: u64) -> Entry {
    Entry {
        fact: Fact::User(None),
        stamp: n,
        epoch: 0,
        expires: u64::MAX,
    }
}

fn user(n: u128) -> FactKey {
    FactKey::User(Uuid::from_u128(n))
}

#[tokio::test]
async fn each_fact_is_found_under_its_own_key_in_a_shared_group() {
    // 48 facts over 2 groups: every group is shared by many keys.
    let l1 = L1::new(48);
    for n in 0..48 {
        l1.insert(user(n), entry(n as u64)).await;
    }
    for n in 0..48 {
        let got = l1.get(&user(n)).await.expect("kept");
        assert_eq!(got.stamp, n as u64, "key {n}");
    }
    assert!(l1.get(&user(1000)).await.is_none(), "never put");
    // Other kinds with the same id are other keys.
    assert!(
        l1.get(&FactKey::Memberships(Uuid::from_u128(3)))
            .await
            .is_none()
    );

    // A second write replaces the first; it does not add a second copy.
    l1.insert(user(7), entry(700)).await;
    assert_eq!(l1.get(&user(7)).await.expect("kept").stamp, 700);
    l1.settle().await;
    assert_eq!(l1.len(), 48);

    // Removing one leaves its group's others.
    l1.remove(&user(7)).await;
    l1.remove(&user(1000)).await;
    assert!(l1.get(&user(7)).await.is_none());
    for n in (0..48).filter(|n| *n != 7) {
        assert!(l1.get(&user(n)).await.is_some(), "key {n} kept");
    }
    l1.settle().await;
    assert_eq!(l1.len(), 47);

    l1.clear();
    l1.settle().await;
    assert!(l1.get(&user(0)).await.is_none());
    assert_eq!(l1.len(), 0);
}

#[tokio::test]
async fn concurrent_writes_to_one_group_all_land() {
    // One group (a bound under GROUP), 12 writers at once.
    let l1 = Arc::new(L1::new(12));
    assert_eq!(l1.count, 1);
    let writers: Vec<_> = (0..12)
        .map(|n| {
            let l1 = l1.clone();
            tokio::spawn(async move { l1.insert(user(n), entry(n as u64)).await })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    for n in 0..12 {
        assert!(l1.get(&user(n)).await.is_some(), "write {n} lost");
    }
}

#[tokio::test]
async fn a_full_group_drops_its_oldest_fact() {
    // A bound of 3: one group of at most 3.
    let l1 = L1::new(3);
    for n in 0..4 {
        l1.insert(user(n), entry(n as u64)).await;
    }
    assert!(l1.get(&user(0)).await.is_none(), "the oldest went");
    for n in 1..4 {
        assert!(l1.get(&user(n)).await.is_some(), "key {n} kept");
    }
    // Rewriting a kept key makes it the newest, and drops nothing.
    l1.insert(user(1), entry(10)).await;
    l1.insert(user(4), entry(4)).await;
    assert!(l1.get(&user(1)).await.is_some(), "rewritten: the newest");
    assert!(l1.get(&user(2)).await.is_none(), "now the oldest went");
}

#[tokio::test]
async fn the_bound_holds_in_facts() {
    let l1 = L1::new(1000);
    for n in 0..10_000 {
        l1.insert(user(n), entry(n as u64)).await;
    }
    l1.settle().await;
    let kept = l1.len();
    assert!(kept <= 1000, "{kept} facts kept under a bound of 1000");
    assert!(
        kept >= 500,
        "eviction took far more than needed: {kept} kept"
    );
}

#[test]
fn keys_spread_evenly_over_groups() {
    // Ids as the demo data has them (one counting field) and random ones.
    let groups = 1_000u64;
    for ids in [
        (0..100_000u128)
            .map(|n| 0x40000000_0000_4000_8000_000000000000 + n)
            .collect::<Vec<_>>(),
        (0..100_000).map(|_| Uuid::new_v4().as_u128()).collect(),
    ] {
        let mut counts = vec![0u32; groups as usize];
        for id in &ids {
            let g = FactKey::Generation(Uuid::from_u128(*id)).group(groups);
            counts[g as usize] += 1;
        }
        // Mean 100; a fair hash keeps every group well within 2× of it.
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(
            min >= Some(&50) && max <= Some(&160),
            "groups from {min:?} to {max:?} keys, mean 100"
        );
    }
}
