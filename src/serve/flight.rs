//! Arrow Flight SQL, for ADBC/JDBC drivers and Arrow-native apps: results
//! stream as Arrow record batches, no row conversion. Statements and
//! prepared statements (the handle is the SQL text, so nothing is kept
//! per client), catalog/schema/table listings and SqlInfo. Authentication:
//! basic auth in the handshake returns a bearer token; every call then
//! carries `authorization: Bearer ...` (basic auth on each call works too).

use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::scalar::ScalarValue;
use futures::{Stream, TryStreamExt};
use prost::Message;
use tokio::net::TcpListener;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Verdict;
use super::{Auth, Engine, ErrorKind, QueryError, Shutdown};
use crate::catalog::{CATALOG, SCHEMAS};

type FlightStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    auth: Arc<Auth>,
    shutdown: Shutdown,
) {
    let service = FlightServiceServer::new(FlightSql { engine, auth })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    // Small answers must not wait for Nagle and delayed ACKs.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await })
        .await;
    if let Err(e) = result {
        tracing::error!("flight sql server stopped: {e}");
    }
}

pub struct FlightSql {
    engine: Arc<Engine>,
    auth: Arc<Auth>,
}

static SQL_INFO: LazyLock<Result<SqlInfoData, String>> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "lakehouse");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.build()
        .map_err(|e| format!("SqlInfo does not build: {e}"))
});

fn sql_info() -> Result<&'static SqlInfoData, Status> {
    SQL_INFO.as_ref().map_err(|e| Status::internal(e.clone()))
}

pub fn status(e: &QueryError) -> Status {
    match e.kind {
        ErrorKind::Refused => Status::permission_denied(e.message.clone()),
        ErrorKind::Invalid | ErrorKind::TooComplex => Status::invalid_argument(e.message.clone()),
        ErrorKind::NoSuchTable => Status::not_found(e.message.clone()),
        ErrorKind::Busy | ErrorKind::Memory => Status::resource_exhausted(e.message.clone()),
        ErrorKind::Timeout => Status::deadline_exceeded(e.message.clone()),
        ErrorKind::Failed => Status::internal(e.message.clone()),
    }
}

fn arrow_status(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn schema_ipc(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(arrow_status)?;
    Ok(message.0)
}

impl FlightSql {
    fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        match self.auth.check_header(header) {
            Verdict::Allowed => Ok(()),
            Verdict::Missing => Err(Status::unauthenticated(
                "authentication required: handshake with basic auth (user and password) \
                 and send the returned bearer token",
            )),
            Verdict::Wrong => Err(Status::unauthenticated("wrong user, password or token")),
        }
    }

    fn info(
        &self,
        schema: &Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(arrow_status)?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    /// The schema clients will receive: dictionary columns (partition
    /// values) are sent as their plain values, as the encoder hydrates them.
    async fn schema_of(&self, sql: &str) -> Result<SchemaRef, Status> {
        self.schema_with(sql, None).await
    }

    async fn schema_with(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<SchemaRef, Status> {
        let df = crate::serve::metrics::PROTOCOL
            .scope("flight", self.engine.plan_with(sql, params))
            .await
            .map_err(|e| status(&e))?;
        Ok(super::plain_schema(df.schema().as_arrow()))
    }

    async fn run(&self, sql: &str) -> Result<Response<FlightStream>, Status> {
        self.run_with(sql, None).await
    }

    async fn run_with(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Response<FlightStream>, Status> {
        let stream = crate::serve::metrics::PROTOCOL
            .scope("flight", self.engine.sql_with(sql, params))
            .await
            .map_err(|e| status(&e))?;
        let schema = stream.schema();
        let batches =
            stream.map_err(|e| FlightError::Tonic(Box::new(status(&QueryError::from(e)))));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(data)))
    }

    fn one_batch<E: std::fmt::Display>(
        batch: Result<RecordBatch, E>,
    ) -> Result<Response<FlightStream>, Status> {
        let batch = batch.map_err(arrow_status)?;
        let schema = batch.schema();
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { Ok(batch) }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(data)))
    }
}

fn handle_sql(handle: &[u8]) -> Result<String, Status> {
    String::from_utf8(handle.to_vec())
        .map_err(|_| Status::invalid_argument("statement handle is not UTF-8 SQL"))
}

/// `?` placeholders (JDBC's and ODBC's) numbered as `$1, $2, …` in order of
/// appearance, the form the Postgres dialect plans; `?` inside strings and
/// quoted names is left alone.
fn numbered_placeholders(sql: &str) -> String {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return sql.to_string();
    };
    if !tokens
        .iter()
        .any(|t| matches!(t, Token::Placeholder(p) if p == "?"))
    {
        return sql.to_string();
    }
    let mut n = 0;
    tokens
        .into_iter()
        .map(|t| match t {
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                format!("${n}")
            }
            other => other.to_string(),
        })
        .collect()
}

/// Prepared statement handles are stateless: the SQL itself, or, once
/// parameters are bound (DoPut), this prefix, the SQL's length (4 bytes,
/// big-endian), the SQL and the parameter row as an Arrow IPC stream. Any
/// server of a pool can run any handle, and nothing is kept per client.
const BOUND: &[u8] = b"lakehouse-bound-v1\0";

fn bound_handle(sql: &str, params: &RecordBatch) -> Result<bytes::Bytes, Status> {
    let mut out = BOUND.to_vec();
    out.extend_from_slice(&(sql.len() as u32).to_be_bytes());
    out.extend_from_slice(sql.as_bytes());
    let mut writer =
        datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &params.schema())
            .map_err(arrow_status)?;
    writer.write(params).map_err(arrow_status)?;
    writer.finish().map_err(arrow_status)?;
    out.extend_from_slice(&writer.into_inner().map_err(arrow_status)?);
    Ok(out.into())
}

/// The SQL of a prepared statement handle and its bound values, in order.
fn prepared(handle: &[u8]) -> Result<(String, Option<Vec<ScalarValue>>), Status> {
    let Some(rest) = handle.strip_prefix(BOUND) else {
        return Ok((handle_sql(handle)?, None));
    };
    let bad = || Status::invalid_argument("malformed prepared statement handle");
    let len = u32::from_be_bytes(
        rest.get(..4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let sql = rest.get(4..4 + len).ok_or_else(bad)?;
    let sql = handle_sql(sql)?;
    let ipc = rest.get(4 + len..).ok_or_else(bad)?;
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .map_err(arrow_status)?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(arrow_status)?;
    let batch = batches.first().ok_or_else(bad)?;
    let values = batch
        .columns()
        .iter()
        .map(|c| ScalarValue::try_from_array(c, 0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((sql, Some(values)))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let allowed = match header {
            Some(h) if h.trim_start().to_ascii_lowercase().starts_with("basic ") => {
                self.auth.check_header(Some(h)) == Verdict::Allowed
            }
            Some(h) => self.auth.check_header(Some(h)) == Verdict::Allowed,
            None => !self.auth.required(),
        };
        if !allowed {
            return Err(Status::unauthenticated(if header.is_none() {
                "authentication required: send basic auth (user and password) in the handshake"
            } else {
                "wrong user, password or token"
            }));
        }
        let token = self.auth.issue_token();
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(futures::stream::iter(vec![Ok(reply)])));
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("token is not a valid header value"))?;
        response.metadata_mut().insert("authorization", value);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(request.metadata())?;
        let schema = self.schema_of(&query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        self.info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authorize(request.metadata())?;
        self.run(&handle_sql(&ticket.statement_handle)?).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.authorize(request.metadata())?;
        let sql = numbered_placeholders(&query.query);
        let df = crate::serve::metrics::PROTOCOL
            .scope("flight", self.engine.plan(&sql))
            .await
            .map_err(|e| status(&e))?;
        let schema = super::plain_schema(df.schema().as_arrow());
        // The placeholders, in order, with the types DataFusion infers.
        let mut parameters: Vec<(String, Option<DataType>)> = df
            .logical_plan()
            .get_parameter_types()
            .map_err(|e| status(&QueryError::from(e)))?
            .into_iter()
            .collect();
        parameters.sort_by_key(|(name, _)| {
            name.trim_start_matches('$')
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let parameter_schema = Schema::new(
            parameters
                .into_iter()
                .map(|(name, t)| Field::new(name, t.unwrap_or(DataType::Utf8), true))
                .collect::<Vec<_>>(),
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: sql.into_bytes().into(),
            dataset_schema: schema_ipc(&schema)?,
            parameter_schema: schema_ipc(&parameter_schema)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.authorize(request.metadata())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(request.metadata())?;
        let (sql, params) = prepared(&cmd.prepared_statement_handle)?;
        let schema = self.schema_with(&sql, params).await?;
        self.info(&schema, cmd.as_any().encode_to_vec(), request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authorize(request.metadata())?;
        let (sql, params) = prepared(&cmd.prepared_statement_handle)?;
        self.run_with(&sql, params).await
    }

    /// Binds parameters: the client sends one row of values; the answer is a
    /// new handle that carries them (see [`BOUND`]).
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<arrow_flight::sql::DoPutPreparedStatementResult, Status> {
        self.authorize(request.metadata())?;
        let (sql, _) = prepared(&query.prepared_statement_handle)?;
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                request.into_inner().map_err(FlightError::from),
            )
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let handle = match (rows, batches.first()) {
            (0, _) | (_, None) => sql.into_bytes().into(),
            (1, Some(batch)) => bound_handle(&sql, batch)?,
            (n, _) => {
                return Err(Status::invalid_argument(format!(
                    "{n} rows of parameters were bound; a query takes one row (run it once per row)"
                )))
            }
        };
        Ok(arrow_flight::sql::DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        self.info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authorize(request.metadata())?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        Self::one_batch(b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        self.info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authorize(request.metadata())?;
        let mut b = query.into_builder();
        for (schema, _) in SCHEMAS {
            b.append(CATALOG, schema);
        }
        Self::one_batch(b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        self.info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authorize(request.metadata())?;
        self.engine.refresh().await;
        let include_schema = query.include_schema;
        let mut b = query.into_builder();
        let Some(catalog) = self.engine.ctx.catalog(CATALOG) else {
            return Err(Status::internal("the lake catalog is missing"));
        };
        for (schema_name, _) in SCHEMAS {
            let Some(schema) = catalog.schema(schema_name) else {
                continue;
            };
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                let table_schema = if include_schema {
                    match schema.table(&name).await {
                        Ok(Some(t)) => super::plain_schema(&t.schema()),
                        Ok(None) => continue,
                        Err(e) => return Err(status(&QueryError::from(e))),
                    }
                } else {
                    Arc::new(Schema::empty())
                };
                b.append(CATALOG, schema_name, &name, "TABLE", &table_schema)
                    .map_err(arrow_status)?;
            }
        }
        Self::one_batch(b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(request.metadata())?;
        self.info(
            &table_types_schema(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authorize(request.metadata())?;
        Self::one_batch(RecordBatch::try_new(
            Arc::new(table_types_schema()),
            vec![Arc::new(StringArray::from(vec!["TABLE"]))],
        ))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(request.metadata())?;
        let schema = query.clone().into_builder(sql_info()?).schema();
        self.info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authorize(request.metadata())?;
        Self::one_batch(query.into_builder(sql_info()?).build())
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::unimplemented(format!(
            "this server does not answer {}",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn table_types_schema() -> Schema {
    Schema::new(vec![Field::new("table_type", DataType::Utf8, false)])
}

#[cfg(test)]
mod tests {
    use super::numbered_placeholders;

    #[test]
    fn question_marks_become_numbered_placeholders() {
        assert_eq!(
            numbered_placeholders("SELECT * FROM t WHERE a = ? AND b > ? AND c = '?'"),
            "SELECT * FROM t WHERE a = $1 AND b > $2 AND c = '?'"
        );
        assert_eq!(numbered_placeholders("SELECT 1"), "SELECT 1");
    }
}
