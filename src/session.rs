//! The one place that builds a DataFusion session: Delta-aware planner, the
//! lake's object store, the `lakehouse` catalog with its schemas, the
//! project's SQL functions, memory limits. Every command goes through
//! [`build`], so switching where plans run changes this file only.

use std::sync::Arc;

use datafusion::execution::context::QueryPlanner;
use datafusion::execution::disk_manager::DiskManagerBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::catalog::{LakeCatalog, CATALOG};
use crate::error::Result;
use crate::limits::LimitedPlanner;
use crate::storage::Lake;

#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Memory the engine may hold before sorts and joins spill to disk.
    pub memory_limit: usize,
    /// Parallelism of plans; defaults to the number of cores.
    pub target_partitions: usize,
    /// Per-query limits, for sessions that answer other people's queries.
    pub limits: Option<crate::limits::QueryLimits>,
    /// Run plans on this Ballista cluster instead of in this process.
    pub cluster: Option<crate::cluster::Cluster>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            memory_limit: 2 << 30,
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            limits: None,
            cluster: None,
        }
    }
}

/// A session over `lake`, and the catalog (to refresh its table lists).
pub async fn build(
    lake: &Lake,
    options: &SessionOptions,
) -> Result<(SessionContext, Arc<LakeCatalog>)> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(options.memory_limit)))
        .with_disk_manager_builder(DiskManagerBuilder::default())
        .build_arc()?;
    if lake.root().scheme() != "file" {
        let root = lake.root();
        let bucket = url::Url::parse(&crate::storage::store_of(root)).map_err(|e| {
            crate::error::Error::Lake {
                uri: root.to_string(),
                message: e.to_string(),
            }
        })?;
        runtime.register_object_store(&bucket, lake.store());
    }
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema(CATALOG, "gold")
        .with_create_default_catalog_and_schema(false)
        .with_target_partitions(options.target_partitions);
    let planner: Arc<dyn QueryPlanner + Send + Sync> = crate::cluster::stage::planner();
    let planner: Arc<dyn QueryPlanner + Send + Sync> = match &options.limits {
        Some(limits) => Arc::new(LimitedPlanner::new(planner, limits.clone())),
        None => planner,
    };
    // Postgres's boolean literals are resolved before type coercion sees them.
    let mut analyzer_rules: Vec<Arc<dyn datafusion::optimizer::AnalyzerRule + Send + Sync>> =
        vec![crate::pg_bool::BooleanLiterals::new()];
    analyzer_rules.extend(datafusion::optimizer::Analyzer::new().rules);
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_analyzer_rules(analyzer_rules)
        .with_config(config)
        .with_runtime_env(runtime.clone())
        .with_query_planner(planner)
        .build();
    let ctx = SessionContext::new_with_state(state);
    // On a cluster, tables are read as the Parquet files of their snapshot,
    // which executors can scan; delta-rs's scan cannot leave this process.
    let catalog = Arc::new(LakeCatalog::new(lake, runtime, options.cluster.is_some()));
    catalog.refresh().await?;
    ctx.register_catalog(CATALOG, catalog.clone());
    crate::functions::register(&ctx);
    crate::pg_patterns::register(&ctx);
    // A batch of `repeat`/`lpad`/`rpad` results may take at most what one
    // query may hold (and never more than 1 GiB).
    let text_cap = options
        .limits
        .as_ref()
        .map_or(1 << 30, |l| l.memory.min(1 << 30));
    crate::functions::register_bounded(&ctx, text_cap);
    if let Some(cluster) = &options.cluster {
        let state = crate::cluster::connect(
            cluster,
            ctx.state(),
            lake.storage_options(),
            options.memory_limit,
        )
        .await?;
        return Ok((SessionContext::new_with_state(state), catalog));
    }
    Ok((ctx, catalog))
}
