//! The decision log and decision counters: every deny and error, and a sample
//! of allows, as one structured line each; never a token or key.

use crate::answer::Outcome;
use crate::metrics::Metrics;

use super::{CheckError, Decision};

/// Counts `result` and writes its decision-log line (denies, errors, and a
/// `allow_sample` fraction of allows). True when a decision's line was
/// written: that decision is also kept among the recent ones.
pub(super) fn record(
    metrics: &Metrics,
    allow_sample: f64,
    result: &Result<Decision, CheckError>,
) -> bool {
    match result {
        Ok(d) => {
            let (outcome, status, reason) = labels(result);
            if outcome == "allow" {
                // The hot path: a handle resolved once, no label lookup.
                metrics.decisions_allowed.inc();
            } else {
                metrics
                    .decisions
                    .with_label_values(&[outcome, status, reason])
                    .inc();
            }
            let sampled =
                outcome == "allow" && allow_sample > 0.0 && rand::random::<f64>() < allow_sample;
            if outcome != "allow" || sampled {
                tracing::info!(
                    target: "velro_authz::decision",
                    decision_id = %d.decision_id,
                    outcome,
                    status,
                    reason,
                    route = d.route.as_deref().unwrap_or("-"),
                    user_id = d.principal.map(|p| p.user_id.to_string()).unwrap_or_default(),
                    auth = d.principal.map(|p| p.auth.as_str()).unwrap_or("-"),
                    role = d.role.map(|r| r.as_str()).unwrap_or("-"),
                    "decision"
                );
            }
            outcome != "allow" || sampled
        }
        Err(e) => {
            metrics
                .decisions
                .with_label_values(&["error", "503", e.reason()])
                .inc();
            tracing::warn!(target: "velro_authz::decision", reason = e.reason(), error = %e, "cannot decide");
            false
        }
    }
}

/// A Check refused because `decision.max_in_flight` were in flight: counted,
/// not logged (under overload a line per refusal would add to it); the
/// counters say how many and since when.
pub(super) fn shed(metrics: &Metrics) {
    metrics.decisions_shed.inc();
    metrics
        .decisions
        .with_label_values(&["error", "503", "overloaded"])
        .inc();
}

/// Outcome, status and reason of a decision (or of "cannot decide"): the
/// decision counter's labels, the log line's and the trace span's.
pub(super) fn labels(
    result: &Result<Decision, CheckError>,
) -> (&'static str, &'static str, &'static str) {
    match result {
        Ok(d) => match (&d.outcome, &d.dry_run_deny) {
            (Outcome::Deny(reason), _) => ("deny", reason.status_label(), reason.code()),
            (Outcome::Allow(_), Some(reason)) => {
                ("dry_run_allow", reason.status_label(), reason.code())
            }
            (Outcome::Allow(_), None) => ("allow", "200", "ok"),
        },
        Err(e) => ("error", "503", e.reason()),
    }
}

/// A deny that an adapter decided before the core: the same log line.
pub fn adapter_deny(decision: &Decision, interface: &'static str) {
    if let Outcome::Deny(reason) = &decision.outcome {
        tracing::info!(
            target: "velro_authz::decision",
            decision_id = %decision.decision_id,
            outcome = "deny",
            status = reason.http_status(),
            reason = reason.code(),
            interface,
            "decision"
        );
    }
}
