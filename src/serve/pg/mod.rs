//! Postgres wire protocol, for psql, DBeaver, Superset, Metabase, Power BI
//! and every Postgres driver. Query handling, `pg_catalog` and type mapping
//! come from datafusion-postgres; this file adds what a shared, read-only
//! server needs: SCRAM-SHA-256 password authentication, optional TLS, a
//! guard that refuses anything but queries before it reaches the engine
//! (and keeps clients from changing the shared session's settings), SQLSTATE
//! codes for the limits, and graceful shutdown.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::Sink;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::results::{Response, Tag};
use pgwire::api::{ClientInfo, ConnectionManager, ErrorHandler, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;

mod copy;
mod rewrite;

use super::{is_read_only, refusal, Auth, Engine, ErrorKind, QueryError, Shutdown};
use crate::catalog::CATALOG;
use crate::error::{Error, Result};

/// Adds `pg_catalog` (and the Postgres functions clients call) to the
/// engine's session, inside the `lakehouse` catalog.
pub fn install_catalog(ctx: &SessionContext) -> Result<()> {
    setup_pg_catalog(ctx, CATALOG, EmptyContextProvider)
        .map_err(|e| Error::Usage(format!("cannot set up pg_catalog: {e}")))?;
    if let Some(catalog) = ctx.catalog(CATALOG) {
        if let Some(inner) = catalog.schema("pg_catalog") {
            catalog
                .register_schema("pg_catalog", Arc::new(NoRoleSecrets { inner }))
                .map_err(|e| Error::Usage(format!("cannot set up pg_catalog: {e}")))?;
        }
    }
    // Drivers (SQLAlchemy, JDBC) parse `version()` for a Postgres version.
    let version = format!(
        "PostgreSQL 16.6 (lakehouse {} on Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "version",
        vec![],
        datafusion::arrow::datatypes::DataType::Utf8,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(move |_| {
            Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::Utf8(Some(version.clone())),
            ))
        }),
    ));
    ctx.register_udf(to_regtype());
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "pg_collation_is_visible",
        vec![datafusion::arrow::datatypes::DataType::Int64],
        datafusion::arrow::datatypes::DataType::Boolean,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(|_| {
            Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::Boolean(Some(true)),
            ))
        }),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        JsonBuildObject::new(),
    ));
    // No column of a lake table is backed by a sequence.
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "pg_get_serial_sequence",
        vec![
            datafusion::arrow::datatypes::DataType::Utf8,
            datafusion::arrow::datatypes::DataType::Utf8,
        ],
        datafusion::arrow::datatypes::DataType::Utf8,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(|_| {
            Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::Utf8(None),
            ))
        }),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        GenerateSubscripts::new(),
    ));
    ctx.register_udf(current_setting());
    // Every type lives in pg_catalog, which is always on the search path.
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "pg_type_is_visible",
        vec![datafusion::arrow::datatypes::DataType::Int64],
        datafusion::arrow::datatypes::DataType::Boolean,
        datafusion::logical_expr::Volatility::Stable,
        Arc::new(|args: &[datafusion::logical_expr::ColumnarValue]| {
            use datafusion::arrow::array::{Array, BooleanArray};
            let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(args)?;
            let out: BooleanArray = (0..arrays[0].len())
                .map(|i| (!arrays[0].is_null(i)).then_some(true))
                .collect();
            Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
                out,
            )))
        }),
    ));
    // Definitions of objects a lake never has (indexes, triggers, rules,
    // constraints): NULL, as Postgres answers for an OID that is none.
    for name in [
        "pg_get_indexdef",
        "pg_get_triggerdef",
        "pg_get_ruledef",
        "pg_get_constraintdef",
    ] {
        use datafusion::execution::FunctionRegistry;
        if ctx.udf(name).is_err() {
            ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
                NoDefinition::new(name),
            ));
        }
    }
    ctx.add_optimizer_rule(Arc::new(LikeEscape));
    Ok(())
}

/// datafusion-postgres's `pg_catalog`, with two tables replaced:
/// - `pg_authid` is empty: datafusion-postgres ships a fixed `postgres` row
///   with a SCRAM verifier; this server's one login lives in its own
///   settings, and no client may read even a stand-in secret.
/// - `pg_index` and `pg_constraint` are empty (lake tables have no indexes
///   or constraints; the shipped rows describe a real Postgres's own
///   catalogs, which do not exist here) and type their column-number and
///   operator lists (`indkey`, `conkey`, …) as arrays, as Postgres does, so
///   the reflection queries of SQLAlchemy and pgjdbc (`unnest(indkey)`,
///   `attnum = ANY(conkey)`, `_pg_expandarray`) plan.
/// - `pg_class` gains `reloptions` (always NULL here).
#[derive(Debug)]
struct NoRoleSecrets {
    inner: Arc<dyn datafusion::catalog::SchemaProvider>,
}

#[async_trait]
impl datafusion::catalog::SchemaProvider for NoRoleSecrets {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::error::Result<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        let table = self.inner.table(name).await?;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        match table {
            Some(t) if name.eq_ignore_ascii_case("pg_authid") => {
                let empty = datafusion::datasource::MemTable::try_new(t.schema(), vec![vec![]])?;
                Ok(Some(Arc::new(empty)))
            }
            Some(t)
                if name.eq_ignore_ascii_case("pg_index")
                    || name.eq_ignore_ascii_case("pg_constraint") =>
            {
                let fields: Vec<Field> =
                    t.schema()
                        .fields()
                        .iter()
                        .map(|f| {
                            let element = match f.name().as_str() {
                                "indkey" | "indoption" | "conkey" | "confkey"
                                | "confdelsetcols" => Some(DataType::Int16),
                                "indclass" | "indcollation" | "conpfeqop" | "conppeqop"
                                | "conffeqop" | "conexclop" => Some(DataType::Int32),
                                _ => None,
                            };
                            match element {
                                Some(e) => Field::new(f.name(), DataType::new_list(e, true), true),
                                None => f.as_ref().clone(),
                            }
                        })
                        .collect();
                let empty = datafusion::datasource::MemTable::try_new(
                    Arc::new(Schema::new(fields)),
                    vec![vec![]],
                )?;
                Ok(Some(Arc::new(empty)))
            }
            Some(t)
                if name.eq_ignore_ascii_case("pg_class")
                    && t.schema().index_of("reloptions").is_err() =>
            {
                // Storage options of a relation: none here. SQLAlchemy's
                // index reflection selects the column.
                use datafusion::logical_expr::{cast, lit, LogicalPlanBuilder};
                let columns: Vec<datafusion::logical_expr::Expr> = t
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| {
                        datafusion::prelude::col(datafusion::common::Column::from_name(f.name()))
                    })
                    .chain(std::iter::once(
                        cast(
                            lit(datafusion::scalar::ScalarValue::Null),
                            DataType::new_list(DataType::Utf8, true),
                        )
                        .alias("reloptions"),
                    ))
                    .collect();
                let plan = LogicalPlanBuilder::scan(
                    "pg_class",
                    datafusion::datasource::provider_as_source(t),
                    None,
                )?
                .project(columns)?
                .build()?;
                Ok(Some(Arc::new(datafusion::catalog::view::ViewTable::new(
                    plan, None,
                ))))
            }
            other => Ok(other),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// `LIKE pattern ESCAPE '/'` with a constant pattern becomes the same match
/// with DataFusion's backslash escape (SQLAlchemy reflection sends `ESCAPE '/'`).
#[derive(Debug)]
struct LikeEscape;

impl datafusion::optimizer::OptimizerRule for LikeEscape {
    fn name(&self) -> &str {
        "lakehouse_like_escape"
    }

    fn apply_order(&self) -> Option<datafusion::optimizer::ApplyOrder> {
        Some(datafusion::optimizer::ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn datafusion::optimizer::OptimizerConfig,
    ) -> datafusion::error::Result<datafusion::common::tree_node::Transformed<LogicalPlan>> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::logical_expr::Expr;
        use datafusion::scalar::ScalarValue;
        plan.map_expressions(|e| {
            e.transform(|e| match e {
                Expr::Like(mut like) if like.escape_char.is_some_and(|c| c != '\\') => {
                    let escape = like.escape_char.unwrap_or('\\');
                    match like.pattern.as_ref() {
                        Expr::Literal(ScalarValue::Utf8(Some(p)), _)
                        | Expr::Literal(ScalarValue::LargeUtf8(Some(p)), _)
                        | Expr::Literal(ScalarValue::Utf8View(Some(p)), _) => {
                            let mut out = String::with_capacity(p.len());
                            let mut chars = p.chars();
                            while let Some(ch) = chars.next() {
                                if ch == escape {
                                    out.push('\\');
                                    if let Some(next) = chars.next() {
                                        out.push(next);
                                    }
                                } else if ch == '\\' {
                                    out.push_str("\\\\");
                                } else {
                                    out.push(ch);
                                }
                            }
                            like.pattern =
                                Box::new(Expr::Literal(ScalarValue::Utf8(Some(out)), None));
                            like.escape_char = None;
                            Ok(Transformed::yes(Expr::Like(like)))
                        }
                        _ => Ok(Transformed::no(Expr::Like(like))),
                    }
                }
                other => Ok(Transformed::no(other)),
            })
        })
    }
}

/// `json_build_object(k1, v1, k2, v2, ...)` as JSON text (SQLAlchemy's
/// column reflection builds identity-column details with it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: datafusion::logical_expr::Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        Self {
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _args: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::StringBuilder;
        use datafusion::scalar::ScalarValue;
        if args.args.len() % 2 != 0 {
            return Err(DataFusionError::Plan(
                "json_build_object takes key/value pairs".into(),
            ));
        }
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::new();
        for row in 0..args.number_rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                let json = if value.is_null() {
                    serde_json::Value::Null
                } else {
                    match &value {
                        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(*b),
                        v if v.data_type().is_numeric() => v
                            .to_string()
                            .parse::<serde_json::Number>()
                            .map(serde_json::Value::Number)
                            .unwrap_or_else(|_| serde_json::Value::String(v.to_string())),
                        v => serde_json::Value::String(v.to_string()),
                    }
                };
                object.insert(key.to_string(), json);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            out.finish(),
        )))
    }
}

/// `generate_subscripts(array, dim)` as catalog queries use it, beside
/// `unnest` over `pg_index.indkey` (SQLAlchemy's index and constraint
/// reflection). In Postgres it returns a set; DataFusion has no
/// set-returning scalar functions, so this one plans (as integer) and answers
/// only arrays that have no elements, such as those of this server's empty
/// `pg_index`. Any other array is an error, never a wrong number.
#[derive(Debug, PartialEq, Eq, Hash)]
struct GenerateSubscripts {
    signature: datafusion::logical_expr::Signature,
}

impl GenerateSubscripts {
    fn new() -> Self {
        Self {
            signature: datafusion::logical_expr::Signature::any(
                2,
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for GenerateSubscripts {
    fn name(&self) -> &str {
        "generate_subscripts"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _args: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Int32)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::{Array, Int32Array};
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        let lengths = datafusion::arrow::compute::kernels::length::length(&arrays[0])
            .ok()
            .and_then(|l| {
                datafusion::arrow::compute::cast(&l, &datafusion::arrow::datatypes::DataType::Int64)
                    .ok()
            });
        let has_elements = match &lengths {
            Some(l) => {
                let l = l
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .map(|a| a.iter().any(|v| v.unwrap_or(0) > 0));
                l.unwrap_or(true)
            }
            None => arrays[0].null_count() < arrays[0].len(),
        };
        if has_elements {
            return Err(DataFusionError::NotImplemented(
                "generate_subscripts() over a non-empty array: set-returning functions are not \
                 supported here; use unnest() and row_number() instead"
                    .into(),
            ));
        }
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            Int32Array::new_null(args.number_rows),
        )))
    }
}

/// A `pg_get_*def(oid, …)` for objects that do not exist here: NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NoDefinition {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
}

impl NoDefinition {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for NoDefinition {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _args: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        Ok(datafusion::logical_expr::ColumnarValue::Scalar(
            datafusion::scalar::ScalarValue::Utf8(None),
        ))
    }
}

/// The server settings `current_setting(name)` reports (pandas, SQLAlchemy
/// and JDBC ask for a few); any other name is Postgres's error 42704.
fn setting(name: &str) -> Option<&'static str> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "standard_conforming_strings"
        | "integer_datetimes"
        | "default_transaction_read_only"
        | "transaction_read_only" => "on",
        "server_version" => "16.6",
        "server_version_num" => "160006",
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "timezone" => "UTC",
        "search_path" => "gold",
        "max_identifier_length" => "63",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "is_superuser" => "off",
        "lc_collate" | "lc_ctype" => "C.UTF-8",
        _ => return None,
    })
}

fn current_setting() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::{Array, StringArray};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::ColumnarValue;
    datafusion::logical_expr::create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        datafusion::logical_expr::Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::common::cast::as_string_array(&arrays[0])?;
            let mut out = Vec::with_capacity(names.len());
            for name in names.iter() {
                match name {
                    None => out.push(None),
                    Some(n) => match setting(n) {
                        Some(v) => out.push(Some(v)),
                        None => {
                            return Err(DataFusionError::Plan(format!(
                                "unrecognized configuration parameter \"{n}\""
                            )))
                        }
                    },
                }
            }
            Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
        }),
    )
}

/// `to_regtype(name)`: the OID of a built-in type, NULL for any other name
/// (drivers probe for extension types such as hstore this way).
fn to_regtype() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::ColumnarValue;
    fn oid(name: &str) -> Option<i32> {
        Some(
            match name
                .trim()
                .trim_start_matches("pg_catalog.")
                .to_ascii_lowercase()
                .as_str()
            {
                "bool" | "boolean" => 16,
                "bytea" => 17,
                "int8" | "bigint" => 20,
                "int2" | "smallint" => 21,
                "int4" | "integer" | "int" => 23,
                "text" => 25,
                "oid" => 26,
                "json" => 114,
                "float4" | "real" => 700,
                "float8" | "double precision" => 701,
                "varchar" | "character varying" => 1043,
                "date" => 1082,
                "time" => 1083,
                "timestamp" | "timestamp without time zone" => 1114,
                "timestamptz" | "timestamp with time zone" => 1184,
                "interval" => 1186,
                "numeric" | "decimal" => 1700,
                "uuid" => 2950,
                "jsonb" => 3802,
                _ => return None,
            },
        )
    }
    datafusion::logical_expr::create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::common::cast::as_string_array(&arrays[0])?;
            let out: Int32Array = names.iter().map(|n| n.and_then(oid)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<pgwire::tokio::TlsAcceptor> {
    use tokio_rustls::rustls;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|e| Error::io(format!("open TLS file {}", p.display()), e))
    };
    let certs = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::io(format!("read certificates from {}", cert.display()), e))?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(|e| Error::io(format!("read private key from {}", key.display()), e))?
        .ok_or_else(|| Error::Usage(format!("{} holds no PEM private key", key.display())))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Usage(format!("TLS certificate and key do not work together: {e}")))?;
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}

pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    auth: Arc<Auth>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    shutdown: Shutdown,
) {
    let handlers = Arc::new(PgHandlers::new(engine, auth));
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let handlers = handlers.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                            tracing::debug!("postgres connection from {peer} ended: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!("postgres accept failed: {e}"),
            }
        }
    }
}

struct PgHandlers {
    service: Arc<DfSessionService>,
    auth: Arc<Auth>,
    connections: Arc<ConnectionManager>,
    params: Arc<DefaultServerParameterProvider>,
    scram_source: Arc<ScramSource>,
}

impl PgHandlers {
    fn new(engine: Arc<Engine>, auth: Arc<Auth>) -> Self {
        let ctx = Arc::new(engine.ctx.clone());
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(Guard { engine }),
            Arc::new(copy::CopyOut),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let mut params = DefaultServerParameterProvider::default();
        params.default_transaction_read_only = true;
        params.is_superuser = false;
        params.search_path = "gold".into();
        params.server_version = format!("16.6 (lakehouse {})", env!("CARGO_PKG_VERSION"));
        let scram_source = Arc::new(ScramSource::new(&auth));
        Self {
            service: Arc::new(DfSessionService::new_with_hooks(ctx, hooks)),
            auth,
            connections: Arc::new(ConnectionManager::new()),
            params: Arc::new(params),
            scram_source,
        }
    }
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // One per connection: the SASL exchange keeps state.
        if self.auth.password().is_some() {
            let scram = ScramAuth::new(self.scram_source.clone());
            Arc::new(Startup::Scram(
                SASLAuthStartupHandler::new(self.params.clone())
                    .with_scram(scram)
                    .with_connection_manager(self.connections.clone()),
            ))
        } else {
            Arc::new(Startup::Trust(Trust {
                connections: self.connections.clone(),
            }))
        }
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(SqlStates)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.connections.clone()))
    }
}

enum Startup {
    Trust(Trust),
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Trust(t) => t.on_startup(client, message).await,
            Startup::Scram(s) => s.on_startup(client, message).await,
        }
    }
}

struct Trust {
    connections: Arc<ConnectionManager>,
}

impl NoopStartupHandler for Trust {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }
}

/// The SCRAM verifier of the one configured user. Any other user name gets a
/// verifier no password matches, so a wrong user and a wrong password fail
/// the same way.
#[derive(Debug)]
struct ScramSource {
    user: String,
    salt: Vec<u8>,
    salted: Vec<u8>,
}

const SCRAM_ITERATIONS: usize = 4096;

impl ScramSource {
    fn new(auth: &Auth) -> Self {
        let salt = uuid::Uuid::new_v4().as_bytes().to_vec();
        let salted = gen_salted_password(auth.password().unwrap_or(""), &salt, SCRAM_ITERATIONS);
        Self {
            user: auth.user().to_string(),
            salt,
            salted,
        }
    }
}

#[async_trait]
impl AuthSource for ScramSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() == Some(self.user.as_str()) {
            Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
        } else {
            let unguessable = uuid::Uuid::new_v4().to_string();
            Ok(Password::new(
                Some(self.salt.clone()),
                gen_salted_password(&unguessable, &self.salt, SCRAM_ITERATIONS),
            ))
        }
    }
}

/// Session settings a client may change; they only affect its own connection.
const CLIENT_SETTINGS: [&str; 7] = [
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
];

enum Decision {
    /// Let the next hooks and the engine handle it.
    Pass,
    /// Answer `SET` and do nothing: a Postgres setting this server has no use for.
    IgnoreSet,
    /// Answer with this tag and do nothing: savepoints and session resets,
    /// which mean nothing on a read-only server but which drivers send.
    Acknowledge(&'static str),
    Refuse(QueryError),
}

fn decide(statement: &Statement) -> Decision {
    match statement {
        // Queries, and the bulk and cursor forms of a query: `COPY … TO
        // STDOUT` (answered by `copy::CopyOut`), `DECLARE … CURSOR FOR
        // query`, `FETCH` and `CLOSE` (datafusion-postgres's cursor hook).
        s if is_read_only(s) || copy::is_copy_out(s) || is_cursor_declaration(s) => {
            match super::check_depth(s) {
                Ok(()) => Decision::Pass,
                Err(e) => Decision::Refuse(e),
            }
        }
        Statement::Fetch { .. } | Statement::Close { .. } => Decision::Pass,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Decision::Pass,
        Statement::Set(Set::SetTimeZone { .. }) => Decision::Pass,
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            let name = variable.to_string().to_lowercase();
            if CLIENT_SETTINGS.contains(&name.as_str()) {
                Decision::Pass
            } else if name.starts_with("datafusion.") {
                Decision::Refuse(QueryError::refused(format!(
                    "`{name}` is a server setting; clients cannot change it. \
                     Ask the operator (lakehouse serve --help lists the limits)."
                )))
            } else {
                Decision::IgnoreSet
            }
        }
        Statement::Set(_) => Decision::IgnoreSet,
        Statement::Savepoint { .. } => Decision::Acknowledge("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => Decision::Acknowledge("RELEASE"),
        Statement::Discard { .. } => Decision::Acknowledge("DISCARD ALL"),
        other => Decision::Refuse(refusal(other)),
    }
}

/// `DECLARE name CURSOR FOR query`: only ever a query.
fn is_cursor_declaration(statement: &Statement) -> bool {
    use datafusion::sql::sqlparser::ast::DeclareType;
    match statement {
        Statement::Declare { stmts } => stmts
            .iter()
            .all(|d| d.declare_type == Some(DeclareType::Cursor) && d.for_query.is_some()),
        _ => false,
    }
}

fn pg_error(e: &QueryError) -> PgWireError {
    let code = match e.kind {
        ErrorKind::Refused => "25006",     // read_only_sql_transaction
        ErrorKind::Invalid => "42601",     // syntax_error
        ErrorKind::NoSuchTable => "42P01", // undefined_table
        ErrorKind::TooComplex => "54001",  // statement_too_complex
        ErrorKind::Busy => "53300",        // too_many_connections
        ErrorKind::Timeout => "57014",     // query_canceled
        ErrorKind::Memory => "53200",      // out_of_memory
        ErrorKind::Failed => "XX000",
    };
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        e.message.clone(),
    )))
}

/// First hook of every statement: refuses anything but queries and harmless
/// session statements, and keeps table listings fresh.
struct Guard {
    engine: Arc<Engine>,
}

impl Guard {
    /// Plans a statement the rewrite rules changed.
    async fn plan(&self, statement: Statement) -> PgWireResult<LogicalPlan> {
        let state = self.engine.ctx.state();
        let plan = state
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                statement,
            )))
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        super::read_only_options()
            .verify_plan(&plan)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        Ok(plan)
    }

    /// Runs a statement the rewrite rules changed (simple protocol).
    async fn answer(
        &self,
        statement: &Statement,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
        let plan = self.plan(statement.clone()).await?;
        let df = self
            .engine
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let options = Arc::new(pgwire::types::format::FormatOptions::from_client_metadata(
            client.metadata(),
        ));
        let response =
            encode_dataframe(df, &pgwire::api::portal::Format::UnifiedText, Some(options)).await?;
        Ok(Response::Query(response))
    }
}

#[async_trait]
impl QueryHook for Guard {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match decide(statement) {
            Decision::Pass => {
                self.engine.refresh().await;
                let rewritten = rewrite::rewrite(statement)?;
                Some(self.answer(&rewritten, client).await)
            }
            Decision::IgnoreSet => Some(Ok(Response::Execution(Tag::new("SET")))),
            Decision::Acknowledge(tag) => Some(Ok(Response::Execution(Tag::new(tag)))),
            Decision::Refuse(e) => Some(Err(pg_error(&e))),
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match decide(statement) {
            Decision::Pass => {
                self.engine.refresh().await;
                let rewritten = rewrite::rewrite(statement)?;
                Some(self.plan(rewritten).await)
            }
            Decision::IgnoreSet => {
                self.engine.refresh().await;
                None
            }
            Decision::Acknowledge(_) => Some(Ok(LogicalPlan::EmptyRelation(
                datafusion::logical_expr::EmptyRelation {
                    produce_one_row: false,
                    schema: Arc::new(datafusion::common::DFSchema::empty()),
                },
            ))),
            Decision::Refuse(e) => Some(Err(pg_error(&e))),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match decide(statement) {
            Decision::Pass => None,
            Decision::IgnoreSet => Some(Ok(Response::Execution(Tag::new("SET")))),
            Decision::Acknowledge(tag) => Some(Ok(Response::Execution(Tag::new(tag)))),
            Decision::Refuse(e) => Some(Err(pg_error(&e))),
        }
    }
}

/// Gives engine errors their SQLSTATE (timeout 57014, memory 53200, busy
/// 53300, bad SQL 42601) so drivers and BI tools report them properly.
struct SqlStates;

impl ErrorHandler for SqlStates {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        if let PgWireError::ApiError(inner) = error {
            let e = if let Some(df) = inner.downcast_ref::<DataFusionError>() {
                QueryError::from_df(df)
            } else if let Some(p) =
                inner.downcast_ref::<datafusion::sql::sqlparser::parser::ParserError>()
            {
                QueryError {
                    kind: ErrorKind::Invalid,
                    message: format!("SQL does not parse: {p}"),
                }
            } else {
                return;
            };
            tracing::debug!("postgres query failed: {}", e.message);
            *error = pg_error(&e);
        }
    }
}
