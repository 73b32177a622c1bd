//! `COPY (query) TO STDOUT` and `COPY table TO STDOUT`, in text, CSV and
//! binary: the bulk read path of psql's `\copy … TO`, connectorx and
//! psycopg's `cursor.copy()`. A read like any other query (same read-only
//! plan options, same per-query limits); `COPY … FROM` and `COPY … TO 'file'`
//! stay refused by the guard.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use datafusion_postgres::arrow_pg::datatypes::arrow_schema_to_pg_fields;
use datafusion_postgres::arrow_pg::encoder::encode_value;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::QueryHook;
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, Response};
use pgwire::api::ClientInfo;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;

/// Whether `statement` is a `COPY … TO STDOUT` (the only COPY allowed).
pub fn is_copy_out(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Copy {
            to: true,
            target: CopyTarget::Stdout,
            ..
        }
    )
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Text,
    Csv,
    Binary,
}

#[derive(Debug, Clone)]
struct Options {
    kind: Kind,
    delimiter: Option<char>,
    null: Option<String>,
    header: bool,
    quote: Option<char>,
    escape: Option<char>,
}

fn invalid(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "0A000".into(),
        message,
    )))
}

fn options(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> PgWireResult<Options> {
    let mut o = Options {
        kind: Kind::Text,
        delimiter: None,
        null: None,
        header: false,
        quote: None,
        escape: None,
    };
    for option in options {
        match option {
            CopyOption::Format(f) => {
                o.kind = match f.value.to_ascii_lowercase().as_str() {
                    "text" => Kind::Text,
                    "csv" => Kind::Csv,
                    "binary" => Kind::Binary,
                    other => {
                        return Err(invalid(format!(
                            "COPY format `{other}` is not supported; use text, csv or binary"
                        )))
                    }
                }
            }
            CopyOption::Delimiter(c) => o.delimiter = Some(*c),
            CopyOption::Null(n) => o.null = Some(n.clone()),
            CopyOption::Header(h) => o.header = *h,
            CopyOption::Quote(c) => o.quote = Some(*c),
            CopyOption::Escape(c) => o.escape = Some(*c),
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            CopyOption::Freeze(_) => {}
            other => {
                return Err(invalid(format!(
                    "COPY option `{other}` is not supported on this server"
                )))
            }
        }
    }
    for option in legacy {
        match option {
            CopyLegacyOption::Binary => o.kind = Kind::Binary,
            CopyLegacyOption::Delimiter(c) => o.delimiter = Some(*c),
            CopyLegacyOption::Null(n) => o.null = Some(n.clone()),
            CopyLegacyOption::Csv(csv) => {
                o.kind = Kind::Csv;
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => o.header = true,
                        CopyLegacyCsvOption::Quote(q) => o.quote = Some(*q),
                        CopyLegacyCsvOption::Escape(e) => o.escape = Some(*e),
                        other => {
                            return Err(invalid(format!(
                                "COPY option `{other}` is not supported on this server"
                            )))
                        }
                    }
                }
            }
            other => {
                return Err(invalid(format!(
                    "COPY option `{other}` is not supported on this server"
                )))
            }
        }
    }
    Ok(o)
}

/// The query a COPY reads.
fn source_sql(source: &CopySource) -> String {
    match source {
        CopySource::Query(q) => q.to_string(),
        CopySource::Table {
            table_name,
            columns,
        } => {
            let columns = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!("SELECT {columns} FROM {table_name}")
        }
    }
}

fn csv_line(values: &[String], delimiter: char, quote: char) -> String {
    let mut line = values
        .iter()
        .map(|v| {
            if v.contains(delimiter) || v.contains(quote) || v.contains('\n') || v.contains('\r') {
                let q = quote.to_string();
                format!("{quote}{}{quote}", v.replace(&q, &format!("{q}{q}")))
            } else {
                v.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(&delimiter.to_string());
    line.push('\n');
    line
}

async fn copy_out(statement: &Statement, ctx: &SessionContext) -> PgWireResult<Response> {
    let Statement::Copy {
        source,
        options: with,
        legacy_options,
        ..
    } = statement
    else {
        return Err(invalid("not a COPY statement".into()));
    };
    let o = options(with, legacy_options)?;
    let df = ctx
        .sql_with_options(&source_sql(source), super::super::read_only_options())
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let arrow_schema = Arc::new(df.schema().as_arrow().clone());
    let format = if o.kind == Kind::Binary {
        Format::UnifiedBinary
    } else {
        Format::UnifiedText
    };
    let fields = Arc::new(arrow_schema_to_pg_fields(&arrow_schema, &format, None)?);
    let mut encoder = match o.kind {
        Kind::Binary => CopyEncoder::new_binary(fields.clone()),
        Kind::Text => {
            let mut t = CopyTextOptions::default();
            if let Some(d) = o.delimiter {
                t.delimiter = d.to_string().into();
            }
            if let Some(n) = &o.null {
                t.null_string = n.as_str().into();
            }
            CopyEncoder::new_text(fields.clone(), t)
        }
        Kind::Csv => {
            let mut c = CopyCsvOptions::default();
            if let Some(d) = o.delimiter {
                c.delimiter = d.to_string().into();
            }
            if let Some(n) = &o.null {
                c.null_string = n.as_str().into();
            }
            if let Some(q) = o.quote {
                c.quote = q.to_string().into();
            }
            if let Some(e) = o.escape.or(o.quote) {
                c.escape = e.to_string().into();
            }
            CopyEncoder::new_csv(fields.clone(), c)
        }
    };
    let header = (o.kind == Kind::Csv && o.header).then(|| {
        let names: Vec<String> = arrow_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        CopyData::new(csv_line(&names, o.delimiter.unwrap_or(','), o.quote.unwrap_or('"')).into())
    });
    let batches = df
        .execute_stream()
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let columns = fields.len();
    let rows = batches.flat_map(move |batch| {
        let out: Vec<PgWireResult<CopyData>> = match batch {
            Err(e) => vec![Err(PgWireError::ApiError(Box::new(e)))],
            Ok(batch) => {
                let mut out = Vec::with_capacity(batch.num_rows());
                'rows: for row in 0..batch.num_rows() {
                    for (i, column) in batch.columns().iter().enumerate() {
                        if let Err(e) = encode_value(
                            &mut encoder,
                            column,
                            row,
                            arrow_schema.field(i),
                            &fields[i],
                        ) {
                            out.push(Err(e));
                            break 'rows;
                        }
                    }
                    out.push(Ok(encoder.take_copy()));
                }
                out
            }
        };
        futures::stream::iter(out)
    });
    let stream = futures::stream::iter(header.map(Ok)).chain(rows);
    let code = if o.kind == Kind::Binary { 1 } else { 0 };
    Ok(Response::CopyOut(CopyResponse::new(code, columns, stream)))
}

/// Answers `COPY … TO STDOUT`; every other statement passes on.
pub struct CopyOut;

#[async_trait]
impl QueryHook for CopyOut {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if !is_copy_out(statement) {
            return None;
        }
        Some(copy_out(statement, ctx).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if !is_copy_out(statement) {
            return None;
        }
        Some(Ok(LogicalPlan::EmptyRelation(
            datafusion::logical_expr::EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(datafusion::common::DFSchema::empty()),
            },
        )))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if !is_copy_out(statement) {
            return None;
        }
        Some(copy_out(statement, ctx).await)
    }
}
