//! The job's own records, as Delta tables under `<lake>/_lakehouse/` and the
//! `system` schema: `system.runs` (one row per run), `system.steps` (one row
//! per source or model per run, with its counts) and `system.expectations`
//! (one row per rule per model per run). Appended at the end of each run.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use serde_json::{json, Value};

use crate::delta::{self, Replace, WriteSpec};
use crate::error::Result;
use crate::ingest::SourceReport;
use crate::model::ModelReport;
use crate::storage::Lake;

/// What a run did, step by step: the record this module writes and the
/// summary prints. Plain data, so that the run log needs nothing of the
/// runner that fills it.
#[derive(Debug, Clone)]
pub struct SourceStep {
    pub name: String,
    pub status: String,
    pub message: Option<String>,
    pub report: SourceReport,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct ModelStep {
    pub status: String,
    pub message: Option<String>,
    pub report: ModelReport,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub sources: Vec<SourceStep>,
    /// Files under `landing/` that no source's glob matches: landed, but
    /// nobody reads them (a `.csv.gz` next to `*.csv`, a misspelt folder).
    pub unread: Vec<String>,
    pub models: Vec<ModelStep>,
    pub errors: Vec<String>,
    pub seconds: f64,
    /// What the run's maintenance did after recording it: tables compacted
    /// (or why a compaction failed; the data was committed either way).
    pub maintenance: Vec<String>,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.errors.is_empty()
    }

    /// Succeeded without ingesting a file or running a model.
    pub fn changed_nothing(&self) -> bool {
        self.succeeded()
            && self.sources.iter().all(|s| s.report.files.is_empty())
            && self.models.iter().all(|m| m.report.skipped)
    }
}

fn ts(name: &str) -> Field {
    Field::new(name, crate::delta::utc_timestamp(), true)
}

fn runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, true),
        ts("started_at"),
        Field::new("seconds", DataType::Float64, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("errors", DataType::Utf8, true),
    ]))
}

fn steps_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, true),
        Field::new("step", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("files_ingested", DataType::Int64, true),
        Field::new("files_refused", DataType::Int64, true),
        Field::new("lines_landed", DataType::Int64, true),
        Field::new("rows_in", DataType::Int64, true),
        Field::new("rows_written", DataType::Int64, true),
        Field::new("rows_rejected", DataType::Int64, true),
        Field::new("duplicates", DataType::Int64, true),
        Field::new("reconciled", DataType::Boolean, true),
        Field::new("version", DataType::Int64, true),
        Field::new("seconds", DataType::Float64, true),
        Field::new("message", DataType::Utf8, true),
    ]))
}

fn expectations_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, true),
        Field::new("rule", DataType::Utf8, true),
        Field::new("action", DataType::Utf8, true),
        Field::new("check", DataType::Utf8, true),
        Field::new("evaluated", DataType::Int64, true),
        Field::new("passed", DataType::Int64, true),
        Field::new("failed", DataType::Int64, true),
        Field::new("quarantined", DataType::Int64, true),
    ]))
}

fn batch(schema: &SchemaRef, rows: &[Value]) -> Result<RecordBatch> {
    let mut decoder = ReaderBuilder::new(schema.clone()).build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

async fn append(
    lake: &Lake,
    name: &str,
    schema: SchemaRef,
    rows: Vec<Value>,
    run_id: &str,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let spec = WriteSpec {
        table_name: format!("system.{name}"),
        partition_by: vec![],
        replace: Replace::Nothing,
        transactions: vec![],
        metadata: crate::ingest::run_metadata(run_id, "runlog"),
        description: None,
        symlink_manifest: false,
        upsert: None,
    };
    let url = lake.url(&crate::catalog::layer_folder("system", name));
    let table = delta::ensure_table(&url, lake.storage_options(), &schema, &spec).await?;
    let b = batch(&schema, &rows)?;
    let stream = Box::pin(RecordBatchStreamAdapter::new(
        schema.clone(),
        futures::stream::iter(vec![Ok(b)]),
    ));
    delta::write(table, vec![stream], &spec).await?;
    Ok(())
}

pub async fn record(lake: &Lake, report: &RunReport) -> Result<()> {
    let run = &report.run_id;
    let started = report.started_at.to_rfc3339();
    let runs = append(
        lake,
        "runs",
        runs_schema(),
        vec![
            json!({"run_id": run, "started_at": started, "seconds": report.seconds, "status": crate::report::status(report), "errors": report.errors.join("\n")}),
        ],
        run,
    );
    if report.changed_nothing() {
        // A run that found nothing to do is one row in system.runs
        // (status `unchanged`), not a page of zero steps per cron tick.
        return runs.await;
    }
    let mut steps = Vec::new();
    for s in &report.sources {
        steps.push(json!({
            "run_id": run, "step": format!("bronze.{}", s.name), "kind": "source", "status": s.status,
            "files_ingested": s.report.files.iter().filter(|f| f.refused.is_none()).count(),
            "files_refused": s.report.files.iter().filter(|f| f.refused.is_some()).count(),
            "lines_landed": s.report.lines, "reconciled": s.report.reconciled,
            "rows_in": s.report.rows + s.report.rejected, "rows_written": s.report.rows, "rows_rejected": s.report.rejected,
            "duplicates": 0, "version": s.report.version, "seconds": s.seconds, "message": s.message,
        }));
    }
    // A landed file no source reads is a step of its own, so that a
    // dashboard over system.steps sees it.
    for file in &report.unread {
        steps.push(json!({
            "run_id": run, "step": file, "kind": "unread_file", "status": "not read",
            "files_ingested": 0, "files_refused": null, "lines_landed": null, "reconciled": null,
            "rows_in": null, "rows_written": null, "rows_rejected": null, "duplicates": null,
            "version": null, "seconds": null,
            "message": "landed under landing/ but matches no source's `files` glob",
        }));
    }
    let mut rules = Vec::new();
    for m in &report.models {
        let r = &m.report;
        // A model that ran says how (full and why, incremental and what,
        // backfill and which days) where a failed one says why it failed.
        let message = m
            .message
            .clone()
            .or_else(|| (!r.strategy.is_empty()).then(|| r.strategy.clone()));
        steps.push(json!({
            "run_id": run, "step": r.table, "kind": "model", "status": m.status,
            "files_ingested": null, "files_refused": null, "lines_landed": null, "reconciled": r.reconciled, "rows_in": r.rows_in, "rows_written": r.rows_written, "rows_rejected": r.quarantined,
            "duplicates": r.duplicates, "version": r.version, "seconds": r.seconds, "message": message,
        }));
        for rule in &r.rules {
            rules.push(json!({
                "run_id": run, "model": r.table, "rule": rule.name, "action": rule.action, "check": rule.check,
                "evaluated": rule.evaluated, "passed": rule.evaluated - rule.failed, "failed": rule.failed, "quarantined": rule.quarantined,
            }));
        }
    }
    // Three tables, three commits: written at the same time (each is an
    // open, a small file and a commit; one after another they were about a
    // tenth of a second at the end of every run).
    futures::try_join!(
        runs,
        append(lake, "steps", steps_schema(), steps, run),
        append(lake, "expectations", expectations_schema(), rules, run),
    )?;
    Ok(())
}
