//! A run's report for machines: the JSON `lakehouse run --json` prints and
//! the Prometheus metrics `--metrics-file` writes. Both read the same plain
//! record the summary and the system tables are made from.

use serde_json::{json, Value};

use crate::prom::{Exposition, Kind};
use crate::runlog::RunReport;

/// `succeeded`, `failed` or `unchanged` (succeeded, and no table changed).
pub fn status(report: &RunReport) -> &'static str {
    if !report.succeeded() {
        "failed"
    } else if report.changed_nothing() {
        "unchanged"
    } else {
        "succeeded"
    }
}

/// When the run finished, in Unix seconds.
fn finished(report: &RunReport) -> f64 {
    report.started_at.timestamp_millis() as f64 / 1000.0 + report.seconds
}

/// The run as one JSON object (see the README's `run --json` section).
pub fn json(report: &RunReport, exit_code: u8) -> Value {
    let mut steps = Vec::new();
    for s in &report.sources {
        let r = &s.report;
        let refused: Vec<Value> = r
            .files
            .iter()
            .filter_map(|f| {
                f.refused
                    .as_ref()
                    .map(|why| json!({"file": f.file, "reason": why}))
            })
            .collect();
        let mut warnings = Vec::new();
        for f in &r.files {
            for c in &f.missing_columns {
                warnings.push(format!("{}: no column `{c}` (NULL for its rows)", f.file));
            }
            for c in &f.empty_columns {
                warnings.push(format!("{}: column `{c}` is empty in every row", f.file));
            }
        }
        for (file, what) in &r.changed {
            warnings.push(format!(
                "{file}: changed since it was ingested ({what}); not re-ingested"
            ));
        }
        steps.push(json!({
            "step": format!("bronze.{}", s.name),
            "kind": "source",
            "status": s.status,
            "message": s.message,
            "files_seen": r.files_seen,
            "files_skipped": r.files_skipped,
            "files_ingested": r.files.iter().filter(|f| f.refused.is_none()).count(),
            "files_refused": refused,
            "files_reingested": r.reingested,
            "lines": r.lines,
            "rows_in": r.rows + r.rejected,
            "rows_written": r.rows,
            "rows_rejected": r.rejected,
            "rows_quarantined": 0,
            "duplicates": 0,
            "reconciled": r.reconciled,
            "version": r.version,
            "seconds": s.seconds,
            "warnings": warnings,
        }));
    }
    for m in &report.models {
        let r = &m.report;
        let rules: Vec<Value> = r
            .rules
            .iter()
            .map(|rule| {
                json!({
                    "name": rule.name,
                    "action": rule.action,
                    "check": rule.check,
                    "evaluated": rule.evaluated,
                    "failed": rule.failed,
                    "quarantined": rule.quarantined,
                })
            })
            .collect();
        steps.push(json!({
            "step": r.table,
            "kind": "model",
            "status": m.status,
            "message": m.message,
            "strategy": if r.strategy_kind.is_empty() { "none" } else { r.strategy_kind },
            "strategy_detail": r.strategy,
            "rows_in": r.rows_in,
            "rows_written": r.rows_written,
            "rows_rejected": 0,
            "rows_quarantined": r.quarantined,
            "duplicates": r.duplicates,
            "files_written": r.files,
            "reconciled": r.reconciled,
            "version": r.version,
            "seconds": r.seconds,
            "rules": rules,
        }));
    }
    json!({
        "run_id": report.run_id,
        "status": status(report),
        "exit_code": exit_code,
        "started_at": report.started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "seconds": report.seconds,
        "steps": steps,
        "unread_files": report.unread,
        "maintenance": report.maintenance,
        "errors": report.errors,
    })
}

/// What a run that could not start prints with `--json`.
pub fn json_not_started(error: &str, exit_code: u8) -> Value {
    json!({
        "run_id": null,
        "status": "not started",
        "exit_code": exit_code,
        "steps": [],
        "unread_files": [],
        "errors": [error],
    })
}

/// The run's metrics, for node_exporter's textfile collector. `last_success`
/// holds, per table, when a run last finished with that table succeeded or
/// up to date (Unix seconds), this run included.
pub fn prometheus(report: &RunReport, exit_code: u8, last_success: &[(String, f64)]) -> String {
    let mut e = Exposition::new();
    let finished = finished(report);
    let status = status(report);
    e.family(
        "lakehouse_run_info",
        Kind::Gauge,
        "The last run: its id and status (succeeded, failed, unchanged); always 1.",
    )
    .sample(
        "lakehouse_run_info",
        &[("run_id", &report.run_id), ("status", status)],
        1.0,
    );
    e.family(
        "lakehouse_run_success",
        Kind::Gauge,
        "1 if the last run succeeded (unchanged included), else 0.",
    )
    .sample(
        "lakehouse_run_success",
        &[],
        if report.succeeded() { 1.0 } else { 0.0 },
    );
    e.family(
        "lakehouse_run_exit_code",
        Kind::Gauge,
        "The last run's exit code (0 success, 1 a step failed, 3 lease lost).",
    )
    .sample("lakehouse_run_exit_code", &[], exit_code as f64);
    e.family(
        "lakehouse_run_finished_timestamp_seconds",
        Kind::Gauge,
        "When the last run finished, in Unix seconds.",
    )
    .sample("lakehouse_run_finished_timestamp_seconds", &[], finished);
    e.family(
        "lakehouse_run_duration_seconds",
        Kind::Gauge,
        "How long the last run took.",
    )
    .sample("lakehouse_run_duration_seconds", &[], report.seconds);
    e.family(
        "lakehouse_run_errors",
        Kind::Gauge,
        "Errors the last run reported.",
    )
    .sample("lakehouse_run_errors", &[], report.errors.len() as f64);
    e.family(
        "lakehouse_unread_files",
        Kind::Gauge,
        "Files under landing/ that no source's glob matches.",
    )
    .sample("lakehouse_unread_files", &[], report.unread.len() as f64);

    e.family(
        "lakehouse_step_rows",
        Kind::Gauge,
        "Rows of each step of the last run, by what became of them: in, written, rejected (bad lines of a source), quarantined (rows a model's expectations dropped), duplicates (collapsed by unique_key).",
    );
    let mut seconds = Vec::new();
    let mut statuses = Vec::new();
    for s in &report.sources {
        let step = format!("bronze.{}", s.name);
        let r = &s.report;
        for (outcome, v) in [
            ("in", r.rows + r.rejected),
            ("written", r.rows),
            ("rejected", r.rejected),
        ] {
            e.sample(
                "lakehouse_step_rows",
                &[("step", &step), ("kind", "source"), ("outcome", outcome)],
                v as f64,
            );
        }
        seconds.push((step.clone(), "source", s.seconds));
        statuses.push((step, "source", s.status.clone()));
    }
    for m in &report.models {
        let r = &m.report;
        for (outcome, v) in [
            ("in", r.rows_in),
            ("written", r.rows_written),
            ("quarantined", r.quarantined),
            ("duplicates", r.duplicates),
        ] {
            e.sample(
                "lakehouse_step_rows",
                &[("step", &r.table), ("kind", "model"), ("outcome", outcome)],
                v as f64,
            );
        }
        seconds.push((r.table.clone(), "model", r.seconds));
        statuses.push((r.table.clone(), "model", m.status.clone()));
    }
    e.family(
        "lakehouse_step_duration_seconds",
        Kind::Gauge,
        "Seconds each step of the last run took.",
    );
    for (step, kind, s) in &seconds {
        e.sample(
            "lakehouse_step_duration_seconds",
            &[("step", step), ("kind", kind)],
            *s,
        );
    }
    e.family(
        "lakehouse_step_success",
        Kind::Gauge,
        "1 if the step succeeded or was up to date in the last run, else 0 (failed, partial, not run).",
    );
    for (step, kind, status) in &statuses {
        let ok = status == "succeeded" || status == "unchanged";
        e.sample(
            "lakehouse_step_success",
            &[("step", step), ("kind", kind), ("status", status)],
            if ok { 1.0 } else { 0.0 },
        );
    }
    e.family(
        "lakehouse_expectation_failed_rows",
        Kind::Gauge,
        "Rows for which an expectation was not true in the last run.",
    );
    e.family(
        "lakehouse_expectation_quarantined_rows",
        Kind::Gauge,
        "Rows quarantined with this expectation as their reason in the last run (a row failing two rules counts once, under the first).",
    );
    for m in &report.models {
        for rule in &m.report.rules {
            let labels = [
                ("model", m.report.table.as_str()),
                ("rule", rule.name.as_str()),
                ("action", rule.action.as_str()),
            ];
            e.sample(
                "lakehouse_expectation_failed_rows",
                &labels,
                rule.failed as f64,
            );
            e.sample(
                "lakehouse_expectation_quarantined_rows",
                &labels,
                rule.quarantined as f64,
            );
        }
    }
    e.family(
        "lakehouse_table_last_success_timestamp_seconds",
        Kind::Gauge,
        "When a run last finished with this table succeeded or up to date, in Unix seconds (from system.runs and system.steps).",
    );
    for (table, at) in last_success {
        e.sample(
            "lakehouse_table_last_success_timestamp_seconds",
            &[("table", table)],
            *at,
        );
    }
    e.finish()
}

/// Per table, the last time a run finished with it succeeded or up to date:
/// the system tables' history, then this run on top (a run that changed
/// nothing has no steps in `system.steps`, yet confirmed every table).
pub async fn last_success(
    ctx: &datafusion::prelude::SessionContext,
    report: &RunReport,
) -> Vec<(String, f64)> {
    let mut at: std::collections::BTreeMap<String, f64> = Default::default();
    let sql = "SELECT s.step, max(CAST(to_unixtime(r.started_at) AS DOUBLE) + r.seconds) AS at \
               FROM system.steps s JOIN system.runs r ON s.run_id = r.run_id \
               WHERE s.kind IN ('source', 'model') AND s.status IN ('succeeded', 'unchanged') \
               GROUP BY s.step";
    match crate::query::rows_json(ctx, sql).await {
        Ok(rows) => {
            for row in rows {
                if let (Some(step), Some(t)) = (row["step"].as_str(), row["at"].as_f64()) {
                    at.insert(step.to_string(), t);
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "no run history for the metrics"),
    }
    let finished = finished(report);
    let ok = |s: &str| s == "succeeded" || s == "unchanged";
    for s in report.sources.iter().filter(|s| ok(&s.status)) {
        at.insert(format!("bronze.{}", s.name), finished);
    }
    for m in report.models.iter().filter(|m| ok(&m.status)) {
        at.insert(m.report.table.clone(), finished);
    }
    at.into_iter().collect()
}
