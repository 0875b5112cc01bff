use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;

use tokio::sync::Notify;

use super::*;
use crate::model::UserStatus;

/// An in-memory source whose reads can be held between "row read" and "fill
/// returns", to force the fill/invalidation interleaving.
#[derive(Default)]
struct HeldSource {
    rows: Mutex<HashMap<Uuid, UserStatus>>,
    hold: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
    loads: AtomicUsize,
}

impl FactSource for Arc<HeldSource> {
    async fn load(&self, key: &FactKey) -> Result<Fact, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let FactKey::User(id) = key else {
            unreachable!("test uses users only")
        };
        let row = self.rows.lock().expect("lock").get(id).copied();
        let hold = self.hold.lock().expect("lock").take();
        if let Some((read, release)) = hold {
            read.notify_one();
            release.notified().await;
        }
        Ok(Fact::User(row.map(|status| User { id: *id, status })))
    }
}

fn facts(source: Arc<HeldSource>) -> Arc<Facts<Arc<HeldSource>>> {
    let config = CacheConfig {
        max_facts: 1000,
        ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_secs(30),
        max_credentials: 10,
    };
    Arc::new(Facts::new(source, &config, Metrics::new()))
}

/// A source holding one user row, armed to hold the next read, plus the cache
/// over it and the two signals: `read` (row read, fill held) and `release`.
fn armed(status: UserStatus) -> (Arc<HeldSource>, Uuid, Arc<Notify>, Arc<Notify>) {
    let source = Arc::new(HeldSource::default());
    let id = Uuid::new_v4();
    source.rows.lock().expect("lock").insert(id, status);
    let (read, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *source.hold.lock().expect("lock") = Some((read.clone(), release.clone()));
    (source, id, read, release)
}

/// Starts a fill of user `id` in the background.
fn spawn_fill(
    facts: &Arc<Facts<Arc<HeldSource>>>,
    id: Uuid,
) -> tokio::task::JoinHandle<Result<Option<User>, FactError>> {
    let facts = facts.clone();
    tokio::spawn(async move { facts.user(id, &Trace::off()).await })
}

#[tokio::test]
async fn fill_that_raced_with_invalidation_is_never_served() {
    let (source, id, read, release) = armed(UserStatus::Active);
    let facts = facts(source.clone());

    // 1. A fill reads the old row (active) and is held before it lands.
    let filler = spawn_fill(&facts, id);
    read.notified().await;
    // 2. The change commits and its invalidation is applied.
    source
        .rows
        .lock()
        .expect("lock")
        .insert(id, UserStatus::Suspended);
    facts.invalidate(&FactKey::User(id)).await;
    // 3. The fill lands.
    release.notify_one();
    let _ = filler.await.expect("join");

    // Every read after the invalidation sees the new row.
    for _ in 0..3 {
        let user = facts
            .user(id, &Trace::off())
            .await
            .expect("fact")
            .expect("row");
        assert_eq!(user.status, UserStatus::Suspended);
    }
}

#[tokio::test]
async fn flush_voids_fill_in_flight() {
    let (source, id, read, release) = armed(UserStatus::Active);
    let facts = facts(source.clone());

    let filler = spawn_fill(&facts, id);
    read.notified().await;
    source.rows.lock().expect("lock").remove(&id);
    facts.flush();
    release.notify_one();
    let _ = filler.await.expect("join");

    assert_eq!(facts.user(id, &Trace::off()).await.expect("fact"), None);
}

#[tokio::test]
async fn cached_fact_is_served_without_a_second_load() {
    let source = Arc::new(HeldSource::default());
    let id = Uuid::new_v4();
    source
        .rows
        .lock()
        .expect("lock")
        .insert(id, UserStatus::Active);
    let facts = facts(source.clone());
    let trace = Trace::recording();
    facts.user(id, &trace).await.expect("fact");
    facts.user(id, &trace).await.expect("fact");
    assert_eq!(source.loads.load(Ordering::SeqCst), 1);
    let sources: Vec<_> = trace.into_uses().iter().map(|u| u.source).collect();
    assert_eq!(sources, vec![Source::Postgres, Source::L1]);
}

#[tokio::test]
async fn concurrent_misses_on_one_key_run_one_load() {
    let (source, id, read, release) = armed(UserStatus::Active);
    let facts = facts(source.clone());

    let tasks: Vec<_> = (0..32).map(|_| spawn_fill(&facts, id)).collect();
    read.notified().await;
    // Let the other 31 callers reach the in-flight fill before it completes.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    for t in tasks {
        assert!(t.await.expect("join").expect("fact").is_some());
    }
    assert_eq!(source.loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn negative_entry_is_cached_until_invalidated() {
    let source = Arc::new(HeldSource::default());
    let id = Uuid::new_v4();
    let facts = facts(source.clone());
    assert_eq!(facts.user(id, &Trace::off()).await.expect("fact"), None);
    source
        .rows
        .lock()
        .expect("lock")
        .insert(id, UserStatus::Active);
    assert_eq!(
        facts.user(id, &Trace::off()).await.expect("fact"),
        None,
        "served from L1"
    );
    facts.invalidate(&FactKey::User(id)).await;
    assert!(facts.user(id, &Trace::off()).await.expect("fact").is_some());
    assert_eq!(source.loads.load(Ordering::SeqCst), 2);
}
