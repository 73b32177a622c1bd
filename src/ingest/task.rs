//! Ingestion's staging step as a plan node, so it runs wherever the session
//! runs plans: in this process, or as tasks on a cluster's executors. The
//! driver decides everything first (which files, bronze's columns, how the
//! files are grouped into tasks) and writes it into an [`IngestSpec`]; each
//! task parses its group of files and writes bronze's and the rejects'
//! Parquet files straight to the lake, then returns what it wrote and a
//! report per file as messages. Nothing is committed here: the driver
//! commits rejects, then bronze, with the files' ingestion markers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{FileReport, Parser};
use crate::cluster::metered::counter;
use crate::cluster::stage::{decode_schema, message_schema, task_error, writer, Message};
use crate::progress::Progress;
use crate::storage::LandedFile;

/// Everything an ingestion task needs, decided on the driver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IngestSpec {
    /// The source's name, for messages.
    pub source: String,
    pub bronze_url: String,
    /// Bronze's Arrow schema as the table has it (protobuf, base64).
    pub bronze_schema: String,
    pub reject_url: String,
    pub reject_schema: String,
    pub parser: Parser,
    /// The files of each task, in the order it parses them.
    pub tasks: Vec<Vec<TaskFile>>,
}

/// One landed file, as a task finds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskFile {
    /// The name bronze records.
    pub name: String,
    /// Its object store (`s3://bucket`, `file://`) and its path there.
    pub store: String,
    pub location: String,
    /// Set for a file on local disk (read without the object store).
    pub local_path: Option<std::path::PathBuf>,
    pub size: u64,
    /// Its rejects are committed already (a run died between the commits):
    /// its bronze rows are taken, its rejects are not written again.
    pub rejects_done: bool,
    /// Its place in the driver's list of files, to put the reports back in
    /// order.
    pub index: usize,
    /// The piece of the file this task parses: the records that start in
    /// these bytes (`None`: the whole file).
    #[serde(default)]
    pub range: Option<(u64, u64)>,
}

impl TaskFile {
    pub fn new(file: &LandedFile, rejects_done: bool, index: usize) -> Self {
        Self {
            name: file.name.clone(),
            store: file.store_url.clone(),
            location: file.location.to_string(),
            local_path: file.local_path.clone(),
            size: file.size,
            rejects_done,
            index,
            range: None,
        }
    }

    /// The file as the parser opens it, through the store this node has for
    /// its URL (its own settings and credentials on an executor).
    fn landed(&self, env: &RuntimeEnv) -> DfResult<LandedFile> {
        let store = match &self.local_path {
            Some(_) => Arc::new(object_store::local::LocalFileSystem::new()) as _,
            None => {
                let url = url::Url::parse(&self.store)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                env.object_store_registry.get_store(&url)?
            }
        };
        Ok(LandedFile {
            name: self.name.clone(),
            store,
            store_url: self.store.clone(),
            location: crate::storage::store_path(&self.location),
            size: self.size,
            last_modified: chrono::DateTime::<chrono::Utc>::MIN_UTC,
            e_tag: None,
            local_path: self.local_path.clone(),
        })
    }
}

/// The files, with each large uncompressed one cut into pieces of about
/// equal bytes, so the tasks share the work even when a few files hold
/// most of it: a file gets as many pieces as it holds shares of the bytes
/// (all files' bytes over `tasks`, at least `min_piece`), at most `tasks`
/// (here: the most pieces a file may have).
/// A piece holds the records that start in its bytes.
pub fn split(files: Vec<TaskFile>, tasks: usize, min_piece: u64) -> Vec<TaskFile> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    let share = (total / tasks.max(1) as u64).max(min_piece).max(1);
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let pieces = file.size.div_ceil(share).min(tasks.max(1) as u64);
        if pieces < 2 || super::sniff::is_compressed(&file.name) {
            out.push(file);
            continue;
        }
        for k in 0..pieces {
            let from = file.size * k / pieces;
            let until = match k + 1 == pieces {
                true => u64::MAX,
                false => file.size * (k + 1) / pieces,
            };
            out.push(TaskFile {
                range: Some((from, until)),
                ..file.clone()
            });
        }
    }
    out
}

/// The files split into `tasks` groups of about equal bytes: the largest
/// file first, each to the group with the fewest bytes so far; within a
/// group, files keep the driver's order.
pub fn group(files: Vec<TaskFile>, tasks: usize) -> Vec<Vec<TaskFile>> {
    let tasks = tasks.clamp(1, files.len().max(1));
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by(|&a, &b| files[b].size.cmp(&files[a].size).then(a.cmp(&b)));
    let mut bytes = vec![0u64; tasks];
    let mut owner = vec![0usize; files.len()];
    for i in order {
        let g = (0..tasks).min_by_key(|&g| (bytes[g], g)).unwrap_or(0);
        bytes[g] += files[i].size;
        owner[i] = g;
    }
    let mut groups: Vec<Vec<TaskFile>> = vec![Vec::new(); tasks];
    for (file, g) in files.into_iter().zip(owner) {
        groups[g].push(file);
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// The progress bar of an ingest run in this process, and the bytes its
/// tasks have parsed so far. Never travels: a task on another node has
/// none. Any two are equal, so plans compare by their recipe alone.
#[derive(Clone, Default)]
pub struct Watch(Option<(Arc<dyn Progress>, Arc<AtomicU64>)>);

impl Watch {
    pub fn new(progress: Arc<dyn Progress>) -> Self {
        Self(Some((progress, Arc::new(AtomicU64::new(0)))))
    }

    fn parsed(&self, bytes: u64) {
        if let Some((progress, done)) = &self.0 {
            progress.at(done.fetch_add(bytes, Ordering::Relaxed) + bytes);
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

impl PartialEq for Watch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Watch {}

impl std::hash::Hash for Watch {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// The logical form of an ingest: no input; one message per row out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IngestNode {
    /// The [`IngestSpec`] as JSON (comparable and hashable as text).
    spec: String,
    schema: DFSchemaRef,
    watch: Watch,
}

impl IngestNode {
    pub fn new(spec: &IngestSpec, watch: Watch) -> DfResult<Self> {
        Ok(Self {
            spec: serde_json::to_string(spec)
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
            schema: Arc::new(DFSchema::try_from(message_schema().as_ref().clone())?),
            watch,
        })
    }

    fn spec(&self) -> DfResult<IngestSpec> {
        parse_spec(self.spec.as_bytes())
    }
}

impl PartialOrd for IngestNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.spec.partial_cmp(&other.spec)
    }
}

fn parse_spec(body: &[u8]) -> DfResult<IngestSpec> {
    serde_json::from_slice(body).map_err(|e| {
        DataFusionError::Internal(format!(
            "cannot read an ingest recipe from another lakehouse node: {e}. Every node of a cluster must run the same lakehouse version"
        ))
    })
}

impl UserDefinedLogicalNodeCore for IngestNode {
    fn name(&self) -> &str {
        "LakehouseIngest"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.spec() {
            Ok(s) => write!(f, "LakehouseIngest: {} -> {}", s.source, s.bronze_url),
            Err(_) => write!(f, "LakehouseIngest"),
        }
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        _inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        Ok(self.clone())
    }
}

/// The recipe of an ingest node, `None` for any other node.
pub fn encode_logical(node: &Extension) -> DfResult<Option<(&'static str, serde_json::Value)>> {
    match node.node.as_any().downcast_ref::<IngestNode>() {
        Some(ingest) => Ok(Some(("ingest", json(&ingest.spec()?)?))),
        None => Ok(None),
    }
}

pub fn decode_logical(body: &[u8]) -> DfResult<Extension> {
    Ok(Extension {
        node: Arc::new(IngestNode::new(&parse_spec(body)?, Watch::default())?),
    })
}

pub fn encode_physical(
    node: &Arc<dyn ExecutionPlan>,
) -> DfResult<Option<(&'static str, serde_json::Value)>> {
    match node.downcast_ref::<IngestExec>() {
        Some(ingest) => Ok(Some(("ingest-exec", json(&ingest.spec)?))),
        None => Ok(None),
    }
}

pub fn decode_physical(
    body: &[u8],
    input: Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    Ok(Arc::new(IngestExec::try_new(
        input,
        parse_spec(body)?,
        Watch::default(),
    )?))
}

fn json(spec: &IngestSpec) -> DfResult<serde_json::Value> {
    serde_json::to_value(spec).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// Plans [`IngestNode`] as [`IngestExec`].
#[derive(Debug)]
pub struct IngestPlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for IngestPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        _physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(ingest) = node.as_any().downcast_ref::<IngestNode>() else {
            return Ok(None);
        };
        let mut spec = ingest.spec()?;
        let tasks = task_source(std::mem::take(&mut spec.tasks))?;
        Ok(Some(Arc::new(IngestExec::try_new(
            tasks,
            spec,
            ingest.watch.clone(),
        )?)))
    }
}

/// The schema of the ingest's input: one landed file per row
/// ([`TaskFile`] as JSON).
fn task_schema() -> SchemaRef {
    Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        datafusion::arrow::datatypes::Field::new("file", DataType::Utf8, false),
    ]))
}

/// The tasks as a scan of in-memory rows, one partition per task: a leaf
/// Ballista knows how to hand out (its scheduler gives each task only its
/// own partitions of a stage's scans; a leaf of ours would reach every
/// task whole, and each task would parse every file).
fn task_source(tasks: Vec<Vec<TaskFile>>) -> DfResult<Arc<dyn ExecutionPlan>> {
    let partitions = tasks
        .iter()
        .map(|files| {
            let rows = files
                .iter()
                .map(|f| {
                    serde_json::to_string(f).map_err(|e| DataFusionError::External(Box::new(e)))
                })
                .collect::<DfResult<Vec<String>>>()?;
            Ok(vec![RecordBatch::try_new(
                task_schema(),
                vec![Arc::new(StringArray::from(rows))],
            )?])
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(
        datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &partitions,
            task_schema(),
            None,
        )?,
    )
}

/// Parses landed files into bronze's and the rejects' Parquet files: one
/// partition (one task) per partition of its input, which lists the
/// task's files.
#[derive(Debug)]
pub struct IngestExec {
    input: Arc<dyn ExecutionPlan>,
    /// The recipe, without the files (they come from the input).
    spec: Arc<IngestSpec>,
    watch: Watch,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl IngestExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        spec: IngestSpec,
        watch: Watch,
    ) -> DfResult<Self> {
        input.schema().index_of("file")?;
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(message_schema()),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(
                input.output_partitioning().partition_count(),
            ),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            spec: Arc::new(spec),
            watch,
            props,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for IngestExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "LakehouseIngest: {} -> {}",
            self.spec.source, self.spec.bronze_url
        )
    }
}

impl ExecutionPlan for IngestExec {
    fn name(&self) -> &str {
        "LakehouseIngest"
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("LakehouseIngest has one input".into()))?;
        Ok(Arc::new(IngestExec::try_new(
            input,
            self.spec.as_ref().clone(),
            self.watch.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        use futures::TryStreamExt;
        let spec = self.spec.clone();
        let listed = self.input.execute(partition, context.clone())?;
        let watch = self.watch.clone();
        let env = context.runtime_env();
        let meters = IngestMeters {
            parse: MetricBuilder::new(&self.metrics).subset_time("parse_time", partition),
            rows: counter(&self.metrics, "written_rows", partition),
            rejected: counter(&self.metrics, "rejected_rows", partition),
            bytes: counter(&self.metrics, "bytes_parsed", partition),
            files: counter(&self.metrics, "files_written", partition),
        };
        let task = async move {
            let batches: Vec<RecordBatch> = listed.try_collect().await?;
            let mut files = Vec::new();
            for batch in &batches {
                for text in batch.column(0).as_string::<i32>().iter().flatten() {
                    files.push(serde_json::from_str::<TaskFile>(text).map_err(|e| {
                        DataFusionError::Internal(format!(
                            "an ingest task cannot read its file list ({e}); every node of a cluster must run the same lakehouse version"
                        ))
                    })?);
                }
            }
            ingest_task(spec, files, env, watch, meters)
                .await
                .map_err(task_error)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            message_schema(),
            futures::stream::once(task),
        )))
    }
}

/// What an ingest task reports in its node's metrics.
struct IngestMeters {
    /// The parser's time (tokenizing, checking and building batches).
    parse: Time,
    rows: Count,
    rejected: Count,
    bytes: Count,
    /// Bronze and reject files written.
    files: Count,
}

/// One task: its files parsed on a blocking thread, one after the other,
/// into two writers (bronze, rejects) running beside it. A file that cannot
/// be read fails the task, and with it the whole ingest of the source.
async fn ingest_task(
    spec: Arc<IngestSpec>,
    files: Vec<TaskFile>,
    env: Arc<RuntimeEnv>,
    watch: Watch,
    meters: IngestMeters,
) -> crate::error::Result<RecordBatch> {
    let landed = files
        .iter()
        .map(|f| f.landed(&env))
        .collect::<DfResult<Vec<LandedFile>>>()?;
    let (row_tx, bronze) = spawn_writer(
        &spec.bronze_url,
        &spec.bronze_schema,
        format!("bronze.{}", spec.source),
    )?;
    let (rej_tx, rejects) = spawn_writer(
        &spec.reject_url,
        &spec.reject_schema,
        format!("quarantine.bronze_{}", spec.source),
    )?;
    let files_order: Vec<usize> = files.iter().map(|f| f.index).collect();
    let parsing = {
        let spec = spec.clone();
        let handle = tokio::runtime::Handle::current();
        let parse_time = meters.parse.clone();
        tokio::task::spawn_blocking(
            move || -> crate::error::Result<Vec<(FileReport, (u64, u64))>> {
                let _timer = parse_time.timer();
                let mut reports = Vec::with_capacity(files.len());
                for (file, task_file) in landed.iter().zip(&files) {
                    let (report, took) = spec
                        .parser
                        .parse_file(
                            file,
                            task_file.rejects_done,
                            task_file.range,
                            &row_tx,
                            &rej_tx,
                            &handle,
                        )
                        .map_err(|e| crate::error::Error::Ingest {
                            source_name: spec.source.clone(),
                            message: format!("{}: {e}", file.name),
                        })?;
                    super::log_file(&report);
                    tracing::info!(source = %spec.source, file = %report.file, rows = report.rows, rejected = report.rejected, bytes = %format!("{}..{}", took.0, took.1), "file parsed");
                    watch.parsed(match task_file.range {
                        Some((from, until)) => until.min(file.size) - from,
                        None => file.size,
                    });
                    reports.push((report, took));
                }
                Ok(reports)
            },
        )
    };
    let joined = |e: tokio::task::JoinError| crate::error::Error::Ingest {
        source_name: spec.source.clone(),
        message: format!("an ingest task failed: {e}"),
    };
    // A writer that failed is the cause; the parser then only saw it stop.
    let (bronze, rejects, parsed) = tokio::join!(bronze, rejects, parsing);
    let bronze = bronze.map_err(joined)??;
    let rejects = rejects.map_err(joined)??;
    let reports = parsed.map_err(joined)??;
    meters.files.add(bronze.len() + rejects.len());
    for (report, (from, until)) in &reports {
        meters.rows.add(report.rows as usize);
        meters.rejected.add(report.rejected as usize);
        meters.bytes.add(until.saturating_sub(*from) as usize);
    }
    let mut messages: Vec<Message> = bronze.into_iter().map(Message::Table).collect();
    messages.extend(rejects.into_iter().map(Message::Quarantine));
    messages.extend(
        reports
            .into_iter()
            .zip(&files_order)
            .map(|((r, took), &i)| Message::Ingested(i, r, took)),
    );
    let texts = messages
        .iter()
        .map(Message::to_text)
        .collect::<DfResult<Vec<String>>>()?;
    Ok(RecordBatch::try_new(
        message_schema(),
        vec![Arc::new(StringArray::from(texts))],
    )?)
}

/// A writer of one table running beside the parser: the sender to feed it,
/// and its task, which ends with the files written once the sender is
/// dropped.
#[allow(clippy::type_complexity)]
fn spawn_writer(
    url: &str,
    schema: &str,
    table: String,
) -> DfResult<(
    mpsc::Sender<RecordBatch>,
    tokio::task::JoinHandle<crate::error::Result<Vec<deltalake::kernel::Add>>>,
)> {
    let schema = decode_schema(schema)?;
    let (tx, rx) = mpsc::channel::<RecordBatch>(4);
    let writer = writer(url.to_string(), schema.clone(), &[], &table);
    Ok((tx, tokio::spawn(drain(writer, rx, schema))))
}

/// Writes what arrives on `rows` until its senders are gone.
async fn drain(
    mut writer: crate::delta::SortedWriter,
    mut rows: mpsc::Receiver<RecordBatch>,
    schema: SchemaRef,
) -> crate::error::Result<Vec<deltalake::kernel::Add>> {
    while let Some(batch) = rows.recv().await {
        writer
            .write(crate::delta::conform(&batch, &schema)?)
            .await?;
    }
    writer.finish().await
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A landed file of `size` bytes, whole, at `index` in the driver's list.
    pub(crate) fn file(name: &str, size: u64, index: usize) -> TaskFile {
        TaskFile {
            name: name.into(),
            store: "file://".into(),
            location: name.into(),
            local_path: None,
            size,
            rejects_done: false,
            index,
            range: None,
        }
    }

    fn names(groups: &[Vec<TaskFile>]) -> Vec<Vec<&str>> {
        groups
            .iter()
            .map(|g| g.iter().map(|f| f.name.as_str()).collect())
            .collect()
    }

    #[test]
    fn files_are_grouped_by_bytes_and_keep_their_order_within_a_task() {
        let files = vec![
            file("a", 10, 0),
            file("b", 70, 1),
            file("c", 30, 2),
            file("d", 40, 3),
            file("e", 20, 4),
        ];
        // Largest first, each to the lightest task: b -> 0, d -> 1, c -> 1,
        // e -> 0, a -> 1; each task lists its files in the driver's order.
        let groups = group(files.clone(), 2);
        assert_eq!(names(&groups), vec![vec!["b", "e"], vec!["a", "c", "d"]]);
        let bytes: Vec<u64> = groups
            .iter()
            .map(|g| g.iter().map(|f| f.size).sum())
            .collect();
        assert_eq!(bytes, vec![90, 80]);
        // More tasks than files: one file each, none empty.
        assert_eq!(group(files.clone(), 9).len(), 5);
        assert!(group(files.clone(), 9).iter().all(|g| g.len() == 1));
        // No task count is one task; no files are no task.
        assert_eq!(group(files, 0).len(), 1);
        assert!(group(vec![], 4).is_empty());
    }

    #[test]
    fn an_ingest_recipe_survives_the_trip_to_an_executor() {
        let spec = IngestSpec {
            source: "orders".into(),
            bronze_url: "s3://lake/bronze/orders/".into(),
            bronze_schema: "x".into(),
            reject_url: "s3://lake/quarantine/bronze_orders/".into(),
            reject_schema: "y".into(),
            parser: serde_json::from_value(serde_json::json!({
                "columns": ["id", "amount"], "header": true, "delimiter": 59, "quote": 34,
                "max_field_bytes": 1024, "rename": [["Order ID", "id"]],
                "run_id": "r1", "ingested_at": 7
            }))
            .unwrap(),
            tasks: vec![
                vec![file("landing/o1.csv", 5, 0)],
                vec![file("landing/o2.csv", 6, 1)],
            ],
        };
        let node = IngestNode::new(&spec, Watch::default()).unwrap();
        let (kind, body) = encode_logical(&Extension {
            node: Arc::new(node),
        })
        .unwrap()
        .unwrap();
        assert_eq!(kind, "ingest");
        let back = decode_logical(body.to_string().as_bytes()).unwrap();
        let back = back.node.as_any().downcast_ref::<IngestNode>().unwrap();
        assert_eq!(back.spec().unwrap(), spec);
        let mut bare = spec.clone();
        let input = task_source(std::mem::take(&mut bare.tasks)).unwrap();
        let exec: Arc<dyn ExecutionPlan> =
            Arc::new(IngestExec::try_new(input.clone(), bare.clone(), Watch::default()).unwrap());
        assert_eq!(exec.output_partitioning().partition_count(), 2);
        let (kind, body) = encode_physical(&exec).unwrap().unwrap();
        assert_eq!(kind, "ingest-exec");
        let back = decode_physical(body.to_string().as_bytes(), input).unwrap();
        assert_eq!(*back.downcast_ref::<IngestExec>().unwrap().spec, bare);
        let err = parse_spec(b"{}").unwrap_err().to_string();
        assert!(err.contains("same lakehouse version"), "{err}");
    }
}
