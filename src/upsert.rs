//! Upsert by key, one partition at a time (copy-on-write), for `merge`
//! models running incrementally. It replaces delta-rs's MERGE, which read
//! the whole target and held a writer open for every partition it touched
//! (3.4 GB for a 1% batch spread over 1,825 partitions of a 10M-row table).
//!
//! The incoming rows (already checked and deduplicated) are joined with the
//! target's key, partition and sequence columns only. A row *wins* when its
//! key is new or its sequence is greater or equal to the stored one (NULL
//! lowest, ties to the incoming row). Then:
//!
//! - a partition that holds a row some winner replaces is rewritten: its
//!   files are read, the replaced rows left out, the winners landing there
//!   added, one new file per partition;
//! - a winner landing in a partition that loses nothing is appended as a new
//!   file, unless that partition already has [`MAX_FILES_PER_PARTITION`]
//!   files, in which case it is rewritten too (compaction on write, so
//!   repeated small runs never leave a partition in hundreds of files).
//!
//! Memory is the incoming batch (the join's build side and the winners)
//! plus one partition per writer; the target is streamed. This module knows
//! DataFusion and Delta; the pipeline's settings arrive as column names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::JoinType;
use datafusion::logical_expr::{cast as cast_expr, Expr};
use datafusion::prelude::{ident, lit, DataFrame, SessionContext};
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};

/// A partition reaching this many files is rewritten into one when it gains
/// rows, instead of gaining another file.
pub const MAX_FILES_PER_PARTITION: usize = 8;

/// Sorted `(column, value)` pairs naming one partition, as the Delta log
/// records partition values.
pub type PartitionKey = Vec<(String, Option<String>)>;

/// The columns that drive the upsert.
pub struct Columns<'a> {
    pub keys: &'a [String],
    pub partition_by: &'a [String],
    /// Stored sequence columns, compared in order, NULL lowest.
    pub sequence: &'a [String],
}

/// What to write and what it replaces.
pub struct Prepared {
    /// The rewritten partitions' surviving rows and every winner, in the
    /// incoming rows' schema.
    pub rows: DataFrame,
    /// Partitions whose files the commit removes (all of them rewritten).
    pub rewrite: BTreeSet<PartitionKey>,
    /// Incoming rows after deduplication.
    pub offered: u64,
    /// Winners whose key was not in the table.
    pub inserted: u64,
    /// Winners that replace a stored row.
    pub updated: u64,
    /// Incoming rows older than the stored row for their key: left out.
    pub stale: u64,
    /// The table's rows before the upsert, by the Delta log.
    pub rows_before: u64,
}

/// `s` is newer than or as new as `t` by the columns in order, NULL lowest.
fn newer(pairs: &[(Expr, Expr)]) -> Expr {
    let Some(((s, t), rest)) = pairs.split_first() else {
        return lit(true);
    };
    if rest.is_empty() {
        return t.clone().is_null().or(s.clone().gt_eq(t.clone()));
    }
    let tie = (t.clone().is_null().and(s.clone().is_null())).or(s.clone().eq(t.clone()));
    (t.clone().is_null().and(s.clone().is_not_null()))
        .or(s.clone().gt(t.clone()))
        .or(tie.and(newer(rest)))
}

fn strings(batch: &RecordBatch, name: &str) -> Result<Arc<dyn Array>> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("upsert: column {name} missing")))?;
    Ok(cast(column, &DataType::Utf8)?)
}

fn key_at(partition_by: &[String], columns: &[Arc<dyn Array>], row: usize) -> PartitionKey {
    let mut key: PartitionKey = partition_by
        .iter()
        .zip(columns)
        .map(|(c, a)| {
            let v = (!a.is_null(row)).then(|| a.as_string::<i32>().value(row).to_string());
            (c.clone(), v)
        })
        .collect();
    key.sort();
    key
}

/// Joins `incoming` with `target` and plans the rewrite. Executes the
/// incoming plan once (its quarantine stream is drained alongside by the
/// caller).
pub async fn prepare(
    ctx: &SessionContext,
    target: &DeltaTable,
    incoming: DataFrame,
    columns: &Columns<'_>,
) -> Result<Prepared> {
    let schema: SchemaRef = Arc::new(incoming.schema().as_arrow().clone());
    let out_fields: Vec<(String, DataType)> = incoming
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let type_of = |name: &str| -> Result<DataType> {
        out_fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| Error::Internal(format!("upsert: the model returns no column `{name}`")))
    };

    // The stored side: key, partition and sequence columns only.
    let stored = ctx.read_table(target.table_provider().await?)?;
    let mut projection = vec![];
    for k in columns.keys {
        projection.push(cast_expr(ident(k), type_of(k)?).alias(format!("__tk_{k}")));
    }
    for p in columns.partition_by {
        projection.push(cast_expr(ident(p), DataType::Utf8).alias(format!("__tp_{p}")));
    }
    for q in columns.sequence {
        projection.push(cast_expr(ident(q), type_of(q)?).alias(format!("__tq_{q}")));
    }
    projection.push(lit(true).alias("__t_present"));
    let stored = stored.select(projection)?;

    let left: Vec<&str> = columns.keys.iter().map(|k| k.as_str()).collect();
    let right: Vec<String> = columns.keys.iter().map(|k| format!("__tk_{k}")).collect();
    let right: Vec<&str> = right.iter().map(|k| k.as_str()).collect();
    let pairs: Vec<(Expr, Expr)> = columns
        .sequence
        .iter()
        .map(|q| (ident(q), ident(format!("__tq_{q}"))))
        .collect();
    let wins = ident("__t_present").is_null().or(newer(&pairs));
    let mut select: Vec<Expr> = out_fields.iter().map(|(n, _)| ident(n)).collect();
    for p in columns.partition_by {
        select.push(cast_expr(ident(p), DataType::Utf8).alias(format!("__sp_{p}")));
        select.push(ident(format!("__tp_{p}")));
    }
    select.push(ident("__t_present"));
    select.push(datafusion::functions::expr_fn::coalesce(vec![wins, lit(false)]).alias("__wins"));
    let joined = incoming
        .join(stored, JoinType::Left, &left, &right, None)?
        .select(select)?;

    let mut offered = 0u64;
    let mut inserted = 0u64;
    let mut updated = 0u64;
    let mut winners: Vec<RecordBatch> = vec![];
    let mut losing_partitions: BTreeSet<PartitionKey> = BTreeSet::new();
    let mut landing: BTreeSet<PartitionKey> = BTreeSet::new();
    let mut stream = joined.execute_stream().await?;
    while let Some(batch) = stream.try_next().await? {
        offered += batch.num_rows() as u64;
        let wins = batch
            .column_by_name("__wins")
            .map(|c| c.as_boolean().clone())
            .ok_or_else(|| Error::Internal("upsert: __wins missing".into()))?;
        let batch = filter_record_batch(&batch, &wins)?;
        if batch.num_rows() == 0 {
            continue;
        }
        let present = batch
            .column_by_name("__t_present")
            .cloned()
            .ok_or_else(|| Error::Internal("upsert: __t_present missing".into()))?;
        let stored_parts: Vec<Arc<dyn Array>> = columns
            .partition_by
            .iter()
            .map(|p| strings(&batch, &format!("__tp_{p}")))
            .collect::<Result<_>>()?;
        let new_parts: Vec<Arc<dyn Array>> = columns
            .partition_by
            .iter()
            .map(|p| strings(&batch, &format!("__sp_{p}")))
            .collect::<Result<_>>()?;
        for row in 0..batch.num_rows() {
            if present.is_null(row) {
                inserted += 1;
            } else {
                updated += 1;
                losing_partitions.insert(key_at(columns.partition_by, &stored_parts, row));
            }
            landing.insert(key_at(columns.partition_by, &new_parts, row));
        }
        let keep: Vec<usize> = (0..out_fields.len()).collect();
        winners.push(batch.project(&keep)?);
    }
    let stale = offered - inserted - updated;

    // Which files belong to which partition, to pick the rewrites and to
    // read exactly their files back.
    let snapshot = target.snapshot()?;
    let log_store = target.log_store();
    let mut views = snapshot.snapshot().file_views(log_store.as_ref(), None);
    let mut files: BTreeMap<PartitionKey, Vec<String>> = BTreeMap::new();
    let mut rows_before = 0u64;
    while let Some(view) = views.next().await {
        let view = view?;
        rows_before += view.num_records().unwrap_or(0) as u64;
        let mut key: PartitionKey = view.partition_values_map().into_iter().collect();
        key.sort();
        files.entry(key).or_default().push(view.path().to_string());
    }
    let mut rewrite = losing_partitions;
    for key in landing {
        if files
            .get(&key)
            .is_some_and(|f| f.len() >= MAX_FILES_PER_PARTITION)
        {
            rewrite.insert(key);
        }
    }
    let paths: Vec<String> = rewrite
        .iter()
        .filter_map(|k| files.get(k))
        .flatten()
        .cloned()
        .collect();

    let winners_df = if winners.is_empty() {
        ctx.read_batch(RecordBatch::new_empty(schema.clone()))?
    } else {
        ctx.read_batches(winners)?
    };
    let rows = if paths.is_empty() {
        winners_df
    } else {
        // The rewritten partitions' rows, less those a winner replaces. The
        // winners' keys are the anti join's build side; the stored rows
        // stream through it.
        let kept = ctx.read_table(target.table_provider().with_file_paths(paths).await?)?;
        let keys: Vec<Expr> = columns
            .keys
            .iter()
            .map(|k| ident(k).alias(format!("__wk_{k}")))
            .collect();
        let left: Vec<String> = columns.keys.iter().map(|k| format!("__wk_{k}")).collect();
        let left: Vec<&str> = left.iter().map(|k| k.as_str()).collect();
        let right: Vec<&str> = columns.keys.iter().map(|k| k.as_str()).collect();
        let kept = winners_df.clone().select(keys)?.join(
            kept,
            JoinType::RightAnti,
            &left,
            &right,
            None,
        )?;
        let typed: Vec<Expr> = out_fields
            .iter()
            .map(|(n, t)| cast_expr(ident(n), t.clone()).alias(n))
            .collect();
        kept.select(typed)?.union(winners_df)?
    };
    Ok(Prepared {
        rows,
        rewrite,
        offered,
        inserted,
        updated,
        stale,
        rows_before,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::{col, SessionContext};

    use super::newer;

    /// `newer` over (incoming, stored) sequence pairs: compared in order,
    /// NULL lowest, a full tie goes to the incoming row.
    #[tokio::test]
    async fn incoming_wins_when_newer_or_tied_with_null_lowest() {
        // (s1, t1, s2, t2, incoming wins)
        let cases: [(Option<i64>, Option<i64>, Option<i64>, Option<i64>, bool); 12] = [
            (Some(2), Some(1), Some(0), Some(9), true), // first column decides
            (Some(1), Some(2), Some(9), Some(0), false), // first column decides
            (Some(1), Some(1), Some(2), Some(1), true), // tie, then second
            (Some(1), Some(1), Some(1), Some(2), false), // tie, then second
            (Some(1), Some(1), Some(1), Some(1), true), // full tie: incoming
            (None, None, None, None, true),             // all NULL: a tie
            (Some(1), None, None, Some(5), true),       // stored NULL is lowest
            (None, Some(1), Some(9), None, false),      // incoming NULL is lowest
            (None, None, Some(1), None, true),          // NULL tie, then second
            (None, None, None, Some(1), false),         // NULL tie, stored second wins
            (Some(1), Some(1), None, None, true),       // tie on both
            (Some(1), Some(1), Some(0), None, true),    // stored NULL lowest in second
        ];
        let column = |i: usize| -> Arc<dyn Array> {
            Arc::new(Int64Array::from(
                cases
                    .iter()
                    .map(|c| [c.0, c.1, c.2, c.3][i])
                    .collect::<Vec<_>>(),
            ))
        };
        let schema = Arc::new(Schema::new(
            ["s1", "t1", "s2", "t2"]
                .iter()
                .map(|n| Field::new(*n, DataType::Int64, true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema, (0..4).map(column).collect()).unwrap();
        let ctx = SessionContext::new();
        let wins = ctx
            .read_batch(batch)
            .unwrap()
            .select(vec![newer(&[
                (col("s1"), col("t1")),
                (col("s2"), col("t2")),
            ])
            .alias("w")])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let got: Vec<bool> = wins
            .iter()
            .flat_map(|b| {
                let w = b.column(0).as_boolean();
                (0..w.len())
                    .map(|i| w.is_valid(i) && w.value(i))
                    .collect::<Vec<_>>()
            })
            .collect();
        let want: Vec<bool> = cases.iter().map(|c| c.4).collect();
        assert_eq!(got, want);
    }
}
