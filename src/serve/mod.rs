//! `lakehouse serve`: the lake's tables over Postgres wire, Arrow Flight SQL
//! and HTTP from one process and one catalog.
//!
//! Every protocol goes through [`Engine`]: one read-only check on the parsed
//! statement, DataFusion's own refusal of DDL/DML/statements on the plan,
//! and the per-query limits the session's planner applies to every plan
//! (`crate::limits`). Tables are opened at their latest Delta version at each
//! query, so commits made while the server runs are seen by the next query.
//! Owns the server's lifetime and shared state; protocols live in `pg`,
//! `flight` and `http`.

pub mod auth;
pub mod flight;
pub mod http;
pub mod metrics;
pub mod pg;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{DataFrame, SessionContext};
use tokio::net::TcpListener;

use crate::catalog::LakeCatalog;
use crate::error::{Error, Result};
use crate::session::SessionOptions;
use crate::storage::Lake;

pub use auth::Auth;

pub use crate::sql_policy::{
    check_depth, check_sql, is_read_only, read_only_options, refusal, ErrorKind, QueryError,
};

/// The shared query engine of every protocol.
pub struct Engine {
    pub ctx: SessionContext,
    pub lake: Lake,
    /// What `/metrics` reports: every query, by protocol and outcome.
    pub metrics: Arc<metrics::ServeMetrics>,
    catalog: Arc<LakeCatalog>,
    refreshed: Mutex<Instant>,
}

/// How long table listings (`information_schema`, `pg_catalog`, `\dt`) may
/// lag behind tables appearing or disappearing. Queries naming a table never
/// lag: each opens its latest version.
const LISTING_TTL: Duration = Duration::from_secs(2);

impl Engine {
    pub async fn new(lake: Lake, options: &SessionOptions) -> Result<Self> {
        let metrics = Arc::new(metrics::ServeMetrics::new());
        let mut options = options.clone();
        if let Some(limits) = options.limits.as_mut() {
            limits.observer = Some(Arc::new(metrics.clone()));
        }
        let (ctx, catalog) = crate::session::build(&lake, &options).await?;
        metrics.set_versions(catalog.versions_served());
        Ok(Self {
            ctx,
            lake,
            metrics,
            catalog,
            refreshed: Mutex::new(Instant::now()),
        })
    }

    /// Re-lists table folders if the listing is older than [`LISTING_TTL`].
    pub async fn refresh(&self) {
        let stale = {
            let mut at = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
            if at.elapsed() >= LISTING_TTL {
                *at = Instant::now();
                true
            } else {
                false
            }
        };
        if stale {
            if let Err(e) = self.catalog.refresh().await {
                tracing::warn!("could not re-list the lake's tables: {e}");
            }
        }
    }

    /// Plans one read-only statement.
    pub async fn plan(&self, sql: &str) -> std::result::Result<DataFrame, QueryError> {
        if let Err(e) = check_sql(sql) {
            self.metrics.refused();
            return Err(e);
        }
        self.refresh().await;
        self.ctx
            .sql_with_options(sql, read_only_options())
            .await
            .map_err(|e| {
                self.metrics.not_planned(&e);
                e.into()
            })
    }

    /// Plans and starts one read-only statement.
    pub async fn sql(
        &self,
        sql: &str,
    ) -> std::result::Result<SendableRecordBatchStream, QueryError> {
        self.sql_with(sql, None).await
    }

    /// Plans one read-only statement with its placeholders (`$1`, `?`)
    /// bound to `params`, in order.
    pub async fn plan_with(
        &self,
        sql: &str,
        params: Option<Vec<datafusion::scalar::ScalarValue>>,
    ) -> std::result::Result<DataFrame, QueryError> {
        let df = self.plan(sql).await?;
        match params {
            Some(values) => Ok(df.with_param_values(datafusion::common::ParamValues::List(
                values.into_iter().map(Into::into).collect(),
            ))?),
            None => Ok(df),
        }
    }

    /// Plans and starts one read-only statement with bound parameters.
    pub async fn sql_with(
        &self,
        sql: &str,
        params: Option<Vec<datafusion::scalar::ScalarValue>>,
    ) -> std::result::Result<SendableRecordBatchStream, QueryError> {
        let df = self.plan_with(sql, params).await?;
        Ok(df.execute_stream().await?)
    }
}

/// The schema clients receive: dictionary-encoded columns (partition values
/// such as `region`) as their plain value type, the same on every protocol.
pub fn plain_schema(
    schema: &datafusion::arrow::datatypes::Schema,
) -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, values) => {
                f.as_ref().clone().with_data_type(values.as_ref().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A batch with its dictionary columns as plain values ([`plain_schema`]).
pub fn plain_batch(
    batch: &datafusion::arrow::array::RecordBatch,
) -> std::result::Result<datafusion::arrow::array::RecordBatch, datafusion::arrow::error::ArrowError>
{
    use datafusion::arrow::datatypes::DataType;
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Dictionary(..)))
    {
        return Ok(batch.clone());
    }
    let schema = plain_schema(&batch.schema());
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    datafusion::arrow::array::RecordBatch::try_new(schema, columns)
}

/// Addresses and settings of `lakehouse serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub pg_addr: Option<String>,
    pub flight_addr: Option<String>,
    pub http_addr: Option<String>,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Listens for `what` on `addr`; `flag` is the option that sets it.
async fn bind(what: &str, flag: &str, addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        Error::Usage(format!(
            "cannot listen for {what} on {addr}: {e}. Pick another address with {flag}, or `{flag} off`."
        ))
    })
}

/// Binds every endpoint, prints where each listens, serves until SIGINT or
/// SIGTERM, then stops accepting and lets running queries finish (up to a
/// grace period).
pub async fn serve(engine: Arc<Engine>, auth: Arc<Auth>, options: ServeOptions) -> Result<()> {
    let enabled = |a: &Option<String>| {
        a.as_deref()
            .filter(|a| !a.eq_ignore_ascii_case("off"))
            .map(str::to_string)
    };
    let pg = match enabled(&options.pg_addr) {
        Some(a) => Some(bind("postgres", "--pg-addr", &a).await?),
        None => None,
    };
    let flight = match enabled(&options.flight_addr) {
        Some(a) => Some(bind("flight", "--flight-addr", &a).await?),
        None => None,
    };
    let http = match enabled(&options.http_addr) {
        Some(a) => Some(bind("http", "--http-addr", &a).await?),
        None => None,
    };
    let mut addrs = Vec::new();
    for (name, l) in [("postgres", &pg), ("flight", &flight), ("http", &http)] {
        if let Some(l) = l {
            let a = l
                .local_addr()
                .map_err(|e| Error::io("read listening address", e))?;
            addrs.push((name, a));
        }
    }
    if addrs.is_empty() {
        return Err(Error::Usage(
            "every endpoint is `off`; enable at least one of --pg-addr, --flight-addr, --http-addr"
                .into(),
        ));
    }
    if !auth.required() {
        if let Some((name, a)) = addrs.iter().find(|(_, a)| !is_loopback(a)) {
            return Err(Error::Usage(format!(
                "refusing to serve {name} on {a} without a password: anyone on the network could read the lake. \
                 Set LAKEHOUSE_PASSWORD (and LAKEHOUSE_USER), or listen on 127.0.0.1."
            )));
        }
        tracing::warn!("no password set (LAKEHOUSE_PASSWORD): accepting every local client without authentication");
    }
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(c), Some(k)) => Some(pg::tls_acceptor(c, k)?),
        (None, None) => None,
        _ => {
            return Err(Error::Usage(
                "give both --tls-cert and --tls-key, or neither".into(),
            ))
        }
    };

    let shutdown = Shutdown::new();
    let mut tasks = Vec::new();
    if let Some(l) = pg {
        tasks.push(tokio::spawn(pg::serve(
            l,
            engine.clone(),
            auth.clone(),
            tls,
            shutdown.clone(),
        )));
    }
    if let Some(l) = flight {
        tasks.push(tokio::spawn(flight::serve(
            l,
            engine.clone(),
            auth.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(l) = http {
        tasks.push(tokio::spawn(http::serve(
            l,
            engine.clone(),
            auth.clone(),
            shutdown.clone(),
        )));
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for (name, a) in &addrs {
            let _ = writeln!(out, "{name:<9} listening on {a}");
        }
        let _ = writeln!(out, "serving lake {}", engine.lake.root());
        let _ = out.flush();
    }
    wait_for_signal().await;
    tracing::info!("shutting down: no new connections; running queries get 10 s to finish");
    shutdown.trigger();
    let all = futures::future::join_all(tasks);
    if tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .is_err()
    {
        tracing::warn!("some queries were still running after 10 s; stopping anyway");
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A shutdown signal every server task can wait on.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
    rx: tokio::sync::watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        Self {
            tx: Arc::new(tx),
            rx,
        }
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}
