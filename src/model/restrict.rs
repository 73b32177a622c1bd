//! Rewrites of a model's logical plan that cut what its scans read: only the
//! new files of stream inputs, only the changed partitions, only a date range.

use datafusion::common::{DFSchema, TableReference};

use super::*;

pub(super) fn scan_is(scan: &TableScan, input: &str) -> bool {
    let (schema, table) = input.split_once('.').unwrap_or(("", input));
    scan.table_name.table() == table && scan.table_name.schema() == Some(schema)
}

/// Replaces the scans of each stream input by a scan of only its new files:
/// delta-rs's scan of those files in this process, or, where the session
/// reads tables as snapshots (a cluster's), a snapshot of those files that
/// executors can scan.
pub(super) async fn restrict_to_files(
    tables: &Inputs,
    df: DataFrame,
    files: &BTreeMap<String, Vec<deltalake::kernel::Add>>,
) -> Result<DataFrame> {
    let mut providers: BTreeMap<&String, Option<Arc<dyn TableProvider>>> = BTreeMap::new();
    let mut snapshots: BTreeMap<&String, (url::Url, &[deltalake::kernel::Add])> = BTreeMap::new();
    for (input, adds) in files {
        let table = tables.get(input).and_then(|t| t.as_ref());
        if let Some(table) = table {
            snapshots.insert(input, (table.table_url().clone(), adds.as_slice()));
        }
        if adds.is_empty() {
            providers.insert(input, None);
            continue;
        }
        let table =
            table.ok_or_else(|| Error::Internal(format!("input {input} was not opened")))?;
        let provider = table
            .table_provider()
            .with_adds(adds.iter().cloned())
            .await?;
        providers.insert(input, Some(provider));
    }
    let (state, plan) = df.into_parts();
    let plan = plan
        .transform_up(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some((input, provider)) = providers.iter().find(|(i, _)| scan_is(scan, i)) else {
                return Ok(Transformed::no(node));
            };
            let snapshot = datafusion::datasource::source_as_provider(&scan.source)
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<crate::cluster::scan::SnapshotTable>()
                        .map(|t| (t.schema(), t.recipe().partition_columns.clone()))
                });
            let provider = match (snapshot, snapshots.get(input)) {
                // The same columns in the same order: the scan's
                // projection stays valid. No new file is an empty Parquet
                // scan, not an empty relation (which does not come back
                // the same from a cluster's scheduler).
                (Some((schema, partitions)), Some((root, adds))) => {
                    let files = crate::cluster::scan::SnapshotTable::of_files(
                        root,
                        adds,
                        &schema,
                        &partitions,
                    )
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                    Some(Arc::new(files) as Arc<dyn TableProvider>)
                }
                _ => provider.clone(),
            };
            let new = match &provider {
                None => LogicalPlan::EmptyRelation(EmptyRelation {
                    produce_one_row: false,
                    schema: scan.projected_schema.clone(),
                }),
                Some(p) => LogicalPlan::TableScan(
                    TableScanBuilder::new(scan.table_name.clone(), provider_as_source(p.clone()))
                        .with_projection(scan.projection.clone())
                        .with_filters(scan.filters.clone())
                        .with_fetch(scan.fetch)
                        .build()?,
                ),
            };
            Ok(Transformed::yes(new))
        })?
        .data;
    Ok(DataFrame::new(state, plan))
}

/// `(c1 = v AND c2 IN (...)) OR ...` over the touched partitions, typed by
/// `schema`; columns qualified by `qualifier` when given.
pub(super) fn partition_predicate(
    touched: &BTreeSet<Vec<(String, Option<String>)>>,
    columns: &[String],
    schema: &datafusion::common::DFSchema,
    qualifier: Option<&datafusion::common::TableReference>,
) -> Result<Expr> {
    let column =
        |name: &str| Expr::Column(datafusion::common::Column::new(qualifier.cloned(), name));
    let value = |name: &str, v: &Option<String>| -> Result<Expr> {
        let c = column(name);
        let Some(v) = v else { return Ok(c.is_null()) };
        let (_, field) = schema.qualified_field_with_name(qualifier, name)?;
        let t = match field.data_type() {
            DataType::Dictionary(_, v) => v.as_ref().clone(),
            t => t.clone(),
        };
        Ok(c.eq(lit(ScalarValue::try_from_string(v.clone(), &t)?)))
    };
    // Grouped by the first partition column to keep the predicate short.
    let mut groups: BTreeMap<Option<String>, Vec<crate::upsert::PartitionKey>> = BTreeMap::new();
    for key in touched {
        let first = key
            .iter()
            .find(|(c, _)| *c == columns[0])
            .and_then(|(_, v)| v.clone());
        groups.entry(first).or_default().push(key.clone());
    }
    let mut any: Option<Expr> = None;
    for (first, keys) in groups {
        let mut all = value(&columns[0], &first)?;
        for c in &columns[1..] {
            let values: BTreeSet<Option<String>> = keys
                .iter()
                .map(|k| k.iter().find(|(n, _)| n == c).and_then(|(_, v)| v.clone()))
                .collect();
            let mut one: Option<Expr> = None;
            for v in &values {
                let e = value(c, v)?;
                one = Some(match one {
                    None => e,
                    Some(o) => o.or(e),
                });
            }
            if let Some(one) = one {
                all = all.and(one);
            }
        }
        any = Some(match any {
            None => all,
            Some(a) => a.or(all),
        });
    }
    Ok(any.unwrap_or_else(|| lit(false)))
}

/// Puts `predicate(scan name, scan schema)` over every table scan that has
/// all of `columns`.
fn filter_scans(
    df: DataFrame,
    columns: &[&str],
    predicate: impl Fn(&TableReference, &DFSchema) -> Result<Expr>,
) -> Result<DataFrame> {
    let (state, plan) = df.into_parts();
    let plan = plan
        .transform_up(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let schema = scan.projected_schema.clone();
            if !columns
                .iter()
                .all(|c| schema.has_column_with_unqualified_name(c))
            {
                return Ok(Transformed::no(node));
            }
            let predicate = predicate(&scan.table_name, &schema)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            let node = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(node))?);
            Ok(Transformed::yes(node))
        })?
        .data;
    Ok(DataFrame::new(state, plan))
}

/// Keeps only the touched partitions: in every input scan that has all of
/// the model's partition columns, and in the model's result.
pub(super) fn restrict_to_partitions(
    df: DataFrame,
    touched: &BTreeSet<Vec<(String, Option<String>)>>,
    partition_by: &[String],
) -> Result<DataFrame> {
    let columns: Vec<&str> = partition_by.iter().map(|c| c.as_str()).collect();
    let df = filter_scans(df, &columns, |name, schema| {
        partition_predicate(touched, partition_by, schema, Some(name))
    })?;
    let predicate = partition_predicate(touched, partition_by, df.schema(), None)?;
    Ok(df.filter(predicate)?)
}

/// `column BETWEEN from AND to` (an open end is no bound), qualified by
/// `qualifier` when given.
pub(super) fn range_predicate(
    column: &str,
    range: &DateRange,
    qualifier: Option<&datafusion::common::TableReference>,
) -> Expr {
    let c = || Expr::Column(datafusion::common::Column::new(qualifier.cloned(), column));
    let mut p = c().is_not_null();
    if let Some(from) = range.from {
        p = p.and(c().gt_eq(lit(ScalarValue::Date32(Some(days(from))))));
    }
    if let Some(to) = range.to {
        p = p.and(c().lt_eq(lit(ScalarValue::Date32(Some(days(to))))));
    }
    p
}

pub(super) fn days(d: chrono::NaiveDate) -> i32 {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (d - epoch).num_days() as i32
}

/// Keeps only the range in every input scan that has `column`.
pub(super) fn restrict_scans_to_range(
    df: DataFrame,
    column: &str,
    range: &DateRange,
) -> Result<DataFrame> {
    filter_scans(df, &[column], |name, _| {
        Ok(range_predicate(column, range, Some(name)))
    })
}
