//! Postgres wire protocol, for psql, DBeaver, Superset, Metabase, Power BI
//! and every Postgres driver. Query handling, `pg_catalog` and type mapping
//! come from datafusion-postgres; this file adds what a shared, read-only
//! server needs: SCRAM-SHA-256 password authentication, optional TLS, a
//! guard that refuses anything but queries before it reaches the engine
//! (and keeps clients from changing the shared session's settings) and
//! answers queries itself (`fields`: Postgres's column names and type
//! modifiers; `rewrite`: catalog queries DataFusion cannot plan as sent),
//! `COPY … TO STDOUT` (`copy`), the catalog drivers browse (`catalog`),
//! SQLSTATE codes for the limits, and graceful shutdown.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
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

mod catalog;
mod copy;
mod fields;
mod rewrite;

pub use catalog::install_catalog;

use super::{is_read_only, refusal, Auth, Engine, ErrorKind, QueryError, Shutdown};
use crate::error::{Error, Result};

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
    let metrics = engine.metrics.clone();
    let handlers = Arc::new(PgHandlers::new(engine, auth));
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let handlers = handlers.clone();
                    let tls = tls.clone();
                    let open = metrics.connection("postgres");
                    tokio::spawn(crate::serve::metrics::PROTOCOL.scope("postgres", async move {
                        let _open = open;
                        if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                            tracing::debug!("postgres connection from {peer} ended: {e}");
                        }
                    }));
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
        Arc::new(Extended {
            parser: Arc::new(fields::PgParser {
                inner: pgwire::api::query::ExtendedQueryHandler::query_parser(
                    self.service.as_ref(),
                ),
            }),
            service: self.service.clone(),
        })
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

/// datafusion-postgres's extended protocol, with Describe answered by
/// [`fields::PgParser`] (Postgres's column names and type modifiers).
struct Extended {
    service: Arc<DfSessionService>,
    parser: Arc<fields::PgParser>,
}

#[async_trait]
impl pgwire::api::query::ExtendedQueryHandler for Extended {
    type Statement = (String, Option<(Statement, LogicalPlan)>);
    type QueryParser = fields::PgParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &pgwire::api::portal::Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo
            + pgwire::api::ClientPortalStore
            + Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        pgwire::api::query::ExtendedQueryHandler::do_query(
            self.service.as_ref(),
            client,
            portal,
            max_rows,
        )
        .await
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
    /// `SET search_path`: the connection's schemas for unqualified names.
    SearchPath(Vec<String>),
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
        Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) => {
            let name = variable.to_string().to_lowercase();
            if name == "search_path" {
                Decision::SearchPath(search_path(values))
            } else if CLIENT_SETTINGS.contains(&name.as_str()) {
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

/// The schemas of a `SET search_path` value (`silver, gold`, `'silver'`,
/// `"$user", public`), lower-cased; names that are no schema here are kept
/// (Postgres skips them when resolving, and so does the lookup).
fn search_path(values: &[datafusion::sql::sqlparser::ast::Expr]) -> Vec<String> {
    use datafusion::sql::sqlparser::ast::Expr;
    values
        .iter()
        .flat_map(|v| {
            let text = match v {
                Expr::Identifier(i) => i.value.clone(),
                Expr::Value(v) => v.clone().into_string().unwrap_or_default(),
                other => other.to_string(),
            };
            text.split(',')
                .map(|s| s.trim().trim_matches('"').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

const SEARCH_PATH: &str = "search_path";

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
            .map_err(|e| {
                self.engine.metrics.not_planned(&e);
                PgWireError::ApiError(Box::new(e))
            })?;
        super::read_only_options()
            .verify_plan(&plan)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        Ok(plan)
    }

    /// Plans and starts a query (`statement`, rewritten), with Postgres's
    /// column names (of the statement as the client sent it) and type
    /// modifiers in its row description.
    async fn respond(
        &self,
        statement: &Statement,
        as_sent: &Statement,
        metadata: &std::collections::HashMap<String, String>,
    ) -> PgWireResult<(LogicalPlan, pgwire::api::results::QueryResponse)> {
        use datafusion_postgres::arrow_pg::datatypes::{
            arrow_schema_to_pg_fields, encode_recordbatch,
        };
        use futures::StreamExt;
        let plan = self.plan(statement.clone()).await?;
        let df = self
            .engine
            .ctx
            .execute_logical_plan(plan.clone())
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let options = Arc::new(pgwire::types::format::FormatOptions::from_client_metadata(
            metadata,
        ));
        let schema = df.schema().as_arrow().clone();
        let fields = arrow_schema_to_pg_fields(
            &schema,
            &pgwire::api::portal::Format::UnifiedText,
            Some(options),
        )?;
        let fields = Arc::new(fields::patch(fields, &schema, Some(as_sent)));
        let batches = df
            .execute_stream()
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let row_fields = fields.clone();
        let rows = batches
            .map(move |batch| {
                let rows: Box<
                    dyn Iterator<Item = PgWireResult<pgwire::messages::data::DataRow>>
                        + Send
                        + Sync,
                > = match batch {
                    Ok(b) => encode_recordbatch(row_fields.clone(), b),
                    Err(e) => Box::new(std::iter::once(Err(PgWireError::ApiError(Box::new(e))))),
                };
                futures::stream::iter(rows)
            })
            .flatten();
        Ok((plan, pgwire::api::results::QueryResponse::new(fields, rows)))
    }

    /// Runs a query (simple protocol).
    async fn answer(
        &self,
        statement: &Statement,
        as_sent: &Statement,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        let (_, response) = self.respond(statement, as_sent, client.metadata()).await?;
        Ok(Response::Query(response))
    }

    /// `DECLARE name CURSOR FOR query`: the query starts, its rows wait in a
    /// portal of the connection for `FETCH`, and the portal carries the plan,
    /// so that a Describe of the cursor (psycopg's named cursors) gives its
    /// columns. The query's text is kept in the connection's metadata, so a
    /// later `FETCH` can be described too (see `handle_extended_parse_query`).
    async fn declare(
        &self,
        statement: &Statement,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        use pgwire::api::store::PortalStore;
        let Statement::Declare { stmts } = statement else {
            return Err(pg_error(&QueryError::refused("not a DECLARE")));
        };
        for declare in stmts {
            let (Some(name), Some(query)) = (declare.names.first(), declare.for_query.as_ref())
            else {
                return Err(pg_error(&QueryError {
                    kind: ErrorKind::Invalid,
                    message: "DECLARE needs a cursor name and FOR query".into(),
                }));
            };
            let as_sent = Statement::Query(query.clone());
            let query = self
                .rewrite(&as_sent, client.metadata())
                .unwrap_or_else(|| as_sent.clone());
            let (plan, response) = self.respond(&query, &as_sent, client.metadata()).await?;
            let sql = query.to_string();
            let stored = Arc::new(pgwire::api::stmt::StoredStatement::new(
                name.value.clone(),
                (sql.clone(), Some((query, plan))),
                vec![],
            ));
            let portal = pgwire::api::portal::Portal::new_cursor(name.value.clone(), stored);
            portal.start(response).await;
            client.portal_store().put_portal(Arc::new(portal));
            client.metadata_mut().insert(cursor_key(&name.value), sql);
        }
        Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
    }
}

impl Guard {
    /// Rewrites a statement for this connection: the catalog rules, and
    /// unqualified names resolved along its `search_path` when it set one.
    fn rewrite(
        &self,
        statement: &Statement,
        metadata: &std::collections::HashMap<String, String>,
    ) -> Option<Statement> {
        let path: Option<Vec<String>> = metadata
            .get(SEARCH_PATH)
            .map(|p| p.split(',').map(|s| s.trim().to_string()).collect())
            .filter(|p: &Vec<String>| p.as_slice() != ["gold"]);
        let catalog = self.engine.ctx.catalog(crate::catalog::CATALOG);
        let exists = move |schema: &str, table: &str| {
            catalog
                .as_ref()
                .and_then(|c| c.schema(schema))
                .is_some_and(|s| s.table_exist(table))
        };
        match &path {
            Some(search_path) => rewrite::rewrite(
                statement,
                Some(&rewrite::Resolution {
                    search_path,
                    exists: &exists,
                }),
            ),
            None => rewrite::rewrite(statement, None),
        }
    }

    /// DECLARE is answered here; CLOSE forgets the cursor's query, then
    /// passes on (with FETCH) to datafusion-postgres's cursor hook.
    async fn cursor_statement(
        &self,
        statement: &Statement,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match statement {
            Statement::Declare { .. } => Some(self.declare(statement, client).await),
            Statement::Close { cursor } => {
                use datafusion::sql::sqlparser::ast::CloseCursor;
                match cursor {
                    CloseCursor::All => client
                        .metadata_mut()
                        .retain(|k, _| !k.starts_with("lakehouse.cursor.")),
                    CloseCursor::Specific { name } => {
                        client.metadata_mut().remove(&cursor_key(&name.value));
                    }
                }
                None
            }
            _ => None,
        }
    }
}

/// The answer to a statement the guard settles without the engine (both
/// protocols): `SET search_path` kept for the connection, settings that
/// mean nothing here acknowledged, anything else refused.
fn answer_directly(decision: Decision, client: &mut dyn HookClient) -> PgWireResult<Response> {
    match decision {
        Decision::SearchPath(path) => {
            client
                .metadata_mut()
                .insert(SEARCH_PATH.into(), path.join(","));
            Ok(Response::Execution(Tag::new("SET")))
        }
        Decision::IgnoreSet => Ok(Response::Execution(Tag::new("SET"))),
        Decision::Acknowledge(tag) => Ok(Response::Execution(Tag::new(tag))),
        Decision::Refuse(e) => Err(pg_error(&e)),
        Decision::Pass => Err(pg_error(&QueryError::refused(
            "internal error: a query reached the guard's direct answers",
        ))),
    }
}

fn cursor_key(name: &str) -> String {
    format!("lakehouse.cursor.{name}")
}

#[async_trait]
impl QueryHook for Guard {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let decision = decide(statement);
        if matches!(decision, Decision::Refuse(_)) {
            self.engine.metrics.refused();
        }
        match decision {
            // Queries are answered here, so that names and type modifiers
            // are Postgres's (`fields`); COPY, cursors and SHOW pass on.
            Decision::Pass if matches!(statement, Statement::Query(_)) => {
                self.engine.refresh().await;
                let rewritten = self.rewrite(statement, client.metadata());
                Some(
                    self.answer(rewritten.as_ref().unwrap_or(statement), statement, client)
                        .await,
                )
            }
            Decision::Pass => self.cursor_statement(statement, client).await,
            other => Some(answer_directly(other, client)),
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let decision = decide(statement);
        if matches!(decision, Decision::Refuse(_)) {
            self.engine.metrics.refused();
        }
        match decision {
            Decision::Pass => {
                self.engine.refresh().await;
                if let Statement::Fetch { name, .. } = statement {
                    // Described as the cursor's query: its rows are what
                    // FETCH returns.
                    let sql = client.metadata().get(&cursor_key(&name.value))?;
                    let query = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
                        .ok()?
                        .pop_front()?;
                    let datafusion::sql::parser::Statement::Statement(query) = query else {
                        return None;
                    };
                    return Some(self.plan(*query).await);
                }
                let rewritten = self.rewrite(statement, client.metadata())?;
                Some(self.plan(rewritten).await)
            }
            Decision::IgnoreSet => {
                self.engine.refresh().await;
                None
            }
            Decision::Acknowledge(_) | Decision::SearchPath(_) => Some(Ok(
                LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                    produce_one_row: false,
                    schema: Arc::new(datafusion::common::DFSchema::empty()),
                }),
            )),
            Decision::Refuse(e) => Some(Err(pg_error(&e))),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match decide(statement) {
            Decision::Pass => self.cursor_statement(statement, client).await,
            other => Some(answer_directly(other, client)),
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
