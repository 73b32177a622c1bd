//! The project's plan nodes that run on executors (staging writers), and how
//! each one is written to and read back from its recipe.

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;

/// The recipe of a logical node of ours, `None` for a node that is not.
pub fn encode_logical(_node: &Extension) -> DfResult<Option<(&'static str, serde_json::Value)>> {
    Ok(None)
}

pub fn decode_logical(kind: &str, _body: &[u8], _inputs: &[LogicalPlan]) -> DfResult<Extension> {
    Err(unknown(kind))
}

/// The recipe of a physical node of ours, `None` for a node that is not.
pub fn encode_physical(
    _node: &Arc<dyn ExecutionPlan>,
) -> DfResult<Option<(&'static str, serde_json::Value)>> {
    Ok(None)
}

pub fn decode_physical(
    kind: &str,
    _body: &[u8],
    _inputs: &[Arc<dyn ExecutionPlan>],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    Err(unknown(kind))
}

fn unknown(kind: &str) -> DataFusionError {
    DataFusionError::Internal(format!(
        "unknown plan node `{kind}` from another lakehouse node: every node of a cluster must run the same lakehouse version"
    ))
}

/// The physical planner of every session that may plan a stage: DataFusion's
/// own, with the project's nodes.
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
        DefaultPhysicalPlanner::with_extension_planners(vec![])
            .create_physical_plan(plan, state)
            .await
    }
}
