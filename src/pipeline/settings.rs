//! The TOML settings files: a source's CSV options and a model's write mode,
//! partitioning, keys and expectations. Unknown keys and bad values are errors
//! that name the file and line.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::file_error;
use crate::error::Result;

/// How a model's result is written to its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Replace the whole table.
    #[default]
    Overwrite,
    /// Add the rows.
    Append,
    /// Upsert by `unique_key`: a row replaces the table's row with the same
    /// key when its `sequence_by` is newer; new keys are inserted.
    Merge,
    /// Replace exactly the partitions present in the result; others stay.
    ReplacePartitions,
}

/// What happens to a row that fails an expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Keep the row and count it.
    Warn,
    /// Move the row to the model's quarantine table, the rule's name as reason.
    Drop,
    /// Commit nothing for the model and fail the run.
    Fail,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Expectation {
    pub name: String,
    /// SQL boolean over the model's output columns; a row passes only when it
    /// is TRUE (NULL fails, as in Delta Live Tables).
    pub check: String,
    pub action: Action,
    pub line: usize,
}

/// A model fails, committing nothing, when more than this share of its rows
/// would be quarantined: a wrong date format or a renamed column must not
/// turn into a successful run that drops most of a source. Set
/// `max_quarantine_pct` per model to allow more (100 turns the check off).
pub const DEFAULT_MAX_QUARANTINE_PCT: f64 = 50.0;

#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub mode: WriteMode,
    pub partition_by: Vec<String>,
    pub unique_key: Vec<String>,
    pub sequence_by: Vec<String>,
    pub expectations: Vec<Expectation>,
    /// Fail the model when more than this share (percent) of rows is
    /// quarantined ([`DEFAULT_MAX_QUARANTINE_PCT`] unless set).
    pub max_quarantine_pct: f64,
    pub description: Option<String>,
    /// Inputs (`layer.table`) read as streams: on an incremental run of an
    /// `append` or `merge` model only the rows they gained since the model's
    /// last run are read; other inputs are read whole, and a change to one of
    /// them rebuilds the model from all of its input.
    pub incremental_inputs: Vec<String>,
    /// Keep Delta symlink manifests (`_symlink_format_manifest/<partition>/manifest`)
    /// current with every commit, for engines that read a table through
    /// them (Trino, Presto, Athena, Redshift Spectrum, Snowflake, BigQuery).
    pub symlink_manifest: bool,
    /// After a run that wrote the model, compact its partitions holding more
    /// than this many small files (0: never).
    pub compact_small_files: usize,
    /// The line of each top-level key in the settings file.
    pub key_lines: Vec<(String, usize)>,
}

impl ModelSettings {
    /// The settings file's line of `key` (1 when it is not set there).
    pub fn line_of(&self, key: &str) -> usize {
        self.key_lines
            .iter()
            .find(|(k, _)| k == key)
            .map_or(1, |(_, line)| *line)
    }
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            mode: WriteMode::default(),
            partition_by: vec![],
            unique_key: vec![],
            sequence_by: vec![],
            expectations: vec![],
            max_quarantine_pct: DEFAULT_MAX_QUARANTINE_PCT,
            description: None,
            incremental_inputs: vec![],
            symlink_manifest: false,
            compact_small_files: crate::maintain::DEFAULT_COMPACT_SMALL_FILES,
            key_lines: vec![],
        }
    }
}

/// What a source does with a file whose header differs from bronze's columns
/// (dbt's `on_schema_change`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchemaChange {
    /// New columns are added to bronze (earlier rows read NULL); columns a
    /// file lacks are NULL for its rows and counted. The default: bronze's
    /// job is to keep everything that landed.
    #[default]
    AppendNewColumns,
    /// A file with a column bronze does not have is refused by name (the run
    /// continues with the other files and exits 1); missing columns are NULL.
    Fail,
}

#[derive(Debug, Clone)]
pub struct CsvSource {
    /// Glob of landed files, relative to the lake root, or an absolute path/URI.
    pub files: String,
    pub header: bool,
    pub delimiter: u8,
    pub quote: u8,
    /// Declared column names (required without a header; with a header they
    /// select and order the columns kept).
    pub columns: Option<Vec<String>>,
    pub max_field_bytes: usize,
    pub description: Option<String>,
    /// Header name (case-insensitive) -> bronze column name.
    pub rename: Vec<(String, String)>,
    pub on_schema_change: SchemaChange,
    /// Take a file whose header lacks a `rename` key's column (the column
    /// is NULL for its rows) instead of refusing it.
    pub lenient_columns: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    files: String,
    #[serde(default)]
    format: Option<Spanned<String>>,
    #[serde(default = "yes")]
    header: bool,
    #[serde(default)]
    delimiter: Option<Spanned<String>>,
    #[serde(default)]
    quote: Option<Spanned<String>>,
    #[serde(default)]
    columns: Option<Vec<String>>,
    #[serde(default)]
    max_field_bytes: Option<usize>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    rename: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    on_schema_change: SchemaChange,
    #[serde(default)]
    lenient_columns: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default)]
    mode: WriteMode,
    #[serde(default)]
    partition_by: Vec<String>,
    #[serde(default)]
    unique_key: Vec<String>,
    #[serde(default)]
    sequence_by: Vec<String>,
    #[serde(default)]
    max_quarantine_pct: Option<Spanned<f64>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    incremental_inputs: Vec<String>,
    #[serde(default)]
    symlink_manifest: bool,
    #[serde(default)]
    compact_small_files: Option<usize>,
    #[serde(default)]
    expect: Vec<Spanned<RawExpectation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpectation {
    name: String,
    check: String,
    action: Action,
}

fn toml_error(file: &Path, text: &str, e: toml::de::Error) -> crate::error::Error {
    let line = e.span().map(|s| line_at(text, s.start)).unwrap_or(1);
    let msg = e.message().replace("unknown field", "unknown setting");
    file_error(file, line, msg.trim().to_string())
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

pub fn parse_source(file: &Path, text: &str) -> Result<CsvSource> {
    let raw: RawSource = toml::from_str(text).map_err(|e| toml_error(file, text, e))?;
    if let Some(f) = &raw.format {
        if f.get_ref() != "csv" {
            return Err(file_error(
                file,
                line_at(text, f.span().start),
                format!("format `{}` is not supported; only `csv` is", f.get_ref()),
            ));
        }
    }
    let one_byte = |v: &Option<Spanned<String>>, what: &str, default: u8| -> Result<u8> {
        match v {
            None => Ok(default),
            Some(s) => {
                let value = s.get_ref();
                let value = if value == "\\t" { "\t" } else { value.as_str() };
                if value.len() == 1 && value.is_ascii() {
                    Ok(value.as_bytes()[0])
                } else {
                    Err(file_error(
                        file,
                        line_at(text, s.span().start),
                        format!("{what} must be a single ASCII character, got `{value}`"),
                    ))
                }
            }
        }
    };
    let delimiter = one_byte(&raw.delimiter, "delimiter", b',')?;
    let quote = one_byte(&raw.quote, "quote", b'"')?;
    let line_of =
        |v: &Option<Spanned<String>>| v.as_ref().map_or(1, |s| line_at(text, s.span().start));
    for (byte, what, at) in [
        (delimiter, "delimiter", &raw.delimiter),
        (quote, "quote", &raw.quote),
    ] {
        if byte == b'\n' || byte == b'\r' {
            return Err(file_error(
                file,
                line_of(at),
                format!("{what} cannot be a line break: it would split every row"),
            ));
        }
    }
    if delimiter == quote {
        return Err(file_error(
            file,
            line_of(if raw.quote.is_some() { &raw.quote } else { &raw.delimiter }),
            format!(
                "delimiter and quote are both `{}`: a field could never be told from a quoted one; pick different characters",
                delimiter as char
            ),
        ));
    }
    if !raw.header && raw.columns.is_none() {
        return Err(file_error(
            file,
            1,
            "a source without a header row needs `columns = [...]`",
        ));
    }
    if let Some(cols) = &raw.columns {
        for c in cols {
            if c.is_empty() || c.starts_with('_') {
                return Err(file_error(file, 1, format!("column name `{c}` is not allowed: names starting with `_` are reserved for lineage columns")));
            }
        }
    }
    Ok(CsvSource {
        files: raw.files,
        header: raw.header,
        delimiter,
        quote,
        columns: raw.columns,
        max_field_bytes: raw.max_field_bytes.unwrap_or(1 << 20),
        description: raw.description,
        rename: raw.rename.into_iter().collect(),
        on_schema_change: raw.on_schema_change,
        lenient_columns: raw.lenient_columns,
    })
}

pub fn parse_model(file: &Path, text: &str) -> Result<ModelSettings> {
    let raw: RawModel = toml::from_str(text).map_err(|e| toml_error(file, text, e))?;
    let mut expectations = Vec::new();
    for e in raw.expect {
        let line = line_at(text, e.span().start);
        let e = e.into_inner();
        if expectations.iter().any(|x: &Expectation| x.name == e.name) {
            return Err(file_error(
                file,
                line,
                format!("expectation `{}` is declared twice", e.name),
            ));
        }
        expectations.push(Expectation {
            name: e.name,
            check: e.check,
            action: e.action,
            line,
        });
    }
    if raw.mode == WriteMode::Merge && raw.unique_key.is_empty() {
        return Err(file_error(
            file,
            1,
            "mode = \"merge\" needs `unique_key = [...]`, the columns that identify a row",
        ));
    }
    if !raw.sequence_by.is_empty() && raw.unique_key.is_empty() {
        return Err(file_error(
            file,
            1,
            "`sequence_by` only applies with `unique_key`",
        ));
    }
    if raw.mode == WriteMode::ReplacePartitions && raw.partition_by.is_empty() {
        return Err(file_error(
            file,
            1,
            "mode = \"replace_partitions\" needs `partition_by = [...]`",
        ));
    }
    if !raw.incremental_inputs.is_empty()
        && !matches!(raw.mode, WriteMode::Merge | WriteMode::Append)
    {
        return Err(file_error(
            file,
            1,
            "`incremental_inputs` applies to mode = \"merge\" or \"append\"; a replace_partitions model is incremental by partition without it",
        ));
    }
    let max_quarantine_pct = match raw.max_quarantine_pct {
        Some(p) if !(0.0..=100.0).contains(p.get_ref()) => {
            return Err(file_error(
                file,
                line_at(text, p.span().start),
                "max_quarantine_pct must be between 0 and 100",
            ))
        }
        Some(p) => p.into_inner(),
        None => DEFAULT_MAX_QUARANTINE_PCT,
    };
    Ok(ModelSettings {
        mode: raw.mode,
        partition_by: raw.partition_by,
        unique_key: raw.unique_key,
        sequence_by: raw.sequence_by,
        expectations,
        max_quarantine_pct,
        description: raw.description,
        incremental_inputs: raw.incremental_inputs,
        symlink_manifest: raw.symlink_manifest,
        compact_small_files: raw
            .compact_small_files
            .unwrap_or(crate::maintain::DEFAULT_COMPACT_SMALL_FILES),
        key_lines: key_lines(text),
    })
}

/// `(key, line)` of every `key = ...` line outside a table header, before
/// the first `[table]` (top-level keys only).
fn key_lines(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            if !key.is_empty() && !key.starts_with('#') {
                out.push((key.to_string(), i + 1));
            }
        }
    }
    out
}
