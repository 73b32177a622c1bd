//! The pipeline folder: sources (bronze), SQL models (silver, gold), their
//! settings, and the order they run in. Parsing and validation only: this
//! module reads files under the pipeline folder and never touches the lake.
//!
//! Layout (the table name comes from the path):
//!
//! ```text
//! sql/bronze/orders.toml       source  -> bronze.orders
//! sql/silver/orders.sql        model   -> silver.orders
//! sql/silver/orders.toml       its settings (optional)
//! sql/gold/daily_sales.sql     model   -> gold.daily_sales
//! ```
//!
//! Settings sit beside the SQL in a TOML file, the way dbt keeps a model's
//! config beside it; TOML was chosen over a comment header because it gives
//! typed values, and unknown keys are reported with their file and line.

mod dag;
mod settings;

pub use dag::run_order;
pub use settings::{Action, CsvSource, Expectation, ModelSettings, SchemaChange, WriteMode};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::error::{Error, Result};

pub const LAYERS: [&str; 3] = ["bronze", "silver", "gold"];

/// A bronze source: landed CSV files and how to read them.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub file: PathBuf,
    pub csv: CsvSource,
}

/// A silver or gold model: one SELECT and its settings.
#[derive(Debug, Clone)]
pub struct Model {
    pub layer: String,
    pub name: String,
    pub sql_file: PathBuf,
    pub sql: String,
    pub settings: ModelSettings,
    /// Tables the SQL reads, as `layer.name`.
    pub inputs: Vec<String>,
}

impl Model {
    pub fn table(&self) -> String {
        format!("{}.{}", self.layer, self.name)
    }
}

/// Everything under a pipeline folder, validated, with models in run order.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub root: PathBuf,
    pub sources: Vec<Source>,
    /// Models in dependency order: every model comes after the models it reads.
    pub models: Vec<Model>,
}

impl Pipeline {
    pub fn load(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::Pipeline {
                path: root.to_path_buf(),
                message: "not a folder. Pass --pipeline DIR pointing at a folder with bronze/, silver/ and gold/ subfolders.".into(),
            });
        }
        let mut sources = Vec::new();
        let mut models = Vec::new();
        for layer in LAYERS {
            let dir = root.join(layer);
            if !dir.is_dir() {
                continue;
            }
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(format!("read {}", dir.display()), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for path in entries {
                let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
                    continue;
                };
                let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                validate_name(&path, stem)?;
                match (layer, ext) {
                    ("bronze", "toml") => sources.push(Source {
                        name: stem.to_string(),
                        csv: settings::parse_source(&path, &read(&path)?)?,
                        file: path,
                    }),
                    ("bronze", "sql") => {
                        return Err(file_error(&path, 1, "bronze tables are sources, not SQL models: describe the landed files in a .toml file instead"))
                    }
                    (_, "sql") => models.push(load_model(layer, stem, &path)?),
                    (_, "toml") => {
                        if !path.with_extension("sql").exists() {
                            return Err(file_error(&path, 1, format!("settings for a model without SQL: create {}", path.with_extension("sql").display())));
                        }
                    }
                    _ => {}
                }
            }
        }
        let known: BTreeMap<String, ()> = sources
            .iter()
            .map(|s| (format!("bronze.{}", s.name), ()))
            .chain(models.iter().map(|m| (m.table(), ())))
            .collect();
        for m in &models {
            for input in &m.inputs {
                if !known.contains_key(input) {
                    let line = line_of(&m.sql, input);
                    let names: Vec<&str> = known.keys().map(|s| s.as_str()).collect();
                    return Err(file_error(
                        &m.sql_file,
                        line,
                        format!("reads table `{input}`, which no source or model defines. Known tables: {}", names.join(", ")),
                    ));
                }
                if *input == m.table() {
                    return Err(Error::DependencyCycle {
                        cycle: format!("{} -> {}", input, input),
                    });
                }
            }
        }
        let models = run_order(models)?;
        Ok(Self {
            root: root.to_path_buf(),
            sources,
            models,
        })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))
}

fn validate_name(path: &Path, stem: &str) -> Result<()> {
    let ok = !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !stem.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(file_error(path, 1, format!("`{stem}` is not a valid table name: use lower-case letters, digits and underscores")))
    }
}

pub(crate) fn file_error(path: &Path, line: usize, message: impl Into<String>) -> Error {
    Error::PipelineFile {
        file: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// The candidates closest to `name` (case-insensitive edit distance), when
/// they are close enough to be a likely typo (at most a third of the longer
/// name's characters differ), as a hint: "`a`" or "`a` or `b`".
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let name = name.to_lowercase();
    let close: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (edit_distance(&name, &c.to_lowercase()), c))
        .filter(|(d, c)| *d > 0 && *d * 3 <= name.chars().count().max(c.chars().count()))
        .collect();
    let best = close.iter().map(|(d, _)| *d).min()?;
    let names: Vec<String> = close
        .iter()
        .filter(|(d, _)| *d == best)
        .map(|(_, c)| format!("`{c}`"))
        .collect();
    Some(names.join(" or "))
}

/// Levenshtein distance between two strings, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn load_model(layer: &str, name: &str, sql_file: &Path) -> Result<Model> {
    let sql = read(sql_file)?;
    let settings_file = sql_file.with_extension("toml");
    let settings = if settings_file.exists() {
        settings::parse_model(&settings_file, &read(&settings_file)?)?
    } else {
        ModelSettings::default()
    };
    let inputs = tables_read(sql_file, &sql)?;
    for e in &settings.expectations {
        parse_expression(&settings_file, &e.check, e.line)?;
    }
    for i in &settings.incremental_inputs {
        if !inputs.contains(i) {
            return Err(file_error(
                &settings_file,
                line_of(&read(&settings_file)?, i),
                format!(
                    "incremental_inputs names `{i}`, which {} does not read (it reads {})",
                    sql_file.display(),
                    inputs.join(", ")
                ),
            ));
        }
    }
    Ok(Model {
        layer: layer.to_string(),
        name: name.to_string(),
        sql_file: sql_file.to_path_buf(),
        sql,
        settings,
        inputs,
    })
}

/// Parses one SELECT and returns the tables it reads (CTE names excluded).
pub fn tables_read(file: &Path, sql: &str) -> Result<Vec<String>> {
    let dialect = GenericDialect {};
    let mut statements = DFParser::parse_sql_with_dialect(sql, &dialect).map_err(|e| {
        let msg = e.to_string();
        // At the end of input the parser gives no position: point at the last line.
        let last = sql.trim_end().lines().count().max(1);
        let line = line_in_message(&msg).unwrap_or(if msg.contains("EOF") { last } else { 1 });
        file_error(file, line, format!("SQL does not parse: {msg}"))
    })?;
    if statements.len() != 1 {
        return Err(file_error(
            file,
            1,
            format!(
                "a model holds exactly one SELECT statement, found {}",
                statements.len()
            ),
        ));
    }
    let statement = statements.pop_front().expect("one statement checked above");
    match &statement {
        DFStatement::Statement(s) if matches!(**s, Statement::Query(_)) => {}
        _ => {
            return Err(file_error(
                file,
                1,
                "a model must be a SELECT query (the runner writes its result; no DDL or DML here)",
            ))
        }
    }
    let (refs, _ctes) = datafusion::sql::resolve::resolve_table_references(&statement, true)
        .map_err(|e| file_error(file, 1, e.to_string()))?;
    let mut out = Vec::new();
    for r in refs {
        let Some(schema) = r.schema() else {
            let line = line_of(sql, r.table());
            return Err(file_error(
                file,
                line,
                format!(
                    "table `{}` must be qualified with its layer, e.g. `bronze.{}`",
                    r.table(),
                    r.table()
                ),
            ));
        };
        let name = format!("{}.{}", schema, r.table());
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Checks that a SQL boolean expression parses; errors point at `line`.
fn parse_expression(file: &Path, expr: &str, line: usize) -> Result<()> {
    let dialect = GenericDialect {};
    let mut parser = datafusion::sql::sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(expr)
        .map_err(|e| file_error(file, line, format!("check `{expr}` does not parse: {e}")))?;
    parser
        .parse_expr()
        .map_err(|e| file_error(file, line, format!("check `{expr}` does not parse: {e}")))?;
    Ok(())
}

fn line_in_message(msg: &str) -> Option<usize> {
    let at = msg.find("Line: ")?;
    msg[at + 6..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// 1-based line of the first case-insensitive occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let lower = text.to_lowercase();
    match lower.find(&needle.to_lowercase()) {
        Some(at) => text[..at].matches('\n').count() + 1,
        None => 1,
    }
}

#[cfg(test)]
mod tests;
