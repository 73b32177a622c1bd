//! A model as plan → stage → commit. The plan is the model's SELECT with
//! its expectations as bits of integer columns; staging is one plan whose
//! tasks check, deduplicate, write the table's and the quarantine's Parquet
//! files and return what they wrote as data ([`crate::cluster::stage`]); the commit is
//! made here, from that data alone, so it does not matter where the tasks
//! ran (a Ballista cluster's executors, or this process).

use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::common::DFSchema;
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan};
use datafusion::prelude::{lit, when, DataFrame, SessionContext};
use deltalake::DeltaTable;
use serde_json::json;

use crate::cluster::stage::{
    encode_schema, failed_column, Message, StageNode, StageRange, StageSpec, RULES_PER_COLUMN,
};
use crate::delta::{self, Staged, WriteSpec};
use crate::error::{Error, Result};
use crate::pipeline::ModelSettings;
use crate::quality::{self, Counts};

/// The tables one model's staging writes to.
pub(super) struct Stage<'a> {
    pub model: &'a str,
    pub table: DeltaTable,
    /// Where the table's files are written when not into the table's own
    /// folder: an upsert stages the rows it offers in a scratch folder.
    /// Such rows are only read back, so they are written unpartitioned, one
    /// file per task.
    pub write_to: Option<url::Url>,
    pub quarantine: Option<(DeltaTable, &'a WriteSpec)>,
    pub run_id: &'a str,
    /// A backfill's dates (`--from/--to`): only rows of the range are written.
    pub range: Option<StageRange>,
}

/// What one staging job wrote and counted, from its messages.
#[derive(Default)]
pub(super) struct Staging {
    /// Files of the table (or of the scratch folder it was written to).
    pub adds: Vec<deltalake::kernel::Add>,
    pub quarantine_adds: Vec<deltalake::kernel::Add>,
    pub counts: Counts,
    pub duplicates: u64,
    /// Rows written to the table's files.
    pub written: u64,
}

/// What staging and the commits did.
pub(super) struct Done {
    pub version: Option<i64>,
    pub written: u64,
    pub files: usize,
    /// Table partitions the new files went to.
    pub partitions: usize,
    pub counts: Counts,
    pub duplicates: u64,
    /// The rows the Delta log records in the new files equal the rows the
    /// tasks say they wrote, for the table and the quarantine.
    pub log_agrees: bool,
}

impl Stage<'_> {
    /// Stages the model (`None`: nothing to recompute, no plan runs),
    /// then commits its quarantine and its table.
    pub async fn run(
        self,
        ctx: &SessionContext,
        df: Option<DataFrame>,
        settings: &ModelSettings,
        settings_file: &std::path::Path,
        spec: &mut WriteSpec,
    ) -> Result<Done> {
        let staging = match df {
            Some(df) => self.stage(ctx, df, settings, settings_file).await?,
            None => Staging {
                counts: Counts::new(settings.expectations.len()),
                ..Default::default()
            },
        };
        let Staging {
            adds,
            quarantine_adds,
            counts,
            duplicates,
            written,
        } = staging;
        // The quarantine commits first: a crash before the table's commit
        // leaves their recorded inputs apart, and the next run is full.
        // The quarantine's commit holds every row a `drop` rule caught. A
        // backfill has none (those rows were quarantined when they came),
        // and a model without `drop` rules catches none.
        let quarantine_agrees = match self.quarantine {
            Some((table, q_spec)) => {
                let staged = Staged::from_adds(quarantine_adds, counts.quarantined);
                delta::commit(table, staged, q_spec).await?.1.rows_in_files == counts.quarantined
            }
            None => self.range.is_some() || counts.quarantined == 0,
        };
        spec.metadata.insert(
            "lakehouse.metrics".into(),
            json!({
                "rowsIn": counts.rows_in,
                "rowsQuarantined": counts.quarantined,
                "duplicatesCollapsed": duplicates,
                "rules": counts.results(&settings.expectations),
            }),
        );
        let (_, done) = delta::commit(self.table, Staged::from_adds(adds, written), spec).await?;
        Ok(Done {
            version: done.version,
            written,
            files: done.files_added,
            partitions: done.partitions,
            log_agrees: done.rows_in_files == written && quarantine_agrees,
            counts,
            duplicates,
        })
    }

    /// Runs the model's staging plan (check, deduplicate, write) wherever
    /// the session runs plans, and reads what its tasks wrote and counted.
    /// Commits nothing.
    pub async fn stage(
        &self,
        ctx: &SessionContext,
        df: DataFrame,
        settings: &ModelSettings,
        settings_file: &std::path::Path,
    ) -> Result<Staging> {
        let model = self.model;
        // Expectations become columns of the plan.
        let mut exprs: Vec<Expr> = df
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        let unqualified = DFSchema::try_from(df.schema().as_arrow().clone())?;
        let rules = quality::plan_rules(ctx, &unqualified, &settings.expectations, settings_file)?;
        exprs.extend(failed_rule_columns(rules)?);
        let checked = df.select(exprs)?;
        let stage = StageSpec {
            model: model.to_string(),
            table_url: match &self.write_to {
                Some(url) => url.to_string(),
                None => self.table.table_url().to_string(),
            },
            table_schema: encode_schema(delta::table_arrow_schema(&self.table)?.as_ref())?,
            // Rows staged elsewhere (an upsert's offer) are only read
            // back: one file per task, not one per partition.
            partition_by: match &self.write_to {
                Some(_) => vec![],
                None => settings.partition_by.clone(),
            },
            quarantine: match &self.quarantine {
                Some((q, _)) => Some((
                    q.table_url().to_string(),
                    encode_schema(delta::table_arrow_schema(q)?.as_ref())?,
                )),
                None => None,
            },
            rules: settings.expectations.clone(),
            unique_key: settings.unique_key.clone(),
            sequence_by: settings.sequence_by.clone(),
            run_id: self.run_id.to_string(),
            range: self.range.clone(),
        };
        let node = StageNode::new(checked.logical_plan().clone(), &stage)?;
        let plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
        let batches = crate::cluster::collect_bounded(ctx, plan)
            .await
            .map_err(|e| match e {
                Error::DataFusion(e) => typed(e),
                other => other,
            })?;

        let mut adds = Vec::new();
        let mut quarantine_adds = Vec::new();
        let mut counts = Counts::new(settings.expectations.len());
        let (mut duplicates, mut written) = (0u64, 0u64);
        for batch in &batches {
            for text in batch.column(0).as_string::<i32>().iter().flatten() {
                let message = Message::parse(text).map_err(|e| Error::Table {
                    table: model.to_string(),
                    message: e.to_string(),
                })?;
                match message {
                    Message::Table(add) => adds.push(add),
                    Message::Quarantine(add) => quarantine_adds.push(add),
                    Message::Checked(checks) => counts.add(&checks),
                    Message::Collapsed(n) => duplicates += n,
                    Message::Written(n) => written += n,
                    Message::Ingested(..) => {
                        return Err(Error::Internal(format!(
                            "a staging task of {model} sent an ingest report"
                        )))
                    }
                }
            }
        }
        if let Some(err) = quality::over_limit(
            model,
            counts.rows_in,
            &counts.results(&settings.expectations),
            settings.max_quarantine_pct,
        ) {
            return Err(err);
        }
        Ok(Staging {
            adds,
            quarantine_adds,
            counts,
            duplicates,
            written,
        })
    }
}

/// The failed-rule columns ([`failed_column`]) of the planned `rules`:
/// per row, the sum of the bits of the rules that are FALSE or NULL on it.
fn failed_rule_columns(rules: Vec<Expr>) -> Result<Vec<Expr>> {
    let mut columns: Vec<Expr> = Vec::new();
    for (j, chunk) in rules.chunks(RULES_PER_COLUMN).enumerate() {
        let mut sum: Option<Expr> = None;
        for (b, check) in chunk.iter().enumerate() {
            let bit = when(coalesce(vec![check.clone(), lit(false)]), lit(0u64))
                .otherwise(lit(1u64 << b))?;
            sum = Some(match sum {
                Some(s) => s + bit,
                None => bit,
            });
        }
        if let Some(sum) = sum {
            columns.push(sum.alias(failed_column(j)));
        }
    }
    Ok(columns)
}

/// The project's own error when a staging task in this process failed with
/// one (a failing `fail` expectation); a remote task's error is its text.
fn typed(e: datafusion::error::DataFusionError) -> Error {
    if let Some(Error::ExpectationFailed {
        model,
        rule,
        failed,
        example,
    }) = crate::cluster::stage::task_cause(&e)
    {
        return Error::ExpectationFailed {
            model: model.clone(),
            rule: rule.clone(),
            failed: *failed,
            example: example.clone(),
        };
    }
    e.into()
}
