//! The crate's one error type. Each variant is named after what failed and
//! carries what a user needs to fix it (file, line, table, model, rule).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}:{line}: {message}")]
    PipelineFile {
        file: PathBuf,
        line: usize,
        message: String,
    },

    #[error("pipeline folder {path}: {message}")]
    Pipeline { path: PathBuf, message: String },

    #[error("dependency cycle between models: {cycle}. Break the cycle by removing one of these references.")]
    DependencyCycle { cycle: String },

    #[error("lake location `{uri}`: {message}")]
    Lake { uri: String, message: String },

    #[error("source {source_name}: {message}")]
    Ingest {
        source_name: String,
        message: String,
    },

    #[error("model {model}: expectation `{rule}` failed on {failed} row(s) (action = fail); nothing was committed for this model. First offending row: {example}")]
    ExpectationFailed {
        model: String,
        rule: String,
        failed: u64,
        example: String,
    },

    #[error("model {model}: {quarantined} of {total} rows would be quarantined, above the limit of {limit_pct}% (max_quarantine_pct): {rules}. Nothing was committed for this model. Check the rule against the data (a wrong date format or column name quarantines everything), or raise max_quarantine_pct in the model's settings")]
    QuarantineThreshold {
        model: String,
        quarantined: u64,
        total: u64,
        limit_pct: f64,
        /// The rules that quarantined rows, with their counts.
        rules: String,
    },

    #[error("model {model}: {source}")]
    Model {
        model: String,
        #[source]
        source: Box<Error>,
    },

    #[error("table {table}: {message}")]
    Table { table: String, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),

    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),

    #[error(transparent)]
    Delta(#[from] deltalake::DeltaTableError),

    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),

    #[error("{0}")]
    LeaseLost(String),
    /// Another run holds the lake's lease (and `--wait` was not given).
    #[error("{0}")]
    LakeBusy(String),
    /// The cluster did not do what was asked of it (a job that never
    /// finished); nothing was committed.
    #[error("cluster: {0}")]
    Cluster(String),
    /// A broken invariant: a bug, not something the user did.
    #[error("internal error: {0}. This is a bug; please report it with the log")]
    Internal(String),
    /// A model's failure as the engine reported it, with what caused it in
    /// the pipeline and what to do (see `model::diagnose`).
    #[error("{0}")]
    Diagnosed(String),
    /// A flag, argument or setting the user gave that cannot be used.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn in_model(self, model: &str) -> Self {
        match self {
            e @ (Error::ExpectationFailed { .. }
            | Error::QuarantineThreshold { .. }
            | Error::Model { .. }) => e,
            other => Error::Model {
                model: model.to_string(),
                source: Box::new(other),
            },
        }
    }
}
