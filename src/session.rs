//! The one place that builds a DataFusion session: Delta-aware planner, the
//! lake's object store, the `lakehouse` catalog with its schemas, the
//! project's SQL functions, memory limits. Every command goes through
//! [`build`], so switching where plans run changes this file only.

use std::sync::Arc;

use datafusion::execution::context::QueryPlanner;
use datafusion::execution::disk_manager::DiskManagerBuilder;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
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
    /// How long a model's staging job may run on the cluster before it is
    /// cancelled and the model fails with nothing committed.
    pub stage_timeout: std::time::Duration,
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
            stage_timeout: crate::cluster::DEFAULT_STAGE_TIMEOUT,
        }
    }
}

/// How many spill files one sort merges at a time. Unbounded (DataFusion's
/// default), a sort merging its spills reserves memory for as many files as
/// the pool allows and starves the sorts running beside it: a model's
/// writer sort then failed with "Not enough memory to continue external
/// sort" holding 0 bytes (10M rows under 400 MB, 100M under 4 GB). Each
/// merged file holds two batches of up to ~8 MiB; the merges of every
/// partition's two sorts (deduplication and the writer's) share a quarter
/// of the memory limit. More spill files than this merge in several passes.
fn spill_merge_fan_in(memory_limit: usize, target_partitions: usize) -> usize {
    let merges = (target_partitions.max(1) * 2) as u64;
    let per_file: u64 = (2 * 8) << 20;
    let share = (memory_limit as u64 / 4) / merges;
    (share / per_file).clamp(2, 64) as usize
}

/// The memory side of every runtime (a session's, a cluster node's): a
/// fair pool of `memory_limit` whose out-of-memory errors name the five
/// operators holding the most, and spills to a temporary folder merged a
/// bounded number of files at a time.
pub fn bounded_runtime(memory_limit: usize, target_partitions: usize) -> RuntimeEnvBuilder {
    let pool = TrackConsumersPool::new(
        FairSpillPool::new(memory_limit),
        std::num::NonZeroUsize::new(5).unwrap_or(std::num::NonZeroUsize::MIN),
    );
    RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(pool))
        .with_object_store_registry(Arc::new(crate::local_reads::LocalReads::default_registry()))
        .with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_max_spill_merge_fan_in(spill_merge_fan_in(memory_limit, target_partitions)),
        )
}

/// A session over `lake`, and the catalog (to refresh its table lists).
pub async fn build(
    lake: &Lake,
    options: &SessionOptions,
) -> Result<(SessionContext, Arc<LakeCatalog>)> {
    let runtime = bounded_runtime(options.memory_limit, options.target_partitions).build_arc()?;
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
    // The lake's writers write no bloom filters (see
    // `delta::writer_properties`): looking for them in every file a scan
    // opens only costs time (at 1M rows, 155 ms over the 1,825 files a
    // gold model reads; its query's CPU time fell by about 7%).
    let mut config = config;
    config.options_mut().execution.parquet.bloom_filter_on_read = false;
    let planner: Arc<dyn QueryPlanner + Send + Sync> = crate::cluster::stage::planner();
    let planner: Arc<dyn QueryPlanner + Send + Sync> = match &options.limits {
        Some(limits) => Arc::new(LimitedPlanner::new(planner, limits.clone())),
        None => planner,
    };
    // Postgres's boolean literals are resolved before type coercion sees them.
    let mut analyzer_rules: Vec<Arc<dyn datafusion::optimizer::AnalyzerRule + Send + Sync>> =
        vec![crate::pg_bool::BooleanLiterals::new()];
    analyzer_rules.extend(datafusion::optimizer::Analyzer::new().rules);
    let mut state = SessionStateBuilder::new()
        .with_default_features()
        .with_analyzer_rules(analyzer_rules)
        .with_optimizer_rule(Arc::new(crate::fast_cast::TextToDecimal))
        .with_config(config)
        .with_runtime_env(runtime.clone())
        .with_query_planner(planner);
    // Plans this process executes look small tables up without copying
    // the rows they keep. A cluster's scheduler plans with Ballista's own
    // list of rules, which takes no extra one (see `lookup_join`).
    if options.cluster.is_none() {
        state = state.with_physical_optimizer_rule(Arc::new(crate::lookup_join::LookupJoins));
    }
    let state = state.build();
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
            options.stage_timeout,
        )
        .await?;
        return Ok((SessionContext::new_with_state(state), catalog));
    }
    Ok((ctx, catalog))
}
