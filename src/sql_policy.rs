//! The read-only SQL policy every entry point applies (`lakehouse query`
//! and every protocol of `lakehouse serve`): one statement, a query, within
//! the size and nesting limits; DataFusion told to refuse DDL, DML and
//! statements on the plan too. Also the error kinds each protocol maps to
//! its own codes. Owns the policy; must not know about protocols.

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

/// Why a query did not run, mapped by each protocol to its own codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not a query (CREATE, INSERT, COPY, SET of server settings, ...).
    Refused,
    /// SQL that does not parse or plan: unknown table, bad column, ...
    Invalid,
    /// Every query slot stayed taken.
    Busy,
    /// Ran past the time limit.
    Timeout,
    /// Went over the per-query memory limit.
    Memory,
    /// Over the SQL size or expression depth limit.
    TooComplex,
    /// Names a table or schema that does not exist.
    NoSuchTable,
    /// Failed while running.
    Failed,
}

#[derive(Debug, Clone)]
pub struct QueryError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for QueryError {}

impl QueryError {
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Refused,
            message: message.into(),
        }
    }
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        Self::from_df(&e)
    }
}

impl QueryError {
    pub fn from_df(e: &DataFusionError) -> Self {
        let root = e.find_root();
        let kind = match root {
            DataFusionError::ResourcesExhausted(m) if m.starts_with("the server is busy") => {
                ErrorKind::Busy
            }
            DataFusionError::ResourcesExhausted(m) if m.starts_with("query cancelled") => {
                ErrorKind::Timeout
            }
            DataFusionError::ResourcesExhausted(_) => ErrorKind::Memory,
            // DataFusion says so only in text: `table 'a.b.c' not found`.
            DataFusionError::Plan(m) if m.starts_with("table '") && m.ends_with("' not found") => {
                ErrorKind::NoSuchTable
            }
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => ErrorKind::Invalid,
            _ => ErrorKind::Failed,
        };
        let message = match kind {
            ErrorKind::Failed => e.to_string(),
            _ => root.to_string(),
        };
        Self { kind, message }
    }
}

const READ_ONLY: &str = "the lake is read-only here: only queries are allowed (SELECT, WITH, \
VALUES, EXPLAIN, SHOW), over the lake's own tables; tables are written by `lakehouse run`";

/// Whether a parsed statement only reads lake tables. `EXPLAIN` counts as its
/// inner statement, since `EXPLAIN ANALYZE` runs it.
pub fn is_read_only(statement: &Statement) -> bool {
    match statement {
        Statement::Query(_)
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ExplainTable { .. } => true,
        Statement::Explain { statement, .. } => is_read_only(statement),
        _ => false,
    }
}

fn first_words(statement: &impl std::fmt::Display) -> String {
    statement
        .to_string()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The refusal for a statement that is not a query.
pub fn refusal(statement: &impl std::fmt::Display) -> QueryError {
    QueryError::refused(format!(
        "{READ_ONLY}; refused `{}`.",
        first_words(statement)
    ))
}

/// Parses exactly one statement and checks that it only reads.
pub fn check_sql(sql: &str) -> std::result::Result<(), QueryError> {
    crate::limits::check_sql_size(sql).map_err(|message| QueryError {
        kind: ErrorKind::Invalid,
        message,
    })?;
    let statements =
        DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {}).map_err(|e| QueryError {
            kind: ErrorKind::Invalid,
            message: format!("SQL does not parse: {e}"),
        })?;
    if statements.len() != 1 {
        return Err(QueryError {
            kind: ErrorKind::Invalid,
            message: format!("send exactly one statement, found {}", statements.len()),
        });
    }
    check_df_statement(&statements[0])
}

fn check_df_statement(statement: &DFStatement) -> std::result::Result<(), QueryError> {
    match statement {
        DFStatement::Statement(s) if is_read_only(s) => check_depth(s),
        DFStatement::Explain(e) => check_df_statement(&e.statement),
        other => Err(refusal(other)),
    }
}

/// Refuses a statement nested too deep to plan safely.
pub fn check_depth(statement: &Statement) -> std::result::Result<(), QueryError> {
    crate::limits::check_statement_depth(statement).map_err(|message| QueryError {
        kind: ErrorKind::TooComplex,
        message,
    })
}

/// Read-only plan options: DataFusion itself refuses DDL, DML and
/// statements, whatever the parser check let through.
pub fn read_only_options() -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}
