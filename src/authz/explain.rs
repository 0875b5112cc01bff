//! A decision as a person reads it: the admin `Explain` call, `velro-authz
//! admin explain` and `velro-authz check --explain` render the same
//! [`Summary`], as typed JSON — a live decision, or a past one from the
//! recent decisions ([`super::recent`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::answer::{DenyReason, Outcome};
use crate::authn::Principal;
use crate::facts::FactUse;
use crate::model::{Action, Role};

use super::recent::Recorded;
use super::{CheckError, Decision};

/// A decision plus every fact it used (`check --explain`, admin `Explain`).
#[derive(Debug)]
pub struct Explanation {
    /// The decision, or why none could be made.
    pub decision: Result<Decision, CheckError>,
    /// Facts used, in order, with their source.
    pub facts: Vec<FactUse>,
}

/// The readable form of a decision that was made.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The decision id.
    pub decision_id: String,
    /// When it was decided: past decisions only (a live explain is now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// The request method: past decisions only (a live explain was given it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'static str>,
    /// Whether the request goes on.
    pub allowed: bool,
    /// The HTTP status the proxy answers (200 on allow).
    pub status: u16,
    /// `ok`, or the stable deny reason (in dry-run: the reason waved through).
    pub reason: &'static str,
    /// True when dry-run mode allowed what it would have denied (`reason`).
    pub dry_run: bool,
    /// The route pattern matched, if any.
    pub route: Option<String>,
    /// The path's resource id: past decisions on resource routes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<Uuid>,
    /// Who asked, once authenticated.
    pub principal: Option<PrincipalView>,
    /// The effective role, on resource routes.
    pub role: Option<&'static str>,
    /// Headers for the upstream, on allow.
    pub headers: BTreeMap<&'static str, String>,
    /// Every fact used, in order, with where it came from, each
    /// `{"kind", "key", "source", "value"}` with the row's fields as `value`.
    pub facts: Vec<FactUse>,
}

/// The principal as typed fields.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PrincipalView {
    /// The user.
    pub user_id: Uuid,
    /// `jwt` or `api_key`.
    pub auth: &'static str,
    /// The API key's id, when authenticated by one.
    pub api_key_id: Option<Uuid>,
    /// What the credential's scopes allow; `None` = not narrowed.
    pub scopes: Option<Vec<&'static str>>,
}

impl PrincipalView {
    /// From a principal.
    pub fn of(p: &Principal) -> PrincipalView {
        PrincipalView {
            user_id: p.user_id,
            auth: p.auth.as_str(),
            api_key_id: p.api_key_id,
            scopes: p.scopes.map(|s| {
                let mut names: Vec<&'static str> = Action::ALL
                    .into_iter()
                    .filter(|a| s.allows(*a))
                    .map(Action::as_str)
                    .collect();
                if s.has_ops() {
                    names.push("ops");
                }
                names
            }),
        }
    }

    /// `user <id> via <jwt|api_key>`, the one-line form.
    pub fn line(&self) -> String {
        format!("user {} via {}", self.user_id, self.auth)
    }
}

impl Explanation {
    /// The summary, or why no decision could be made.
    pub fn summary(self) -> Result<Summary, CheckError> {
        let decision = self.decision?;
        let mut summary = Summary::of(
            &decision.outcome,
            decision.dry_run_deny,
            decision.route.as_deref(),
            decision.principal.as_ref(),
            decision.role,
            &decision.identity_headers(),
            self.facts,
        );
        summary.decision_id = decision.decision_id;
        Ok(summary)
    }
}

impl Recorded {
    /// The summary of this past decision.
    pub fn summary(&self) -> Summary {
        let decision_id = self.decision_id();
        let identity = match &self.outcome {
            Outcome::Allow(identity) => identity.as_ref(),
            Outcome::Deny(_) => None,
        };
        let headers = crate::answer::identity_headers(&decision_id, identity, None);
        let mut summary = Summary::of(
            &self.outcome,
            self.dry_run_deny,
            self.route.as_deref(),
            self.principal.as_ref(),
            self.role,
            &headers,
            self.facts.clone(),
        );
        summary.decision_id = decision_id;
        summary.time = Some(self.at);
        summary.method = Some(self.method);
        summary.resource_id = self.resource_id;
        summary
    }
}

impl Summary {
    fn of(
        outcome: &Outcome,
        dry_run_deny: Option<DenyReason>,
        route: Option<&str>,
        principal: Option<&Principal>,
        role: Option<Role>,
        identity_headers: &[crate::answer::Header],
        facts: Vec<FactUse>,
    ) -> Summary {
        let (allowed, status, reason) = match outcome {
            Outcome::Allow(_) => (true, 200, dry_run_deny.map_or("ok", |r| r.code())),
            Outcome::Deny(r) => (false, r.http_status(), r.code()),
        };
        let headers = if allowed {
            identity_headers.iter().cloned().collect()
        } else {
            BTreeMap::new()
        };
        Summary {
            decision_id: String::new(),
            time: None,
            method: None,
            allowed,
            status,
            reason,
            dry_run: dry_run_deny.is_some(),
            route: route.map(str::to_owned),
            resource_id: None,
            principal: principal.map(PrincipalView::of),
            role: role.map(Role::as_str),
            headers,
            facts,
        }
    }

    /// As a JSON value (what the CLI prints).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
