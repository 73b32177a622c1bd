//! A Delta table version as a plain Parquet scan that can travel to remote
//! executors. delta-rs's own scan node cannot be serialised, so the driver
//! resolves the snapshot into its active files (path, size, partition
//! values, row count) and this provider plans DataFusion's ordinary Parquet
//! scan over exactly those files; Ballista ships that scan with its default
//! codec. Partition pruning happens here, on the partition values; row-group
//! pruning is the Parquet reader's, from the pushed-down filters.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// One active file of the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotFile {
    /// Object-store path of the file (table root included).
    pub path: String,
    pub size: u64,
    /// Values of the partition columns, in [`SnapshotTable::partition_columns`] order.
    pub partition_values: Vec<Option<String>>,
    pub rows: Option<u64>,
    /// The Delta log's statistics of the file (its JSON `stats`), for
    /// skipping files on the driver; never shipped in a recipe.
    #[serde(skip)]
    pub stats: Option<Arc<str>>,
}

impl SnapshotFile {
    /// The smallest and largest value of `column` in the file, as the Delta
    /// log's statistics record them (JSON values); `None` when the log has
    /// no statistics for it. Statistics written by this project come from
    /// the Parquet writer: a long text's maximum is cut and then raised, so
    /// both stay bounds.
    pub fn range(&self, column: &str) -> Option<(serde_json::Value, serde_json::Value)> {
        let stats: serde_json::Value = serde_json::from_str(self.stats.as_deref()?).ok()?;
        let bound = |which: &str| {
            stats
                .get(which)
                .and_then(|v| v.get(column))
                .filter(|v| !v.is_null())
                .cloned()
        };
        Some((bound("minValues")?, bound("maxValues")?))
    }
}

/// The recipe a scan is rebuilt from on another node: small, self-contained,
/// and free of credentials (each node reaches the store with its own).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipe {
    /// `file://` or `s3://bucket`: the object store the paths live in.
    pub store: String,
    /// The table's location, for messages.
    pub location: String,
    pub version: i64,
    pub partition_columns: Vec<String>,
    pub files: Vec<SnapshotFile>,
    /// Each task reads whole partitions, in partition order, and the scan
    /// says so (see [`SnapshotTable::clustered`]).
    #[serde(default)]
    pub clustered: bool,
}

/// A table version as a list of Parquet files (see the module docs).
#[derive(Debug)]
pub struct SnapshotTable {
    recipe: Recipe,
    /// The table's columns: those in the files, then the partition columns.
    schema: SchemaRef,
}

impl SnapshotTable {
    /// Resolves `table`'s current snapshot into its files.
    pub async fn resolve(table: &DeltaTable) -> crate::error::Result<Self> {
        Self::resolve_files(table, false).await
    }

    /// As [`resolve`](Self::resolve), keeping each file's statistics for
    /// [`SnapshotFile::range`].
    pub async fn resolve_with_stats(table: &DeltaTable) -> crate::error::Result<Self> {
        Self::resolve_files(table, true).await
    }

    async fn resolve_files(table: &DeltaTable, stats: bool) -> crate::error::Result<Self> {
        let schema = crate::delta::table_arrow_schema(table)?;
        let snapshot = table.snapshot()?;
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let root = table.log_store().root_url().clone();
        let store = crate::storage::store_of(&root);
        let base = object_store::path::Path::from_url_path(root.path()).map_err(|e| {
            crate::error::Error::Lake {
                uri: root.to_string(),
                message: e.to_string(),
            }
        })?;
        let log_store = table.log_store();
        let mut files = Vec::new();
        let mut views = snapshot.snapshot().file_views(log_store.as_ref(), None);
        while let Some(file) = views.next().await {
            let file = file?;
            let values = file.partition_values_map();
            let path = file
                .object_store_path()
                .parts()
                .fold(base.clone(), |p, part| p.join(part));
            files.push(SnapshotFile {
                path: path.to_string(),
                size: file.size().max(0) as u64,
                partition_values: partition_columns
                    .iter()
                    .map(|c| values.get(c).cloned().flatten())
                    .collect(),
                rows: file.num_records().map(|n| n as u64),
                stats: stats.then(|| file.stats().map(Arc::from)).flatten(),
            });
        }
        Ok(Self {
            schema: scan_order(&schema, &partition_columns),
            recipe: Recipe {
                store,
                location: root.to_string(),
                version: table.version().map_or(-1, |v| v as i64),
                partition_columns,
                files,
                clustered: false,
            },
        })
    }

    /// Parquet files written under `root` but not (yet) part of any table,
    /// as `adds` describe them (paths relative to `root`, partition values
    /// by column), read with the columns of `schema` partitioned by
    /// `partition_columns`: what a staging job wrote, for the next job to
    /// read wherever it runs.
    pub fn of_files(
        root: &url::Url,
        adds: &[deltalake::kernel::Add],
        schema: &SchemaRef,
        partition_columns: &[String],
    ) -> crate::error::Result<Self> {
        let lake_error = |message: String| crate::error::Error::Lake {
            uri: root.to_string(),
            message,
        };
        let base = object_store::path::Path::from_url_path(root.path())
            .map_err(|e| lake_error(e.to_string()))?;
        let mut files = Vec::with_capacity(adds.len());
        for add in adds {
            let relative = object_store::path::Path::from_url_path(&add.path)
                .map_err(|e| lake_error(format!("{}: {e}", add.path)))?;
            files.push(SnapshotFile {
                path: relative
                    .parts()
                    .fold(base.clone(), |p, part| p.join(part))
                    .to_string(),
                size: add.size.max(0) as u64,
                partition_values: partition_columns
                    .iter()
                    .map(|c| add.partition_values.get(c).cloned().flatten())
                    .collect(),
                rows: None,
                stats: None,
            });
        }
        Ok(Self {
            schema: scan_order(schema, partition_columns),
            recipe: Recipe {
                store: crate::storage::store_of(root),
                location: root.to_string(),
                version: -1,
                partition_columns: partition_columns.to_vec(),
                files,
                clustered: false,
            },
        })
    }

    /// The partition `file` (one of this table's) lies in.
    pub fn partition_key(&self, file: &SnapshotFile) -> crate::upsert::PartitionKey {
        crate::upsert::partition_key(
            self.recipe
                .partition_columns
                .iter()
                .cloned()
                .zip(file.partition_values.iter().cloned()),
        )
    }

    /// The same table with only the files `keep` accepts.
    pub fn only(&self, keep: impl Fn(&SnapshotFile) -> bool) -> Self {
        let mut recipe = self.recipe.clone();
        recipe.files.retain(|f| keep(f));
        Self {
            recipe,
            schema: self.schema.clone(),
        }
    }

    /// The same table read so that each task gets whole partitions, its
    /// files in the order of their partition values, and the scan declares
    /// that order: a writer downstream then needs no sort (see
    /// [`crate::model::merge`]'s rewrite). A partitioned table only.
    pub fn clustered(mut self) -> Self {
        self.recipe.clustered = !self.recipe.partition_columns.is_empty();
        self
    }

    pub fn from_recipe(recipe: Recipe, schema: SchemaRef) -> DfResult<Self> {
        for c in &recipe.partition_columns {
            schema.field_with_name(c)?;
        }
        Ok(Self { recipe, schema })
    }

    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// Columns stored in the files (everything but the partition columns).
    fn file_schema(&self) -> SchemaRef {
        let fields: Vec<FieldRef> = self
            .schema
            .fields()
            .iter()
            .filter(|f| !self.recipe.partition_columns.contains(f.name()))
            .cloned()
            .collect();
        Arc::new(Schema::new(fields))
    }

    fn partition_fields(&self) -> Vec<FieldRef> {
        self.recipe
            .partition_columns
            .iter()
            .filter_map(|c| self.schema.field_with_name(c).ok())
            .map(|f| Arc::new(f.clone()))
            .collect()
    }

    /// The files whose partition values can satisfy `filters` (those of the
    /// filters that read partition columns only; the rest are kept for the
    /// Parquet reader and the filter above the scan).
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> DfResult<Vec<bool>> {
        let keep_all = vec![true; self.recipe.files.len()];
        let columns = &self.recipe.partition_columns;
        let on_partitions: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                let used = f.column_refs();
                !used.is_empty() && used.iter().all(|c| columns.contains(&c.name))
            })
            .cloned()
            .collect();
        let Some(predicate) = conjunction(on_partitions) else {
            return Ok(keep_all);
        };
        if self.recipe.files.is_empty() {
            return Ok(keep_all);
        }
        // One row per file: its partition values, typed as the columns are.
        let fields = self.partition_fields();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            let text: StringArray = self
                .recipe
                .files
                .iter()
                .map(|f| f.partition_values[i].as_deref())
                .collect();
            arrays.push(datafusion::arrow::compute::cast(&text, field.data_type())?);
        }
        let schema = Arc::new(Schema::new(
            fields
                .iter()
                .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let physical = state.create_physical_expr(predicate, &df_schema)?;
        let result = physical.evaluate(&batch)?.into_array(batch.num_rows())?;
        let Some(mask) = result
            .as_any()
            .downcast_ref::<datafusion::arrow::array::BooleanArray>()
        else {
            return Ok(keep_all);
        };
        // NULL (unknown) keeps the file: only a definite FALSE prunes.
        Ok((0..mask.len())
            .map(|i| mask.is_null(i) || mask.value(i))
            .collect())
    }
}

/// `schema`'s columns in the order the scan yields them (file columns, then
/// partition columns), so that no projection reorders them: a reordering
/// projection inside the scan does not survive the trip to an executor
/// unchanged.
fn scan_order(schema: &SchemaRef, partition_columns: &[String]) -> SchemaRef {
    let ordered: Vec<FieldRef> = schema
        .fields()
        .iter()
        .filter(|f| !partition_columns.contains(f.name()))
        .chain(
            partition_columns
                .iter()
                .filter_map(|c| schema.fields().iter().find(|f| f.name() == c)),
        )
        .cloned()
        .collect();
    Arc::new(Schema::new(ordered))
}

/// `items` (each with its bytes) in at most `n` groups of about equal
/// bytes: largest first, each to the group with the fewest bytes so far.
/// Never fewer than one group, so that an empty table is one empty group:
/// a plain Parquet scan still (an `EmptyExec` does not come back the same
/// from an executor).
fn balanced<T>(mut items: Vec<(u64, T)>, n: usize) -> Vec<Vec<T>> {
    let n = n.min(items.len()).max(1);
    items.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    let mut groups: Vec<(u64, Vec<T>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for (bytes, item) in items {
        if let Some(lightest) = groups.iter_mut().min_by_key(|(b, _)| *b) {
            lightest.0 += bytes;
            lightest.1.push(item);
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// The files spread over `n` groups (the session's partitions) of about
/// equal bytes.
fn spread_groups(files: Vec<PartitionedFile>, n: usize) -> Vec<Vec<PartitionedFile>> {
    balanced(
        files.into_iter().map(|f| (f.object_meta.size, f)).collect(),
        n,
    )
}

/// The files in at most `n` groups of about equal bytes that never share a
/// partition, each group's files in the order of their partition values,
/// NULL first. Each file says its partition values are its statistics
/// (unknown for the file's own columns), which is how DataFusion checks
/// that a group's files follow the declared order.
fn clustered_groups(
    files: Vec<PartitionedFile>,
    n: usize,
    file_schema: &SchemaRef,
) -> Vec<Vec<PartitionedFile>> {
    use datafusion::common::Statistics;
    let unknown = Arc::new(Statistics::new_unknown(file_schema));
    let mut partitions: Vec<(u64, Vec<PartitionedFile>)> = Vec::new();
    let mut by_values: std::collections::HashMap<Vec<ScalarValue>, usize> = Default::default();
    for f in files {
        let f = f.with_statistics(unknown.clone());
        let i = *by_values
            .entry(f.partition_values.clone())
            .or_insert_with(|| {
                partitions.push((0, Vec::new()));
                partitions.len() - 1
            });
        partitions[i].0 += f.object_meta.size;
        partitions[i].1.push(f);
    }
    balanced(partitions, n)
        .into_iter()
        .map(|g| {
            let mut g: Vec<PartitionedFile> = g.into_iter().flatten().collect();
            // Values of one column share a type, so they compare; NULL
            // (None) sorts first, as the declared order says.
            g.sort_by(|a, b| {
                a.partition_values
                    .partial_cmp(&b.partition_values)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            g
        })
        .collect()
}

/// Ascending by the partition columns (which follow the file's
/// `file_columns` columns in the scan), NULL first.
fn partition_ordering(
    file_columns: usize,
    partition_fields: &[FieldRef],
) -> Option<datafusion::physical_expr::LexOrdering> {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_expr::PhysicalSortExpr;
    datafusion::physical_expr::LexOrdering::new(partition_fields.iter().enumerate().map(
        |(i, f)| {
            PhysicalSortExpr::new(
                Arc::new(Column::new(f.name(), file_columns + i)),
                datafusion::arrow::compute::SortOptions::default(),
            )
        },
    ))
}

fn partition_value(text: Option<&str>, data_type: &DataType) -> DfResult<ScalarValue> {
    match text {
        None => ScalarValue::try_from(data_type),
        Some(t) => ScalarValue::Utf8(Some(t.to_string())).cast_to(data_type),
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Pruning is by file, never by row: the filter stays above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let file_schema = self.file_schema();
        let partition_fields = self.partition_fields();
        // Our schema is the scan's order; map each wanted column to its place.
        let scan_index = |i: usize| -> DfResult<usize> {
            let name = self.schema.field(i).name();
            match self.recipe.partition_columns.iter().position(|c| c == name) {
                Some(p) => Ok(file_schema.fields().len() + p),
                None => file_schema.index_of(name).map_err(DataFusionError::from),
            }
        };
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let indices: Vec<usize> = wanted
            .iter()
            .map(|i| scan_index(*i))
            .collect::<DfResult<_>>()?;
        let keep = self.prune(state, filters)?;
        let mut files = Vec::new();
        // What the kept files hold, from the Delta log: an estimate for the
        // planner (a join's small side is then collected whole instead of
        // both sides being shuffled by the key; on a cluster, whose scans
        // are these, the 40 stores of the example cost a shuffle of every
        // order). Inexact, so that no answer is taken from it.
        let (mut rows, mut bytes, mut counted) = (0u64, 0u64, true);
        for (file, keep) in self.recipe.files.iter().zip(keep) {
            if !keep {
                continue;
            }
            match file.rows {
                Some(n) => rows += n,
                None => counted = false,
            }
            bytes += file.size;
            let values = partition_fields
                .iter()
                .zip(&file.partition_values)
                .map(|(f, v)| partition_value(v.as_deref(), f.data_type()))
                .collect::<DfResult<Vec<_>>>()?;
            files.push(
                PartitionedFile::new_from_meta(object_store::ObjectMeta {
                    location: crate::storage::store_path(&file.path),
                    // As `PartitionedFile::new` has it: the epoch, which a
                    // plan sent to executors can encode (the minimum cannot).
                    last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                    size: file.size,
                    e_tag: None,
                    version: None,
                })
                .with_partition_values(values),
            );
        }
        let n = state.config().target_partitions().max(1);
        let groups = match self.recipe.clustered {
            true => clustered_groups(files, n, &file_schema),
            false => spread_groups(files, n),
        };
        let ordering = match self.recipe.clustered {
            true => partition_ordering(file_schema.fields().len(), &partition_fields),
            false => None,
        };
        let scan_fields: Vec<FieldRef> = file_schema
            .fields()
            .iter()
            .chain(partition_fields.iter())
            .cloned()
            .collect();
        let mut statistics =
            datafusion::common::Statistics::new_unknown(&Schema::new(scan_fields.clone()));
        if counted {
            statistics.num_rows = datafusion::common::stats::Precision::Inexact(rows as usize);
            statistics.total_byte_size =
                datafusion::common::stats::Precision::Inexact(bytes as usize);
        }
        let df_schema = DFSchema::try_from(Schema::new(scan_fields))?;
        let table_schema = TableSchema::builder(file_schema)
            .with_table_partition_cols(partition_fields)
            .build();
        let mut source = ParquetSource::new(table_schema);
        let on_files: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                f.column_refs()
                    .iter()
                    .all(|c| !self.recipe.partition_columns.contains(&c.name))
            })
            .cloned()
            .collect();
        if let Some(predicate) = conjunction(on_files) {
            if let Ok(physical) = state.create_physical_expr(predicate, &df_schema) {
                source = source.with_predicate(physical);
            }
        }
        let config = FileScanConfigBuilder::new(
            ObjectStoreUrl::parse(&self.recipe.store)?,
            Arc::new(source),
        )
        .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
        .with_statistics(statistics)
        .with_output_ordering(ordering.into_iter().collect())
        .with_limit(limit)
        .with_projection_indices(Some(indices))?
        .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::ExecutionPlanProperties;

    fn file(name: &str, size: u64, day: Option<&str>, region: &str) -> PartitionedFile {
        PartitionedFile::new(name.to_string(), size).with_partition_values(vec![
            ScalarValue::Utf8(day.map(str::to_string)),
            ScalarValue::Utf8(Some(region.to_string())),
        ])
    }

    /// Groups never share a partition, hold about equal bytes, and list
    /// their files in partition order (NULL first); every file says its
    /// partition values are its statistics.
    #[test]
    fn clustered_groups_hold_whole_partitions_in_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let files = vec![
            file("a", 50, Some("2025-01-02"), "west"),
            file("b", 10, Some("2025-01-01"), "east"),
            file("c", 40, Some("2025-01-02"), "west"),
            file("d", 30, None, "east"),
            file("e", 20, Some("2025-01-01"), "west"),
            file("f", 60, Some("2025-01-03"), "east"),
            file("g", 15, Some("2025-01-01"), "east"),
        ];
        let groups = clustered_groups(files, 2, &schema);
        assert_eq!(groups.len(), 2);
        let names = |g: &Vec<PartitionedFile>| -> Vec<String> {
            g.iter()
                .map(|f| f.object_meta.location.to_string())
                .collect()
        };
        let mut seen: std::collections::HashMap<Vec<ScalarValue>, usize> = Default::default();
        for (i, g) in groups.iter().enumerate() {
            for pair in g.windows(2) {
                assert!(
                    pair[0].partition_values <= pair[1].partition_values,
                    "{:?}",
                    names(g)
                );
            }
            for f in g {
                assert!(f.statistics.is_some());
                let owner = *seen.entry(f.partition_values.clone()).or_insert(i);
                assert_eq!(owner, i, "a partition in two groups: {:?}", names(g));
            }
        }
        // (2025-01-02, west) 90 and (2025-01-03, east) 60 first, largest
        // first to the lighter group; then 30, 25, 20.
        let bytes: Vec<u64> = groups
            .iter()
            .map(|g| g.iter().map(|f| f.object_meta.size).sum())
            .collect();
        assert_eq!(bytes.iter().sum::<u64>(), 225);
        assert!(bytes.iter().all(|b| (105..=120).contains(b)), "{bytes:?}");
        let all: Vec<String> = groups.iter().flat_map(names).collect();
        assert_eq!(all.len(), 7);
        // The NULL day leads its group.
        let with_null = groups
            .iter()
            .find(|g| g.iter().any(|f| f.partition_values[0].is_null()))
            .unwrap();
        assert!(with_null[0].partition_values[0].is_null());
    }

    /// A clustered scan declares the partition order; a plain one does not.
    #[tokio::test]
    async fn a_clustered_scan_declares_partition_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("day", DataType::Utf8, true),
        ]));
        let recipe = Recipe {
            store: "file://".into(),
            location: "file:///nowhere/".into(),
            version: 0,
            partition_columns: vec!["day".into()],
            files: ["d2", "d1", "d2", "d3"]
                .iter()
                .enumerate()
                .map(|(i, d)| SnapshotFile {
                    path: format!("nowhere/day={d}/{i}.parquet"),
                    size: 100 + i as u64,
                    partition_values: vec![Some(d.to_string())],
                    rows: None,
                    stats: None,
                })
                .collect(),
            clustered: false,
        };
        let ctx = datafusion::prelude::SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(2),
        );
        let plain = SnapshotTable::from_recipe(recipe, schema).unwrap();
        let state = ctx.state();
        let scan = plain.scan(&state, None, &[], None).await.unwrap();
        assert!(scan.output_ordering().is_none());
        let clustered = plain.clustered();
        assert!(clustered.recipe().clustered);
        let scan = clustered.scan(&state, None, &[], None).await.unwrap();
        let order = scan
            .output_ordering()
            .expect("a declared order")
            .to_string();
        assert_eq!(order, "day@1 ASC");
        assert_eq!(scan.output_partitioning().partition_count(), 2);
    }

    /// A scan estimates its rows and bytes from the log's counts of the
    /// files it keeps, so that the planner collects a small table whole
    /// for a join instead of shuffling both sides; without a count for
    /// every file, it estimates nothing.
    #[tokio::test]
    async fn a_scan_estimates_rows_and_bytes_of_the_files_it_keeps() {
        use datafusion::common::stats::Precision;
        use datafusion::prelude::{col, lit, SessionConfig, SessionContext};
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("day", DataType::Utf8, true),
        ]));
        let recipe = |rows: [Option<u64>; 3]| Recipe {
            store: "file://".into(),
            location: "file:///nowhere/".into(),
            version: 0,
            partition_columns: vec!["day".into()],
            files: ["d1", "d2", "d2"]
                .iter()
                .zip(rows)
                .enumerate()
                .map(|(i, (d, rows))| SnapshotFile {
                    path: format!("nowhere/day={d}/{i}.parquet"),
                    size: 1000 * (i as u64 + 1),
                    partition_values: vec![Some(d.to_string())],
                    rows,
                    stats: None,
                })
                .collect(),
            clustered: false,
        };
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        let state = ctx.state();
        let estimate = |table: SnapshotTable, filters: Vec<datafusion::prelude::Expr>| {
            let state = state.clone();
            async move {
                let scan = table.scan(&state, None, &filters, None).await.unwrap();
                let stats = datafusion::physical_plan::statistics::StatisticsContext::new()
                    .compute(
                        scan.as_ref(),
                        &datafusion::physical_plan::StatisticsArgs::new(),
                    )
                    .unwrap();
                (stats.num_rows, stats.total_byte_size)
            }
        };
        let counted = || {
            SnapshotTable::from_recipe(recipe([Some(40), Some(7), Some(3)]), schema.clone())
                .unwrap()
        };
        assert_eq!(
            estimate(counted(), vec![]).await,
            (Precision::Inexact(50), Precision::Inexact(6000))
        );
        // Files pruned by their partition are not counted.
        assert_eq!(
            estimate(counted(), vec![col("day").eq(lit("d2"))]).await,
            (Precision::Inexact(10), Precision::Inexact(5000))
        );
        let uncounted =
            SnapshotTable::from_recipe(recipe([Some(40), None, Some(3)]), schema.clone()).unwrap();
        assert_eq!(
            estimate(uncounted, vec![]).await,
            (Precision::Absent, Precision::Absent)
        );
    }
}
