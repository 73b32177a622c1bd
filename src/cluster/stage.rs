//! The project's plan nodes that run on executors (staging writers), and how
//! each one is written to and read back from its recipe.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    EquivalenceProperties, LexRequirement, OrderingRequirements, PhysicalExpr,
    PhysicalSortRequirement,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use deltalake::writer::RecordBatchWriter;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Column `j` of the failed-rule bits: bit `b` of a row's value is set
/// when expectation `64 * j + b` fails on it (FALSE or NULL). One integer
/// column, not one boolean per rule, is what travels through the shuffles,
/// the deduplication and the sort (primitive columns are copied by the
/// fast kernels; booleans took arrow's generic paths).
pub fn failed_column(j: usize) -> String {
    format!("__lakehouse_failed_{j}")
}

/// Expectations per failed-rule column.
pub const RULES_PER_COLUMN: usize = 64;

/// Where expectation `i`'s bit is: its column's name and the bit.
pub fn rule_bit(i: usize) -> (String, u64) {
    (
        failed_column(i / RULES_PER_COLUMN),
        1u64 << (i % RULES_PER_COLUMN),
    )
}

/// A column of the staging plan's own (rule bits, messages), never the
/// model's.
pub fn internal(name: &str) -> bool {
    name.starts_with("__lakehouse_")
}

/// Everything a staging task needs, decided on the driver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageSpec {
    /// `layer.name`, for messages.
    pub model: String,
    pub table_url: String,
    /// The table's Arrow schema (protobuf, base64): rows are cast to it.
    pub table_schema: String,
    pub partition_by: Vec<String>,
    /// The quarantine table and its schema, when a rule can quarantine.
    pub quarantine: Option<(String, String)>,
    pub rules: Vec<crate::pipeline::Expectation>,
    /// Deduplication: latest row per key by `sequence_by`.
    pub unique_key: Vec<String>,
    pub sequence_by: Vec<String>,
    pub run_id: String,
    /// A backfill's dates: only rows whose `column` lies in the range
    /// (both ends included, in days since 1970-01-01) are written, after
    /// deduplication (a key whose latest row moved out of the range leaves
    /// it).
    #[serde(default)]
    pub range: Option<StageRange>,
}

/// The dates a backfill writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageRange {
    pub column: String,
    pub from: Option<i32>,
    pub to: Option<i32>,
}

impl StageRange {
    /// `column IS NOT NULL AND column >= from AND column <= to`, over
    /// `schema`, or a message row ([`MESSAGE`] not NULL).
    fn predicate(&self, schema: &SchemaRef) -> DfResult<Arc<dyn PhysicalExpr>> {
        use datafusion::logical_expr::Operator;
        use datafusion::physical_expr::expressions::{BinaryExpr, IsNotNullExpr, Literal};
        let column: Arc<dyn PhysicalExpr> =
            Arc::new(Column::new_with_schema(&self.column, schema)?);
        let data_type = schema.field_with_name(&self.column)?.data_type().clone();
        let mut predicate: Arc<dyn PhysicalExpr> = Arc::new(IsNotNullExpr::new(column.clone()));
        for (end, op) in [(self.from, Operator::GtEq), (self.to, Operator::LtEq)] {
            if let Some(days) = end {
                let value =
                    datafusion::common::ScalarValue::Date32(Some(days)).cast_to(&data_type)?;
                let compare = Arc::new(BinaryExpr::new(
                    column.clone(),
                    op,
                    Arc::new(Literal::new(value)),
                ));
                predicate = Arc::new(BinaryExpr::new(predicate, Operator::And, compare));
            }
        }
        let message: Arc<dyn PhysicalExpr> = Arc::new(Column::new_with_schema(MESSAGE, schema)?);
        Ok(Arc::new(BinaryExpr::new(
            predicate,
            Operator::Or,
            Arc::new(IsNotNullExpr::new(message)),
        )))
    }
}

pub fn encode_schema(schema: &Schema) -> DfResult<String> {
    use base64::Engine;
    use prost::Message;
    let proto = datafusion_proto::protobuf::Schema::try_from(schema)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(proto.encode_to_vec()))
}

pub fn decode_schema(text: &str) -> DfResult<SchemaRef> {
    use base64::Engine;
    use prost::Message;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| DataFusionError::Internal(format!("schema in a stage recipe: {e}")))?;
    let proto = datafusion_proto::protobuf::Schema::decode(bytes.as_slice())
        .map_err(|e| DataFusionError::Internal(format!("schema in a stage recipe: {e}")))?;
    Ok(Arc::new(Schema::try_from(&proto)?))
}

/// The logical form of a model's staging: its input is the model's result
/// with its failed-rule columns ([`failed_column`]); it stands for the
/// whole check → deduplicate → split by partition → write chain, and
/// returns what it wrote as messages for the driver's commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StageNode {
    input: LogicalPlan,
    /// The [`StageSpec`] as JSON (comparable and hashable as text).
    spec: String,
    schema: DFSchemaRef,
}

impl StageNode {
    pub fn new(input: LogicalPlan, spec: &StageSpec) -> DfResult<Self> {
        let spec =
            serde_json::to_string(spec).map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Self {
            input,
            spec,
            schema: Arc::new(DFSchema::try_from(message_schema().as_ref().clone())?),
        })
    }

    fn spec(&self) -> DfResult<StageSpec> {
        parse_spec(self.spec.as_bytes())
    }
}

fn parse_spec(body: &[u8]) -> DfResult<StageSpec> {
    serde_json::from_slice(body).map_err(|e| {
        DataFusionError::Internal(format!(
            "cannot read a stage recipe from another lakehouse node: {e}. Every node of a cluster must run the same lakehouse version"
        ))
    })
}

/// The schema of what a staging task returns: one JSON message per row.
pub fn message_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "message",
        DataType::Utf8,
        false,
    )]))
}

impl PartialOrd for StageNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match self.spec.partial_cmp(&other.spec) {
            Some(std::cmp::Ordering::Equal) => self.input.partial_cmp(&other.input),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for StageNode {
    fn name(&self) -> &str {
        "LakehouseStage"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.spec() {
            Ok(s) => write!(f, "LakehouseStage: {} -> {}", s.model, s.table_url),
            Err(_) => write!(f, "LakehouseStage"),
        }
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("LakehouseStage has one input".into()))?;
        Ok(Self {
            input,
            spec: self.spec.clone(),
            schema: self.schema.clone(),
        })
    }
}

/// The recipe of a logical node of ours, `None` for a node that is not.
pub fn encode_logical(node: &Extension) -> DfResult<Option<(&'static str, serde_json::Value)>> {
    if let Some(recipe) = crate::ingest::task::encode_logical(node)? {
        return Ok(Some(recipe));
    }
    match node.node.as_any().downcast_ref::<StageNode>() {
        Some(stage) => Ok(Some((
            "stage",
            serde_json::to_value(stage.spec()?)
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
        ))),
        None => Ok(None),
    }
}

pub fn decode_logical(kind: &str, body: &[u8], inputs: &[LogicalPlan]) -> DfResult<Extension> {
    match (kind, inputs) {
        ("ingest", []) => crate::ingest::task::decode_logical(body),
        ("stage", [input]) => Ok(Extension {
            node: Arc::new(StageNode::new(input.clone(), &parse_spec(body)?)?),
        }),
        _ => Err(unknown(kind)),
    }
}

/// The recipe of a physical node of ours, `None` for a node that is not.
pub fn encode_physical(
    node: &Arc<dyn ExecutionPlan>,
) -> DfResult<Option<(&'static str, serde_json::Value)>> {
    let json =
        |v: &StageSpec| serde_json::to_value(v).map_err(|e| DataFusionError::External(Box::new(e)));
    if let Some(recipe) = crate::ingest::task::encode_physical(node)? {
        return Ok(Some(recipe));
    }
    if let Some(stage) = node.downcast_ref::<StageExec>() {
        return Ok(Some(("stage-exec", json(&stage.spec)?)));
    }
    if let Some(dedup) = node.downcast_ref::<DedupExec>() {
        return Ok(Some(("dedup-exec", json(&dedup.spec)?)));
    }
    if let Some(check) = node.downcast_ref::<CheckExec>() {
        return Ok(Some(("check-exec", json(&check.spec)?)));
    }
    Ok(None)
}

pub fn decode_physical(
    kind: &str,
    body: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    match (kind, inputs) {
        ("ingest-exec", [input]) => crate::ingest::task::decode_physical(body, input.clone()),
        ("stage-exec", [input]) => Ok(Arc::new(StageExec::try_new(
            input.clone(),
            parse_spec(body)?,
        )?)),
        ("dedup-exec", [input]) => Ok(Arc::new(DedupExec::try_new(
            input.clone(),
            parse_spec(body)?,
        )?)),
        ("check-exec", [input]) => Ok(Arc::new(CheckExec::try_new(
            input.clone(),
            parse_spec(body)?,
        )?)),
        _ => Err(unknown(kind)),
    }
}

/// Plans [`StageNode`]: `StageExec` over `DedupExec` (when the model has a
/// unique key) over `CheckExec` over the model's plan. The check runs where
/// the model's rows come out, so only the table's columns cross the
/// shuffles; the two others declare the distribution and order they need,
/// so DataFusion's optimizer adds the hash repartitions (Ballista's
/// shuffles) and sorts below them.
#[derive(Debug)]
struct StagePlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for StagePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(stage) = node.as_any().downcast_ref::<StageNode>() else {
            return Ok(None);
        };
        let spec = stage.spec()?;
        let [input] = physical_inputs else {
            return Err(DataFusionError::Internal(
                "LakehouseStage has one input".into(),
            ));
        };
        let mut plan: Arc<dyn ExecutionPlan> =
            Arc::new(CheckExec::try_new(input.clone(), spec.clone())?);
        if !spec.unique_key.is_empty() {
            plan = Arc::new(DedupExec::try_new(plan, spec.clone())?);
            // The key and the sequence (lineage, often: a file name per row)
            // have done their work: the partition sort and the writers see
            // only the table's columns.
            plan = project(plan, |name| {
                !name.starts_with('_')
                    || name == MESSAGE
                    || spec.partition_by.iter().any(|c| c == name)
            })?;
        }
        if let Some(range) = &spec.range {
            let predicate = range.predicate(&plan.schema())?;
            plan = Arc::new(FilterExec::try_new(predicate, plan)?);
        }
        Ok(Some(Arc::new(StageExec::try_new(plan, spec)?)))
    }
}

/// `plan` with only the columns whose name `keep` accepts (itself when
/// that is all of them).
fn project(
    plan: Arc<dyn ExecutionPlan>,
    keep: impl Fn(&str) -> bool,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
    let schema = plan.schema();
    let kept: Vec<ProjectionExpr> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| keep(f.name()))
        .map(|(i, f)| ProjectionExpr::new(Arc::new(Column::new(f.name(), i)), f.name().clone()))
        .collect();
    if kept.len() == schema.fields().len() {
        return Ok(plan);
    }
    Ok(Arc::new(ProjectionExec::try_new(kept, plan)?))
}

fn columns(schema: &SchemaRef, names: &[String]) -> DfResult<Vec<Arc<dyn PhysicalExpr>>> {
    names
        .iter()
        .map(|n| Ok(Arc::new(Column::new_with_schema(n, schema)?) as Arc<dyn PhysicalExpr>))
        .collect()
}

/// A node's properties: as many partitions as its input, of no known
/// split (its columns are not its input's, so the input's hash columns
/// would point at the wrong ones).
fn properties(
    schema: SchemaRef,
    input: &Arc<dyn ExecutionPlan>,
    emission: EmissionType,
) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        datafusion::physical_plan::Partitioning::UnknownPartitioning(
            input.output_partitioning().partition_count(),
        ),
        emission,
        Boundedness::Bounded,
    ))
}

/// Column the staging plan's rows carry after [`CheckExec`]: NULL on a row
/// of the table; on a message row (every other column NULL), one
/// [`Message`] as JSON: what a task upstream wrote or counted. Messages
/// travel with the rows, through the shuffles, to the writers' tasks, which
/// return them to the driver with their own. Ballista moves data only, so
/// what a task learns travels as data too.
pub const MESSAGE: &str = "__lakehouse_message";

/// Rows of `schema` (the last column [`MESSAGE`]) carrying `messages`,
/// every other column NULL.
fn message_rows(schema: &SchemaRef, messages: &[Message]) -> DfResult<RecordBatch> {
    use datafusion::arrow::array::new_null_array;
    let texts = messages
        .iter()
        .map(Message::to_text)
        .collect::<DfResult<Vec<String>>>()?;
    let n = texts.len();
    let texts: ArrayRef = Arc::new(StringArray::from(texts));
    let columns = schema
        .fields()
        .iter()
        .map(|f| match f.name() == MESSAGE {
            true => texts.clone(),
            false => new_null_array(f.data_type(), n),
        })
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `batch` split into its table rows and its message rows (`None` when it
/// has none, which is every batch but a few).
fn split_messages(batch: RecordBatch) -> DfResult<(RecordBatch, Option<RecordBatch>)> {
    use datafusion::arrow::compute::{is_not_null, is_null};
    let column = batch.column(batch.schema().index_of(MESSAGE)?).clone();
    if column.null_count() == batch.num_rows() {
        return Ok((batch, None));
    }
    let messages = filter_record_batch(&batch, &is_not_null(&column)?)?;
    let rows = filter_record_batch(&batch, &is_null(&column)?)?;
    Ok((rows, Some(messages)))
}

/// The project's own error a task in this process failed with (what
/// [`task_error`] wrapped), `None` for DataFusion's own errors and for a
/// remote task's, which arrive as text.
pub fn task_cause(e: &DataFusionError) -> Option<&crate::error::Error> {
    match e.find_root() {
        DataFusionError::External(inner) => inner.downcast_ref::<crate::error::Error>(),
        _ => None,
    }
}

/// A task's failure as DataFusion carries it: the project's own error
/// inside (the driver finds it again with [`task_cause`]).
pub fn task_error(e: crate::error::Error) -> DataFusionError {
    match e {
        crate::error::Error::DataFusion(d) => d,
        other => DataFusionError::External(Box::new(other)),
    }
}

/// Checks the expectations where rows come out of the model, before any
/// shuffle: rows a `drop` rule catches are written to the quarantine's
/// files by this task; the others go on with only the columns the table,
/// its key, its sequence and its partitioning need (lineage and rule bits
/// stay here). At the end of its partition it sends the quarantine's files
/// and its counts as message rows.
#[derive(Debug)]
pub struct CheckExec {
    input: Arc<dyn ExecutionPlan>,
    spec: StageSpec,
    /// Input columns passed on, in order.
    kept: Vec<usize>,
    /// Input columns the quarantine keeps (the model's own).
    model_columns: Vec<usize>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl CheckExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: StageSpec) -> DfResult<Self> {
        let in_schema = input.schema();
        let needed = |name: &str| {
            spec.unique_key.iter().any(|c| c == name)
                || spec.sequence_by.iter().any(|c| c == name)
                || spec.partition_by.iter().any(|c| c == name)
        };
        let model_columns: Vec<usize> = (0..in_schema.fields().len())
            .filter(|&i| !internal(in_schema.field(i).name()))
            .collect();
        let kept: Vec<usize> = model_columns
            .iter()
            .copied()
            .filter(|&i| {
                let name = in_schema.field(i).name();
                !name.starts_with('_') || needed(name)
            })
            .collect();
        // Every column is nullable: message rows are NULL but for theirs.
        let mut fields: Vec<Field> = kept
            .iter()
            .map(|&i| in_schema.field(i).clone().with_nullable(true))
            .collect();
        fields.push(Field::new(MESSAGE, DataType::Utf8, true));
        let schema = Arc::new(Schema::new(fields));
        // Rows leave in the order they came, so the input's order holds for
        // the kept columns. (The message rows, every column NULL, come last;
        // writers take them out before they look at the order.)
        let mapping = datafusion::physical_expr::projection::ProjectionMapping::from_indices(
            &kept, &in_schema,
        )?;
        let props = Arc::new(PlanProperties::new(
            input
                .equivalence_properties()
                .project(&mapping, schema.clone()),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(
                input.output_partitioning().partition_count(),
            ),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            spec,
            kept,
            model_columns,
            schema,
            props,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for CheckExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "LakehouseCheck: {} rules, quarantine={}",
            self.spec.rules.len(),
            self.spec.quarantine.as_ref().map_or("none", |(u, _)| u)
        )
    }
}

impl ExecutionPlan for CheckExec {
    fn name(&self) -> &str {
        "LakehouseCheck"
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
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("LakehouseCheck has one input".into()))?;
        Ok(Arc::new(CheckExec::try_new(input, self.spec.clone())?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let meters = super::metered::Meters::new(&self.metrics, partition);
        let input = meters.input(self.input.execute(partition, context)?);
        let in_schema = input.schema();
        let model_schema = Arc::new(in_schema.project(&self.model_columns)?);
        let quarantine = match &self.spec.quarantine {
            Some((url, schema)) => {
                let schema = decode_schema(schema)?;
                let name = format!("the quarantine of {}", self.spec.model);
                Some((writer(url.clone(), schema.clone(), &[], &name), schema))
            }
            None => None,
        };
        let checking = Checking {
            rule_bits: (0..self.spec.rules.len())
                .map(|i| {
                    let (column, bit) = rule_bit(i);
                    Ok((in_schema.index_of(&column)?, bit))
                })
                .collect::<DfResult<_>>()?,
            counts: crate::quality::Counts::new(self.spec.rules.len()),
            q_schema: crate::quality::quarantine_schema(&model_schema),
            spec: self.spec.clone(),
            kept: self.kept.clone(),
            model_columns: self.model_columns.clone(),
            schema: self.schema.clone(),
            quarantine,
            quarantined: super::metered::counter(&self.metrics, "quarantined_rows", partition),
        };
        let stream = futures::stream::unfold(Some((input, checking)), |state| async move {
            let (mut input, mut checking) = state?;
            loop {
                match input.next().await {
                    Some(Ok(batch)) => match checking.batch(batch).await {
                        Ok(Some(rows)) => return Some((Ok(rows), Some((input, checking)))),
                        Ok(None) => continue,
                        Err(e) => return Some((Err(task_error(e)), None)),
                    },
                    Some(Err(e)) => return Some((Err(e), None)),
                    None => return Some((checking.finish().await.map_err(task_error), None)),
                }
            }
        });
        Ok(meters.output(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        ))))
    }
}

/// One [`CheckExec`] task's state.
struct Checking {
    spec: StageSpec,
    rule_bits: Vec<(usize, u64)>,
    kept: Vec<usize>,
    model_columns: Vec<usize>,
    schema: SchemaRef,
    q_schema: SchemaRef,
    quarantine: Option<(crate::delta::SortedWriter, SchemaRef)>,
    counts: crate::quality::Counts,
    quarantined: Count,
}

impl Checking {
    /// The rows of `batch` that pass, quarantining the others.
    async fn batch(&mut self, batch: RecordBatch) -> crate::error::Result<Option<RecordBatch>> {
        use datafusion::arrow::array::new_null_array;
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let values: Vec<BooleanArray> = self
            .rule_bits
            .iter()
            .map(|&(c, bit)| passes_rule(&batch, c, bit))
            .collect();
        let rules: Vec<&crate::pipeline::Expectation> = self.spec.rules.iter().collect();
        let q = crate::quality::Quarantine {
            model: &self.spec.model,
            rules: &rules,
            schema: &self.q_schema,
            run_id: &self.spec.run_id,
        };
        let model_batch = batch.project(&self.model_columns)?;
        let (passing, bad) = crate::quality::classify(&q, &values, &model_batch, &mut self.counts)?;
        if let (Some(bad), Some((w, schema))) = (bad, self.quarantine.as_mut()) {
            w.write(crate::delta::conform(&bad, schema)?).await?;
        }
        // Only the columns passed on are copied.
        let mut rows = batch.project(&self.kept)?;
        if let Some(passing) = passing {
            rows = filter_record_batch(&rows, &passing)?;
        }
        if rows.num_rows() == 0 {
            return Ok(None);
        }
        let n = rows.num_rows();
        let mut columns = rows.columns().to_vec();
        columns.push(new_null_array(&DataType::Utf8, n));
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }

    /// The quarantine's files and the counts, as message rows.
    async fn finish(self) -> crate::error::Result<RecordBatch> {
        self.quarantined.add(self.counts.quarantined as usize);
        let mut messages = Vec::new();
        if let Some((w, _)) = self.quarantine {
            messages.extend(w.finish().await?.into_iter().map(Message::Quarantine));
        }
        messages.push(Message::Checked(self.counts));
        Ok(message_rows(&self.schema, &messages)?)
    }
}

/// Keeps, per key, the row with the greatest sequence and leaves the others
/// out, counting them; message rows pass through, and the count goes after
/// them as one more. Needs its input hash-split by the key; it does not
/// sort ([`crate::dedup`]: buckets by hash, spilled whole when memory is
/// short).
#[derive(Debug)]
pub struct DedupExec {
    input: Arc<dyn ExecutionPlan>,
    spec: StageSpec,
    dedup: crate::dedup::Spec,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl DedupExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: StageSpec) -> DfResult<Self> {
        let schema = input.schema();
        schema.index_of(MESSAGE)?;
        let dedup = crate::dedup::Spec::new(
            schema.clone(),
            &spec.unique_key,
            &spec.sequence_by,
            Default::default(),
        )?;
        // Rows come out once the partition's input has ended.
        let props = properties(schema, &input, EmissionType::Final);
        Ok(Self {
            input,
            spec,
            dedup,
            props,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for DedupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "LakehouseDedup: key=[{}]",
            self.spec.unique_key.join(", ")
        )
    }
}

impl ExecutionPlan for DedupExec {
    fn name(&self) -> &str {
        "LakehouseDedup"
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

    fn required_input_distribution(&self) -> Vec<Distribution> {
        match columns(&self.input.schema(), &self.spec.unique_key) {
            Ok(keys) => vec![Distribution::KeyPartitioned(keys)],
            Err(_) => vec![Distribution::UnspecifiedDistribution],
        }
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("LakehouseDedup has one input".into()))?;
        Ok(Arc::new(DedupExec::try_new(input, self.spec.clone())?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        use futures::TryStreamExt;
        let meters = super::metered::Meters::new(&self.metrics, partition);
        let input = meters.input(self.input.execute(partition, context.clone())?);
        let schema = input.schema();
        // Message rows wait here while the table's rows are deduplicated.
        let held: Arc<std::sync::Mutex<Vec<RecordBatch>>> = Default::default();
        let hold = held.clone();
        let rows = input.and_then(move |batch| {
            let split = split_messages(batch).map(|(rows, messages)| {
                if let Some(m) = messages {
                    hold.lock().unwrap_or_else(|p| p.into_inner()).push(m);
                }
                rows
            });
            futures::future::ready(split)
        });
        let collapsed = crate::dedup::Collapsed::default();
        let winners = crate::dedup::deduplicate(
            Box::pin(RecordBatchStreamAdapter::new(schema.clone(), rows)),
            Arc::new(self.dedup.counting(collapsed.clone())),
            context,
            partition,
            crate::dedup::Meters {
                count: MetricBuilder::new(&self.metrics).spill_count(partition),
                bytes: MetricBuilder::new(&self.metrics).spilled_bytes(partition),
                split: MetricBuilder::new(&self.metrics).subset_time("split_time", partition),
                spill: MetricBuilder::new(&self.metrics).subset_time("spill_time", partition),
                read_back: MetricBuilder::new(&self.metrics)
                    .subset_time("read_back_time", partition),
                winners: MetricBuilder::new(&self.metrics).subset_time("winners_time", partition),
            },
        );
        let collapsed_rows = super::metered::counter(&self.metrics, "collapsed_rows", partition);
        let message_schema = schema.clone();
        let messages = futures::stream::once(async move {
            let mut batches = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
            let count = collapsed.load(std::sync::atomic::Ordering::Relaxed);
            collapsed_rows.add(count as usize);
            batches.push(message_rows(&message_schema, &[Message::Collapsed(count)])?);
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        })
        .try_flatten();
        Ok(meters.output(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            winners.chain(messages),
        ))))
    }
}

/// Writes its input into Parquet files of the model's table, and returns
/// one message per file written, one with the rows it wrote, and the
/// messages that reached it from the tasks before it: the data of the
/// Delta commits, which the driver makes.
#[derive(Debug)]
pub struct StageExec {
    input: Arc<dyn ExecutionPlan>,
    spec: StageSpec,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// The partition order, when the input comes in it already: the
    /// writers keep it and stream, holding one partition at a time.
    in_order: Option<OrderingRequirements>,
}

impl StageExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: StageSpec) -> DfResult<Self> {
        input.schema().index_of(MESSAGE)?;
        let props = properties(message_schema(), &input, EmissionType::Final);
        let in_order = match partition_order(&input.schema(), &spec.partition_by) {
            Some(order)
                if input
                    .equivalence_properties()
                    .ordering_satisfy_requirement(order.iter().cloned())? =>
            {
                Some(OrderingRequirements::new(order))
            }
            _ => None,
        };
        Ok(Self {
            input,
            spec,
            props,
            metrics: ExecutionPlanMetricsSet::new(),
            in_order,
        })
    }
}

/// The order by `partition_by` (ascending, NULLs first), if any.
fn partition_order(schema: &SchemaRef, partition_by: &[String]) -> Option<LexRequirement> {
    let columns = columns(schema, partition_by).ok()?;
    LexRequirement::new(columns.into_iter().map(|e| {
        PhysicalSortRequirement::new(e, Some(datafusion::arrow::compute::SortOptions::default()))
    }))
}

impl DisplayAs for StageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "LakehouseStage: {} partition_by=[{}]",
            self.spec.table_url,
            self.spec.partition_by.join(", ")
        )
    }
}

impl ExecutionPlan for StageExec {
    fn name(&self) -> &str {
        "LakehouseStage"
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

    fn required_input_distribution(&self) -> Vec<Distribution> {
        // Writers never share a partition: one file per partition and task.
        match columns(&self.input.schema(), &self.spec.partition_by) {
            Ok(keys) if !keys.is_empty() => vec![Distribution::KeyPartitioned(keys)],
            _ => vec![Distribution::UnspecifiedDistribution],
        }
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        // Rows in partition order already keep it (the split to the
        // writers merges instead of mixing them). Others are not sorted:
        // each writer groups its rows by partition itself
        // ([`crate::gather`]), which costs less than a sort.
        vec![self.in_order.clone()]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("LakehouseStage has one input".into()))?;
        Ok(Arc::new(StageExec::try_new(input, self.spec.clone())?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let meters = super::metered::Meters::new(&self.metrics, partition);
        let input = meters.input(self.input.execute(partition, context.clone())?);
        let spec = self.spec.clone();
        let written = super::metered::counter(&self.metrics, "written_rows", partition);
        let files = super::metered::counter(&self.metrics, "files_written", partition);
        let gather = crate::gather::Meters {
            count: MetricBuilder::new(&self.metrics).spill_count(partition),
            bytes: MetricBuilder::new(&self.metrics).spilled_bytes(partition),
            group: MetricBuilder::new(&self.metrics).subset_time("group_time", partition),
            spill: MetricBuilder::new(&self.metrics).subset_time("spill_time", partition),
            out: MetricBuilder::new(&self.metrics).subset_time("gather_time", partition),
        };
        // A partitioned table's rows are grouped by partition before they
        // are written (one file per partition), unless they come in order.
        let grouping = (!self.spec.partition_by.is_empty() && self.in_order.is_none())
            .then(|| (context, format!("LakehouseStage[{partition}]"), gather));
        let task = async move {
            stage_partition(spec, input, written, files, grouping)
                .await
                .map_err(task_error)
        };
        Ok(meters.output(Box::pin(RecordBatchStreamAdapter::new(
            message_schema(),
            futures::stream::once(task),
        ))))
    }
}

/// One message of a staging task.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// A file of the model's table.
    Table(deltalake::kernel::Add),
    /// A file of the model's quarantine.
    Quarantine(deltalake::kernel::Add),
    /// What a check task saw: rows in, and per rule.
    Checked(crate::quality::Counts),
    /// Rows a deduplication task left out as replaced by a later row.
    Collapsed(u64),
    /// Rows a writer task wrote to the table.
    Written(u64),
    /// What an ingest task found in a landed file or a piece of one (its
    /// place in the driver's list, its report, the bytes it took).
    Ingested(usize, crate::ingest::FileReport, (u64, u64)),
}

impl Message {
    /// The message as it travels: JSON text.
    pub fn to_text(&self) -> DfResult<String> {
        serde_json::to_string(self).map_err(|e| DataFusionError::External(Box::new(e)))
    }

    /// A message read back from its text.
    pub fn parse(text: &str) -> DfResult<Message> {
        serde_json::from_str(text).map_err(|e| {
            DataFusionError::Internal(format!(
                "a staging task sent a message it cannot read ({e}); every node of a cluster must run the same lakehouse version"
            ))
        })
    }
}

/// A writer for one table, on the store as this node reaches it; its first
/// rows decide which columns get a dictionary ([`crate::delta::writer_properties_for`]).
pub fn writer(
    url: String,
    schema: SchemaRef,
    partition_by: &[String],
    table: &str,
) -> crate::delta::SortedWriter {
    let partitions = partition_by.to_vec();
    crate::delta::SortedWriter::new(partition_by.to_vec(), table, move |first| {
        deltalake::aws::register_handlers(None);
        Ok(RecordBatchWriter::try_new(
            &url,
            schema,
            Some(partitions),
            Some(crate::storage::node_options()),
        )?
        .with_writer_properties(crate::delta::writer_properties_for(first))
        .with_target_file_size(crate::delta::TARGET_FILE_SIZE))
    })
}

async fn stage_partition(
    spec: StageSpec,
    mut input: SendableRecordBatchStream,
    written_rows: Count,
    files: Count,
    grouping: Option<(Arc<TaskContext>, String, crate::gather::Meters)>,
) -> crate::error::Result<RecordBatch> {
    let table_schema = decode_schema(&spec.table_schema)?;
    let mut table = writer(
        spec.table_url.clone(),
        table_schema.clone(),
        &spec.partition_by,
        &spec.model,
    );
    let mut grouped = match grouping {
        Some((context, name, meters)) => Some(crate::gather::Gather::try_new(
            table_schema.clone(),
            &spec.partition_by,
            context,
            name,
            meters,
        )?),
        None => None,
    };
    // Messages from the tasks before this one go on as they came.
    let mut texts: Vec<String> = Vec::new();
    let mut written = 0u64;
    while let Some(batch) = input.next().await {
        let (rows, arrived) = split_messages(batch?)?;
        if let Some(arrived) = arrived {
            let column = arrived.column(arrived.schema().index_of(MESSAGE)?);
            texts.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string),
            );
        }
        if rows.num_rows() == 0 {
            continue;
        }
        let rows = crate::delta::conform(&rows, &table_schema)?;
        written += rows.num_rows() as u64;
        match grouped.as_mut() {
            Some(g) => g.push(rows)?,
            None => table.write(rows).await?,
        }
    }
    if let Some(g) = grouped {
        for rows in g.finish()? {
            table.write(rows?).await?;
        }
    }
    let mut own: Vec<Message> = table
        .finish()
        .await?
        .into_iter()
        .map(Message::Table)
        .collect();
    files.add(own.len());
    written_rows.add(written as usize);
    own.push(Message::Written(written));
    for message in &own {
        texts.push(message.to_text()?);
    }
    Ok(RecordBatch::try_new(
        message_schema(),
        vec![Arc::new(StringArray::from(texts))],
    )?)
}

/// TRUE for the rows of `batch` that pass the rule whose bit is `bit` of
/// column `column`.
fn passes_rule(batch: &RecordBatch, column: usize, bit: u64) -> BooleanArray {
    use datafusion::arrow::buffer::BooleanBuffer;
    use datafusion::arrow::datatypes::UInt64Type;
    let values = batch.column(column).as_primitive::<UInt64Type>().values();
    BooleanArray::new(
        BooleanBuffer::collect_bool(batch.num_rows(), |row| values[row] & bit == 0),
        None,
    )
}

fn unknown(kind: &str) -> DataFusionError {
    DataFusionError::Internal(format!(
        "unknown plan node `{kind}` from another lakehouse node: every node of a cluster must run the same lakehouse version"
    ))
}

/// The physical planner of every session: DataFusion's own, with delta-rs's
/// nodes and the project's staging nodes.
pub fn planner() -> Arc<dyn datafusion::execution::context::QueryPlanner + Send + Sync> {
    Arc::new(Planner)
}

#[derive(Debug)]
struct Planner;

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &dyn datafusion::catalog::Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
        let plan = DefaultPhysicalPlanner::with_extension_planners(vec![
            deltalake::delta_datafusion::planner::DeltaExtensionPlanner::new(),
            Arc::new(StagePlanner),
            Arc::new(crate::ingest::task::IngestPlanner),
        ])
        .create_physical_plan(plan, state)
        .await?;
        more_writers(
            plan,
            state.config().target_partitions().max(1) * WRITERS_PER_CORE,
        )
    }
}

/// Staging writers per core: writing a table partition is mostly waiting
/// on the store (create, write, close one small file), so more writers than
/// cores hide that wait; each holds its share of the rows, grouped by
/// partition ([`crate::gather`]), until its input ends.
const WRITERS_PER_CORE: usize = 4;

/// `plan` with `writers` partitions in the hash split by table partition
/// under each [`StageExec`] (the optimizer makes one per core).
fn more_writers(plan: Arc<dyn ExecutionPlan>, writers: usize) -> DfResult<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_plan::execution_plan::{
        ChildrenPropertiesMode, ReplaceChildrenOptions,
    };
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_plan::Partitioning;
    plan.transform_down(|node| {
        let Some(stage) = node.downcast_ref::<StageExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(split) = stage.input.downcast_ref::<RepartitionExec>() else {
            return Ok(Transformed::no(node));
        };
        let Partitioning::Hash(keys, n) = split.partitioning() else {
            return Ok(Transformed::no(node));
        };
        if *n >= writers {
            return Ok(Transformed::no(node));
        }
        let wider = RepartitionExec::try_new(
            split.input().clone(),
            Partitioning::Hash(keys.clone(), writers),
        )?;
        let wider: Arc<dyn ExecutionPlan> = if split.preserve_order() {
            Arc::new(wider.with_preserve_order())
        } else {
            Arc::new(wider)
        };
        Ok(Transformed::yes(node.clone().replace_children(
            vec![wider],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?))
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, UInt64Array};
    use datafusion::arrow::compute::SortOptions;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::prelude::SessionContext;
    use futures::TryStreamExt;

    fn rule(name: &str, action: crate::pipeline::Action) -> crate::pipeline::Expectation {
        crate::pipeline::Expectation {
            name: name.into(),
            check: "unused here".into(),
            action,
            line: 1,
        }
    }

    fn spec(rules: Vec<crate::pipeline::Expectation>) -> StageSpec {
        StageSpec {
            model: "silver.t".into(),
            table_url: "memory:///t".into(),
            table_schema: String::new(),
            partition_by: vec![],
            quarantine: None,
            rules,
            unique_key: vec!["k".into()],
            sequence_by: vec!["_seq".into()],
            run_id: "run".into(),
            range: None,
        }
    }

    /// Runs `node` over its one partition and returns the table's rows and
    /// the messages apart.
    async fn run(node: Arc<dyn ExecutionPlan>) -> (Vec<RecordBatch>, Vec<Message>) {
        let out: Vec<RecordBatch> = node
            .execute(0, SessionContext::new().task_ctx())
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let (mut rows, mut messages) = (Vec::new(), Vec::new());
        for batch in out {
            let (r, m) = split_messages(batch).unwrap();
            rows.push(r);
            if let Some(m) = m {
                let column = m.column(m.schema().index_of(MESSAGE).unwrap());
                for text in column.as_string::<i32>().iter().flatten() {
                    messages.push(Message::parse(text).unwrap());
                }
            }
        }
        (rows, messages)
    }

    fn ints(batches: &[RecordBatch], column: &str) -> Vec<Option<i64>> {
        let mut v: Vec<Option<i64>> = batches
            .iter()
            .flat_map(|b| {
                b.column(b.schema().index_of(column).unwrap())
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v
    }

    /// Rule 0 drops, rule 1 warns, rule 64 (bit 0 of the second column)
    /// drops. The check passes on the rows no `drop` rule caught, with the
    /// key, the sequence and the visible columns only (the lineage and
    /// the bits stay behind), and counts every rule in a message at the
    /// end.
    #[tokio::test]
    async fn the_check_keeps_the_tables_columns_and_counts_every_rule() {
        use crate::pipeline::Action::{Drop, Warn};
        let mut rules: Vec<_> = (0..65).map(|i| rule(&format!("r{i}"), Warn)).collect();
        rules[0].action = Drop;
        rules[64].action = Drop;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("_seq", DataType::Int64, false),
            Field::new("_source_file", DataType::Utf8, false),
            Field::new(failed_column(0), DataType::UInt64, false),
            Field::new(failed_column(1), DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
                Arc::new(Int64Array::from(vec![10, 20, 30, 40, 50])),
                Arc::new(StringArray::from(vec!["a.csv"; 5])),
                // none, rule 0, rule 1 (warn), rules 0 and 1, none
                Arc::new(UInt64Array::from(vec![0, 1, 2, 3, 0])),
                // none, none, none, none, rule 64
                Arc::new(UInt64Array::from(vec![0, 0, 0, 0, 1])),
            ],
        )
        .unwrap();
        let source = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap();
        let check = Arc::new(CheckExec::try_new(source, spec(rules)).unwrap());
        let names: Vec<String> = check
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, vec!["k", "_seq", MESSAGE]);
        let (rows, messages) = run(check).await;
        assert_eq!(ints(&rows, "k"), vec![Some(1), Some(3)]);
        let [Message::Checked(counts)] = messages.as_slice() else {
            panic!("one Checked message, got {messages:?}");
        };
        assert_eq!((counts.rows_in, counts.quarantined), (5, 3));
        // Rule 0 caught rows 2 and 4; rule 64 caught row 5; rule 1 is
        // evaluated on the two rows that stay and fails on row 3.
        assert_eq!(
            (counts.rules[0].failed, counts.rules[0].quarantined),
            (2, 2)
        );
        assert_eq!(counts.rules[64].quarantined, 1);
        assert_eq!((counts.rules[1].evaluated, counts.rules[1].failed), (2, 1));
    }

    /// The hash split under a staging writer gets the writers asked for
    /// (an order-keeping one keeps order); a plan without that shape is
    /// left as it is.
    #[test]
    fn each_staging_writer_split_gets_more_writers() {
        use datafusion::physical_plan::repartition::RepartitionExec;
        use datafusion::physical_plan::sorts::sort::SortExec;
        use datafusion::physical_plan::Partitioning;
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Int64, true),
            Field::new(MESSAGE, DataType::Utf8, true),
        ]));
        let source = MemorySourceConfig::try_new_exec(&[vec![], vec![]], schema.clone(), None)
            .unwrap() as Arc<dyn ExecutionPlan>;
        let day = columns(&schema, &["day".into()]).unwrap();
        let mut spec = spec(vec![]);
        spec.partition_by = vec!["day".into()];
        let split = Arc::new(
            RepartitionExec::try_new(source.clone(), Partitioning::Hash(day.clone(), 2)).unwrap(),
        );
        let stage = Arc::new(StageExec::try_new(split, spec.clone()).unwrap());
        let planned = more_writers(stage, 8).unwrap();
        assert_eq!(planned.output_partitioning().partition_count(), 8);
        let display = datafusion::physical_plan::displayable(planned.as_ref())
            .indent(false)
            .to_string();
        assert!(display.contains("Hash([day@0], 8)"), "{display}");
        assert!(!display.contains("preserve_order=true"), "{display}");
        // Without a hash split right under the writers, nothing changes.
        let order = datafusion::physical_expr::LexOrdering::new(day.iter().map(|e| {
            datafusion::physical_expr::PhysicalSortExpr::new(e.clone(), SortOptions::default())
        }))
        .unwrap();
        let plain: Arc<dyn ExecutionPlan> = Arc::new(
            StageExec::try_new(
                Arc::new(SortExec::new(order.clone(), source.clone())),
                spec.clone(),
            )
            .unwrap(),
        );
        let same = more_writers(plain.clone(), 8).unwrap();
        assert_eq!(
            same.output_partitioning().partition_count(),
            plain.output_partitioning().partition_count()
        );
        // An order-keeping split gets the writers and keeps the order.
        let sorted = MemorySourceConfig::try_new(&[vec![], vec![]], schema.clone(), None)
            .unwrap()
            .try_with_sort_information(vec![order.clone()])
            .unwrap();
        let sorted = DataSourceExec::from_data_source(sorted);
        let split = RepartitionExec::try_new(sorted, Partitioning::Hash(day.clone(), 2))
            .unwrap()
            .with_preserve_order();
        assert!(split.preserve_order());
        let stage = Arc::new(StageExec::try_new(Arc::new(split), spec.clone()).unwrap());
        let planned = more_writers(stage, 8).unwrap();
        assert_eq!(planned.output_partitioning().partition_count(), 8);
        let display = datafusion::physical_plan::displayable(planned.as_ref())
            .indent(false)
            .to_string();
        assert!(
            display.contains("Hash([day@0], 8)") && display.contains("preserve_order=true"),
            "{display}"
        );
        // A split with as many writers already stays.
        let wide = Arc::new(
            RepartitionExec::try_new(source.clone(), Partitioning::Hash(day.clone(), 8)).unwrap(),
        );
        let stage: Arc<dyn ExecutionPlan> = Arc::new(StageExec::try_new(wide, spec).unwrap());
        let same = more_writers(stage.clone(), 8).unwrap();
        assert!(Arc::ptr_eq(&same, &stage));
    }

    /// Writers over rows in partition order keep that order (and stream);
    /// over rows in no order they ask for none (they group the rows
    /// themselves), so no sort is planned under them.
    #[test]
    fn writers_ask_for_partition_order_only_when_it_is_there() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Int64, true),
            Field::new(MESSAGE, DataType::Utf8, true),
        ]));
        let day = columns(&schema, &["day".into()]).unwrap();
        let order = datafusion::physical_expr::LexOrdering::new(day.iter().map(|e| {
            datafusion::physical_expr::PhysicalSortExpr::new(e.clone(), SortOptions::default())
        }))
        .unwrap();
        let mut spec = spec(vec![]);
        spec.partition_by = vec!["day".into()];
        let sorted = MemorySourceConfig::try_new(&[vec![]], schema.clone(), None)
            .unwrap()
            .try_with_sort_information(vec![order])
            .unwrap();
        let stage =
            StageExec::try_new(DataSourceExec::from_data_source(sorted), spec.clone()).unwrap();
        assert!(stage.required_input_ordering()[0].is_some());
        let unsorted = MemorySourceConfig::try_new_exec(&[vec![]], schema.clone(), None).unwrap();
        let stage = StageExec::try_new(unsorted.clone(), spec.clone()).unwrap();
        assert!(stage.required_input_ordering()[0].is_none());
        // An unpartitioned table is written as it comes.
        spec.partition_by = vec![];
        let stage = StageExec::try_new(unsorted, spec).unwrap();
        assert!(stage.required_input_ordering()[0].is_none());
    }

    /// The check keeps its input's order on the columns it keeps.
    #[test]
    fn the_check_keeps_its_inputs_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("_lineage", DataType::Utf8, true),
            Field::new("day", DataType::Int64, true),
        ]));
        let day = columns(&schema, &["day".into()]).unwrap();
        let order = datafusion::physical_expr::LexOrdering::new(day.iter().map(|e| {
            datafusion::physical_expr::PhysicalSortExpr::new(e.clone(), SortOptions::default())
        }))
        .unwrap();
        let sorted = MemorySourceConfig::try_new(&[vec![]], schema.clone(), None)
            .unwrap()
            .try_with_sort_information(vec![order])
            .unwrap();
        let check =
            CheckExec::try_new(DataSourceExec::from_data_source(sorted), spec(vec![])).unwrap();
        // `_lineage` is dropped, so `day` is the check's first column.
        let check: Arc<dyn ExecutionPlan> = Arc::new(check);
        let kept = check.output_ordering().expect("an order").to_string();
        assert_eq!(kept, "day@0 ASC");
    }

    /// Deduplication lets message rows through whatever their (NULL) key,
    /// and sends its own count after them.
    #[tokio::test]
    async fn deduplication_passes_messages_and_counts_its_losers() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("_seq", DataType::Int64, true),
            Field::new(MESSAGE, DataType::Utf8, true),
        ]));
        let rows = |k: Vec<i64>, seq: Vec<i64>| {
            let n = k.len();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(k)),
                    Arc::new(Int64Array::from(seq)),
                    datafusion::arrow::array::new_null_array(&DataType::Utf8, n),
                ],
            )
            .unwrap()
        };
        let upstream =
            message_rows(&schema, &[Message::Written(7), Message::Collapsed(2)]).unwrap();
        let batches = vec![
            rows(vec![1, 2, 1], vec![1, 5, 3]),
            // A batch with table rows and a message row: both kinds survive.
            datafusion::arrow::compute::concat_batches(
                &schema,
                &[rows(vec![2, 3], vec![4, 1]), upstream],
            )
            .unwrap(),
            rows(vec![1], vec![2]),
        ];
        let source = MemorySourceConfig::try_new_exec(&[batches], schema, None).unwrap();
        let dedup = Arc::new(DedupExec::try_new(source, spec(vec![])).unwrap());
        let (rows, messages) = run(dedup.clone()).await;
        // Key 1: sequence 3 wins; key 2: 5; key 3: 1.
        assert_eq!(ints(&rows, "_seq"), vec![Some(1), Some(3), Some(5)]);
        let texts: Vec<String> = messages.iter().map(|m| format!("{m:?}")).collect();
        assert_eq!(texts, vec!["Written(7)", "Collapsed(2)", "Collapsed(3)"]);
        // Its metrics: the rows out (3 winners, 2 passed messages, 1 count)
        // and the rows it collapsed; nothing spilled.
        let metrics = dedup.metrics().unwrap();
        assert_eq!(metrics.output_rows(), Some(6));
        assert_eq!(
            metrics.sum_by_name("collapsed_rows").map(|v| v.as_usize()),
            Some(3)
        );
        assert_eq!(metrics.spill_count(), Some(0));
        assert!(metrics.elapsed_compute().is_some());
    }
}
