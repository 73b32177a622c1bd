//! The project's plan nodes that run on executors (staging writers), and how
//! each one is written to and read back from its recipe.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{filter, filter_record_batch, not, SortOptions};
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

/// The failed-rule columns of `schema` with, per column, the bits of the
/// rules for which `select` is true (by rule index).
pub fn rule_masks(
    schema: &Schema,
    rules: usize,
    select: impl Fn(usize) -> bool,
) -> DfResult<Vec<(usize, u64)>> {
    (0..rules.div_ceil(RULES_PER_COLUMN))
        .map(|j| {
            Ok((
                schema.index_of(&failed_column(j))?,
                column_mask(rules, j, &select),
            ))
        })
        .collect()
}

/// The bits, in failed-rule column `j`, of the rules (of `rules`) for which
/// `select` is true.
pub fn column_mask(rules: usize, j: usize, select: impl Fn(usize) -> bool) -> u64 {
    (j * RULES_PER_COLUMN..rules.min((j + 1) * RULES_PER_COLUMN))
        .filter(|&i| select(i))
        .fold(0u64, |m, i| m | rule_bit(i).1)
}

/// Per row of `batch`, whether any bit of `masks` is set (a selected rule
/// failed).
pub fn any_failed(batch: &RecordBatch, masks: &[(usize, u64)]) -> BooleanArray {
    use datafusion::arrow::buffer::BooleanBuffer;
    use datafusion::arrow::datatypes::UInt64Type;
    let columns: Vec<(&[u64], u64)> = masks
        .iter()
        .filter(|(_, m)| *m != 0)
        .map(|&(c, m)| {
            (
                batch
                    .column(c)
                    .as_primitive::<UInt64Type>()
                    .values()
                    .as_ref(),
                m,
            )
        })
        .collect();
    BooleanArray::new(
        BooleanBuffer::collect_bool(batch.num_rows(), |row| {
            columns.iter().any(|(v, m)| v[row] & m != 0)
        }),
        None,
    )
}

/// Column [`DedupExec`] adds: TRUE for a row an equal key's later row replaces.
pub const DUPLICATE: &str = "__lakehouse_duplicate";

/// A column of the staging plan's own (rule bits, duplicate marks), never
/// the model's.
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
    /// `schema`.
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
        Ok(predicate)
    }
}

pub fn encode_schema(schema: &Schema) -> DfResult<String> {
    use base64::Engine;
    use prost::Message;
    let proto = datafusion_proto::protobuf::Schema::try_from(schema)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(proto.encode_to_vec()))
}

fn decode_schema(text: &str) -> DfResult<SchemaRef> {
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
/// with one boolean column per expectation; it stands for the whole
/// deduplicate → split by partition → write chain, and returns what it
/// wrote as messages for the driver's commit.
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
    if let Some(stage) = node.downcast_ref::<StageExec>() {
        return Ok(Some(("stage-exec", json(&stage.spec)?)));
    }
    if let Some(dedup) = node.downcast_ref::<DedupExec>() {
        return Ok(Some(("dedup-exec", json(&dedup.spec)?)));
    }
    Ok(None)
}

pub fn decode_physical(
    kind: &str,
    body: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    match (kind, inputs) {
        ("stage-exec", [input]) => Ok(Arc::new(StageExec::try_new(
            input.clone(),
            parse_spec(body)?,
        )?)),
        ("dedup-exec", [input]) => Ok(Arc::new(DedupExec::try_new(
            input.clone(),
            parse_spec(body)?,
        )?)),
        _ => Err(unknown(kind)),
    }
}

/// Plans [`StageNode`]: `StageExec` over `DedupExec` (when the model has a
/// unique key) over the model's plan. Both declare the distribution and
/// order they need, so DataFusion's optimizer adds the hash repartitions
/// (Ballista's shuffles) and sorts below them.
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
        let mut plan = input.clone();
        if !spec.unique_key.is_empty() {
            plan = Arc::new(DedupExec::try_new(plan, spec.clone())?);
        }
        if let Some(range) = &spec.range {
            let predicate = range.predicate(&plan.schema())?;
            plan = Arc::new(FilterExec::try_new(predicate, plan)?);
        }
        Ok(Some(Arc::new(StageExec::try_new(plan, spec)?)))
    }
}

fn columns(schema: &SchemaRef, names: &[String]) -> DfResult<Vec<Arc<dyn PhysicalExpr>>> {
    names
        .iter()
        .map(|n| Ok(Arc::new(Column::new_with_schema(n, schema)?) as Arc<dyn PhysicalExpr>))
        .collect()
}

fn properties(schema: SchemaRef, input: &Arc<dyn ExecutionPlan>) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        input.output_partitioning().clone(),
        EmissionType::Final,
        Boundedness::Bounded,
    ))
}

/// Keeps, per key, the row with the greatest sequence among the rows that
/// pass every `drop` rule, and marks the others of that key as duplicates
/// (column [`DUPLICATE`]); rows a `drop` rule quarantines pass unmarked.
/// Needs its input hash-split by the key; it does not sort
/// ([`crate::dedup`]: buckets by hash, spilled whole when memory is short).
#[derive(Debug)]
pub struct DedupExec {
    input: Arc<dyn ExecutionPlan>,
    spec: StageSpec,
    dedup: Arc<crate::dedup::Spec>,
    props: Arc<PlanProperties>,
}

impl DedupExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: StageSpec) -> DfResult<Self> {
        let schema = input.schema();
        let drop_rules = rule_masks(&schema, spec.rules.len(), |i| {
            spec.rules[i].action == crate::pipeline::Action::Drop
        })?;
        let dedup = crate::dedup::Spec::new(
            schema,
            &spec.unique_key,
            &spec.sequence_by,
            crate::dedup::Losers::Mark {
                column: DUPLICATE.to_string(),
                drop_rules,
            },
        )?;
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(dedup.output_schema()),
            input.output_partitioning().clone(),
            // Rows come out once the partition's input has ended.
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            spec,
            dedup: Arc::new(dedup),
            props,
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
        let input = self.input.execute(partition, context.clone())?;
        Ok(crate::dedup::deduplicate(
            input,
            self.dedup.clone(),
            context,
            partition,
        ))
    }
}

/// Writes its input into Parquet files of the model's table (rows that
/// pass, duplicates left out) and of its quarantine (rows a `drop` rule
/// caught), and returns one message per file written plus one with the
/// counts: the data of a Delta commit, which the driver makes.
#[derive(Debug)]
pub struct StageExec {
    input: Arc<dyn ExecutionPlan>,
    spec: StageSpec,
    props: Arc<PlanProperties>,
}

impl StageExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: StageSpec) -> DfResult<Self> {
        let props = properties(message_schema(), &input);
        Ok(Self { input, spec, props })
    }
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
        // Sorted by partition, a writer holds one partition's buffer at a time.
        let order = columns(&self.input.schema(), &self.spec.partition_by)
            .ok()
            .and_then(|cols| {
                LexRequirement::new(
                    cols.into_iter()
                        .map(|e| PhysicalSortRequirement::new(e, Some(SortOptions::default()))),
                )
            });
        vec![order.map(OrderingRequirements::new)]
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
        let input = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let task = async move {
            stage_partition(spec, input).await.map_err(|e| match e {
                crate::error::Error::DataFusion(d) => d,
                other => DataFusionError::External(Box::new(other)),
            })
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            message_schema(),
            futures::stream::once(task),
        )))
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
    /// What the task saw: rows in, per rule, and duplicates left out.
    Counts {
        checks: crate::quality::Counts,
        duplicates: u64,
        written: u64,
    },
}

/// A writer for one table, on the store as this node reaches it; the
/// table's first rows decide which columns get a dictionary.
fn writer(
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
) -> crate::error::Result<RecordBatch> {
    use crate::error::Error;
    let in_schema = input.schema();
    let table_schema = decode_schema(&spec.table_schema)?;
    let mut table = writer(
        spec.table_url.clone(),
        table_schema.clone(),
        &spec.partition_by,
        &spec.model,
    );
    let mut quarantine = match &spec.quarantine {
        Some((url, schema)) => {
            let schema = decode_schema(schema)?;
            let name = format!("the quarantine of {}", spec.model);
            Some((writer(url.clone(), schema.clone(), &[], &name), schema))
        }
        None => None,
    };
    // The model's own columns (lineage included) for the quarantine, and
    // the visible ones for the table.
    let model_columns: Vec<usize> = (0..in_schema.fields().len())
        .filter(|&i| !internal(in_schema.field(i).name()))
        .collect();
    let visible: Vec<usize> = model_columns
        .iter()
        .copied()
        .filter(|&i| !in_schema.field(i).name().starts_with('_'))
        .collect();
    let model_schema = Arc::new(in_schema.project(&model_columns)?);
    let q_schema = crate::quality::quarantine_schema(&model_schema);
    let rule_bits: Vec<(usize, u64)> = (0..spec.rules.len())
        .map(|i| {
            let (column, bit) = rule_bit(i);
            Ok((in_schema.index_of(&column)?, bit))
        })
        .collect::<DfResult<_>>()?;
    let drop_masks = rule_masks(&in_schema, spec.rules.len(), |i| {
        spec.rules[i].action == crate::pipeline::Action::Drop
    })?;
    let duplicate_column = in_schema.index_of(DUPLICATE).ok();
    let rules: Vec<&crate::pipeline::Expectation> = spec.rules.iter().collect();
    let q = crate::quality::Quarantine {
        model: &spec.model,
        rules: &rules,
        schema: &q_schema,
        run_id: &spec.run_id,
    };
    let mut counts = crate::quality::Counts::new(rules.len());
    let (mut duplicates, mut written) = (0u64, 0u64);
    // Where each visible column sits among the model's columns.
    let positions: Vec<usize> = visible
        .iter()
        .filter_map(|&i| model_columns.iter().position(|&m| m == i))
        .collect();
    while let Some(batch) = input.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let values: Vec<BooleanArray> = rule_bits
            .iter()
            .map(|&(c, bit)| passes_rule(&batch, c, bit))
            .collect();
        let model_batch = batch.project(&model_columns)?;
        let (kept, bad) = crate::quality::split_by_rules(&q, &values, &model_batch, &mut counts)?;
        if let (Some(bad), Some((w, schema))) = (bad, quarantine.as_mut()) {
            w.write(crate::delta::conform(&bad, schema)?).await?;
        }
        // The rows kept, in the same order as `batch` minus the quarantined:
        // the duplicate marks follow the same filter.
        let kept = match duplicate_column {
            Some(d) => {
                let passes = not(&any_failed(&batch, &drop_masks))?;
                let marks = filter(batch.column(d), &passes)?;
                let marks = marks.as_boolean();
                duplicates += marks.true_count() as u64;
                filter_record_batch(&kept, &not(marks)?)?
            }
            None => kept,
        };
        if kept.num_rows() == 0 {
            continue;
        }
        let rows = crate::delta::conform(&kept.project(&positions)?, &table_schema)?;
        written += rows.num_rows() as u64;
        table.write(rows).await?;
    }
    let table_adds = table.finish().await?;
    let mut messages: Vec<String> = Vec::new();
    let json = |m: &Message| {
        serde_json::to_string(m).map_err(|e| Error::Internal(format!("stage message: {e}")))
    };
    for add in table_adds {
        messages.push(json(&Message::Table(add))?);
    }
    if let Some((w, _)) = quarantine {
        for add in w.finish().await? {
            messages.push(json(&Message::Quarantine(add))?);
        }
    }
    messages.push(json(&Message::Counts {
        checks: counts,
        duplicates,
        written,
    })?);
    Ok(RecordBatch::try_new(
        message_schema(),
        vec![Arc::new(StringArray::from(messages))],
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
        DefaultPhysicalPlanner::with_extension_planners(vec![
            deltalake::delta_datafusion::planner::DeltaExtensionPlanner::new(),
            Arc::new(StagePlanner),
        ])
        .create_physical_plan(plan, state)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules 0, 2 and 64 drop, rule 1 warns: bits in two columns.
    #[test]
    fn only_drop_rules_decide_what_passes() {
        use datafusion::arrow::array::UInt64Array;
        let schema = Schema::new(vec![
            Field::new(failed_column(0), DataType::UInt64, false),
            Field::new(failed_column(1), DataType::UInt64, false),
        ]);
        let rules = 65;
        let drop = |i: usize| i != 1 && (i <= 2 || i == 64);
        let masks = rule_masks(&schema, rules, drop).unwrap();
        assert_eq!(masks, vec![(0, 0b101), (1, 1)]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                // none, the warn rule, rule 2, none
                Arc::new(UInt64Array::from(vec![0, 0b10, 0b100, 0])),
                // none, none, none, rule 64
                Arc::new(UInt64Array::from(vec![0, 0, 0, 1])),
            ],
        )
        .unwrap();
        let failed = any_failed(&batch, &masks);
        assert_eq!(
            failed.iter().flatten().collect::<Vec<_>>(),
            vec![false, false, true, true]
        );
        // Without rules every row passes (an empty mask once dropped every
        // row, and reconciliation caught it).
        let none = any_failed(
            &batch,
            &rule_masks(batch.schema().as_ref(), 0, drop).unwrap(),
        );
        assert_eq!(none.len(), 4);
        assert_eq!(none.true_count(), 0);
        assert_eq!(
            passes_rule(&batch, 0, 0b10)
                .iter()
                .flatten()
                .collect::<Vec<_>>(),
            vec![true, false, true, true]
        );
    }
}
