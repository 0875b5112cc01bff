//! Recent decisions, kept so that one can be explained later by its decision
//! id ("why was request X denied an hour ago") without any log.
//!
//! What is kept is exactly what the decision log writes — every deny and
//! dry-run deny, and `decision.allow_log_sample` of the allows — so any
//! `decision_id` found in the decision log can be explained while it is
//! still here. Each entry holds the decision id, the time, the method, the
//! route pattern and the path's resource id (never the raw path, whose query
//! string may carry anything, and never a credential), the outcome and
//! reason, the principal, and every fact used with where it came from.
//!
//! The ring is a fixed array of slots written round-robin: recording is one
//! atomic increment and one pointer swap, with no lock shared by decisions;
//! finding an id scans the slots (an admin request, not the hot path).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::answer::{DenyReason, Outcome};
use crate::authn::Principal;
use crate::facts::FactUse;
use crate::model::Role;

use super::Decision;

/// Default `explain.recent_decisions`.
pub const DEFAULT_RECENT_DECISIONS: usize = 10_000;

/// A bounded ring of the most recent recorded decisions.
pub struct RecentDecisions {
    /// The slots, written round-robin; empty until first written.
    slots: Box<[ArcSwapOption<Recorded>]>,
    /// How many records were ever pushed; the next slot is this modulo the length.
    pushed: AtomicUsize,
}

/// One decision as recorded: enough to explain it later.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The decision id as a number (32 hex digits in answers and logs).
    pub id: u128,
    /// When it was decided.
    pub at: DateTime<Utc>,
    /// The request method (`OTHER` for one no route table could list).
    pub method: &'static str,
    /// The route pattern matched, if any.
    pub route: Option<Arc<str>>,
    /// The resource id in the path, on resource routes.
    pub resource_id: Option<Uuid>,
    /// What was answered (dry run: an allow).
    pub outcome: Outcome,
    /// The deny that dry-run mode waved through.
    pub dry_run_deny: Option<DenyReason>,
    /// The authenticated principal, if it got that far.
    pub principal: Option<Principal>,
    /// The effective role, on resource routes.
    pub role: Option<Role>,
    /// Every fact used, in order, with its source.
    pub facts: Vec<FactUse>,
}

impl Recorded {
    /// The record of `decision`, for a request with `method`.
    pub fn new(
        decision: &Decision,
        method: &str,
        resource_id: Option<Uuid>,
        facts: Vec<FactUse>,
    ) -> Recorded {
        Recorded {
            id: parse_id(&decision.decision_id).unwrap_or_default(),
            at: Utc::now(),
            method: known_method(method),
            route: decision.route.clone(),
            resource_id,
            outcome: decision.outcome.clone(),
            dry_run_deny: decision.dry_run_deny,
            principal: decision.principal,
            role: decision.role,
            facts,
        }
    }

    /// The decision id as answers and logs spell it.
    pub fn decision_id(&self) -> String {
        format!("{:032x}", self.id)
    }
}

impl RecentDecisions {
    /// A ring of `capacity` slots (at least one).
    pub fn new(capacity: usize) -> RecentDecisions {
        RecentDecisions {
            slots: (0..capacity.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect(),
            pushed: AtomicUsize::new(0),
        }
    }

    /// Keeps `record`, replacing the oldest once the ring is full.
    pub fn push(&self, record: Recorded) {
        let slot = self.pushed.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[slot].store(Some(Arc::new(record)));
    }

    /// The record of `decision_id` (32 hex digits), if still kept.
    pub fn get(&self, decision_id: &str) -> Option<Arc<Recorded>> {
        let id = parse_id(decision_id)?;
        self.slots
            .iter()
            .filter_map(|s| s.load_full())
            .find(|r| r.id == id)
    }

    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Records held now (at most the capacity).
    pub fn len(&self) -> usize {
        self.pushed.load(Ordering::Relaxed).min(self.slots.len())
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A decision id: exactly 32 hex digits (either case).
pub fn parse_id(text: &str) -> Option<u128> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

/// The method as a `'static` name, so a record holds no request text.
fn known_method(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("OTHER")
}

#[cfg(test)]
mod tests;
