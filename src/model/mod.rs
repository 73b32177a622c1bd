//! Runs one SQL model: plans its SELECT, checks expectations as rows stream
//! by, deduplicates by `unique_key` (latest `sequence_by` wins), and writes
//! the result with the model's mode as one Delta commit; quarantined rows go
//! to the model's quarantine table first. A model whose inputs and SQL have
//! not changed since its last commit is skipped, so a re-run changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::ScalarValue;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{
    EmptyRelation, Expr, Filter, LogicalPlan, TableScan, TableScanBuilder,
};
use datafusion::prelude::lit;
use datafusion::prelude::{DataFrame, SessionContext};
use deltalake::DeltaTable;
use serde_json::{json, Value};

use crate::catalog::table_folder;
use crate::cluster::stage::StageRange;
use crate::delta::{self, Replace, WriteSpec};
use crate::error::{Error, Result};
use crate::pipeline::{Model, WriteMode};
use crate::quality::{self, RuleResult};
use crate::storage::Lake;

mod diagnose;
mod merge;
pub mod preflight;
mod restrict;
mod stage;

pub use diagnose::explain;
mod strategy;

use restrict::{restrict_scans_to_range, restrict_to_files, restrict_to_partitions};
use strategy::{decide, memory_budget, Strategy};

/// What running one model did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelReport {
    pub table: String,
    pub skipped: bool,
    pub rows_in: u64,
    pub rows_written: u64,
    pub quarantined: u64,
    pub duplicates: u64,
    pub files: usize,
    pub version: Option<i64>,
    pub seconds: f64,
    /// How the model ran: `full (why)` or `incremental (what)`.
    pub strategy: String,
    /// The same for machines: `full`, `incremental`, `backfill` or
    /// `unchanged` (empty when the model did not run).
    pub strategy_kind: &'static str,
    pub rules: Vec<RuleResult>,
    /// Rows in = written + quarantined + duplicates, and the written and
    /// quarantined counts match the rows the Delta log records.
    pub reconciled: bool,
}

pub fn quarantine_folder(model: &Model) -> String {
    crate::catalog::quarantine_folder(&model.layer, &model.name)
}

/// Dates a backfill recomputes, both ends included; `None` leaves an end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DateRange {
    pub from: Option<chrono::NaiveDate>,
    pub to: Option<chrono::NaiveDate>,
}

impl std::fmt::Display for DateRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = |d: Option<chrono::NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
        write!(f, "{}..{}", end(self.from), end(self.to))
    }
}

/// How much of a model a run recomputes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Refresh {
    /// Skip when nothing changed, else incremental when possible, else full.
    #[default]
    Auto,
    /// Rebuild from the inputs whole (`--full-refresh`).
    Full,
    /// Recompute the rows whose date partition lies in the range from the
    /// inputs as they are now and replace exactly those partitions
    /// (`--from/--to`); every other partition keeps its files.
    Range(DateRange),
}

/// Every input table, opened once per model run at its current version
/// (`None`: not created yet). The versions are what the model's commit
/// records; the log between them and the last run's is what changed.
type Inputs = BTreeMap<String, Option<DeltaTable>>;

async fn open_inputs(lake: &Lake, model: &Model) -> Result<Inputs> {
    let mut out = BTreeMap::new();
    for input in &model.inputs {
        let (schema, table) = input.split_once('.').unwrap_or(("", input));
        let folder = table_folder(schema, table)
            .ok_or_else(|| Error::Internal(format!("unknown schema in `{input}`")))?;
        out.insert(
            input.clone(),
            delta::open(&lake.url(&folder), lake.storage_options()).await?,
        );
    }
    Ok(out)
}

/// Each input's data version (`delta::data_version`): compacting an input
/// is not a change the model must follow.
async fn versions(inputs: &Inputs) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for (name, t) in inputs {
        let v = match t {
            Some(t) => delta::data_version(t).await?,
            None => -1,
        };
        out.insert(name.clone(), v);
    }
    Ok(out)
}

/// A fingerprint of what defines the model's result (SQL and settings).
fn definition_hash(model: &Model) -> String {
    let settings = std::fs::read(model.sql_file.with_extension("toml")).unwrap_or_default();
    let h = crate::delta::fnv1a(&[model.sql.as_bytes(), &settings]);
    format!("{h:016x}")
}

/// The commit info of the model's last own commit (compaction and vacuum
/// commits after it are skipped: they record no run).
async fn last_commit_info(table: &DeltaTable) -> Result<Option<serde_json::Map<String, Value>>> {
    Ok(delta::data_commits(table, 64)
        .await?
        .into_iter()
        .next()
        .map(|(_, info)| info.info.into_iter().collect()))
}

pub async fn run_model(
    ctx: &SessionContext,
    lake: &Lake,
    model: &Model,
    run_id: &str,
    at: chrono::DateTime<chrono::Utc>,
    refresh: Refresh,
) -> Result<ModelReport> {
    let started = Instant::now();
    let table_name = model.table();
    let mut report = ModelReport {
        table: table_name.clone(),
        ..Default::default()
    };
    let opts = lake.storage_options().clone();
    let url = lake.url(&crate::catalog::layer_folder(&model.layer, &model.name));
    let settings = &model.settings;
    let settings_file = model.sql_file.with_extension("toml");
    if matches!(refresh, Refresh::Range(_)) && settings.mode == WriteMode::Append {
        return Err(crate::pipeline::file_error(
            &settings_file,
            1,
            "an append model cannot be backfilled with --from/--to: its next incremental run would append the range's rows again. Rebuild it with --full-refresh",
        ));
    }
    let tables = open_inputs(lake, model).await?;
    let inputs = versions(&tables).await?;
    let hash = definition_hash(model);
    let existing = delta::open(&url, &opts).await?;
    let last = match existing.as_ref() {
        Some(t) => last_commit_info(t).await?,
        None => None,
    };
    if refresh == Refresh::Auto {
        if let Some(info) = &last {
            let same_inputs = info.get("lakehouse.inputs") == Some(&json!(inputs));
            let same_def = info.get("lakehouse.definition") == Some(&json!(hash));
            if same_inputs && same_def {
                report.skipped = true;
                report.reconciled = true;
                report.strategy = "unchanged".into();
                report.strategy_kind = "unchanged";
                report.seconds = started.elapsed().as_secs_f64();
                return Ok(report);
            }
        }
    }
    let quarantine_last = match delta::open(&lake.url(&quarantine_folder(model)), &opts).await? {
        Some(q) => last_commit_info(&q).await?,
        None => None,
    };
    let strategy = match refresh {
        Refresh::Full => Strategy::Full("--full-refresh".into()),
        Refresh::Range(range) => Strategy::Range(range),
        Refresh::Auto => {
            decide(
                &tables,
                model,
                existing.as_ref(),
                memory_budget(ctx),
                last.as_ref(),
                quarantine_last.as_ref(),
                &inputs,
                &hash,
            )
            .await?
        }
    };
    tracing::info!(model = %table_name, strategy = %strategy.describe(), "planning");
    // Plan → stage → commit: the model runs as staging plans whose tasks
    // write the files (on a cluster's executors or in this process) and
    // this process commits what they wrote. The upsert of new rows into an
    // existing merge model is three such plans (`merge`).
    let upsert_into = match (settings.mode, &strategy) {
        (WriteMode::Merge, Strategy::Stream(_)) => existing,
        _ => None,
    };
    report.strategy = strategy.describe();
    report.strategy_kind = strategy.kind();

    // The SQL reads the inputs just opened, at the versions recorded above.
    let pins = crate::catalog::pin(
        ctx,
        tables
            .iter()
            .filter_map(|(n, t)| t.as_ref().map(|t| (n, t))),
    );
    let mut df = ctx.sql(&model.sql).await?;
    drop(pins);
    // A backfill's date column: the first date-typed partition column.
    let range = match &strategy {
        Strategy::Range(r) => {
            let column = settings.partition_by.iter().find(|c| {
                df.schema()
                    .field_with_unqualified_name(c)
                    .is_ok_and(|f| matches!(f.data_type(), DataType::Date32 | DataType::Date64))
            });
            let Some(column) = column else {
                return Err(crate::pipeline::file_error(
                    &settings_file,
                    1,
                    format!(
                        "--from/--to recompute a date range, but no partition_by column of this model is a DATE (partition_by = [{}]). Leave the model out with --select",
                        settings.partition_by.join(", ")
                    ),
                ));
            };
            Some((column.clone(), *r))
        }
        _ => None,
    };
    match &strategy {
        Strategy::Full(_) => {}
        Strategy::Stream(files) => df = restrict_to_files(&tables, df, files).await?,
        Strategy::Partitions(touched) => {
            df = restrict_to_partitions(df, touched, &settings.partition_by)?
        }
        Strategy::Range(_) => {
            // Each partition of a replace_partitions model is computed from
            // the same partition of its inputs (what that mode declares), so
            // their scans can be cut to the range too. Others read whole.
            if let (WriteMode::ReplacePartitions, Some((column, r))) = (settings.mode, &range) {
                df = restrict_scans_to_range(df, column, r)?;
            }
        }
    }
    let columns: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    preflight::check_columns(model, df.schema().as_arrow())?;

    // A rule that does not plan over the result fails here, before any
    // table is created (errors point at the rule's line).
    quality::plan_rules(
        ctx,
        &datafusion::common::DFSchema::try_from(df.schema().as_arrow().clone())?,
        &settings.expectations,
        &settings_file,
    )?;
    let quarantines = settings
        .expectations
        .iter()
        .any(|e| e.action == crate::pipeline::Action::Drop);
    let visible: Vec<String> = columns
        .iter()
        .filter(|c| !c.starts_with('_'))
        .cloned()
        .collect();
    // What the table's commit records as its inputs. A backfill does not
    // move the model's incremental position: it records the inputs of the
    // commit before it (none: the next run is full), so the next run still
    // takes whatever changed since; for merge and replace_partitions models
    // taking it again gives the same rows.
    let recorded_inputs = match &strategy {
        Strategy::Range(_) => last
            .as_ref()
            .and_then(|l| l.get("lakehouse.inputs").cloned()),
        _ => Some(json!(inputs)),
    };
    let quarantine_spec = WriteSpec {
        table_name: format!("quarantine.{}_{}", model.layer, model.name),
        partition_by: vec![],
        // A full run rebuilds the quarantine with the table; an incremental
        // one adds the rows of the new input. It always commits, recording
        // the input versions, so that a run that stopped between this commit
        // and the table's is recognised and redone in full.
        replace: match strategy {
            Strategy::Full(_) => Replace::All,
            _ => Replace::Nothing,
        },
        transactions: vec![model_txn(&table_name, at)],
        metadata: {
            let mut m = crate::ingest::run_metadata(run_id, &table_name);
            m.insert("lakehouse.inputs".into(), json!(inputs));
            m
        },
        description: Some(format!(
            "Rows of {table_name} that failed a `drop` expectation, with the rule as _reason"
        )),
        symlink_manifest: false,
        upsert: None,
    };
    // A model without `drop` rules never quarantines: it gets no table. A
    // backfill leaves the quarantine as it is: it is not partitioned by
    // date, and the rows of the range were quarantined when they arrived.
    let quarantine_table = if quarantines && range.is_none() {
        Some(
            delta::ensure_table(
                &lake.url(&quarantine_folder(model)),
                &opts,
                &quality::quarantine_schema(df.schema().as_arrow()),
                &quarantine_spec,
            )
            .await?,
        )
    } else {
        None
    };

    let mut metadata = crate::ingest::run_metadata(run_id, &table_name);
    if let Some(i) = &recorded_inputs {
        metadata.insert("lakehouse.inputs".into(), i.clone());
    }
    metadata.insert("lakehouse.definition".into(), json!(hash));
    let mut spec = WriteSpec {
        table_name: table_name.clone(),
        partition_by: settings.partition_by.clone(),
        // A full run rebuilds the table from its inputs whatever the mode.
        replace: match &strategy {
            Strategy::Full(_) => Replace::All,
            Strategy::Stream(_) => Replace::Nothing,
            Strategy::Partitions(p) => Replace::Partitions(p.clone()),
            Strategy::Range(r) => Replace::DateRange {
                column: range.as_ref().map(|(c, _)| c.clone()).unwrap_or_default(),
                from: r.from.map(|d| d.to_string()),
                to: r.to.map(|d| d.to_string()),
            },
        },
        transactions: vec![model_txn(&table_name, at)],
        metadata,
        description: settings.description.clone(),
        symlink_manifest: settings.symlink_manifest,
        upsert: None,
    };
    let table_schema = Arc::new(
        df.schema().as_arrow().project(
            &visible
                .iter()
                .map(|c| df.schema().as_arrow().index_of(c))
                .collect::<std::result::Result<Vec<_>, _>>()?,
        )?,
    );
    let upserting = upsert_into.is_some();
    let table = match upsert_into {
        Some(target) => target,
        None => delta::ensure_table(&url, &opts, &table_schema, &spec).await?,
    };
    let stage = stage::Stage {
        model: &table_name,
        table,
        write_to: None,
        quarantine: quarantine_table.map(|t| (t, &quarantine_spec)),
        run_id,
        range: range.as_ref().map(|(column, r)| StageRange {
            column: column.clone(),
            from: r.from.map(restrict::days),
            to: r.to.map(restrict::days),
        }),
    };
    if upserting {
        let merged =
            merge::upsert(ctx, lake, stage, df, settings, &settings_file, &mut spec).await?;
        let d = &merged.decision;
        report.strategy = format!(
            "{}: {} inserted, {} updated, {} stale; {} rewritten, {} appended to",
            report.strategy,
            d.inserted,
            d.updated,
            d.stale,
            crate::text::plural(merged.rewritten as u64, "partition"),
            merged.partitions.saturating_sub(merged.rewritten),
        );
        report.version = merged.version;
        report.rows_written = merged.offered.written;
        report.files = merged.files;
        report.rules = merged.offered.counts.results(&settings.expectations);
        account(
            &mut report,
            false,
            Counted {
                rows_in: merged.offered.counts.rows_in,
                quarantined: merged.offered.counts.quarantined,
                duplicates: merged.offered.duplicates,
                partitions: merged.partitions,
                log_agrees: merged.log_agrees,
            },
        );
        return finish(report, started);
    }
    // No partition to recompute: the commit records the inputs, and no
    // plan runs over nothing (on a cluster, Ballista's adaptive planning
    // replaces an empty stage with a node our operators cannot be planned
    // on).
    let nothing = matches!(&strategy, Strategy::Partitions(p) if p.is_empty());
    let done = stage
        .run(
            ctx,
            (!nothing).then_some(df),
            settings,
            &settings_file,
            &mut spec,
        )
        .await?;
    report.version = done.version;
    report.rows_written = done.written;
    report.files = done.files;
    report.rules = done.counts.results(&settings.expectations);
    account(
        &mut report,
        range.is_some(),
        Counted {
            rows_in: done.counts.rows_in,
            quarantined: done.counts.quarantined,
            duplicates: done.duplicates,
            partitions: done.partitions,
            log_agrees: done.log_agrees,
        },
    );
    finish(report, started)
}

/// What a model's staging counted, wherever it ran.
struct Counted {
    rows_in: u64,
    quarantined: u64,
    duplicates: u64,
    /// Table partitions the new files went to.
    partitions: usize,
    /// The Delta log's row counts equal the written and quarantined ones.
    log_agrees: bool,
}

/// Fills the report's counts and reconciliation (`rows_written` is set).
/// A backfill reads every input row but writes only the range: the rows
/// outside it are neither duplicates nor quarantined here, so only the
/// Delta log is checked; otherwise rows in = written + quarantined +
/// duplicates must hold too.
fn account(report: &mut ModelReport, backfill: bool, counted: Counted) {
    if backfill {
        report.strategy = format!(
            "{}: {} partitions, {} rows",
            report.strategy, counted.partitions, report.rows_written
        );
        report.rows_in = report.rows_written;
        report.reconciled = counted.log_agrees;
        return;
    }
    report.rows_in = counted.rows_in;
    report.quarantined = counted.quarantined;
    report.duplicates = counted.duplicates;
    report.reconciled = counted.log_agrees
        && reconciles(
            report.rows_in,
            report.rows_written,
            report.quarantined,
            report.duplicates,
        );
}

/// Fails a report whose counts do not reconcile; stamps its time.
fn finish(mut report: ModelReport, started: Instant) -> Result<ModelReport> {
    if !report.reconciled {
        return Err(Error::Table {
            table: report.table.clone(),
            message: format!(
                "reconciliation failed: rows in {} != written {} + quarantined {} + duplicates {}, or the Delta log disagrees with these counts. This is a bug: please report it with the lake's _delta_log",
                report.rows_in, report.rows_written, report.quarantined, report.duplicates
            ),
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Every row that entered the checks is written, quarantined or collapsed
/// as a duplicate: three counts taken in three places.
fn reconciles(rows_in: u64, written: u64, quarantined: u64, duplicates: u64) -> bool {
    written
        .checked_add(quarantined)
        .and_then(|n| n.checked_add(duplicates))
        == Some(rows_in)
}

/// The app transaction every model commit carries: it makes a commit with
/// no data (an incremental run with nothing to change) still a commit.
fn model_txn(table: &str, at: chrono::DateTime<chrono::Utc>) -> deltalake::kernel::Transaction {
    deltalake::kernel::Transaction::new(format!("lakehouse-model:{table}"), at.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::reconciles;

    #[test]
    fn a_lost_row_fails_reconciliation() {
        // 10 in, 9 written, none quarantined or collapsed: one row lost. When
        // duplicates were the remainder, it was reported as a duplicate.
        assert!(!reconciles(10, 9, 0, 0));
        assert!(!reconciles(10, 9, 0, 2));
        assert!(reconciles(10, 7, 2, 1));
        assert!(reconciles(0, 0, 0, 0));
        assert!(!reconciles(u64::MAX, u64::MAX, 1, 0));
    }
}
