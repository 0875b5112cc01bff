//! Freshness: LISTEN `velro_authz_invalidate` and turn each notification into a
//! precise invalidation of the facts it names (SPEC §5).
//!
//! Notifications are lost while the connection is down, so every (re)connect
//! discards all of L1 *after* LISTEN is in place: a change that commits after
//! the flush is then certain to be heard.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::config::ListenerConfig;
use crate::facts::{FactKey, FactSource, Facts};
use crate::metrics::Metrics;
use crate::model::ResourceKind;

/// The channel every authz table's trigger notifies (migrations/0002).
pub const CHANNEL: &str = "velro_authz_invalidate";

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
    /// Void everything: a TRUNCATE, or a payload we cannot read (safe default).
    Flush,
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

/// Parses a notification payload. Anything unreadable becomes a flush: losing
/// an invalidation is the one thing we must never do.
pub fn parse(payload: &str) -> Invalidation {
    let Ok(p) = serde_json::from_str::<Payload>(payload) else {
        return Invalidation::Flush;
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
        _ => return Invalidation::Flush,
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
            None => return Invalidation::Flush,
        }
    }
    if keys.is_empty() {
        return Invalidation::Flush;
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

/// Applies a batch of invalidations: every key voided in Redis with one round
/// trip, then in L1; a flush in the batch voids everything instead.
pub async fn apply<S: FactSource>(facts: &Facts<S>, metrics: &Metrics, batch: Vec<Invalidation>) {
    let mut keys: Vec<FactKey> = Vec::new();
    let mut flush = false;
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
        }
    }
    if flush {
        facts.flush();
        metrics.flushes.with_label_values(&["notification"]).inc();
    } else {
        facts.invalidate_keys(&keys).await;
    }
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    for (table, changed_at) in applied {
        metrics.invalidations.with_label_values(&[table]).inc();
        if let Some(ts) = changed_at {
            metrics
                .invalidation_lag_seconds
                .observe((now - ts).max(0.0));
        }
    }
}

/// Applies what the reader queues, in batches: under a burst of changes each
/// batch costs one Redis round trip, so invalidations do not queue up behind
/// one another (the lag stays flat instead of growing with the burst).
async fn applier<S: FactSource>(
    facts: Arc<Facts<S>>,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Invalidation>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        apply(&facts, &metrics, std::mem::take(&mut batch)).await;
    }
}

/// Runs the LISTEN loop until `shutdown` flips to true. `connected` reports
/// whether the sidecar is currently hearing every change.
pub async fn run<S: FactSource>(
    pool: PgPool,
    facts: Arc<Facts<S>>,
    metrics: Metrics,
    config: ListenerConfig,
    connected: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let (queue, rx) = mpsc::channel(APPLY_QUEUE);
    let applier = tokio::spawn(applier(facts.clone(), metrics.clone(), rx));
    listen(pool, facts, metrics, config, connected, shutdown, queue).await;
    // The queue is closed: the applier finishes what was queued and stops.
    let _ = applier.await;
}

async fn listen<S: FactSource>(
    pool: PgPool,
    facts: Arc<Facts<S>>,
    metrics: Metrics,
    config: ListenerConfig,
    connected: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
    queue: mpsc::Sender<Invalidation>,
) {
    let mut backoff = config.reconnect_min;
    let mut first = true;
    loop {
        let session = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            // A lost connection must surface at once (we reconnect, with
            // backoff, and flush); sqlx would otherwise retry inside recv.
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            r = session => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match listener.as_mut() {
            Ok(listener) => {
                // LISTEN is in place: anything committed from now on will be
                // heard, so drop what may have been missed while deaf. Postgres
                // just answered, so its breaker closes before the refills.
                facts.breaker().success();
                facts.flush();
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
                connected.send_replace(true);
                tracing::info!(channel = CHANNEL, "listener connected, cache flushed");

                loop {
                    let next = tokio::select! {
                        n = listener.try_recv() => n,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    match next {
                        Ok(Some(n)) => {
                            if queue.send(parse(n.payload())).await.is_err() {
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
        // Deaf until the next LISTEN. Cached facts stay in use meanwhile (SPEC §5:
        // while Postgres is unreachable nothing can change there); the flush at
        // reconnect drops whatever changed during the gap.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_team_member_update_voids_old_and_new_user() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let payload = format!(
            r#"{{"t":"team_members","op":"UPDATE","ts":1.5,"old":{{"user_id":"{a}","team_id":"{b}"}},"new":{{"user_id":"{b}","team_id":"{b}"}}}}"#
        );
        assert_eq!(
            parse(&payload),
            Invalidation::Keys {
                table: "team_members",
                keys: vec![FactKey::Memberships(a), FactKey::Memberships(b)],
                changed_at: Some(1.5),
            }
        );
    }

    #[test]
    fn parse_share_insert_voids_resource_shares() {
        let id = Uuid::new_v4();
        let payload = format!(
            r#"{{"t":"shares","op":"INSERT","ts":2,"old":null,"new":{{"resource_kind":"project","resource_id":"{id}"}}}}"#
        );
        assert_eq!(
            parse(&payload),
            Invalidation::Keys {
                table: "shares",
                keys: vec![FactKey::Shares(ResourceKind::Project, id)],
                changed_at: Some(2.0),
            }
        );
    }

    #[test]
    fn parse_statement_payload_voids_every_key_once() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let payload = format!(
            r#"{{"t":"generations","op":"UPDATE","ts":3.25,"keys":[{{"id":"{a}"}},{{"id":"{b}"}},{{"id":"{a}"}}]}}"#
        );
        assert_eq!(
            parse(&payload),
            Invalidation::Keys {
                table: "generations",
                keys: vec![FactKey::Generation(a), FactKey::Generation(b)],
                changed_at: Some(3.25),
            }
        );
    }

    #[test]
    fn parse_statement_payload_of_shares_and_api_keys_names_their_facts() {
        let id = Uuid::new_v4();
        let hash = "ab".repeat(32);
        let shares = format!(
            r#"{{"t":"shares","op":"DELETE","ts":1,"keys":[{{"resource_kind":"generation","resource_id":"{id}"}}]}}"#
        );
        let keys =
            format!(r#"{{"t":"api_keys","op":"INSERT","ts":1,"keys":[{{"key_hash":"{hash}"}}]}}"#);
        assert_eq!(
            parse(&shares),
            Invalidation::Keys {
                table: "shares",
                keys: vec![FactKey::Shares(ResourceKind::Generation, id)],
                changed_at: Some(1.0),
            }
        );
        assert_eq!(
            parse(&keys),
            Invalidation::Keys {
                table: "api_keys",
                keys: vec![FactKey::ApiKey(hash.as_str().into())],
                changed_at: Some(1.0),
            }
        );
    }

    #[test]
    fn parse_unreadable_or_truncate_flushes() {
        for payload in [
            "",
            "not json",
            r#"{"t":"users","op":"TRUNCATE","ts":1}"#,
            r#"{"t":"mystery","op":"INSERT","ts":1,"new":{"id":"x"}}"#,
            r#"{"t":"users","op":"INSERT","ts":1,"new":{"id":"not-a-uuid"}}"#,
            r#"{"t":"users","op":"DELETE","ts":1,"old":null,"new":null}"#,
            // 0003: keys too many for one notification, or none that parse.
            r#"{"t":"generations","op":"FLUSH","ts":1}"#,
            r#"{"t":"generations","op":"FLUSH","ts":1,"keys":[{"id":"00000000-0000-4000-8000-000000000001"}]}"#,
            r#"{"t":"users","op":"UPDATE","ts":1,"keys":[]}"#,
            r#"{"t":"users","op":"UPDATE","ts":1,"keys":[{"id":"00000000-0000-4000-8000-000000000001"},{}]}"#,
            r#"{"t":"shares","op":"INSERT","ts":1,"keys":[{"resource_kind":"team","resource_id":"00000000-0000-4000-8000-000000000001"}]}"#,
            r#"{"t":"users","op":"UPDATE","ts":1,"keys":{"id":"00000000-0000-4000-8000-000000000001"}}"#,
        ] {
            assert_eq!(parse(payload), Invalidation::Flush, "{payload}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(payload in ".*") {
            let _ = parse(&payload);
        }

        /// Any number of keys in the 0003 shape comes back as exactly those
        /// facts, in order, once each.
        #[test]
        fn parse_statement_payload_round_trips(ids in proptest::collection::vec(0u8..8, 1..40)) {
            let ids: Vec<Uuid> = ids.iter().map(|n| Uuid::from_u128(0x1000 + u128::from(*n))).collect();
            let keys: Vec<String> = ids.iter().map(|id| format!(r#"{{"user_id":"{id}"}}"#)).collect();
            let payload = format!(
                r#"{{"t":"team_members","op":"DELETE","ts":1,"keys":[{}]}}"#,
                keys.join(",")
            );
            let mut want: Vec<FactKey> = Vec::new();
            for id in ids {
                if !want.contains(&FactKey::Memberships(id)) {
                    want.push(FactKey::Memberships(id));
                }
            }
            proptest::prop_assert_eq!(
                parse(&payload),
                Invalidation::Keys { table: "team_members", keys: want, changed_at: Some(1.0) }
            );
        }
    }
}
