//! Landing CSV -> bronze. Lists a source's files, skips the ones already
//! ingested, and parses the rest as a plan ([`task`]): tasks, in this
//! process or on a cluster's executors, each parse a group of files on a
//! blocking thread and write bronze's rows and the malformed lines (the
//! source's reject table) as Parquet files; the driver commits them. Which files were ingested is recorded as Delta app
//! transactions (`lakehouse-ingest:<file>`) in the same commit as their rows,
//! so a crash can never ingest a file twice or half.
//! Owns bronze and its rejects; must not know about models.

pub mod csv;
mod reader;
pub mod sniff;
pub mod task;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, AsArray, BinaryBuilder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::Transaction;
use deltalake::DeltaTable;
use tokio::sync::mpsc;

use crate::cluster::stage::{encode_schema, Message};
use crate::delta::{self, Replace, WriteSpec};
use crate::error::{Error, Result};
use crate::pipeline::{SchemaChange, Source};
use crate::progress::Progress;
use crate::storage::{Lake, LandedFile};
use csv::{CsvOptions, CsvReader, Record};
use sniff::Sniffed;

pub const SOURCE_FILE: &str = "_source_file";
pub const SOURCE_LINE: &str = "_source_line";
pub const INGESTED_AT: &str = "_ingested_at";
pub const RUN_ID: &str = "_run_id";
const BATCH_ROWS: usize = 32 * 1024;
/// Most tasks an ingest splits into on a cluster: each writes its own
/// bronze file(s), so thousands of tiny landed files are grouped.
pub const CLUSTER_TASKS: usize = 256;

/// Landed bytes per ingest task on a cluster. Each task writes its own
/// bronze and reject files, so one task per landed file made bronze as
/// many files as the landing folder (51 of 9 MB at 10M rows of the
/// example), below the small-file size, and the run then compacted them
/// (6 s of a 43 s `--cluster standalone` run). 256 MiB of CSV make bronze
/// files of about 150 MB here, and above the small-file size (32 MiB)
/// for any CSV that Parquet shrinks less than eightfold.
pub const CLUSTER_TASK_BYTES: u64 = 256 << 20;

/// How many tasks ingest `bytes` of landed files on a cluster: one per
/// [`CLUSTER_TASK_BYTES`], at least one per core of this process (the
/// executors have at least as many slots, typically), at most
/// [`CLUSTER_TASKS`].
pub fn cluster_tasks(bytes: u64, cores: usize) -> usize {
    let by_bytes = usize::try_from(bytes.div_ceil(CLUSTER_TASK_BYTES)).unwrap_or(CLUSTER_TASKS);
    by_bytes.clamp(cores.clamp(1, CLUSTER_TASKS), CLUSTER_TASKS)
}

/// What ingesting one file did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FileReport {
    pub file: String,
    pub rows: u64,
    pub rejected: u64,
    pub blank_lines: u64,
    /// Why the file was refused as a whole (then nothing of it was taken).
    pub refused: Option<String>,
    /// Data lines read (header and blank lines excluded).
    pub lines: u64,
    /// Bronze columns the file's header lacks (NULL for its rows).
    pub missing_columns: Vec<String>,
    /// Columns the file has but left empty in every one of its rows.
    pub empty_columns: Vec<String>,
}

impl FileReport {
    /// The report of a file read in pieces: counts add up; a column is
    /// empty when it is empty in every piece that had rows.
    fn merge(self, other: FileReport) -> FileReport {
        let empty_columns = match (self.rows, other.rows) {
            (0, _) => other.empty_columns,
            (_, 0) => self.empty_columns,
            _ => self
                .empty_columns
                .into_iter()
                .filter(|c| other.empty_columns.contains(c))
                .collect(),
        };
        FileReport {
            file: self.file,
            rows: self.rows + other.rows,
            rejected: self.rejected + other.rejected,
            blank_lines: self.blank_lines + other.blank_lines,
            refused: self.refused.or(other.refused),
            lines: self.lines + other.lines,
            missing_columns: self.missing_columns,
            empty_columns,
        }
    }
}

/// What ingesting one source did.
#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    pub files_seen: usize,
    pub files_skipped: usize,
    /// Files ingested earlier whose size, modification time or ETag has
    /// changed since: (name, what changed). Reported, not re-ingested.
    pub changed: Vec<(String, String)>,
    /// Files taken again on request (`--reingest`), and the earlier rows of
    /// theirs that were replaced (bronze and rejects).
    pub reingested: Vec<String>,
    pub rows_replaced: u64,
    pub files: Vec<FileReport>,
    pub rows: u64,
    pub rejected: u64,
    pub version: Option<i64>,
    pub data_files: usize,
    /// Data lines read (header and blank lines excluded).
    pub lines: u64,
    /// Lines = bronze rows + rejected rows, and both counts match the rows
    /// the Delta log records for the files written.
    pub reconciled: bool,
}

pub fn bronze_table(source: &str) -> String {
    crate::catalog::layer_folder("bronze", source)
}

pub fn reject_table(source: &str) -> String {
    crate::catalog::quarantine_folder("bronze", source)
}

fn app_id(file: &str) -> String {
    format!("lakehouse-ingest:{file}")
}

fn mtime_app_id(file: &str) -> String {
    format!("lakehouse-ingest-mtime:{file}")
}

fn etag_app_id(file: &str) -> String {
    format!("lakehouse-ingest-etag:{file}")
}

/// A stable 63-bit fingerprint of an ETag (FNV-1a), storable as a Delta
/// app transaction version.
fn etag_hash(e_tag: &str) -> i64 {
    (crate::delta::fnv1a(&[e_tag.as_bytes()]) >> 1) as i64
}

/// The app transactions that mark `file` as ingested: its size (the marker
/// itself), modification time and ETag (to notice a file changed later).
fn ingest_txns(file: &LandedFile) -> Vec<Transaction> {
    let mut out = vec![
        Transaction::new(app_id(&file.name), file.size as i64),
        Transaction::new(
            mtime_app_id(&file.name),
            file.last_modified.timestamp_micros(),
        ),
    ];
    if let Some(e) = &file.e_tag {
        out.push(Transaction::new(etag_app_id(&file.name), etag_hash(e)));
    }
    out
}

/// What changed in an ingested file since, if anything: size first, then
/// the ETag when both runs saw one, else the modification time. Files
/// ingested before these were recorded are compared by size only.
async fn what_changed(
    bronze: &Option<DeltaTable>,
    file: &LandedFile,
    size_then: i64,
) -> Result<Option<String>> {
    if size_then != file.size as i64 {
        return Ok(Some(format!("{} -> {} bytes", size_then, file.size)));
    }
    if let Some(e) = &file.e_tag {
        if let Some(then) = ingested_size(bronze, &etag_app_id(&file.name)).await? {
            return Ok((then != etag_hash(e)).then(|| "its ETag changed".to_string()));
        }
    }
    if let Some(then) = ingested_size(bronze, &mtime_app_id(&file.name)).await? {
        if then != file.last_modified.timestamp_micros() {
            let then = chrono::DateTime::from_timestamp_micros(then)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            return Ok(Some(format!(
                "modified {then} -> {}",
                file.last_modified
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
    }
    Ok(None)
}

fn ts_field(name: &str) -> Field {
    Field::new(name, crate::delta::utc_timestamp(), true)
}

pub fn bronze_schema(columns: &[String]) -> SchemaRef {
    let mut fields: Vec<Field> = columns
        .iter()
        .map(|c| Field::new(c, DataType::Utf8, true))
        .collect();
    fields.push(Field::new(SOURCE_FILE, DataType::Utf8, true));
    fields.push(Field::new(SOURCE_LINE, DataType::Int64, true));
    fields.push(ts_field(INGESTED_AT));
    fields.push(Field::new(RUN_ID, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

pub fn reject_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(SOURCE_FILE, DataType::Utf8, true),
        Field::new(SOURCE_LINE, DataType::Int64, true),
        Field::new("_byte_offset", DataType::Int64, true),
        Field::new("_reason", DataType::Utf8, true),
        Field::new("_raw", DataType::Binary, true),
        Field::new("_raw_text", DataType::Utf8, true),
        ts_field(INGESTED_AT),
        Field::new(RUN_ID, DataType::Utf8, true),
    ]))
}

/// Ingests one source's new landing files into bronze and its rejects, in
/// four phases: [`select`] the files not taken yet, [`settle_columns`]
/// (every new file looked at before any row is taken), [`parse`] them into
/// staged Parquet files (nothing visible), and [`commit`] rejects then
/// bronze with the files' ingestion markers, checking that every line read
/// became exactly one bronze or reject row. Parsing runs as a plan in
/// `ctx`, each task parsing its files one at a time: in this process, in at
/// most `tasks` tasks (the run's cores); on a cluster, one task per 256 MiB
/// of landed bytes ([`cluster_tasks`]), which the scheduler spreads over
/// the executors' slots.
#[allow(clippy::too_many_arguments)]
pub async fn ingest_source(
    ctx: &datafusion::prelude::SessionContext,
    lake: &Lake,
    source: &Source,
    run_id: &str,
    ingested_at: chrono::DateTime<chrono::Utc>,
    progress: Arc<dyn Progress>,
    reingest: &[String],
    tasks: usize,
) -> Result<SourceReport> {
    let selection = select(lake, source, reingest).await?;
    if selection.todo.is_empty() {
        // Nothing landed yet: with declared columns, an empty bronze table
        // lets the models that read this source run.
        if let (None, Some(cols)) = (&selection.bronze, &source.csv.columns) {
            let cols: Vec<String> = cols.iter().map(|c| c.to_lowercase()).collect();
            let spec = bronze_spec(source, run_id);
            let url = lake.url(&bronze_table(&source.name));
            delta::ensure_table(&url, lake.storage_options(), &bronze_schema(&cols), &spec).await?;
        }
        let mut report = selection.report;
        report.reconciled = true;
        return Ok(report);
    }
    let layout = settle_columns(source, selection.bronze.as_ref(), &selection.todo).await?;
    let targets =
        Targets::prepare(lake, source, run_id, selection.bronze.as_ref(), &layout).await?;
    let parsed = parse(
        ctx,
        source,
        &selection.todo,
        layout,
        &targets,
        run_id,
        ingested_at,
        progress,
        tasks,
    )
    .await?;
    commit(selection, parsed, targets, reingest).await
}

/// Phase 1: the source's landed files, and which of them to take.
struct Selection {
    bronze: Option<DeltaTable>,
    /// Files seen, skipped and changed so far.
    report: SourceReport,
    /// Files to parse, each with whether its rejects are already committed
    /// (a run that died between the rejects' and bronze's commits).
    todo: Vec<(LandedFile, bool)>,
}

async fn select(lake: &Lake, source: &Source, reingest: &[String]) -> Result<Selection> {
    let files = lake.glob(&source.csv.files).await?;
    let opts = lake.storage_options();
    let bronze = delta::open(&lake.url(&bronze_table(&source.name)), opts).await?;
    let rejects = delta::open(&lake.url(&reject_table(&source.name)), opts).await?;
    let mut report = SourceReport {
        files_seen: files.len(),
        ..Default::default()
    };
    let mut todo = Vec::new();
    for file in files {
        let id = app_id(&file.name);
        if reingest.contains(&file.name) {
            report.reingested.push(file.name.clone());
            tracing::info!(file = %file.name, "taking the file again (--reingest)");
            todo.push((file, false));
            continue;
        }
        if let Some(size_then) = ingested_size(&bronze, &id).await? {
            report.files_skipped += 1;
            if let Some(what) = what_changed(&bronze, &file, size_then).await? {
                tracing::warn!(file = %file.name, change = %what, "file changed after it was ingested; not re-ingested");
                report.changed.push((file.name.clone(), what));
            }
            continue;
        }
        let rejects_done = ingested_size(&rejects, &id).await?.is_some();
        todo.push((file, rejects_done));
    }
    Ok(Selection {
        bronze,
        report,
        todo,
    })
}

/// Phase 2: bronze's columns once the new files are in, and what the look
/// at each file found (refused files keep their reason).
struct Layout {
    sniffed: Vec<Sniffed>,
    /// Bronze's columns before this run.
    existing: Vec<String>,
    /// Bronze's columns after it: existing, declared, then new headers.
    columns: Vec<String>,
}

async fn settle_columns(
    source: &Source,
    bronze: Option<&DeltaTable>,
    todo: &[(LandedFile, bool)],
) -> Result<Layout> {
    let ingest_error = |message: String| Error::Ingest {
        source_name: source.name.clone(),
        message,
    };
    let mut sniffed = {
        let files: Vec<LandedFile> = todo.iter().map(|(f, _)| f.clone()).collect();
        let csv = source.csv.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Sniffed>> {
            files
                .iter()
                .map(|f| sniff::sniff(f, &csv, handle.clone()))
                .collect()
        })
        .await
        .map_err(|e| ingest_error(format!("file check failed: {e}")))?
        .map_err(|e| ingest_error(e.to_string()))?
    };
    let existing: Vec<String> = match bronze {
        Some(table) => delta::table_arrow_schema(table)?
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !n.starts_with('_'))
            .collect(),
        None => vec![],
    };
    let mut columns = existing.clone();
    for c in source.csv.columns.iter().flatten() {
        if !columns.contains(&c.to_lowercase()) {
            columns.push(c.to_lowercase());
        }
    }
    for s in sniffed.iter_mut() {
        let Some(header) = &s.header else { continue };
        if s.refused.is_some() {
            continue;
        }
        if let Some(why) = unmatched_rename(&source.csv, header, &source.file) {
            s.refused = Some(why);
            continue;
        }
        let new: Vec<&String> = header.iter().filter(|n| !columns.contains(n)).collect();
        if new.is_empty() {
            continue;
        }
        if columns.is_empty() || source.csv.on_schema_change == SchemaChange::AppendNewColumns {
            let new: Vec<String> = new.into_iter().cloned().collect();
            columns.extend(new);
        } else {
            s.refused = Some(format!(
                "its header has column(s) {new:?} that bronze.{} does not have, and on_schema_change = \"fail\" in {}. Add them to `columns`, map them with `rename`, or set on_schema_change = \"append_new_columns\"",
                source.name,
                source.file.display()
            ));
        }
    }
    if columns.is_empty() {
        return Err(ingest_error(
            "no columns: declare `columns = [...]` in the source settings, or land a file with a header".into(),
        ));
    }
    Ok(Layout {
        sniffed,
        existing,
        columns,
    })
}

/// The two tables an ingest writes, created or widened to the settled
/// columns, with how each is written.
struct Targets {
    bronze: DeltaTable,
    bronze_spec: WriteSpec,
    rejects: DeltaTable,
    reject_spec: WriteSpec,
}

impl Targets {
    async fn prepare(
        lake: &Lake,
        source: &Source,
        run_id: &str,
        bronze: Option<&DeltaTable>,
        layout: &Layout,
    ) -> Result<Self> {
        let opts = lake.storage_options();
        let bronze_url = lake.url(&bronze_table(&source.name));
        let reject_url = lake.url(&reject_table(&source.name));
        let added: Vec<deltalake::kernel::StructField> = layout
            .columns
            .iter()
            .filter(|c| !layout.existing.contains(c))
            .map(|c| {
                deltalake::kernel::StructField::new(
                    c.clone(),
                    deltalake::kernel::DataType::STRING,
                    true,
                )
            })
            .collect();
        if let (Some(table), false) = (bronze, added.is_empty()) {
            tracing::info!(source = %source.name, columns = ?added.iter().map(|f| f.name().clone()).collect::<Vec<_>>(), "adding new columns to bronze");
            table.clone().add_columns().with_fields(added).await?;
        }
        let schema = bronze_schema(&layout.columns);
        let bronze_spec = bronze_spec(source, run_id);
        let reject_spec = WriteSpec {
            table_name: format!("quarantine.bronze_{}", source.name),
            description: Some(format!(
                "Rows of bronze.{} that could not be read, with the reason",
                source.name
            )),
            ..bronze_spec.clone()
        };
        Ok(Self {
            bronze: delta::ensure_table(&bronze_url, opts, &schema, &bronze_spec).await?,
            rejects: delta::ensure_table(&reject_url, opts, &reject_schema(), &reject_spec).await?,
            bronze_spec,
            reject_spec,
        })
    }
}

/// Phase 3: the files parsed into staged (invisible) Parquet files.
struct Parsed {
    rows: delta::Staged,
    rejects: delta::Staged,
    /// Each file's report, in the order of the selection.
    files: Vec<FileReport>,
}

/// Runs the ingest's plan ([`task::IngestNode`]) wherever the session runs
/// plans: the files not refused, split into `tasks` groups of about equal
/// size, each parsed by one task into its own bronze and reject files.
#[allow(clippy::too_many_arguments)]
async fn parse(
    ctx: &datafusion::prelude::SessionContext,
    source: &Source,
    todo: &[(LandedFile, bool)],
    layout: Layout,
    targets: &Targets,
    run_id: &str,
    ingested_at: chrono::DateTime<chrono::Utc>,
    progress: Arc<dyn Progress>,
    tasks: usize,
) -> Result<Parsed> {
    let mut files: Vec<Option<FileReport>> = vec![None; todo.len()];
    let mut taken = Vec::new();
    for (i, ((file, rejects_done), sniffed)) in todo.iter().zip(&layout.sniffed).enumerate() {
        match &sniffed.refused {
            Some(why) => {
                tracing::warn!(file = %file.name, "refused: {why}");
                files[i] = Some(FileReport {
                    file: file.name.clone(),
                    refused: Some(why.clone()),
                    ..Default::default()
                });
            }
            None => {
                // The driver's session reaches each file's store the way
                // the glob found it; a cluster's nodes use their own.
                if file.local_path.is_none() {
                    if let Ok(url) = url::Url::parse(&file.store_url) {
                        if ctx
                            .runtime_env()
                            .object_store_registry
                            .get_store(&url)
                            .is_err()
                        {
                            ctx.register_object_store(&url, file.store.clone());
                        }
                    }
                }
                taken.push(task::TaskFile::new(file, *rejects_done, i));
            }
        }
    }
    let bytes: u64 = taken.iter().map(|f| f.size).sum();
    progress.start(bytes);
    let (mut adds, mut reject_adds) = (Vec::new(), Vec::new());
    if !taken.is_empty() {
        let on_cluster = crate::cluster::on_cluster(ctx);
        let tasks = match on_cluster {
            true => cluster_tasks(bytes, tasks),
            false => tasks,
        };
        let spec = task::IngestSpec {
            source: source.name.clone(),
            bronze_url: targets.bronze.table_url().to_string(),
            bronze_schema: encode_schema(delta::table_arrow_schema(&targets.bronze)?.as_ref())?,
            reject_url: targets.rejects.table_url().to_string(),
            reject_schema: encode_schema(delta::table_arrow_schema(&targets.rejects)?.as_ref())?,
            parser: Parser {
                columns: layout.columns,
                header: source.csv.header,
                delimiter: source.csv.delimiter,
                quote: source.csv.quote,
                max_field_bytes: source.csv.max_field_bytes,
                rename: source.csv.rename.clone(),
                run_id: run_id.to_string(),
                ingested_at: ingested_at.timestamp_micros(),
            },
            tasks: vec![],
        };
        let watch = task::Watch::new(progress.clone());
        let (min_piece, asked) = split_bytes();
        // In one process a task's parser and its writers keep two cores
        // busy, so a file gets at most half as many pieces as there are
        // tasks (at 10M rows in one 886 MB file on 2 cores, two pieces
        // took 7.0-8.1 s against 6.5-7.2 s whole); a cluster's pieces run
        // on other nodes. An explicit LAKEHOUSE_INGEST_SPLIT_BYTES asks for
        // pieces whenever there is more than one task; on a cluster they are
        // cut as small as asked (up to CLUSTER_TASKS of them), then grouped
        // into the tasks.
        let most = match (on_cluster, asked) {
            (true, true) => CLUSTER_TASKS,
            (true, false) | (false, true) => tasks,
            (false, false) => tasks / 2,
        };
        let pieces = task::split(taken.clone(), most, min_piece);
        let split = pieces.len() > taken.len();
        let mut done = run_ingest(ctx, &spec, task::group(pieces, tasks), &watch).await?;
        if split {
            if let Some(why) = done.seams_broken() {
                // A piece began inside a quoted value (a line break in it):
                // what the pieces wrote is dropped (never committed), and
                // the files are parsed whole.
                tracing::warn!(source = %source.name, "{why}: the files are parsed whole instead");
                progress.start(bytes);
                let watch = task::Watch::new(progress);
                done = run_ingest(ctx, &spec, task::group(taken, tasks), &watch).await?;
            }
        }
        adds = done.adds;
        reject_adds = done.reject_adds;
        for (i, slot) in files.iter_mut().enumerate() {
            if let Some(report) = done.reports.remove(&i) {
                *slot = Some(report);
            }
        }
    }
    let files: Vec<FileReport> = files.into_iter().flatten().collect();
    if files.len() != todo.len() {
        return Err(Error::Internal(format!(
            "{} of {} files of source {} were parsed",
            files.len(),
            todo.len(),
            source.name
        )));
    }
    // Rows the tasks wrote: the rows of every file taken, and the rejects
    // of those whose rejects were not committed before.
    let rows = files.iter().map(|f| f.rows).sum();
    let rejected = files
        .iter()
        .zip(todo)
        .filter(|(_, (_, done))| !done)
        .map(|(f, _)| f.rejected)
        .sum();
    Ok(Parsed {
        rows: delta::Staged::from_adds(adds, rows),
        rejects: delta::Staged::from_adds(reject_adds, rejected),
        files,
    })
}

/// The bytes below which a landed file is never split into pieces
/// (`LAKEHOUSE_INGEST_SPLIT_BYTES`, default 64 MiB), and whether the
/// setting was given.
fn split_bytes() -> (u64, bool) {
    match std::env::var("LAKEHOUSE_INGEST_SPLIT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &u64| n > 0)
    {
        Some(n) => (n, true),
        None => (64 << 20, false),
    }
}

/// What an ingest job's tasks wrote and found.
struct Ingested {
    adds: Vec<deltalake::kernel::Add>,
    reject_adds: Vec<deltalake::kernel::Add>,
    /// Per file (by its place in the list), its pieces' reports merged.
    reports: HashMap<usize, FileReport>,
    /// Per file, the bytes each of its pieces took.
    took: HashMap<usize, Vec<(u64, u64)>>,
}

impl Ingested {
    /// Why the pieces of some file do not add up to one reading of it:
    /// each must begin where the one before it ended (where a reader of
    /// the whole file found a record to start). `None` when they all do.
    fn seams_broken(&self) -> Option<String> {
        for (i, took) in &self.took {
            if self.reports.get(i).is_some_and(|r| r.refused.is_some()) {
                continue;
            }
            let mut took = took.clone();
            took.sort();
            if took.first().is_some_and(|t| t.0 != 0) {
                return Some(format!(
                    "the first piece of file #{i} began at byte {}",
                    took[0].0
                ));
            }
            for pair in took.windows(2) {
                if pair[0].1 != pair[1].0 {
                    let name = self.reports.get(i).map(|r| r.file.as_str()).unwrap_or("?");
                    return Some(format!(
                        "{name} could not be split at byte {}: the piece before it ended its last record at byte {}",
                        pair[1].0, pair[0].1
                    ));
                }
            }
        }
        None
    }
}

/// Runs one ingest job over `tasks` and reads its messages back.
async fn run_ingest(
    ctx: &datafusion::prelude::SessionContext,
    spec: &task::IngestSpec,
    tasks: Vec<Vec<task::TaskFile>>,
    watch: &task::Watch,
) -> Result<Ingested> {
    let spec = task::IngestSpec {
        tasks,
        ..spec.clone()
    };
    let node = task::IngestNode::new(&spec, watch.clone())?;
    let plan =
        datafusion::logical_expr::LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(node),
        });
    let batches = crate::cluster::collect_bounded(ctx, plan)
        .await
        .map_err(|e| {
            let message = match &e {
                Error::DataFusion(d) => match crate::cluster::stage::task_cause(d) {
                    Some(Error::Ingest { message, .. }) => message.clone(),
                    _ => d.to_string(),
                },
                _ => return e,
            };
            Error::Ingest {
                source_name: spec.source.clone(),
                message,
            }
        })?;
    let mut done = Ingested {
        adds: vec![],
        reject_adds: vec![],
        reports: HashMap::new(),
        took: HashMap::new(),
    };
    for batch in &batches {
        for text in batch.column(0).as_string::<i32>().iter().flatten() {
            match Message::parse(text)? {
                Message::Table(add) => done.adds.push(add),
                Message::Quarantine(add) => done.reject_adds.push(add),
                Message::Ingested(i, report, took) => {
                    done.took.entry(i).or_default().push(took);
                    match done.reports.remove(&i) {
                        Some(earlier) => done.reports.insert(i, earlier.merge(report)),
                        None => done.reports.insert(i, report),
                    };
                }
                other => {
                    return Err(Error::Internal(format!(
                        "an ingest task of {} sent {other:?}",
                        spec.source
                    )))
                }
            }
        }
    }
    Ok(done)
}

/// Phase 4: rejects, then bronze, committed with the ingestion markers of
/// the files taken; files taken again replace their earlier rows in the
/// same commits. The report's `reconciled` compares the lines read with
/// the rows each table's log records.
async fn commit(
    selection: Selection,
    parsed: Parsed,
    targets: Targets,
    reingest: &[String],
) -> Result<SourceReport> {
    let Selection {
        mut report, todo, ..
    } = selection;
    let Parsed {
        rows: mut staged_rows,
        rejects: mut staged_rejects,
        files,
    } = parsed;
    let Targets {
        bronze,
        mut bronze_spec,
        rejects,
        mut reject_spec,
        ..
    } = targets;
    let taken = || {
        todo.iter()
            .zip(files.iter())
            .filter(|(_, r)| r.refused.is_none())
    };
    let txns = |only_new_rejects: bool| -> Vec<Transaction> {
        taken()
            .filter(|((_, rejects_done), _)| !(only_new_rejects && *rejects_done))
            .flat_map(|((f, _), _)| ingest_txns(f))
            .collect()
    };
    // Files taken again: their earlier rows leave both tables in the same
    // commits that add their new rows; the other rows of the data files
    // holding them are carried over into new files.
    let replacing: Vec<String> = taken()
        .filter(|((f, _), _)| reingest.contains(&f.name))
        .map(|((f, _), _)| f.name.clone())
        .collect();
    let (carried, bronze_replace, n) = drop_rows_of(
        &bronze,
        &mut staged_rows,
        &replacing,
        &bronze_spec.table_name,
    )
    .await?;
    report.rows_replaced += n;
    let (carried_rejects, reject_replace, n) = drop_rows_of(
        &rejects,
        &mut staged_rejects,
        &replacing,
        &reject_spec.table_name,
    )
    .await?;
    report.rows_replaced += n;

    // Rejects first: if the run dies between the two commits, the next run
    // re-reads the files but, seeing their rejects recorded, skips them.
    // (A file taken again is taken again whole: run the same --reingest.)
    reject_spec.replace = reject_replace;
    reject_spec.transactions = txns(true);
    let (_, rejects_written) = delta::commit(rejects, staged_rejects, &reject_spec).await?;
    bronze_spec.transactions = txns(false);
    bronze_spec.replace = bronze_replace;
    let (_, written) = delta::commit(bronze, staged_rows, &bronze_spec).await?;
    let rejects_expected: u64 = taken()
        .filter(|((_, done), _)| !done)
        .map(|(_, r)| r.rejected)
        .sum();

    report.rows = taken().map(|(_, f)| f.rows).sum();
    report.rejected = taken().map(|(_, f)| f.rejected).sum();
    report.lines = taken().map(|(_, f)| f.lines).sum();
    report.version = written.version;
    report.data_files = written.files_added;
    report.reconciled = report.lines == report.rows + report.rejected
        && written.rows_in_files == report.rows + carried
        && rejects_written.rows_in_files == rejects_expected + carried_rejects;
    report.files = files;
    Ok(report)
}

/// Prepares the removal of the rows of `files` from `table`: the data files
/// holding them are to be replaced (the returned [`Replace`]) and their other
/// rows are staged again into `staged`. Returns the rows carried over, the
/// replacement and the rows removed.
async fn drop_rows_of(
    table: &DeltaTable,
    staged: &mut delta::Staged,
    files: &[String],
    table_name: &str,
) -> Result<(u64, Replace, u64)> {
    match delta::rows_other_than(table, SOURCE_FILE, files).await? {
        None => Ok((0, Replace::Nothing, 0)),
        Some((paths, removed, stream)) => {
            let kept = delta::stage(table, vec![stream], table_name).await?;
            let carried = kept.rows();
            staged.carry(kept);
            Ok((carried, Replace::Files(paths), removed))
        }
    }
}

/// How bronze is written: appended, unpartitioned, with the run's metadata.
fn bronze_spec(source: &Source, run_id: &str) -> WriteSpec {
    WriteSpec {
        table_name: format!("bronze.{}", source.name),
        partition_by: vec![],
        replace: Replace::Nothing,
        transactions: vec![],
        metadata: run_metadata(run_id, "ingest"),
        description: source.csv.description.clone(),
        symlink_manifest: false,
        upsert: None,
    }
}

pub fn run_metadata(run_id: &str, step: &str) -> HashMap<String, serde_json::Value> {
    HashMap::from([
        (
            "lakehouse.runId".to_string(),
            serde_json::Value::String(run_id.to_string()),
        ),
        (
            "lakehouse.step".to_string(),
            serde_json::Value::String(step.to_string()),
        ),
    ])
}

/// The size a file had when it was ingested (its `txn` version), if it was.
async fn ingested_size(table: &Option<DeltaTable>, app_id: &str) -> Result<Option<i64>> {
    match table {
        None => Ok(None),
        Some(t) => Ok(t
            .snapshot()?
            .transaction_version(t.log_store().as_ref(), app_id)
            .await?),
    }
}

/// How a task parses a source's files into bronze's columns: decided on
/// the driver, carried in the ingest's plan.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Parser {
    /// Bronze's columns, settled before any row is taken.
    columns: Vec<String>,
    header: bool,
    delimiter: u8,
    quote: u8,
    max_field_bytes: usize,
    /// Header name (case-insensitive) -> bronze column name.
    rename: Vec<(String, String)>,
    run_id: String,
    /// Microseconds since 1970, UTC.
    ingested_at: i64,
}

type Tx = mpsc::Sender<RecordBatch>;

/// Logs what a file's report says is worth a look.
fn log_file(report: &FileReport) {
    if !report.missing_columns.is_empty() {
        tracing::warn!(file = %report.file, columns = ?report.missing_columns, rows = report.rows, "the file's header lacks declared column(s): NULL for every one of its rows");
    }
    if !report.empty_columns.is_empty() {
        tracing::warn!(file = %report.file, columns = ?report.empty_columns, rows = report.rows, "column(s) empty in every row of the file");
    }
}

impl Parser {
    fn options(&self) -> CsvOptions {
        CsvOptions {
            delimiter: self.delimiter,
            quote: self.quote,
            max_field_bytes: self.max_field_bytes,
        }
    }

    /// Parses one file, or the piece of it whose records start in bytes
    /// `range` (the header is read from the file's start either way),
    /// sending bronze's rows to `rows_tx` and the rejected lines to `rej_tx`
    /// (unless `rejects_done`). Returns the report and the bytes the piece
    /// took: from the first line start at or after the range's start, to
    /// the end of its last record (the whole file: 0 to its end). Pieces
    /// that meet end to start read exactly what one reader of the whole
    /// file would.
    fn parse_file(
        &self,
        file: &LandedFile,
        rejects_done: bool,
        range: Option<(u64, u64)>,
        rows_tx: &Tx,
        rej_tx: &Tx,
        handle: &tokio::runtime::Handle,
    ) -> std::io::Result<(FileReport, (u64, u64))> {
        let schema = bronze_schema(&self.columns);
        let input = reader::open(file, handle.clone())?;
        let mut csv = CsvReader::new(input, self.options());
        let mut rec = Record::default();
        let mut report = FileReport {
            file: file.name.clone(),
            ..Default::default()
        };
        let ncols = self.columns.len();
        // Which record field feeds each bronze column.
        let mut mapping: Vec<Option<usize>> = (0..ncols).map(Some).collect();
        let mut header: Option<Vec<Vec<u8>>> = None;
        let mut expected_fields = ncols;
        if self.header {
            if !csv.next(&mut rec)? {
                report.blank_lines = csv.blank_lines;
                return Ok((report, (0, csv.position())));
            }
            if let Some(err) = &rec.error {
                report.refused = Some(format!(
                    "the header line is malformed ({err}); fix the file's first line"
                ));
                return Ok((report, (0, csv.position())));
            }
            let names = sniff::normalise_header(&rec, &self.rename);
            if let Some(unknown) = names.iter().find(|n| !self.columns.contains(n)) {
                // The file check settled the columns; a header that differs now
                // means the file changed while it was being read.
                report.refused = Some(format!("its header column `{unknown}` appeared after the file was checked; the file changed while being read"));
                return Ok((report, (0, csv.position())));
            }
            report.missing_columns = self
                .columns
                .iter()
                .filter(|c| !names.contains(c))
                .cloned()
                .collect();
            mapping = self
                .columns
                .iter()
                .map(|c| names.iter().position(|n| n == c))
                .collect();
            expected_fields = names.len();
            header = Some((0..rec.len()).map(|i| rec.field(i).to_vec()).collect());
        }

        let mut b = Builders::new(ncols);
        // Whether each column held a non-empty value in some row.
        let mut filled = vec![false; mapping.len()];
        let mut r = RejectBuilders::default();
        let name = file.name.as_str();
        let (from, until) = range.unwrap_or((0, u64::MAX));
        if from > 0 {
            csv.skip_to_line_start(from)?;
        }
        let start = if from > 0 { csv.position() } else { 0 };
        // Blank lines before the piece (and the header's) are not its own.
        let blanks_before = if from > 0 { csv.blank_lines } else { 0 };
        let (end, blanks) = loop {
            let (before, blanks) = (csv.position(), csv.blank_lines);
            if !csv.next(&mut rec)? {
                break (csv.position(), csv.blank_lines);
            }
            if rec.offset >= until {
                // The next piece's first record.
                break (before, blanks);
            }
            report.lines += 1;
            let error = rec.error.take();
            let text = error.is_none().then(|| record_text(&rec)).flatten();
            let problem = if let Some(err) = error {
                Some(err)
            } else if rec.len() != expected_fields {
                Some(format!(
                    "expected {expected_fields} fields, found {}",
                    rec.len()
                ))
            } else if rec.data.contains(&0) {
                let i = (0..rec.len()).find(|&i| rec.field(i).contains(&0));
                Some(format!("NUL byte in field {}", i.unwrap_or(0) + 1))
            } else if text.is_none() {
                let i = (0..rec.len()).find(|&i| std::str::from_utf8(rec.field(i)).is_err());
                Some(format!("invalid UTF-8 in field {}", i.unwrap_or(0) + 1))
            } else if header.as_ref().is_some_and(|h| {
                h.len() == rec.len() && (0..rec.len()).all(|i| h[i] == rec.field(i))
            }) {
                Some("repeated header line".to_string())
            } else {
                None
            };
            match problem {
                Some(reason) => {
                    report.rejected += 1;
                    if !rejects_done {
                        r.push(name, &rec, &reason);
                        if r.len() >= BATCH_ROWS {
                            send(rej_tx, r.finish(&self.run_id, self.ingested_at))?;
                        }
                    }
                }
                None => {
                    report.rows += 1;
                    // Checked above: the record's text, cut at its fields.
                    let text = text.unwrap_or_default();
                    for (col, m) in mapping.iter().enumerate() {
                        match m {
                            Some(i) => {
                                let value = text.get(rec.span(*i)).unwrap_or_default();
                                filled[col] |= !value.is_empty();
                                b.cols[col].append_value(value)
                            }
                            None => b.cols[col].append_null(),
                        }
                    }
                    b.lines.append_value(rec.line as i64);
                    if b.lines.len() >= BATCH_ROWS {
                        send(
                            rows_tx,
                            b.finish(&schema, name, &self.run_id, self.ingested_at)?,
                        )?;
                        // A read that breaks after rows reached the writer.
                        crate::failpoint::check("ingest-read").map_err(std::io::Error::other)?;
                    }
                }
            }
        };
        if b.lines.len() > 0 {
            send(
                rows_tx,
                b.finish(&schema, name, &self.run_id, self.ingested_at)?,
            )?;
        }
        if r.len() > 0 {
            send(rej_tx, r.finish(&self.run_id, self.ingested_at))?;
        }
        report.blank_lines = blanks - blanks_before;
        if report.rows > 0 {
            report.empty_columns = mapping
                .iter()
                .zip(&self.columns)
                .zip(&filled)
                .filter(|((m, _), filled)| m.is_some() && !**filled)
                .map(|((_, c), _)| c.clone())
                .collect();
        }
        Ok((report, (start, end)))
    }
}

/// The record's field bytes as text when every field is valid UTF-8: the
/// bytes are checked once, and every field must end on a character
/// boundary (a field cut inside a character is itself invalid).
fn record_text(rec: &Record) -> Option<&str> {
    let text = std::str::from_utf8(&rec.data).ok()?;
    rec.ends
        .iter()
        .all(|&end| text.is_char_boundary(end))
        .then_some(text)
}

/// Why a file whose header has neither a `rename` key nor the column it
/// renames to is refused: that column would be NULL for every row, the
/// classic result of a misspelt key. `None` when every rename finds its
/// column, or the source takes such files (`lenient_columns = true`).
fn unmatched_rename(
    csv: &crate::pipeline::CsvSource,
    header: &[String],
    settings_file: &std::path::Path,
) -> Option<String> {
    if csv.lenient_columns {
        return None;
    }
    let (from, to) = csv
        .rename
        .iter()
        .find(|(_, to)| !header.contains(&to.to_lowercase()))?;
    let hint = crate::pipeline::nearest(from, header.iter().map(String::as_str))
        .map(|n| format!(" The nearest header is {n}."))
        .unwrap_or_default();
    Some(format!(
        "its header has no column `{from}` (rename {from} = \"{to}\" in {}), so `{to}` would be NULL for every row. Headers found: {}.{hint} Fix the rename key, or set lenient_columns = true to take such files with `{to}` NULL",
        settings_file.display(),
        header.join(", ")
    ))
}

fn send(tx: &Tx, batch: RecordBatch) -> std::io::Result<()> {
    tx.blocking_send(batch)
        .map_err(|_| std::io::Error::other("the bronze writer stopped"))
}

struct Builders {
    cols: Vec<StringBuilder>,
    lines: Int64Builder,
}

impl Builders {
    fn new(n: usize) -> Self {
        Self {
            cols: (0..n)
                .map(|_| StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 8))
                .collect(),
            lines: Int64Builder::with_capacity(BATCH_ROWS),
        }
    }

    fn finish(
        &mut self,
        schema: &SchemaRef,
        file: &str,
        run_id: &str,
        at: i64,
    ) -> std::io::Result<RecordBatch> {
        let n = self.lines.len();
        let mut arrays: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|c| Arc::new(c.finish()) as ArrayRef)
            .collect();
        arrays.push(Arc::new(datafusion::arrow::array::StringArray::from(
            vec![file; n],
        )));
        arrays.push(Arc::new(self.lines.finish()));
        arrays.push(Arc::new(
            TimestampMicrosecondArray::from(vec![at; n]).with_timezone("UTC"),
        ));
        arrays.push(Arc::new(datafusion::arrow::array::StringArray::from(
            vec![run_id; n],
        )));
        RecordBatch::try_new(schema.clone(), arrays).map_err(std::io::Error::other)
    }
}

#[derive(Default)]
struct RejectBuilders {
    files: StringBuilder,
    lines: Int64Builder,
    offsets: Int64Builder,
    reasons: StringBuilder,
    raw: BinaryBuilder,
    raw_text: StringBuilder,
}

impl RejectBuilders {
    fn len(&self) -> usize {
        self.lines.len()
    }

    fn push(&mut self, file: &str, rec: &Record, reason: &str) {
        self.files.append_value(file);
        self.lines.append_value(rec.line as i64);
        self.offsets.append_value(rec.offset as i64);
        self.reasons.append_value(reason);
        self.raw.append_value(&rec.raw);
        self.raw_text
            .append_value(String::from_utf8_lossy(&rec.raw));
    }

    fn finish(&mut self, run_id: &str, at: i64) -> RecordBatch {
        let n = self.len();
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(self.files.finish()),
            Arc::new(self.lines.finish()),
            Arc::new(self.offsets.finish()),
            Arc::new(self.reasons.finish()),
            Arc::new(self.raw.finish()),
            Arc::new(self.raw_text.finish()),
            Arc::new(TimestampMicrosecondArray::from(vec![at; n]).with_timezone("UTC")),
            Arc::new(datafusion::arrow::array::StringArray::from(vec![run_id; n])),
        ];
        RecordBatch::try_new(reject_schema(), arrays)
            .expect("reject batch matches its schema by construction")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::compute::concat_batches;

    /// Records of every shape the reader knows: quoted values holding line
    /// breaks (LF and CRLF), CRLF and LF line ends, blank lines, short
    /// rows and stray quotes.
    fn tricky_csv() -> Vec<u8> {
        let mut out = String::from("id,name,note\n");
        for i in 0..400 {
            let end = if i % 3 == 0 { "\r\n" } else { "\n" };
            match i % 11 {
                0 => out.push_str(&format!("{i},\"two\nlines {i}\",x{end}")),
                1 => out.push_str(&format!("{i},\"crlf\r\ninside\",\"q\"\"uote\"{end}")),
                2 => out.push_str(&format!("{i},short{end}")),
                3 => out.push_str(&format!("{end}   {end}{i},after blanks,y{end}")),
                4 => out.push_str(&format!("{i},st\"ray,z{end}")),
                _ => out.push_str(&format!("{i},name {i},note {}{end}", i * 7)),
            }
        }
        out.into_bytes()
    }

    fn parser() -> Parser {
        Parser {
            columns: vec!["id".into(), "name".into(), "note".into()],
            header: true,
            delimiter: b',',
            quote: b'"',
            max_field_bytes: 1 << 20,
            rename: vec![],
            run_id: "r".into(),
            ingested_at: 0,
        }
    }

    type Read = (FileReport, (u64, u64), Vec<RecordBatch>, Vec<RecordBatch>);

    fn read(file: &LandedFile, range: Option<(u64, u64)>, handle: &tokio::runtime::Handle) -> Read {
        let (rows_tx, mut rows_rx) = mpsc::channel(10_000);
        let (rej_tx, mut rej_rx) = mpsc::channel(10_000);
        let (report, took) = parser()
            .parse_file(file, false, range, &rows_tx, &rej_tx, handle)
            .unwrap();
        drop((rows_tx, rej_tx));
        let drain = |rx: &mut mpsc::Receiver<RecordBatch>| {
            std::iter::from_fn(|| rx.blocking_recv()).collect::<Vec<_>>()
        };
        (report, took, drain(&mut rows_rx), drain(&mut rej_rx))
    }

    fn one_batch(schema: SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
        concat_batches(&schema, batches).unwrap()
    }

    #[test]
    fn pieces_that_meet_read_exactly_what_one_reader_of_the_file_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tricky.csv");
        let bytes = tricky_csv();
        std::fs::write(&path, &bytes).unwrap();
        let file = LandedFile {
            name: "landing/tricky.csv".into(),
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            store_url: "file://".into(),
            location: object_store::path::Path::from("tricky.csv"),
            size: bytes.len() as u64,
            last_modified: chrono::Utc::now(),
            e_tag: None,
            local_path: Some(path),
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let handle = runtime.handle().clone();
        let schema = bronze_schema(&parser().columns);
        let (whole, took, rows, rejects) = read(&file, None, &handle);
        assert_eq!(took, (0, bytes.len() as u64));
        assert!(
            whole.rejected > 50 && whole.rows > 250 && whole.blank_lines > 50,
            "{whole:?}"
        );
        let rows = one_batch(schema.clone(), &rows);
        let rejects = one_batch(reject_schema(), &rejects);

        let (mut met, mut broken) = (0, 0);
        for at in (1..bytes.len() as u64).step_by(7) {
            let (first, took_a, rows_a, rej_a) = read(&file, Some((0, at)), &handle);
            let (second, took_b, rows_b, rej_b) = read(&file, Some((at, u64::MAX)), &handle);
            assert_eq!(took_a.0, 0);
            assert_eq!(
                took_b.1,
                bytes.len() as u64,
                "the last piece reads to the end"
            );
            if took_a.1 != took_b.0 {
                // The second piece began inside a quoted value: the seam
                // shows it, and the driver reads the file whole instead.
                broken += 1;
                continue;
            }
            met += 1;
            let merged = first.merge(second);
            assert_eq!(
                (
                    merged.lines,
                    merged.rows,
                    merged.rejected,
                    merged.blank_lines
                ),
                (whole.lines, whole.rows, whole.rejected, whole.blank_lines),
                "split at byte {at}"
            );
            let both: Vec<RecordBatch> = rows_a.into_iter().chain(rows_b).collect();
            assert_eq!(
                one_batch(schema.clone(), &both),
                rows,
                "rows, split at byte {at}"
            );
            let both: Vec<RecordBatch> = rej_a.into_iter().chain(rej_b).collect();
            assert_eq!(
                one_batch(reject_schema(), &both),
                rejects,
                "rejects, split at byte {at}"
            );
        }
        assert!(met > 500 && broken > 10, "met {met}, broken {broken}");
    }

    /// On a cluster, a task per 256 MiB of landed bytes, at least one per
    /// core and at most 256: the example's 846 MB at 10M rows is 4 tasks
    /// (4 bronze files, none small), not one per landed file.
    #[test]
    fn cluster_ingests_take_a_task_per_256_mib() {
        use super::{cluster_tasks, CLUSTER_TASKS, CLUSTER_TASK_BYTES};
        assert_eq!(cluster_tasks(846_000_000, 2), 4);
        assert_eq!(cluster_tasks(0, 2), 2);
        assert_eq!(cluster_tasks(1_000, 0), 1);
        assert_eq!(cluster_tasks(CLUSTER_TASK_BYTES, 1), 1);
        assert_eq!(cluster_tasks(CLUSTER_TASK_BYTES + 1, 1), 2);
        assert_eq!(cluster_tasks(10 * CLUSTER_TASK_BYTES, 16), 16);
        assert_eq!(cluster_tasks(88_000_000_000, 8), CLUSTER_TASKS);
        assert_eq!(cluster_tasks(u64::MAX, 8), CLUSTER_TASKS);
        assert_eq!(cluster_tasks(1, 1000), CLUSTER_TASKS);
    }

    #[test]
    fn large_uncompressed_files_are_cut_into_shares_of_the_bytes() {
        let file = task::tests::file;
        let files = vec![
            file("big.csv", 1000, 0),
            file("small.csv", 100, 1),
            file("big.csv.gz", 1000, 2),
        ];
        // 2,100 bytes over 4 tasks: shares of 525 bytes.
        let pieces = task::split(files.clone(), 4, 10);
        let ranges: Vec<(usize, Option<(u64, u64)>)> =
            pieces.iter().map(|p| (p.index, p.range)).collect();
        assert_eq!(
            ranges,
            vec![
                (0, Some((0, 500))),
                (0, Some((500, u64::MAX))),
                (1, None),
                (2, None)
            ]
        );
        // Pieces are never smaller than the minimum.
        assert_eq!(task::split(files.clone(), 4, 2000).len(), 3);
        // One task: nothing to share.
        assert_eq!(task::split(files, 1, 10).len(), 3);
    }
}
