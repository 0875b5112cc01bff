//! A decision as a person reads it: the admin `Explain` call and
//! `velro-authz check --explain` render the same [`Summary`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::answer::Outcome;
use crate::facts::FactUse;

use super::{CheckError, Decision};

/// A decision plus every fact it used (`check --explain`, admin `Explain`).
#[derive(Debug)]
pub struct Explanation {
    /// The decision, or why none could be made.
    pub decision: Result<Decision, CheckError>,
    /// Facts used, in order, with their source.
    pub facts: Vec<FactUse>,
}

/// The readable form of an [`Explanation`] whose decision was made.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Whether the request goes on.
    pub allowed: bool,
    /// The HTTP status the proxy answers (200 on allow).
    pub status: u16,
    /// `ok`, or the stable deny reason (in dry-run: the reason waved through).
    pub reason: &'static str,
    /// The decision id.
    pub decision_id: String,
    /// The route pattern matched, if any.
    pub route: Option<String>,
    /// `user <id> via <jwt|api_key>`, once authenticated.
    pub principal: Option<String>,
    /// The effective role, on resource routes.
    pub role: Option<&'static str>,
    /// Headers for the upstream, on allow.
    pub headers: BTreeMap<&'static str, String>,
    /// Every fact used, in order, with where it came from.
    pub facts: Vec<FactUse>,
}

impl Explanation {
    /// The summary, or why no decision could be made.
    pub fn summary(self) -> Result<Summary, CheckError> {
        let decision = self.decision?;
        let (allowed, status, reason) = match &decision.outcome {
            Outcome::Allow(_) => (true, 200, decision.dry_run_deny.map_or("ok", |r| r.code())),
            Outcome::Deny(r) => (false, r.http_status(), r.code()),
        };
        let headers = if allowed {
            decision.identity_headers().into_iter().collect()
        } else {
            BTreeMap::new()
        };
        Ok(Summary {
            allowed,
            status,
            reason,
            route: decision.route.as_deref().map(str::to_owned),
            principal: decision
                .principal
                .map(|p| format!("user {} via {}", p.user_id, p.auth.as_str())),
            role: decision.role.map(|r| r.as_str()),
            decision_id: decision.decision_id,
            headers,
            facts: self.facts,
        })
    }
}
