//! Delta table writes. One function, [`write`], streams record batches into a
//! table and makes exactly one commit that adds the new files, removes what
//! the mode replaces (all files, or the files of the partitions written),
//! records the run's app transactions and metrics in the commit, or commits
//! nothing when anything fails. Upserts (src/upsert.rs) commit through it too.
//! This module knows Delta and Parquet; it must not know about pipelines.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::partition;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::SendableRecordBatchStream;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use url::Url;

use crate::error::{Error, Result};

/// Target size of one Parquet file; a partition gets a second file only when
/// it outgrows this within one write.
pub const TARGET_FILE_SIZE: u64 = 128 * 1024 * 1024;

/// The one timestamp type the lake stores: microseconds, UTC (what Delta's
/// `timestamp` is, and what every reader maps to its own UTC timestamp).
pub fn utc_timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// FNV-1a over `chunks` in order: a fingerprint stable across builds,
/// platforms and versions (std's hasher promises none of that), for values
/// stored in Delta commits.
pub fn fnv1a(chunks: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in chunks.iter().flat_map(|c| c.iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// What a write replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replace {
    /// Nothing: the rows are added.
    Nothing,
    /// Every file of the table.
    All,
    /// The files of these partitions (sorted `(column, value)` pairs), and of
    /// the partitions written: a partition that is recomputed empty loses its
    /// rows too.
    Partitions(BTreeSet<Vec<(String, Option<String>)>>),
    /// The files of exactly these partitions; a partition written but not
    /// listed keeps its files (the write appends to it).
    PartitionsOnly(BTreeSet<Vec<(String, Option<String>)>>),
    /// The files of every partition whose `column` value (an ISO date as the
    /// log records it) lies between `from` and `to`, both included; `None`
    /// leaves that end open.
    DateRange {
        column: String,
        from: Option<String>,
        to: Option<String>,
    },
    /// Exactly these data files (paths as the log records them).
    Files(BTreeSet<String>),
}

impl Replace {
    /// Whether a write replacing this removes the file at `path` whose
    /// partition is `key` (sorted `(column, value)` pairs), given the
    /// partitions the write produced rows for.
    pub fn removes(
        &self,
        key: &[(String, Option<String>)],
        path: &str,
        written: &BTreeSet<Vec<(String, Option<String>)>>,
    ) -> bool {
        match self {
            Replace::All => true,
            Replace::Partitions(p) => written.contains(key) || p.contains(key),
            Replace::PartitionsOnly(p) => p.contains(key),
            Replace::DateRange { column, from, to } => {
                let value = key
                    .iter()
                    .find(|(c, _)| c == column)
                    .and_then(|(_, v)| v.as_deref());
                match value {
                    Some(v) => {
                        from.as_deref().is_none_or(|f| v >= f)
                            && to.as_deref().is_none_or(|t| v <= t)
                    }
                    None => false,
                }
            }
            Replace::Files(paths) => paths.contains(path),
            Replace::Nothing => false,
        }
    }
}

/// Settings of one write.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    pub table_name: String,
    pub partition_by: Vec<String>,
    pub replace: Replace,
    /// App transactions committed with the data (exactly-once markers).
    pub transactions: Vec<Transaction>,
    /// Extra commit-info entries (run id, step metrics).
    pub metadata: HashMap<String, Value>,
    pub description: Option<String>,
    /// Keep the table's symlink manifests (`_symlink_format_manifest/`)
    /// current with this commit; see [`crate::manifest`].
    pub symlink_manifest: bool,
    /// The write is an upsert by these keys (latest `sequence` wins): its
    /// commit is logged as a MERGE, not a WRITE.
    pub upsert: Option<UpsertKeys>,
}

/// What an upsert matches on, for the commit's operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertKeys {
    pub keys: Vec<String>,
    pub sequence: Vec<String>,
}

/// A SQL predicate over partition values that holds exactly for `parts`
/// (`(a = 'x' AND b = 'y') OR ...`; NULL values as `IS NULL`), the way
/// Delta logs a `replaceWhere`. `None` for an unpartitioned table.
fn partitions_predicate(parts: &BTreeSet<Vec<(String, Option<String>)>>) -> Option<String> {
    let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let one = |key: &Vec<(String, Option<String>)>| {
        key.iter()
            .map(|(c, v)| match v {
                Some(v) => format!("{c} = {}", quote(v)),
                None => format!("{c} IS NULL"),
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let terms: Vec<String> = parts
        .iter()
        .filter(|k| !k.is_empty())
        .map(|k| format!("({})", one(k)))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" OR "))
}

/// The operation a commit is logged as: what it did, so that Delta's
/// history (and every tool reading it) tells the truth.
fn operation(
    spec: &WriteSpec,
    replaced: &BTreeSet<Vec<(String, Option<String>)>>,
    touched: &BTreeSet<Vec<(String, Option<String>)>>,
) -> DeltaOperation {
    let partition_by = (!spec.partition_by.is_empty()).then(|| spec.partition_by.clone());
    if let Some(u) = &spec.upsert {
        let on = |cols: &[String], op: &str| {
            cols.iter()
                .map(|c| format!("source.{c} {op} target.{c}"))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        return DeltaOperation::Merge {
            predicate: partitions_predicate(replaced),
            merge_predicate: Some(on(&u.keys, "=")),
            matched_predicates: vec![deltalake::protocol::MergePredicate {
                action_type: "update".into(),
                predicate: (!u.sequence.is_empty()).then(|| {
                    format!(
                        "({}) >= ({})",
                        u.sequence
                            .iter()
                            .map(|c| format!("source.{c}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        u.sequence
                            .iter()
                            .map(|c| format!("target.{c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }),
            }],
            not_matched_predicates: vec![deltalake::protocol::MergePredicate {
                action_type: "insert".into(),
                predicate: None,
            }],
            not_matched_by_source_predicates: vec![],
        };
    }
    let (mode, predicate) = match &spec.replace {
        Replace::Nothing => (SaveMode::Append, None),
        Replace::All | Replace::Files(_) => (SaveMode::Overwrite, None),
        // The partitions written are replaced too.
        Replace::Partitions(_) => (SaveMode::Overwrite, partitions_predicate(touched)),
        Replace::PartitionsOnly(_) => (SaveMode::Overwrite, partitions_predicate(replaced)),
        Replace::DateRange { column, from, to } => {
            let mut terms = vec![];
            if let Some(f) = from {
                terms.push(format!("{column} >= '{f}'"));
            }
            if let Some(t) = to {
                terms.push(format!("{column} <= '{t}'"));
            }
            (
                SaveMode::Overwrite,
                (!terms.is_empty()).then(|| terms.join(" AND ")),
            )
        }
    };
    DeltaOperation::Write {
        mode,
        partition_by,
        predicate,
    }
}

/// A check every commit passes first: the caller's right to write still
/// holds (a run's lease, see `crate::lock`). Set for a whole task with
/// [`FENCE`]; commits outside any fence are not checked.
#[async_trait::async_trait]
pub trait Fence: Send + Sync + std::fmt::Debug {
    async fn check(&self) -> Result<()>;
}

tokio::task_local! {
    /// The fence of the commits made by the current task.
    pub static FENCE: Arc<dyn Fence>;
}

/// What a write did.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub version: Option<i64>,
    pub rows: u64,
    pub files_added: usize,
    pub files_removed: usize,
    pub bytes: u64,
    pub partitions: usize,
    /// Rows in the added files by their Parquet statistics (as recorded in
    /// the Delta log): an independent count of `rows` for reconciliation.
    pub rows_in_files: u64,
}

/// Opens the table at `url`; `None` when no Delta table is there yet.
pub async fn open(
    url: &Url,
    storage_options: &HashMap<String, String>,
) -> Result<Option<DeltaTable>> {
    open_at(url, storage_options, &At::Latest).await
}

/// Which version of a table to open: the latest, a version number, or the
/// version that was current at an instant (time travel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    Latest,
    Version(u64),
    Timestamp(chrono::DateTime<chrono::Utc>),
}

pub async fn open_at(
    url: &Url,
    storage_options: &HashMap<String, String>,
    at: &At,
) -> Result<Option<DeltaTable>> {
    if url.scheme() == "file" {
        let log = std::path::Path::new(url.path()).join("_delta_log");
        if !log.is_dir() {
            return Ok(None);
        }
    }
    let mut table = DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(storage_options.clone())
        .build()?;
    let loaded = match at {
        At::Latest => table.load().await,
        At::Version(v) => table.load_version(*v).await,
        At::Timestamp(t) => table.load_with_datetime(*t).await,
    };
    match loaded {
        Ok(()) => Ok(Some(table)),
        Err(deltalake::DeltaTableError::NotATable(_)) => Ok(None),
        Err(e)
            if url.scheme() != "file"
                && (e.to_string().contains("not found")
                    || e.to_string().contains("does not exist")) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The schema a table is created with for batches of `schema`: view and
/// large types become their plain forms and every timestamp becomes UTC
/// microseconds, which every common reader accepts (no `timestamp_ntz`).
pub fn storage_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), storage_type(f.data_type()), true))
        .collect();
    Arc::new(Schema::new(fields))
}

fn storage_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Timestamp(_, _) => utc_timestamp(),
        DataType::Date64 => DataType::Date32,
        DataType::Dictionary(_, v) => storage_type(v),
        other => other.clone(),
    }
}

/// Casts a batch to the table's schema, matching columns by name.
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().as_ref() == target.as_ref() {
        return Ok(batch.clone());
    }
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let Some(column) = batch.column_by_name(field.name()) else {
            return Err(Error::Table {
                table: String::new(),
                message: format!(
                    "the result has no column `{}` that the table has",
                    field.name()
                ),
            });
        };
        columns.push(if column.data_type() == field.data_type() {
            column.clone()
        } else {
            cast(column, field.data_type())?
        });
    }
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

/// Creates the table when it does not exist yet (its own first commit: an
/// empty table is a valid, readable state) and checks that an existing
/// table's columns match.
/// Commits between two checkpoints of a table this job creates.
pub const CHECKPOINT_INTERVAL: &str = "10";

pub async fn ensure_table(
    url: &Url,
    storage_options: &HashMap<String, String>,
    schema: &Schema,
    spec: &WriteSpec,
) -> Result<DeltaTable> {
    let wanted = storage_schema(schema);
    if let Some(table) = open(url, storage_options).await? {
        let existing = table_arrow_schema(&table)?;
        let names = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
        };
        if names(&existing) != names(&wanted) {
            return Err(Error::Table {
                table: spec.table_name.clone(),
                message: format!(
                    "the result's columns [{}] differ from the table's [{}]. Schema changes are not applied automatically: drop the table folder {} and run again to rebuild it.",
                    names(&wanted).join(", "),
                    names(&existing).join(", "),
                    url
                ),
            });
        }
        let parts = table.snapshot()?.metadata().partition_columns().to_vec();
        if parts != spec.partition_by {
            return Err(Error::Table {
                table: spec.table_name.clone(),
                message: format!(
                    "the table is partitioned by {:?} but the settings ask for {:?}; drop the table folder {} and run again to repartition it",
                    parts, spec.partition_by, url
                ),
            });
        }
        return Ok(table);
    }
    let kernel: StructType = wanted.as_ref().try_into_kernel()?;
    if url.scheme() == "file" {
        std::fs::create_dir_all(url.path())
            .map_err(|e| Error::io(format!("create table folder {}", url.path()), e))?;
    }
    let table = DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(storage_options.clone())
        .build()?;
    let mut create = table
        .create()
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(spec.partition_by.clone())
        .with_table_name(spec.table_name.clone())
        // A checkpoint every 10 commits (delta-rs's default is 100), so
        // readers replay at most 10 JSON commits.
        .with_configuration_property(
            deltalake::TableProperty::CheckpointInterval,
            Some(CHECKPOINT_INTERVAL),
        )
        .with_save_mode(SaveMode::Ignore);
    if let Some(d) = &spec.description {
        create = create.with_comment(d.clone());
    }
    Ok(create.await?)
}

pub fn table_arrow_schema(table: &DeltaTable) -> Result<SchemaRef> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
    let kernel = table
        .snapshot()?
        .metadata()
        .parse_schema()
        .map_err(deltalake::DeltaTableError::from)?;
    let schema: Schema = (&kernel).try_into_arrow()?;
    Ok(Arc::new(schema))
}

pub fn writer_properties() -> deltalake::parquet::file::properties::WriterProperties {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
    use deltalake::parquet::schema::types::ColumnPath;
    WriterProperties::builder()
        .set_created_by(format!("lakehouse {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Page)
        // Every row of a file has its own line number: a dictionary of them
        // never pays, and filling one cost bronze's writer time.
        .set_column_dictionary_enabled(ColumnPath::from(crate::ingest::SOURCE_LINE), false)
        .build()
}

/// The writer settings for a table whose rows look like `sample`: columns
/// whose values barely repeat in it (text, numbers, timestamps) are written
/// without a dictionary. A dictionary of near-unique values never pays:
/// the writer hashes every value into it, and in a file smaller than the
/// dictionary page limit it never falls back to plain encoding, so the file
/// holds every value once in the dictionary and again as an index (at 10M
/// rows of the example, filling the dictionaries of ids and timestamps was
/// a third of bronze's CPU; silver's 1,825 files of about 5,000 rows each
/// kept dictionaries of their order ids, customers, timestamps, prices and
/// amounts).
///
/// Every table is written this way, bronze included: its repeating text
/// (stores, products, statuses and the lineage columns, one value per file
/// or run) is small as a dictionary, and silver reads it back without
/// decompressing and validating every value (at 10M rows of the example,
/// bronze's files 469 → 335 MB and silver 16.4 → 15.1 s, medians of five
/// alternated runs; bronze's own time unchanged).
pub fn writer_properties_for(
    sample: &[RecordBatch],
) -> deltalake::parquet::file::properties::WriterProperties {
    let plain = near_unique_columns(sample);
    if plain.is_empty() {
        return writer_properties();
    }
    let mut builder = writer_properties().into_builder();
    for name in plain {
        builder = builder.set_column_dictionary_enabled(
            deltalake::parquet::schema::types::ColumnPath::from(name),
            false,
        );
    }
    builder.build()
}

/// Fewest rows a sample needs before a column is judged by it.
const DICTIONARY_SAMPLE_ROWS: usize = 1024;

/// Columns of `sample` (text, binary, numbers, timestamps) in which at least
/// 90% of the values differ (NULLs aside), judged only on samples of
/// [`DICTIONARY_SAMPLE_ROWS`] or more values. Values are told apart by a
/// 64-bit hash of each, so a collision can only make a column look less
/// unique than it is, which keeps its dictionary.
fn near_unique_columns(sample: &[RecordBatch]) -> Vec<String> {
    use datafusion::common::hash_utils::{create_hashes, RandomState};
    let Some(first) = sample.first() else {
        return Vec::new();
    };
    let judged = |t: &DataType| {
        t.is_primitive()
            || matches!(
                t,
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
                    | DataType::FixedSizeBinary(_)
            )
    };
    let state = RandomState::with_seed(0);
    let mut hashes = Vec::new();
    let mut plain = Vec::new();
    for (i, field) in first.schema().fields().iter().enumerate() {
        if !judged(field.data_type()) {
            continue;
        }
        let (mut seen, mut values) = (std::collections::HashSet::new(), 0usize);
        for batch in sample {
            let column = batch.column(i);
            hashes.clear();
            hashes.resize(column.len(), 0);
            if create_hashes(std::slice::from_ref(column), &state, &mut hashes).is_err() {
                values = 0;
                break;
            }
            for (row, hash) in hashes.iter().enumerate() {
                if column.is_valid(row) {
                    seen.insert(*hash);
                    values += 1;
                }
            }
        }
        if values >= DICTIONARY_SAMPLE_ROWS && seen.len() * 10 >= values * 9 {
            plain.push(field.name().clone());
        }
    }
    plain
}

/// Files written but not yet committed.
#[derive(Debug, Default)]
pub struct Staged {
    adds: Vec<deltalake::kernel::Add>,
    rows: u64,
}

impl Staged {
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Files written elsewhere (by staging tasks), holding `rows` rows.
    pub fn from_adds(adds: Vec<deltalake::kernel::Add>, rows: u64) -> Self {
        Self { adds, rows }
    }

    /// Adds `other`'s files to this commit; its rows are not counted in
    /// [`Staged::rows`] (they are rows carried over, not new ones).
    pub fn carry(&mut self, other: Staged) {
        self.adds.extend(other.adds);
    }
}

/// Streams `inputs` into new Parquet files of `table` (one writer per input,
/// run concurrently; inputs must hold disjoint partitions). Nothing is
/// visible until [`commit`]; an input that fails fails the whole stage.
pub async fn stage(
    table: &DeltaTable,
    inputs: Vec<SendableRecordBatchStream>,
    table_name: &str,
) -> Result<Staged> {
    let target = table_arrow_schema(table)?;
    let partition_by: Vec<String> = table.snapshot()?.metadata().partition_columns().to_vec();
    let mut tasks = tokio::task::JoinSet::new();
    for input in inputs {
        let table = table.clone();
        let target = target.clone();
        let name = table_name.to_string();
        let partition_by = partition_by.clone();
        tasks.spawn(async move { drain(table, input, target, partition_by, name).await });
    }
    let mut staged = Staged::default();
    while let Some(joined) = tasks.join_next().await {
        let (adds, rows) = joined.map_err(|e| Error::Table {
            table: table_name.to_string(),
            message: format!("writer task failed: {e}"),
        })??;
        staged.adds.extend(adds);
        staged.rows += rows;
    }
    Ok(staged)
}

/// Stages and commits in one call.
pub async fn write(
    table: DeltaTable,
    inputs: Vec<SendableRecordBatchStream>,
    spec: &WriteSpec,
) -> Result<(DeltaTable, Written)> {
    let staged = stage(&table, inputs, &spec.table_name).await?;
    commit(table, staged, spec).await
}

/// Makes one commit: the staged files, the removes the mode calls for, the
/// app transactions and the metadata. Commits nothing when there is nothing
/// to add, remove or record.
pub async fn commit(
    mut table: DeltaTable,
    staged: Staged,
    spec: &WriteSpec,
) -> Result<(DeltaTable, Written)> {
    let Staged { adds, rows } = staged;
    let written_partitions: BTreeSet<Vec<(String, Option<String>)>> = adds
        .iter()
        .map(|a| crate::upsert::partition_key(a.partition_values.clone()))
        .collect();

    let mut removes = Vec::new();
    // Partitions this commit changes, for the symlink manifests.
    let mut touched = written_partitions.clone();
    // Partitions whose files this commit removes.
    let mut replaced: BTreeSet<Vec<(String, Option<String>)>> = BTreeSet::new();
    if spec.replace != Replace::Nothing {
        let snapshot = table.snapshot()?;
        let log_store = table.log_store();
        let mut files = snapshot.snapshot().file_views(log_store.as_ref(), None);
        while let Some(file) = files.next().await {
            let file = file?;
            let key = crate::upsert::partition_key(file.partition_values_map());
            let hit = spec
                .replace
                .removes(&key, file.path().as_ref(), &written_partitions);
            if hit {
                replaced.insert(key.clone());
                touched.insert(key);
                removes.push(Action::Remove(file.remove_action(true)));
            }
        }
    }

    let mut written = Written {
        rows,
        files_added: adds.len(),
        files_removed: removes.len(),
        bytes: adds.iter().map(|a| a.size.max(0) as u64).sum(),
        partitions: written_partitions.len(),
        version: None,
        rows_in_files: adds.iter().map(file_rows).sum(),
    };
    if adds.is_empty() && removes.is_empty() && spec.transactions.is_empty() {
        return Ok((table, written));
    }
    let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
    actions.extend(removes);
    let mut metadata = spec.metadata.clone();
    metadata.insert(
        "operationMetrics".into(),
        serde_json::json!({
            "numOutputRows": written.rows,
            "numFiles": written.files_added,
            "numRemovedFiles": written.files_removed,
            "numOutputBytes": written.bytes,
        }),
    );
    let mut props = CommitProperties::default().with_metadata(metadata);
    for t in &spec.transactions {
        props = props.with_application_transaction(t.clone());
    }
    let operation = operation(spec, &replaced, &touched);
    if let Ok(fence) = FENCE.try_with(|f| f.clone()) {
        fence.check().await?;
    }
    let snapshot = table.snapshot()?.clone();
    let commit = CommitBuilder::from(props)
        .with_actions(actions)
        .build(
            Some(&snapshot as &dyn TableReference),
            table.log_store(),
            operation,
        )
        .await?;
    written.version = Some(commit.version() as i64);
    table.update_state().await?;
    if spec.symlink_manifest {
        let version = commit.version();
        crate::manifest::update(&table, &touched)
            .await
            .map_err(|e| Error::Table {
                table: spec.table_name.clone(),
                message: format!(
                    "version {version} is committed, but its symlink manifests could not be \
                     updated: {e}. Readers of the manifests see the previous version until \
                     `lakehouse manifest {}` rewrites them.",
                    spec.table_name
                ),
            })?;
    }
    Ok((table, written))
}

fn file_rows(add: &deltalake::kernel::Add) -> u64 {
    add.stats
        .as_deref()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.get("numRecords").and_then(|n| n.as_u64()))
        .unwrap_or(0)
}

async fn drain(
    delta_table: DeltaTable,
    mut input: SendableRecordBatchStream,
    target: SchemaRef,
    partition_by: Vec<String>,
    table: String,
) -> Result<(Vec<deltalake::kernel::Add>, u64)> {
    let mut rows = 0u64;
    // Inputs of partitioned tables arrive sorted by the partition columns.
    let mut writer = SortedWriter::new(partition_by, &table, move |first| {
        Ok(RecordBatchWriter::for_table(&delta_table)?
            .with_writer_properties(writer_properties_for(first))
            .with_target_file_size(TARGET_FILE_SIZE))
    });
    while let Some(batch) = input.try_next().await? {
        if batch.num_rows() == 0 {
            continue;
        }
        rows += batch.num_rows() as u64;
        let batch = conform(&batch, &target).map_err(|e| match e {
            Error::Table { message, .. } => Error::Table {
                table: table.clone(),
                message,
            },
            other => other,
        })?;
        writer.write(batch).await?;
    }
    Ok((writer.finish().await?, rows))
}

/// A file's partition values, by column, in the table's order.
type PartitionValues = indexmap::IndexMap<String, delta_kernel::expressions::Scalar>;

/// A writer for rows that arrive sorted by the table's partition columns:
/// it closes the file when the partition changes, so it holds one
/// partition's buffer at a time and writes one file per partition. The
/// Parquet writer is made once its first [`DICTIONARY_SAMPLE_ROWS`] rows
/// (or all of them, if fewer) have arrived, which decide its encodings
/// ([`writer_properties_for`]); until then it holds them. A writer that
/// sees no row writes no file.
pub struct SortedWriter {
    make: Option<MakeWriter>,
    writer: Option<RecordBatchWriter>,
    /// Rows that arrived before the writer was made.
    early: Vec<RecordBatch>,
    early_rows: usize,
    partition_by: Vec<String>,
    table: String,
    current: Option<PartitionValues>,
    adds: Vec<deltalake::kernel::Add>,
}

/// Makes the Parquet writer of a [`SortedWriter`] from its first rows.
type MakeWriter = Box<dyn FnOnce(&[RecordBatch]) -> Result<RecordBatchWriter> + Send>;

impl SortedWriter {
    pub fn new(
        partition_by: Vec<String>,
        table: &str,
        make: impl FnOnce(&[RecordBatch]) -> Result<RecordBatchWriter> + Send + 'static,
    ) -> Self {
        Self {
            make: Some(Box::new(make)),
            writer: None,
            early: Vec::new(),
            early_rows: 0,
            partition_by,
            table: table.to_string(),
            current: None,
            adds: Vec::new(),
        }
    }

    /// Makes the Parquet writer from the rows held so far and writes them.
    async fn start(&mut self) -> Result<()> {
        let make = self
            .make
            .take()
            .ok_or_else(|| Error::Internal(format!("the writer of {} was lost", self.table)))?;
        self.writer = Some(make(&self.early)?);
        self.early_rows = 0;
        for batch in std::mem::take(&mut self.early) {
            self.write_rows(batch).await?;
        }
        Ok(())
    }

    fn writer(&mut self) -> Result<&mut RecordBatchWriter> {
        self.writer
            .as_mut()
            .ok_or_else(|| Error::Internal(format!("no writer for {}", self.table)))
    }

    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.writer.is_none() {
            self.early_rows += batch.num_rows();
            self.early.push(batch);
            if self.early_rows >= DICTIONARY_SAMPLE_ROWS {
                self.start().await?;
            }
            return Ok(());
        }
        self.write_rows(batch).await
    }

    async fn write_rows(&mut self, batch: RecordBatch) -> Result<()> {
        if self.partition_by.is_empty() {
            return Ok(self.writer()?.write(batch).await?);
        }
        let keys: Vec<ArrayRef> = self
            .partition_by
            .iter()
            .map(|c| {
                batch
                    .column_by_name(c)
                    .cloned()
                    .ok_or_else(|| Error::Table {
                        table: self.table.clone(),
                        message: format!("partition column `{c}` is missing from the result"),
                    })
            })
            .collect::<Result<_>>()?;
        for range in partition(&keys)?.ranges() {
            // The partition's values, as delta-rs writes them into the log;
            // also what tells one partition from the next.
            use deltalake::kernel::scalars::ScalarExt;
            let values = self
                .partition_by
                .iter()
                .zip(&keys)
                .map(|(name, k)| {
                    let value = delta_kernel::expressions::Scalar::from_array(k.as_ref(), range.start)
                        .ok_or_else(|| Error::Table {
                            table: self.table.clone(),
                            message: format!(
                                "partition column `{name}` has a type a Delta partition value cannot have ({})",
                                k.data_type()
                            ),
                        })?;
                    Ok((name.clone(), value))
                })
                .collect::<Result<PartitionValues>>()?;
            if self.current.as_ref().is_some_and(|c| *c != values) {
                let flushed = self.writer()?.flush().await?;
                self.adds.extend(flushed);
            }
            // The rows of one partition, with its values: delta-rs's
            // `write` would split them by partition again (grouping every
            // row and copying every column).
            let writer = self.writer()?;
            writer
                .write_partition(
                    batch.slice(range.start, range.end - range.start),
                    &values,
                    deltalake::writer::WriteMode::Default,
                )
                .await?;
            self.current = Some(values);
        }
        Ok(())
    }

    /// Closes the open files; the files written, as Delta adds.
    pub async fn finish(mut self) -> Result<Vec<deltalake::kernel::Add>> {
        if self.writer.is_none() && !self.early.is_empty() {
            self.start().await?;
        }
        if let Some(w) = self.writer.as_mut() {
            let flushed = w.flush().await?;
            self.adds.extend(flushed);
        }
        Ok(self.adds)
    }
}

/// Row count of the table's current version, from the Delta log's file
/// statistics (no data is read).
pub async fn row_count(table: &DeltaTable) -> Result<(u64, usize, u64)> {
    let snapshot = table.snapshot()?;
    let log_store = table.log_store();
    let mut files = snapshot.snapshot().file_views(log_store.as_ref(), None);
    let (mut rows, mut count, mut bytes) = (0u64, 0usize, 0u64);
    while let Some(f) = files.next().await {
        let f = f?;
        rows += f.num_records().unwrap_or(0) as u64;
        bytes += f.size().max(0) as u64;
        count += 1;
    }
    Ok((rows, count, bytes))
}

/// Rows, files and bytes of each partition (partition values in column order).
pub async fn partition_stats(
    table: &DeltaTable,
) -> Result<Vec<(Vec<Option<String>>, u64, usize, u64)>> {
    let snapshot = table.snapshot()?;
    let columns = snapshot.metadata().partition_columns().to_vec();
    let log_store = table.log_store();
    let mut files = snapshot.snapshot().file_views(log_store.as_ref(), None);
    let mut parts: std::collections::BTreeMap<Vec<Option<String>>, (u64, usize, u64)> =
        Default::default();
    while let Some(f) = files.next().await {
        let f = f?;
        let values = f.partition_values_map();
        let key = columns
            .iter()
            .map(|c| values.get(c).cloned().flatten())
            .collect();
        let e = parts.entry(key).or_default();
        e.0 += f.num_records().unwrap_or(0) as u64;
        e.1 += 1;
        e.2 += f.size().max(0) as u64;
    }
    Ok(parts
        .into_iter()
        .map(|(k, (r, n, b))| (k, r, n, b))
        .collect())
}

/// What the commits after version `since`, up to and including `until`, did
/// to a table's data, read from their commit files.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Files added with new data (compaction's rewrites, `dataChange:
    /// false`, are not new data and are left out).
    pub added: Vec<deltalake::kernel::Add>,
    /// Files whose data was removed.
    pub removed: usize,
    /// Partition values of every file added or removed with a data change.
    pub partitions: BTreeSet<Vec<(String, Option<String>)>>,
    /// Some removed file did not record its partition values.
    pub partitions_unknown: bool,
    /// A file added in the range was later rewritten by compaction: the
    /// new rows can no longer be read file by file.
    pub added_then_compacted: bool,
}

/// Whether a commit only reorganised files (OPTIMIZE, VACUUM): it changed
/// no row, so it is not an input change and not a model's own run.
pub fn is_maintenance(info: &deltalake::kernel::CommitInfo) -> bool {
    matches!(
        info.operation.as_deref(),
        Some("OPTIMIZE") | Some("VACUUM START") | Some("VACUUM END")
    )
}

/// The table's newest commits, newest first, with their versions, skipping
/// maintenance commits; at most `limit` commits are looked at.
pub async fn data_commits(
    table: &DeltaTable,
    limit: usize,
) -> Result<Vec<(i64, deltalake::kernel::CommitInfo)>> {
    let Some(current) = table.version() else {
        return Ok(vec![]);
    };
    // Usually the newest commit is a data commit: read one commit first,
    // and more only while they are all maintenance.
    let mut look = 1;
    loop {
        let n = look.min(limit);
        let infos: Vec<deltalake::kernel::CommitInfo> =
            table.history(Some(n)).try_collect().await?;
        let exhausted = infos.len() < n || n == limit;
        let found: Vec<(i64, deltalake::kernel::CommitInfo)> = infos
            .into_iter()
            .enumerate()
            .filter(|(_, info)| !is_maintenance(info))
            .map(|(i, info)| (current as i64 - i as i64, info))
            .collect();
        if !found.is_empty() || exhausted {
            return Ok(found);
        }
        look *= 8;
    }
}

/// The version of the table's last commit that changed data: compaction
/// and vacuum commits after it do not count as a change of the table.
pub async fn data_version(table: &DeltaTable) -> Result<i64> {
    let current = table.version().map(|v| v as i64).unwrap_or(-1);
    Ok(data_commits(table, 64)
        .await?
        .first()
        .map(|(v, _)| *v)
        .unwrap_or(current))
}

/// The data changes between two versions, or `None` when they cannot be
/// known exactly (a commit file is gone, or a commit changed the schema or
/// protocol): the caller then reads the table whole.
pub async fn changes(table: &DeltaTable, since: i64, until: i64) -> Result<Option<Changes>> {
    let mut out = Changes::default();
    let log = table.log_store();
    let key = |m: &HashMap<String, Option<String>>| crate::upsert::partition_key(m.clone());
    for version in (since + 1)..=until {
        let Some(bytes) = log.read_commit_entry(version as _).await? else {
            return Ok(None);
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: Action = serde_json::from_slice(line).map_err(|e| Error::Table {
                table: table.log_store().root_url().to_string(),
                message: format!("commit {version} of the Delta log does not parse: {e}"),
            })?;
            match action {
                Action::Add(add) if add.data_change => {
                    out.partitions.insert(key(&add.partition_values));
                    out.added.push(add);
                }
                // Compaction rewrote a file that arrived after `since`: its
                // rows now sit in a compacted file among older rows, and the
                // file itself may be vacuumed.
                Action::Remove(remove)
                    if !remove.data_change && out.added.iter().any(|a| a.path == remove.path) =>
                {
                    out.added_then_compacted = true;
                }
                Action::Remove(remove) if remove.data_change => {
                    out.removed += 1;
                    match &remove.partition_values {
                        Some(p) => {
                            out.partitions.insert(key(p));
                        }
                        None => out.partitions_unknown = true,
                    }
                }
                Action::Metadata(_) | Action::Protocol(_) if version > 0 => return Ok(None),
                _ => {}
            }
        }
    }
    Ok(Some(out))
}

/// The data files of `table` holding rows whose `column` is one of `values`,
/// how many such rows there are, and a stream of those files' other rows
/// (to rewrite them without the matching ones). No files: `None`.
pub async fn rows_other_than(
    table: &DeltaTable,
    column: &str,
    values: &[String],
) -> Result<Option<(BTreeSet<String>, u64, SendableRecordBatchStream)>> {
    use datafusion::prelude::SessionContext;
    if values.is_empty() {
        return Ok(None);
    }
    let ctx = SessionContext::new();
    let root = table.log_store().root_url().clone();
    let store_url = crate::storage::store_of(&root);
    let store_url =
        Url::parse(&store_url).map_err(|e| Error::Internal(format!("{store_url}: {e}")))?;
    ctx.runtime_env()
        .register_object_store(&store_url, table.log_store().root_object_store(None));
    let list = values
        .iter()
        .map(|v| format!("'{}'", v.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    let provider = table
        .table_provider()
        .with_file_column("__lakehouse_file")
        .await?;
    ctx.register_table("t", provider)?;
    let found = ctx
        .sql(&format!(
            "SELECT CAST(\"__lakehouse_file\" AS VARCHAR), count(*) FROM t WHERE \"{column}\" IN ({list}) GROUP BY 1"
        ))
        .await?
        .collect()
        .await?;
    let mut ids: Vec<String> = vec![];
    let mut rows = 0u64;
    for b in &found {
        let f = cast(b.column(0), &DataType::Utf8)?;
        let n = cast(b.column(1), &DataType::Int64)?;
        let f = f
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .expect("utf8");
        let n = n
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .expect("int64");
        for i in 0..b.num_rows() {
            ids.push(f.value(i).to_string());
            rows += n.value(i) as u64;
        }
    }
    if ids.is_empty() {
        return Ok(None);
    }
    // File ids are URLs (percent-encoded) or paths; log paths are relative.
    let decoded: Vec<String> = ids
        .iter()
        .map(|i| {
            percent_encoding::percent_decode_str(i)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let snapshot = table.snapshot()?;
    let log_store = table.log_store();
    let mut views = snapshot.snapshot().file_views(log_store.as_ref(), None);
    let mut paths = BTreeSet::new();
    while let Some(v) = views.next().await {
        let p = v?.path().to_string();
        if ids
            .iter()
            .chain(decoded.iter())
            .any(|i| i == &p || i.ends_with(&format!("/{p}")))
        {
            paths.insert(p);
        }
    }
    if paths.len() != ids.len() {
        return Err(Error::Table {
            table: root.to_string(),
            message: format!(
                "could not match the data files {ids:?} to the Delta log ({} matched); nothing was changed",
                paths.len()
            ),
        });
    }
    let keep = table
        .table_provider()
        .with_file_paths(paths.iter().cloned())
        .await?;
    ctx.register_table("k", keep)?;
    let stream = ctx
        .sql(&format!(
            "SELECT * FROM k WHERE \"{column}\" NOT IN ({list})"
        ))
        .await?
        .execute_stream()
        .await?;
    Ok(Some((paths, rows, stream)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::Replace;

    fn key(day: Option<&str>, region: &str) -> Vec<(String, Option<String>)> {
        vec![
            ("day".to_string(), day.map(String::from)),
            ("region".to_string(), Some(region.to_string())),
        ]
    }

    /// Only columns whose values nearly all differ (text, numbers,
    /// timestamps), in a sample big enough to judge, are written without a
    /// dictionary; the sample may come in several batches.
    #[test]
    fn dictionaries_are_left_out_only_for_near_unique_columns() {
        use std::sync::Arc;

        use datafusion::arrow::array::{
            ArrayRef, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
            StringViewArray, TimestampMicrosecondArray,
        };
        use deltalake::parquet::schema::types::ColumnPath;

        let text = |rows: usize, f: &dyn Fn(usize) -> Option<String>| -> ArrayRef {
            Arc::new((0..rows).map(f).collect::<StringArray>())
        };
        let n = 2000;
        let batch = RecordBatch::try_from_iter([
            ("id", text(n, &|i| Some(format!("order-{i}")))),
            (
                "region",
                text(n, &|i| Some(["n", "s", "e", "w"][i % 4].into())),
            ),
            // 1,850 distinct of 2,000 (92.5%) and 1,700 (85%).
            ("mostly", text(n, &|i| Some(format!("{}", i % 1850)))),
            ("repeating", text(n, &|i| Some(format!("{}", i % 1700)))),
            // Unique, but only 1,000 values beside the NULLs: too few.
            ("sparse", text(n, &|i| (i % 2 == 0).then(|| i.to_string()))),
            (
                "views",
                Arc::new(
                    (0..n)
                        .map(|i| Some(format!("a customer named number {i}")))
                        .collect::<StringViewArray>(),
                ) as ArrayRef,
            ),
            (
                "number",
                Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef,
            ),
            (
                "quantity",
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 5))) as ArrayRef,
            ),
            (
                "at",
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    (0..n as i64).map(|i| 1_700_000_000_000_000 + i * 1_000_000),
                )) as ArrayRef,
            ),
            (
                "price",
                Arc::new(
                    Decimal128Array::from_iter_values((0..n as i128).map(|i| 100 + i % 1900))
                        .with_precision_and_scale(12, 2)
                        .unwrap(),
                ) as ArrayRef,
            ),
            (
                "flag",
                Arc::new((0..n).map(|i| Some(i % 3 == 0)).collect::<BooleanArray>()) as ArrayRef,
            ),
        ])
        .unwrap();
        let plain = ["id", "mostly", "views", "number", "at", "price"].map(String::from);
        assert_eq!(
            super::near_unique_columns(std::slice::from_ref(&batch)),
            plain
        );
        // The same rows in pieces of 300: judged on all of them together.
        let pieces: Vec<_> = (0..n)
            .step_by(300)
            .map(|s| batch.slice(s, 300.min(n - s)))
            .collect();
        assert_eq!(super::near_unique_columns(&pieces), plain);
        let props = super::writer_properties_for(&pieces);
        let dictionary = |c: &str| props.dictionary_enabled(&ColumnPath::from(c));
        for c in plain {
            assert!(!dictionary(&c), "{c} should be plain");
        }
        for c in ["region", "repeating", "sparse", "quantity", "flag"] {
            assert!(dictionary(c), "{c} should keep its dictionary");
        }
        assert!(!dictionary(crate::ingest::SOURCE_LINE));
        // The same unique values in a small sample: no judgement.
        assert!(super::near_unique_columns(&pieces[..3]).is_empty());
        assert!(super::near_unique_columns(&[]).is_empty());
    }

    /// Which files each kind of replace removes.
    #[test]
    fn each_replace_removes_exactly_its_files() {
        let written: BTreeSet<_> = [key(Some("2025-03-02"), "north")].into();
        let named: BTreeSet<_> = [key(Some("2025-03-05"), "south")].into();
        let range = |from: Option<&str>, to: Option<&str>| Replace::DateRange {
            column: "day".into(),
            from: from.map(String::from),
            to: to.map(String::from),
        };
        let files: BTreeSet<String> = ["day=2025-03-01/a.parquet".to_string()].into();
        let f = "day=2025-03-01/a.parquet";
        // (replace, key, path, removed)
        let cases = [
            (Replace::Nothing, key(Some("2025-03-02"), "north"), f, false),
            (Replace::All, key(Some("2025-03-09"), "east"), f, true),
            (
                Replace::Partitions(named.clone()),
                key(Some("2025-03-02"), "north"),
                f,
                true,
            ),
            (
                Replace::Partitions(named.clone()),
                key(Some("2025-03-05"), "south"),
                f,
                true,
            ),
            (
                Replace::Partitions(named.clone()),
                key(Some("2025-03-05"), "north"),
                f,
                false,
            ),
            (
                Replace::PartitionsOnly(named.clone()),
                key(Some("2025-03-02"), "north"),
                f,
                false,
            ),
            (
                Replace::PartitionsOnly(named.clone()),
                key(Some("2025-03-05"), "south"),
                f,
                true,
            ),
            (
                range(Some("2025-03-02"), Some("2025-03-04")),
                key(Some("2025-03-02"), "x"),
                f,
                true,
            ),
            (
                range(Some("2025-03-02"), Some("2025-03-04")),
                key(Some("2025-03-04"), "x"),
                f,
                true,
            ),
            (
                range(Some("2025-03-02"), Some("2025-03-04")),
                key(Some("2025-03-05"), "x"),
                f,
                false,
            ),
            (
                range(Some("2025-03-02"), Some("2025-03-04")),
                key(Some("2025-03-01"), "x"),
                f,
                false,
            ),
            (
                range(None, Some("2025-03-04")),
                key(Some("2024-01-01"), "x"),
                f,
                true,
            ),
            (
                range(Some("2025-03-02"), None),
                key(Some("2031-01-01"), "x"),
                f,
                true,
            ),
            (range(None, None), key(None, "x"), f, false),
            (
                Replace::Files(files.clone()),
                key(Some("2025-03-01"), "x"),
                f,
                true,
            ),
            (
                Replace::Files(files.clone()),
                key(Some("2025-03-01"), "x"),
                "day=2025-03-01/b.parquet",
                false,
            ),
        ];
        for (i, (replace, key, path, want)) in cases.iter().enumerate() {
            assert_eq!(
                replace.removes(key, path, &written),
                *want,
                "case {i}: {replace:?} {key:?} {path}"
            );
        }
    }
}
