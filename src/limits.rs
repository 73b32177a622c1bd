//! Per-query limits for sessions that answer other people's SQL (`serve`):
//! a time limit, a memory limit and a cap on queries running at once.
//!
//! They are applied where every plan passes, the session's query planner, so
//! no protocol can forget them: the physical plan of each query is wrapped in
//! a [`LimitedExec`] that waits for a slot, runs the plan under its own
//! memory pool and ends the stream with an error when the time is up. A query
//! over a limit fails alone; the others keep running.
//! Owns limits; must not know about protocols.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

/// Told about every limited query: where the server counts queries, their
/// outcome, latency, rows and bytes (the server's `/metrics`).
pub trait QueryObserver: Send + Sync + fmt::Debug {
    /// A query starts (called where its stream is created, in the task of
    /// the protocol that asked for it).
    fn start(&self) -> Box<dyn QueryProbe>;
}

/// One query's report. Dropped without [`QueryProbe::end`]: cancelled.
pub trait QueryProbe: Send {
    fn batch(&mut self, rows: usize, bytes: usize);
    /// The stream ended: after its last row (`None`) or with an error.
    fn end(&mut self, error: Option<&DataFusionError>);
}

#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Longest a query may take, waiting for a slot included.
    pub timeout: Duration,
    /// Memory one query may hold before its sorts and joins must spill, or fail.
    pub memory: usize,
    /// Queries running at once; more wait for a slot (within their time limit).
    pub max_concurrent: usize,
    /// Where each query reports its outcome, if anywhere.
    pub observer: Option<Arc<dyn QueryObserver>>,
}

/// Wraps another planner; every physical plan it makes runs under `limits`.
#[derive(Debug)]
pub struct LimitedPlanner {
    inner: Arc<dyn QueryPlanner + Send + Sync>,
    limits: QueryLimits,
    slots: Arc<Semaphore>,
}

impl LimitedPlanner {
    pub fn new(inner: Arc<dyn QueryPlanner + Send + Sync>, limits: QueryLimits) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Self {
            inner,
            limits,
            slots,
        }
    }
}

#[async_trait]
impl QueryPlanner for LimitedPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = self
            .inner
            .create_physical_plan(logical_plan, session_state)
            .await?;
        Ok(Arc::new(LimitedExec::new(
            plan,
            self.limits.clone(),
            self.slots.clone(),
        )))
    }
}

/// The root of a limited query: one output partition (the plan's partitions
/// are merged below it), so the whole query shares one memory pool, one slot
/// and one deadline.
#[derive(Debug)]
pub struct LimitedExec {
    input: Arc<dyn ExecutionPlan>,
    limits: QueryLimits,
    slots: Arc<Semaphore>,
    properties: Arc<PlanProperties>,
}

impl LimitedExec {
    fn new(input: Arc<dyn ExecutionPlan>, limits: QueryLimits, slots: Arc<Semaphore>) -> Self {
        let input: Arc<dyn ExecutionPlan> = if input.output_partitioning().partition_count() > 1 {
            Arc::new(CoalescePartitionsExec::new(input))
        } else {
            input
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            input,
            limits,
            slots,
            properties,
        }
    }
}

impl DisplayAs for LimitedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LimitedExec: timeout={:?}, memory={}",
            self.limits.timeout, self.limits.memory
        )
    }
}

impl ExecutionPlan for LimitedExec {
    fn name(&self) -> &str {
        "LimitedExec"
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("LimitedExec has one child".into()))?;
        Ok(Arc::new(LimitedExec::new(
            input,
            self.limits.clone(),
            self.slots.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LimitedExec has one partition, asked for {partition}"
            )));
        }
        let limits = self.limits.clone();
        let runtime = RuntimeEnvBuilder::from_runtime_env(&context.runtime_env())
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(limits.memory)))
            .build_arc()?;
        let task = Arc::new(TaskContext::new(
            context.task_id(),
            context.session_id(),
            context.session_config().clone(),
            context.scalar_functions().clone(),
            context.higher_order_functions().clone(),
            context.aggregate_functions().clone(),
            context.window_functions().clone(),
            runtime,
        ));
        let input = self.input.clone();
        let slots = self.slots.clone();
        let schema = self.input.schema();
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let timeout = limits.timeout;
        let memory = limits.memory;
        let start = async move {
            let permit = tokio::time::timeout_at(deadline, slots.acquire_owned())
                .await
                .map_err(|_| {
                    DataFusionError::ResourcesExhausted(format!(
                        "the server is busy: every query slot stayed taken for {}; \
                         try again, or ask the operator to raise --max-queries",
                        human_duration(timeout)
                    ))
                })?
                .map_err(|_| DataFusionError::Execution("the server is shutting down".into()))?;
            let stream = input.execute(0, task)?;
            // The slot is held until the stream ends or is dropped.
            Ok::<_, DataFusionError>(stream.map(move |b| {
                let _held = &permit;
                b
            }))
        };
        let stream = futures::stream::once(start)
            .try_flatten()
            .map_err(move |e| explain_limit(e, memory));
        let stream = Deadline {
            inner: Box::pin(stream),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
            done: false,
        };
        let stream = Observed {
            inner: Box::pin(stream),
            probe: limits.observer.as_ref().map(|o| o.start()),
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Reports each batch, and the end, of a query's stream to its probe.
struct Observed<S> {
    inner: Pin<Box<S>>,
    probe: Option<Box<dyn QueryProbe>>,
}

impl<S> Stream for Observed<S>
where
    S: Stream<Item = DfResult<datafusion::arrow::array::RecordBatch>>,
{
    type Item = DfResult<datafusion::arrow::array::RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(item) = &item {
            if let Some(probe) = self.probe.as_mut() {
                match item {
                    Some(Ok(b)) => probe.batch(b.num_rows(), b.get_array_memory_size()),
                    Some(Err(e)) => probe.end(Some(e)),
                    None => probe.end(None),
                }
            }
        }
        item
    }
}

/// Ends a stream with an error once its deadline passes.
struct Deadline<S> {
    inner: Pin<Box<S>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
}

impl<S, T> Stream for Deadline<S>
where
    S: Stream<Item = DfResult<T>>,
{
    type Item = DfResult<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(DataFusionError::ResourcesExhausted(format!(
                "query cancelled: it ran past the server's time limit of {} \
                 (--query-timeout). Filter on the table's partition columns (`lakehouse \
                 tables` lists them) or aggregate in the query to make it cheaper.",
                human_duration(self.timeout)
            )))));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

fn explain_limit(e: DataFusionError, memory: usize) -> DataFusionError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(m)
            if !m.starts_with("the server is busy") && !m.starts_with("query cancelled") =>
        {
            DataFusionError::ResourcesExhausted(format!(
                "query went over the per-query memory limit of {} MiB (--query-memory): {m}",
                memory >> 20
            ))
        }
        _ => e,
    }
}

fn human_duration(d: Duration) -> String {
    if d.as_millis() < 10_000 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}

// The stream adapter needs `Future` in scope for `poll` on the sleep.
use std::future::Future;

/// Longest SQL text a client may send. A BI tool's `IN` list of 10,000
/// values is about 50 KB; anything near this is a mistake or an attack.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// Deepest nesting of expressions and subqueries a statement may have.
/// Planning recurses once per level; the threads that plan have stacks
/// sized for far more than this (see `main.rs`), so a statement over the
/// limit gets this clear error instead of ending the process.
pub const MAX_EXPR_DEPTH: usize = 1000;

/// Refuses SQL longer than [`MAX_SQL_BYTES`].
pub fn check_sql_size(sql: &str) -> std::result::Result<(), String> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(format!(
            "the statement is {} bytes long; the limit is {} bytes. \
             Put long value lists in a table, or split the query.",
            sql.len(),
            MAX_SQL_BYTES
        ));
    }
    Ok(())
}

/// Refuses a statement whose expressions or subqueries nest deeper than
/// [`MAX_EXPR_DEPTH`]. The walk stops at the first level over the limit, so
/// it never recurses deeper than the limit itself.
pub fn check_statement_depth(
    statement: &datafusion::sql::sqlparser::ast::Statement,
) -> std::result::Result<(), String> {
    use datafusion::sql::sqlparser::ast::{Expr, Query, Visit, Visitor};
    use std::ops::ControlFlow;

    struct Depth {
        now: usize,
        max: usize,
    }
    impl Depth {
        fn enter(&mut self) -> ControlFlow<()> {
            self.now += 1;
            self.max = self.max.max(self.now);
            if self.now > MAX_EXPR_DEPTH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn leave(&mut self) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.leave()
        }
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.leave()
        }
    }
    let mut depth = Depth { now: 0, max: 0 };
    if statement.visit(&mut depth).is_break() {
        return Err(format!(
            "the statement nests expressions or subqueries more than {MAX_EXPR_DEPTH} levels deep \
             (a long chain of `+`, `AND`/`OR` or nested parentheses). Put long value lists \
             in `IN (...)`, or split the query."
        ));
    }
    Ok(())
}
