//! Freshness: LISTEN `velro_authz_invalidate` and turn each notification into a
//! precise invalidation of the facts it names (SPEC §5).
//!
//! Notifications are lost while the connection is down, so every (re)connect
//! discards all of L1 *after* LISTEN is in place: a change that commits after
//! the flush is then certain to be heard.
//!
//! A connection can also go silent without failing (a pooler restart, an idle
//! reaper, a network blip with no reset). So the listener proves the feed
//! alive: it sends itself a heartbeat through Postgres four times per
//! `freshness.max_silence_ms`, on the same channel path, carrying the WAL
//! position at which it was sent. Hearing it back (after applying everything
//! queued before it) proves every change committed before that position was
//! heard; [`Freshness`] turns a lost or silent feed into "cached facts
//! untrusted", and the Redis tier extends the fleet's coverage with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::facts::freshness::Freshness;
use crate::facts::{FactKey, FactSource, Facts};
use crate::metrics::Metrics;
use crate::model::ResourceKind;

/// The channel every authz table's trigger notifies (migrations/0002).
pub const CHANNEL: &str = "velro_authz_invalidate";

/// The channel sidecars send their own heartbeats on.
pub const HEARTBEAT_CHANNEL: &str = "velro_authz_heartbeat";

/// LISTEN on both channels, then the WAL position from which this session
/// hears every commit. Positions are WAL *insert* positions: a commit record
/// is inserted before its transaction becomes visible, so every transaction
/// committed before the read lies below it, even with `synchronous_commit =
/// off`, where the write position lags behind.
const LISTEN_SQL: &str = "LISTEN velro_authz_invalidate; LISTEN velro_authz_heartbeat; \
     SELECT pg_current_wal_insert_lsn()::text";

/// LISTEN connection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenerSettings {
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Backoff cap.
    pub reconnect_max: Duration,
}

/// What one notification asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invalidation {
    /// Void these facts.
    Keys {
        /// The table that changed (metric label).
        table: &'static str,
        /// The facts to void.
        keys: Vec<FactKey>,
        /// Seconds since the Unix epoch when the change was made, if sent.
        changed_at: Option<f64>,
    },
    /// Void everything: a TRUNCATE, or a statement that changed more keys than
    /// one notification can name (the trigger says `FLUSH`).
    Flush,
    /// A payload on the channel that no trigger of ours sends in a shape we
    /// read. Counted apart (`velro_authz_invalidation_junk_total`) and then
    /// treated as a flush: see [`parse`].
    Unreadable,
}

/// What the reader hands the applier, in the order heard.
#[derive(Debug, Clone, PartialEq)]
enum Heard {
    /// A change to apply.
    Change(Invalidation),
    /// One of our own heartbeats: `seq` was sent at feed position `position`.
    Heartbeat { seq: u64, position: u64 },
}

/// Heartbeats sent and not yet heard back: their send times by sequence number.
#[derive(Default)]
struct Sent {
    /// This process's id in heartbeat payloads (other sidecars' are ignored).
    instance: String,
    /// Next sequence number; unique for the life of the process.
    next: std::sync::atomic::AtomicU64,
    /// Send time by sequence number; old entries are pruned.
    at: Mutex<HashMap<u64, Instant>>,
}

impl Sent {
    fn new() -> Sent {
        Sent {
            instance: Uuid::new_v4().simple().to_string(),
            ..Sent::default()
        }
    }

    fn record(&self) -> u64 {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        at.retain(|_, t| t.elapsed() < Duration::from_secs(60));
        at.insert(seq, Instant::now());
        seq
    }

    fn take(&self, seq: u64) -> Option<Instant> {
        self.at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq)
    }

    /// Our heartbeat's (seq, position), or `None` for another sidecar's or junk.
    fn parse(&self, payload: &str) -> Option<(u64, u64)> {
        let mut parts = payload.splitn(3, ':');
        let (instance, seq, lsn) = (parts.next()?, parts.next()?, parts.next()?);
        if instance != self.instance {
            return None;
        }
        Some((seq.parse().ok()?, parse_lsn(lsn)?))
    }
}

/// A WAL position as Postgres prints it (`16/B374D848`) as one number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Trigger payload. Two shapes share it:
/// - migrations/0003 (`velro_authz_notify_statement()`): every key a statement
///   changed, `{"t", "op", "ts", "keys": [{<key columns>}, ...]}`; or
///   `{"t", "op": "FLUSH" | "TRUNCATE", "ts"}` when they would not fit in one
///   notification, or cannot be named;
/// - migrations/0002 (`velro_authz_notify()`, still read so that notifications
///   sent before the upgrade are applied precisely): one row,
///   `{"t", "op", "ts", "old": {..} | null, "new": {..} | null}`.
#[derive(Debug, Deserialize)]
struct Payload {
    t: String,
    op: String,
    ts: Option<f64>,
    old: Option<serde_json::Map<String, serde_json::Value>>,
    new: Option<serde_json::Map<String, serde_json::Value>>,
    keys: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
}

/// Parses a notification payload.
///
/// Anything we cannot read is [`Invalidation::Unreadable`], which the applier
/// counts as junk *and still applies as a flush*. Postgres has no privilege on
/// NOTIFY channels: any role that can connect to the database can send junk
/// here and void every sidecar's cache (README, Security). Ignoring junk would
/// stop that, but an unreadable payload is also what a newer trigger's format
/// looks like to an older sidecar (migrations/0003 changed the format once, and
/// a migration can run before the sidecars are upgraded): dropping it could
/// lose a real invalidation, which is the one thing we must never do. A flush
/// costs refills; a lost invalidation is a wrong answer. So junk flushes, is
/// counted on its own, and the defence is who may connect (`REVOKE CONNECT`).
pub fn parse(payload: &str) -> Invalidation {
    let Ok(p) = serde_json::from_str::<Payload>(payload) else {
        return Invalidation::Unreadable;
    };
    // FLUSH: a statement changed more keys than one notification can carry.
    // The table is named, but there is no per-table flush: void everything.
    if p.op == "TRUNCATE" || p.op == "FLUSH" {
        return Invalidation::Flush;
    }
    let table: &'static str = match p.t.as_str() {
        "users" => "users",
        "teams" => "teams",
        "team_members" => "team_members",
        "projects" => "projects",
        "generations" => "generations",
        "shares" => "shares",
        "api_keys" => "api_keys",
        "sessions" => "sessions",
        _ => return Invalidation::Unreadable,
    };
    let rows = [p.old.as_ref(), p.new.as_ref()]
        .into_iter()
        .flatten()
        .chain(p.keys.iter().flatten());
    let mut keys = Vec::with_capacity(2);
    for row in rows {
        match key_of(table, row) {
            Some(key) => {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            None => return Invalidation::Unreadable,
        }
    }
    if keys.is_empty() {
        return Invalidation::Unreadable;
    }
    Invalidation::Keys {
        table,
        keys,
        changed_at: p.ts,
    }
}

fn key_of(table: &str, row: &serde_json::Map<String, serde_json::Value>) -> Option<FactKey> {
    let uuid = |col: &str| row.get(col)?.as_str()?.parse::<Uuid>().ok();
    Some(match table {
        "users" => FactKey::User(uuid("id")?),
        "teams" => FactKey::Team(uuid("id")?),
        "team_members" => FactKey::Memberships(uuid("user_id")?),
        "projects" => FactKey::Project(uuid("id")?),
        "generations" => FactKey::Generation(uuid("id")?),
        "shares" => {
            let kind: ResourceKind = row.get("resource_kind")?.as_str()?.parse().ok()?;
            FactKey::Shares(kind, uuid("resource_id")?)
        }
        "api_keys" => FactKey::ApiKey(row.get("key_hash")?.as_str()?.into()),
        "sessions" => FactKey::Session(uuid("id")?),
        _ => return None,
    })
}

/// Notifications queued between the LISTEN reader and the applier; when full,
/// the reader waits (they stay buffered in the socket and in Postgres).
const APPLY_QUEUE: usize = 65_536;
/// Most notifications applied together (one Redis round trip for all).
const MAX_BATCH: usize = 1_024;
/// Batches whose Redis side may be in flight at once (a dead Redis answers
/// each after its timeout; more than this and the applier waits).
const MAX_REDIS_IN_FLIGHT: usize = 64;

/// Applies a batch of invalidations: every key voided in Redis with one round
/// trip, then in L1; a flush in the batch voids everything instead.
pub async fn apply<S: FactSource>(facts: &Facts<S>, metrics: &Metrics, batch: Vec<Invalidation>) {
    apply_l1(facts, metrics, batch).await;
}

/// [`apply`], L1 at once; the returned future is the Redis side.
fn apply_l1<S: FactSource>(
    facts: &Facts<S>,
    metrics: &Metrics,
    batch: Vec<Invalidation>,
) -> impl std::future::Future<Output = ()> + Send + 'static + use<S> {
    let mut keys: Vec<FactKey> = Vec::new();
    let mut flush = false;
    let mut junk = 0;
    let mut applied: Vec<(&'static str, Option<f64>)> = Vec::with_capacity(batch.len());
    for inv in batch {
        match inv {
            Invalidation::Keys {
                table,
                keys: these,
                changed_at,
            } => {
                for key in these {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                applied.push((table, changed_at));
            }
            Invalidation::Flush => flush = true,
            Invalidation::Unreadable => junk += 1,
        }
    }
    if junk > 0 {
        metrics.invalidation_junk.inc_by(junk);
    }
    let redis_side = if flush || junk > 0 {
        facts.flush();
        // One flush for the batch; "junk" only when nothing but junk asked.
        let cause = if flush { "notification" } else { "junk" };
        metrics.flushes.with_label_values(&[cause]).inc();
        None
    } else {
        Some(facts.invalidate_keys_now(&keys))
    };
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    for (table, changed_at) in applied {
        metrics.invalidations.with_label_values(&[table]).inc();
        if let Some(ts) = changed_at {
            metrics
                .invalidation_lag_seconds
                .observe((now - ts).max(0.0));
        }
    }
    async move {
        if let Some(redis_side) = redis_side {
            redis_side.await;
        }
    }
}

/// Applies what the reader queues, in batches: under a burst of changes each
/// batch costs one Redis round trip, so invalidations do not queue up behind
/// one another (the lag stays flat instead of growing with the burst). A
/// heartbeat counts only once every change heard before it is applied.
async fn applier<S: FactSource>(
    facts: Arc<Facts<S>>,
    metrics: Metrics,
    sent: Arc<Sent>,
    connected: watch::Sender<bool>,
    mut rx: mpsc::Receiver<Heard>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut redis_sides = tokio::task::JoinSet::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut changes = Vec::with_capacity(batch.len());
        let mut heartbeats = Vec::new();
        for heard in batch.drain(..) {
            match heard {
                Heard::Change(c) => changes.push(c),
                Heard::Heartbeat { seq, position } => heartbeats.push((seq, position)),
            }
        }
        if !changes.is_empty() {
            // L1 now; the Redis side runs on while the next batch is applied,
            // so a slow or dead Redis never delays the next change's L1.
            redis_sides.spawn(apply_l1(&facts, &metrics, changes));
            while redis_sides.len() > MAX_REDIS_IN_FLIGHT {
                let _ = redis_sides.join_next().await;
            }
        }
        if !heartbeats.is_empty() {
            // A heartbeat vouches for everything heard before it, Redis
            // included: wait for the Redis sides in flight.
            while redis_sides.join_next().await.is_some() {}
        }
        for (seq, position) in heartbeats {
            let Some(sent_at) = sent.take(seq) else {
                continue;
            };
            metrics
                .feed_heartbeat_seconds
                .observe(sent_at.elapsed().as_secs_f64());
            facts.freshness().proven(sent_at);
            // Hearing every change, and proven: the sidecar is connected.
            if facts.freshness().trusted() {
                connected.send_if_modified(|c| !std::mem::replace(c, true));
            }
            if let Some(l2) = facts.l2() {
                l2.heard_through(position).await;
            }
        }
    }
}

/// Sends a heartbeat through Postgres every `interval` while the session
/// lasts, and keeps the freshness gauge current.
async fn heartbeats(pool: PgPool, sent: Arc<Sent>, freshness: Arc<Freshness>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        freshness.observe();
        let seq = sent.record();
        let payload = format!("{}:{seq}", sent.instance);
        // The position is read before this transaction commits: every change
        // committed before it is queued ahead of the heartbeat.
        let send =
            sqlx::query("SELECT pg_notify($1, $2 || ':' || pg_current_wal_insert_lsn()::text)")
                .bind(HEARTBEAT_CHANNEL)
                .bind(payload)
                .execute(&pool);
        match tokio::time::timeout(interval * 2, send).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat not sent"),
            Err(_) => tracing::debug!("heartbeat send timed out"),
        }
    }
}

/// Runs the LISTEN loop until `shutdown` flips to true. `connected` turns true
/// once the sidecar is proven to hear every change (its first heartbeat came
/// back), and false the moment the feed is lost.
pub async fn run<S: FactSource>(
    pool: PgPool,
    facts: Arc<Facts<S>>,
    metrics: Metrics,
    config: ListenerSettings,
    connected: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let (queue, rx) = mpsc::channel(APPLY_QUEUE);
    let sent = Arc::new(Sent::new());
    let applier = tokio::spawn(applier(
        facts.clone(),
        metrics.clone(),
        sent.clone(),
        connected.clone(),
        rx,
    ));
    listen(
        pool, facts, metrics, config, connected, shutdown, queue, sent,
    )
    .await;
    // The queue is closed: the applier finishes what was queued and stops.
    let _ = applier.await;
}

#[allow(clippy::too_many_arguments)] // One loop's state, passed once at start.
async fn listen<S: FactSource>(
    pool: PgPool,
    facts: Arc<Facts<S>>,
    metrics: Metrics,
    config: ListenerSettings,
    connected: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
    queue: mpsc::Sender<Heard>,
    sent: Arc<Sent>,
) {
    let mut backoff = config.reconnect_min;
    let mut first = true;
    let freshness = facts.freshness().clone();
    loop {
        let session = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            // A lost connection must surface at once (we reconnect, with
            // backoff, and flush); sqlx would otherwise retry inside recv.
            listener.eager_reconnect(false);
            // Both channels, then where this session starts hearing: read
            // after LISTEN, on the same connection, in one round trip.
            let rows = sqlx::raw_sql(LISTEN_SQL).fetch_all(&mut listener).await?;
            let start = rows
                .first()
                .and_then(|row| sqlx::Row::try_get::<String, _>(row, 0).ok())
                .and_then(|lsn| parse_lsn(&lsn))
                .unwrap_or(1);
            Ok::<_, sqlx::Error>((listener, start))
        };
        let mut listener = tokio::select! {
            r = session => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match listener.as_mut() {
            Ok((listener, start)) => {
                // LISTEN is in place: anything committed from now on will be
                // heard, so drop what may have been missed while deaf. Postgres
                // just answered, so its breaker closes before the refills. The
                // Redis tier rejoins the fleet's coverage (or bumps the epoch).
                facts.breaker().success();
                facts.flush_local();
                if let Some(l2) = facts.l2() {
                    l2.session_started(*start);
                }
                freshness.connected_now();
                let beats = tokio::spawn(heartbeats(
                    pool.clone(),
                    sent.clone(),
                    freshness.clone(),
                    freshness.settings().heartbeat_interval(),
                ));
                let _stop_beats = AbortOnDrop(beats);
                metrics.flushes.with_label_values(&["listener_gap"]).inc();
                if !first {
                    metrics.listener_reconnects.inc();
                }
                first = false;
                backoff = config.reconnect_min;
                metrics.listener_connected.set(1);
                metrics
                    .dependency_up
                    .with_label_values(&["postgres"])
                    .set(1);
                tracing::info!(channel = CHANNEL, "listener connected, cache flushed");

                loop {
                    let next = tokio::select! {
                        n = listener.try_recv() => n,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    match next {
                        Ok(Some(n)) => {
                            let heard = if n.channel() == HEARTBEAT_CHANNEL {
                                match sent.parse(n.payload()) {
                                    Some((seq, position)) => Heard::Heartbeat { seq, position },
                                    // Another sidecar's heartbeat.
                                    None => continue,
                                }
                            } else {
                                Heard::Change(parse(n.payload()))
                            };
                            if queue.send(heard).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("listener connection lost; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "listener cannot connect");
            }
        }
        // Deaf until the next LISTEN: changes may be missed from now on, so
        // cached facts are untrusted at once (decisions read through to
        // Postgres, or fail closed if it cannot answer, unless the operator
        // chose `serve_stale_on_outage`); the flush at reconnect drops whatever
        // changed during the gap.
        freshness.lost();
        connected.send_replace(false);
        metrics.listener_connected.set(0);
        metrics
            .dependency_up
            .with_label_values(&["postgres"])
            .set(0);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2)
            .min(config.reconnect_max)
            .max(Duration::from_millis(1));
    }
}

/// Aborts a task when dropped (the session's heartbeats end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
