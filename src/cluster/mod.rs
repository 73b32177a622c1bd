//! Scale-out on Apache DataFusion Ballista: `lakehouse scheduler` and
//! `lakehouse executor` embed Ballista's scheduler and executor with this
//! project's codecs, functions and object stores, and a driver session
//! (`--cluster`) sends its plans to them. Every node is this binary, so
//! every node knows every plan node and SQL function of the project.
//!
//! What crosses the wire is a recipe, never a live object: a Delta input is
//! a list of Parquet files ([`scan::SnapshotTable`]); stores are rebuilt on
//! each node from its own configuration and credentials.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::BallistaCodec;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

use crate::error::{Error, Result};

pub mod codec;
pub mod metered;
pub mod scan;
pub mod stage;

/// Where plans run when not in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cluster {
    /// A scheduler and executors started inside this process, to try the
    /// cluster path on one machine.
    Standalone,
    /// A running scheduler, as its gRPC URL (`http://host:port`).
    Remote(String),
}

impl Cluster {
    /// `standalone` or `df://HOST:PORT`.
    pub fn parse(text: &str) -> Result<Self> {
        if text == "standalone" {
            return Ok(Self::Standalone);
        }
        let bad = || {
            Error::Usage(format!(
                "--cluster `{text}`: give the scheduler as df://HOST:PORT (e.g. df://10.0.0.5:50050), or `standalone` to start one in this process"
            ))
        };
        let url = Url::parse(text).map_err(|_| bad())?;
        if url.scheme() != "df" || url.path().len() > 1 {
            return Err(bad());
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let port = url.port().unwrap_or(50050);
        Ok(Self::Remote(format!("http://{host}:{port}")))
    }
}

/// Object stores of a node, made on first use from the node's own storage
/// settings and credentials (`[storage]` of its config, the AWS chain), so a
/// plan never carries a secret.
#[derive(Debug)]
pub struct NodeStores {
    options: HashMap<String, String>,
    made: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
    local: DefaultObjectStoreRegistry,
}

impl NodeStores {
    pub fn new(options: HashMap<String, String>) -> Self {
        Self {
            options,
            made: Default::default(),
            local: crate::local_reads::LocalReads::default_registry(),
        }
    }

    fn key(url: &Url) -> String {
        crate::storage::store_of(url)
    }
}

impl ObjectStoreRegistry for NodeStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        if url.scheme() == "file" {
            return self.local.register_store(url, store);
        }
        self.made
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Self::key(url), store)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if url.scheme() == "file" {
            return self.local.get_store(url);
        }
        let key = Self::key(url);
        if let Some(s) = self
            .made
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(s.clone());
        }
        let store = crate::storage::Lake::open(&format!("{key}/"), self.options.clone())
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
            .store();
        self.made
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, store.clone());
        Ok(store)
    }
}

/// The runtime of a cluster node: its memory cap, spill folder and stores.
pub fn node_runtime(
    options: &HashMap<String, String>,
    memory_limit: usize,
) -> Result<Arc<RuntimeEnv>> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(crate::session::bounded_runtime(memory_limit, cores)
        .with_object_store_registry(Arc::new(NodeStores::new(options.clone())))
        .build_arc()?)
}

/// The session a scheduler plans in and an executor runs in: DataFusion's
/// defaults, the project's SQL functions and plan nodes, this node's runtime.
pub fn node_state(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionState {
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_query_planner(stage::planner())
        .build();
    let ctx = SessionContext::new_with_state(state);
    register_functions(&ctx);
    ctx.state()
}

/// Every SQL function the project adds, for a driver or a node.
pub fn register_functions(ctx: &SessionContext) {
    crate::functions::register(ctx);
    crate::pg_patterns::register(ctx);
    crate::functions::register_bounded(ctx, 1 << 30);
}

fn codec() -> BallistaCodec {
    BallistaCodec::new(
        Arc::new(codec::LogicalCodec::default()),
        Arc::new(codec::PhysicalCodec::default()),
    )
}

fn ballista_error(what: &str) -> impl Fn(ballista_core::error::BallistaError) -> Error + '_ {
    move |e| Error::Cluster(format!("{what}: {e}"))
}

/// Runs a scheduler on `listener` until the process ends.
pub async fn run_scheduler(
    listener: tokio::net::TcpListener,
    options: HashMap<String, String>,
    memory_limit: usize,
    executor_timeout: std::time::Duration,
) -> Result<()> {
    use ballista_scheduler::config::SchedulerConfig;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("scheduler address", e))?;
    let runtime = node_runtime(&options, memory_limit)?;
    let builder: ballista_scheduler::SessionBuilder =
        Arc::new(move |config: SessionConfig| Ok(node_state(config, runtime.clone())));
    let timeout = executor_timeout.as_secs().max(HEARTBEAT_SECONDS * 2);
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        external_host: addr.ip().to_string(),
        override_session_builder: Some(builder),
        override_logical_codec: Some(Arc::new(codec::LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(codec::PhysicalCodec::default())),
        // An executor that stops sending heartbeats (every 5 s) is lost after
        // this long: its tasks run again on the others, and stages whose
        // shuffle output it held are recomputed.
        executor_timeout_seconds: timeout,
        expire_dead_executor_interval_seconds: timeout.clamp(1, 5),
        no_executors_grace_period_seconds: timeout,
        // A stage's tasks go to the executors in turn rather than filling
        // the first one's slots: landed files and partitions spread over
        // the cluster even when a stage has fewer tasks than slots.
        task_distribution: ballista_scheduler::config::TaskDistributionPolicy::RoundRobin,
        ..Default::default()
    };
    let config = Arc::new(config);
    let cluster = ballista_scheduler::cluster::BallistaCluster::new_from_config(&config)
        .await
        .map_err(ballista_error("cannot start the scheduler"))?;
    let server = ballista_scheduler::scheduler_process::create_scheduler::<
        datafusion_proto::protobuf::LogicalPlanNode,
        datafusion_proto::protobuf::PhysicalPlanNode,
    >(cluster, config)
    .await
    .map_err(ballista_error("cannot start the scheduler"))?;
    tracing::info!(address = %addr, "scheduler listening; start executors with `lakehouse executor --scheduler df://{addr}`");
    ballista_scheduler::scheduler_process::start_grpc_service_with_listener(listener, server)
        .await
        .map_err(ballista_error("the scheduler stopped"))
}

/// Seconds between an executor's heartbeats to the scheduler.
const HEARTBEAT_SECONDS: u64 = 5;

/// Settings of one executor.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub scheduler: SocketAddr,
    /// Address the executor serves shuffle data on (Arrow Flight).
    pub bind: SocketAddr,
    /// Address of its gRPC service (tasks pushed by the scheduler).
    pub grpc_bind: SocketAddr,
    pub slots: usize,
    pub work_dir: Option<std::path::PathBuf>,
}

/// A free port on `addr`'s interface when `addr` asks for port 0: an
/// executor tells the scheduler its ports, so they must be real ones.
pub fn concrete(addr: SocketAddr) -> Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe =
        std::net::TcpListener::bind(addr).map_err(|e| Error::io(format!("bind {addr}"), e))?;
    probe
        .local_addr()
        .map_err(|e| Error::io(format!("bind {addr}"), e))
}

/// Runs an executor until the process ends.
pub async fn run_executor(
    settings: ExecutorSettings,
    options: HashMap<String, String>,
    memory_limit: usize,
) -> Result<()> {
    use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
    let runtime = node_runtime(&options, memory_limit)?;
    let registry = BallistaFunctionRegistry::from(&node_state(
        SessionConfig::new_with_ballista(),
        runtime.clone(),
    ));
    let bind = concrete(settings.bind)?;
    let grpc = concrete(settings.grpc_bind)?;
    // Without --work-dir, shuffle files go to a folder of the temporary
    // folder that this process owns and removes when it stops (Ballista's
    // default leaves its folder behind).
    let owned = match &settings.work_dir {
        Some(_) => None,
        None => Some(shuffle_folder()?),
    };
    let work_dir = settings
        .work_dir
        .clone()
        .or_else(|| owned.as_ref().map(|t| t.path().to_path_buf()));
    let config = ExecutorProcessConfig {
        bind_host: bind.ip().to_string(),
        // Bound to every interface: the scheduler uses the address it sees.
        external_host: (!bind.ip().is_unspecified()).then(|| bind.ip().to_string()),
        port: bind.port(),
        grpc_port: grpc.port(),
        scheduler_host: settings.scheduler.ip().to_string(),
        scheduler_port: settings.scheduler.port(),
        scheduler_connect_timeout_seconds: 30,
        vcores: settings.slots.max(1),
        work_dir: work_dir.map(|p| p.to_string_lossy().into_owned()),
        print_thread_info: false,
        executor_heartbeat_interval_seconds: HEARTBEAT_SECONDS,
        override_function_registry: Some(Arc::new(registry)),
        override_runtime_producer: Some(Arc::new(move |_| Ok(runtime.clone()))),
        override_logical_codec: Some(Arc::new(codec::LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(codec::PhysicalCodec::default())),
        ..Default::default()
    };
    tracing::info!(flight = %bind, grpc = %grpc, scheduler = %settings.scheduler, slots = settings.slots, "executor starting");
    let stopped = start_executor_process(Arc::new(config))
        .await
        .map_err(ballista_error("the executor stopped"));
    drop(owned);
    stopped
}

/// Turns a local driver state into one whose queries run on `cluster`.
pub async fn connect(
    cluster: &Cluster,
    state: SessionState,
    options: &HashMap<String, String>,
    memory_limit: usize,
    stage_timeout: std::time::Duration,
) -> Result<SessionState> {
    let config = state
        .config()
        .clone()
        .with_ballista_logical_extension_codec(Arc::new(codec::LogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(codec::PhysicalCodec::default()));
    let state = SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .build();
    let (url, work_dir) = match cluster {
        Cluster::Remote(url) => (url.clone(), None),
        Cluster::Standalone => {
            let (url, work_dir) = standalone(&state, options, memory_limit).await?;
            (url, Some(work_dir))
        }
    };
    let state = state.upgrade_for_ballista(url.clone())?;
    // The client asks for its job's status (pull) rather than waiting for
    // the scheduler's updates (push), so the job's id is known as soon as
    // the scheduler accepts it, which the stage timeout needs to cancel it.
    let config = state
        .config()
        .clone()
        .set_bool(ballista_core::config::BALLISTA_CLIENT_PULL, true)
        .with_extension(Arc::new(Jobs {
            scheduler: url,
            stage_timeout,
        }));
    // The in-process executor's folder lives as long as the session.
    let config = match work_dir {
        Some(w) => config.with_extension(w),
        None => config,
    };
    let state = SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .build();
    // Ballista's upgrade sets the function list to its own: add ours back.
    let ctx = SessionContext::new_with_state(state);
    register_functions(&ctx);
    Ok(ctx.state())
}

/// A staging job that runs longer than this is cancelled (`--stage-timeout`).
pub const DEFAULT_STAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4 * 3600);

/// The scheduler a cluster session submits its jobs to, and how long a
/// staging job may take: kept in the session's config.
#[derive(Debug)]
struct Jobs {
    scheduler: String,
    stage_timeout: std::time::Duration,
}

/// Whether `ctx` runs its plans on a cluster.
pub fn on_cluster(ctx: &SessionContext) -> bool {
    ctx.state().config().get_extension::<Jobs>().is_some()
}

/// [`collect_bounded`] for a DataFrame: its plan run in its own session.
pub async fn collect_frame(
    df: datafusion::prelude::DataFrame,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
    let (state, plan) = df.into_parts();
    collect_bounded(&SessionContext::new_with_state(state), plan).await
}

/// Runs `plan` and collects its result; on a cluster, the job may run at
/// most the session's stage timeout from when the scheduler accepted it,
/// then it is cancelled and this fails. Ballista's client waits on a job
/// without a bound, and a job whose tasks are never rescheduled (an
/// executor lost at a bad moment) would hold the run, and the lake's
/// lease, forever.
pub async fn collect_bounded(
    ctx: &SessionContext,
    plan: datafusion::logical_expr::LogicalPlan,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
    type Distributed = ballista_core::execution_plans::DistributedQueryExec<
        datafusion_proto::protobuf::LogicalPlanNode,
    >;
    let state = ctx.state();
    let physical = state.create_physical_plan(&plan).await?;
    tracing::debug!(
        plan = %datafusion::physical_plan::displayable(physical.as_ref()).indent(false),
        "staging plan"
    );
    let run = datafusion::physical_plan::collect(physical.clone(), ctx.task_ctx());
    let (Some(jobs), Some(query)) = (
        state.config().get_extension::<Jobs>(),
        physical.downcast_ref::<Distributed>(),
    ) else {
        let batches = run.await?;
        // Rows, time and spills of each operator, for `RUST_LOG=lakehouse::cluster=debug`.
        tracing::debug!(
            plan = %datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                physical.as_ref()
            )
            .indent(false),
            "staging plan, executed"
        );
        return Ok(batches);
    };
    let mut run = std::pin::pin!(run);
    // The clock starts when the scheduler has accepted the job (its id is
    // known): a queue or a slow submission is not the job's time.
    let job = loop {
        tokio::select! {
            result = &mut run => return Ok(result?),
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {
                if let Some(job) = query.job_id() {
                    break job;
                }
            }
        }
    };
    if let Ok(result) = tokio::time::timeout(jobs.stage_timeout, &mut run).await {
        return Ok(result?);
    }
    let job = job.to_string();
    // A scheduler that does not answer must not hold the run either.
    let cancelling = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        cancel(&jobs.scheduler, &job),
    );
    let cancelled = match cancelling.await {
        Ok(Ok(())) => "the job was cancelled".to_string(),
        Ok(Err(e)) => format!("cancelling it failed ({e}): cancel it on the scheduler"),
        Err(_) => {
            "the scheduler did not answer the cancellation within 30 s: cancel it there".to_string()
        }
    };
    tracing::error!(job = %job, "stage timeout: {cancelled}");
    Err(Error::Cluster(format!(
        "job {job} did not finish within the stage timeout ({}); {cancelled}. Nothing was committed. \
         Check that the executors are alive (their logs, and the scheduler's lines about lost executors), then run again; \
         a model that truly needs longer takes a larger --stage-timeout (LAKEHOUSE_STAGE_TIMEOUT)",
        humantime::format_duration(jobs.stage_timeout)
    )))
}

async fn cancel(scheduler: &str, job_id: &str) -> std::result::Result<(), String> {
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    use ballista_core::serde::protobuf::CancelJobParams;
    let mut client = SchedulerGrpcClient::connect(scheduler.to_string())
        .await
        .map_err(|e| e.to_string())?;
    client
        .cancel_job(CancelJobParams {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Starts a scheduler and one executor in this process; returns the
/// scheduler's URL.
async fn standalone(
    driver: &SessionState,
    options: &HashMap<String, String>,
    memory_limit: usize,
) -> Result<(String, Arc<WorkDir>)> {
    let runtime = node_runtime(options, memory_limit)?;
    let scheduler_runtime = runtime.clone();
    let builder: ballista_scheduler::SessionBuilder =
        Arc::new(move |config: SessionConfig| Ok(node_state(config, scheduler_runtime.clone())));
    let base = driver.config().clone().upgrade_for_ballista();
    let config_producer: ballista_core::ConfigProducer = Arc::new(move || base.clone());
    let addr = ballista_scheduler::standalone::new_standalone_scheduler_with_builder(
        builder,
        config_producer.clone(),
        codec(),
    )
    .await
    .map_err(ballista_error("cannot start the standalone scheduler"))?;
    let url = format!("http://localhost:{}", addr.port());
    let mut attempts = 0;
    let scheduler = loop {
        match SchedulerGrpcClient::connect(url.clone()).await {
            Ok(s) => break s,
            Err(e) if attempts > 100 => {
                return Err(Error::Cluster(format!(
                    "the standalone scheduler at {url} did not answer: {e}"
                )))
            }
            Err(_) => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let registry = BallistaFunctionRegistry::from(&node_state(
        SessionConfig::new_with_ballista(),
        runtime.clone(),
    ));
    let slots = driver.config().target_partitions().max(1);
    let work_dir = in_process_executor(
        scheduler,
        slots,
        config_producer,
        Arc::new(move |_| Ok(runtime.clone())),
        registry,
    )
    .await?;
    Ok((url, work_dir))
}

/// A new `lakehouse-shuffle-*` folder of the temporary folder, for an
/// executor's shuffle files, removed when it is dropped.
fn shuffle_folder() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("lakehouse-shuffle-")
        .tempdir()
        .map_err(|e| {
            Error::Cluster(format!(
                "cannot make a folder for shuffle files in {}: {e} (set TMPDIR to a \
                 writable folder with room, or give executors --work-dir)",
                std::env::temp_dir().display()
            ))
        })
}

/// The in-process executor's work folder (its shuffle files), removed
/// with the session that started it. (Ballista's own standalone executor
/// names a temporary folder and leaves it behind: every `--cluster
/// standalone` run kept its shuffle files, gigabytes at 10M rows.)
#[derive(Debug)]
struct WorkDir(#[allow(dead_code)] tempfile::TempDir);

/// Starts an executor in this process that asks `scheduler` for tasks
/// (`slots` at a time) and serves its shuffle files from a new temporary
/// folder, on a free port of localhost.
async fn in_process_executor(
    scheduler: SchedulerGrpcClient<tonic::transport::Channel>,
    slots: usize,
    config_producer: ballista_core::ConfigProducer,
    runtime_producer: ballista_core::RuntimeProducer,
    registry: BallistaFunctionRegistry,
) -> Result<Arc<WorkDir>> {
    use arrow_flight::flight_service_server::FlightServiceServer;
    use ballista_core::serde::protobuf::ExecutorRegistration;
    use ballista_core::serde::scheduler::{
        ExecutorOperatingSystemSpecification, ExecutorSpecification,
    };
    use ballista_executor::executor::Executor;
    use ballista_executor::flight_service::BallistaFlightService;
    let cannot =
        |e: std::io::Error| Error::Cluster(format!("cannot start the standalone executor: {e}"));
    let work = shuffle_folder()?;
    let path = work
        .path()
        .to_str()
        .ok_or_else(|| Error::Cluster(format!("{} is not UTF-8", work.path().display())))?
        .to_string();
    let listener = tokio::net::TcpListener::bind("localhost:0")
        .await
        .map_err(cannot)?;
    let port = u32::from(listener.local_addr().map_err(cannot)?.port());
    let registration = ExecutorRegistration {
        id: ballista_core::ids::new_instance_id(),
        host: Some("localhost".into()),
        port,
        // It asks for tasks (pull): no scheduler calls this port.
        grpc_port: port,
        specification: Some(
            ExecutorSpecification::default()
                .with_vcores(slots as u32)
                .into(),
        ),
        os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
        ballista_protocol_version: ballista_core::BALLISTA_PROTOCOL_VERSION,
    };
    let max_message = config_producer().ballista_grpc_client_max_message_size();
    let executor = Arc::new(Executor::with_default_execution_engine(
        registration,
        &path,
        runtime_producer,
        config_producer,
        Arc::new(registry),
        Arc::new(ballista_executor::metrics::LoggingMetricsCollector::default()),
        slots,
    ));
    let files = FlightServiceServer::new(BallistaFlightService::new(path))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let connections = futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| stream);
        Some((next, listener))
    });
    tokio::spawn(
        ballista_core::utils::create_grpc_server(&ballista_core::utils::GrpcServerConfig::default())
            .add_service(files)
            .serve_with_incoming(connections),
    );
    tokio::spawn(ballista_executor::execution_loop::poll_loop(
        scheduler,
        executor,
        codec(),
        None,
        None,
        ballista_executor::health::ExecutorHealth::new(),
    ));
    Ok(Arc::new(WorkDir(work)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_addresses() {
        assert_eq!(Cluster::parse("standalone").unwrap(), Cluster::Standalone);
        assert_eq!(
            Cluster::parse("df://10.0.0.5:7000").unwrap(),
            Cluster::Remote("http://10.0.0.5:7000".into())
        );
        assert_eq!(
            Cluster::parse("df://sched").unwrap(),
            Cluster::Remote("http://sched:50050".into())
        );
        for bad in [
            "10.0.0.5:50050",
            "http://x:1",
            "df://",
            "df://x:1/path",
            "standalone2",
        ] {
            let e = Cluster::parse(bad).unwrap_err().to_string();
            assert!(e.contains("df://HOST:PORT"), "{bad}: {e}");
        }
    }
}
