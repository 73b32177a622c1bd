//! HTTP for scripts and notebooks: `POST /sql` (the body is the SQL)
//! answers in JSON, NDJSON, CSV, Arrow IPC stream or Parquet by `Accept`,
//! streaming as the engine produces batches; `GET /tables` and
//! `GET /tables/{schema}/{name}` describe the lake; `GET /health` needs no
//! credentials. Basic auth or a bearer token on everything else.
//!
//! The first batch is computed before the status line is sent, so an error
//! that happens early (bad SQL, refused statement, limits hit while
//! aggregating) gets a proper status and a JSON body; an error after rows
//! have been sent ends the body early, which every format's reader detects
//! (unterminated JSON, no Arrow end-of-stream marker, no Parquet footer).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use futures::StreamExt;
use tokio::net::TcpListener;

use super::auth::Verdict;
use super::{Auth, Engine, ErrorKind, QueryError, Shutdown};

#[derive(Clone)]
struct App {
    engine: Arc<Engine>,
    auth: Arc<Auth>,
}

pub fn router(engine: Arc<Engine>, auth: Arc<Auth>) -> Router {
    let app = App { engine, auth };
    let guarded = Router::new()
        .route("/sql", post(sql))
        .route("/tables", get(tables))
        .route("/tables/{schema}/{name}", get(table))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            authenticate,
        ));
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics))
        .merge(guarded)
        .with_state(app)
}

pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    auth: Arc<Auth>,
    shutdown: Shutdown,
) {
    let result = axum::serve(listener, router(engine, auth))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await;
    if let Err(e) = result {
        tracing::error!("http server stopped: {e}");
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": message.into()}))).into_response()
}

fn query_error(e: &QueryError) -> Response {
    let status = match e.kind {
        ErrorKind::Refused => StatusCode::FORBIDDEN,
        // A statement naming an unknown table is a bad request, not a
        // missing endpoint.
        ErrorKind::Invalid | ErrorKind::TooComplex | ErrorKind::NoSuchTable => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Memory => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.message.clone())
}

/// Prometheus metrics: open, unless `--metrics-token` is set, then only
/// with `Authorization: Bearer <that token>` (its own token, so a scraper
/// holds no query credentials).
async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if !app.auth.metrics_allowed(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    ) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "metrics need the bearer token given to --metrics-token",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        app.engine.metrics.render(),
    )
        .into_response()
}

async fn authenticate(State(app): State<App>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match app.auth.check_header(header) {
        Verdict::Allowed => next.run(request).await,
        verdict => {
            let message = if verdict == Verdict::Missing {
                "authentication required: basic auth (user and password) or a bearer token"
            } else {
                "wrong user, password or token"
            };
            let mut r = error(StatusCode::UNAUTHORIZED, message);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"lakehouse\", Bearer"),
            );
            r
        }
    }
}

async fn tables(State(app): State<App>) -> Response {
    match crate::query::table_infos(&app.engine.lake).await {
        Ok(t) => Json(t).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn table(State(app): State<App>, Path((schema, name)): Path<(String, String)>) -> Response {
    match crate::query::table_detail(&app.engine.lake, &schema, &name).await {
        Ok(Some(t)) => Json(t).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no table {schema}.{name}; GET /tables lists them"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    NdJson,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::NdJson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// The first format the `Accept` header names that this server speaks
    /// (weights are ignored: clients list their favourite first).
    fn negotiate(headers: &HeaderMap) -> Option<Format> {
        let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
            return Some(Format::Json);
        };
        for part in accept.split(',') {
            let mime = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let f = match mime.as_str() {
                "application/json" | "*/*" | "application/*" | "" => Format::Json,
                "application/x-ndjson" | "application/jsonl" => Format::NdJson,
                "text/csv" | "text/*" => Format::Csv,
                "application/vnd.apache.arrow.stream" | "application/vnd.apache.arrow" => {
                    Format::Arrow
                }
                "application/vnd.apache.parquet"
                | "application/x-parquet"
                | "application/parquet" => Format::Parquet,
                _ => continue,
            };
            return Some(f);
        }
        None
    }
}

/// Turns record batches into the bytes of one format, batch by batch.
enum Encoder {
    Json { started: bool },
    NdJson,
    Csv { header: bool },
    Arrow(datafusion::arrow::ipc::writer::StreamWriter<Vec<u8>>),
    Parquet(ArrowWriter<Vec<u8>>),
}

type EncodeResult = Result<Bytes, String>;

impl Encoder {
    fn new(format: Format, schema: &SchemaRef) -> Result<Self, String> {
        Ok(match format {
            Format::Json => Encoder::Json { started: false },
            Format::NdJson => Encoder::NdJson,
            Format::Csv => Encoder::Csv { header: true },
            // Partition columns arrive dictionary-encoded; clients get their
            // plain values, as over Flight SQL.
            Format::Arrow => Encoder::Arrow(
                datafusion::arrow::ipc::writer::StreamWriter::try_new(
                    Vec::new(),
                    &super::plain_schema(schema),
                )
                .map_err(|e| e.to_string())?,
            ),
            Format::Parquet => {
                let props = datafusion::parquet::file::properties::WriterProperties::builder()
                    .set_compression(datafusion::parquet::basic::Compression::SNAPPY)
                    .build();
                Encoder::Parquet(
                    ArrowWriter::try_new(Vec::new(), super::plain_schema(schema), Some(props))
                        .map_err(|e| e.to_string())?,
                )
            }
        })
    }

    fn batch(&mut self, batch: &RecordBatch) -> EncodeResult {
        let err = |e: datafusion::arrow::error::ArrowError| e.to_string();
        match self {
            Encoder::Json { started } => {
                if batch.num_rows() == 0 {
                    return Ok(Bytes::new());
                }
                let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
                w.write(batch).map_err(err)?;
                w.finish().map_err(err)?;
                let mut buf = w.into_inner();
                // `[{..},{..}]` -> `{..},{..}`, joined across batches.
                buf.pop();
                buf[0] = if *started { b',' } else { b'[' };
                *started = true;
                Ok(Bytes::from(buf))
            }
            Encoder::NdJson => {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
                w.write(batch).map_err(err)?;
                w.finish().map_err(err)?;
                Ok(Bytes::from(w.into_inner()))
            }
            Encoder::Csv { header } => {
                let mut buf = Vec::new();
                {
                    let mut w = datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(*header)
                        .build(&mut buf);
                    w.write(batch).map_err(err)?;
                }
                *header = false;
                Ok(Bytes::from(buf))
            }
            Encoder::Arrow(w) => {
                w.write(&super::plain_batch(batch).map_err(err)?)
                    .map_err(err)?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
            Encoder::Parquet(w) => {
                w.write(&super::plain_batch(batch).map_err(err)?)
                    .map_err(|e| e.to_string())?;
                // Row groups are written out as they fill; pass on what is done.
                Ok(Bytes::from(std::mem::take(w.inner_mut())))
            }
        }
    }

    fn finish(self) -> EncodeResult {
        match self {
            Encoder::Json { started } => {
                Ok(Bytes::from_static(if started { b"]\n" } else { b"[]\n" }))
            }
            Encoder::NdJson => Ok(Bytes::new()),
            Encoder::Csv { header } => {
                // An empty result still gets its header line.
                let _ = header;
                Ok(Bytes::new())
            }
            Encoder::Arrow(mut w) => {
                w.finish().map_err(|e| e.to_string())?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
            Encoder::Parquet(w) => Ok(Bytes::from(w.into_inner().map_err(|e| e.to_string())?)),
        }
    }
}

async fn sql(State(app): State<App>, headers: HeaderMap, body: String) -> Response {
    let Some(format) = Format::negotiate(&headers) else {
        return error(
            StatusCode::NOT_ACCEPTABLE,
            "Accept one of application/json, application/x-ndjson, text/csv, \
             application/vnd.apache.arrow.stream, application/vnd.apache.parquet",
        );
    };
    let sql = if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"))
    {
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) => match v.get("sql").and_then(|s| s.as_str()) {
                Some(s) => s.to_string(),
                None => return error(StatusCode::BAD_REQUEST, "JSON body needs a \"sql\" string"),
            },
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
        }
    } else {
        body
    };
    let started = crate::serve::metrics::PROTOCOL
        .scope("http", app.engine.sql(&sql))
        .await;
    let mut stream = match started {
        Ok(s) => s,
        Err(e) => return query_error(&e),
    };
    let schema = stream.schema();
    let mut encoder = match Encoder::new(format, &schema) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    // First batch before the status line, so early failures get a status.
    let first = match stream.next().await {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return query_error(&QueryError::from(e)),
        None => None,
    };
    let mut head = match first.as_ref().map(|b| encoder.batch(b)).transpose() {
        Ok(b) => b.unwrap_or_default(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if let (Format::Csv, None) = (format, &first) {
        // Header line for an empty result.
        head = match encoder.batch(&RecordBatch::new_empty(schema.clone())) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
    }
    let body = futures::stream::unfold(
        (Some(stream), Some(encoder), Some(head)),
        |(mut stream, mut encoder, mut head)| async move {
            if let Some(h) = head.take() {
                return Some((Ok::<Bytes, std::io::Error>(h), (stream, encoder, None)));
            }
            let s = stream.as_mut()?;
            match s.next().await {
                Some(Ok(batch)) => {
                    let out = encoder
                        .as_mut()?
                        .batch(&batch)
                        .map_err(std::io::Error::other);
                    Some((out, (stream, encoder, None)))
                }
                Some(Err(e)) => {
                    tracing::warn!("http query failed after its first rows were sent: {e}");
                    Some((
                        Err(std::io::Error::other(e.to_string())),
                        (None, None, None),
                    ))
                }
                None => {
                    let out = encoder.take()?.finish().map_err(std::io::Error::other);
                    Some((out, (None, None, None)))
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format.content_type())
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
