//! Joins that look rows up in a small table without copying the rows they
//! keep. A model's `LEFT JOIN stores` (a few dozen rows) is planned by
//! DataFusion as a hash join that collects `stores` and keeps every order
//! row; DataFusion then builds each output batch with a `take` of every
//! column of the orders, a copy of all of them for each such join, though
//! every row comes out once and in place. Here, when each order row finds at
//! most one row of the small table, the orders' columns are passed on as
//! they are and only the small table's columns are gathered (at 10M rows of
//! the example, two such joins copied about 20 columns of 9.85M rows each).
//!
//! [`LookupJoins`] replaces a hash join with a [`LookupJoinExec`] only where
//! the result is the same: an outer join that keeps every row of its probe
//! side (`JoinType::Right` with the build side collected), keys compared as
//! plain values (text, integers, dates, timestamps, decimals; not floats,
//! whose `-0.0`/`NaN` equality differs), both sides' keys of one type, no
//! join filter and no row limit. A build side whose keys repeat still gives
//! DataFusion's answer: every matching row, with the probe row repeated.
//!
//! Local sessions plan with the rule. A Ballista scheduler plans a job with
//! its adaptive planner's own fixed list of rules (Ballista 55 takes no
//! extra rule there), so on a cluster DataFusion's hash join stays.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::hash_utils::RandomState;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinSide, JoinType, NullEquality};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

/// The physical optimizer rule: hash joins that keep every probe row and
/// look up a collected build side become [`LookupJoinExec`]s.
#[derive(Debug, Default)]
pub struct LookupJoins;

impl PhysicalOptimizerRule for LookupJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match node.downcast_ref::<HashJoinExec>() {
            Some(join) => match LookupJoinExec::from_join(join)? {
                Some(lookup) => Ok(Transformed::yes(Arc::new(lookup) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            },
            None => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "lookup_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Key types whose row encodings are equal exactly when SQL's `=` holds.
fn plain_key(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Utf8 | LargeUtf8
            | Utf8View
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Date32
            | Date64
            | Timestamp(_, _)
            | Decimal128(_, _)
            | Decimal256(_, _)
            | Boolean
    )
}

/// A join that keeps every row of `probe`, each with the `build` row its
/// key finds (or NULLs), and passes the probe's columns on uncopied when
/// each probe row finds at most one.
pub struct LookupJoinExec {
    spec: Arc<Spec>,
    probe: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
    /// The build side, collected once for every output partition.
    table: Arc<OnceCell<Arc<Table>>>,
    metrics: ExecutionPlanMetricsSet,
}

/// What a lookup join does, shared by its partitions' streams.
struct Spec {
    build: Arc<dyn ExecutionPlan>,
    build_keys: Vec<Arc<dyn PhysicalExpr>>,
    probe_keys: Vec<Arc<dyn PhysicalExpr>>,
    null_equality: NullEquality,
    /// Each output column: which side, and its index there.
    columns: Vec<(JoinSide, usize)>,
    schema: SchemaRef,
}

impl std::fmt::Debug for LookupJoinExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupJoinExec")
            .field("columns", &self.spec.columns)
            .finish()
    }
}

impl LookupJoinExec {
    /// The lookup join doing `join`'s work, when it gives the same rows.
    pub fn from_join(join: &HashJoinExec) -> DfResult<Option<Self>> {
        if join.join_type != JoinType::Right
            || join.mode != PartitionMode::CollectLeft
            || join.filter.is_some()
            || join.null_aware
            || join.fetch().is_some()
            || join.on.is_empty()
        {
            return Ok(None);
        }
        let (left, right) = (join.left.schema(), join.right.schema());
        for (l, r) in &join.on {
            let (lt, rt) = (l.data_type(&left)?, r.data_type(&right)?);
            if lt != rt || !plain_key(&lt) {
                return Ok(None);
            }
        }
        let joined: Vec<(JoinSide, usize)> = (0..left.fields().len())
            .map(|i| (JoinSide::Left, i))
            .chain((0..right.fields().len()).map(|i| (JoinSide::Right, i)))
            .collect();
        let columns = match &join.projection {
            Some(p) => p.iter().map(|&i| joined[i]).collect(),
            None => joined,
        };
        Ok(Some(Self {
            spec: Arc::new(Spec {
                build: join.left.clone(),
                build_keys: join.on.iter().map(|(l, _)| l.clone()).collect(),
                probe_keys: join.on.iter().map(|(_, r)| r.clone()).collect(),
                null_equality: join.null_equality,
                columns,
                schema: join.schema(),
            }),
            probe: join.right.clone(),
            props: join.properties().clone(),
            table: Arc::new(OnceCell::new()),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

impl Spec {
    fn codec(&self) -> DfResult<KeyCodec> {
        let schema = self.build.schema();
        let types = self
            .build_keys
            .iter()
            .map(|k| k.data_type(&schema))
            .collect::<DfResult<Vec<_>>>()?;
        if self.null_equality == NullEquality::NullEqualsNothing
            && matches!(
                types.as_slice(),
                [DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8]
            )
        {
            return Ok(KeyCodec::Text);
        }
        Ok(KeyCodec::Rows(RowConverter::new(
            types.into_iter().map(SortField::new).collect(),
        )?))
    }
}

/// The collected build side: its rows, and the rows of each key.
struct Table {
    rows: RecordBatch,
    /// Counts `rows` and the map against the memory pool, once for every
    /// partition reading them.
    _reservation: datafusion::execution::memory_pool::MemoryReservation,
    /// Row numbers by the key's row encoding.
    by_key: HashMap<Vec<u8>, Vec<u32>, RandomState>,
}

fn key_columns(keys: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> DfResult<Vec<ArrayRef>> {
    keys.iter()
        .map(|k| k.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

/// Whether row `row` of `keys` has a NULL in any key column.
fn any_null(keys: &[ArrayRef], row: usize) -> bool {
    keys.iter().any(|k| k.is_null(row))
}

async fn collect_table(exec: &Spec, context: Arc<TaskContext>) -> DfResult<Arc<Table>> {
    let schema = exec.build.schema();
    let mut batches = Vec::new();
    for partition in 0..exec.build.output_partitioning().partition_count() {
        let mut stream = exec.build.execute(partition, context.clone())?;
        while let Some(batch) = stream.next().await {
            batches.push(batch?);
        }
    }
    let rows = concat_batches(&schema, &batches)?;
    drop(batches);
    let reservation = MemoryConsumer::new("LakehouseLookupJoin").register(context.memory_pool());
    // The rows, and about 64 bytes a row for the map.
    reservation.try_grow(rows.get_array_memory_size() + 64 * rows.num_rows())?;
    let keys = key_columns(&exec.build_keys, &rows)?;
    let encoded = exec.codec()?.encode(&keys)?;
    let mut by_key: HashMap<Vec<u8>, Vec<u32>, RandomState> =
        HashMap::with_capacity_and_hasher(rows.num_rows(), RandomState::with_seed(0));
    for row in 0..rows.num_rows() {
        if exec.null_equality == NullEquality::NullEqualsNothing && any_null(&keys, row) {
            continue;
        }
        by_key
            .entry(encoded.key(row).to_vec())
            .or_default()
            .push(row as u32);
    }
    Ok(Arc::new(Table {
        rows,
        _reservation: reservation,
        by_key,
    }))
}

/// How keys become the bytes they are looked up by: a single text key
/// (NULLs matching nothing) by its own bytes, any other by its row
/// encoding (equal exactly when the values are).
enum KeyCodec {
    Text,
    Rows(RowConverter),
}

enum EncodedKeys {
    Text(ArrayRef),
    Rows(datafusion::arrow::row::Rows),
}

impl KeyCodec {
    fn encode(&self, keys: &[ArrayRef]) -> DfResult<EncodedKeys> {
        Ok(match self {
            KeyCodec::Text => EncodedKeys::Text(keys[0].clone()),
            KeyCodec::Rows(converter) => EncodedKeys::Rows(converter.convert_columns(keys)?),
        })
    }
}

impl EncodedKeys {
    /// Row `row`'s key bytes (a NULL text key reads as empty: callers skip
    /// NULL keys before).
    fn key(&self, row: usize) -> &[u8] {
        use datafusion::arrow::array::AsArray;
        match self {
            EncodedKeys::Text(a) => match a.data_type() {
                DataType::Utf8View => a.as_string_view().value(row).as_bytes(),
                DataType::Utf8 => a.as_string::<i32>().value(row).as_bytes(),
                _ => a.as_string::<i64>().value(row).as_bytes(),
            },
            EncodedKeys::Rows(rows) => rows.row(row).data(),
        }
    }
}

impl DisplayAs for LookupJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let on: Vec<String> = self
            .spec
            .build_keys
            .iter()
            .zip(&self.spec.probe_keys)
            .map(|(b, p)| format!("({b}, {p})"))
            .collect();
        write!(f, "LakehouseLookupJoin: on=[{}]", on.join(", "))
    }
}

impl ExecutionPlan for LookupJoinExec {
    fn name(&self) -> &str {
        "LakehouseLookupJoin"
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        for k in self.spec.build_keys.iter().chain(&self.spec.probe_keys) {
            if f(k)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.spec.build, &self.probe]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![
            Distribution::SinglePartition,
            Distribution::UnspecifiedDistribution,
        ]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false, true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [build, probe]: [Arc<dyn ExecutionPlan>; 2] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("LakehouseLookupJoin has two inputs".into()))?;
        let spec = Spec {
            build,
            build_keys: self.spec.build_keys.clone(),
            probe_keys: self.spec.probe_keys.clone(),
            null_equality: self.spec.null_equality,
            columns: self.spec.columns.clone(),
            schema: self.spec.schema.clone(),
        };
        Ok(Arc::new(Self {
            spec: Arc::new(spec),
            probe,
            props: self.props.clone(),
            table: Arc::new(OnceCell::new()),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let probe = self.probe.execute(partition, context.clone())?;
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let (spec, table) = (self.spec.clone(), self.table.clone());
        let out = futures::stream::once(async move {
            let table = table
                .get_or_try_init(|| collect_table(&spec, context.clone()))
                .await?
                .clone();
            let codec = spec.codec()?;
            Ok::<_, DataFusionError>(probe.map(move |batch| {
                let _timer = baseline.elapsed_compute().timer();
                let out = join_batch(&spec, &table, &codec, &batch?)?;
                baseline.record_output(out.num_rows());
                Ok(out)
            }))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.spec.schema.clone(),
            out,
        )))
    }
}

/// The output rows of one probe batch, in its row order.
fn join_batch(
    exec: &Spec,
    table: &Table,
    codec: &KeyCodec,
    batch: &RecordBatch,
) -> DfResult<RecordBatch> {
    let n = batch.num_rows();
    let keys = key_columns(&exec.probe_keys, batch)?;
    let encoded = codec.encode(&keys)?;
    let skip_nulls = exec.null_equality == NullEquality::NullEqualsNothing;
    let mut build_rows: Vec<Option<u32>> = Vec::with_capacity(n);
    // Probe row of each output row, when some probe row found several.
    let mut probe_rows: Option<Vec<u32>> = None;
    for row in 0..n {
        let found = if skip_nulls && any_null(&keys, row) {
            None
        } else {
            table.by_key.get(encoded.key(row))
        };
        match found.map(Vec::as_slice) {
            None | Some([]) => {
                build_rows.push(None);
                if let Some(p) = probe_rows.as_mut() {
                    p.push(row as u32);
                }
            }
            Some([one]) => {
                build_rows.push(Some(*one));
                if let Some(p) = probe_rows.as_mut() {
                    p.push(row as u32);
                }
            }
            Some(many) => {
                let p = probe_rows.get_or_insert_with(|| (0..row as u32).collect());
                for &b in many {
                    build_rows.push(Some(b));
                    p.push(row as u32);
                }
            }
        }
    }
    let build_rows = UInt32Array::from(build_rows);
    let probe_rows = probe_rows.map(UInt32Array::from);
    let columns: Vec<ArrayRef> = exec
        .columns
        .iter()
        .map(|&(side, i)| match side {
            JoinSide::Left => Ok(take(table.rows.column(i).as_ref(), &build_rows, None)?),
            _ => match &probe_rows {
                None => Ok(batch.column(i).clone()),
                Some(rows) => Ok(take(batch.column(i).as_ref(), rows, None)?),
            },
        })
        .collect::<DfResult<_>>()?;
    Ok(RecordBatch::try_new(exec.schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::SessionContext;

    /// A session whose planner ends with the rule, and one without it.
    fn sessions() -> (SessionContext, SessionContext) {
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(super::LookupJoins))
            .build();
        (SessionContext::new_with_state(state), SessionContext::new())
    }

    async fn register(ctx: &SessionContext) {
        // Orders: 20,000 rows in 7 batches of varied lengths; store keys
        // with NULLs, unknown stores, and one store listed twice.
        let mut batches = Vec::new();
        let mut start = 0i64;
        for len in [1i64, 4000, 333, 9000, 2666, 3999, 1] {
            let ids: Vec<i64> = (start..start + len).collect();
            let store = |i: i64| match i % 23 {
                0 => None,
                1 => Some("S-unknown".to_string()),
                k => Some(format!("S{:02}", k % 9)),
            };
            batches.push(
                RecordBatch::try_from_iter([
                    ("id", Arc::new(Int64Array::from(ids.clone())) as _),
                    (
                        "store",
                        Arc::new(ids.iter().map(|&i| store(i)).collect::<StringArray>()) as _,
                    ),
                    (
                        "amount",
                        Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 100))) as _,
                    ),
                ])
                .unwrap(),
            );
            start += len;
        }
        let orders = datafusion::datasource::MemTable::try_new(
            batches[0].schema(),
            vec![batches[..4].to_vec(), batches[4..].to_vec()],
        )
        .unwrap();
        ctx.register_table("orders", Arc::new(orders)).unwrap();
        // S03 is listed twice (two regions), S08 not at all.
        let stores = RecordBatch::try_from_iter([
            (
                "store",
                Arc::new(StringArray::from(vec![
                    Some("S00"),
                    Some("S01"),
                    Some("S02"),
                    Some("S03"),
                    Some("S03"),
                    Some("S04"),
                    Some("S05"),
                    Some("S06"),
                    Some("S07"),
                    None,
                ])) as _,
            ),
            (
                "region",
                Arc::new(StringArray::from(vec![
                    "n", "s", "e", "w", "w2", "c", "n", "s", "e", "none",
                ])) as _,
            ),
        ])
        .unwrap();
        let stores =
            datafusion::datasource::MemTable::try_new(stores.schema(), vec![vec![stores]]).unwrap();
        ctx.register_table("stores", Arc::new(stores)).unwrap();
    }

    /// A query's physical plan, and its text.
    async fn plan_of(
        ctx: &SessionContext,
        sql: &str,
    ) -> (Arc<dyn datafusion::physical_plan::ExecutionPlan>, String) {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        (plan, text)
    }

    /// Rows of a query as sorted text lines, and its plan's text.
    async fn run(ctx: &SessionContext, sql: &str) -> (Vec<String>, String) {
        let (plan, text) = plan_of(ctx, sql).await;
        let batches = collect(plan, ctx.task_ctx()).await.unwrap();
        let mut lines = Vec::new();
        for b in &batches {
            for row in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .columns()
                    .iter()
                    .map(|c| {
                        datafusion::arrow::util::display::array_value_to_string(c, row).unwrap()
                    })
                    .collect();
                lines.push(cells.join("|"));
            }
        }
        lines.sort();
        (lines, text)
    }

    /// The model's shape (`orders LEFT JOIN stores`) gives DataFusion's
    /// rows, value for value, with the lookup join in the plan: unmatched
    /// and NULL keys keep their order with NULLs, a store listed twice
    /// repeats its orders.
    #[tokio::test]
    async fn a_left_join_on_a_small_table_gives_the_hash_joins_rows() {
        let (with, without) = sessions();
        register(&with).await;
        register(&without).await;
        let sql = "SELECT o.id, o.amount, s.region, o.store FROM orders o LEFT JOIN stores s ON o.store = s.store";
        let (got, plan) = run(&with, sql).await;
        let (want, reference_plan) = run(&without, sql).await;
        assert!(plan.contains("LakehouseLookupJoin"), "{plan}");
        assert!(!reference_plan.contains("LakehouseLookupJoin"));
        assert_eq!(got, want);
        // 20,000 orders, plus one more row for each order of S03.
        let s03 = (0..20_000i64)
            .filter(|i| i % 23 > 1 && (i % 23) % 9 == 3)
            .count();
        assert_eq!(got.len(), 20_000 + s03);
        let unmatched = got
            .iter()
            .filter(|l| l.split('|').nth(2) == Some(""))
            .count();
        let expected_unmatched = (0..20_000i64)
            .filter(|i| i % 23 <= 1 || (i % 23) % 9 == 8)
            .count();
        assert_eq!(unmatched, expected_unmatched);

        // Sums over the join; NULL keys that match each other; integer
        // keys (row-encoded rather than looked up as text).
        for sql in [
            "SELECT count(*), sum(o.amount), count(s.region) FROM orders o LEFT JOIN stores s ON o.store = s.store",
            "SELECT o.id, s.region FROM orders o LEFT JOIN stores s ON o.store IS NOT DISTINCT FROM s.store",
            "SELECT o.id, s.region FROM orders o LEFT JOIN (SELECT length(region) AS k, max(region) AS region FROM stores GROUP BY length(region)) s ON o.amount = s.k",
        ] {
            let (got, plan) = run(&with, sql).await;
            let (want, _) = run(&without, sql).await;
            assert!(plan.contains("LakehouseLookupJoin"), "{sql}\n{plan}");
            assert_eq!(got, want, "{sql}");
        }
        let sql = "SELECT count(*) FROM orders o LEFT JOIN stores s ON o.store IS NOT DISTINCT FROM s.store WHERE s.region = 'none'";
        let nulls = (0..20_000i64).filter(|i| i % 23 == 0).count();
        assert_eq!(run(&with, sql).await.0, vec![nulls.to_string()]);
    }

    /// Keys unique in the small table: every order comes out once, in the
    /// orders' row order (DataFusion's hash join puts a batch's unmatched
    /// rows last), and the ids come through whole.
    #[tokio::test]
    async fn unique_keys_keep_the_probe_rows_in_their_order() {
        let (with, _) = sessions();
        register(&with).await;
        let sql = "SELECT o.id, s.region FROM orders o LEFT JOIN (SELECT store, max(region) AS region FROM stores GROUP BY store) s ON o.store = s.store";
        let (plan, text) = plan_of(&with, sql).await;
        assert!(text.contains("LakehouseLookupJoin"), "{text}");
        let batches = collect(plan, with.task_ctx()).await.unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 20_000);
        // Within each batch the ids ascend: probe rows in their order.
        for b in &batches {
            let ids = b.column(0).as_primitive::<Int64Type>();
            assert!(ids.values().windows(2).all(|w| w[0] < w[1]));
            assert_eq!(ids.null_count(), 0);
        }
    }

    /// Joins the rule leaves alone: inner joins, joins with a filter, and
    /// keys of different types or floats.
    #[tokio::test]
    async fn other_joins_are_left_to_datafusion() {
        let (with, _) = sessions();
        register(&with).await;
        for sql in [
            "SELECT o.id, s.region FROM orders o JOIN stores s ON o.store = s.store",
            "SELECT o.id, s.region FROM orders o LEFT JOIN stores s ON o.store = s.store AND o.amount > length(s.region)",
            "SELECT o.id FROM orders o LEFT JOIN (SELECT CAST(length(store) AS DOUBLE) AS k FROM stores) s ON CAST(o.amount AS DOUBLE) = s.k",
        ] {
            let (_, text) = plan_of(&with, sql).await;
            assert!(!text.contains("LakehouseLookupJoin"), "{sql}\n{text}");
        }
    }
}
