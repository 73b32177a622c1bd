//! Expectations and quarantine: rules planned as boolean expressions over a
//! model's result ([`plan_rules`]), and the classification of each batch by
//! their values ([`classify`], which the staging plan's check runs): rows
//! failing a `drop` rule are quarantined with the first failing rule's name
//! as `_reason`; `warn` rules are counted; a `fail` rule stops the model (so
//! it commits nothing) and keeps one offending row for the error. Rules see
//! every column of the result, `_`-prefixed lineage columns too.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{filter_record_batch, not};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::{DFSchema, SchemaError};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
use crate::pipeline::{file_error, nearest, Action, Expectation};

pub const REASON: &str = "_reason";

/// Counts of one rule over one model run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleResult {
    pub name: String,
    pub action: String,
    pub check: String,
    /// Rows the rule was evaluated on.
    pub evaluated: u64,
    /// Rows for which the rule was not TRUE.
    pub failed: u64,
    /// Rows quarantined with this rule as their reason.
    pub quarantined: u64,
}

/// The schema of a model's quarantine table: the result's columns, then the
/// reason, the run and the time.
pub fn quarantine_schema(result: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = result
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(REASON, DataType::Utf8, true));
    fields.push(Field::new("_run_id", DataType::Utf8, true));
    fields.push(Field::new(
        "_quarantined_at",
        crate::delta::utc_timestamp(),
        true,
    ));
    Arc::new(Schema::new(fields))
}

/// Counts of one rule over some rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleCounts {
    pub evaluated: u64,
    pub failed: u64,
    pub quarantined: u64,
}

/// What the checks saw over some rows; counts of parts add up.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub rows_in: u64,
    pub quarantined: u64,
    pub rules: Vec<RuleCounts>,
}

impl Counts {
    pub fn new(rules: usize) -> Self {
        Self {
            rows_in: 0,
            quarantined: 0,
            rules: vec![RuleCounts::default(); rules],
        }
    }

    pub fn add(&mut self, other: &Counts) {
        self.rows_in += other.rows_in;
        self.quarantined += other.quarantined;
        if self.rules.len() < other.rules.len() {
            self.rules.resize(other.rules.len(), RuleCounts::default());
        }
        for (a, b) in self.rules.iter_mut().zip(&other.rules) {
            a.evaluated += b.evaluated;
            a.failed += b.failed;
            a.quarantined += b.quarantined;
        }
    }

    /// The per-rule results of a model, as the run report shows them.
    pub fn results(&self, rules: &[Expectation]) -> Vec<RuleResult> {
        rules
            .iter()
            .zip(&self.rules)
            .map(|(r, c)| RuleResult {
                name: r.name.clone(),
                action: format!("{:?}", r.action).to_lowercase(),
                check: r.check.clone(),
                evaluated: c.evaluated,
                failed: c.failed,
                quarantined: c.quarantined,
            })
            .collect()
    }
}

/// Where and how quarantined rows are described.
pub struct Quarantine<'a> {
    pub model: &'a str,
    pub rules: &'a [&'a Expectation],
    pub schema: &'a SchemaRef,
    pub run_id: &'a str,
}

/// Classifies the rows of `batch` by the rules' values on it (one boolean
/// per row and rule): rows failing a `drop` rule are quarantined with the
/// first such rule as reason; `warn` and `fail` rules look at the rows that
/// stay, and a failing `fail` rule is an error with one offending row.
/// Returns which rows stay (`None`: all of them) and the quarantined rows;
/// the staging plan keeps fewer columns than it quarantines, and filters
/// only those. Adds what it saw to `counts`.
pub fn classify(
    q: &Quarantine<'_>,
    values: &[BooleanArray],
    batch: &RecordBatch,
    counts: &mut Counts,
) -> Result<(Option<BooleanArray>, Option<RecordBatch>)> {
    let n = batch.num_rows();
    counts.rows_in += n as u64;
    let mut reasons: Vec<Option<&str>> = vec![None; n];
    let fails: Vec<BooleanArray> = values
        .iter()
        .map(|v| not(&true_mask(v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(DataFusionError::from)?;
    // Drop rules first, in declared order: the first failing one is the reason.
    for (i, failed) in fails.iter().enumerate() {
        let rule = q.rules[i];
        if rule.action != Action::Drop {
            continue;
        }
        let c = &mut counts.rules[i];
        c.evaluated += n as u64;
        c.failed += failed.true_count() as u64;
        for (row, reason) in reasons.iter_mut().enumerate() {
            if failed.value(row) && reason.is_none() {
                *reason = Some(rule.name.as_str());
                c.quarantined += 1;
            }
        }
    }
    // Warn and fail rules look at the rows that stay.
    let kept_mask = BooleanArray::from(reasons.iter().map(|r| r.is_none()).collect::<Vec<_>>());
    for (i, failed) in fails.iter().enumerate() {
        let rule = q.rules[i];
        if rule.action == Action::Drop {
            continue;
        }
        let kept_failed: Vec<bool> = (0..n)
            .map(|r| kept_mask.value(r) && failed.value(r))
            .collect();
        let count = kept_failed.iter().filter(|b| **b).count() as u64;
        let c = &mut counts.rules[i];
        c.evaluated += kept_mask.true_count() as u64;
        c.failed += count;
        if rule.action == Action::Fail && count > 0 {
            let row = kept_failed.iter().position(|b| *b).unwrap_or(0);
            return Err(Error::ExpectationFailed {
                model: q.model.to_string(),
                rule: rule.name.clone(),
                failed: count,
                example: describe_row(batch, row),
            });
        }
    }
    let dropped = n - kept_mask.true_count();
    if dropped == 0 {
        return Ok((None, None));
    }
    counts.quarantined += dropped as u64;
    let drop_mask = not(&kept_mask).map_err(DataFusionError::from)?;
    let bad = filter_record_batch(batch, &drop_mask).map_err(DataFusionError::from)?;
    let reason_col: StringArray = reasons.iter().filter(|r| r.is_some()).copied().collect();
    let mut columns: Vec<ArrayRef> = bad.columns().to_vec();
    columns.push(Arc::new(reason_col));
    columns.push(Arc::new(StringArray::from(vec![q.run_id; dropped])));
    // When these rows were checked, not when the run started.
    let now = chrono::Utc::now().timestamp_micros();
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(vec![now; dropped]).with_timezone("UTC"),
    ));
    let quarantined =
        RecordBatch::try_new(q.schema.clone(), columns).map_err(DataFusionError::from)?;
    Ok((Some(kept_mask), Some(quarantined)))
}

/// TRUE where the value is TRUE; NULL counts as not TRUE.
fn true_mask(v: &BooleanArray) -> BooleanArray {
    match v.nulls() {
        Some(n) => BooleanArray::new(v.values() & n.inner(), None),
        None => BooleanArray::new(v.values().clone(), None),
    }
}

fn describe_row(batch: &RecordBatch, row: usize) -> String {
    let opts = FormatOptions::default().with_null("NULL");
    let schema = batch.schema();
    let parts: Vec<String> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(col, field)| {
            let value = ArrayFormatter::try_new(col.as_ref(), &opts)
                .map(|f| f.value(row).to_string())
                .unwrap_or_else(|_| "?".into());
            format!("{}={}", field.name(), value)
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Each expectation's check as a boolean expression over the model's
/// result. `schema` holds the result's columns by their unqualified names,
/// the names a settings file uses. Errors point at the rule's line.
pub fn plan_rules(
    ctx: &SessionContext,
    schema: &DFSchema,
    expectations: &[Expectation],
    settings_file: &Path,
) -> Result<Vec<Expr>> {
    let mut out = Vec::with_capacity(expectations.len());
    for e in expectations {
        let at = |message: String| {
            file_error(
                settings_file,
                e.line,
                format!("expectation `{}` (`{}`) {message}", e.name, e.check),
            )
        };
        let expr = ctx.parse_sql_expr(&e.check, schema).map_err(|err| {
            match err.find_root() {
                DataFusionError::SchemaError(inner, _) => match inner.as_ref() {
                    SchemaError::FieldNotFound { field, .. } => {
                        let returned: Vec<&str> =
                            schema.fields().iter().map(|f| f.name().as_str()).collect();
                        let hint = nearest(&field.name, returned.iter().copied())
                            .map(|n| format!(" Did you mean {n}?"))
                            .unwrap_or_default();
                        at(format!(
                            "uses column `{}`, which the model's SELECT does not return (it returns {}).{hint}",
                            field.name,
                            returned.join(", ")
                        ))
                    }
                    other => at(format!("cannot be planned: {other}")),
                },
                root => at(format!("cannot be planned: {}", root.message())),
            }
        })?;
        let expr = match expr
            .get_type(schema)
            .map_err(|err| at(format!("cannot be planned: {}", err.message())))?
        {
            DataType::Boolean => expr,
            DataType::Null => datafusion::prelude::cast(expr, DataType::Boolean),
            other => {
                return Err(at(format!(
                    "must be a boolean expression (TRUE passes), not {other}"
                )))
            }
        };
        out.push(expr);
    }
    Ok(out)
}

/// The error for a model that would quarantine more than `limit_pct` of
/// its `rows_in` rows, naming the rules that quarantined them; `None`
/// when it is within the limit.
pub fn over_limit(
    model: &str,
    rows_in: u64,
    rules: &[RuleResult],
    limit_pct: f64,
) -> Option<Error> {
    let quarantined: u64 = rules.iter().map(|r| r.quarantined).sum();
    if rows_in == 0 || (quarantined as f64) * 100.0 / (rows_in as f64) <= limit_pct {
        return None;
    }
    let mut by_rule: Vec<&RuleResult> = rules.iter().filter(|r| r.quarantined > 0).collect();
    by_rule.sort_by(|a, b| b.quarantined.cmp(&a.quarantined));
    let rules = by_rule
        .iter()
        .map(|r| format!("`{}` ({}) {} rows", r.name, r.check, r.quarantined))
        .collect::<Vec<_>>()
        .join(", ");
    Some(Error::QuarantineThreshold {
        model: model.to_string(),
        quarantined,
        total: rows_in,
        limit_pct,
        rules,
    })
}
