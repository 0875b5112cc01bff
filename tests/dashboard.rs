//! The Grafana dashboard (`k8s/grafana-dashboard.json`) and the alert rules
//! (`k8s/prometheusrule.yaml`): every PromQL expression parses, and every
//! metric it names is one the sidecar registers — read from the registry
//! itself ([`Metrics::families`]), with `_bucket`, `_sum` and `_count` only
//! for histograms. A renamed or removed metric fails here, not on a blank
//! panel. Offline: no Grafana, no Prometheus.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use prometheus::proto::MetricType;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use velro_authz::metrics::Metrics;

fn read(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every series name a query may select: each family's name, and for a
/// histogram its `_bucket`, `_sum` and `_count` series.
fn exported() -> HashSet<String> {
    let mut names = HashSet::new();
    for (name, kind) in Metrics::new().families() {
        if kind == MetricType::HISTOGRAM {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name);
        }
    }
    names
}

/// Collects the metric names an expression selects.
#[derive(Default)]
struct Selected(BTreeSet<String>);

impl ExprVisitor for Selected {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        match &selector.name {
            Some(name) => {
                self.0.insert(name.clone());
                Ok(true)
            }
            None => Err("a selector without a metric name".to_owned()),
        }
    }
}

/// Grafana's interval variables as PromQL durations (the only variables
/// outside label values, where `$namespace` is just text).
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

/// Problems with one expression, each naming `place`.
fn check(place: &str, expr: &str, exported: &HashSet<String>) -> Result<BTreeSet<String>, String> {
    let parsed = parser::parse(&substitute(expr))
        .map_err(|e| format!("{place}: PromQL does not parse: {e}\n  {expr}"))?;
    let mut selected = Selected::default();
    walk_expr(&mut selected, &parsed).map_err(|e| format!("{place}: {e}\n  {expr}"))?;
    let unknown: Vec<&String> = selected
        .0
        .iter()
        .filter(|n| !exported.contains(*n))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "{place}: {unknown:?} not exported by the sidecar (src/metrics.rs)\n  {expr}"
        ));
    }
    Ok(selected.0)
}

/// `(place, expr)` of every query in a Grafana dashboard, panels in rows included.
fn dashboard_queries(json: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let place = format!("panel {title:?} target {}", t["refId"]);
                    out.push((place, expr.to_owned()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&json["panels"], &mut out);
    for v in json["templating"]["list"].as_array().into_iter().flatten() {
        // `label_values(metric, label)` is Grafana's, not PromQL: check its metric.
        if let Some(q) = v["query"]["query"].as_str()
            && let Some(inner) = q.strip_prefix("label_values(")
            && let Some((selector, _)) = inner.rsplit_once(',')
        {
            out.push((format!("variable {}", v["name"]), selector.to_owned()));
        }
    }
    out
}

#[test]
fn dashboard_expressions_parse_and_name_only_exported_metrics() {
    let json: serde_json::Value =
        serde_json::from_str(&read("k8s/grafana-dashboard.json")).expect("dashboard is JSON");
    let exported = exported();
    let queries = dashboard_queries(&json);
    assert!(queries.len() > 20, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    let problems: Vec<String> = queries
        .iter()
        .filter_map(|(place, expr)| match check(place, expr, &exported) {
            Ok(names) => {
                used.extend(names);
                None
            }
            Err(e) => Some(e),
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // What the dashboard is for (issue 14): each of these has a panel.
    for needed in [
        "velro_authz_decisions_total",
        "velro_authz_decision_duration_seconds_bucket",
        "velro_authz_cache_lookups_total",
        "velro_authz_invalidation_lag_seconds_bucket",
        "velro_authz_dependency_up",
        "velro_authz_circuit_state",
        "velro_authz_rate_limited_total",
        "velro_authz_config_reloads_total",
    ] {
        assert!(used.contains(needed), "no panel uses {needed}");
    }
}

#[test]
fn alert_rule_expressions_parse_and_name_only_exported_metrics() {
    let rules: serde_json::Value =
        serde_saphyr::from_str(&read("k8s/prometheusrule.yaml")).expect("rules are YAML");
    let exported = exported();
    let mut checked = 0;
    for group in rules["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let place = format!("rule {}", rule["alert"]);
            let expr = rule["expr"].as_str().expect("expr");
            if let Err(e) = check(&place, expr, &exported) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn checker_rejects_unknown_metrics_bad_syntax_and_suffixes_of_non_histograms() {
    let exported = exported();
    for (expr, says) in [
        (
            "rate(velro_authz_decisions_totl[5m])",
            "velro_authz_decisions_totl",
        ),
        (
            "sum(rate(velro_authz_decisions_total[5m])",
            "does not parse",
        ),
        (
            "velro_authz_decisions_total_bucket",
            "velro_authz_decisions_total_bucket",
        ),
        ("{job=\"x\"}", "without a metric name"),
    ] {
        let err = check("test", expr, &exported).expect_err(expr);
        assert!(err.contains(says), "{expr}: {err}");
    }
    let ok = check(
        "test",
        "histogram_quantile(0.99, sum by (le) (rate(velro_authz_decision_duration_seconds_bucket[$__rate_interval])))",
        &exported,
    )
    .expect("a histogram's buckets");
    assert!(ok.contains("velro_authz_decision_duration_seconds_bucket"));
}
